"""What an epoch logs: validation scores, where the time went, throughput and memory, and how ranks differed."""

from __future__ import annotations

import logging

from embedforge.memory import PeakMemory
from embedforge.training.distributed import World
from embedforge.training.records import PHASES, PhaseTimes

log = logging.getLogger("embedforge.training.trainer")  # the epoch line belongs with the loop's progress

SPREAD_FIGURES = ("tokens_per_s", "peak_rss_mb", "peak_cuda_mb")


def across_ranks(world: World, times: PhaseTimes, memory: PeakMemory) -> tuple[PhaseTimes, dict[str, float]]:
    """The epoch of the whole world: examples and tokens summed over ranks (the time is this rank's: ranks step
    together), and each rank's tokens/s and peak memory as ``epoch.rank_<name>.min/mean/max``."""
    if not world.distributed:
        return times, {}
    seconds = sum(times.seconds.values()) or 1.0
    mine = {"examples": times.examples, "tokens": times.tokens, "tokens_per_s": times.tokens / seconds}
    ranks = world.gather({**mine, **memory.metrics()})
    whole = PhaseTimes(
        dict(times.seconds),
        dict(times.measured),
        sum(rank["examples"] for rank in ranks),
        sum(rank["tokens"] for rank in ranks),
    )
    spread = {}
    for name in SPREAD_FIGURES:
        values = [rank[name] for rank in ranks if name in rank]
        if values:
            spread.update(
                {
                    f"epoch.rank_{name}.min": min(values),
                    f"epoch.rank_{name}.mean": sum(values) / len(values),
                    f"epoch.rank_{name}.max": max(values),
                }
            )
    return whole, spread


def epoch_metrics(
    scores: dict[str, float | None], times: PhaseTimes, spread: dict[str, float], memory: PeakMemory
) -> dict[str, float]:
    """The epoch's ``val.*``, time shares, rank spread, seconds, throughput and peak memory."""
    seconds = sum(times.seconds.values())
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
    return metrics


def log_epoch(epoch: int, scores: dict[str, float | None], metrics: dict[str, float], times: PhaseTimes) -> None:
    log.info(
        "epoch %d: %s; %.0f examples/s, %.0f tokens/s; time %s",
        epoch,
        ", ".join(f"{name} {value:.4f}" for name, value in scores.items() if value is not None),
        metrics["epoch.examples_per_s"],
        metrics["epoch.tokens_per_s"],
        " ".join(f"{phase} {value:.0f}%" for phase, value in zip(PHASES, times.percentages().values(), strict=True)),
    )
