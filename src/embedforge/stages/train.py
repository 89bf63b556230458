"""train: fit a student on the pre-tokenized data (and the teacher's vectors), keep the best epoch, save it.

Reads ``data/tokens`` (never tokenizes), ``data/raw`` (which sentences pair up)
and, for distillation, ``data/embeddings/<teacher>``. Writes:

- ``models/student/``: a SentenceTransformer directory (safetensors) of the best epoch;
- ``checkpoints/last`` and ``checkpoints/best``: everything needed to resume;
- ``metrics/train.json``: the summary for ``dvc metrics``;
- ``plots/train/steps.csv`` and ``plots/train/epochs.csv``: the curves for ``dvc plots``.

This module is the recipe, in the order ``run`` shows: the student (its family's ``model.kind`` and the
objective's ``train.objective`` plugins build it), the data, the objective, the memory plan, the phases
(``stages.train_phases``, each a ``training.trainer.Trainer``), then the outputs. With ``train.nproc_per_node``
or ``train.nnodes`` above 1 it launches the processes (``stages.train_launch``), each of which runs this recipe
again as one rank; rank 0 writes everything.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from embedforge import devices, tracking
from embedforge.config import Params, flatten
from embedforge.data.gate import require_passed
from embedforge.errors import DataError, UserError
from embedforge.families import family as family_of
from embedforge.families.base import Family
from embedforge.files import atomic_dir, atomic_path, sha256_tree, write_json
from embedforge.models import count_parameters, padding_id
from embedforge.models import teacher as teachers
from embedforge.objectives import OBJECTIVES
from embedforge.objectives.base import TrainingObjective
from embedforge.paths import CHECKPOINTS_DIR, STUDENT_DIR, TOKENIZER_DIR, TRAIN_METRICS_PATH, TRAIN_PLOTS_DIR
from embedforge.stages import train_launch
from embedforge.stages.train_phases import (
    TrainerParts,
    architecture_of,
    load_checkpoint_weights,
    resumable,
    resume_point,
    run_phases,
)
from embedforge.training import distributed
from embedforge.training.data import TrainingData, load_training_data
from embedforge.training.losses import Objective
from embedforge.training.memory_plan import available_memory
from embedforge.training.memory_plan import plan_micro_batches as plan_for_budget
from embedforge.training.summary import CURVES, PhaseResult, merged_history, staged_summary, summarize
from embedforge.training.validation import STSValidation, check_monitor

log = logging.getLogger(__name__)


def run(cfg: Params, **hooks: Any) -> dict[str, Any]:
    """Train per ``cfg.train``; ``hooks`` (``on_step``, ``before_micro_batch``) go to every Trainer, for tests."""
    device = preflight(cfg)
    if distributed.wanted_size(cfg.train) > 1 and not distributed.started_by_torchrun():
        return train_launch.launch(cfg, tracking.current().run_id)
    family, objective_kind = family_of(cfg.model.kind), OBJECTIVES[cfg.train.objective]
    teacher = teachers.resolve(cfg.precompute.teacher)
    model = build_student(cfg, family, objective_kind, teacher.path)  # before joining: transformers saves on rank 0
    world, device = distributed.join(cfg.train, device)
    try:
        if world.is_main and not cfg.train.resume:
            shutil.rmtree(CHECKPOINTS_DIR, ignore_errors=True)  # a fresh run starts without checkpoints
        world.barrier()
        data = load_training_data(cfg, padding_id(model), teacher.name)
        if advice := family.advise(model, len(data.everything)):
            log.warning(advice)
        objective = build_objective(cfg, family, objective_kind, model, data.teacher_dim)
        family.start_projection(objective, model, data, cfg.seed)
        validation = build_validation(cfg, objective_kind, data)
        memory = plan_memory(cfg, model, data, device)
        parts = TrainerParts(model, family, objective, validation, data, device, hooks, world)
        results = run_phases(cfg, parts, architecture_of(cfg, model, data.teacher_dim), memory)
        return finalize(cfg, family, results, memory, device, world) if world.is_main else {}
    finally:
        distributed.leave()


def preflight(cfg: Params) -> str:
    """Everything that can be refused before any work: the gate, the tokenizer, the device, the world, the resume
    point. Returns the device training runs on."""
    require_passed()
    if not TOKENIZER_DIR.is_dir():
        raise DataError(f"{TOKENIZER_DIR}: missing; run `embedforge tokenize` first")
    device = devices.pick(cfg.train.device, "train.device")
    distributed.pick_backend(cfg.train, device)
    distributed.check_devices(cfg.train, device)
    if cfg.train.resume and not resumable(cfg):
        raise UserError(f"train.resume is true but {resume_point(cfg)} does not exist: nothing to resume")
    return device


def build_student(
    cfg: Params, family: Family, objective_kind: TrainingObjective, teacher_path: Path
) -> torch.nn.Module:
    """The family's new student, as the objective trains it; with train.gradient_checkpointing, recomputing its
    activations in backward."""
    model = family.build(cfg.model, TOKENIZER_DIR, cfg.tokenize.max_length, teacher_path, cfg.seed)
    model = objective_kind.prepare(model)
    if cfg.train.gradient_checkpointing:
        family.enable_checkpointing(model)
    return model


def build_objective(
    cfg: Params, family: Family, objective_kind: TrainingObjective, model: torch.nn.Module, teacher_dim: int | None
) -> Objective:
    """The step's weighted losses, their parameters seeded by ``cfg.seed`` without moving torch's global state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return objective_kind.losses(cfg, model, teacher_dim, family)


def build_validation(cfg: Params, objective_kind: TrainingObjective, data: TrainingData) -> Any:
    """The epoch's judge, once the monitor it must measure is known to be measurable."""
    check_monitor(cfg.train, data.validation_batches)
    sts = STSValidation(cfg.train.sts_validation, data.store) if cfg.train.sts_validation else None
    return objective_kind.validation(cfg, sts, data.validation_batches)


def plan_micro_batches(cfg: Params, model: torch.nn.Module, parts: int, longest: int, available: int) -> dict:
    """Micro-batches whose step fits ``available`` bytes, by the family's estimate plus the objective's share."""
    family, objective_kind = family_of(cfg.model.kind), OBJECTIVES[cfg.train.objective]

    def estimate(sentences: int, length: int) -> int:
        total = family.estimate_memory(model, sentences, length)["total"]
        return total + objective_kind.extra_memory(model, sentences, length)

    return plan_for_budget(cfg.train, estimate, parts, longest, available, cfg.model.kind, family.smaller)


def plan_memory(cfg: Params, model: torch.nn.Module, data: TrainingData, device: str) -> dict[str, int]:
    """Micro-batches that fit the free memory, logged with the run's size before the first step."""
    batches = data.all_batches
    parts = 1 + (batches.positive_rows >= 0).any() + (batches.negative_rows >= 0).any()
    longest = int(data.store.lengths.max(initial=1))
    memory = plan_micro_batches(cfg, model, int(parts), longest, available_memory(cfg.train, device))
    tracking.current().log_metrics(
        {
            "memory.estimate_mb": memory["estimate_bytes"] / 2**20,
            "memory.available_mb": memory["available_bytes"] / 2**20,
            "model.parameters": count_parameters(model),
            "data.examples": len(data.everything),
            "data.held_out_examples": data.held_out_examples,
            "data.padding_ratio": batches.padding_ratio(0),
        }
    )
    log.info(
        "training %s (%d parameters) on %d examples in %d phase(s), device %s; about %.0f MB per step",
        cfg.model.kind,
        count_parameters(model),
        len(data.everything),
        len(data.phases),
        device,
        memory["estimate_bytes"] / 2**20,
    )
    return memory


def finalize(
    cfg: Params,
    family: Family,
    results: list[PhaseResult],
    memory: dict[str, int],
    device: str,
    world: distributed.World,
) -> dict[str, Any]:
    """The curves, the best epoch's weights as models/student (and in MLflow), and metrics/train.json."""
    trainer = results[-1].trainer
    write_curves(merged_history(results))
    best = results[-1].phase.checkpoints / "best"
    if results[-1].state.best_epoch is not None and best.is_dir():
        load_checkpoint_weights(trainer, best)
    with atomic_dir(STUDENT_DIR) as out:
        model = family.save(trainer.model.to("cpu"), out)
    tracking.current().log_sentence_transformer(
        model, "student", cfg.tracking.registered_model, sha256_tree(STUDENT_DIR)
    )
    summary = summarize(results[-1], memory)
    if cfg.train.schedule == "staged":
        summary = staged_summary(results, memory, summary)
    initial = results[0].trainer.history.get("initial", {})
    summary["initial_sts_spearman"] = initial.get("sts_spearman")  # train.sts_validation before the first step
    summary["device"] = device  # what the model card says it trained on
    write_json(TRAIN_METRICS_PATH, summary)
    flat = {f"result.{key}": value for key, value in flatten(summary).items() if value is not None}
    flat["result.device_used"] = flat.pop("result.device")
    flat["result.world_size"] = world.size
    return flat


def write_curves(history: dict[str, list[dict[str, Any]]]) -> None:
    """The step and epoch logs (and the causal LM's generations) as CSV for ``dvc plots`` and the report, written
    whole each time (never half a file)."""
    for name, columns in CURVES.items():
        with atomic_path(TRAIN_PLOTS_DIR / f"{name}.csv") as tmp:
            pd.DataFrame(history.get(name, []), columns=None if history.get(name) else columns).to_csv(tmp, index=False)
