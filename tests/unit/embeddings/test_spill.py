"""Spill files: one pass over the corpus sorts every sentence of the wanted partitions into its own file, with a
bounded number of sentences waiting in memory however many partitions there are."""

import pyarrow as pa

from embedforge.data.sentences import partition_of, sentence_id
from embedforge.embeddings import spill


def test_every_sentence_reaches_its_partition_and_the_buffers_stay_bounded(tmp_path, monkeypatch):
    texts = [f"Sentence number {i} of the corpus." for i in range(500)]
    monkeypatch.setattr(spill, "SPILL_ROWS", 50)
    monkeypatch.setattr(spill, "SPILL_BUFFER_ROWS", 30)  # below one partition's share: the total cap writes
    written = []
    real_new_file = pa.ipc.new_file

    def counting(*args, **kwargs):
        writer = real_new_file(*args, **kwargs)
        write = writer.write_batch
        writer.write_batch = lambda batch: (written.append(batch.num_rows), write(batch))[1]
        return writer

    monkeypatch.setattr(pa.ipc, "new_file", counting)
    paths = spill.spill_partitions(
        ((sentence_id(t), t) for t in texts), partitions=7, wanted={0, 2, 5}, directory=tmp_path / "spill"
    )

    expected = {p: sorted(sentence_id(t) for t in texts if partition_of(sentence_id(t), 7) == p) for p in (0, 2, 5)}
    for partition, path in paths.items():
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        assert sorted(table.column("sentence_id").to_pylist()) == expected[partition]
    assert sum(written) == sum(len(ids) for ids in expected.values())
    assert max(written) <= 30  # no partition waited for its own 50
