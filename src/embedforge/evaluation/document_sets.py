"""Query -> document retrieval sets: a ``queries`` split, the document split its ids name, and every document cut
into the units the pipeline trained on (``data.chunks``), so evaluation searches what precompute and tokenize saw.

A document is scored from its chunks (``evaluate.document_pooling``) and, beside that, from its first chunk alone:
what truncation to the model's window would have scored. Queries whose relevant documents are all longer than one
chunk are scored apart too: that is where chunking can matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from embedforge.config import DatasetSource, documents_split, split_reference
from embedforge.data.chunks import Chunker
from embedforge.data.schema import downloaded_split, raw_split_path
from embedforge.data.sentences import document_text, normalize_text
from embedforge.errors import DataError
from embedforge.evaluation.retrieval import NDCG_DEPTH, RetrievalResult, document_retrieval

KEY = "evaluate.document_retrieval"


@dataclass(frozen=True)
class DocumentSet:
    """The queries of one split, every unit of the documents they search, and which queries need long documents."""

    spec: str
    documents_spec: str
    queries: list[str]
    units: list[str]  # documents in file order, each document's chunks in order
    unit_document: np.ndarray  # the document of each unit
    relevant: list[list[int]]  # document positions relevant to each query
    long_queries: np.ndarray  # queries whose relevant documents all have several chunks

    @property
    def documents(self) -> int:
        return int(self.unit_document[-1]) + 1 if len(self.unit_document) else 0


def read_document_set(spec: str, declared: dict[str, DatasetSource], chunker: Chunker) -> DocumentSet:
    """The queries split ``spec`` names (``<queries dataset>/<split>``) and its documents, chunked by ``chunker``."""
    dataset, split = split_reference(spec)
    path = downloaded_split(spec, KEY)[1]
    queries = pd.read_parquet(path, columns=["query_id", "query", "relevant"])
    if queries.empty:
        raise DataError(f"{KEY}: {path} has no queries, so it cannot be evaluated")
    documents_dataset, documents_split_name = documents_split(dataset, split, declared)
    documents_path = raw_split_path(documents_dataset, documents_split_name)
    if not documents_path.is_file():
        raise DataError(f"{KEY}: {spec} searches {documents_path}, which is missing: run `embedforge download`")
    documents = pd.read_parquet(documents_path, columns=["id", "text", "title"])
    texts = [
        normalize_text(document_text(title, text))
        for title, text in zip(documents["title"], documents["text"], strict=True)
    ]
    chunked = chunker.split(texts)
    chunks = np.fromiter((len(document.units) for document in chunked), dtype=np.int64, count=len(chunked))
    position = {identifier: index for index, identifier in enumerate(documents["id"])}
    relevant = []
    for row, (query_id, ids) in enumerate(zip(queries["query_id"], queries["relevant"], strict=True)):
        unknown = [identifier for identifier in ids if identifier not in position]
        if unknown or not len(ids):
            raise DataError(
                f"{path} row {row} (query {query_id}): relevant {list(ids)} names no document of "
                f"{documents_path} ({', '.join(map(repr, unknown)) or 'none given'}): run `embedforge validate`"
            )
        relevant.append(sorted({position[identifier] for identifier in ids}))
    return DocumentSet(
        spec=spec,
        documents_spec=f"{documents_dataset}/{documents_split_name}",
        queries=[normalize_text(query) for query in queries["query"]],
        units=[unit for document in chunked for unit in document.units],
        unit_document=np.repeat(np.arange(len(chunked)), chunks),
        relevant=relevant,
        long_queries=np.array([all(chunks[d] > 1 for d in rows) for rows in relevant], dtype=bool),
    )


def figures(result: RetrievalResult) -> dict[str, float]:
    return {
        **{f"recall@{k}": value for k, value in result.recall.items()},
        "mrr": result.mrr,
        f"ndcg@{NDCG_DEPTH}": result.ndcg,
    }


def score_document_set(
    documents: DocumentSet, query_vectors: np.ndarray, unit_vectors: np.ndarray, pooling: str, ks: tuple[int, ...]
) -> dict[str, Any]:
    """One model's recall@k, MRR and nDCG@10 on ``documents``: documents from their chunks (``pooling``) and from
    their first chunk alone, over every query and over the queries that need long documents."""
    scored: dict[str, Any] = {
        "queries": len(documents.queries),
        "documents": documents.documents,
        "units": len(documents.units),
        "long_queries": int(documents.long_queries.sum()),
        "pooling": pooling,
    }
    subsets = {"all": np.arange(len(documents.queries)), "long": np.flatnonzero(documents.long_queries)}
    for subset, rows in subsets.items():
        if not len(rows):
            continue
        relevant = [documents.relevant[row] for row in rows]
        scored[subset] = {
            way: figures(
                document_retrieval(
                    query_vectors[rows], unit_vectors, documents.unit_document, documents.documents, relevant, how, ks
                )
            )
            for way, how in (("chunked", pooling), ("first_chunk", "first"))
        }
    return scored
