"""train: fit a student on the pre-tokenized data (and the teacher's vectors), keep the best epoch, save it.

Reads ``data/tokens`` (never tokenizes), ``data/raw`` (which sentences pair up)
and, for distillation, ``data/embeddings/<teacher>``. Writes:

- ``models/student/``: a SentenceTransformer directory (safetensors) of the best epoch;
- ``checkpoints/last`` and ``checkpoints/best``: everything needed to resume;
- ``metrics/train.json``: the summary for ``dvc metrics``;
- ``plots/train/steps.csv`` and ``plots/train/epochs.csv``: the curves for ``dvc plots``.

The loop itself is ``embedforge.training.trainer.Trainer``; this module only
assembles its parts from params. With ``train.nproc_per_node`` or ``train.nnodes``
above 1 it launches the processes (``embedforge.training.distributed``), each of
which runs this module again as one rank; rank 0 writes everything.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from embedforge import devices, tracking
from embedforge.config import TRAIN_SPLIT, Params, flatten, threshold
from embedforge.data.gate import require_passed
from embedforge.data.schema import raw_split_path
from embedforge.data.sentences import split_files
from embedforge.embeddings import EmbeddingCache
from embedforge.errors import DataError, UserError
from embedforge.files import atomic_dir, atomic_path, sha256_tree, write_json
from embedforge.models import MODEL_FAMILIES, padding_id, vocabulary_size
from embedforge.models import teacher as teachers
from embedforge.models.causal_lm import CausalLMLoss, LMHead, make_causal
from embedforge.models.encoder import count_parameters
from embedforge.paths import (
    CHECKPOINTS_DIR,
    EMBEDDINGS_DIR,
    STUDENT_DIR,
    TOKENIZER_DIR,
    TOKENS_DIR,
    TRAIN_METRICS_PATH,
    TRAIN_PLOTS_DIR,
)
from embedforge.training import checkpoint, distributed
from embedforge.training.batches import (
    Example,
    LengthBucketedBatches,
    TokenStore,
    in_order,
    pair_examples,
    sentence_examples,
)
from embedforge.training.checkpoint import TrainState
from embedforge.training.growth import DimensionGrowth
from embedforge.training.losses import DistillLoss, InfoNCELoss, Objective, SparsityLoss
from embedforge.training.memory_plan import available_memory, plan_micro_batches
from embedforge.training.phases import Phase, training_phases
from embedforge.training.records import PhaseTimes
from embedforge.training.summary import CURVES, PhaseResult, merged_history, staged_summary, summarize
from embedforge.training.trainer import Trainer
from embedforge.training.validation import LanguageModelValidation, STSValidation, Validation

log = logging.getLogger(__name__)

PROJECTION_FIT_ROWS = 20_000  # sentences the static family's distill projection is fitted on before training
ARCHITECTURE_EXCLUDES = ("init", "teacher_layers", "dropout", "attention")  # how it starts or computes, not its shape
FINISHED_FILE = "finished.json"  # a staged phase's final state and history, so train.resume can skip it


def examples_of(cfg: Params, split: str, files: list[Path]) -> dict[str, list[Example]]:
    """Each dataset's examples: pairs (with hard negatives unless train.hard_negatives is off) when InfoNCE is on,
    else every distinct sentence: distillation and the causal LM need no pairs.

    Labelled pairs give their entailments; scored pairs those at or above the dataset's similar_min_score
    (else train.similar_min_score).
    """
    params = cfg.train
    by_dataset = {}
    for path in files:
        dataset = path.parent.name
        if not params.uses_pairs:
            by_dataset[dataset] = sentence_examples(TOKENS_DIR, [path])
            continue
        source = cfg.download.datasets[dataset]
        min_score = threshold(source, "similar_min_score", params.similar_min_score)
        examples = pair_examples(path, source.has_labels, min_score)
        if not params.hard_negatives:
            examples = in_order(Example(e.anchor, e.positive, None) for e in examples)
        by_dataset[dataset] = examples
    return by_dataset


def teacher_matrix(cache: EmbeddingCache, store: TokenStore, needed: np.ndarray, budget: int) -> torch.Tensor:
    """The teacher's vector of every TokenStore row (float16); every row in ``needed`` must have one.

    A matrix larger than half of ``budget`` (host memory free, or train.memory_limit_mb) lives in a memory-mapped
    file beside the checkpoints, already unlinked, so the page cache holds what fits and nothing is left behind.
    """
    shape = (len(store), cache.dim)
    if 2 * shape[0] * shape[1] > budget / 2:
        CHECKPOINTS_DIR.mkdir(parents=True, exist_ok=True)
        log.info(
            "teacher vectors: %.0f MB, memory-mapped (budget %.0f MB)", 2 * shape[0] * shape[1] / 2**20, budget / 2**20
        )
        with tempfile.TemporaryFile(dir=CHECKPOINTS_DIR) as backing:  # the map keeps its own handle
            matrix = np.memmap(backing, dtype=np.float16, mode="w+", shape=shape)
        matrix[:] = np.nan
    else:
        matrix = np.full(shape, np.nan, dtype=np.float16)
    for ids, vectors in cache.iter_shards():
        rows, present = store.lookup(ids)
        matrix[rows[present]] = vectors[present]
    missing = needed[~np.isfinite(matrix[needed]).all(axis=1)]
    if len(missing):
        raise DataError(
            f"{len(missing)} training sentences (e.g. {store.sorted_ids[missing[0]].decode()}) have no teacher "
            f"vector in {cache.directory}: precompute.datasets and precompute.splits must cover train.datasets "
            f"and train.validation_split; run `embedforge precompute`"
        )
    return torch.from_numpy(matrix)


def used_rows(*batches: LengthBucketedBatches | None) -> np.ndarray:
    rows = [
        source[source >= 0]
        for b in batches
        if b is not None
        for source in (b.anchor_rows, b.positive_rows, b.negative_rows)
    ]
    return np.unique(np.concatenate(rows))


def build_student(cfg: Params, tokenizer_dir: Path, teacher_path: Path) -> torch.nn.Module:
    """The model family's new student; for the causal LM objective, with causal attention; with
    train.gradient_checkpointing, recomputing its activations in backward."""
    family = MODEL_FAMILIES[cfg.model.kind]
    model = family.build(cfg.model, tokenizer_dir, cfg.tokenize.max_length, teacher_path, cfg.seed)
    if cfg.train.objective == "clm":
        model = make_causal(model)
    if cfg.train.gradient_checkpointing:
        family.enable_checkpointing(model)
    return model


def build_objective(cfg: Params, model: torch.nn.Module, teacher_dim: int | None) -> Objective:
    params = cfg.train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if params.objective == "clm":
            return Objective({"clm": 1.0}, {"clm": CausalLMLoss(LMHead.for_student(model))})
        student_dim = model.get_embedding_dimension()
        dynamic = cfg.model.kind == "dynamic"
        weights: dict[str, float] = dict(params.objectives)
        losses: dict[str, torch.nn.Module] = {"infonce": InfoNCELoss(params.temperature)}
        if teacher_dim is not None:
            # a dynamic embedding changes size, and a static table starts in the PCA axes of the teacher's token
            # vectors: both read the teacher's space through a learned projection
            projected = dynamic or cfg.model.kind == "static"
            losses["distill"] = DistillLoss(student_dim, teacher_dim, params.distill_loss, force_projection=projected)
        if dynamic:
            weights["sparsity"] = cfg.model.dynamic.sparsity_weight
            losses["sparsity"] = SparsityLoss()
        return Objective(weights, losses)


def fit_distill_projection(distill: DistillLoss, model: torch.nn.Module, data: TrainingData, seed: int) -> None:
    """Start the distill projection at the least-squares map from the untrained student's vectors onto the
    teacher's, over a seeded sample of the training sentences. A static table starts in its own axes (the PCA
    of the teacher's token vectors): from a random map, the first steps would bend every row they touch
    towards that map, away from the rows they do not touch; from the fitted one, they refine."""
    rows = np.unique(data.all_batches.anchor_rows)
    rows = np.random.default_rng(seed).permutation(rows)[:PROJECTION_FIT_ROWS]
    inputs = MODEL_FAMILIES["static"].model_inputs(model)
    with torch.no_grad():
        vectors = torch.cat(
            [
                model(inputs(*data.store.padded(chunk, data.pad_id)))["sentence_embedding"]
                for chunk in np.array_split(rows, max(1, len(rows) // 4096))
            ]
        )
        student = torch.cat([vectors, torch.ones(len(rows), 1)], dim=1).double()
        solution = torch.linalg.lstsq(student, data.teacher_vectors[torch.from_numpy(rows)].double().cpu()).solution
        distill.projection.weight.copy_(solution[:-1].T)
        distill.projection.bias.copy_(solution[-1])


def write_curves(history: dict[str, list[dict[str, Any]]]) -> None:
    """The step and epoch logs (and the causal LM's generations) as CSV for ``dvc plots`` and the report, written
    whole each time (never half a file)."""
    for name, columns in CURVES.items():
        with atomic_path(TRAIN_PLOTS_DIR / f"{name}.csv") as tmp:
            pd.DataFrame(history.get(name, []), columns=None if history.get(name) else columns).to_csv(tmp, index=False)


@dataclass
class TrainingData:
    """Everything the phases train and validate on, read once: token rows, examples, batches, teacher vectors."""

    store: TokenStore
    phases: list[Phase]
    everything: list[Example]
    all_batches: LengthBucketedBatches
    validation_batches: LengthBucketedBatches | None
    validation: Validation
    teacher_vectors: torch.Tensor | None
    teacher_dim: int | None
    pad_id: int
    batch_size: int
    seed: int
    bucket_batches: int

    def batches_of(self, examples: list[Example], batch_size: int | None = None) -> LengthBucketedBatches:
        """Batches of ``examples``: the ones already built when they are every example at the usual size."""
        size = batch_size or self.batch_size
        if examples is self.everything and size == self.batch_size:
            return self.all_batches
        return LengthBucketedBatches(examples, self.store, size, self.pad_id, self.seed, self.bucket_batches)


def run(cfg: Params, **hooks: Any) -> dict[str, Any]:
    """Train per ``cfg.train``; ``hooks`` (``on_step``, ``before_micro_batch``) go to every Trainer, for tests."""
    require_passed()
    if not TOKENIZER_DIR.is_dir():
        raise DataError(f"{TOKENIZER_DIR}: missing; run `embedforge tokenize` first")
    device = devices.pick(cfg.train.device, "train.device")
    distributed.pick_backend(cfg.train, device)
    distributed.check_devices(cfg.train, device)
    check_resume_point(cfg)
    if distributed.wanted_size(cfg.train) > 1 and not distributed.started_by_torchrun():
        return distributed.launch(cfg, tracking.current().run_id)
    teacher = teachers.resolve(cfg.precompute.teacher)
    model = build_student(cfg, TOKENIZER_DIR, teacher.path)  # before joining: transformers saves on rank 0 only then
    world, device = distributed.join(cfg.train, device)
    try:
        if world.is_main:
            prepare_checkpoints(cfg)
        world.barrier()
        data = load_training_data(cfg, model, teacher)
        objective = build_objective(cfg, model, data.teacher_dim)
        if cfg.model.kind == "static" and "distill" in objective.losses:
            fit_distill_projection(objective.losses["distill"], model, data, cfg.seed)
        memory = plan_memory(cfg, model, data, device)
        results = run_phases(cfg, TrainerParts(model, objective, data, device, hooks, world), memory)
        return finalize(cfg, results, memory, device, world) if world.is_main else {}
    finally:
        distributed.leave()


def load_training_data(cfg: Params, model: torch.nn.Module, teacher: teachers.TeacherRef) -> TrainingData:
    """The token rows of every split training reads, the phases' examples and their batches, and the teacher's
    vectors of every row a batch uses (distillation only)."""
    params = cfg.train
    train_files = split_files(params.datasets, [TRAIN_SPLIT])
    validation_files = [
        path for path in (raw_split_path(d, params.validation_split) for d in params.datasets) if path.is_file()
    ]
    sts_file = STSValidation.path_of(params.sts_validation) if params.sts_validation else None
    store = TokenStore.load(TOKENS_DIR, train_files + validation_files + ([sts_file] if sts_file else []))
    pad_id = padding_id(model)
    phases = training_phases(params, examples_of(cfg, TRAIN_SPLIT, train_files), cfg.seed, CHECKPOINTS_DIR)
    everything = (
        phases[-1].examples if params.schedule == "single" else in_order(e for phase in phases for e in phase.examples)
    )
    advice = MODEL_FAMILIES[cfg.model.kind].advise(model, len(everything))
    if advice:
        log.warning(advice)
    all_batches = LengthBucketedBatches(everything, store, params.batch_size, pad_id, cfg.seed, params.bucket_batches)
    validation_batches = None
    if validation_files:
        examples = examples_of(cfg, params.validation_split, validation_files)
        pooled = [e for chosen in examples.values() for e in chosen]
        validation_batches = LengthBucketedBatches(pooled, store, params.batch_size, pad_id, cfg.seed)
    teacher_vectors, teacher_dim = None, None
    if params.distills:
        cache = EmbeddingCache(EMBEDDINGS_DIR / teacher.name)
        needed = used_rows(all_batches, validation_batches)
        teacher_vectors = teacher_matrix(cache, store, needed, available_memory(cfg, "cpu"))
        teacher_dim = cache.dim
    return TrainingData(
        store=store,
        phases=phases,
        everything=everything,
        all_batches=all_batches,
        validation_batches=validation_batches,
        validation=build_validation(cfg, store, validation_batches),
        teacher_vectors=teacher_vectors,
        teacher_dim=teacher_dim,
        pad_id=pad_id,
        batch_size=params.batch_size,
        seed=cfg.seed,
        bucket_batches=params.bucket_batches,
    )


def plan_memory(cfg: Params, model: torch.nn.Module, data: TrainingData, device: str) -> dict[str, int]:
    """Micro-batches that fit the free memory, logged with the run's size before the first step."""
    batches = data.all_batches
    parts = 1 + (batches.positive_rows >= 0).any() + (batches.negative_rows >= 0).any()
    longest = int(data.store.lengths.max(initial=1))
    memory = plan_micro_batches(cfg, model, int(parts), longest, available_memory(cfg, device))
    tracking.current().log_metrics(
        {
            "memory.estimate_mb": memory["estimate_bytes"] / 2**20,
            "memory.available_mb": memory["available_bytes"] / 2**20,
            "model.parameters": count_parameters(model),
            "data.examples": len(data.everything),
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


def check_resume_point(cfg: Params) -> None:
    """A resumed run needs the checkpoints it resumes from."""
    if cfg.train.resume and not resumable(cfg):
        raise UserError(f"train.resume is true but {resume_point(cfg)} does not exist: nothing to resume")


def prepare_checkpoints(cfg: Params) -> None:
    """A fresh run starts without checkpoints."""
    if not cfg.train.resume:
        shutil.rmtree(CHECKPOINTS_DIR, ignore_errors=True)


def resume_point(cfg: Params) -> Path:
    return CHECKPOINTS_DIR / cfg.train.resume_from if cfg.train.schedule == "single" else CHECKPOINTS_DIR


def resumable(cfg: Params) -> bool:
    return resume_point(cfg).exists()


def run_phases(cfg: Params, parts: TrainerParts, memory: dict[str, int]) -> list[PhaseResult]:
    """Each phase in order (one for ``train.schedule: single``); train.max_minutes spans them all."""
    minutes = cfg.train.max_minutes
    deadline = time.perf_counter() + 60 * minutes if minutes is not None else None
    architecture = architecture_of(cfg, parts.model, parts.data.teacher_dim)
    torch.manual_seed(cfg.seed)
    results: list[PhaseResult] = []
    for phase in parts.data.phases:
        if deadline is not None and time.perf_counter() >= deadline:
            log.warning("train.max_minutes ran out before phase %s: it does not run", phase.label)
            break
        results.append(train_phase(cfg, parts, phase, dict(architecture), deadline, memory, results))
    return results


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


@dataclass
class TrainerParts:
    """What every phase's Trainer shares; ``trainer_for`` adds the phase's batches, loggers and deadline."""

    model: torch.nn.Module
    objective: Objective
    data: TrainingData
    device: str
    hooks: dict[str, Any]
    world: distributed.World

    def trainer_for(
        self,
        cfg: Params,
        phase: Phase,
        architecture: dict[str, Any],
        deadline: float | None,
        run_log: tracking.StageRun,
    ) -> Trainer:
        data = self.data
        growth = None
        if cfg.model.kind == "dynamic":
            sample = data.validation_batches if data.validation_batches is not None else data.all_batches
            growth = DimensionGrowth(
                cfg.model.dynamic,
                sample.anchor_rows,
                data.batch_size,
                lambda size, chosen=phase.examples: data.batches_of(chosen, size),
            )
        trainer = Trainer(
            self.model,
            self.objective,
            data.batches_of(phase.examples),
            phase.params,
            self.device,
            architecture,
            phase.checkpoints,
            data.validation,
            data.teacher_vectors,
            log_metrics=lambda metrics, step: run_log.log_metrics(metrics, step=step),
            log_text=run_log.log_text,
            on_epoch_end=growth,
            deadline=deadline,
            world=self.world,
            model_inputs=MODEL_FAMILIES[cfg.model.kind].model_inputs(self.model),
            **self.hooks,
        )
        if growth is not None:
            growth.adopt(trainer, TrainState(), self.model.get_embedding_dimension())  # a later phase starts grown
        return trainer


def build_validation(cfg: Params, store: TokenStore, batches: LengthBucketedBatches | None):
    """The epoch's judge; refuses an early-stopping monitor that nothing would measure."""
    params = cfg.train
    monitor = params.early_stopping.monitor
    if monitor == "val_loss" and batches is None:
        raise UserError(
            f"train.early_stopping.monitor is val_loss but no {params.validation_split!r} split of "
            f"{', '.join(params.datasets)} was downloaded (train.validation_split)"
        )
    if monitor == "sts_spearman" and not params.sts_validation:
        raise UserError("train.early_stopping.monitor is sts_spearman but train.sts_validation is null")
    sts = STSValidation(params.sts_validation, store) if params.sts_validation else None
    if params.objective != "clm":
        return Validation(sts, batches)
    if batches is None:
        raise UserError(
            f"train.objective: clm reports perplexity on the {params.validation_split!r} split of "
            f"{', '.join(params.datasets)}, which was not downloaded (train.validation_split)"
        )
    return LanguageModelValidation(sts, batches, params.clm.prompts, params.clm.max_new_tokens)


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
        sts = parts.data.validation.sts
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
        match_dims(trainer, source)
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


def finalize(
    cfg: Params, results: list[PhaseResult], memory: dict[str, int], device: str, world: distributed.World
) -> dict[str, Any]:
    """The curves, the best epoch's weights as models/student (and in MLflow), and metrics/train.json."""
    trainer = results[-1].trainer
    write_curves(merged_history(results))
    best = results[-1].phase.checkpoints / "best"
    if results[-1].state.best_epoch is not None and best.is_dir():
        load_checkpoint_weights(trainer, best)
    model = trainer.model.to("cpu")
    with atomic_dir(STUDENT_DIR) as out:
        model.save(str(out))
    tracking.current().log_sentence_transformer(
        model, "student", cfg.tracking.registered_model, sha256_tree(STUDENT_DIR)
    )
    summary = summarize(results[-1], memory)
    if cfg.train.schedule == "staged":
        summary = staged_summary(results, memory, summary)
    initial = results[0].trainer.history.get("initial", {})
    summary["initial_sts_spearman"] = initial.get("sts_spearman")  # train.sts_validation before the first step
    write_json(TRAIN_METRICS_PATH, summary)
    flat = {f"result.{key}": value for key, value in flatten(summary).items() if value is not None}
    flat["result.device_used"] = device
    flat["result.world_size"] = world.size
    return flat


def match_dims(trainer: Trainer, directory: Path) -> None:
    """A dynamic model takes the dimensions of the checkpoint it is about to load."""
    if isinstance(trainer.on_epoch_end, DimensionGrowth):
        dims = checkpoint.read_state(directory).architecture["student_dim"]
        trainer.on_epoch_end.match(trainer, TrainState(), dims)


def load_checkpoint_weights(trainer: Trainer, directory: Path) -> None:
    match_dims(trainer, directory)
    checkpoint.load_weights(directory, trainer.model, trainer.objective)


def read_finished(trainer: Trainer, path: Path) -> TrainState:
    """A finished phase's state, with its history and timings put back into ``trainer`` for the curves and summary."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    trainer.history, trainer.totals = saved["history"], PhaseTimes(**saved["totals"])
    return TrainState(**saved["state"])
