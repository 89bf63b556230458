"""What dvc.yaml declares for each stage, and the fingerprint of a stage's declared inputs.

DVC decides a stage is unchanged when its deps' contents and its params' values are;
the Prefect flow keys its task cache on the same fingerprint, so both runners agree
on what "nothing changed" means, from one declaration.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from embedforge.config import Params, flatten
from embedforge.errors import UserError
from embedforge.files import content_key

DVC_FILE = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")


@dataclass(frozen=True)
class StageSpec:
    name: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]


def declared_paths(entries: list) -> tuple[str, ...]:
    """Entries are plain paths or one-key mappings ``{path: options}``."""
    return tuple(next(iter(entry)) if isinstance(entry, dict) else str(entry) for entry in entries)


def declared_params(entries: list) -> tuple[str, ...]:
    """Entries are keys of params.yaml or ``{params_file: [keys]}``; the keys name the same resolved values."""
    return tuple(
        key for entry in entries for key in (next(iter(entry.values())) if isinstance(entry, dict) else [entry])
    )


def stage_spec(name: str, path: Path = DVC_FILE) -> StageSpec:
    if not path.is_file():
        raise UserError(f"{path}: not found; run from the project root")
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})
    if name not in stages:
        raise UserError(f"{path}: no stage {name!r}")
    stage = stages[name]
    outs = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return StageSpec(
        name,
        declared_paths(stage.get("deps", [])),
        declared_params(stage.get("params", [])),
        declared_paths(outs),
    )


def fingerprint(spec: StageSpec, cfg: Params, root: Path) -> str:
    """sha256 over the stage's deps' contents under ``root`` and its params' values (whole sections included).

    Contents are hashed once and then known by size and mtime (``files.known_sha256``), so an unchanged
    multi-GB input costs a stat, not a read.
    """
    digest = hashlib.sha256(spec.name.encode())
    for dep in sorted(spec.deps):
        path = root / dep
        digest.update(f"{dep}:{content_key(path) if path.exists() else 'absent'}".encode())
    flat = flatten(cfg.to_dict())
    for key in sorted(spec.params):
        values = {name: value for name, value in flat.items() if name == key or name.startswith(f"{key}.")}
        digest.update(json.dumps([key, values], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def outputs_present(spec: StageSpec, root: Path) -> bool:
    return all((root / out).exists() for out in spec.outs)


def lock_tags(path: Path = DVC_LOCK) -> dict[str, str]:
    """dvc.lock's md5 of every stage's deps as ``dvc.<stage>.<dep>`` tags: the exact inputs `dvc repro` recorded."""
    if not path.is_file():
        return {}
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})
    return {
        f"dvc.{stage}.{dep['path']}": str(dep.get("md5", "unknown"))
        for stage, entry in stages.items()
        for dep in entry.get("deps", [])
    }
