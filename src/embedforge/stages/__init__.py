"""The pipeline's stages, in order. Each module has ``run(cfg) -> metrics`` and nothing about CLI or Prefect.

``run_stage`` is the single entry point the CLI, dvc.yaml (through the CLI) and
the Prefect flow use: it wraps a stage in its MLflow run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from embedforge import tracking
from embedforge.config import Params
from embedforge.paths import RAW_DIR


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    inputs: tuple[Path, ...] = ()

    def module(self):
        return importlib.import_module(f"embedforge.stages.{self.name}")


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("download", "Fetch SNLI, STS-B and SICK (hub, mirror or archives) into data/raw."),
        Stage("validate", "Check data/raw against the Great Expectations suites.", (RAW_DIR,)),
        Stage("precompute", "Encode every distinct sentence with the teacher into data/embeddings.", (RAW_DIR,)),
        Stage(
            "tokenize",
            "Turn every distinct sentence into token ids (chunked to max_length) in data/tokens.",
            (RAW_DIR,),
        ),
        Stage(
            "train",
            "Train the student on data/tokens (and the teacher's vectors); save models/student and checkpoints.",
            (RAW_DIR, Path("data/tokens"), Path("data/embeddings")),
        ),
        Stage(
            "evaluate",
            "Score the student and the teacher: STS, separation, retrieval, speed and size; write metrics/eval.json.",
            (RAW_DIR, Path("models/student")),
        ),
        Stage(
            "export",
            "Write models/export: the student as ONNX (fp32 and int8), checked against PyTorch, and its model card.",
            (RAW_DIR, Path("models/student"), Path("metrics")),
        ),
        Stage(
            "report",
            "Write reports/index.html: the student against the teacher, curves and figures, in one file.",
            (Path("metrics"), Path("plots")),
        ),
    )
}


def run_stage(name: str, cfg: Params) -> dict[str, float | str]:
    """Run one stage in its MLflow run: numbers it returns become metrics, strings become tags."""
    stage = STAGES[name]
    with tracking.start(cfg, name, list(stage.inputs)) as run:
        results = stage.module().run(cfg)
        run.log_metrics({key: value for key, value in results.items() if not isinstance(value, str)})
        run.set_tags({key: value for key, value in results.items() if isinstance(value, str)})
    return results
