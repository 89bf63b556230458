"""The model card: front matter a hub reads (the teacher, the datasets, their licence, the evaluated metrics), a body
built only from what the metrics and params hold, and the lineage read from the project."""

import subprocess
import sys

import pytest
import yaml
from helpers import REPO_ROOT

from embedforge import tracking
from embedforge.config import load_params
from embedforge.files import sha256_tree
from embedforge.models import teacher as teachers
from embedforge.report.card import CardLineage, card_lineage, model_card
from embedforge.report.provenance import CARD_PARAMS

PARAMS_YAML = REPO_ROOT / "params.yaml"
STS_SPLITS = ("stsb/validation", "sick/validation")
HUB_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
LINEAGE = CardLineage(
    git_commit="0123abcd",
    git_dirty=False,
    training_run_id="run-that-trained",
    params_md5="5d41402abc4b2a76b9719d911017c592",
    teacher_hub_id=HUB_TEACHER,
    teacher_fingerprint="f" * 64,
)
# Own scored pairs from local files, used for training and every evaluation, so no built-in's licence enters.
OWN = 'download.datasets.own={{kind: pairs_score, files: "own/*.csv", score_range: [0, 5], splits: [validation]{}}}'
OWN_EVERYWHERE = [
    "train.datasets=[own]",
    "train.sts_validation=own/validation",
    "evaluate.sts_splits=[own/validation]",
    "evaluate.separation_splits=[own/validation]",
    "evaluate.retrieval_split=own/validation",
]


def model_scores(spearman: float, speed: float, parameters: int) -> dict:
    """One model's part of metrics/eval.json, shaped as stages/evaluate.py writes it."""
    return {
        "sts": {
            split: {"spearman": spearman - 0.05 * i, "pearson": spearman - 0.04 * i - 0.01, "pairs": 60}
            for i, split in enumerate(STS_SPLITS)
        },
        "separation": {
            "similar_mean": 0.81,
            "dissimilar_mean": 0.22,
            "gap": 0.59,
            "similar_pairs": 80,
            "dissimilar_pairs": 80,
            "passed": True,
        },
        "retrieval": {"recall@1": 0.61, "recall@10": 0.93, "mrr": 0.72, "ndcg@10": 0.77, "queries": 330, "corpus": 980},
        "documents": {},
        "speed": {"sentences_per_s": speed, "sentences": 2000},
        "size": {"parameters": parameters, "disk_bytes": parameters * 4},
    }


def eval_metrics() -> dict:
    return {
        "student": model_scores(0.8123, 650.0, 15_615_360),
        "teacher": model_scores(0.8712, 232.0, 22_713_216),
        "speed_ratio": 2.8,
        "size_ratio": 0.69,
        "targets": {"similar_min": 0.7, "dissimilar_max": 0.5, "min_gap": 0.2},
    }


def train_metrics() -> dict:
    """metrics/train.json as training/summary.py writes it (a few of its keys)."""
    return {
        "steps": 400,
        "epochs": 3,
        "best_epoch": 2,
        "sts_spearman": 0.8051,
        "val_loss": None,
        "examples_per_s": 120.5,
        "train_seconds": 754.2,
        "embedding_dim": 384,
        "initial_sts_spearman": None,
    }


def export_metrics() -> dict:
    variant = {"cosine_min": 0.999991, "sts": {"stsb/validation": {"spearman": 0.8121}}, "sentences_per_s": 900.0}
    return {
        "variants": {
            "onnx_fp32": {**variant, "file": "model.onnx", "speed_ratio": 3.9, "disk_bytes": 62_000_000},
            "onnx_int8": {**variant, "file": "model_int8.onnx", "speed_ratio": 6.5, "disk_bytes": 16_000_000},
        }
    }


def card(*overrides: str, evaluation=None, training=None, exports=None, lineage=LINEAGE) -> str:
    cfg = load_params(PARAMS_YAML, list(overrides))
    return model_card(
        cfg,
        eval_metrics() if evaluation is None else evaluation,
        train_metrics() if training is None else training,
        {} if exports is None else exports,
        lineage,
    )


def split_card(text: str) -> tuple[dict, str]:
    """The parsed front matter and the body."""
    assert text.startswith("---\n")
    matter, separator, body = text.removeprefix("---\n").partition("\n---\n")
    assert separator, "the front matter is never closed"
    return yaml.safe_load(matter), body


def indexed_metrics(matter: dict) -> dict[tuple[str, str], float]:
    (entry,) = matter["model-index"]
    return {
        (result["dataset"]["name"], metric["type"]): metric["value"]
        for result in entry["results"]
        for metric in result["metrics"]
    }


def test_front_matter_parses_names_the_teacher_and_holds_exactly_the_sts_metrics_of_eval_json():
    evaluation = eval_metrics()
    matter, _ = split_card(card(evaluation=evaluation))
    assert matter["teacher"] == {"model": "packaged:all-MiniLM-L6-v2", "fingerprint": "f" * 64}
    assert matter["base_model"] == HUB_TEACHER  # the packaged bundle is that hub model, and the student starts from it
    expected = {
        (split, metric): scores[key]
        for split, scores in evaluation["student"]["sts"].items()
        for key, metric in (("spearman", "spearman_cosine"), ("pearson", "pearson_cosine"))
    }
    assert indexed_metrics(matter) == expected
    result = matter["model-index"][0]["results"][0]
    assert result["task"]["type"] == "semantic-similarity"
    assert result["dataset"] == {"name": "stsb/validation", "type": "mteb/stsbenchmark-sts", "split": "validation"}
    assert matter["datasets"] == ["stanfordnlp/snli", "mteb/stsbenchmark-sts", "RobZamp/sick"]
    assert matter["metrics"] == ["pearson_cosine", "spearman_cosine"]


def test_an_undefined_correlation_is_left_out_of_the_model_index_not_invented():
    evaluation = eval_metrics()
    evaluation["student"]["sts"]["sick/validation"] = {"spearman": None, "pearson": None, "pairs": 60}
    evaluation["student"]["sts"]["stsb/validation"]["pearson"] = None
    matter, _ = split_card(card(evaluation=evaluation))
    assert indexed_metrics(matter) == {
        ("stsb/validation", "spearman_cosine"): evaluation["student"]["sts"]["stsb/validation"]["spearman"]
    }
    assert matter["metrics"] == ["spearman_cosine"]


def test_what_the_inputs_do_not_hold_is_left_out_never_written_as_unknown():
    matter, body = split_card(card(training={}, lineage=CardLineage()))
    assert "unknown" not in (yaml.safe_dump(matter) + body).lower()
    assert "base_model" not in matter  # no hub id known for the teacher
    assert matter["teacher"] == {"model": "packaged:all-MiniLM-L6-v2"}
    for absent in ("Git commit", "MLflow", "DVC params hash", "Training time", "Steps", "Output Dimensionality"):
        assert absent not in body
    assert "## Lineage" in body and "## Training Details" in body


def test_the_body_follows_sentence_transformers_order_and_shows_student_against_teacher():
    _, body = split_card(card())
    headings = ["## Model Details", "## Usage", "## Evaluation", "## Speed and Size", "## Training Details"]
    assert [body.index(heading) for heading in headings] == sorted(body.index(heading) for heading in headings)
    assert "| stsb/validation | 60 | 0.8123 | 0.8712 | 0.8023 | 0.8612 |" in body
    assert "- **Training time:** 12 min 34 s" in body
    assert "- **Git commit:** `0123abcd`" in body and "`run-that-trained`" in body
    assert 'SentenceTransformer("models/student")' in body and 'load_model("models/student")' in body


def test_the_built_in_datasets_disagree_so_the_licence_is_other_and_each_is_listed():
    matter, body = split_card(card())
    assert matter["license"] == "other"
    assert "| snli | training, evaluation |" in body and "cc-by-sa-4.0" in body
    assert "| sick | evaluation |" in body and "cc-by-nc-sa-3.0" in body
    assert "| stsb | training, evaluation |" in body and "the similarity scores are CC BY-SA 4.0" in body


def test_datasets_that_all_declare_one_licence_give_the_card_that_licence():
    matter, body = split_card(card(OWN.format(", license: cc-by-4.0"), *OWN_EVERYWHERE))
    assert matter["license"] == "cc-by-4.0"
    assert "datasets" not in matter  # local files have no hub id
    assert "| own | training, evaluation | local files | cc-by-4.0 |" in body


def test_an_undeclared_licence_is_said_so_and_makes_the_card_other_beside_a_declared_one():
    alone, _ = split_card(card(OWN.format(""), *OWN_EVERYWHERE))
    assert "license" not in alone  # no dataset declares one: nothing to say
    matter, body = split_card(card(OWN.format(""), *OWN_EVERYWHERE, "train.datasets=[own, snli]"))
    assert matter["license"] == "other"
    assert "none declared (`download.datasets.own.license`)" in body


def test_a_built_in_keeps_its_licence_only_while_it_reads_its_own_data():
    assert load_params(PARAMS_YAML).download.datasets["snli"].license == "cc-by-sa-4.0"
    elsewhere = load_params(PARAMS_YAML, ["download.datasets.snli.hub_id=someone/other-nli"])
    assert elsewhere.download.datasets["snli"].license is None
    declared = ["download.datasets.snli.hub_id=someone/other-nli", "download.datasets.snli.license=mit"]
    assert load_params(PARAMS_YAML, declared).download.datasets["snli"].license == "mit"


def test_the_exports_show_as_a_table_and_an_onnx_snippet_only_when_there_are_any():
    _, body = split_card(card(exports=export_metrics()))
    assert "| onnx_int8 | `model_int8.onnx` | 0.999991 | 0.8121 | 900.0 | 6.50× | 16.0 MB |" in body
    assert 'load_model("models/export", backend="onnx")' in body
    _, without = split_card(card(exports={}))
    assert "ONNX" not in without
    _, refused = split_card(card(exports={"not_exported": "the static family has no graph to export"}))
    assert "Not exported to ONNX: the static family has no graph to export" in refused


def test_the_verdict_and_the_agreement_are_shown_when_eval_json_has_them():
    evaluation = eval_metrics()
    evaluation["verdict"] = {
        "passed": True,
        "headline": "The student keeps 93.2% of the teacher's STS Spearman on stsb/validation.",
        "split_roles": {"stsb/validation": "validation split (used for early stopping)"},
        "checks": [{"goal": "speed, student ÷ teacher", "value": 2.8, "target": "≥ 2", "met": True}],
    }
    evaluation["agreement"] = {"pairwise_spearman": 0.9412}
    _, body = split_card(card(evaluation=evaluation))
    assert evaluation["verdict"]["headline"] in body
    assert "| stsb/validation, validation split (used for early stopping) | 60 |" in body
    assert "| speed, student ÷ teacher | 2.8000 | ≥ 2 | met |" in body
    assert "| pairwise_spearman | 0.9412 |" in body


def test_a_local_teacher_is_named_in_the_front_matter_without_a_base_model():
    lineage = CardLineage(teacher_fingerprint="a" * 64)
    matter, _ = split_card(card("precompute.teacher=/models/my-teacher", lineage=lineage))
    assert matter["teacher"] == {"model": "/models/my-teacher", "fingerprint": "a" * 64}
    assert "base_model" not in matter


@pytest.fixture
def local_teacher(tmp_path, monkeypatch) -> str:
    """A project directory to work in, and the override naming a teacher directory in it (a few bytes to hash)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "modules.json").write_text("[]")
    return f"precompute.teacher={tmp_path / 'teacher'}"


def test_card_lineage_reads_git_dvc_lock_the_parent_run_and_the_teacher(tmp_path, local_teacher, monkeypatch):
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, "parent-run")
    (tmp_path / "notes.txt").write_text("first")
    for command in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *command], check=True)
    cfg = load_params(PARAMS_YAML, [local_teacher, "tracking.enabled=false"])
    found = card_lineage(cfg)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert (found.git_commit, found.git_dirty, found.pipeline_run_id) == (head, False, "parent-run")
    assert (
        found.params_md5 == card_lineage(load_params(PARAMS_YAML, [local_teacher, "tracking.uri=elsewhere"])).params_md5
    )
    assert found.params_md5 != card_lineage(load_params(PARAMS_YAML, [local_teacher, "train.lr=0.1"])).params_md5
    assert found.training_run_id is None  # tracking off
    assert (found.teacher_hub_id, found.teacher_fingerprint) == (None, sha256_tree(tmp_path / "teacher"))
    (tmp_path / "notes.txt").write_text("edited")
    assert card_lineage(cfg).git_dirty is True


def test_the_params_hash_covers_exactly_the_params_dvc_reruns_export_for():
    """The card's params hash and export's params in dvc.yaml are one list, so the card is never stale."""
    [declared] = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["export"]["params"]
    assert tuple(declared["params.resolved.yaml"]) == CARD_PARAMS


def test_the_packaged_teacher_is_the_hub_model_it_bundles_and_a_missing_teacher_has_no_fingerprint(tmp_path):
    cfg = load_params(PARAMS_YAML, ["tracking.enabled=false"])
    found = card_lineage(cfg)
    assert found.teacher_hub_id == HUB_TEACHER
    assert found.teacher_fingerprint == teachers.resolve(cfg.precompute.teacher).fingerprint
    gone = card_lineage(load_params(PARAMS_YAML, [f"precompute.teacher={tmp_path / 'gone'}", "tracking.enabled=false"]))
    assert (gone.teacher_hub_id, gone.teacher_fingerprint) == (None, None)


def test_the_training_run_is_the_one_whose_registered_version_holds_this_student(project):
    from mlflow.tracking import MlflowClient

    student = project / "models" / "student"
    student.mkdir(parents=True)
    (student / "modules.json").write_text("[]")
    cfg = load_params(project / "params.yaml", [f"precompute.teacher={student}"])  # a few bytes to hash
    client = MlflowClient(tracking.tracking_uri(cfg))
    run = client.create_run(client.create_experiment("card"))
    client.create_registered_model(cfg.tracking.registered_model)
    for run_id, model_hash in ((run.info.run_id, sha256_tree(student)), ("another-run", "another-student")):
        tags = {tracking.MODEL_HASH_TAG: model_hash}
        client.create_model_version(cfg.tracking.registered_model, str(student), run_id=run_id, tags=tags)
    assert card_lineage(cfg).training_run_id == run.info.run_id


def test_no_mlflow_store_means_no_training_run_and_none_created(tmp_path, local_teacher, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "models" / "student").mkdir(parents=True)
    assert card_lineage(load_params(PARAMS_YAML, [local_teacher])).training_run_id is None
    assert not (tmp_path / "mlruns").exists()


def test_the_card_module_imports_without_torch():
    code = "import sys, embedforge.report.card; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("objectives", ["{infonce: 0.0, distill: 1.0}", "{infonce: 1.0, distill: 0.0}"])
def test_base_model_only_where_the_student_derives_from_the_teacher(objectives):
    overrides = ["model.init=scratch", f"train.objectives={objectives}"]
    matter, body = split_card(card(*overrides))
    distils = objectives.startswith("{infonce: 0.0")
    assert ("base_model" in matter) == distils
    assert ("distillation of the teacher's embeddings" in body) == distils
