import math
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import write_raw_split
from transformers import AutoTokenizer

from embedforge.data.held_out import held_out
from embedforge.data.sentences import normalize_text, sentence_id
from embedforge.errors import DataError
from embedforge.stages import tokenize
from embedforge.training import batches as batches_module
from embedforge.training.batches import LengthBucketedBatches
from embedforge.training.examples import Examples, HeldOut, pair_examples
from embedforge.training.loader import EpochBatches
from embedforge.training.token_files import TokenStore

PAD = 0


def sid(text: str) -> str:
    return sentence_id(normalize_text(text))


def examples(store: TokenStore, triples: list[tuple[str, str | None, str | None]]) -> Examples:
    """Examples from (anchor, positive, negative) sentence ids."""
    return Examples.of_ids(store, pd.DataFrame(triples, columns=["anchor", "positive", "negative"]))


def triples(store: TokenStore, chosen: Examples) -> list[tuple[str, str | None, str | None]]:
    """Examples as (anchor, positive, negative) sentence ids, in their order."""
    columns = (store.ids(chosen.anchors), store.ids(chosen.positives), store.ids(chosen.negatives))
    return list(zip(*columns, strict=True))


def write_token_file(path: Path, tokens: dict[str, list[int]]) -> None:
    """A token file like tokenize's: one chunk-0 row per sentence, sorted by id."""
    ids = sorted(tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "sentence_id": ids,
                "chunk": np.zeros(len(ids), np.int16),
                "unit_id": [None] * len(ids),
                "input_ids": pa.array([tokens[i] for i in ids], pa.list_(pa.int32())),
                "length": np.array([len(tokens[i]) for i in ids], np.int32),
            },
            schema=tokenize.TOKEN_SCHEMA,
        ),
        path,
    )


def synthetic_store(tmp_path: Path, lengths: list[int]) -> tuple[TokenStore, list[str]]:
    """Sentence i has ``lengths[i]`` tokens, all equal to i + 1 (never the pad id)."""
    ids = [sid(f"sentence {i}") for i in range(len(lengths))]
    write_token_file(
        tmp_path / "synthetic/train.parquet",
        {s: [i + 1] * n for i, (s, n) in enumerate(zip(ids, lengths, strict=True))},
    )
    return TokenStore.load(tmp_path, [Path("synthetic/train.parquet")]), ids


@pytest.fixture
def nli_like(tmp_path):
    """200 premises of 6 to 60 tokens with 4 entailments and 2 contradictions each, hypotheses about half as long."""
    rng = np.random.default_rng(0)
    premises, hypotheses = 200, 6
    premise_lengths = rng.integers(6, 61, premises)
    hypothesis_lengths = np.repeat(premise_lengths // 2, hypotheses) + rng.integers(0, 5, premises * hypotheses)
    store, ids = synthetic_store(tmp_path, np.r_[premise_lengths, hypothesis_lengths].tolist())
    chosen = []
    for p in range(premises):
        anchor, own = ids[p], ids[premises + p * hypotheses : premises + (p + 1) * hypotheses]
        chosen += [(anchor, own[h], own[4 + h % 2]) for h in range(4)]
    return store, examples(store, chosen)


@pytest.fixture
def tokenized(prepared, mirror_params, tiny_teacher):
    tokenize.run(mirror_params(f"precompute.teacher={tiny_teacher}"))
    return prepared


def test_examples_follow_the_raw_pairs(tokenized):
    raw = tokenized / "data/raw"
    snli = pd.read_parquet(raw / "snli/train.parquet").assign(
        anchor=lambda f: f["sentence1"].map(sid), positive=lambda f: f["sentence2"].map(sid)
    )
    store = TokenStore.load(tokenized / "data/tokens", [raw / "snli/train.parquet", raw / "stsb/train.parquet"])
    examples = triples(store, pair_examples(raw / "snli/train.parquet", labelled=True, min_score=4.0, store=store))

    entailed = snli[(snli["label"] == "entailment") & (snli["anchor"] != snli["positive"])]
    assert len(examples) == len(entailed[["anchor", "positive"]].drop_duplicates()) > 0
    assert examples == sorted(examples, key=lambda e: (e[0], e[1], e[2] or ""))
    contradicting = snli[snli["label"] == "contradiction"]
    contradictions = set(zip(contradicting["anchor"], contradicting["positive"], strict=True))
    with_negative = [(anchor, negative) for anchor, _, negative in examples if negative]
    assert all(pair in contradictions for pair in with_negative)  # this slice may have none: see the next test
    premises_with_contradiction = {anchor for anchor, _ in contradictions}
    assert all(negative for anchor, _, negative in examples if anchor in premises_with_contradiction)

    stsb = pd.read_parquet(raw / "stsb/train.parquet")
    similar = triples(store, pair_examples(raw / "stsb/train.parquet", labelled=False, min_score=4.0, store=store))
    high = {
        (sid(a), sid(b))
        for a, b, s in zip(stsb["sentence1"], stsb["sentence2"], stsb["score"], strict=True)
        if s >= 4.0 and sid(a) != sid(b)
    }
    assert {(a, p) for a, p, _ in similar} == high and all(n is None for _, _, n in similar)


def test_hard_negatives_are_contradictions_of_the_same_premise_taken_in_turn(tmp_path):
    rows = [
        ("A man plays.", "A person plays.", "entailment"),
        ("A man plays.", "Someone  is playing.", "entailment"),
        ("A man plays.", "A human plays music.", "entailment"),
        ("A man plays.", "A woman sleeps.", "contradiction"),
        ("A man plays.", "Nobody plays.", "contradiction"),
        ("A man plays.", "A man is tall.", "neutral"),
        ("A dog runs.", "An animal runs.", "entailment"),
        ("A dog runs.", " A  dog runs. ", "entailment"),  # the same sentence once normalised
        ("A cat sits.", "A dog runs.", "contradiction"),
    ]
    frame = pd.DataFrame(rows, columns=["sentence1", "sentence2", "label"]).assign(
        pair_id=lambda f: f.index.astype(str), score=None, genre=None
    )
    write_raw_split(frame, tmp_path / "snli/train.parquet")
    texts = pd.concat([frame["sentence1"], frame["sentence2"]])
    write_token_file(tmp_path / "tokens/snli/train.parquet", {sid(text): [1, 2] for text in texts})
    store = TokenStore.load(tmp_path / "tokens", [Path("snli/train.parquet")])

    examples = pair_examples(tmp_path / "snli/train.parquet", labelled=True, min_score=4.0, store=store)

    man = sorted(sid(t) for t in ("A person plays.", "Someone is playing.", "A human plays music."))
    turns = sorted(sid(t) for t in ("A woman sleeps.", "Nobody plays."))
    expected = [(sid("A man plays."), positive, turns[i % 2]) for i, positive in enumerate(man)]
    expected.append((sid("A dog runs."), sid("An animal runs."), None))
    assert triples(store, examples) == sorted(expected, key=lambda e: (e[0], e[1]))


def test_pairs_naming_a_held_out_text_are_left_out_and_counted(tmp_path):
    rows = [(f"Premise {p}.", f"Hypothesis {p}.{h}.", label) for p in range(40) for h, label in enumerate(LABELS)]
    frame = pd.DataFrame(rows, columns=["sentence1", "sentence2", "label"]).assign(
        pair_id=lambda f: f.index.astype(str), score=None, genre=None
    )
    write_raw_split(frame, tmp_path / "snli/train.parquet")
    texts = pd.concat([frame["sentence1"], frame["sentence2"]])
    write_token_file(tmp_path / "tokens/snli/train.parquet", {sid(text): [1, 2] for text in texts})
    store = TokenStore.load(tmp_path / "tokens", [Path("snli/train.parquet")])
    path = tmp_path / "snli/train.parquet"

    every = triples(store, pair_examples(path, labelled=True, min_score=4.0, store=store))
    held = HeldOut(0.2, seed=5)
    kept = triples(store, pair_examples(path, labelled=True, min_score=4.0, store=store, held=held))

    def names_held_out(example: tuple[str, str | None, str | None]) -> bool:
        named = [text for text in example if text is not None]
        return bool(held_out(named, held.share, held.seed).any())

    assert kept == [example for example in every if not names_held_out(example)]
    assert 0 < held.dropped == len(every) - len(kept) < len(every)


LABELS = ("entailment", "entailment", "contradiction")


def test_token_store_returns_the_tokenizer_ids(tokenized):
    raw = tokenized / "data/raw"
    store = TokenStore.load(tokenized / "data/tokens", [raw / "snli/train.parquet", raw / "stsb/train.parquet"])
    tokenizer = AutoTokenizer.from_pretrained(str(tokenized / "data/tokens/tokenizer"))
    text = normalize_text(pd.read_parquet(raw / "stsb/train.parquet")["sentence2"].iloc[3])

    expected = tokenizer(text)["input_ids"]
    input_ids, attention_mask = store.padded(store.rows([sid(text)]), PAD)
    assert input_ids[0].tolist() == expected and attention_mask[0].tolist() == [1] * len(expected)
    assert store.lookup([sid(text), "0" * 32])[1].tolist() == [True, False]
    distinct = pq.read_table(tokenized / "data/tokens/snli/train.parquet").column("sentence_id").to_pylist()
    assert len(store) >= len(set(distinct))
    with pytest.raises(DataError, match="no token ids"):
        store.rows(["0" * 32])
    with pytest.raises(DataError, match="run `embedforge tokenize` first"):
        TokenStore.load(tokenized / "data/tokens", [raw / "snli/missing.parquet"])

    full = TokenStore.load(tokenized / "data/tokens", [raw / f"{d}/train.parquet" for d in ("snli", "stsb", "sick")])
    every = Examples.joined(
        [
            pair_examples(raw / f"{dataset}/train.parquet", labelled, min_score=4.0, store=full)
            for dataset, labelled in [("snli", True), ("stsb", False), ("sick", True)]
        ]
    ).in_order()
    batches = LengthBucketedBatches(every, full, batch_size=8, pad_id=tokenizer.pad_token_id, seed=1)
    first = next(batches.epoch(0))
    alone, _ = full.padded(full.rows(first.anchors.sentence_ids[:1]), tokenizer.pad_token_id)
    assert first.anchors.input_ids[0, : first.anchors.attention_mask[0].sum()].tolist() == alone[0].tolist()


def test_every_example_once_per_epoch_and_no_sentence_twice_in_a_batch(nli_like):
    store, examples = nli_like
    batches = LengthBucketedBatches(examples, store, batch_size=32, pad_id=PAD, seed=3, bucket_batches=4)

    for epoch in range(3):
        seen = []
        produced = list(batches.epoch(epoch))
        assert len(produced) == len(batches) == math.ceil(len(examples) / 32)
        for batch in produced:
            assert len(batch.sentence_ids) == len(set(batch.sentence_ids))
            seen += [(a, p) for a, p in zip(batch.anchors.sentence_ids, batch.positives.sentence_ids, strict=True)]
            assert batch.negatives is not None and batch.num_examples == len(batch.positives.sentence_ids)
        assert sorted(seen) == sorted((a, p) for a, p, _ in triples(store, examples))
        assert all(size == 32 for size in sorted(b.num_examples for b in produced)[1:])


def test_heavily_shared_sentences_are_carried_not_dropped(tmp_path):
    store, ids = synthetic_store(tmp_path, [5] * 60)
    # 24 examples, 4 a batch: sentence 0 is in 6 examples and sentence 1 in 5, so nearly every batch needs one of each
    chosen = [(ids[0], ids[2 + i], None) for i in range(5)]
    chosen += [(ids[10 + i], ids[1], ids[20 + i]) for i in range(5)]
    chosen += [(ids[30 + i], ids[45 + i], None) for i in range(13)] + [(ids[44], ids[59], ids[0])]
    batches = LengthBucketedBatches(examples(store, chosen), store, batch_size=4, pad_id=PAD, seed=0)

    for epoch in range(50):
        produced = list(batches.epoch(epoch))
        assert len(produced) == len(batches)
        assert sorted(i for b in produced for i in b.anchors.sentence_ids) == sorted(e[0] for e in chosen)
        assert all(len(b.sentence_ids) == len(set(b.sentence_ids)) for b in produced)

    crowded = examples(store, [(ids[0], ids[2 + i], None) for i in range(5)])
    with pytest.raises(DataError, match=f"cannot place \\(anchor {ids[0]}, positive [0-9a-f]+, negative None\\)"):
        list(LengthBucketedBatches(crowded, store, batch_size=2, pad_id=PAD, seed=0).epoch(0))


def test_batches_pad_to_their_longest_with_the_pad_id(nli_like):
    store, examples = nli_like
    batches = LengthBucketedBatches(examples, store, batch_size=16, pad_id=-7, seed=0)

    for batch in batches.epoch(0):
        for part in (batch.anchors, batch.positives, batch.negatives):
            lengths = store.lengths[store.rows(part.sentence_ids)].tolist()
            assert part.input_ids.shape == (len(lengths), max(lengths))
            assert part.attention_mask.sum(dim=1).tolist() == lengths
            assert ((part.input_ids == -7) == (part.attention_mask == 0)).all()
        assert batch.num_tokens == store.lengths[store.rows(batch.sentence_ids)].sum()


def test_epochs_are_reproducible_and_a_resumed_plan_builds_the_remaining_batches(nli_like):
    store, examples = nli_like

    def make():
        return LengthBucketedBatches(examples, store, batch_size=16, pad_id=PAD, seed=11)

    def order(batches):
        return [b.sentence_ids for b in batches]

    first, again = make(), make()
    assert order(first.epoch(2)) == order(again.epoch(2))
    assert order(first.epoch(2)) != order(first.epoch(3))
    resumed = EpochBatches(again, again.plan(2)[7:], micro_batches=1)  # what Trainer.loader feeds after 7 batches
    assert [resumed[i][1][0].sentence_ids for i in range(len(resumed))] == order(first.epoch(2))[7:]
    tensors = zip(first.epoch(1), again.epoch(1), strict=True)
    assert all((a.positives.input_ids == b.positives.input_ids).all() for a, b in tensors)


def test_bucketing_pads_far_less_than_random_order(nli_like):
    store, examples = nli_like
    bucketed = LengthBucketedBatches(examples, store, batch_size=16, pad_id=PAD, seed=0, bucket_batches=50)
    random_order = LengthBucketedBatches(examples, store, batch_size=16, pad_id=PAD, seed=0, bucket_batches=1)

    assert bucketed.padding_ratio(0) < 0.5 * random_order.padding_ratio(0)
    built = list(bucketed.epoch(0))
    real = sum(b.num_tokens for b in built)
    total = sum(p.attention_mask.numel() for b in built for p in b.parts)
    assert bucketed.padding_ratio(0) == pytest.approx(1 - real / total)


def test_lone_sentences_batch_as_anchors_only_and_carry_their_store_rows(tmp_path):
    store, ids = synthetic_store(tmp_path, [3, 9, 4, 7, 5, 6, 8, 2])
    lone = Examples.lone(store.rows(ids))
    batches = LengthBucketedBatches(lone, store, batch_size=3, pad_id=PAD, seed=0)

    produced = list(batches.epoch(0))
    assert all(b.positives is None and b.negatives is None and b.parts == [b.anchors] for b in produced)
    assert sorted(i for b in produced for i in b.anchors.sentence_ids) == sorted(ids)
    for batch in produced:
        assert batch.anchors.rows.tolist() == store.rows(batch.anchors.sentence_ids).tolist()
    with pytest.raises(ValueError, match="not a mix"):
        mixed = Examples.joined([lone, examples(store, [(ids[0], ids[1], None)])])
        LengthBucketedBatches(mixed, store, batch_size=3, pad_id=PAD, seed=0)


def test_a_plan_costs_a_few_bytes_an_example_not_a_python_object(monkeypatch):
    """Batches and an epoch's plan are index arrays: 8 bytes an example for the plan and 4 for its sort key."""
    count = 200_000
    ids = np.array([f"{i:032d}".encode() for i in range(2 * count)], dtype="S32")
    lengths = (3 + np.arange(2 * count) % 20).astype(np.int32)
    store = TokenStore(ids, np.cumsum(lengths, dtype=np.int64) - lengths, lengths, np.ones(lengths.sum(), np.int32))
    anchors = np.arange(count, dtype=np.int32)
    monkeypatch.setattr(batches_module, "FILL_CHUNK", 4096)  # the tuples of one chunk are a constant, not per example
    for chosen, most in [(Examples.lone(anchors), 20), (Examples(anchors, anchors + count, anchors * 0 - 1), 32)]:
        tracemalloc.start()
        try:
            plan = LengthBucketedBatches(chosen, store, batch_size=64, pad_id=PAD, seed=0).plan(0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert sorted(np.concatenate(plan).tolist()) == list(range(count))
        assert peak / count < most
