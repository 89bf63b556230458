"""The teacher-embedding cache on disk: sharded parquet, written atomically, read without loading it all.

Layout of ``data/embeddings/<teacher>/``::

    part-00000.parquet ...   sentence_id, text, embedding (fixed-size list of float16/float32)
    manifest.json            teacher, dim, dtype, normalised, shards with row counts and sha256

Each shard holds the sentences of one hash partition (see ``sentences.partition_of``)
sorted by id, and records in its parquet metadata what it was built from, so an
interrupted run can tell finished shards from stale or foreign ones. The manifest
is written last: a directory without one is an unfinished cache and is refused.

``shards`` and ``cache`` are the format and its reader, all that training needs; ``plan``, ``spill``,
``encoding``, ``in_process`` and ``on_dask`` build the cache for the precompute stage.
"""

from embedforge.embeddings.cache import EmbeddingCache, load
from embedforge.embeddings.shards import (
    ARROW_DTYPES,
    MANIFEST_NAME,
    ROW_GROUP_ROWS,
    SHARD_METADATA_KEY,
    ShardInfo,
    shard_name,
    write_shard,
)

__all__ = [
    "ARROW_DTYPES",
    "MANIFEST_NAME",
    "ROW_GROUP_ROWS",
    "SHARD_METADATA_KEY",
    "EmbeddingCache",
    "ShardInfo",
    "load",
    "shard_name",
    "write_shard",
]
