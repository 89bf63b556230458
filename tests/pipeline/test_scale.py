"""The streaming stages hold their memory as a corpus grows: benchmarks/bench_scale.py's bound, at a size CI affords.

Each stage runs in a fresh process on bench_scale's generated corpus (an own-data ``sentences`` dataset) with the
tiny teacher; its peak RSS (the process image's own high-water mark) at 100k sentences must stay within 1.5x of
its peak at 10k, the bound the benchmark sets for 5M against 100k. Shards and validation batches are made small
enough that both sizes span several, as 100k and 5M do at the defaults.
"""

from __future__ import annotations

from bench_scale import corpus_words, prepare_project, run_measured, stage_process

STREAMING = ("download", "validate", "precompute", "tokenize")


def test_streaming_stages_peak_memory_holds_from_10k_to_100k_sentences(tmp_path, shared_mirror, tiny_teacher):
    words = corpus_words(shared_mirror)
    peaks: dict[tuple[str, int], float] = {}
    for n in (10_000, 100_000):
        root = tmp_path / f"n{n}"
        small_parts = ["precompute.shard_size=10000", "validate.batch_rows=5000"]  # both sizes span several
        prepare_project(root, shared_mirror, words, n, str(tiny_teacher), small_parts)
        for stage in STREAMING:
            peaks[stage, n] = run_measured(stage_process(stage), root)["peak_rss_mb"]
    for stage in STREAMING:
        assert peaks[stage, 100_000] <= 1.5 * peaks[stage, 10_000], (stage, peaks)
