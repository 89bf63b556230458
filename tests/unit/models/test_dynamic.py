import math

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from torch import nn

from embedforge.config import ModelParams
from embedforge.models.dynamic import (
    DynamicHead,
    adapted_batch_size,
    build_dynamic,
    dimension_activity,
    estimate_dynamic_memory,
    grow_linear_inputs,
    plan_dimensions,
    prune_linear_inputs,
    sparsity,
    sparsity_penalty,
)
from embedforge.models.encoder import build_encoder, estimate_memory_bytes

SENTENCES = ["A man is playing a guitar.", "Two dogs run across a snowy field after a red ball.", "Hello"]
MAX_LENGTH = 32
# The tiny teacher's shape (tests/conftest.py): 2 layers, 64 wide, 2 heads, 128 positions.
FITS_TINY_TEACHER = {"hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "num_layers": 2}
GROWTH = {"expand_by": 4, "expand_interval": 1, "max_dims": 64, "saturation": 0.3, "active_rate": 0.05}


def params(**changes) -> ModelParams:
    return ModelParams(**{**FITS_TINY_TEACHER, "teacher_layers": [1, 0], "max_positions": 64, **changes})


def dynamic_student(tiny_teacher, embedding_dim: int = 16, seed: int = 0) -> SentenceTransformer:
    encoder = build_encoder(params(), tiny_teacher, MAX_LENGTH, tiny_teacher, seed=0)
    return build_dynamic(encoder, embedding_dim, shrink=0.01, seed=seed)


def head_of(model: SentenceTransformer) -> DynamicHead:
    return model[2]


def embed(head: DynamicHead, pooled: torch.Tensor) -> torch.Tensor:
    return head({"sentence_embedding": pooled})["sentence_embedding"]


def float64_head(input_dim: int = 8, dims: int = 6, shrink: float = 0.0) -> DynamicHead:
    torch.manual_seed(0)
    return DynamicHead(input_dim, dims, shrink).double()


def plan(embeddings: torch.Tensor, epoch: int = 1, prune: bool = False, **changes):
    return plan_dimensions(embeddings, epoch, embeddings.shape[1], **{**GROWTH, "prune": prune, **changes})


def sample(activity: list[float], sentences: int = 100) -> torch.Tensor:
    """Embeddings whose dimension d is non-zero in the first activity[d] share of the sentences."""
    rows = torch.arange(sentences).unsqueeze(1)
    return (rows < torch.tensor(activity) * sentences).double()


def test_build_puts_a_seeded_head_between_pooling_and_normalize(tiny_teacher):
    model, again, other = (dynamic_student(tiny_teacher, seed=seed) for seed in (1, 1, 2))
    assert [type(module) for module in model] == [Transformer, Pooling, DynamicHead, Normalize]
    assert (head_of(model).input_dim, head_of(model).dims, head_of(model).shrink) == (64, 16, 0.01)
    assert torch.equal(head_of(model).linear.weight, head_of(again).linear.weight)
    assert not torch.equal(head_of(model).linear.weight, head_of(other).linear.weight)


def test_build_refuses_a_model_that_is_not_an_encoder(tiny_teacher):
    model = dynamic_student(tiny_teacher)
    with pytest.raises(ValueError, match="expected a Transformer, Pooling, Normalize encoder"):
        build_dynamic(model, 16, shrink=0.01, seed=0)


def test_the_soft_threshold_zeroes_small_values_and_shrinks_the_rest():
    head = DynamicHead(2, 2, shrink=0.5)
    with torch.no_grad():
        head.linear.weight.copy_(torch.eye(2))
        head.linear.bias.zero_()
    out = embed(head, torch.tensor([[0.3, -2.0], [-0.5, 1.5]]))
    assert torch.equal(out, torch.tensor([[0.0, -1.5], [0.0, 1.0]]))


def test_encode_gives_unit_vectors_of_the_current_dims(tiny_teacher):
    model = dynamic_student(tiny_teacher)
    assert model.encode(SENTENCES).shape == (3, 16)
    head_of(model).grow(4)
    vectors = model.encode(SENTENCES)
    assert vectors.shape == (3, 20) and model.get_embedding_dimension() == 20
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_grow_keeps_the_old_weights_bit_for_bit_and_the_old_outputs():
    head = float64_head()
    pooled = torch.randn(5, 8, dtype=torch.float64)
    old_weight, old_bias, before = head.linear.weight, head.linear.bias, embed(head, pooled).detach()
    head.grow(3)
    weight, bias = head.linear.weight, head.linear.bias
    assert head.dims == head.get_embedding_dimension() == 9 and weight.shape == (9, 8)
    assert weight is not old_weight and bias is not old_bias  # new Parameters: the optimizer is rebuilt
    assert weight.dtype == bias.dtype == torch.float64
    assert torch.equal(weight[:6], old_weight) and torch.equal(bias[:6], old_bias)
    assert (weight[6:] != 0).all()  # new dims can become active
    after = embed(head, pooled)
    assert after.shape == (5, 9)
    torch.testing.assert_close(after[:, :6], before, rtol=0, atol=1e-12)  # BLAS may sum in another order


def test_grow_and_prune_keep_the_device():
    head = DynamicHead(8, 6).to("meta")
    projection = nn.Linear(6, 4, device="meta")
    head.grow(2)
    projection = grow_linear_inputs(projection, 2)
    keep = torch.tensor([True, False] * 4)
    head.prune(keep)
    projection = prune_linear_inputs(projection, keep)
    tensors = [head.linear.weight, head.linear.bias, projection.weight, projection.bias]
    assert {tensor.device.type for tensor in tensors} == {"meta"}
    assert (head.linear.weight.shape, projection.weight.shape) == ((4, 8), (4, 4))


def test_a_projection_grown_with_the_head_gives_the_same_output():
    head = float64_head()
    projection = nn.Linear(6, 4).double()
    pooled = torch.randn(5, 8, dtype=torch.float64)
    before = projection(embed(head, pooled)).detach()
    head.grow(3)
    grown = grow_linear_inputs(projection, 3)
    assert grown.weight.shape == (4, 9) and grown.weight.dtype == torch.float64
    assert grown.weight is not projection.weight and torch.equal(grown.bias, projection.bias)
    assert torch.equal(grown.weight[:, :6], projection.weight) and not grown.weight[:, 6:].any()
    torch.testing.assert_close(grown(embed(head, pooled)), before, rtol=0, atol=1e-12)


def test_prune_removes_exactly_the_dead_dims_and_keeps_the_others():
    head = float64_head(shrink=0.01)
    with torch.no_grad():
        head.linear.weight[[1, 4]] = 0
        head.linear.bias[[1, 4]] = 0
    projection = nn.Linear(6, 4).double()
    pooled = torch.randn(50, 8, dtype=torch.float64)
    embeddings = embed(head, pooled).detach()
    old_weight, before = head.linear.weight.detach().clone(), projection(embeddings).detach()
    keep = plan(embeddings, prune=True).keep
    assert keep.tolist() == [True, False, True, True, False, True]
    head.prune(keep)
    pruned = prune_linear_inputs(projection, keep)
    assert torch.equal(head.linear.weight, old_weight[[0, 2, 3, 5]]) and head.dims == 4
    torch.testing.assert_close(embed(head, pooled), embeddings[:, [0, 2, 3, 5]], rtol=0, atol=1e-12)
    torch.testing.assert_close(pruned(embed(head, pooled)), before, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (torch.zeros(6, dtype=torch.bool), "keep at least one dimension"),
        (torch.ones(5, dtype=torch.bool), r"bool mask of shape \(6,\)"),
        (torch.ones(6), r"bool mask of shape \(6,\)"),
    ],
)
def test_prune_refuses_a_mask_that_does_not_fit(keep, expected):
    with pytest.raises(ValueError, match=expected):
        float64_head().prune(keep)
    with pytest.raises(ValueError, match=expected):
        prune_linear_inputs(nn.Linear(6, 4), keep)


def test_activity_and_sparsity_of_a_hand_made_sample():
    embeddings = torch.tensor([[0.0, 1.0, 0.0, -2.0], [0.0, 3.0, 0.0, 0.0]])
    assert dimension_activity(embeddings).tolist() == [0.0, 1.0, 0.0, 0.5]
    assert sparsity(embeddings) == 5 / 8


def test_the_penalty_is_scale_free_lower_when_sparse_and_differentiable():
    dims = 16
    one_hot, flat = torch.eye(dims)[:2], torch.ones(2, dims)
    assert sparsity_penalty(one_hot).item() == pytest.approx(1 / math.sqrt(dims))
    assert sparsity_penalty(flat).item() == pytest.approx(1.0)
    assert sparsity_penalty(7 * flat).item() == pytest.approx(1.0)
    embeddings = torch.randn(4, dims, requires_grad=True)
    sparsity_penalty(embeddings).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


def test_growth_comes_only_on_interval_epochs():
    saturated = sample([1.0] * 8)
    grown = [plan(saturated, epoch, expand_interval=2).grow_by for epoch in (1, 2, 3, 4)]
    assert grown == [0, 4, 0, 4]


def test_growth_needs_saturation():
    half_active = sample([0.5, 0.5, 0.5, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    measured = plan(half_active, saturation=0.3)
    assert (measured.active, measured.saturation, measured.grow_by) == (3, 0.3, 4)
    assert plan(half_active, saturation=0.31).grow_by == 0
    assert plan(half_active, active_rate=0.6).grow_by == 0


def test_growth_stops_at_max_dims():
    saturated = sample([1.0] * 8)
    assert plan(saturated, max_dims=10).grow_by == 2
    assert plan(saturated, max_dims=8).grow_by == 0
    assert not plan(saturated, max_dims=8).changes_dimensions


def test_the_plan_prunes_only_dead_dims_then_grows_into_the_room_they_leave():
    embeddings = sample([0.5, 0.01, 0.0, 1.0, 0.0])
    pruned = plan(embeddings, prune=True, max_dims=5, expand_by=8)
    assert pruned.keep.tolist() == [True, True, False, True, False]  # the rarely used dim 1 is not dead
    assert (pruned.active, pruned.dead, pruned.saturation) == (2, 2, pytest.approx(2 / 3))
    assert pruned.grow_by == 2 and pruned.changes_dimensions
    assert pruned.sparsity == pytest.approx(1 - (0.5 + 0.01 + 1.0) / 5)
    kept = plan(embeddings, prune=False, max_dims=5)
    assert kept.keep is None and kept.dead == 2 and kept.grow_by == 0


def test_pruning_never_removes_the_last_dimension():
    result = plan(torch.zeros(10, 3), prune=True)
    assert result.keep.tolist() == [True, False, False]
    assert (result.active, result.dead, result.grow_by) == (0, 3, 0)


def test_a_plan_with_nothing_dead_prunes_nothing():
    result = plan(sample([1.0, 0.5]), prune=True, max_dims=2)
    assert result.keep is None and not result.changes_dimensions


def test_the_plan_refuses_a_sample_of_another_width():
    with pytest.raises(ValueError, match="the sample has 3 dimensions but the head has 4"):
        plan_dimensions(torch.ones(2, 3), 1, 4, **GROWTH, prune=False)


@pytest.mark.parametrize(
    ("initial_batch", "initial_dims", "current_dims", "floor", "expected"),
    [
        (64, 128, 128, 16, 64),
        (64, 128, 192, 16, 42),
        (64, 128, 384, 16, 21),
        (64, 128, 384, 32, 32),
        (64, 128, 64, 16, 128),
    ],
)
def test_the_batch_shrinks_as_dims_grow_down_to_the_floor(initial_batch, initial_dims, current_dims, floor, expected):
    assert adapted_batch_size(initial_batch, initial_dims, current_dims, floor) == expected


def test_a_grown_model_reloads_as_a_sentence_transformer(tiny_teacher, tmp_path):
    model = dynamic_student(tiny_teacher)
    head_of(model).grow(4)
    model.save(str(tmp_path / "student"))
    reloaded = SentenceTransformer(str(tmp_path / "student"), device="cpu", trust_remote_code=True)
    assert type(reloaded[2]) is DynamicHead and reloaded[2].get_config_dict() == {
        "input_dim": 64,
        "dims": 20,
        "shrink": 0.01,
    }
    np.testing.assert_array_equal(reloaded.encode(SENTENCES), model.encode(SENTENCES))


def saved_activation_bytes(head: DynamicHead, batch_size: int) -> int:
    """The bytes autograd keeps for the head and Normalize, each tensor once."""
    saved = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        Normalize()(head({"sentence_embedding": torch.randn(batch_size, head.input_dim)}))
    return sum(saved.values())


def test_the_memory_estimate_adds_the_heads_activations_as_it_grows(tiny_teacher):
    model = dynamic_student(tiny_teacher)
    for _ in range(2):
        backbone, dynamic = estimate_memory_bytes(model, 8, MAX_LENGTH), estimate_dynamic_memory(model, 8, MAX_LENGTH)
        head_bytes = dynamic["activations"] - backbone["activations"]
        assert head_bytes == pytest.approx(saved_activation_bytes(head_of(model), 8), rel=0.02)
        assert dynamic["total"] - backbone["total"] == head_bytes
        assert dynamic["weights"] == backbone["weights"]  # the head's parameters are counted once
        head_of(model).grow(16)
