"""The training loop on its own: ``Trainer.fit`` with an in-memory token store, a bag-of-tokens model and a
validator of our choosing, without the train stage, its files or MLflow."""

import numpy as np
import pytest
import torch
from torch import nn

from embedforge.config import TrainParams
from embedforge.training.batches import LengthBucketedBatches
from embedforge.training.checkpoint import TrainState
from embedforge.training.examples import Examples
from embedforge.training.losses import InfoNCELoss, Objective
from embedforge.training.token_files import TokenStore
from embedforge.training.trainer import Trainer

VOCABULARY, WIDTH, SENTENCES = 40, 8, 24


class BagOfTokens(nn.Module):
    """The mean of learned token vectors: anything mapping token features to ``sentence_embedding`` trains."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(VOCABULARY, WIDTH)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = features["attention_mask"].unsqueeze(-1).float()
        pooled = (self.table(features["input_ids"]) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return {**features, "sentence_embedding": pooled}


def token_store() -> TokenStore:
    """Sentence i is tokens 1 + i % VOCABULARY .. (three or four of them), stored under a 32-character id."""
    ids = np.array([f"{i:032d}".encode() for i in range(SENTENCES)], dtype="S32")
    lengths = np.array([3 + i % 2 for i in range(SENTENCES)], dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = np.concatenate([1 + (i + np.arange(n)) % (VOCABULARY - 1) for i, n in enumerate(lengths)]).astype(np.int32)
    return TokenStore(ids, starts, lengths, tokens)


def pairs() -> Examples:
    """Sentence 2k and 2k + 1 are a pair (rows follow the ids' order)."""
    anchors = np.arange(0, SENTENCES, 2, dtype=np.int32)
    return Examples(anchors, anchors + 1, np.full(len(anchors), -1, np.int32))


def trainer(tmp_path, scores=None, **params) -> Trainer:
    """A Trainer whose validator returns the next of ``scores`` each epoch (a constant by default)."""
    torch.manual_seed(0)
    settings = {"epochs": 3, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "log_every_steps": 1, **params}
    upcoming = iter(scores or [])
    return Trainer(
        BagOfTokens(),
        Objective({"infonce": 1.0}, {"infonce": InfoNCELoss()}),
        LengthBucketedBatches(pairs(), token_store(), settings["batch_size"], pad_id=0, seed=1),
        TrainParams(**settings),
        "cpu",
        {"student_dim": WIDTH},
        tmp_path / "checkpoints",
        validate=lambda loop: {"sts_spearman": next(upcoming, 0.5)},
    )


def test_fit_trains_every_step_of_every_epoch_and_checkpoints(tmp_path):
    loop = trainer(tmp_path)
    before = loop.model.table.weight.detach().clone()
    state = loop.fit(TrainState())
    assert loop.steps_per_epoch == 3 and state.step == 9 and state.epoch == 3  # 12 pairs in batches of 4
    assert [row["step"] for row in loop.history["steps"]] == list(range(1, 10))
    assert [row["epoch"] for row in loop.history["epochs"]] == [1, 2, 3]
    assert loop.history["steps"][-1]["step.loss"] < loop.history["steps"][0]["step.loss"]
    assert not torch.equal(loop.model.table.weight, before)
    assert (tmp_path / "checkpoints/last").is_dir() and (tmp_path / "checkpoints/best").is_dir()


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(tmp_path):
    loop = trainer(tmp_path, scores=[0.6, 0.5, 0.4], epochs=5)
    state = loop.fit(TrainState())
    assert state.best_epoch == 1 and state.best_score == pytest.approx(0.6)
    assert state.epoch == 3 and state.epochs_without_improvement == 2  # patience 2 (the default) ran out


def test_the_epoch_hook_runs_after_each_whole_epoch_and_its_metrics_are_kept(tmp_path):
    seen = []

    class CountEpochs:
        def attach(self, loop):
            pass

        def __call__(self, loop, state):
            seen.append((loop, state.epoch))
            return {"hook.epoch": float(state.epoch)}

        def before_loading(self, loop, architecture):
            pass

    loop = trainer(tmp_path, epochs=2)
    loop.epoch_hook = CountEpochs()
    loop.fit(TrainState())
    assert seen == [(loop, 1), (loop, 2)]
    assert [row["hook.epoch"] for row in loop.history["epochs"]] == [1.0, 2.0]


def test_a_resumed_fit_ends_with_the_uninterrupted_weights(tmp_path):
    whole = trainer(tmp_path / "whole", epochs=2)
    whole.fit(TrainState())
    cut = trainer(tmp_path / "cut", epochs=2, checkpoint_every_steps=1)

    def killed_after_step_4(record) -> None:
        if record.step == 4:
            raise KeyboardInterrupt

    cut.on_step = killed_after_step_4
    with pytest.raises(KeyboardInterrupt):
        cut.fit(TrainState())
    resumed = trainer(tmp_path / "cut", epochs=2)
    state = resumed.resume("last")
    assert state.step == 3  # killed during step 4, before its checkpoint: the last one is step 3's
    state.resumed_at_step = None  # compare without the resume ramp, which only changes the learning rate
    resumed.fit(state)
    torch.testing.assert_close(resumed.model.table.weight, whole.model.table.weight)
