"""Training checkpoints: everything a run needs to continue exactly where it stopped, and nothing executable.

A checkpoint is a directory written atomically (``checkpoints/last``, ``checkpoints/best``)::

    weights.safetensors     the student's and the objective's tensors
    optimizer.pt            the optimizer's state (tensors and numbers; read with weights_only=True)
    rng.safetensors         torch's CPU (and CUDA or MPS) random state, so dropout continues identically
    state.json              step, epoch, position in the epoch, early-stopping record, the
                            architecture it was trained with
    history.json            the logged steps and epochs so far, so a resumed run's curves are whole

Loading never unpickles arbitrary objects: safetensors and ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from embedforge import devices
from embedforge.errors import UserError
from embedforge.files import atomic_dir

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
HISTORY_FILE = "history.json"


@dataclass
class TrainState:
    """Where a run is: ``batches_done`` batches of epoch ``epoch`` are trained, ``step`` optimizer steps in all."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    micro_batches: int = 1
    best_score: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    resumed_at_step: int | None = None
    architecture: dict[str, Any] = field(default_factory=dict)


def save(
    directory: Path,
    model: torch.nn.Module,
    objective: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    history: dict[str, list[dict[str, float]]],
) -> None:
    """Write one checkpoint directory; a crash midway leaves the previous one untouched."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"objective.{k}": v.detach().contiguous() for k, v in objective.state_dict().items()})
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if devices.mps_available():
        rng["mps"] = torch.mps.get_rng_state()
    with atomic_dir(directory) as tmp:
        save_file(_unshared(tensors), str(tmp / WEIGHTS_FILE))
        save_file(rng, str(tmp / RNG_FILE))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
        (tmp / HISTORY_FILE).write_text(json.dumps(history), encoding="utf-8")


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights): give each its own copy."""
    seen: set[int] = set()
    result = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        result[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return result


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be read back (truncated, overwritten, or not ours)."""


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a failure to read ``path`` into a message naming it and the ways on, never a silent fresh start.

    ``torch.load(weights_only=True)`` refuses a pickle that would run code with an UnpicklingError: caught here.
    """
    try:
        yield
    except (SafetensorError, pickle.UnpicklingError, json.JSONDecodeError, EOFError, OSError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        other = "best" if path.parent.name == "last" else "last"
        raise DamagedCheckpoint(
            f"{path}: cannot be read back as a checkpoint ({reason}). Resume from the other one with "
            f"train.resume_from: {other}, or start over with train.resume: false"
        ) from None


def read_state(directory: Path) -> TrainState:
    path = directory / STATE_FILE
    if not path.is_file():
        raise UserError(f"{directory}: not a checkpoint ({STATE_FILE} missing); set train.resume: false to start over")
    with reading(path):
        return TrainState(**json.loads(path.read_text(encoding="utf-8")))


def refuse_other_architecture(directory: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A checkpoint only fits a model of the same shape: name every key that differs."""
    differences = [
        f"{key}: checkpoint has {saved.get(key)!r}, this run has {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if differences:
        raise UserError(
            f"{directory} was trained with another architecture, so this run cannot resume from it "
            f"(set train.resume: false to start over, or restore the params it was trained with):\n"
            + "\n".join(f"  {line}" for line in differences)
        )


def load(
    directory: Path,
    model: torch.nn.Module,
    objective: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    architecture: dict[str, Any],
) -> tuple[TrainState, dict[str, list[dict[str, float]]]]:
    """Restore ``directory`` into the given objects after checking it was made by the same architecture.

    Returns the saved state and history.
    """
    state = read_state(directory)
    refuse_other_architecture(directory, state.architecture, architecture)
    load_weights(directory, model, objective)
    with reading(directory / OPTIMIZER_FILE):
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True, map_location="cpu"))
    with reading(directory / RNG_FILE):
        rng = load_file(str(directory / RNG_FILE))
        torch.set_rng_state(rng["cpu"])
    cuda_states = [rng[key] for key in sorted(k for k in rng if k.startswith("cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    if "mps" in rng and devices.mps_available():
        torch.mps.set_rng_state(rng["mps"])
    with reading(directory / HISTORY_FILE):
        return state, json.loads((directory / HISTORY_FILE).read_text(encoding="utf-8"))


def load_weights(directory: Path, model: torch.nn.Module, objective: torch.nn.Module | None = None) -> None:
    """The student's (and the objective's) weights without the optimizer or the position in training: the best
    checkpoint's into the model about to be saved, or into the next phase of a staged run."""
    with reading(directory / WEIGHTS_FILE):
        tensors = load_file(str(directory / WEIGHTS_FILE))
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
        if objective is not None:
            objective.load_state_dict(
                {k.removeprefix("objective."): v for k, v in tensors.items() if k.startswith("objective.")}
            )
