"""evaluate: how good and how fast the student is, next to its teacher, on the same data in one run.

Reads ``models/student``, the teacher (``precompute.teacher``) and the raw splits named
in ``evaluate.*`` (any split name: validation here, test where a user has it). Each
model encodes every distinct sentence it needs once. Writes:

- ``metrics/eval.json``: per model STS (Spearman, Pearson per split), separation,
  retrieval, document retrieval (each ``evaluate.document_retrieval`` split, documents
  from their chunks and from their first chunk alone), speed and size, plus the
  student/teacher speed and size ratios and their agreement on held-out training text
  (``agreement``: ``train.held_out_share``, ``evaluate.agreement_sentences``);
- ``plots/eval/sts.csv`` (gold vs predicted), ``separation.csv`` (cosine by pair kind),
  ``embedding_map.csv`` (a t-SNE map of student embeddings), for ``dvc plots`` and the report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedforge import devices, tracking
from embedforge.api import load_sentence_transformer
from embedforge.config import TRAIN_SPLIT, DatasetSource, EvaluateParams, Params, flatten, threshold
from embedforge.data.chunks import Chunker
from embedforge.data.gate import require_passed
from embedforge.data.sentences import split_files
from embedforge.errors import DataError
from embedforge.evaluation.agreement import held_out_units, not_measured, teacher_agreement
from embedforge.evaluation.document_sets import read_document_set, score_document_set
from embedforge.evaluation.retrieval import retrieval
from embedforge.evaluation.separation import DISSIMILAR, SIMILAR, pair_kinds, separation
from embedforge.evaluation.speed import encode_speed
from embedforge.evaluation.sts import cosine_scores, read_split, sts_correlation
from embedforge.evaluation.verdict import verdict
from embedforge.files import atomic_path, sha256_tree, write_json
from embedforge.models import count_parameters
from embedforge.models import teacher as teachers
from embedforge.paths import EVAL_METRICS_PATH, EVAL_PLOTS_DIR, STUDENT_DIR

log = logging.getLogger(__name__)

MODELS = ("student", "teacher")


class EncodedTexts:
    """Every distinct text a model is scored on, encoded once; vectors are looked up by text."""

    def __init__(self, model: Any, texts: list[str], batch_size: int):
        self.row = {text: index for index, text in enumerate(dict.fromkeys(texts))}
        self.vectors = model.encode(
            list(self.row), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )

    def __call__(self, texts: pd.Series | list[str]) -> np.ndarray:
        return self.vectors[[self.row[text] for text in texts]]


def retrieval_task(
    frame: pd.DataFrame, similar_min_score: float | None
) -> tuple[list[str], list[str], list[list[int]]]:
    """First sentences with a similar pair as queries, every distinct second sentence as the corpus.

    Similar pairs are the entailments of labelled pairs (``similar_min_score`` None), else the pairs scoring at
    least ``similar_min_score``.
    """
    corpus = list(dict.fromkeys(frame["sentence2"]))
    position = {text: index for index, text in enumerate(corpus)}
    similar = frame["label"] == "entailment" if similar_min_score is None else frame["score"] >= similar_min_score
    relevant_pairs = frame[similar].groupby("sentence1", sort=True)["sentence2"].agg(list)
    if relevant_pairs.empty:
        raise DataError(
            "evaluate.retrieval_split: the split has no similar pairs (entailments, or scores at or "
            "above the similar threshold) to retrieve"
        )
    relevant = [sorted({position[text] for text in texts}) for texts in relevant_pairs]
    return list(relevant_pairs.index), corpus, relevant


class Evaluation:
    """The evaluation data of one run, and the scores of one model on it."""

    def __init__(
        self,
        params: EvaluateParams,
        datasets: dict[str, DatasetSource],
        seed: int,
        chunker: Chunker | None = None,
        agreement_units: list[str] | None = None,
    ):
        self.params = params
        self.agreement_units = agreement_units or []
        self.sts = {spec: read_split(spec, "evaluate.sts_splits") for spec in params.sts_splits}
        parts = []
        for spec in params.separation_splits:
            frame = read_split(spec, "evaluate.separation_splits")
            source = datasets[frame["dataset"].iloc[0]]
            similar = threshold(source, "similar_min_score", params.similar_min_score)
            dissimilar = threshold(source, "dissimilar_max_score", params.dissimilar_max_score)
            parts.append(frame.assign(kind=pair_kinds(frame, similar, dissimilar)))
        self.separation_pairs = pd.concat(parts, ignore_index=True).dropna(subset=["kind"])
        retrieval_frame = read_split(params.retrieval_split, "evaluate.retrieval_split")
        source = datasets[retrieval_frame["dataset"].iloc[0]]
        similar = None if source.has_labels else threshold(source, "similar_min_score", params.similar_min_score)
        self.queries, self.corpus, self.relevant = retrieval_task(retrieval_frame, similar)
        self.document_sets = [read_document_set(spec, datasets, chunker) for spec in params.document_retrieval]
        self.map_sentences = self.sample_map(seed)

    def sample_map(self, seed: int) -> pd.DataFrame:
        """Distinct first sentences of the STS splits, labelled by genre where the data has one."""
        scored = self.sts.values() if self.sts else [self.separation_pairs]  # no STS split: the pairs separated
        frame = pd.concat(scored, ignore_index=True).drop_duplicates("sentence1")
        labels = frame["genre"].where(frame["genre"].notna() & (frame["genre"] != ""), frame["dataset"])
        frame = pd.DataFrame({"text": frame["sentence1"], "label": labels})
        return frame.sample(n=min(self.params.map_sentences, len(frame)), random_state=seed)

    def texts(self) -> list[str]:
        parts = [frame[column] for frame in self.sts.values() for column in ("sentence1", "sentence2")]
        parts += [self.separation_pairs["sentence1"], self.separation_pairs["sentence2"]]
        parts += [self.queries, self.corpus, list(self.map_sentences["text"])]
        parts += [texts for documents in self.document_sets for texts in (documents.queries, documents.units)]
        parts.append(self.agreement_units)
        return [text for part in parts for text in part]

    def score(self, name: str, encoded: EncodedTexts) -> tuple[dict[str, Any], list[pd.DataFrame]]:
        """One model's metrics, and its rows of the sts and separation plot files."""
        params = self.params
        metrics: dict[str, Any] = {"sts": {}}
        sts_rows, separation_rows = [], []
        for spec, frame in self.sts.items():
            predicted = cosine_scores(encoded(frame["sentence1"]), encoded(frame["sentence2"]))
            result = sts_correlation(predicted, frame["score"].to_numpy(dtype=np.float64), spec)
            metrics["sts"][spec] = {"spearman": result.spearman, "pearson": result.pearson, "pairs": result.pairs}
            sts_rows.append(
                pd.DataFrame({"split": spec, "model": name, "gold": frame["score"], "predicted": predicted})
            )
        pairs = self.separation_pairs
        cosine = cosine_scores(encoded(pairs["sentence1"]), encoded(pairs["sentence2"]))
        kinds = pairs["kind"].to_numpy()
        result = separation(
            cosine[kinds == SIMILAR],
            cosine[kinds == DISSIMILAR],
            params.similar_min,
            params.dissimilar_max,
            params.min_gap,
        )
        metrics["separation"] = {
            "similar_mean": result.similar_mean,
            "dissimilar_mean": result.dissimilar_mean,
            "gap": result.gap,
            "similar_pairs": result.similar_pairs,
            "dissimilar_pairs": result.dissimilar_pairs,
            "passed": result.passed,
        }
        separation_rows.append(pd.DataFrame({"model": name, "kind": kinds, "cosine": cosine}))
        found = retrieval(encoded(self.queries), encoded(self.corpus), self.relevant, tuple(params.retrieval_ks))
        metrics["retrieval"] = {
            **{f"recall@{k}": value for k, value in found.recall.items()},
            "mrr": found.mrr,
            "ndcg@10": found.ndcg,
            "queries": found.queries,
            "corpus": found.corpus,
        }
        metrics["documents"] = {
            documents.spec: score_document_set(
                documents,
                encoded(documents.queries),
                encoded(documents.units),
                params.document_pooling,
                tuple(params.retrieval_ks),
            )
            for documents in self.document_sets
        }
        sts_frame = pd.concat(sts_rows) if sts_rows else pd.DataFrame(columns=["split", "model", "gold", "predicted"])
        return metrics, [sts_frame, pd.concat(separation_rows)]


def embedding_map(vectors: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE coordinates of ``vectors`` (cosine distances), for the report's map."""
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(vectors) - 1) / 3)
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(vectors)


def agreement_off(cfg: Params) -> str | None:
    """Why this run measures no teacher agreement, if it does not."""
    if not cfg.train.held_out_share:
        return "train.held_out_share is 0: training held no text out"
    if not cfg.evaluate.agreement_sentences:
        return "evaluate.agreement_sentences is 0"
    return None


def read_agreement_units(cfg: Params, chunker: Chunker) -> list[str]:
    """The held-out units of the train splits of train.datasets that the student and the teacher are compared on."""
    files = split_files(cfg.train.datasets, [TRAIN_SPLIT])
    return held_out_units(files, chunker, cfg.train.held_out_share, cfg.seed, cfg.evaluate.agreement_sentences)


def disk_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def write_csv(frame: pd.DataFrame, name: str) -> None:
    with atomic_path(EVAL_PLOTS_DIR / name) as tmp:
        frame.to_csv(tmp, index=False)


def run(cfg: Params) -> dict[str, float | str]:
    params = cfg.evaluate
    require_passed()
    device = devices.pick(params.device, "evaluate.device")
    teacher = teachers.resolve(cfg.precompute.teacher)
    paths = {"student": STUDENT_DIR, "teacher": teacher.path}
    models = {name: load_sentence_transformer(path, device) for name, path in paths.items()}
    off = agreement_off(cfg)
    chunker = teachers.chunker(cfg) if params.document_retrieval or not off else None
    agreement_units = [] if off else read_agreement_units(cfg, chunker)
    data = Evaluation(params, cfg.download.datasets, cfg.seed, chunker, agreement_units)
    texts = data.texts()

    report: dict[str, Any] = {}
    plot_rows: list[list[pd.DataFrame]] = []
    student_vectors = None
    held_out_vectors: dict[str, np.ndarray] = {}
    for name, model in models.items():
        encoded = EncodedTexts(model, texts, params.batch_size)
        report[name], rows = data.score(name, encoded)
        plot_rows.append(rows)
        report[name]["size"] = {"parameters": count_parameters(model), "disk_bytes": disk_bytes(paths[name])}
        held_out_vectors[name] = encoded(data.agreement_units)
        if name == "student":
            student_vectors = encoded(data.map_sentences["text"])

    speed_texts = list(dict.fromkeys(texts))[: params.speed_sentences]
    speeds = encode_speed(models, speed_texts, params.batch_size, params.speed_rounds)
    for name in MODELS:
        report[name]["speed"] = {"sentences_per_s": speeds[name].sentences_per_s, "sentences": len(speed_texts)}
    report["speed_ratio"] = speeds["student"].sentences_per_s / speeds["teacher"].sentences_per_s
    report["size_ratio"] = report["student"]["size"]["parameters"] / report["teacher"]["size"]["parameters"]
    report["targets"] = {key: getattr(params, key) for key in ("similar_min", "dissimilar_max", "min_gap")}
    report["agreement"] = (
        not_measured(0, off) if off else teacher_agreement(held_out_vectors["student"], held_out_vectors["teacher"])
    )
    report["verdict"] = verdict(report, cfg)

    coordinates = embedding_map(student_vectors, cfg.seed)
    write_csv(pd.concat([rows[0] for rows in plot_rows]), "sts.csv")
    write_csv(pd.concat([rows[1] for rows in plot_rows]), "separation.csv")
    points = data.map_sentences.assign(x=coordinates[:, 0], y=coordinates[:, 1])
    write_csv(points[["x", "y", "label", "text"]], "embedding_map.csv")
    write_json(EVAL_METRICS_PATH, report)
    run = tracking.current()
    run.log_artifacts(EVAL_METRICS_PATH)
    run.tag_model_version(cfg.tracking.registered_model, sha256_tree(STUDENT_DIR), headline(report))
    log.info("%s", report["verdict"]["headline"])
    results: dict[str, float | str] = {
        f"eval.{metric_name(key)}": float(value)
        for key, value in flatten(report).items()
        if isinstance(value, (int, float))
    }
    results["eval.device_used"] = device
    return results


def headline(report: dict[str, Any]) -> dict[str, str]:
    """The student's numbers a registered model version carries: STS, separation, retrieval, speed ratio."""
    student = report["student"]
    numbers = {f"eval.sts.{split}.spearman": values["spearman"] for split, values in student["sts"].items()}
    numbers.update({f"eval.separation.{key}": student["separation"][key] for key in ("gap", "passed")})
    numbers.update({f"eval.retrieval.{key}": value for key, value in student["retrieval"].items()})
    numbers["eval.speed_ratio"] = report["speed_ratio"]
    numbers["eval.verdict.passed"] = report["verdict"]["passed"]
    return {metric_name(key): "undefined" if value is None else str(value) for key, value in numbers.items()}


def metric_name(key: str) -> str:
    """MLflow refuses '@' in metric names: ``retrieval.recall@10`` is logged as ``retrieval.recall_at_10``."""
    return key.replace("@", "_at_")
