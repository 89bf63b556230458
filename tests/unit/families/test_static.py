"""The static family: a token table built from the teacher alone, distilled onto the teacher's sentence vectors,
saved as a plain SentenceTransformer that loads without trust_remote_code."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT
from safetensors.torch import load_file
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

from embedforge.config import load_params
from embedforge.errors import UserError
from embedforge.families import FAMILIES
from embedforge.models.static import bag_inputs, build_student, load_vocabulary
from embedforge.paths import STUDENT_DIR, TOKENS_DIR
from embedforge.stages import train

STATIC = ["model.kind=static", "model.init=teacher_tokens", "model.static.dim=48"]
DISTILL_ONLY = ["train.objectives={distill: 1.0}", "train.distill_loss=cosine", "train.lr=0.01", "train.epochs=3"]
SENTENCES = ["A man is playing a guitar.", "Two dogs run through the snow.", "The woman slices an onion."]


def table(model: SentenceTransformer) -> torch.Tensor:
    return model[0].embedding.weight.detach()


@pytest.fixture(scope="module")
def initial(train_ready_data, tiny_teacher) -> SentenceTransformer:
    """The static student after teacher_tokens alone (seed 1), built once for the tests that only read it."""
    cfg = load_params(REPO_ROOT / "params.yaml", STATIC)
    return build_student(cfg.model, train_ready_data / "tokens/tokenizer", 128, tiny_teacher, seed=1)


def test_teacher_tokens_builds_the_same_table_every_time_from_the_teacher_alone(initial, ready, tiny_teacher):
    cfg = ready(*STATIC)
    first = initial
    second = build_student(cfg.model, TOKENS_DIR / "tokenizer", 128, tiny_teacher, seed=2)
    assert torch.equal(table(first), table(second)), "the init depends on the seed or on chance"
    vocabulary = load_vocabulary(TOKENS_DIR / "tokenizer").get_vocab_size()
    assert table(first).shape == (vocabulary, 48)
    assert [type(module) for module in first] == [StaticEmbedding, Normalize]
    scratch = build_student(
        ready("model.kind=static", "model.init=scratch").model, TOKENS_DIR / "tokenizer", 128, None, 1
    )
    assert not torch.allclose(table(scratch)[:, :48], table(first))


def test_a_padded_batch_becomes_the_bags_the_models_own_tokenizer_makes(initial, ready):
    from transformers import AutoTokenizer

    model = initial

    padded = AutoTokenizer.from_pretrained(str(TOKENS_DIR / "tokenizer"))(SENTENCES, padding=True, return_tensors="pt")
    ours = model(bag_inputs(model)(padded["input_ids"], padded["attention_mask"]))["sentence_embedding"]
    theirs = model.encode(SENTENCES, convert_to_tensor=True)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_distillation_improves_the_init_and_saves_a_plain_sentence_transformer(initial, ready, project, tiny_teacher):
    init = initial  # the same table the train stage starts from: teacher_tokens does not depend on the seed
    train.run(ready(*STATIC, *DISTILL_ONLY))

    modules = json.loads((project / STUDENT_DIR / "modules.json").read_text())
    assert all(module["type"].startswith("sentence_transformers.") for module in modules), modules
    student = SentenceTransformer(str(project / STUDENT_DIR), device="cpu")  # trust_remote_code is False
    assert [type(module) for module in student] == [StaticEmbedding, Normalize]
    stored = load_file(project / STUDENT_DIR / modules[0]["path"] / "model.safetensors")
    assert stored["embeddings"].dtype == torch.float16 and stored["embeddings"].shape == table(student).shape
    assert table(student).dtype == torch.float32  # loaded back as float32, beside any Dense
    assert torch.equal(table(student), stored["embeddings"].float())
    trained = load_file(project / "checkpoints/best/weights.safetensors")["model.0.embedding.weight"]
    assert trained.dtype == torch.float32 and torch.equal(stored["embeddings"], trained.half())  # resumes stay exact
    held_out = list(dict.fromkeys(pd.read_parquet(project / "data/raw/stsb/validation.parquet")["sentence1"]))[:150]
    teacher = SentenceTransformer(str(tiny_teacher), device="cpu")
    before, after = agreement(init, teacher, held_out), agreement(student, teacher, held_out)
    assert after > before + 0.02, (before, after)


def agreement(model: SentenceTransformer, teacher: SentenceTransformer, texts: list[str]) -> float:
    """Spearman between the pairwise cosines of ``model``'s vectors and the teacher's, over ``texts``."""
    ours = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    theirs = teacher.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    upper = torch.triu_indices(len(texts), len(texts), 1)
    mine, target = (ours @ ours.T)[upper[0], upper[1]], (theirs @ theirs.T)[upper[0], upper[1]]
    return float(spearmanr(mine.numpy(), target.numpy()).statistic)


def test_the_memory_estimate_counts_the_table_and_refuses_before_work(initial, ready):
    cfg, model = ready(*STATIC), initial
    estimate = FAMILIES["static"].estimate_memory(model, 32, 128)
    table_bytes = table(model).numel() * 4
    assert estimate["weights"] == estimate["gradients"] == table_bytes and estimate["optimizer"] == 2 * table_bytes
    assert 4 * table_bytes < estimate["total"] < 5 * table_bytes
    with pytest.raises(UserError, match=r"use a smaller model.static.dim \(the token table is vocabulary x dim"):
        train.plan_micro_batches(cfg, model, parts=2, longest=40, available=4 * table_bytes)


def test_teacher_tokens_refuses_a_dim_above_the_teachers(ready, tiny_teacher):
    with pytest.raises(UserError, match=r"model.static.dim \(512\) must be at most the teacher's dimension \(64\)"):
        build_student(ready(*STATIC[:2], "model.static.dim=512").model, TOKENS_DIR / "tokenizer", 128, tiny_teacher, 1)


def test_init_and_kind_must_fit(ready):
    with pytest.raises(UserError, match="a static student starts from teacher_tokens or scratch"):
        load_params("params.yaml", ["model.kind=static"])
    with pytest.raises(UserError, match="teacher_tokens builds a static student's table"):
        load_params("params.yaml", ["model.init=teacher_tokens"])
