"""Retrieval: each query against the whole corpus by exact cosine search; how high do its relevant items rank?

recall@k is the share of a query's relevant items found in its top k, MRR the mean
of 1 / the rank of its best-ranked relevant item, both averaged over queries. The
search is an exact matrix product in blocks of queries (torch), so memory stays at
``block x corpus`` scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from embedforge.errors import DataError

QUERY_BLOCK = 256


@dataclass(frozen=True)
class RetrievalResult:
    recall: dict[int, float]
    mrr: float
    queries: int
    corpus: int


def retrieval(
    queries: np.ndarray, corpus: np.ndarray, relevant: list[list[int]], ks: tuple[int, ...] = (1, 10)
) -> RetrievalResult:
    """``relevant[i]`` lists the corpus rows relevant to query ``i``; every query needs at least one."""
    if len(queries) == 0 or len(corpus) == 0:
        raise DataError(f"retrieval: {len(queries)} queries against {len(corpus)} corpus items: nothing to search")
    if any(not rows for rows in relevant):
        raise DataError("retrieval: every query needs at least one relevant corpus item")
    query_vectors = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
    corpus_vectors = torch.nn.functional.normalize(torch.as_tensor(corpus, dtype=torch.float32), dim=1)
    deepest = min(max(ks), len(corpus))
    found = {k: 0.0 for k in ks}
    reciprocal_ranks = 0.0
    for start in range(0, len(queries), QUERY_BLOCK):
        block = relevant[start : start + QUERY_BLOCK]
        scores = query_vectors[start : start + len(block)] @ corpus_vectors.T
        is_relevant = torch.zeros_like(scores, dtype=torch.bool)
        for row, rows in enumerate(block):
            is_relevant[row, rows] = True
        counts = is_relevant.sum(dim=1)
        hits = is_relevant.gather(1, scores.topk(deepest, dim=1).indices)
        for k in ks:
            found[k] += float((hits[:, :k].sum(dim=1) / counts).sum())
        best_relevant = scores.masked_fill(~is_relevant, -torch.inf).max(dim=1).values
        ranks = (scores > best_relevant[:, None]).sum(dim=1) + 1
        reciprocal_ranks += float((1.0 / ranks).sum())
    total = len(queries)
    return RetrievalResult({k: found[k] / total for k in ks}, reciprocal_ranks / total, total, len(corpus))
