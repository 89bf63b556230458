"""The held-out slice: ``train.held_out_share`` of the training texts, kept out of training so that evaluate can
measure how closely the student reproduces its teacher on texts it never saw (a corpus without scored pairs has
nothing else to score).

A text is in the slice by its id and ``seed`` alone, so train and evaluate agree without sharing a list, a
text's chunks go with it (they are held out by the text's id), and fifty million ids take a few vector operations.
"""

from __future__ import annotations

import hashlib

import numpy as np

from embedforge.data.sentences import ID_DTYPE


def seeded_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """Each id's first 64 bits (``id_prefix``) XOR a constant drawn from ``seed``, through splitmix64's finalizer:
    uniform over uint64, as the ids are hashes, and ordered afresh for each seed. The slice is the keys below
    ``share * 2**64``. Without the finalizer a seed would only pick which run of prefixes is held out, and two texts
    whose prefixes start alike would be held out together under every seed."""
    hex_prefixes = np.ascontiguousarray(ids, dtype=ID_DTYPE).view("S16")[::2]  # each id's first 16 hex digits
    prefixes = np.frombuffer(bytes.fromhex(hex_prefixes.tobytes().decode("ascii")), dtype=">u8")
    constant = int.from_bytes(hashlib.blake2b(f"held-out {seed}".encode(), digest_size=8).digest(), "big")
    keys = prefixes.astype(np.uint64) ^ np.uint64(constant)
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        keys ^= keys >> np.uint64(shift)
        keys *= np.uint64(multiplier)  # modulo 2**64: an odd multiplier keeps the map one to one
    return keys ^ (keys >> np.uint64(31))


def held_out(ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Whether each text id (``ID_DTYPE`` or hex strings) is in the held-out slice of ``share`` (0: none)."""
    return seeded_keys(ids, seed) < np.uint64(int(share * 2**64))
