"""The training loop, readable top to bottom: ``Trainer.fit``.

One optimizer step trains one batch of ``train.batch_size`` examples, split into
``micro_batches`` pieces whose gradients accumulate. Around that loop: warm-up
then cosine learning rate (times the ramp after a resume), gradient clipping,
mixed precision on CUDA, a checkpoint every ``checkpoint_every_steps`` steps and
at every epoch's end, validation and early stopping per epoch, and a record of
where the time went (data / forward / loss / backward / optimizer).

Faults it survives: running out of memory halves the micro-batch and retries the
step (``out_of_memory``); a kill loses at most the steps since the last checkpoint.
Faults it refuses: a non-finite loss stops the run (``divergence``).

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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedforge import devices
from embedforge.config import TrainParams
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
    summed_over_ranks,
)
from embedforge.training.divergence import refuse_non_finite
from embedforge.training.early_stopping import record_score, should_stop
from embedforge.training.epoch_metrics import across_ranks, epoch_metrics, log_epoch
from embedforge.training.hooks import EpochHook
from embedforge.training.loader import epoch_loader, epoch_progress
from embedforge.training.losses import Objective, StepOutputs
from embedforge.training.out_of_memory import OutOfMemoryElsewhere, halve_micro_batches, is_out_of_memory
from embedforge.training.records import PhaseTimes, StepRecord
from embedforge.training.schedule import resume_ramp, warmup_cosine

log = logging.getLogger(__name__)


class Trainer:
    """Trains ``model`` (anything mapping token features to ``sentence_embedding``) on ``batches``.

    ``teacher_vectors`` holds the teacher's embedding of every TokenStore row (when
    distilling). ``on_step`` is called after each optimizer step and ``before_micro_batch``
    before each forward pass: hooks for logging and for tests that inject faults.
    ``epoch_hook`` may change the model between epochs (a model family that grows does).
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
        epoch_hook: EpochHook | None = None,
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
        self.epoch_hook = epoch_hook
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
                with epoch_progress(self.steps_per_epoch, state, self.params.epochs, self.world) as progress:
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
            improved = record_score(self.params.early_stopping, state, scores)
            stop = stop or should_stop(self.params.early_stopping, state)
            self.end_epoch(state, scores, times, memory, improved)
        return state

    def loader(self, state: TrainState) -> Iterator[tuple[list[int], list[PairBatch]]]:
        """The epoch's remaining batches, built ahead by ``train.loader_workers`` worker processes."""
        plan = self.batches.plan(state.epoch)[state.batches_done :]
        return epoch_loader(self.batches, plan, state.micro_batches, self.world, self.params.loader_workers)

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
                record.loss, record.parts = summed_over_ranks(loss, parts)
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
        refuse_non_finite(self.world, self.device, state, torch.stack(losses), micro, self.steps_per_epoch)
        return torch.stack(losses).sum(), parts

    def loss(
        self, batch: PairBatch, times: PhaseTimes | None = None, counts: bool | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective on one (micro-)batch; ``times`` splits the time into forward and loss.

        ``counts`` is given for a training step of a distributed world: a loss over the
        global batch (InfoNCE) then ranks each anchor against the candidates of every rank
        (none from a rank that does not count). Validation passes nothing: rank 0 alone
        scores its local batches.
        """
        gathered = counts is not None and self.world.distributed and self.objective.global_batch
        with self.autocast():
            try:
                outputs = [self.features(part) for part in batch.parts]
            except Exception as error:
                if gathered and is_out_of_memory(error):
                    self.world.any(True, self.device)  # the answer the other ranks wait for before gathering
                raise
            if gathered and self.world.any(False, self.device):
                raise OutOfMemoryElsewhere("another training process ran out of memory")
            if times is not None:
                times.record("forward", self.lap(), self.measure_step)
            step = StepOutputs(
                outputs,
                teacher=self.teacher_of(batch),
                gather=partial(gathered_candidates, counts=bool(counts)) if gathered else None,
            )
            loss, parts = self.objective(step)
        if times is not None:
            times.record("loss", self.lap(), self.measure_step)
        return loss, parts

    def teacher_of(self, batch: PairBatch) -> torch.Tensor | None:
        """The teacher's vectors of the batch's sentences, part after part, when distilling."""
        if self.teacher_vectors is None:
            return None
        rows = torch.from_numpy(np.concatenate([part.rows for part in batch.parts])).to(self.device)
        return self.teacher_vectors[rows].float()

    def features(self, part: TokenBatch) -> dict[str, torch.Tensor]:
        """Everything the model computes for ``part``: its inputs, ``token_embeddings``, ``sentence_embedding``."""
        features = self.model_inputs(  # host-to-device copies: from pageable memory they wait for the device's queue
            part.input_ids.to(self.device, non_blocking=True), part.attention_mask.to(self.device, non_blocking=True)
        )
        return self.model(features)

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
        halve_micro_batches(state, len(indices), self.world.size, error)
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

    def end_epoch(
        self, state: TrainState, scores: dict[str, float | None], times: PhaseTimes, memory: PeakMemory, improved: bool
    ) -> None:
        times, spread = across_ranks(self.world, times, memory)
        self.totals.add(times)
        finished = state.epoch + 1
        metrics = epoch_metrics(scores, times, spread, memory)
        self.history["epochs"].append({"epoch": finished, "step": state.step, **metrics})
        self.log_metrics(metrics, state.step)
        log_epoch(finished, scores, metrics, times)
        if state.batches_done >= self.steps_per_epoch:
            state.epoch, state.batches_done = finished, 0
        if improved:
            self.save("best", state)
        if self.epoch_hook is not None and state.batches_done == 0:  # a whole epoch, not one cut short
            changes = self.epoch_hook(self, state)
            self.history["epochs"][-1].update(changes)
            self.log_metrics(changes, state.step)
        self.save("last", state)

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
