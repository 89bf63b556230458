"""Where each stage reads and writes, relative to the project directory: the names dvc.yaml lists.

One small module with no imports of its own, so a stage that needs another stage's
output path (the report reads train's and evaluate's) does not import that stage's
code, and dvc.yaml's deps can list what each stage really runs.
"""

from pathlib import Path

RESOLVED_PARAMS_PATH = Path("params.resolved.yaml")  # every param, resolved: what dvc.yaml tracks
EXTERNAL_DIR = Path("data/external")  # a user's own files: a dependency of download, so edits re-run it
RAW_DIR = Path("data/raw")
MANIFEST_PATH = RAW_DIR / "manifest.json"
VALIDATION_DIR = Path("data/validation")
VALIDATION_RESULTS_PATH = VALIDATION_DIR / "results.json"
DATA_DOCS_DIR = VALIDATION_DIR / "docs"
EMBEDDINGS_DIR = Path("data/embeddings")
TOKENS_DIR = Path("data/tokens")
TOKENIZER_DIR = TOKENS_DIR / "tokenizer"
TOKEN_STATS_PATH = TOKENS_DIR / "stats.json"
STUDENT_DIR = Path("models/student")
CHECKPOINTS_DIR = Path("checkpoints")
TRAIN_METRICS_PATH = Path("metrics/train.json")
TRAIN_PLOTS_DIR = Path("plots/train")
EVAL_METRICS_PATH = Path("metrics/eval.json")
EVAL_PLOTS_DIR = Path("plots/eval")
EXPORT_DIR = Path("models/export")
EXPORT_METRICS_PATH = Path("metrics/export.json")
REPORT_DIR = Path("reports")
FLOW_CACHE_DIR = Path(".flow-cache")  # the Prefect flow's stage results, kept in the project as .dvc/cache is
