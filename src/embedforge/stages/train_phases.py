"""The phases of a training run, in order, each resumed, continued or started as train.resume and the schedule say.

One phase for ``train.schedule: single``, three for ``staged``; each phase trains with its own ``Trainer`` (and,
staged, its own MLflow child run), and ``train.max_minutes`` spans them all. A staged phase that finished is
read back from its ``finished.json`` instead of trained again. Where a resumed run starts (``resume_point``)
and what its checkpoints must match (``architecture_of``) live here too.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from embedforge import tracking
from embedforge.config import Params, flatten
from embedforge.families.base import Family
from embedforge.files import write_json
from embedforge.models import vocabulary_size
from embedforge.paths import CHECKPOINTS_DIR
from embedforge.training import checkpoint
from embedforge.training.checkpoint import TrainState
from embedforge.training.data import TrainingData
from embedforge.training.distributed import World
from embedforge.training.losses import Objective
from embedforge.training.phases import Phase
from embedforge.training.records import PhaseTimes
from embedforge.training.summary import PhaseResult, summarize
from embedforge.training.trainer import Trainer

log = logging.getLogger("embedforge.stages.train")

FINISHED_FILE = "finished.json"  # a staged phase's final state and history, so train.resume can skip it
ARCHITECTURE_EXCLUDES = ("init", "teacher_layers", "dropout", "attention")  # how it starts or computes, not its shape


@dataclass
class TrainerParts:
    """What every phase's Trainer shares; ``trainer_for`` adds the phase's batches, loggers and deadline."""

    model: torch.nn.Module
    family: Family
    objective: Objective
    validation: Any
    data: TrainingData
    device: str
    hooks: dict[str, Any]
    world: World

    def trainer_for(
        self,
        cfg: Params,
        phase: Phase,
        architecture: dict[str, Any],
        deadline: float | None,
        run_log: tracking.StageRun,
    ) -> Trainer:
        data = self.data
        epoch_hook = self.family.epoch_hook(cfg.model, data, phase.examples)
        trainer = Trainer(
            self.model,
            self.objective,
            data.batches_of(phase.examples),
            phase.params,
            self.device,
            architecture,
            phase.checkpoints,
            self.validation,
            data.teacher_vectors,
            log_metrics=lambda metrics, step: run_log.log_metrics(metrics, step=step),
            log_text=run_log.log_text,
            epoch_hook=epoch_hook,
            deadline=deadline,
            world=self.world,
            model_inputs=self.family.model_inputs(self.model),
            **self.hooks,
        )
        if epoch_hook is not None:
            epoch_hook.attach(trainer)
        return trainer


def run_phases(
    cfg: Params, parts: TrainerParts, architecture: dict[str, Any], memory: dict[str, int]
) -> list[PhaseResult]:
    """Each phase in order (one for ``train.schedule: single``); train.max_minutes spans them all."""
    minutes = cfg.train.max_minutes
    deadline = time.perf_counter() + 60 * minutes if minutes is not None else None
    torch.manual_seed(cfg.seed)
    results: list[PhaseResult] = []
    for phase in parts.data.phases:
        if deadline is not None and time.perf_counter() >= deadline:
            log.warning("train.max_minutes ran out before phase %s: it does not run", phase.label)
            break
        results.append(train_phase(cfg, parts, phase, dict(architecture), deadline, memory, results))
    return results


def train_phase(
    cfg: Params,
    parts: TrainerParts,
    phase: Phase,
    architecture: dict[str, Any],
    deadline: float | None,
    memory: dict[str, int],
    done: list[PhaseResult],
) -> PhaseResult:
    """Train one phase in its own MLflow run (a child of the train run when staged), resuming or continuing as
    train.resume and the schedule say; a staged phase that already finished is only read back."""
    finished = phase.checkpoints / FINISHED_FILE
    parent = tracking.current()
    if phase.name is not None and cfg.train.resume and finished.is_file():
        trainer = parts.trainer_for(cfg, phase, architecture, deadline, parent)
        state = read_finished(trainer, finished)
        log.info("train.resume: phase %s already finished at step %d", phase.name, state.step)
        return PhaseResult(phase, trainer, state)
    with (
        tracking.start(cfg, f"train.{phase.name}", parent_run_id=parent.run_id)
        if phase.name
        else nullcontext(parent) as run_log
    ):
        trainer = parts.trainer_for(cfg, phase, architecture, deadline, run_log)
        if phase.name is not None:
            run_log.log_metrics({"phase.examples": len(phase.examples)})
        state = starting_state(cfg, trainer, phase, memory, done)
        sts = parts.validation.sts
        if not done and state.step == 0 and sts is not None and parts.world.is_main:  # what training must beat
            trainer.history["initial"] = {"sts_spearman": sts(trainer)}
        state = trainer.fit(state)
        result = PhaseResult(phase, trainer, state)
        if phase.name is not None and parts.world.is_main:
            summary = summarize(result, memory)
            run_log.log_metrics(
                {f"result.{key}": value for key, value in flatten(summary).items() if isinstance(value, int | float)}
            )
            write_json(finished, {"state": asdict(state), "history": trainer.history, "totals": asdict(trainer.totals)})
    return result


def starting_state(
    cfg: Params, trainer: Trainer, phase: Phase, memory: dict[str, int], done: list[PhaseResult]
) -> TrainState:
    """Where the phase starts: its last (or best: train.resume_from) checkpoint when train.resume, else fresh,
    from the previous phase's best weights when a staged phase continues it."""
    source = phase.checkpoints / cfg.train.resume_from
    if cfg.train.resume and source.is_dir():
        shape_like(trainer, source)
        return trainer.resume(cfg.train.resume_from)
    shutil.rmtree(phase.checkpoints, ignore_errors=True)
    state = TrainState(micro_batches=memory["micro_batches"])
    if phase.continues:
        previous = done[-1]
        best = previous.phase.checkpoints / "best"
        if previous.state.best_epoch is not None and best.is_dir():
            load_checkpoint_weights(trainer, best)
        state.resumed_at_step = 0  # the resume ramp replaces a second warm-up
    return state


def shape_like(trainer: Trainer, directory: Path) -> None:
    """A model whose shape changes between epochs takes the shape of the checkpoint it is about to load."""
    if trainer.epoch_hook is not None:
        trainer.epoch_hook.before_loading(trainer, checkpoint.read_state(directory).architecture)


def load_checkpoint_weights(trainer: Trainer, directory: Path) -> None:
    shape_like(trainer, directory)
    checkpoint.load_weights(directory, trainer.model, trainer.objective)


def read_finished(trainer: Trainer, path: Path) -> TrainState:
    """A finished phase's state, with its history and timings put back into ``trainer`` for the curves and summary."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    trainer.history, trainer.totals = saved["history"], PhaseTimes(**saved["totals"])
    return TrainState(**saved["state"])


def resume_point(cfg: Params) -> Path:
    return CHECKPOINTS_DIR / cfg.train.resume_from if cfg.train.schedule == "single" else CHECKPOINTS_DIR


def resumable(cfg: Params) -> bool:
    return resume_point(cfg).exists()


def architecture_of(cfg: Params, model: torch.nn.Module, teacher_dim: int | None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the model's shape, vocabulary, widths and objective."""
    architecture = {
        f"model.{key}": value
        for key, value in flatten(cfg.model.model_dump()).items()
        if key.partition(".")[0] not in ARCHITECTURE_EXCLUDES
    }
    architecture.update(
        {
            "vocab_size": vocabulary_size(model),
            "student_dim": model.get_embedding_dimension(),
            "teacher_dim": teacher_dim,
            "train.objective": cfg.train.objective,
        }
    )
    return architecture
