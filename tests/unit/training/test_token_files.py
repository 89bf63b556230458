from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.data.held_out import held_out
from embedforge.data.sentences import sentence_id
from embedforge.stages import tokenize
from embedforge.training.examples import HeldOut, sentence_examples
from embedforge.training.token_files import TokenStore

SHORT = "a short sentence"
DOCUMENT = "a long document in three chunks"
CHUNKS = ["a long", "document in", "three chunks"]


def write_units(path: Path) -> None:
    """A token file as tokenize writes one: a text that fits (no unit id) and a document of three chunks."""
    rows = [(sentence_id(SHORT), 0, None, [1, 2, 3])]
    rows += [(sentence_id(DOCUMENT), i, sentence_id(chunk), [10 + i] * (i + 2)) for i, chunk in enumerate(CHUNKS)]
    columns = list(zip(*rows, strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {
        "sentence_id": list(columns[0]),
        "chunk": np.array(columns[1], np.int16),
        "unit_id": list(columns[2]),
        "input_ids": pa.array(columns[3], pa.list_(pa.int32())),
        "length": np.array([len(ids) for ids in columns[3]], np.int32),
    }
    pq.write_table(pa.table(table, schema=tokenize.TOKEN_SCHEMA), path)


def test_every_chunk_is_a_row_and_a_chunked_text_is_found_at_its_first_chunk(tmp_path):
    write_units(tmp_path / "docs/train.parquet")
    store = TokenStore.load(tmp_path, [Path("docs/train.parquet")])

    assert len(store) == 4
    chunk_rows = store.rows([sentence_id(chunk) for chunk in CHUNKS])
    assert [store.lengths[row] for row in chunk_rows] == [2, 3, 4]
    assert store.rows([sentence_id(DOCUMENT)]).tolist() == [chunk_rows[0]]  # pairs name texts: their first chunk
    assert store.lookup([sentence_id(DOCUMENT)], texts=False)[1].tolist() == [False]  # the teacher's cache: units
    input_ids, _ = store.padded(store.rows([sentence_id(SHORT)]), pad_id=0)
    assert input_ids.tolist() == [[1, 2, 3]]


def test_distillation_trains_on_every_chunk_or_the_first_max_chunks(tmp_path):
    write_units(tmp_path / "docs/train.parquet")
    files = [Path("docs/train.parquet")]
    store = TokenStore.load(tmp_path, files)

    every = sentence_examples(tmp_path, files, store)
    first_only = sentence_examples(tmp_path, files, store, max_chunks=1)
    two = sentence_examples(tmp_path, files, store, max_chunks=2)
    units = [sentence_id(SHORT), *(sentence_id(chunk) for chunk in CHUNKS)]
    assert sorted(store.ids(every.anchors)) == sorted(units)
    assert sorted(store.ids(first_only.anchors)) == sorted(units[:2])
    assert sorted(store.ids(two.anchors)) == sorted(units[:3])


def test_a_held_out_text_leaves_training_with_every_one_of_its_chunks(tmp_path):
    write_units(tmp_path / "docs/train.parquet")
    files = [Path("docs/train.parquet")]
    store = TokenStore.load(tmp_path, files)
    texts = [sentence_id(DOCUMENT), sentence_id(SHORT)]
    seed = next(seed for seed in range(100) if held_out(texts, 0.5, seed).tolist() == [True, False])

    held = HeldOut(0.5, seed)
    kept = sentence_examples(tmp_path, files, store, held=held)
    assert store.ids(kept.anchors) == [sentence_id(SHORT)]
    assert held.dropped == len(CHUNKS)
    assert len(sentence_examples(tmp_path, files, store, held=HeldOut(0.0, seed))) == 1 + len(CHUNKS)
