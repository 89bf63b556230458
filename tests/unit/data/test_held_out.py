"""The held-out slice of the training texts: a pure function of each text's id, the seed and the share."""

import numpy as np

from embedforge.data.held_out import held_out, seeded_keys
from embedforge.data.sentences import ID_DTYPE, sentence_id

IDS = np.array([sentence_id(f"sentence number {i}") for i in range(20_000)], dtype=ID_DTYPE)


def test_the_slice_is_the_same_every_time_and_for_ids_given_as_strings():
    first = held_out(IDS, 0.1, seed=42)
    assert np.array_equal(first, held_out(IDS.copy(), 0.1, seed=42))
    as_strings = [identifier.decode() for identifier in IDS[:500]]
    assert np.array_equal(held_out(as_strings, 0.1, seed=42), first[:500])
    assert np.array_equal(held_out(IDS[::-1], 0.1, seed=42), first[::-1])  # each id alone decides


def test_the_slice_holds_about_the_share_asked_and_none_at_zero():
    for share in (0.02, 0.1, 0.5):
        assert abs(held_out(IDS, share, seed=42).mean() - share) < 0.01, share
    assert not held_out(IDS, 0.0, seed=42).any()


def test_another_seed_draws_the_slice_afresh():
    """Two seeds' slices overlap about as much as two independent draws would (share squared), not in runs of ids."""
    one, other = held_out(IDS, 0.1, seed=42), held_out(IDS, 0.1, seed=7)
    assert abs(other.mean() - 0.1) < 0.01
    assert abs((one & other).mean() - 0.1 * 0.1) < 0.004


def test_keys_are_spread_over_uint64_and_an_empty_batch_has_none():
    keys = seeded_keys(IDS, seed=3)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == len(IDS)
    assert abs(keys.astype(np.float64).mean() / 2**64 - 0.5) < 0.01
    assert held_out(np.zeros(0, ID_DTYPE), 0.5, seed=3).shape == (0,)
