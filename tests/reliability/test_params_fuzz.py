"""Whatever a params.yaml or a --set holds, loading it gives Params or the one config error, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedforge.config import Params, flatten, load_params
from embedforge.errors import UserError

KNOWN_KEYS = sorted(flatten(Params().to_dict()))
SECTION_KEYS = sorted({key.rsplit(".", 1)[0] for key in KNOWN_KEYS if "." in key})
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(KNOWN_KEYS + SECTION_KEYS + ["preset"]) | st.text(min_size=1, max_size=12)


def nested(flat: dict[str, object]) -> dict[str, object]:
    """Dotted keys as YAML nesting; a key that is both a value and a section keeps the first one written."""
    tree: dict[str, object] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node.setdefault(leaf, value)
    return tree


def load_or_config_error(path: Path, overrides: list[str]) -> None:
    try:
        assert isinstance(load_params(path, overrides), Params)
    except UserError as error:
        assert str(error).strip(), "a config error says what is wrong"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.dictionaries(keys, values, max_size=6))
def test_any_params_file_loads_or_is_a_config_error(tmp_path: Path, file: dict[str, object]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(nested(file)), encoding="utf-8")
    load_or_config_error(path, [])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.tuples(keys, values | st.text(max_size=12)), max_size=4))
def test_any_set_override_loads_or_is_a_config_error(tmp_path: Path, overrides: list[tuple[str, object]]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("preset: development\n", encoding="utf-8")
    as_text = [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides]
    load_or_config_error(path, as_text)
