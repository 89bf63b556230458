"""train: fit a student on the pre-tokenized data (and the teacher's vectors), keep the best epoch, save it.

Reads ``data/tokens`` (never tokenizes), ``data/raw`` (which sentences pair up)
and, for distillation, ``data/embeddings/<teacher>``. Writes:

- ``models/student/``: a SentenceTransformer directory (safetensors) of the best epoch;
- ``checkpoints/last`` and ``checkpoints/best``: everything needed to resume;
- ``metrics/train.json``: the summary for ``dvc metrics``;
- ``plots/train/steps.csv`` and ``plots/train/epochs.csv``: the curves for ``dvc plots``.

The loop itself is ``embedforge.training.trainer.Trainer``; this module only
assembles its parts from params.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch

from embedforge import tracking
from embedforge.config import Params
from embedforge.data.schema import RAW_DIR, TRAIN_SPLIT, raw_split_path
from embedforge.data.sentences import split_files
from embedforge.embeddings import EMBEDDINGS_DIR, EmbeddingCache
from embedforge.errors import DataError, UserError
from embedforge.evaluation.sts import cosine_scores, sts_correlation
from embedforge.files import atomic_dir, atomic_path, write_json
from embedforge.models import MODEL_FAMILIES
from embedforge.models import teacher as teachers
from embedforge.models.encoder import count_parameters
from embedforge.stages.tokenize import TOKENIZER_DIRNAME, TOKENS_DIR
from embedforge.stages.validate import require_passed
from embedforge.training import checkpoint
from embedforge.training.batches import (
    Example,
    LengthBucketedBatches,
    TokenStore,
    build_examples,
    sentence_examples,
    text_ids,
)
from embedforge.training.checkpoint import CHECKPOINTS_DIR, TrainState
from embedforge.training.losses import DistillLoss, InfoNCELoss, Objective
from embedforge.training.trainer import Trainer

log = logging.getLogger(__name__)

STUDENT_DIR = Path("models/student")
METRICS_PATH = Path("metrics/train.json")
PLOTS_DIR = Path("plots/train")
ARCHITECTURE_EXCLUDES = ("init", "teacher_layers", "dropout")  # how a model starts or trains, not its shape


class STSValidation:
    """STS Spearman of one raw split, computed from its pre-tokenized sentences."""

    def __init__(self, split: str, store: TokenStore):
        path = self.path_of(split)
        frame = pd.read_parquet(path, columns=["sentence1", "sentence2", "score"])
        if frame.empty:
            raise DataError(f"train.sts_validation: {path} has no rows")
        self.name = split
        self.first = store.rows(list(text_ids(frame["sentence1"])))
        self.second = store.rows(list(text_ids(frame["sentence2"])))
        self.gold = frame["score"].to_numpy(dtype=np.float64)

    @staticmethod
    def path_of(split: str) -> Path:
        """``stsb/validation`` -> data/raw/stsb/validation.parquet, which must exist."""
        dataset, _, name = split.partition("/")
        path = raw_split_path(dataset, name)
        if not name or not path.is_file():
            raise UserError(f"train.sts_validation: {split!r} is not a downloaded <dataset>/<split> ({path} missing)")
        return path

    def __call__(self, trainer: Trainer) -> float | None:
        vectors = trainer.embed_rows(np.concatenate([self.first, self.second]))
        half = len(self.first)
        return sts_correlation(cosine_scores(vectors[:half], vectors[half:]), self.gold, self.name).spearman


class Validation:
    """What early stopping can watch: STS Spearman and the objective's loss on the validation examples."""

    def __init__(self, sts: STSValidation | None, batches: LengthBucketedBatches | None):
        self.sts, self.batches = sts, batches

    def __call__(self, trainer: Trainer) -> dict[str, float | None]:
        scores: dict[str, float | None] = {}
        if self.sts is not None:
            scores["sts_spearman"] = self.sts(trainer)
        if self.batches is not None:
            scores["val_loss"] = trainer.mean_loss(self.batches)
        return scores


def examples_of(cfg: Params, split: str, files: list[Path]) -> list[Example]:
    """Pairs (with hard negatives unless train.hard_negatives is off) when InfoNCE is on, else every
    distinct sentence of ``files``: distillation needs no pairs."""
    params = cfg.train
    if not params.uses_pairs:
        return sentence_examples(TOKENS_DIR, files)
    examples = build_examples(RAW_DIR, [path.parent.name for path in files], split, params.stsb_min_score)
    if params.hard_negatives:
        return examples
    return sorted({Example(e.anchor, e.positive, None) for e in examples}, key=lambda e: (e.anchor, e.positive))


def teacher_matrix(cache: EmbeddingCache, store: TokenStore, needed: np.ndarray) -> torch.Tensor:
    """The teacher's vector of every TokenStore row (float16); every row in ``needed`` must have one."""
    matrix = np.full((len(store), cache.dim), np.nan, dtype=np.float16)
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


def free_memory(device: str) -> int:
    return torch.cuda.mem_get_info()[0] if device == "cuda" else psutil.virtual_memory().available


def plan_micro_batches(cfg: Params, model: torch.nn.Module, parts: int, longest: int, available: int) -> dict[str, int]:
    """Split each batch into enough micro-batches that the estimated step fits in ``available`` bytes.

    ``parts`` sentences per example (anchor, positive, negative) are all held for the
    backward pass; ``longest`` is the longest sequence a batch can have.
    """
    params = cfg.train
    estimate = MODEL_FAMILIES[cfg.model.kind].estimate_memory
    micro_batches = params.grad_accum_steps
    while True:
        size = math.ceil(params.batch_size / micro_batches)
        needed = estimate(model, size * parts, longest)["total"]
        if needed <= available or size == 1:
            break
        micro_batches *= 2
    if needed > available:
        raise UserError(
            f"train: one example needs about {needed / 2**20:.0f} MB to train but {available / 2**20:.0f} MB is "
            f"free: use a smaller model or tokenize.max_length"
        )
    if micro_batches != params.grad_accum_steps:
        log.warning(
            "estimated %.0f MB per step exceeds the %.0f MB free: accumulating %d micro-batches of %d",
            estimate(model, math.ceil(params.batch_size / params.grad_accum_steps) * parts, longest)["total"] / 2**20,
            available / 2**20,
            micro_batches,
            size,
        )
    return {"micro_batches": micro_batches, "estimate_bytes": needed, "available_bytes": int(available)}


def build_objective(cfg: Params, student_dim: int, teacher_dim: int | None) -> Objective:
    params = cfg.train
    losses: dict[str, torch.nn.Module] = {"infonce": InfoNCELoss(params.temperature)}
    if teacher_dim is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            losses["distill"] = DistillLoss(student_dim, teacher_dim, params.distill_loss)
    return Objective(params.objectives, losses)


def write_curves(history: dict[str, list[dict[str, float]]]) -> None:
    """The step and epoch logs as CSV for ``dvc plots``, written whole each time (never half a file)."""
    for name, rows in history.items():
        with atomic_path(PLOTS_DIR / f"{name}.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)


def run(cfg: Params, **hooks: Any) -> dict[str, float | str]:
    """Train per ``cfg.train``; ``hooks`` (``on_step``, ``before_micro_batch``) go to the Trainer, for tests."""
    params = cfg.train
    require_passed()
    tokenizer_dir = TOKENS_DIR / TOKENIZER_DIRNAME
    if not tokenizer_dir.is_dir():
        raise DataError(f"{tokenizer_dir}: missing; run `embedforge tokenize` first")
    device = teachers.pick_device(params.device)
    teacher = teachers.resolve(cfg.precompute.teacher)
    distill = params.objectives.get("distill", 0) > 0

    train_files = split_files(params.datasets, [TRAIN_SPLIT])
    validation_files = [
        path for path in (raw_split_path(d, params.validation_split) for d in params.datasets) if path.is_file()
    ]
    sts_file = STSValidation.path_of(params.sts_validation) if params.sts_validation else None
    store = TokenStore.load(TOKENS_DIR, train_files + validation_files + ([sts_file] if sts_file else []))
    model = MODEL_FAMILIES[cfg.model.kind].build(
        cfg.model, tokenizer_dir, cfg.tokenize.max_length, teacher.path, cfg.seed
    )
    pad_id = model.tokenizer.pad_token_id
    batches = LengthBucketedBatches(
        examples_of(cfg, TRAIN_SPLIT, train_files), store, params.batch_size, pad_id, cfg.seed, params.bucket_batches
    )
    validation_batches = None
    if validation_files:
        validation_batches = LengthBucketedBatches(
            examples_of(cfg, params.validation_split, validation_files), store, params.batch_size, pad_id, cfg.seed
        )
    monitor = params.early_stopping.monitor
    if monitor == "val_loss" and validation_batches is None:
        raise UserError(
            f"train.early_stopping.monitor is val_loss but no {params.validation_split!r} split of "
            f"{', '.join(params.datasets)} was downloaded (train.validation_split)"
        )
    if monitor == "sts_spearman" and not params.sts_validation:
        raise UserError("train.early_stopping.monitor is sts_spearman but train.sts_validation is null")
    sts = STSValidation(params.sts_validation, store) if params.sts_validation else None

    teacher_vectors, teacher_dim = None, None
    if distill:
        cache = EmbeddingCache(EMBEDDINGS_DIR / teacher.name)
        teacher_vectors = teacher_matrix(cache, store, used_rows(batches, validation_batches))
        teacher_dim = cache.dim
    student_dim = model.get_embedding_dimension()
    objective = build_objective(cfg, student_dim, teacher_dim)

    parts = 1 + (batches.positive_rows >= 0).any() + (batches.negative_rows >= 0).any()
    memory = plan_micro_batches(cfg, model, int(parts), int(store.lengths.max(initial=1)), free_memory(device))
    architecture = {
        f"model.{key}": value for key, value in cfg.model.model_dump().items() if key not in ARCHITECTURE_EXCLUDES
    }
    architecture.update({"vocab_size": len(model.tokenizer), "student_dim": student_dim, "teacher_dim": teacher_dim})

    run_log = tracking.current()
    run_log.log_metrics(
        {
            "memory.estimate_mb": memory["estimate_bytes"] / 2**20,
            "memory.available_mb": memory["available_bytes"] / 2**20,
            "model.parameters": count_parameters(model),
            "train.examples": len(batches.examples),
            "train.padding_ratio": batches.padding_ratio(0),
        }
    )
    torch.manual_seed(cfg.seed)
    trainer = Trainer(
        model,
        objective,
        batches,
        params,
        device,
        architecture,
        CHECKPOINTS_DIR,
        Validation(sts, validation_batches),
        teacher_vectors,
        log_metrics=lambda metrics, step: run_log.log_metrics(metrics, step=step),
        **hooks,
    )
    if params.resume:
        if not (CHECKPOINTS_DIR / "last").is_dir():
            raise UserError(f"train.resume is true but {CHECKPOINTS_DIR / 'last'} does not exist: nothing to resume")
        state = trainer.resume("last")
    else:
        shutil.rmtree(CHECKPOINTS_DIR, ignore_errors=True)
        state = TrainState(micro_batches=memory["micro_batches"])
    log.info(
        "training %s (%d parameters) on %d examples, %d steps/epoch, device %s; about %.0f MB per step",
        cfg.model.kind,
        count_parameters(model),
        len(batches.examples),
        len(batches),
        device,
        memory["estimate_bytes"] / 2**20,
    )
    state = trainer.fit(state)
    write_curves(trainer.history)

    best = CHECKPOINTS_DIR / "best"
    if state.best_epoch is not None and best.is_dir():
        checkpoint.load_weights(best, model)
    model.to("cpu")
    with atomic_dir(STUDENT_DIR) as out:
        model.save(str(out))
    run_log.log_sentence_transformer(
        model, "student", cfg.tracking.registered_model, tracking.content_hash(STUDENT_DIR)
    )

    summary = summarize(trainer, state, memory)
    write_json(METRICS_PATH, summary)
    results: dict[str, float | str] = {f"train.{key}": value for key, value in summary.items() if value is not None}
    results["train.device_used"] = device
    return results


def summarize(trainer: Trainer, state: TrainState, memory: dict[str, int]) -> dict[str, Any]:
    """metrics/train.json: how far training got, how good the kept epoch is, and how fast it went."""
    epochs = trainer.history["epochs"]
    totals = trainer.totals
    seconds = sum(totals.seconds.values())
    best = next((e for e in epochs if e["epoch"] == state.best_epoch), epochs[-1] if epochs else {})
    return {
        "steps": state.step,
        "epochs": len(epochs),
        "best_epoch": state.best_epoch,
        "sts_spearman": best.get("val.sts_spearman"),
        "val_loss": best.get("val.val_loss"),
        "examples_per_s": totals.examples / seconds if seconds else 0.0,
        "tokens_per_s": totals.tokens / seconds if seconds else 0.0,
        "train_seconds": seconds,
        **{key: value for key, value in totals.percentages().items()},
        "peak_rss_mb": max((e.get("epoch.peak_rss_mb", 0.0) for e in epochs), default=0.0),
        "peak_cuda_mb": max((e["epoch.peak_cuda_mb"] for e in epochs if "epoch.peak_cuda_mb" in e), default=None),
        "micro_batches": state.micro_batches,
        "memory_estimate_mb": memory["estimate_bytes"] / 2**20,
        "parameters": count_parameters(trainer.model),
    }
