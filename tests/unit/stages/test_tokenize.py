import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from embedforge.data import sentences
from embedforge.data.chunks import Chunker
from embedforge.data.sentences import iter_sentences, sentence_id
from embedforge.errors import UserError
from embedforge.stages import tokenize


@pytest.fixture
def params(prepared, mirror_params, tiny_teacher):
    return lambda *overrides: mirror_params(f"precompute.teacher={tiny_teacher}", *overrides)


def test_chunk_numbers_count_within_each_sentence():
    owners = np.array([4, 4, 4, 7, 9, 9])
    assert tokenize.chunk_numbers(owners).tolist() == [0, 1, 2, 0, 0, 1]


def test_teacher_tokenizer_ids_for_every_distinct_sentence(prepared, params, tiny_teacher):
    results = tokenize.run(params())

    teacher_tokenizer = AutoTokenizer.from_pretrained(str(tiny_teacher))
    saved = AutoTokenizer.from_pretrained(str(prepared / "data/tokens/tokenizer"))
    assert saved.get_vocab() == teacher_tokenizer.get_vocab()
    table = pq.read_table(prepared / "data/tokens/snli/train.parquet").to_pandas()
    texts = {sentence_id(t): t for t in iter_sentences([prepared / "data/raw/snli/train.parquet"])}
    assert list(table["sentence_id"]) == list(texts)  # each distinct sentence once, in the order it first occurs
    assert (table["chunk"] == 0).all() and results["tokenize.chunked_sentences"] == 0
    first = table.iloc[0]
    assert list(first["input_ids"]) == teacher_tokenizer(texts[first["sentence_id"]])["input_ids"]
    assert (table["length"] == table["input_ids"].map(len)).all()
    stats = json.loads((prepared / "data/tokens/stats.json").read_text())
    assert stats["splits"]["stsb/validation"]["sentences"] == results["tokenize.stsb.validation.sentences"]
    assert not (prepared / "data/tokens/sick/test.parquet").exists()


def test_long_texts_become_the_teachers_chunks_each_a_unit_of_its_own(prepared, params, tiny_teacher):
    results = tokenize.run(params("tokenize.max_length=12", "tokenize.chunk_overlap=3"))

    table = pq.read_table(prepared / "data/tokens/stsb/train.parquet").to_pandas()
    assert table["length"].max() <= 12
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_teacher))
    texts = {sentence_id(t): t for t in iter_sentences([prepared / "data/raw/stsb/train.parquet"])}
    lengths = {i: len(tokenizer(t)["input_ids"]) for i, t in texts.items()}
    long_ones = [i for i, length in lengths.items() if length > 12]
    assert results["tokenize.stsb.train.chunked_sentences"] == len(long_ones) > 0
    assert results["tokenize.stsb.train.truncated_chunks"] == 0  # the student's tokenizer is the teacher's

    chunker = Chunker(tokenizer, 12, 3)
    for text_id in long_ones:
        rows = table[table["sentence_id"] == text_id].sort_values("chunk")
        units = chunker.split([texts[text_id]])[0].units
        assert rows["chunk"].tolist() == list(range(len(units))) and len(units) > 1
        assert rows["unit_id"].tolist() == [sentence_id(unit) for unit in units]
        assert [list(ids) for ids in rows["input_ids"]] == [tokenizer(unit)["input_ids"] for unit in units]
    assert table.loc[~table["sentence_id"].isin(long_ones), "unit_id"].isna().all()

    split = json.loads((prepared / "data/tokens/stats.json").read_text())["splits"]["stsb/train"]
    before = np.array([lengths[i] for i in texts])
    assert split["text_tokens"] == before.sum()
    assert split["truncation_dropped_share"] == pytest.approx(1 - np.minimum(before, 12).sum() / before.sum())
    assert sum(split["text_length"]["counts"]) == len(texts) == split["sentences"]
    assert split["text_length"]["counts"][0] == (before <= 16).sum()
    assert split["chunks_per_text"]["counts"][0] == len(texts) - len(long_ones)
    assert sum(c * n for c, n in zip(*split["chunks_per_text"].values(), strict=True)) == split["chunks"] == len(table)


def test_long_texts_are_tokenized_a_few_characters_at_a_time_with_the_same_rows(prepared, params, monkeypatch):
    cfg = params("tokenize.max_length=12", "tokenize.chunk_overlap=3")
    tokenize.run(cfg)
    whole = pq.read_table(prepared / "data/tokens/stsb/train.parquet")
    assert pq.ParquetFile(prepared / "data/tokens/stsb/train.parquet").metadata.num_row_groups == 1
    monkeypatch.setattr(sentences, "BATCH_CHARS", 100)  # a few sentences a batch, far under BATCH_SENTENCES
    tokenize.run(cfg)
    batched = pq.ParquetFile(prepared / "data/tokens/stsb/train.parquet")
    assert batched.read().equals(whole) and batched.metadata.num_row_groups > 5


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_vocabulary(prepared, params, kind):
    results = tokenize.run(params(f"tokenize.train_vocab={kind}", "tokenize.vocab_size=400"))

    saved = AutoTokenizer.from_pretrained(str(prepared / "data/tokens/tokenizer"))
    assert results["tokenize.vocab_size"] == len(saved) <= 400
    ids = pq.read_table(prepared / "data/tokens/sick/validation.parquet").column("input_ids").to_pylist()
    assert max(max(row) for row in ids) < len(saved)
    assert all(row[0] == saved.cls_token_id and row[-1] == saved.sep_token_id for row in ids)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tokenize.max_length=4", "tokenize.max_length: must be >= 8, got 4"),
        ("tokenize.chunk_overlap=126", "tokenize.chunk_overlap (126) must be < tokenize.max_length - 2 (126)"),
    ],
)
def test_bad_lengths_are_config_errors(params, override, message):
    with pytest.raises(UserError) as raised:
        params(override)
    assert message in str(raised.value)


def test_max_length_beyond_the_tokenizer_is_refused(prepared, params):
    with pytest.raises(UserError, match=r"tokenize.max_length: must be <= the tokenizer's model_max_length"):
        tokenize.run(params("tokenize.max_length=100000", "model.max_positions=100000"))
    assert not (prepared / "data/tokens").exists()
