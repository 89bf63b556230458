"""The train stage's checks before and around training, each on a run of a step or two: refusals that name the
param, the memory plan, hard negatives, teacher vectors memory-mapped, the held-out texts left out.

Full runs: tests/pipeline/test_training_runs.py."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from embedforge.data.held_out import held_out
from embedforge.data.sentences import normalize_text, sentence_id
from embedforge.errors import UserError
from embedforge.models import teacher as teachers
from embedforge.models.encoder import build_encoder
from embedforge.stages import tokenize, train
from embedforge.training import data as training_data
from embedforge.training.token_files import TokenStore


def test_resume_refuses_a_checkpoint_of_another_architecture(ready):
    train.run(ready("train.epochs=1"))
    with pytest.raises(UserError) as refused:
        train.run(ready("train.resume=true", "model.num_layers=1", "model.teacher_layers=[0]"))
    message = str(refused.value)
    assert "another architecture" in message and "model.num_layers: checkpoint has 2, this run has 1" in message


def test_an_sts_validation_split_that_was_not_downloaded_names_the_param(ready):
    with pytest.raises(UserError, match=r"train.sts_validation: 'stsb/test' is not a downloaded <dataset>/<split>"):
        train.run(ready("train.sts_validation=stsb/test"))


def test_resume_without_a_checkpoint_is_a_user_error(ready):
    with pytest.raises(UserError, match="checkpoints/last does not exist"):
        train.run(ready("train.resume=true"))


def test_memory_estimate_splits_batches_that_would_not_fit(ready):
    cfg = ready()
    student = build_encoder(ready("model.init=scratch").model, Path("data/tokens/tokenizer"), 128, None, seed=0)
    roomy = train.plan_micro_batches(cfg, student, parts=3, longest=40, available=2**40)
    tight = train.plan_micro_batches(cfg, student, parts=3, longest=40, available=roomy["estimate_bytes"] - 1)
    assert roomy["micro_batches"] == 1 and tight["micro_batches"] == 2
    assert tight["estimate_bytes"] < roomy["estimate_bytes"]
    with pytest.raises(UserError, match="one example needs about"):
        train.plan_micro_batches(cfg, student, parts=3, longest=40, available=2**20)


def test_hard_negatives_can_be_left_out(ready):
    frame = pd.DataFrame(
        {
            "pair_id": ["1", "2", "3"],
            "sentence1": ["A man sleeps."] * 3,
            "sentence2": ["A person rests.", "A man runs.", "Someone is outside."],
            "label": ["entailment", "contradiction", "neutral"],
            "score": [None, None, None],
            "genre": [None, None, None],
        }
    )
    frame.to_parquet("data/raw/snli/train.parquet", index=False)
    files = [Path("data/raw/snli/train.parquet")]
    cfg = ready("train.datasets=[snli]")
    tokenize.run(cfg)
    store = TokenStore.load(Path("data/tokens"), files)
    with_negatives = training_data.examples_of(cfg, store, files)["snli"]
    plain = ready("train.datasets=[snli]", "train.hard_negatives=false")
    without = training_data.examples_of(plain, store, files)
    assert with_negatives.negatives.tolist() == store.rows([sentence_id(normalize_text("A man runs."))]).tolist()
    assert without["snli"].negatives.tolist() == [-1]
    assert with_negatives.positives.tolist() == without["snli"].positives.tolist()


def test_teacher_vectors_beyond_the_memory_budget_are_memory_mapped(ready, caplog):
    from embedforge.embeddings import EmbeddingCache
    from embedforge.models import teacher as teachers

    caplog.set_level("INFO", logger="embedforge.training.data")
    cfg = ready()
    store = TokenStore.load(Path("data/tokens"), [Path("data/raw/snli/train.parquet")])
    cache = EmbeddingCache(Path("data/embeddings") / teachers.resolve(cfg.precompute.teacher).name)
    needed = torch.arange(len(store)).numpy()

    in_memory = training_data.teacher_matrix(cache, store, needed, budget=2**40)
    assert "memory-mapped" not in caplog.text
    mapped = training_data.teacher_matrix(cache, store, needed, budget=1024)
    assert "memory-mapped (budget 0 MB)" in caplog.text
    assert torch.equal(mapped, in_memory) and mapped.dtype == torch.float16
    assert list(Path("checkpoints").iterdir()) == []  # the backing file was unlinked when it was made


def test_training_leaves_out_every_example_naming_a_held_out_text(ready):
    def training_data_of(share: float) -> training_data.TrainingData:
        cfg = ready(f"train.held_out_share={share}")
        return training_data.load_training_data(cfg, 0, teachers.resolve(cfg.precompute.teacher).name)

    every, data = training_data_of(0.0), training_data_of(0.3)
    examples = data.everything
    rows = np.concatenate([examples.anchors, examples.positives, examples.negatives])
    named = data.store.ids(np.unique(rows[rows >= 0]))  # the mirror's sentences fit: a unit's id is its text's
    assert not held_out(named, 0.3, ready().seed).any()
    assert every.held_out_examples == 0 and len(every.everything) - len(examples) == data.held_out_examples > 0
