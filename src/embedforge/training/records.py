"""What the training loop records as it goes: each optimizer step, and where each epoch's time went."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PHASES = ("data", "forward", "loss", "backward", "optimizer")


@dataclass
class StepRecord:
    """What ``on_step`` hooks and the loss curve see after every optimizer step.

    The losses stay on the device: ``loss_value``/``part_values`` read them (a sync on CUDA), which the
    loop does on logging steps only.
    """

    step: int
    epoch: int
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    lr: float

    @property
    def loss_value(self) -> float:
        return float(self.loss)

    def part_values(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.parts.items()}


@dataclass
class PhaseTimes:
    """Where the time went. ``seconds`` has every step's laps (their sum is the training time); ``measured``
    only the laps of steps that waited for the device at each lap (every step on CPU, logging steps on CUDA,
    where waiting costs throughput), so the breakdown is measured rather than attributed to the next wait."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    measured: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    examples: int = 0
    tokens: int = 0

    def record(self, phase: str, seconds: float, measured: bool) -> None:
        self.seconds[phase] += seconds
        if measured:
            self.measured[phase] += seconds

    def add(self, other: PhaseTimes) -> None:
        for phase in PHASES:
            self.seconds[phase] += other.seconds[phase]
            self.measured[phase] += other.measured[phase]
        self.examples += other.examples
        self.tokens += other.tokens

    def percentages(self) -> dict[str, float]:
        shares = self.measured if any(self.measured.values()) else self.seconds
        total = sum(shares.values()) or 1.0
        return {f"time.{phase}_pct": 100.0 * value / total for phase, value in shares.items()}
