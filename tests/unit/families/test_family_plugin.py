"""A model family is a plugin: one class registered with ``embedforge.families.register``, here from this test
file and not from ``src/``, becomes a ``model.kind`` the schema takes and the train stage trains, calling only
its hooks."""

import json
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
from tokenizers import Tokenizer

from embedforge.families import FAMILIES, register
from embedforge.families.base import Family
from embedforge.models import count_parameters
from embedforge.models.static import bag_inputs
from embedforge.stages import train

WIDTH = 16


class MeanTokens(Family):
    """The smallest student a family can build: a seeded token table averaged over the sentence."""

    kind = "mean_tokens"
    inits = ("scratch",)
    copies_teacher_layers = False
    projects_to_teacher = True

    def __init__(self):
        self.calls: list[str] = []

    def build(self, params, tokenizer_dir, max_length, teacher_path, seed):
        self.calls.append("build")
        tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        generator = torch.Generator().manual_seed(seed)
        table = torch.randn(tokenizer.get_vocab_size(), WIDTH, generator=generator)
        return SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=table), Normalize()])

    def estimate_memory(self, model, sentences, length):
        self.calls.append("estimate_memory")
        weights = 4 * count_parameters(model)
        estimate = {"weights": weights, "gradients": weights, "optimizer": 2 * weights, "activations": 64 * sentences}
        return {**estimate, "total": sum(estimate.values())}

    def model_inputs(self, model):
        self.calls.append("model_inputs")
        return bag_inputs(model)


@pytest.fixture
def mean_tokens():
    family = register(MeanTokens())
    yield family
    del FAMILIES[family.kind]


def test_a_family_registered_from_a_test_trains_through_the_train_stage(mean_tokens, ready, project):
    cfg = ready("model.kind=mean_tokens", "model.init=scratch", "train.objectives={infonce: 0.0, distill: 1.0}")
    results = train.run(cfg)
    assert {"build", "estimate_memory", "model_inputs"} <= set(mean_tokens.calls)
    assert results["result.steps"] > 0 and results["result.embedding_dim"] == WIDTH
    student = SentenceTransformer(str(project / "models/student"))
    assert isinstance(student[0], StaticEmbedding) and student.get_embedding_dimension() == WIDTH
    initial = mean_tokens.build(cfg.model, project / "data/tokens/tokenizer", 128, None, cfg.seed)
    assert not torch.equal(student[0].embedding.weight, initial[0].embedding.weight)  # the table was trained
    assert json.loads((project / "metrics/train.json").read_text())["embedding_dim"] == WIDTH


def test_an_unregistered_kind_is_refused_naming_the_registered_ones(ready):
    with pytest.raises(Exception, match="model.kind: input should be 'encoder', 'dynamic', 'lattice' or 'static'"):
        ready("model.kind=mean_tokens", "model.init=scratch")
