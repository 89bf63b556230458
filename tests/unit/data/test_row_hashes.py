"""Row hashes: repeats over a whole split are found with a few bytes a row beside the hashes."""

import tracemalloc

import numpy as np

from embedforge.data.row_hashes import repeated_rows


def test_repeats_are_found_by_one_sort_in_about_17_bytes_a_row():
    hashes = np.random.default_rng(0).integers(0, 2**63, 1_000_000, dtype=np.uint64)
    hashes[::5] = hashes[1::5]  # 400,000 rows share their hash with one other
    tracemalloc.start()
    try:
        repeated = repeated_rows(hashes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    assert np.array_equal(repeated, counts[inverse] > 1) and repeated.sum() == 400_000
    assert peak / len(hashes) < 24  # np.unique with its inverse and counts takes about 60
