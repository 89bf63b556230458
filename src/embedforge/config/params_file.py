"""params.yaml on disk: resolving a run's params from it, and writing ``--set`` overrides back into it.

Precedence, lowest first: schema defaults < preset < params.yaml < EMBEDFORGE_MIRROR < ``--set``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from embedforge.config.builtin_datasets import builtin_sources
from embedforge.config.data_sections import MIRROR_ENV
from embedforge.config.errors import invalid_params
from embedforge.config.overrides import apply_overrides, deep_merge, parse_override, set_dotted
from embedforge.config.presets import apply_preset
from embedforge.config.renamed import refuse_renamed_keys
from embedforge.config.schema import Params
from embedforge.errors import UserError

DATASETS = ["download", "datasets"]


def read_yaml(path: Path) -> dict[str, Any]:
    """The sections of a params file, or a UserError saying why it has none."""
    if not path.is_file():
        raise UserError(f"{path}: params file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    if not text.strip():  # an emptied file is more likely a mistake than a wish for every default
        raise UserError(f"{path}: empty: give at least one section, e.g. `preset: development`")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return data


def apply_set(tree: dict[str, Any], overrides: list[str]) -> None:
    """``--set`` into ``tree`` in place, on top of the defaults it leaves out.

    A map a section holds (``download.datasets``) is replaced whole by one params.yaml gives, so a key set under
    it where the tree gives none would declare that dataset alone: the built-ins' defaults go in first, and the
    key changes one of them.
    """
    download = tree.get("download")
    declared = isinstance(download, dict) and isinstance(download.get("datasets"), dict)
    if not declared and any(parse_override(item)[0][:2] == DATASETS for item in overrides):
        set_dotted(tree, DATASETS, builtin_sources())
    apply_overrides(tree, overrides)


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Resolve and validate the params of a run; raise UserError naming every bad key."""
    path = Path(path)
    explicit = read_yaml(path)
    refuse_renamed_keys(path, explicit, overrides or [])
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        explicit = deep_merge(explicit, {"download": {"source": "mirror", "mirror": mirror}})
    apply_set(explicit, overrides or [])
    try:
        return Params.model_validate(apply_preset(explicit, path))
    except ValidationError as exc:
        raise invalid_params(path, exc) from None


def write_overrides(path: str | Path, overrides: list[str]) -> None:
    """Write ``--set`` overrides into params.yaml itself, keeping its comments and order.

    What DVC tracks is params.yaml, so a pipeline run with overrides must record them
    there (as ``dvc exp run --set-param`` does). They are validated first: a bad value
    leaves the file untouched.
    """
    from ruamel.yaml import YAML

    from embedforge.files import atomic_path

    path = Path(path)
    load_params(path, overrides)
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    document = yaml_rt.load(path.read_text(encoding="utf-8")) or {}
    apply_set(document, overrides)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        yaml_rt.dump(document, handle)
