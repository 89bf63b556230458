"""The training loop, readable top to bottom: ``Trainer.fit``.

One optimizer step trains one batch of ``train.batch_size`` examples, split into
``micro_batches`` pieces whose gradients accumulate. Around that loop: warm-up
then cosine learning rate (times the ramp after a resume), gradient clipping,
mixed precision on CUDA, a checkpoint every ``checkpoint_every_steps`` steps and
at every epoch's end, validation and early stopping per epoch, and a record of
where the time went (data / forward / loss / backward / optimizer).

Faults it survives: running out of memory halves the micro-batch (doubling the
accumulation, so the step is unchanged) and retries the step; a kill loses at
most the steps since the last checkpoint. Faults it refuses: a non-finite loss
stops the run naming the step and batch, leaving the checkpoints as they were.

In a world of several processes (``training.distributed``) each rank trains its
slice of every global batch, InfoNCE draws its candidates from the whole global
batch, the gradients are summed across ranks before clipping, and the ranks agree
on every decision: backing off after running out of memory, refusing a non-finite
loss, early stopping (rank 0 validates) and running out of time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from embedforge import devices
from embedforge.config import TrainParams
from embedforge.errors import UserError
from embedforge.memory import PeakMemory
from embedforge.models import padded_inputs
from embedforge.training import checkpoint
from embedforge.training.batches import LengthBucketedBatches, PairBatch, TokenBatch
from embedforge.training.checkpoint import TrainState
from embedforge.training.distributed import (
    ONE_PROCESS,
    World,
    gathered_candidates,
    micro_batch_count,
    rank_micro_batches,
    rank_share,
    sum_gradients,
)
from embedforge.training.losses import Objective
from embedforge.training.records import PHASES, PhaseTimes, StepRecord
from embedforge.training.schedule import resume_ramp, warmup_cosine

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 256
OOM_MESSAGES = ("out of memory", "can't allocate memory")


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


class OutOfMemoryElsewhere(RuntimeError):
    """Another rank ran out of memory: every rank backs off together."""


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError | OutOfMemoryElsewhere) or (
        isinstance(error, RuntimeError) and any(message in str(error) for message in OOM_MESSAGES)
    )


class EpochBatches(torch.utils.data.Dataset):
    """The remaining global batches of one epoch, each as (example indices, this rank's built micro-batches), for a
    DataLoader."""

    def __init__(
        self, batches: LengthBucketedBatches, plan: list[list[int]], micro_batches: int, world: World = ONE_PROCESS
    ):
        self.batches, self.plan, self.micro_batches, self.world = batches, plan, micro_batches, world

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[list[int], list[PairBatch]]:
        indices = self.plan[index]
        return indices, rank_micro_batches(self.batches, indices, self.micro_batches, self.world)


def unchanged(item: Any) -> Any:
    return item


class Trainer:
    """Trains ``model`` (anything mapping token features to ``sentence_embedding``) on ``batches``.

    ``teacher_vectors`` holds the teacher's embedding of every TokenStore row (needed
    by the distill objective). ``on_step`` is called after each optimizer step and
    ``before_micro_batch`` before each forward pass: hooks for logging and for tests
    that inject faults. ``on_epoch_end`` may change the model between epochs (a model
    family that grows does); it runs after the best checkpoint is saved and before the
    last one, and returns metrics to log.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        batches: LengthBucketedBatches,
        params: TrainParams,
        device: str,
        architecture: dict[str, Any],
        checkpoints: Path,
        validate: Callable[[Trainer], dict[str, float | None]],
        teacher_vectors: torch.Tensor | None = None,
        log_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
        log_text: Callable[[str, str], None] = lambda text, artifact_file: None,
        on_step: Callable[[StepRecord], None] | None = None,
        before_micro_batch: Callable[[Trainer, TrainState, int], None] | None = None,
        on_epoch_end: Callable[[Trainer, TrainState], dict[str, float]] | None = None,
        deadline: float | None = None,
        world: World = ONE_PROCESS,
        model_inputs: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]] = padded_inputs,
    ):
        self.model = model.to(device)
        self.model_inputs = model_inputs
        self.objective = objective.to(device)
        self.batches = batches
        self.params = params
        self.device = device
        self.architecture = architecture
        self.checkpoints = checkpoints
        self.validate = validate
        self.teacher_vectors = None if teacher_vectors is None else teacher_vectors.to(device)
        self.log_metrics = log_metrics
        self.log_text = log_text
        self.on_step = on_step
        self.before_micro_batch = before_micro_batch
        self.on_epoch_end = on_epoch_end
        self.deadline = deadline  # the perf_counter time train.max_minutes ends at (it spans every phase)
        self.world = world
        self.measure_step = True  # wait for the device at each lap of this step (see PhaseTimes)
        self.dtype = devices.half_precision(params.precision, device)
        scaled = self.dtype == torch.float16 and device in devices.ACCELERATORS
        self.scaler = torch.amp.GradScaler(device, enabled=scaled)
        self.optimizer = self.build_optimizer()
        self.steps_per_epoch = len(batches)
        self.total_steps = min(params.epochs * self.steps_per_epoch, params.max_steps or math.inf)
        self.warmup_steps = round(params.warmup_ratio * self.total_steps)
        self.history: dict[str, list[dict[str, Any]]] = {"steps": [], "epochs": []}
        self.totals = PhaseTimes()

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW without weight decay on biases and norms; the fused kernel wherever torch has one (CPU too)."""
        decay, no_decay = [], []
        for module in (self.model, self.objective):
            for name, parameter in module.named_parameters():
                if parameter.requires_grad:
                    (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": self.params.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.params.lr, fused=True)

    def rebatch(self, batches: LengthBucketedBatches, state: TrainState) -> None:
        """Train the remaining epochs on ``batches`` (e.g. of another batch size); the schedule's end stays at
        the last epoch, now counted in the new batches' steps."""
        self.batches = batches
        self.steps_per_epoch = len(batches)
        remaining = (self.params.epochs - state.epoch) * self.steps_per_epoch
        self.total_steps = min(state.step + remaining, self.params.max_steps or math.inf)

    def fit(self, state: TrainState) -> TrainState:
        """Train from ``state`` (fresh or loaded from a checkpoint) until the epochs, steps or minutes run out
        or early stopping says enough; return the final state."""
        stop = False
        while state.epoch < self.params.epochs and not stop:
            times = PhaseTimes()
            with PeakMemory() as memory:
                with self.progress(state) as progress:
                    self.model.train()
                    self.lap()
                    for indices, micro in self.loader(state):
                        record = self.train_step(state, indices, micro, times)
                        if self.logs_step(state):
                            progress.set_postfix(loss=f"{record.loss_value:.4f}", lr=f"{record.lr:.2e}", refresh=False)
                        progress.update()
                        if state.step % self.params.checkpoint_every_steps == 0:
                            self.save("last", state)
                        stop = self.out_of_budget(state)
                        if stop:
                            break
                scores = self.world.broadcast(self.validate(self) if self.world.is_main else None)
            improved = self.update_early_stopping(state, scores)
            stop = stop or state.epochs_without_improvement >= self.params.early_stopping.patience
            self.end_epoch(state, scores, times, memory, improved)
        return state

    def progress(self, state: TrainState) -> tqdm:
        """A bar over the epoch's steps (on stderr, at most once a second, so logs stay readable)."""
        return tqdm(
            total=self.steps_per_epoch,
            initial=state.batches_done,
            desc=f"epoch {state.epoch + 1}/{self.params.epochs}",
            unit="step",
            mininterval=1.0,
            disable=not self.world.is_main,
        )

    def loader(self, state: TrainState) -> Iterator[tuple[list[int], list[PairBatch]]]:
        """The epoch's remaining batches, built ahead by ``train.loader_workers`` worker processes.

        The loader gets its own generator: seeding workers from torch's global one would shift
        the dropout masks, and a resumed run would no longer retrace the uninterrupted one.
        """
        plan = self.batches.plan(state.epoch)[state.batches_done :]
        workers = self.params.loader_workers
        return iter(
            torch.utils.data.DataLoader(
                EpochBatches(self.batches, plan, state.micro_batches, self.world),
                batch_size=None,
                shuffle=False,
                num_workers=workers,
                collate_fn=unchanged,
                prefetch_factor=4 if workers else None,
                generator=torch.Generator(),
            )
        )

    def train_step(
        self, state: TrainState, indices: list[int], micro: list[PairBatch], times: PhaseTimes
    ) -> StepRecord:
        """One optimizer step over one global batch (this rank's ``micro`` of it), retried with smaller
        micro-batches when memory runs out anywhere."""
        self.measure_step = self.device == "cpu" or self.logs_step(state, ahead=1)
        times.record("data", self.lap(), self.measure_step)
        lr = self.learning_rate(state)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, counts = rank_share(indices, self.world)
        while True:
            if len(micro) != micro_batch_count(indices, state.micro_batches, self.world):
                micro = rank_micro_batches(self.batches, indices, state.micro_batches, self.world)
            try:
                loss, parts = self.accumulate(state, micro, len(indices) if counts else math.inf, times)
                break
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                self.back_off(state, indices, error)
        if self.world.distributed:
            sum_gradients(self.trainable())
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable(), self.params.max_grad_norm)
        self.scaler.step(self.optimizer)  # sync point with fp16 only: the scaler reads whether gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        times.record("optimizer", self.lap(), self.measure_step)
        state.step += 1
        state.batches_done += 1
        if counts:
            times.examples += sum(batch.num_examples for batch in micro)
            times.tokens += sum(batch.num_tokens for batch in micro)
        record = StepRecord(state.step, state.epoch, loss, parts, lr)
        if self.logs_step(state):
            if self.world.distributed:
                record.loss, record.parts = self.summed(loss, parts)
            self.log_step(record, times)
        if self.on_step is not None:
            self.on_step(record)
        self.lap()
        return record

    def accumulate(
        self, state: TrainState, micro: list[PairBatch], batch_examples: float, times: PhaseTimes
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and backward every micro-batch, each loss weighted by its share of the global batch of
        ``batch_examples`` (infinite for a rank whose examples do not count: weight 0)."""
        self.optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        parts = {name: torch.zeros((), device=self.device) for name in self.objective.weights}
        self.lap()
        out_of_memory: BaseException | None = None
        for index, batch in enumerate(micro):
            share = batch.num_examples / batch_examples
            try:
                if self.before_micro_batch is not None:
                    self.before_micro_batch(self, state, index)
                loss, batch_parts = self.loss(batch, times, counts=math.isfinite(batch_examples))
                self.scaler.scale(loss * share).backward()
            except Exception as error:
                if not (self.world.distributed and is_out_of_memory(error)):
                    raise
                out_of_memory = error  # the other ranks finish their micro-batches, then all agree to back off
                break
            times.record("backward", self.lap(), self.measure_step)
            losses.append(share * loss.detach().float())
            for name, value in batch_parts.items():
                parts[name] += share * value.float()
        if self.world.distributed and self.world.any(out_of_memory is not None, self.device):
            raise out_of_memory or OutOfMemoryElsewhere("another training process ran out of memory")
        self.refuse_non_finite(state, torch.stack(losses), micro)
        return torch.stack(losses).sum(), parts

    def refuse_non_finite(self, state: TrainState, losses: torch.Tensor, micro: list[PairBatch]) -> None:
        """Stop before the optimizer step if a micro-batch's loss is not finite on any rank, naming where.

        Sync point: one read of one flag per step, so a diverged run stops at the step it diverged.
        """
        finite = torch.isfinite(losses)
        if not self.world.any(not bool(finite.all()), self.device):
            return
        if bool(finite.all()):
            raise TrainingDiverged(
                f"train: the loss became non-finite on another training process at step {state.step + 1}; "
                f"checkpoints/best is untouched. Lower train.lr, or use train.precision: fp32"
            )
        index = int((~finite).nonzero()[0])
        raise TrainingDiverged(
            f"train: the loss became {float(losses[index])} at step {state.step + 1} (epoch {state.epoch + 1}, "
            f"batch {state.batches_done + 1} of {self.steps_per_epoch}, micro-batch {index + 1}, first "
            f"sentence {micro[index].anchors.sentence_ids[0]}); checkpoints/best is untouched. Lower train.lr, "
            f"or use train.precision: fp32"
        )

    def loss(
        self, batch: PairBatch, times: PhaseTimes | None = None, counts: bool | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The objective on one (micro-)batch; ``times`` splits the time into forward and loss.

        ``counts`` is given for a training step of a distributed world: InfoNCE then ranks
        each anchor against the candidates of every rank (none from a rank that does not
        count). Validation passes nothing: rank 0 alone scores its local batches.
        """
        gathered = counts is not None and self.world.distributed and "infonce" in self.objective.weights
        with self.autocast():
            try:
                outputs = [self.features(part) for part in batch.parts]
            except Exception as error:
                if gathered and is_out_of_memory(error):
                    self.world.any(True, self.device)  # the answer the other ranks wait for before gathering
                raise
            if gathered and self.world.any(False, self.device):
                raise OutOfMemoryElsewhere("another training process ran out of memory")
            embeddings = [output["sentence_embedding"] for output in outputs]
            if times is not None:
                times.record("forward", self.lap(), self.measure_step)
            inputs: dict[str, tuple[torch.Tensor, ...]] = {}
            if "infonce" in self.objective.weights:
                negatives = embeddings[2] if batch.negatives is not None else None
                inputs["infonce"] = (
                    gathered_candidates(embeddings[0], embeddings[1], negatives, bool(counts))
                    if gathered
                    else (embeddings[0], embeddings[1], negatives)
                )
            if "distill" in self.objective.weights:
                rows = torch.from_numpy(np.concatenate([part.rows for part in batch.parts])).to(self.device)
                inputs["distill"] = (torch.cat(embeddings).float(), self.teacher_vectors[rows].float())
            if "clm" in self.objective.weights:
                first = outputs[0]
                inputs["clm"] = (first["token_embeddings"], first["input_ids"], first["attention_mask"])
            if "sparsity" in self.objective.weights:
                inputs["sparsity"] = (torch.cat(embeddings).float(),)
            loss, parts = self.objective(inputs)
        if times is not None:
            times.record("loss", self.lap(), self.measure_step)
        return loss, parts

    def features(self, part: TokenBatch) -> dict[str, torch.Tensor]:
        """Everything the model computes for ``part``: its inputs, ``token_embeddings``, ``sentence_embedding``."""
        features = self.model_inputs(  # host-to-device copies: from pageable memory they wait for the device's queue
            part.input_ids.to(self.device, non_blocking=True), part.attention_mask.to(self.device, non_blocking=True)
        )
        return self.model(features)

    def embed(self, part: TokenBatch) -> torch.Tensor:
        return self.features(part)["sentence_embedding"]

    @torch.no_grad()
    def embed_rows(self, rows: np.ndarray) -> np.ndarray:
        """Eval-mode embeddings of TokenStore rows, shortest first in batches, returned in the given order."""
        was_training = self.model.training
        self.model.eval()
        order = np.argsort(self.batches.store.lengths[rows], kind="stable")
        out = np.empty((len(rows), 0), dtype=np.float32)
        chunks = []
        for start in range(0, len(order), EVAL_BATCH_SIZE):
            chosen = rows[order[start : start + EVAL_BATCH_SIZE]]
            input_ids, attention_mask = self.batches.store.padded(chosen, self.batches.pad_id)
            with self.autocast():
                chunks.append(self.embed(TokenBatch(input_ids, attention_mask, [], chosen)).float().cpu().numpy())
        if chunks:
            out = np.empty((len(rows), chunks[0].shape[1]), dtype=np.float32)
            out[order] = np.concatenate(chunks)
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def mean_loss(self, batches: LengthBucketedBatches) -> float:
        """The objective averaged over ``batches`` (epoch 0's fixed plan), without dropout."""
        was_training = self.model.training
        self.model.eval()
        total = weight = 0.0
        for batch in batches.epoch(0):
            loss, _ = self.loss(batch)
            total += batch.num_examples * loss.item()
            weight += batch.num_examples
        self.model.train(was_training)
        return total / weight if weight else math.nan

    def summed(
        self, loss: torch.Tensor, parts: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The global batch's loss and parts: each rank's are weighted by its share, so they add up."""
        values = torch.stack([loss, *parts.values()]).float()
        torch.distributed.all_reduce(values)
        return values[0], dict(zip(parts, values[1:], strict=True))

    def learning_rate(self, state: TrainState) -> float:
        multiplier = warmup_cosine(state.step, self.total_steps, self.warmup_steps, self.params.lr_floor)
        ramp = self.params.resume_warmup
        if state.resumed_at_step is not None and ramp.enabled:
            epochs_since = (state.step - state.resumed_at_step) / self.steps_per_epoch
            multiplier *= resume_ramp(epochs_since, ramp.epochs, ramp.start)
        return self.params.lr * multiplier

    def back_off(self, state: TrainState, indices: list[int], error: BaseException) -> None:
        """Out of memory: halve the micro-batch and double the accumulation, so the step stays the same."""
        self.optimizer.zero_grad(set_to_none=True)
        devices.empty_cache(self.device)
        largest = math.ceil(len(indices) / self.world.size / state.micro_batches)
        if largest <= 1:
            raise UserError(
                f"train: out of memory at step {state.step + 1} even with one example per micro-batch "
                f"({str(error).splitlines()[0]}); use a smaller model or tokenize.max_length"
            ) from None
        state.micro_batches *= 2
        log.warning(
            "out of memory at step %d: micro-batch %d -> %d examples, accumulating %d micro-batches per step",
            state.step + 1,
            largest,
            math.ceil(len(indices) / self.world.size / state.micro_batches),
            state.micro_batches,
        )
        self.log_metrics({"step.micro_batches": state.micro_batches}, state.step)

    def logs_step(self, state: TrainState, ahead: int = 0) -> bool:
        """Whether step ``state.step + ahead`` is logged: every ``train.log_every_steps``-th and each epoch's last
        (so a short run still has a curve)."""
        step, done = state.step + ahead, state.batches_done + ahead
        return step % self.params.log_every_steps == 0 or done == self.steps_per_epoch

    def out_of_budget(self, state: TrainState) -> bool:
        """Whether train.max_steps or train.max_minutes ran out (on any rank: clocks differ, ranks stop together)."""
        if self.params.max_steps is not None and state.step >= self.params.max_steps:
            return True
        return self.deadline is not None and self.world.any(time.perf_counter() >= self.deadline, self.device)

    def update_early_stopping(self, state: TrainState, scores: dict[str, float | None]) -> bool:
        """Record the monitored score; True when it beats the best so far by more than ``min_delta``."""
        rule = self.params.early_stopping
        score = scores.get(rule.monitor)
        if score is None or not math.isfinite(score):
            log.warning(
                "epoch %d: %s is undefined, so it does not count as an improvement", state.epoch + 1, rule.monitor
            )
            state.epochs_without_improvement += 1
            return False
        sign = 1.0 if rule.monitor == "sts_spearman" else -1.0
        if state.best_score is None or sign * (score - state.best_score) > rule.min_delta:
            state.best_score, state.best_epoch = score, state.epoch + 1
            state.epochs_without_improvement = 0
            return True
        state.epochs_without_improvement += 1
        return False

    def end_epoch(
        self, state: TrainState, scores: dict[str, float | None], times: PhaseTimes, memory: PeakMemory, improved: bool
    ) -> None:
        times, spread = self.across_ranks(times, memory)
        self.totals.add(times)
        seconds = sum(times.seconds.values())
        finished = state.epoch + 1
        metrics = {f"val.{name}": value for name, value in scores.items() if value is not None}
        metrics.update(times.percentages())
        metrics.update(spread)
        metrics.update(
            {
                "epoch.seconds": seconds,
                "epoch.examples_per_s": times.examples / seconds if seconds else 0.0,
                "epoch.tokens_per_s": times.tokens / seconds if seconds else 0.0,
                **{f"epoch.{key}": value for key, value in memory.metrics().items()},
            }
        )
        self.history["epochs"].append({"epoch": finished, "step": state.step, **metrics})
        self.log_metrics(metrics, state.step)
        log.info(
            "epoch %d: %s; %.0f examples/s, %.0f tokens/s; time %s",
            finished,
            ", ".join(f"{name} {value:.4f}" for name, value in scores.items() if value is not None),
            metrics["epoch.examples_per_s"],
            metrics["epoch.tokens_per_s"],
            " ".join(f"{phase} {value:.0f}%" for phase, value in zip(PHASES, times.percentages().values())),
        )
        if state.batches_done >= self.steps_per_epoch:
            state.epoch, state.batches_done = finished, 0
        if improved:
            self.save("best", state)
        if self.on_epoch_end is not None and state.batches_done == 0:  # a whole epoch, not one cut short
            changes = self.on_epoch_end(self, state)
            self.history["epochs"][-1].update(changes)
            self.log_metrics(changes, state.step)
        self.save("last", state)

    def across_ranks(self, times: PhaseTimes, memory: PeakMemory) -> tuple[PhaseTimes, dict[str, float]]:
        """The epoch of the whole world: examples and tokens summed over ranks (the time is this rank's: ranks step
        together), and each rank's tokens/s and peak memory as ``epoch.rank_<name>.min/mean/max``."""
        if not self.world.distributed:
            return times, {}
        seconds = sum(times.seconds.values()) or 1.0
        mine = {"examples": times.examples, "tokens": times.tokens, "tokens_per_s": times.tokens / seconds}
        ranks = self.world.gather({**mine, **memory.metrics()})
        world = PhaseTimes(
            dict(times.seconds),
            dict(times.measured),
            sum(rank["examples"] for rank in ranks),
            sum(rank["tokens"] for rank in ranks),
        )
        spread = {}
        for name in ("tokens_per_s", "peak_rss_mb", "peak_cuda_mb"):
            values = [rank[name] for rank in ranks if name in rank]
            if values:
                spread.update(
                    {
                        f"epoch.rank_{name}.min": min(values),
                        f"epoch.rank_{name}.mean": sum(values) / len(values),
                        f"epoch.rank_{name}.max": max(values),
                    }
                )
        return world, spread

    def log_step(self, record: StepRecord, times: PhaseTimes) -> None:
        seconds = sum(times.seconds.values()) or 1.0
        metrics = {
            "step.loss": record.loss_value,
            "step.lr": record.lr,
            "step.tokens_per_s": times.tokens / seconds,
            "step.examples_per_s": times.examples / seconds,
            **{f"step.loss.{name}": value for name, value in record.part_values().items()},
        }
        self.history["steps"].append({"step": record.step, "epoch": record.epoch + 1, **metrics})
        self.log_metrics(metrics, record.step)

    def save(self, name: str, state: TrainState) -> None:
        """Write a checkpoint (rank 0 only: the ranks hold the same weights)."""
        if not self.world.is_main:
            return
        state.architecture = self.architecture
        checkpoint.save(self.checkpoints / name, self.model, self.objective, self.optimizer, state, self.history)

    def resume(self, name: str = "last") -> TrainState:
        directory = self.checkpoints / name
        state, self.history = checkpoint.load(directory, self.model, self.objective, self.optimizer, self.architecture)
        state.resumed_at_step = state.step
        log.info(
            "resuming from %s at step %d (epoch %d, batch %d)",
            directory,
            state.step,
            state.epoch + 1,
            state.batches_done,
        )
        return state

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device, dtype=self.dtype)

    def lap(self) -> float:
        """Seconds since the previous lap, with the GPU's queued work included on measured steps."""
        if self.measure_step:
            devices.synchronize(self.device)  # sync point: on logging steps only (GPUs), for a measured breakdown
        now = time.perf_counter()
        elapsed = now - getattr(self, "_last_lap", now)
        self._last_lap = now
        return elapsed
