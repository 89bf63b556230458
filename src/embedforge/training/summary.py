"""What a finished training run reports: one history across phases (the curves) and metrics/train.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedforge.models import count_parameters
from embedforge.training.checkpoint import TrainState
from embedforge.training.hooks import Loop
from embedforge.training.phases import Phase

CURVES = {"steps": ["step"], "epochs": ["epoch"], "generations": ["epoch", "prompt", "continuation"]}


@dataclass
class PhaseResult:
    phase: Phase
    trainer: Loop
    state: TrainState


def merged_history(results: list[PhaseResult]) -> dict[str, list[dict[str, Any]]]:
    """One history across phases: steps and epochs numbered on from the previous phase, each row with its phase."""
    merged: dict[str, list[dict[str, Any]]] = {name: [] for name in CURVES}
    steps = epochs = 0
    for result in results:
        history = result.trainer.history
        label = {"phase": result.phase.name} if result.phase.name else {}
        merged["steps"] += [
            {**row, "step": row["step"] + steps, "epoch": row["epoch"] + epochs, **label} for row in history["steps"]
        ]
        merged["epochs"] += [
            {**row, "step": row["step"] + steps, "epoch": row["epoch"] + epochs, **label} for row in history["epochs"]
        ]
        merged["generations"] += [
            {**row, "epoch": row["epoch"] + epochs, **label} for row in history.get("generations", [])
        ]
        steps += result.state.step
        epochs += len(history["epochs"])
    return merged


def summarize(result: PhaseResult, memory: dict[str, int]) -> dict[str, Any]:
    """metrics/train.json: how far training got, how good the kept epoch is, and how fast it went."""
    trainer, state = result.trainer, result.state
    epochs = trainer.history["epochs"]
    totals = trainer.totals
    seconds = sum(totals.seconds.values())
    best = next((e for e in epochs if e["epoch"] == state.best_epoch), epochs[-1] if epochs else {})
    similarities = [e["val.similarity"] for e in epochs if "val.similarity" in e]
    summary = {
        "steps": state.step,
        "epochs": len(epochs),
        "best_epoch": state.best_epoch,
        "sts_spearman": best.get("val.sts_spearman"),
        "val_loss": best.get("val.val_loss"),
        "similarity_final": similarities[-1] if similarities else None,
        "similarity_best": max(similarities) if similarities else None,
        "examples_per_s": totals.examples / seconds if seconds else 0.0,
        "tokens_per_s": totals.tokens / seconds if seconds else 0.0,
        "train_seconds": seconds,
        **{key: value for key, value in totals.percentages().items()},
        "peak_rss_mb": max((e.get("epoch.peak_rss_mb", 0.0) for e in epochs), default=0.0),
        **{
            f"peak_{device}_mb": max(
                (e[f"epoch.peak_{device}_mb"] for e in epochs if f"epoch.peak_{device}_mb" in e), default=None
            )
            for device in ("cuda", "mps")
        },
        "micro_batches": state.micro_batches,
        "memory_estimate_mb": memory["estimate_bytes"] / 2**20,
        "parameters": count_parameters(trainer.model),
        "embedding_dim": trainer.model.get_embedding_dimension(),
    }
    for key in ("token_accuracy", "perplexity"):
        if f"val.{key}" in best:
            summary[key] = best[f"val.{key}"]
    return summary


def staged_summary(results: list[PhaseResult], memory: dict[str, int], last: dict[str, Any]) -> dict[str, Any]:
    """The last phase's scores with steps, epochs and seconds summed over phases, and each phase's own figures
    (its real epochs, which the param train.epochs is not in a staged run)."""
    phase_summaries = {result.phase.label: summarize(result, memory) for result in results}
    summary = {
        **last,
        **{key: sum(phase[key] for phase in phase_summaries.values()) for key in ("steps", "epochs", "train_seconds")},
    }
    if summary["best_epoch"] is not None:
        earlier_epochs = sum(phase["epochs"] for phase in list(phase_summaries.values())[:-1])
        summary["best_epoch"] += earlier_epochs  # numbered on across phases, as in plots/train/epochs.csv
    summary["phases"] = phase_summaries
    return summary
