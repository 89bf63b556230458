from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from embedforge.errors import UserError
from embedforge.memory import autograd_saved_bytes
from embedforge.models import count_parameters
from embedforge.models.lattice import (
    LATTICE_MODES,
    Lattice,
    build_lattice,
    estimate_lattice_memory,
    lattice_size,
    overfitting_warning,
)

SENTENCES = ["A man is playing a guitar.", "Two dogs run across a snowy field after a red ball.", "Hello"]
LONG_SENTENCE = "the quick brown fox jumps over the lazy dog " * 8  # longer than MAX_LENGTH tokens
MAX_LENGTH = 16
SMALL = {"size": (6, 4, 4), "channels": 8, "steps": None, "dropout": 0.1, "max_positions": 32}


def build(tiny_teacher: Path, hidden_size: int = 16, teacher: Path | None = None, seed: int = 0, **changes):
    return build_lattice(tiny_teacher, MAX_LENGTH, hidden_size, **{**SMALL, **changes}, teacher_path=teacher, seed=seed)


@pytest.fixture(scope="module")
def scratch(tiny_teacher: Path) -> SentenceTransformer:
    return build(tiny_teacher)


@pytest.fixture(scope="module")
def from_teacher(tiny_teacher: Path) -> SentenceTransformer:
    return build(tiny_teacher, hidden_size=64, teacher=tiny_teacher, max_positions=64)


@pytest.mark.parametrize(("mode", "expected"), [("development", (10, 10, 10)), ("production", (30, 20, 20))])
def test_a_mode_names_its_lattice_size(mode, expected):
    assert lattice_size(mode, None) == LATTICE_MODES[mode] == expected
    assert LATTICE_MODES["research"] == (20, 15, 15)


def test_an_explicit_size_is_used_as_given():
    assert lattice_size(None, [2, 1, 1]) == (2, 1, 1)
    assert lattice_size(None, [7, 4, 3]) == (7, 4, 3)


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        (None, None, "set exactly one of model.lattice.mode"),
        ("development", [4, 4, 4], "set exactly one of model.lattice.mode"),
        ("huge", None, "model.lattice.mode: unknown mode 'huge'"),
        (None, [4, 4], r"model.lattice.size must be \[xs, ys, zs\], got \[4, 4\]"),
        (None, [1, 4, 4], r"model.lattice.size \(\[1, 4, 4\]\) must be >= 2 along x"),
        (None, [4, 0, 4], r"model.lattice.size \(\[4, 0, 4\]\) must be >= 2 along x and >= 1 along y and z"),
        (None, [4, 4, 0], r"model.lattice.size \(\[4, 4, 0\]\)"),
    ],
)
def test_a_lattice_size_that_cannot_be_built_names_the_key(mode, size, expected):
    with pytest.raises(UserError, match=expected):
        lattice_size(mode, size)


def test_steps_default_to_the_fewest_that_reach_the_output_surface():
    lattice = Lattice(8, (5, 3, 2))
    assert lattice.steps == 4
    assert lattice.cells == 30
    assert Lattice(8, [5, 3, 2], steps=7).steps == 7


def test_fewer_steps_than_the_lattice_is_long_are_refused():
    with pytest.raises(UserError, match=r"model.lattice.steps \(3\) must be >= 4"):
        Lattice(8, (5, 3, 2), steps=3)


def test_the_built_model_encodes_unit_vectors_of_the_hidden_size(scratch):
    assert [type(module).__name__ for module in scratch] == ["Transformer", "Pooling", "Lattice", "Normalize"]
    assert scratch[0].auto_model.config.num_hidden_layers == 0  # token and position embeddings only
    assert scratch.max_seq_length == MAX_LENGTH
    embeddings = scratch.encode(SENTENCES)
    assert embeddings.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)


def test_one_step_mixes_a_cell_only_with_its_neighbours():
    torch.manual_seed(0)
    lattice = Lattice(8, (7, 7, 7), channels=2)
    state = torch.randn(1, 2, 7, 7, 7)
    perturbed = state.clone()
    perturbed[0, :, 3, 3, 3] += 1.0
    with torch.no_grad():
        changed = (lattice.step(perturbed) != lattice.step(state)).any(dim=1)[0]
    neighbourhood = torch.zeros(7, 7, 7, dtype=torch.bool)
    neighbourhood[2:5, 2:5, 2:5] = True
    assert torch.equal(changed, neighbourhood)


@pytest.mark.parametrize("steps", [2, 3])
def test_after_k_steps_a_change_reaches_at_most_k_cells_away(steps):
    torch.manual_seed(0)
    lattice = Lattice(8, (9, 9, 9), channels=2)
    state = torch.randn(1, 2, 9, 9, 9)
    perturbed = state.clone()
    perturbed[0, :, 4, 4, 4] += 1.0
    with torch.no_grad():
        for _ in range(steps):
            state, perturbed = lattice.step(state), lattice.step(perturbed)
    changed = (perturbed != state).any(dim=1)[0]
    grid = torch.stack(torch.meshgrid(*[torch.arange(9)] * 3, indexing="ij"))
    within = (grid - 4).abs().amax(dim=0) <= steps
    assert torch.equal(changed, within)


def test_a_fresh_lattice_maps_different_inputs_to_different_finite_outputs():
    torch.manual_seed(0)
    lattice = Lattice(32, LATTICE_MODES["development"], channels=4)
    with torch.no_grad():
        outputs = lattice({"sentence_embedding": torch.randn(8, 32)})["sentence_embedding"]
    assert torch.isfinite(outputs).all()
    assert (outputs.norm(dim=1) > 0.1).all()
    unit = torch.nn.functional.normalize(outputs, dim=1)
    assert (unit @ unit.T)[~torch.eye(8, dtype=torch.bool)].abs().mean() < 0.5


def test_weights_follow_the_seed_and_leave_the_global_generator_alone(tiny_teacher):
    torch.manual_seed(5)
    first, again, other = (build(tiny_teacher, seed=seed) for seed in (1, 1, 2))
    drawn = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(4))
    assert torch.equal(first[2].rules.weight, again[2].rules.weight)
    assert torch.equal(
        first[0].auto_model.embeddings.word_embeddings.weight, again[0].auto_model.embeddings.word_embeddings.weight
    )
    assert not torch.equal(first[2].rules.weight, other[2].rules.weight)


def test_the_teachers_embeddings_are_copied(from_teacher, tiny_teacher):
    teacher = SentenceTransformer(str(tiny_teacher), device="cpu")[0].auto_model
    student = from_teacher[0].auto_model
    teacher_embeddings = teacher.embeddings.state_dict()
    for name, tensor in student.embeddings.state_dict().items():
        assert torch.equal(tensor, teacher_embeddings[name][: tensor.shape[0]]), name
    assert student.embeddings.position_embeddings.weight.shape[0] == 64  # cut from the teacher's 128


def test_a_teacher_of_another_width_is_refused(tiny_teacher):
    with pytest.raises(UserError, match=r"model.hidden_size \(32\) must equal the teacher's hidden size \(64\)"):
        build(tiny_teacher, hidden_size=32, teacher=tiny_teacher)


def test_a_teacher_with_another_vocabulary_is_refused(tiny_teacher, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_teacher))
    tokenizer.add_tokens(["zzqx"])
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="tokenize.tokenizer: teacher"):
        build_lattice(tmp_path, MAX_LENGTH, 64, **SMALL, teacher_path=tiny_teacher, seed=0)


def test_max_length_beyond_the_position_embeddings_is_refused(tiny_teacher):
    with pytest.raises(UserError, match=r"tokenize.max_length \(16\) must be <= model.max_positions \(8\)"):
        build(tiny_teacher, max_positions=8)


def test_saved_model_reloads_with_the_same_vectors(from_teacher, tmp_path):
    from_teacher.save(str(tmp_path / "student"))
    reloaded = SentenceTransformer(str(tmp_path / "student"), device="cpu", trust_remote_code=True)
    assert isinstance(reloaded[2], Lattice)
    assert reloaded[2].get_config_dict() == {"dim": 64, "size": [6, 4, 4], "channels": 8, "steps": 5}
    np.testing.assert_allclose(reloaded.encode(SENTENCES), from_teacher.encode(SENTENCES), atol=1e-6)


def test_gradients_reach_the_rules_the_projections_and_the_token_embeddings(tiny_teacher):
    model = build(tiny_teacher)
    model.train()
    embeddings = model(model.tokenize(SENTENCES))["sentence_embedding"]
    (embeddings @ torch.randn(16)).sum().backward()
    lattice, backbone = model[2], model[0].auto_model
    for name, parameter in [
        ("rules", lattice.rules.weight),
        ("read_in", lattice.read_in.weight),
        ("read_out", lattice.read_out.weight),
        ("word embeddings", backbone.embeddings.word_embeddings.weight),
    ]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def bytes_autograd_saves(model: SentenceTransformer, batch_size: int) -> int:
    """Bytes autograd keeps for one forward of ``batch_size`` sentences of ``MAX_LENGTH`` tokens."""
    features = model.tokenize([LONG_SENTENCE] * batch_size)
    assert features["input_ids"].shape == (batch_size, MAX_LENGTH)
    return autograd_saved_bytes(model, features)


@pytest.mark.parametrize("batch_size", [2, 4])
def test_activation_estimate_is_within_a_quarter_of_what_autograd_saves(scratch, batch_size):
    scratch.train()
    saved = bytes_autograd_saves(scratch, batch_size)
    estimate = estimate_lattice_memory(scratch, batch_size, MAX_LENGTH)["activations"]
    assert 0.75 * saved <= estimate <= 1.25 * saved


def test_memory_estimate_is_linear_in_batch_size_and_counts_the_lattice_rule(scratch):
    one, two, three = (estimate_lattice_memory(scratch, batch, MAX_LENGTH) for batch in (1, 2, 3))
    assert two["activations"] == 2 * one["activations"] and three["activations"] == 3 * one["activations"]
    assert three["total"] - two["total"] == two["total"] - one["total"] == one["activations"]
    lattice = scratch[2]
    assert one["activations"] > 3 * 4 * lattice.channels * lattice.cells * lattice.steps  # the seed's rule x 3 kept
    assert one["weights"] + one["gradients"] + one["optimizer"] == 4 * count_parameters(scratch) * 4
    assert one["total"] == sum(value for key, value in one.items() if key != "total")


def test_overfitting_warning_beyond_a_tenth_of_the_data():
    assert overfitting_warning(1000, 10000) is None
    message = overfitting_warning(1000, 9999)
    assert message is not None
    assert "1000 cells" in message and "9999 training examples" in message
    assert "model.lattice.mode" in message and "model.lattice.size" in message and "more data" in message
