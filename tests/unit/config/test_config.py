from functools import reduce
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT

from embedforge.config import MIRROR_ENV, PRESETS, Params, apply_preset, flatten, load_params, write_overrides
from embedforge.errors import UserError

PARAMS_YAML = REPO_ROOT / "params.yaml"
# What the comment at the top of params.yaml shows of each preset: a table of what differs, then lines of
# dotted keys, each naming the presets that share those values.
PRESET_COLUMNS = ["download.limit", "model.num_layers", "model.teacher_layers", "train.epochs", "train.max_minutes"]
PRESET_GROUPS = {
    "the recipe": ["train.objectives", "train.datasets", "train.distill_loss", "train.lr", "train.batch_size"],
    "the shape": ["model.hidden_size", "model.num_heads", "model.intermediate_size"],
}


def write_params(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def test_preset_fills_defaults_and_explicit_keys_win(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"preset": "research", "train": {"epochs": 7}})
    cfg = load_params(params)
    assert cfg.download.limit == 20_000  # from the research preset
    assert cfg.model.num_layers == 3
    assert cfg.train.epochs == 7  # explicit beats preset


def test_environment_beats_file(tmp_path, monkeypatch):
    params = write_params(tmp_path / "params.yaml", {"download": {"source": "hub", "mirror": "/from/file"}})
    monkeypatch.setenv(MIRROR_ENV, "/from/env")
    cfg = load_params(params)
    assert cfg.download.source == "mirror" and cfg.download.mirror == "/from/env"


def test_set_overrides_beat_file_and_environment(tmp_path, monkeypatch):
    params = write_params(tmp_path / "params.yaml", {"download": {"limit": 50}})
    monkeypatch.setenv(MIRROR_ENV, "/from/env")
    cfg = load_params(params, ["download.limit=7", "download.mirror=/from/set", "train.lr=1e-4", "preset=production"])
    assert cfg.download.limit == 7  # beats the file's 50 and production's null
    assert cfg.download.source == "mirror" and cfg.download.mirror == "/from/set"
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.num_layers == 6  # the preset named by --set fills the knobs the file leaves out


@pytest.mark.parametrize(
    ("tree", "overrides", "expected"),
    [
        ({"download": {"limti": 5}}, [], "download.limti: unknown key"),
        ({"download": {"limit": -5}}, [], "download.limit: must be > 0, got -5"),
        ({}, ["train.batch_size=-3"], "train.batch_size: must be >= 2, got -3"),
        ({}, ["train.batch_size=abc"], "train.batch_size: must be a whole number, not text, got 'abc'"),
        ({"download": {"limit": True}}, [], "download.limit: must be a number, not true or false, got True"),
        ({}, ["train.lr=true"], "train.lr: must be a number, not true or false, got True"),
        ({}, ['train.batch_size="8"'], "train.batch_size: must be a whole number, not text, got '8'"),
        ({}, ["model.teacher_layers=[true, 0]"], "model.teacher_layers: must be a number, not true or false"),
        ({}, ["train.objectives={infonce: 1.0, distill: false}"], "train.objectives: must be a number, not true"),
        (
            {"download": {"datasets": {"stsb": {"score_range": [False, 5]}}}},
            [],
            "download.datasets.stsb.score_range: must be a number, not true or false",
        ),
        ({}, ["validate.max_duplicate_pair_rate=yes"], "validate.max_duplicate_pair_rate: must be a number, not true"),
        ({"preset": "huge"}, [], "preset: must be one of development, research, production, distill-small, got 'huge'"),
        ({"download": {"source": "mirror"}}, [], "download.mirror is empty"),
        ({"model": {"hidden_size": 100, "num_heads": 12}}, [], "model.hidden_size (100) must be divisible"),
        ({}, ["tokenize.max_length=7"], "tokenize.max_length: must be >= 8, got 7"),
        ({}, ["tokenize.max_length=600"], "tokenize.max_length (600) must be <= model.max_positions (512)"),
        ({}, ["train.objectives.infonce=0"], "must give at least one objective a weight > 0"),
        ({}, ["train.grad_accum_steps=100"], "train.grad_accum_steps (100) must be <= train.batch_size (64)"),
        ({}, ["train.early_stopping.monitor=loss"], "train.early_stopping.monitor: input should be"),
        ({}, ["model.lattice.size=[4, 4, 4]"], "give exactly one of model.lattice.mode and model.lattice.size"),
        ({}, ["model.lattice.size=[4, 4]"], "model.lattice.size: list should have at least 3 items"),
        (
            {},
            ["model.dynamic.embedding_dim=512"],
            "model.dynamic.embedding_dim (512) must be <= model.dynamic.max_dims",
        ),
        ({}, ["model.dynamic.sparsity_target=[0.7, 0.4]"], "model.dynamic.sparsity_target ([0.7, 0.4]) must be"),
        ({}, ["model.kind=lattice", "train.objective=clm"], "train.objective: clm trains a transformer stack"),
        ({}, ["train.schedule=cyclic"], "train.schedule: input should be 'single' or 'staged'"),
        ({}, ["train.staged.mastery.data_fraction=1.5"], "train.staged.mastery.data_fraction: must be <= 1"),
        ({}, ["train.memory_limit_mb=0"], "train.memory_limit_mb: must be > 0"),
        ({}, ["train.nproc_per_node=0"], "train.nproc_per_node: must be >= 1"),
        ({}, ["train.nnodes=2"], "train.nnodes is 2: set train.rdzv_endpoint"),
        ({}, ["train.rdzv_endpoint=node-1"], "train.rdzv_endpoint: string should match pattern"),
        ({}, ["train.backend=mpi"], "train.backend: input should be 'auto', 'nccl' or 'gloo'"),
    ],
)
def test_bad_params_name_the_key(tmp_path, tree, overrides, expected):
    params = write_params(tmp_path / "params.yaml", tree)
    with pytest.raises(UserError) as raised:
        load_params(params, overrides)
    assert expected in str(raised.value)
    assert str(params) in str(raised.value)


@pytest.mark.parametrize(
    ("tree", "overrides", "where"),
    [
        ({"train": {"stsb_min_score": 3.5}}, [], "params.yaml: "),
        ({}, ["train.stsb_min_score=3.5"], "--set 'train.stsb_min_score=3.5': "),
    ],
)
def test_a_renamed_key_is_refused_naming_its_new_name(tmp_path, tree, overrides, where):
    params = write_params(tmp_path / "params.yaml", tree)
    with pytest.raises(UserError) as raised:
        load_params(params, overrides)
    assert str(raised.value).endswith(f"{where}train.stsb_min_score was renamed train.similar_min_score")


def resolved_datasets(cfg: Params) -> dict:
    return {name: source.model_dump() for name, source in cfg.download.datasets.items()}


@pytest.mark.parametrize("written_back", [False, True], ids=["load_params", "write_overrides"])
def test_a_key_set_on_a_builtin_dataset_changes_that_key_of_the_defaults(tmp_path, written_back):
    params = write_params(tmp_path / "params.yaml", {"preset": "development"})
    expected = resolved_datasets(load_params(params))
    expected["snli"]["archive"] = "/x/snli_1.0.zip"
    override = "download.datasets.snli.archive=/x/snli_1.0.zip"
    if written_back:  # as `embedforge run --set` does: into params.yaml, which dvc repro then reads
        write_overrides(params, [override])
        cfg = load_params(params)
    else:
        cfg = load_params(params, [override])
    assert resolved_datasets(cfg) == expected


def test_a_builtin_entry_without_a_source_is_its_defaults_with_the_keys_it_gives(tmp_path):
    partial = {"snli": {"archive": "/x/snli_1.0.zip"}, "stsb": {"splits": ["train", "validation"]}, "sick": {}}
    cfg = load_params(write_params(tmp_path / "params.yaml", {"download": {"datasets": partial}}))
    defaults = Params().download.datasets
    assert cfg.download.datasets["snli"] == defaults["snli"].model_copy(update={"archive": "/x/snli_1.0.zip"})
    assert cfg.download.datasets["stsb"] == defaults["stsb"].model_copy(update={"splits": ["train", "validation"]})
    assert cfg.download.datasets["sick"] == defaults["sick"]


def test_malformed_override_is_rejected(tmp_path):
    params = write_params(tmp_path / "params.yaml", {})
    with pytest.raises(UserError, match="--set 'download': expected dotted.key=value"):
        load_params(params, ["download"])


def test_missing_params_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_flatten_gives_the_dotted_names_mlflow_and_dvc_show():
    tree = {"seed": 1, "train": {"lr": 0.5, "datasets": ["snli"], "staged": {"mastery": {"epochs": 2}}}, "report": {}}
    assert flatten(tree) == {
        "seed": 1,
        "train.lr": 0.5,
        "train.datasets": ["snli"],
        "train.staged.mastery.epochs": 2,
        "report": {},
    }


def test_repository_params_file_is_valid_and_flattens_to_dotted_names():
    cfg = load_params(PARAMS_YAML, ["train.staged.mastery.epochs=5", "train.lr=2e-4"])
    flat = flatten(cfg.to_dict())
    assert flat["download.datasets.snli.hub_id"] == "stanfordnlp/snli"
    assert flat["validate.max_leaked_pair_rate"] == 0.0  # the section's alias, as params.yaml spells it
    assert flat["train.staged.mastery.epochs"] == 5
    assert flat["train.lr"] == pytest.approx(2e-4)
    assert flat["train.objectives.infonce"] == 1.0
    assert "train" not in flat and "train.staged.mastery" not in flat


def shown(params: Params, key: str) -> str:
    """The value of dotted ``key`` as YAML writes it on one line, so the comment reads like the file."""
    value = reduce(getattr, key.split("."), params)
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).removesuffix("...\n").strip()


def preset_comment() -> list[str]:
    """The comment lines of params.yaml that show PRESETS, each preset resolved as a params file naming only it."""
    resolved = {name: Params.model_validate(apply_preset({"preset": name}, PARAMS_YAML)) for name in PRESETS}
    rows = [["", *PRESET_COLUMNS]]
    rows += [[name, *(shown(params, key) for key in PRESET_COLUMNS)] for name, params in resolved.items()]
    widths = [max(len(row[column]) for row in rows) + 2 for column in range(len(rows[0]))]
    lines = [
        "#   " + "".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in rows
    ]
    for title, keys in PRESET_GROUPS.items():
        sharing: dict[str, list[str]] = {}
        for name, params in resolved.items():
            sharing.setdefault(", ".join(shown(params, key) for key in keys), []).append(name)
        lines.append(f"# {title}: {', '.join(keys)}")
        lines += [f"#   {', '.join(names)}: {values}" for values, names in sharing.items()]
    return lines


def test_params_yaml_comment_shows_the_presets_as_the_code_defines_them():
    expected = preset_comment()
    lines = PARAMS_YAML.read_text(encoding="utf-8").splitlines()
    start = lines.index(expected[0]) if expected[0] in lines else 0
    stale = "params.yaml's preset comment differs from PRESETS; it should read:\n" + "\n".join(expected)
    assert lines[start : start + len(expected)] == expected, stale


def test_params_yaml_leaves_every_preset_knob_to_the_preset():
    owned = {key for preset in PRESETS.values() for key in flatten(preset)}
    assert owned & set(flatten(yaml.safe_load(PARAMS_YAML.read_text(encoding="utf-8")))) == set()
