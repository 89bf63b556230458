"""A text's identity: its normalised form and the id of that, with nothing but the standard library.

Kept apart from ``sentences`` (which reads parquet) so that what only needs ids, such as cutting a long text
into chunks when an exported student serves, loads neither pyarrow nor pandas.
"""

from __future__ import annotations

import hashlib
import unicodedata


def normalize_text(text: str) -> str:
    """NFC, surrounding whitespace stripped, inner runs of whitespace collapsed; case is kept for cased teachers."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def sentence_id(normalized: str) -> str:
    """128-bit blake2b of the normalised text, as hex: stable across runs, machines and datasets."""
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).hexdigest()


def id_prefix(identifier: str) -> int:
    """The first 64 bits of an id: enough to count distinct sentences and to partition them."""
    return int(identifier[:16], 16)
