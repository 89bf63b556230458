from pathlib import Path

import pytest
import yaml

from embedforge.config import MIRROR_ENV, flatten, load_params
from embedforge.errors import UserError


def write_params(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def test_preset_fills_defaults_and_explicit_keys_win(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"preset": "research", "train": {"epochs": 7}})
    cfg = load_params(params)
    assert cfg.download.limit == 20_000  # from the research preset
    assert cfg.model.num_layers == 3
    assert cfg.train.epochs == 7  # explicit beats preset


def test_set_overrides_beat_file_and_environment(tmp_path, monkeypatch):
    params = write_params(tmp_path / "params.yaml", {"download": {"limit": 50}})
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    cfg = load_params(params, ["download.limit=7", "train.lr=1e-4", "preset=production"])
    assert cfg.download.limit == 7
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.download.source == "mirror" and cfg.download.mirror == str(tmp_path)
    assert cfg.model.num_layers == 6


@pytest.mark.parametrize(
    ("tree", "overrides", "expected"),
    [
        ({"download": {"limti": 5}}, [], "download.limti: unknown key"),
        ({"download": {"limit": -5}}, [], "download.limit: must be > 0, got -5"),
        ({}, ["train.batch_size=-3"], "train.batch_size: must be >= 2, got -3"),
        ({}, ["train.batch_size=abc"], "train.batch_size: input should be a valid integer"),
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
    ],
)
def test_bad_params_name_the_key(tmp_path, tree, overrides, expected):
    params = write_params(tmp_path / "params.yaml", tree)
    with pytest.raises(UserError) as raised:
        load_params(params, overrides)
    assert expected in str(raised.value)
    assert str(params) in str(raised.value)


def test_malformed_override_is_rejected(tmp_path):
    params = write_params(tmp_path / "params.yaml", {})
    with pytest.raises(UserError, match="--set 'download': expected dotted.key=value"):
        load_params(params, ["download"])


def test_missing_params_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_repository_params_file_is_valid_and_flattens_to_dotted_names():
    cfg = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    flat = flatten(cfg.to_dict())
    assert flat["download.datasets.snli.hub_id"] == "stanfordnlp/snli"
    assert flat["validate.max_leaked_pair_rate"] == 0.0
    assert "train.lr" in flat
