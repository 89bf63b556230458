"""A synthetic long-document retrieval set from SNLI's test split: documents of 5-40 premises, queries the
hypotheses those premises entail.

    python benchmarks/document_set.py --snli ../shared/data/snli/test.parquet --out DIR [--seed 0] [--documents N]

writes ``DIR/documents.jsonl`` (``id``, ``text``) and ``DIR/queries.jsonl`` (``query_id``, ``query``,
``relevant``: a JSON list of document ids), the files an own-data ``documents`` and ``queries`` dataset read,
and prints one JSON object: how many documents and queries, sentences and characters per document.

The distinct premises are shuffled (seeded) and cut into runs of 5-40 (sizes drawn uniformly), each run one
document: its premises joined with spaces, in drawn order, under the id ``doc-00001``, ... A last run shorter
than the minimum is left out. Documents have no titles: a run of unrelated captions has none that would be
honest. A hypothesis is a query when SNLI pairs it with one premise only, as an entailment, and that premise is
in a document; its one relevant document is that one. A hypothesis SNLI pairs with several premises (entailed by
more than one, or also judged neutral or contradicted by another) is dropped rather than listed with several
relevant documents, so no query is ambiguous by SNLI's own labels (a query may still be true of premises SNLI
never paired with it). ``--documents N`` keeps the first N documents and their queries: a prefix of the full set
for the same seed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class DocumentSet:
    documents: pd.DataFrame  # id, text
    queries: pd.DataFrame  # query_id, query, relevant (a list of document ids)
    premises: list[list[str]]  # each document's premises, in its text's order
    dropped: int  # hypotheses entailed by a document's premise, left out as paired with several premises

    def write(self, directory: Path) -> None:
        """``documents.jsonl`` and ``queries.jsonl`` in ``directory``, one JSON object a line."""
        directory.mkdir(parents=True, exist_ok=True)
        write_jsonl(directory / "documents.jsonl", self.documents)
        write_jsonl(directory / "queries.jsonl", self.queries)

    def summary(self) -> dict:
        sentences = np.array([len(group) for group in self.premises])
        characters = self.documents["text"].str.len().to_numpy()
        return {
            "documents": len(self.documents),
            "queries": len(self.queries),
            "hypotheses_dropped_as_ambiguous": self.dropped,
            "sentences_per_document": spread(sentences),
            "characters_per_document": spread(characters),
        }


def spread(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "mean": round(float(values.mean()), 1), "max": int(values.max())}


def write_jsonl(path: Path, frame: pd.DataFrame) -> None:
    """One record a line, as ``json.dumps`` writes it (pandas would escape every '/')."""
    lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in frame.to_dict("records"))
    path.write_text("".join(lines), encoding="utf-8")


def draw_documents(premises: np.ndarray, seed: int, min_sentences: int, max_sentences: int) -> list[list[str]]:
    """The premises in a seeded order, cut into runs of ``min_sentences``-``max_sentences``; each is used once."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(premises))
    groups: list[list[str]] = []
    start = 0
    while len(order) - start >= min_sentences:
        size = min(int(rng.integers(min_sentences, max_sentences + 1)), len(order) - start)
        groups.append([str(premises[index]) for index in order[start : start + size]])
        start += size
    return groups


def entailed_queries(pairs: pd.DataFrame, premises: list[list[str]], ids: list[str]) -> tuple[pd.DataFrame, int]:
    """The hypotheses SNLI pairs with one premise only, as an entailment, in document and premise order; and how
    many hypotheses entailed by a document's premise were dropped for being paired with several premises."""
    document = {premise: index for index, group in enumerate(premises) for premise in group}
    position = {premise: index for group in premises for index, premise in enumerate(group)}
    entails = pairs["label"] == "entailment"
    one_premise = pairs.groupby("hypothesis")["premise"].transform("nunique") == 1
    only_entailed = entails.groupby(pairs["hypothesis"]).transform("all")
    entailed = pairs.assign(unambiguous=one_premise & only_entailed)[entails & pairs["premise"].isin(document)]
    dropped = entailed.loc[~entailed["unambiguous"], "hypothesis"].nunique()
    kept = entailed[entailed["unambiguous"]].drop_duplicates("hypothesis")
    kept = kept.assign(document=kept["premise"].map(document), position=kept["premise"].map(position))
    kept = kept.sort_values(["document", "position"], kind="stable")
    queries = pd.DataFrame(
        {
            "query_id": [f"query-{number:05d}" for number in range(1, len(kept) + 1)],
            "query": kept["hypothesis"].to_list(),
            "relevant": [[ids[index]] for index in kept["document"]],
        }
    )
    return queries, int(dropped)


def build(
    snli_test: Path, seed: int, min_sentences: int = 5, max_sentences: int = 40, documents: int | None = None
) -> DocumentSet:
    """Documents of ``min_sentences``-``max_sentences`` distinct SNLI test premises and the queries they entail;
    ``documents`` keeps only the first so many."""
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(f"sentences per document: {min_sentences} to {max_sentences} is not a range")
    if documents is not None and documents < 1:
        raise ValueError(f"documents: {documents}; keep at least one")
    pairs = pd.read_parquet(snli_test, columns=["premise", "hypothesis", "label"])
    pairs = pairs.assign(premise=pairs["premise"].str.strip(), hypothesis=pairs["hypothesis"].str.strip())
    premises = draw_documents(pd.unique(pairs["premise"]), seed, min_sentences, max_sentences)[:documents]
    ids = [f"doc-{number:05d}" for number in range(1, len(premises) + 1)]
    texts = [" ".join(group) for group in premises]
    queries, dropped = entailed_queries(pairs, premises, ids)
    return DocumentSet(pd.DataFrame({"id": ids, "text": texts}), queries, premises, dropped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--snli", type=Path, required=True, help="SNLI's test split, e.g. ../shared/data/snli/test.parquet"
    )
    parser.add_argument("--out", type=Path, required=True, help="where documents.jsonl and queries.jsonl go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--documents", type=int, default=None, help="keep the first N documents (a tiny set)")
    parser.add_argument("--min-sentences", type=int, default=5)
    parser.add_argument("--max-sentences", type=int, default=40)
    args = parser.parse_args()
    built = build(args.snli, args.seed, args.min_sentences, args.max_sentences, args.documents)
    built.write(args.out)
    print(json.dumps({**built.summary(), "seed": args.seed, "out": str(args.out)}, indent=2))


if __name__ == "__main__":
    main()
