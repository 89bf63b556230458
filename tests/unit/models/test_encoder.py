import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from embedforge.config import PRESETS, ModelParams, load_params
from embedforge.errors import UserError
from embedforge.families import FAMILIES
from embedforge.models import count_parameters
from embedforge.models import teacher as teachers
from embedforge.models.encoder import build_encoder, estimate_memory_bytes

SENTENCES = ["A man is playing a guitar.", "Two dogs run across a snowy field after a red ball.", "Hello"]
MAX_LENGTH = 32
# The tiny teacher's shape (tests/conftest.py): 2 layers, 64 wide, 2 heads, 128 positions.
FITS_TINY_TEACHER = {"hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "num_layers": 2}


def params(**changes) -> ModelParams:
    return ModelParams(**{**FITS_TINY_TEACHER, "teacher_layers": [1, 0], "max_positions": 64, **changes})


def backbone(model: SentenceTransformer):
    return model[0].auto_model


def query_weight(model: SentenceTransformer, layer: int = 0) -> torch.Tensor:
    return backbone(model).encoder.layer[layer].attention.self.query.weight


@pytest.fixture(scope="module")
def copied(tiny_teacher: Path) -> SentenceTransformer:
    return build_encoder(params(), tiny_teacher, MAX_LENGTH, tiny_teacher, seed=0)


def test_a_scratch_build_computes_at_the_configured_sizes_over_the_tokenizers_vocabulary(tiny_teacher):
    cfg = params(init="scratch", hidden_size=32, num_layers=3, intermediate_size=48, dropout=0.0)
    model = build_encoder(cfg, tiny_teacher, MAX_LENGTH, None, seed=0)
    bert = backbone(model)
    features = model.preprocess([SENTENCES[1] * 5, *SENTENCES])
    assert features["input_ids"].shape[1] == MAX_LENGTH  # longer texts are cut at max_length
    intermediate = []
    bert.encoder.layer[0].intermediate.register_forward_hook(lambda module, inputs, output: intermediate.append(output))
    model.train()
    outputs = [bert(**features, output_hidden_states=True) for _ in range(2)]
    assert len(outputs[0].hidden_states) == 1 + 3  # the embeddings, then each layer
    assert outputs[0].last_hidden_state.shape == (4, MAX_LENGTH, 32) and intermediate[0].shape[-1] == 48
    assert torch.equal(outputs[0].last_hidden_state, outputs[1].last_hidden_state)  # dropout 0: training is exact
    vocab = len(AutoTokenizer.from_pretrained(str(tiny_teacher)))
    assert bert.get_input_embeddings().weight.shape == (vocab, 32)
    assert bert.embeddings.position_embeddings.weight.shape[0] == cfg.max_positions
    assert model.encode(SENTENCES).shape == (3, 32)


def test_scratch_weights_follow_the_seed(tiny_teacher):
    cfg = params(init="scratch")
    first, again, other = (build_encoder(cfg, tiny_teacher, MAX_LENGTH, None, seed) for seed in (1, 1, 2))
    assert torch.equal(query_weight(first), query_weight(again))
    assert not torch.equal(query_weight(first), query_weight(other))


def test_teacher_layers_init_copies_the_teachers_tensors(copied, tiny_teacher):
    teacher = backbone(SentenceTransformer(str(tiny_teacher), device="cpu"))
    student = backbone(copied)
    teacher_embeddings = teacher.embeddings.state_dict()
    for name, tensor in student.embeddings.state_dict().items():
        assert torch.equal(tensor, teacher_embeddings[name][: tensor.shape[0]]), name
    assert student.embeddings.position_embeddings.weight.shape[0] == 64  # cut from the teacher's 128
    for index, source in enumerate(params().teacher_layers):
        teacher_layer = teacher.encoder.layer[source].state_dict()
        for name, tensor in student.encoder.layer[index].state_dict().items():
            assert torch.equal(tensor, teacher_layer[name]), f"layer {index} {name}"


def test_saved_model_reloads_as_a_plain_sentence_transformer(copied, tmp_path):
    copied.save(str(tmp_path / "student"))
    reloaded = SentenceTransformer(str(tmp_path / "student"), device="cpu")
    before, after = copied.encode(SENTENCES), reloaded.encode(SENTENCES)
    np.testing.assert_allclose(after, before, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-6)
    assert reloaded.max_seq_length == MAX_LENGTH


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"hidden_size": 32}, "model.hidden_size (32) must equal the teacher's hidden size (64)"),
        ({"intermediate_size": 256}, "model.intermediate_size (256) must equal the teacher's intermediate size (128)"),
        ({"num_heads": 4}, "model.num_heads (4) must equal the teacher's attention heads (2)"),
        ({"teacher_layers": [0, 2]}, "model.teacher_layers names [2], beyond the teacher's 2 layers (0..1)"),
        ({"max_positions": 256}, "model.max_positions (256) must be <= the teacher's 128 position embeddings"),
    ],
)
def test_a_teacher_that_does_not_fit_is_refused_naming_the_key(tiny_teacher, changes, expected):
    with pytest.raises(UserError) as raised:
        build_encoder(params(**changes), tiny_teacher, MAX_LENGTH, tiny_teacher, seed=0)
    assert expected in str(raised.value)
    assert "model.init: teacher_layers" in str(raised.value)


def test_every_mismatch_is_named_at_once(tiny_teacher):
    with pytest.raises(UserError) as raised:
        build_encoder(params(num_heads=4, teacher_layers=[0, 5]), tiny_teacher, MAX_LENGTH, tiny_teacher, seed=0)
    assert "model.num_heads" in str(raised.value) and "model.teacher_layers names [5]" in str(raised.value)


def save_tokenizer(tiny_teacher: Path, directory: Path, swap: tuple[str, str] | None = None, add: str | None = None):
    """The teacher's tokenizer with one token added, or two tokens' ids swapped (same size, other vocabulary)."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_teacher))
    if add:
        tokenizer.add_tokens([add])
    tokenizer.save_pretrained(directory)
    if swap:
        spec = json.loads((directory / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        vocab[swap[0]], vocab[swap[1]] = vocab[swap[1]], vocab[swap[0]]
        (directory / "tokenizer.json").write_text(json.dumps(spec))
    return directory


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"add": "zzqx"}, "the tokenizer has 30523 tokens but the teacher's word embeddings have 30522 rows"),
        ({"swap": ("hello", "world")}, "the tokenizer's vocabulary is not the teacher's"),
    ],
)
def test_a_vocabulary_other_than_the_teachers_is_refused(tiny_teacher, tmp_path, change, expected):
    tokenizer_dir = save_tokenizer(tiny_teacher, tmp_path, **change)
    with pytest.raises(UserError) as raised:
        build_encoder(params(), tokenizer_dir, MAX_LENGTH, tiny_teacher, seed=0)
    assert expected in str(raised.value)
    assert "tokenize.tokenizer: teacher" in str(raised.value)
    build_encoder(params(init="scratch"), tokenizer_dir, MAX_LENGTH, None, seed=0)  # any vocabulary from scratch


def test_max_length_beyond_the_position_embeddings_is_refused(tiny_teacher):
    with pytest.raises(UserError, match=r"tokenize.max_length \(128\) must be <= model.max_positions \(64\)"):
        build_encoder(params(init="scratch"), tiny_teacher, 128, None, seed=0)


def test_teacher_layers_init_needs_a_teacher(tiny_teacher):
    with pytest.raises(UserError, match="model.init is 'teacher_layers' but no teacher was given"):
        build_encoder(params(), tiny_teacher, MAX_LENGTH, None, seed=0)


def write_params(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"num_layers": 3},
            (
                "model.teacher_layers ([0, 5]) must name one teacher layer per student layer: "
                "2 given but model.num_layers is 3"
            ),
        ),
        ({"teacher_layers": [5, 5]}, "model.teacher_layers ([5, 5]) must not repeat a layer"),
        ({"teacher_layers": [0, -1]}, "model.teacher_layers.1: must be >= 0, got -1"),
        ({"max_positions": 4}, "model.max_positions: must be >= 8, got 4"),
        ({"dropout": 1.0}, "model.dropout: must be < 1.0, got 1.0"),
    ],
)
def test_bad_model_params_name_the_key(tmp_path, model, expected):
    path = write_params(tmp_path / "params.yaml", {"preset": "development", "model": model})
    with pytest.raises(UserError) as raised:
        load_params(path)
    assert expected in str(raised.value)


def test_teacher_layers_are_ignored_from_scratch(tmp_path, tiny_teacher):
    small = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 48, "max_positions": 128}
    path = write_params(tmp_path / "params.yaml", {"model": {"init": "scratch", "num_layers": 3, **small}})
    model = load_params(path).model  # the preset's two teacher_layers do not hold three layers back
    assert len(backbone(build_encoder(model, tiny_teacher, MAX_LENGTH, None, seed=0)).encoder.layer) == 3


@pytest.fixture(scope="module")
def packaged_teacher() -> Path:
    return teachers.resolve("packaged:all-MiniLM-L6-v2").path


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_starts_from_the_packaged_teachers_layers(tmp_path, preset, packaged_teacher):
    model = load_params(write_params(tmp_path / "params.yaml", {"preset": preset})).model
    student = build_encoder(model, packaged_teacher, MAX_LENGTH, packaged_teacher, seed=0)
    teacher = SentenceTransformer(str(packaged_teacher), device="cpu")
    assert len(backbone(student).encoder.layer) == len(model.teacher_layers)
    for index, source in enumerate(model.teacher_layers):
        assert torch.equal(query_weight(student, index), query_weight(teacher, source)), (index, source)
    assert student.encode(SENTENCES).shape == teacher.encode(SENTENCES).shape


def test_parameter_count_is_bert_with_a_pooler(copied):
    config = backbone(copied).config
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
    assert count_parameters(copied) == embeddings + layers * layer + h * h + h


def test_memory_estimate_is_linear_in_batch_size_and_counts_adamw_state(copied):
    one, two, three = (estimate_memory_bytes(copied, batch, MAX_LENGTH) for batch in (1, 2, 3))
    assert one["activations"] > 0
    assert two["activations"] == 2 * one["activations"] and three["activations"] == 3 * one["activations"]
    assert three["total"] - two["total"] == two["total"] - one["total"] == one["activations"]
    assert one["weights"] + one["gradients"] + one["optimizer"] == 4 * count_parameters(copied) * 4
    assert one["total"] == sum(value for key, value in one.items() if key != "total")


def test_the_schema_takes_its_kinds_and_sections_from_the_family_registry():
    assert set(FAMILIES) == {"encoder", "lattice", "dynamic", "static"}
    for kind, family in FAMILIES.items():
        assert ModelParams(kind=kind, init=family.inits[-1]).kind == kind
        if family.params is not None:
            assert isinstance(getattr(ModelParams(), kind), family.params)
    with pytest.raises(ValueError, match="input should be 'encoder', 'dynamic', 'lattice' or 'static'"):
        ModelParams(kind="transformer")
