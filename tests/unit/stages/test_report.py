import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import leftovers, log_evaluation
from mlflow.tracking import MlflowClient

from embedforge import tracking
from embedforge.config import Params, load_params
from embedforge.errors import DataError
from embedforge.evaluation.verdict import verdict
from embedforge.stages import report, run_stage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STS_SPLITS = ("stsb/validation", "sick/validation")
MAP_LABELS = ("main-captions", "main-news", "main-forums")


def model_metrics(spearman: float, gap: float, passed: bool, speed: float, parameters: int) -> dict:
    similar = 0.22 + gap
    return {
        "sts": {
            split: {"spearman": spearman - 0.05 * i, "pearson": spearman - 0.04 * i - 0.01, "pairs": 60}
            for i, split in enumerate(STS_SPLITS)
        },
        "separation": {
            "similar_mean": similar,
            "dissimilar_mean": 0.22,
            "gap": gap,
            "similar_pairs": 80,
            "dissimilar_pairs": 80,
            "passed": passed,
        },
        "retrieval": {"recall@1": 0.61, "recall@10": 0.93, "mrr": 0.72, "queries": 330, "corpus": 980},
        "speed": {"sentences_per_s": speed, "sentences": 2000},
        "size": {"parameters": parameters, "disk_bytes": parameters * 4},
    }


def eval_metrics(passed: bool = True, speed_ratio: float = 2.8, teacher_passed: bool = True) -> dict:
    """eval.json as evaluate writes it, its verdict by the real rule (the schema's goals) on these numbers."""
    evaluation = {
        "student": model_metrics(0.85, 0.59 if passed else 0.1, passed, 650.0, 15_615_360),
        "teacher": model_metrics(0.87, 0.62 if teacher_passed else 0.15, teacher_passed, 232.0, 22_713_216),
        "speed_ratio": speed_ratio,
        "size_ratio": 0.69,
        "targets": {"similar_min": 0.7, "dissimilar_max": 0.5, "min_gap": 0.2},
    }
    return {**evaluation, "verdict": verdict(evaluation, Params())}


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def write_inputs(root: Path, evaluation: dict | None = None, map_text: str = "A man is playing a guitar.") -> None:
    """Every file the report reads, small but shaped as the pipeline writes it."""
    rng = np.random.default_rng(0)
    write_json(root / "metrics/eval.json", evaluation or eval_metrics())
    write_json(
        root / "metrics/train.json",
        {"steps": 40, "epochs": 2, "best_epoch": 2, "sts_spearman": 0.83, "val_loss": None, "peak_rss_mb": 2000.0},
    )
    steps = np.arange(1, 41)
    write_csv(
        root / "plots/train/steps.csv",
        pd.DataFrame(
            {
                "step": steps,
                "epoch": (steps > 20) + 1,
                "step.loss": 3.0 * np.exp(-steps / 15) + rng.normal(0, 0.05, steps.size),
                "step.lr": np.minimum(steps / 4, 1) * 5e-5,
                "step.tokens_per_s": 2500.0,
                "step.examples_per_s": 95.0,
            }
        ),
    )
    write_csv(
        root / "plots/train/epochs.csv",
        pd.DataFrame({"epoch": [1, 2], "step": [20, 40], "val.sts_spearman": [0.8, 0.83], "val.val_loss": [0.9, 0.6]}),
    )
    sts = []
    for split in STS_SPLITS:
        gold = rng.uniform(0, 5, 60)
        for model in ("student", "teacher"):
            predicted = gold / 5 + rng.normal(0, 0.1, gold.size)
            sts.append(pd.DataFrame({"split": split, "model": model, "gold": gold, "predicted": predicted}))
    write_csv(root / "plots/eval/sts.csv", pd.concat(sts))
    separation = [
        pd.DataFrame({"model": model, "kind": kind, "cosine": rng.normal(mean, 0.1, 80)})
        for model in ("student", "teacher")
        for kind, mean in (("similar", 0.8), ("dissimilar", 0.2))
    ]
    write_csv(root / "plots/eval/separation.csv", pd.concat(separation))
    labels = np.repeat(MAP_LABELS, 20)
    write_csv(
        root / "plots/eval/embedding_map.csv",
        pd.DataFrame(
            {
                "x": rng.normal(0, 5, labels.size) + 10 * (labels == MAP_LABELS[0]),
                "y": rng.normal(0, 5, labels.size),
                "label": labels,
                "text": [map_text] + [f"Sentence {i} of the map." for i in range(1, labels.size)],
            }
        ),
    )
    write_json(
        root / "data/raw/manifest.json",
        {
            "source": "mirror",
            "location": "/data/mirror",
            "limit": None,
            "seed": 42,
            "datasets": {
                "stsb": {
                    "validation": {"source_rows": 1500, "rows": 1500, "output_sha256": "ab12" * 16},
                    "train": {"source_rows": 5749, "rows": 5700, "output_sha256": "cd34" * 16},
                }
            },
            "skipped": {},
        },
    )
    write_json(
        root / "data/validation/results.json",
        {
            "success": True,
            "summary": "Data validation passed: 40 expectations on 2 splits (7200 rows).",
            "metrics": {"validate.splits": 2, "validate.rows": 7200},
            "splits": [
                {
                    "dataset": "stsb",
                    "split": split,
                    "rows": rows,
                    "success": True,
                    "expectations": [{"success": True}] * 20,
                }
                for split, rows in (("train", 5700), ("validation", 1500))
            ],
        },
    )


def params(root: Path, *overrides: str):
    return load_params(root / "params.yaml", ["tracking.enabled=false", *overrides])


def images_of(page: str) -> list[str]:
    """The alt text of every embedded figure: which figures the page shows."""
    return re.findall(r'<img src="data:image/png;base64,[^"]*" alt="([^"]*)"', page)


def notes_of(page: str) -> list[str]:
    """The sentences that stand in for what the data was too thin to draw."""
    return [text for text in re.findall(r'<p class="missing">([^<]*)</p>', page) if not text.startswith("Not ")]


def edit_csv(path: Path, change) -> None:
    write_csv(path, change(pd.read_csv(path)))


def page_of(root: Path) -> str:
    return (root / "reports" / "index.html").read_text(encoding="utf-8")


def verdict_of(page: str) -> str:
    return re.search(r'<p class="verdict [^"]*">(.*?)</p>', page, re.DOTALL).group(0)


def frontier_sentences(page: str) -> list[str]:
    """The sentences under the quality/speed figure: where this run sits, and beside what."""
    section = page.split('<section id="frontier">')[1].split("</section>")[0]
    return [html.unescape(text) for text in re.findall(r"<p>([^<]*)</p>", section)]


ON_THE_FRONTIER = (
    "This run (encoder: STS Spearman 0.850 at 2.80× the teacher's speed) is on the frontier: no other point is at "
    "least as good on both and better on one."
)


def test_report_is_one_self_contained_page_embedding_every_figure(project):
    write_inputs(project)
    results = report.run(params(project))

    page = page_of(project)
    written = sorted((project / "reports" / "figures").glob("*.png"))
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert results["report.figures"] == len(written) == len(sources) == 5
    assert results["report.bytes"] == (project / "reports" / "index.html").stat().st_size
    assert results["report.path"] == "reports/index.html"
    embedded = sorted(base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in sources)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert embedded == sorted(path.read_bytes() for path in written)
    assert all(png.startswith(PNG_MAGIC) for png in embedded)
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "embedforge report" in page and "Goals met" in verdict_of(page) and "2.80×" in page
    assert frontier_sentences(page) == [
        ON_THE_FRONTIER,
        "MLflow tracking is off (tracking.enabled: false), so no other run is shown.",
    ]
    assert leftovers(project) == []


def test_the_frontier_shows_this_runs_onnx_exports_as_points_of_their_own(project):
    write_inputs(project)
    variant = {"sts": {"stsb/validation": {"spearman": 0.849}}, "cosine_min": 0.99, "file": "model_int8.onnx"}
    write_json(project / "metrics/export.json", {"variants": {"onnx_int8": {**variant, "speed_ratio": 5.6}}})
    report.run(params(project))
    assert frontier_sentences(page_of(project)) == [
        "This run (encoder: STS Spearman 0.850 at 2.80× the teacher's speed) is on the frontier: no other point is "
        "at least as good on both and better on one.",
        "This run (encoder, onnx_int8: STS Spearman 0.849 at 5.60× the teacher's speed) is on the frontier: no "
        "other point is at least as good on both and better on one.",
        "MLflow tracking is off (tracking.enabled: false), so no other run is shown.",
    ]


def test_the_frontier_places_this_run_among_the_students_mlflow_holds(project):
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    better = log_evaluation(uri, "lattice", 0.86, 3.5, started_s=0, teacher=0.87)
    log_evaluation(uri, "static", 0.70, 12.0, started_s=10, teacher=0.87)
    no_speed = log_evaluation(uri, "dynamic", 0.80, None, started_s=20, teacher=0.87)
    this_run = log_evaluation(uri, "encoder", 0.85, 2.8, started_s=30, teacher=0.87)  # metrics/eval.json's numbers
    write_inputs(project)
    report.run(params(project, "tracking.enabled=true"))
    page = page_of(project)
    assert frontier_sentences(page) == [
        (
            f"This run (encoder, {this_run[:8]}: STS Spearman 0.850 at 2.80× the teacher's speed) is dominated, at "
            f"least matched on both and beaten on one, by lattice, {better[:8]}: STS Spearman 0.860 at 3.50× the "
            "teacher's speed."
        ),
        "Beside it: 2 other evaluated student(s) from MLflow, and the teacher.",
        f"1 left out for want of an STS Spearman on stsb/validation or a speed ratio: {no_speed[:8]}.",
    ]
    assert (project / "reports/figures/frontier.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    "store, sentence",
    [
        ("empty", "MLflow holds no other evaluated student yet, so the figure shows this run and the teacher."),
        ("corrupted", "could not be read (file is not a database), so no other run is shown."),
        ("unreachable", "The MLflow store at http://127.0.0.1:9 could not be read ("),
    ],
)
def test_the_frontier_shows_this_run_and_the_teacher_when_mlflow_adds_nothing(project, store, sentence):
    write_inputs(project)
    if store == "corrupted":
        (project / "mlruns/mlflow.db").write_bytes(b"\x13not a database" * 1000)
    overrides = ["tracking.uri=http://127.0.0.1:9"] if store == "unreachable" else []
    results = report.run(params(project, "tracking.enabled=true", *overrides))
    placed, said = frontier_sentences(page_of(project))
    assert placed == ON_THE_FRONTIER and sentence in said
    assert results["report.figures"] == 5 and (project / "reports/figures/frontier.png").exists()


def goal_rows(page: str) -> list[tuple[str, str]]:
    """(goal, met badge) of each row of the verdict's goals table."""
    table = html.unescape(page.split("Goal (evaluate.goals)")[1].split("</table>")[0])
    return re.findall(r"<tr><td>([^<]*)</td>.*?(PASS|FAIL)</span>", table, re.DOTALL)


@pytest.mark.parametrize("speed_ratio, met", [(2.8, True), (1.5, False)])
def test_the_verdict_is_the_goals_relative_to_the_teacher_not_the_separation_targets(project, speed_ratio, met):
    """A student that misses the absolute separation targets, as its teacher does, but keeps 97.7% of the
    teacher's Spearman at 2.8x its speed meets the run's goals; at 1.5x it misses the speed goal alone."""
    write_inputs(project, eval_metrics(passed=False, speed_ratio=speed_ratio, teacher_passed=False))
    report.run(params(project))
    page = page_of(project)
    verdict_text = html.unescape(verdict_of(page))
    assert ("Goals met" in verdict_text) is met and ("Goals missed" in verdict_text) is not met
    assert "keeps 97.7% of the teacher's STS Spearman on stsb/validation" in verdict_text
    assert goal_rows(page) == [
        ("share of the teacher's STS Spearman kept, stsb/validation", "PASS"),
        ("share of the teacher's STS Spearman kept, sick/validation", "PASS"),
        ("speed, student ÷ teacher", "PASS" if met else "FAIL"),
    ]
    gap_row = re.search(r"<tr><td>Gap \(similar − dissimilar\)</td>.*?</tr>", page, re.DOTALL).group(0)
    assert re.findall(r"(PASS|FAIL)</span>", gap_row) == ["FAIL", "FAIL"]
    assert "≥ 0.2 (the teacher misses it too)" in html.unescape(gap_row)
    assert "all three (the teacher misses them too)" in page


@pytest.mark.parametrize(
    "agreement, shown",
    [
        (
            {"units": 322, "knn@10_overlap": 0.5512, "pairwise_spearman": 0.6352, "reason": None},
            ["0.551", "0.635", "322"],
        ),
        ({"units": 4, "knn@10_overlap": None, "pairwise_spearman": None, "reason": "4 held-out units: too few"}, []),
    ],
)
def test_the_agreement_with_the_teacher_is_a_group_of_its_own(project, agreement, shown):
    write_inputs(project, {**eval_metrics(), "agreement": agreement})
    report.run(params(project))
    page = page_of(project)
    group = page.split("Agreement with the teacher on held-out training text")[1].split('class="group"')[0]
    if shown:
        assert re.findall(r'<td class="num">([^<]*)', group)[::2] == shown
    else:
        assert "4 held-out units: too few" in group


def test_the_page_says_what_each_scored_split_was_to_the_run(project):
    write_inputs(project)
    report.run(params(project))
    page = html.unescape(page_of(project))
    assert (
        "Scored on stsb/validation, validation split (used for early stopping); sick/validation, validation split "
        "(not used in training). The student was chosen by the split early stopping read: it is not held-out data."
    ) in page
    assert "same held-out data" not in page


def test_an_undefined_correlation_shows_as_undefined(project):
    evaluation = eval_metrics()
    evaluation["student"]["sts"]["sick/validation"].update(spearman=None, pearson=None)
    write_inputs(project, evaluation)
    report.run(params(project))
    page = page_of(project)
    row = re.search(r"<tr><td>Spearman, sick/validation.*?</tr>", page, re.DOTALL).group(0)
    assert re.findall(r'<td class="num">([^<]*)', row)[0] == "undefined"
    assert not re.search(r">\s*(nan|None|NaN)\s*<", page)


def test_data_and_params_text_is_escaped(project):
    write_inputs(project, map_text="Click <script>alert(1)</script> & run")
    report.run(params(project, "report.title=<b>Ours</b> & <script>x()</script>"))
    page = page_of(project)
    assert "<script" not in page and "<b>Ours" not in page
    assert "Click &lt;script&gt;alert(1)&lt;/script&gt; &amp; run" in page
    assert "<title>&lt;b&gt;Ours&lt;/b&gt; &amp; &lt;script&gt;x()&lt;/script&gt;</title>" in page
    assert "<td>report.title</td><td><code>&lt;b&gt;Ours" in page


@pytest.mark.parametrize(
    "name, command",
    [
        ("metrics/eval.json", "evaluate"),
        ("metrics/train.json", "train"),
        ("plots/eval/sts.csv", "evaluate"),
        ("plots/eval/separation.csv", "evaluate"),
        ("plots/eval/embedding_map.csv", "evaluate"),
    ],
)
def test_a_missing_required_input_is_named_and_nothing_is_written(project, name, command):
    write_inputs(project)
    (project / name).unlink()
    with pytest.raises(DataError, match=re.escape(f"{name}: missing; run `embedforge {command}` first")):
        report.run(params(project))
    assert not (project / "reports").exists() and leftovers(project) == []


def test_required_inputs_must_hold_what_the_report_reads(project):
    evaluation = eval_metrics()
    del evaluation["teacher"]["retrieval"], evaluation["targets"]["min_gap"]
    write_inputs(project, evaluation)
    with pytest.raises(DataError, match=r"metrics/eval.json: no teacher.retrieval, targets.min_gap; run"):
        report.run(params(project))
    write_inputs(project)
    frame = pd.read_csv(project / "plots/eval/sts.csv")
    frame.drop(columns="predicted").to_csv(project / "plots/eval/sts.csv", index=False)
    with pytest.raises(DataError, match=r"plots/eval/sts.csv: no column predicted; run `embedforge evaluate` again"):
        report.run(params(project))
    assert not (project / "reports").exists()


def test_optional_inputs_may_be_missing(project):
    write_inputs(project)
    for name in ("plots/train/steps.csv", "plots/train/epochs.csv", "data/raw/manifest.json"):
        (project / name).unlink()
    shutil.rmtree(project / "data" / "validation")
    results = report.run(params(project))
    page = page_of(project)
    assert results["report.figures"] == 4
    assert not (project / "reports/figures/training_curves.png").exists()
    missing = re.findall(r'<p class="missing">Not available: ([^<]*)', page)
    assert [text.split()[1] for text in missing] == [
        "plots/train/steps.csv",
        "data/raw/manifest.json",
        "data/validation/results.json",
        "data/tokens/stats.json",
        "dvc.lock",
    ]


def token_stats(name: str, texts: int, chunked: int, chunks_per_text: list[int], dropped: float) -> dict:
    """One split of data/tokens/stats.json, as tokenize writes it."""
    return {
        "sentences": texts,
        "chunks": sum((c + 1) * n for c, n in enumerate(chunks_per_text)),
        "chunked_sentences": chunked,
        "truncated_chunks": 0,
        "truncation_dropped_share": dropped,
        "text_length": {"edges": [16, 32, 64, 128, 256, 512], "counts": [texts - chunked, 0, 0, 0, chunked, 0, 0]},
        "chunks_per_text": {"chunks": [1, 2, 3], "counts": chunks_per_text},
    }


def document_figures(chunked: float, first: float) -> dict:
    measures = ("recall@1", "recall@10", "mrr", "ndcg@10")
    return {"chunked": dict.fromkeys(measures, chunked), "first_chunk": dict.fromkeys(measures, first)}


def test_page_shows_texts_and_chunks_and_document_retrieval_from_chunks_beside_truncation(project):
    evaluation = eval_metrics()
    for model, (chunked, first) in {"student": (0.61, 0.42), "teacher": (0.66, 0.47)}.items():
        evaluation[model]["documents"] = {
            "queries/test": {
                "queries": 40,
                "documents": 12,
                "units": 30,
                "long_queries": 31,
                "pooling": "mean",
                "all": document_figures(chunked, first),
                "long": document_figures(chunked - 0.01, first - 0.1),
            }
        }
    write_inputs(project, evaluation)
    splits = {
        "docs/train": token_stats("docs/train", 10, 8, [2, 5, 3], 0.375),
        "stsb/validation": token_stats("stsb/validation", 50, 0, [50, 0, 0], 0.0),
    }
    write_json(project / "data/tokens/stats.json", {"max_length": 128, "splits": splits})
    results = report.run(params(project))

    page = page_of(project)
    assert results["report.figures"] == 6 and any(alt.startswith("Texts by their length") for alt in images_of(page))
    assert '<td>docs/train</td><td class="num">10</td><td class="num">8</td>' in page
    assert '<td class="num">37.5%</td>' in page and '<td class="num">0.0%</td>' in page
    assert "Document retrieval: queries/test (mean pooling of chunks)" in page
    row = re.search(r"<td>nDCG@10, queries for documents of several chunks, from its chunks</td>(.*?)</tr>", page)
    assert row and re.findall(r">([0-9.]+)<", row.group(1)) == ["0.600", "0.650"]
    row = re.search(r"<td>nDCG@10, all queries, first chunk only \(truncated\)</td>(.*?)</tr>", page)
    assert row and re.findall(r">([0-9.]+)<", row.group(1)) == ["0.420", "0.470"]
    assert "40 / 12 / 30" in page


def test_page_shows_data_manifest_validation_and_resolved_params(project):
    write_inputs(project)
    report.run(params(project, "train.lr=0.0003"))
    page = page_of(project)
    assert '<td>stsb/validation</td><td class="num">1,500</td>' in page
    assert f'<code title="{"ab12" * 16}">{("ab12" * 16)[:12]}</code>' in page
    assert "Data validation passed: 40 expectations" in page and "20 / 20" in page
    assert "<td>train.lr</td><td><code>0.0003</code>" in page
    assert "<td>download.limit</td><td><code>" in page
    assert "main-news" in page and "Sentence 20 of the map." in page


def test_lineage_names_the_runs_commit_and_dvc_hashes_and_the_report_is_logged(project, monkeypatch):
    write_inputs(project)
    lock = {
        "schema": "2.0",
        "stages": {"train": {"cmd": "embedforge train", "outs": [{"path": "models/student", "md5": "9f8e7d.dir"}]}},
    }
    (project / "dvc.lock").write_text(yaml.safe_dump(lock), encoding="utf-8")
    cfg = params(project, "tracking.enabled=true")
    with tracking.start(cfg, "pipeline") as parent:
        monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.run_id)
        run_stage("report", cfg)

    page = page_of(project)
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("embedforge").experiment_id], "tags.`embedforge.stage` = 'report'"
    )
    run_id = runs[0].info.run_id
    assert f"<code>{run_id}</code>" in page and f"<code>{parent.run_id}</code>" in page
    assert f"<code>{tracking.lineage_tags()['git.commit']}</code>" in page
    assert "<td>train</td><td><code>models/student</code></td>" in page and "9f8e7d.dir" in page
    logged = {artifact.path for artifact in client.list_artifacts(run_id, "report")}
    assert logged == {"report/index.html", "report/figures"}
    assert runs[0].data.metrics["report.figures"] == 5 and runs[0].data.tags["report.path"] == "reports/index.html"


def test_page_renders_in_headless_chromium(project, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed: apt-get install chromium to render the report")
    write_inputs(project)
    report.run(params(project))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            (project / "reports" / "index.html").resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 10_000


def test_a_one_step_run_says_so_instead_of_drawing_empty_curves(project):
    write_inputs(project)
    edit_csv(project / "plots/train/steps.csv", lambda steps: steps.head(1).assign(**{"step.loss": 2.5}))
    results = report.run(params(project))
    page = page_of(project)
    assert notes_of(page) == [
        "Training logged 1 step: too short for a loss or learning-rate curve (loss 2.500, learning rate 1.25e-05)."
    ]
    assert results["report.figures"] == len(images_of(page)) == 4
    assert not any(alt.startswith("Training loss") for alt in images_of(page))
    assert not (project / "reports/figures/training_curves.png").exists()
    assert "Not available" not in page.split('<section id="training">')[1].split("</section>")[0]


def test_empty_training_logs_as_train_writes_them_are_said_in_words(project):
    """train writes a log that stayed empty as a header of its key column alone."""
    write_inputs(project)
    (project / "plots/train/steps.csv").write_text("step\n", encoding="utf-8")
    (project / "plots/train/epochs.csv").write_text("epoch\n", encoding="utf-8")
    results = report.run(params(project))
    page = page_of(project)
    assert notes_of(page) == ["Training logged no steps: no loss or learning-rate curve to draw."]
    assert results["report.figures"] == 4 and not (project / "reports/figures/training_curves.png").exists()


def test_a_constant_learning_rate_and_no_epoch_leave_only_the_loss_curve(project):
    write_inputs(project)
    edit_csv(project / "plots/train/steps.csv", lambda steps: steps.assign(**{"step.lr": 3e-4}))
    (project / "plots/train/epochs.csv").write_text("epoch\n", encoding="utf-8")
    results = report.run(params(project))
    page = page_of(project)
    assert notes_of(page) == [
        "No epoch was logged: no validation loss to mark on the loss curve.",
        "The learning rate stayed at 3.00e-04 for all 40 steps: no curve to draw.",
    ]
    assert results["report.figures"] == 5 and (project / "reports/figures/training_curves.png").exists()


def test_the_old_step_column_names_are_refused_naming_the_new_ones(project):
    write_inputs(project)
    edit_csv(
        project / "plots/train/steps.csv",
        lambda steps: steps.rename(columns=lambda name: name.replace("step.", "train.")),
    )
    with pytest.raises(DataError, match=r"steps.csv: no column step.loss, step.lr; run `embedforge train` again"):
        report.run(params(project))


def test_evaluation_plots_without_usable_rows_are_said_in_words(project):
    write_inputs(project)
    edit_csv(
        project / "plots/eval/separation.csv",
        lambda pairs: pairs.assign(cosine=pairs["cosine"].where(pairs["model"] == "student")),
    )
    edit_csv(
        project / "plots/eval/sts.csv",
        lambda pairs: pairs.assign(gold=pairs["gold"].where(pairs["split"] == STS_SPLITS[0])),
    )
    edit_csv(project / "plots/eval/embedding_map.csv", lambda points: points.assign(x=np.nan))
    results = report.run(params(project))
    page = page_of(project)
    assert notes_of(page) == [
        "No similar or dissimilar pair of the teacher has a cosine: no histogram to draw for it.",
        f"No pair of {STS_SPLITS[1]} has both a gold score and a predicted cosine: no scatter to draw for it.",
        "No sentence of the embedding map has coordinates: no map to draw.",
    ]
    assert results["report.figures"] == 4 and not (project / "reports/figures/embedding_map.png").exists()
    assert "main-news" in page  # the example sentences per label still show what the map would hold


def test_a_causal_lm_run_without_continuations_says_so(project):
    write_inputs(project)
    (project / "plots/train/generations.csv").write_text("epoch,prompt,continuation\n", encoding="utf-8")
    report.run(params(project))
    assert notes_of(page_of(project)) == []
    report.run(params(project, "train.objective=clm"))
    assert notes_of(page_of(project)) == ["The causal LM logged no continuations (no epoch ended): no table to show."]
