"""Run one stage in this process and SIGKILL it at a chosen moment, as ``kill -9`` or the OOM killer would.

    python die.py STAGE:MOMENT[@N] [--set dotted.key=value ...]     (in the project directory)

N picks which occurrence of the moment (a step, a checkpoint file write, a validation); the tests draw it
from a seeded generator.

Nothing is cleaned up and no ``finally`` runs: the process is gone at once, mid-write where the moment says.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable
from typing import Any

from embedforge.config import load_params


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def on_call(count: int, original: Callable[..., Any], before: bool = False) -> Callable[..., Any]:
    """``original``, dying at its ``count``-th call: before it runs, or once it has (its output half-committed)."""
    calls = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if before and len(calls) == count:
            die()
        result = original(*args, **kwargs)
        if len(calls) == count:
            die()
        return result

    return wrapper


def train(moment: str, occurrence: int, cfg: Any) -> None:
    from embedforge.stages import train as stage
    from embedforge.training import checkpoint, validation

    hooks: dict[str, Any] = {}
    if moment == "mid-step":  # inside step N + 1, between its micro-batches' forward passes
        hooks["before_micro_batch"] = lambda trainer, state, index: (
            die() if state.step == occurrence and index == 1 else None
        )
    elif moment == "checkpoint-write":  # the N-th safetensors file of the checkpoints written, the rest not yet
        checkpoint.save_file = on_call(occurrence, checkpoint.save_file)
    elif moment == "validation":  # as the N-th validation starts
        validation.STSValidation.__call__ = on_call(occurrence, validation.STSValidation.__call__, before=True)
    stage.run(cfg, **hooks)


def precompute(moment: str, occurrence: int, cfg: Any) -> None:
    from embedforge.stages import precompute as stage

    if moment == "mid-shard":
        stage.run(cfg, on_batch=lambda index: die() if index == 2 else None)
        return
    real_replace = os.replace  # "manifest": its temporary file written, not yet renamed into place
    os.replace = lambda source, target: die() if str(target).endswith("manifest.json") else real_replace(source, target)
    stage.run(cfg)


def download(moment: str, occurrence: int, cfg: Any) -> None:
    from embedforge.stages import download as stage

    stage.SplitWriter.write = on_call(4, stage.SplitWriter.write)
    stage.run(cfg)


def validate(moment: str, occurrence: int, cfg: Any) -> None:
    from embedforge.data import expectations
    from embedforge.stages import validate as stage

    expectations.SplitValidator.validate = on_call(3, expectations.SplitValidator.validate)
    stage.run(cfg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("moment", help="stage:moment, e.g. train:checkpoint-write")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    stage, _, moment = args.moment.partition(":")
    moment, _, occurrence = moment.partition("@")
    cfg = load_params("params.yaml", args.overrides)
    run = {"train": train, "precompute": precompute, "download": download, "validate": validate}[stage]
    run(moment, int(occurrence or 0), cfg)
    raise SystemExit(f"{args.moment}: the stage finished before the moment came")


if __name__ == "__main__":
    main()
