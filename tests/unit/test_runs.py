"""The quality/speed frontier of ``embedforge runs --frontier`` and the report: which points it keeps, and where
they come from in a real MLflow store."""

import numpy as np
from helpers import log_evaluation, log_export

from embedforge import runs
from embedforge.config import EvaluateParams
from embedforge.runs import Point, RunLog, dominates, first_sts_split, frontier, logged_points, pareto_optimal

SPLIT = "stsb/validation"


def names(points) -> list[str]:
    return [point.run for point in points]


def test_the_frontier_keeps_exactly_the_points_nothing_beats():
    points = [
        Point("fast", "static", 0.50, 20.0),
        Point("dup-b", "static", 0.70, 8.0),  # equal to dup-a: neither dominates the other
        Point("dup-a", "static", 0.70, 8.0),
        Point("slower", "dynamic", 0.70, 5.0),  # as good as the duplicates, slower
        Point("best-2x", "encoder", 0.86, 2.0),
        Point("worse-2x", "lattice", 0.80, 2.0),  # as fast as best-2x, worse
        Point("beaten", "encoder", 0.84, 1.5),  # best-2x is better on both
        Point("teacher", "teacher", 0.87, 1.0),
        Point("no-speed", "encoder", 0.99, None),  # would beat everything, were it measured
        Point("undefined", "encoder", float("nan"), 30.0),
    ]
    found = frontier(points)

    assert names(found.points) == ["teacher", "beaten", "best-2x", "worse-2x", "slower", "dup-a", "dup-b", "fast"]
    assert [point.run for point, on in zip(found.points, found.optimal, strict=True) if on] == [
        "teacher",
        "best-2x",
        "dup-a",
        "dup-b",
        "fast",
    ]
    assert names(found.left_out) == ["no-speed", "undefined"]
    by_name = {point.run: point for point in points}
    assert names(found.dominating(by_name["slower"])) == ["dup-a", "dup-b"]
    assert names(found.dominating(by_name["beaten"])) == ["best-2x"] and found.dominating(by_name["fast"]) == []
    shuffled = frontier(reversed(points))
    assert (names(shuffled.points), shuffled.optimal) == (names(found.points), found.optimal)


def test_the_sweep_agrees_with_the_definition_on_random_points_full_of_ties():
    rng = np.random.default_rng(7)
    for _ in range(300):
        points = [
            Point(f"r{index}", "encoder", float(rng.integers(0, 4)) / 4, float(rng.integers(1, 5)))
            for index in range(rng.integers(1, 12))
        ]
        expected = [not any(dominates(other, point) for other in points) for point in points]
        assert pareto_optimal(points) == expected


def test_every_evaluated_student_comes_from_the_store_labelled_and_the_teacher_once(project, monkeypatch):
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    encoder = log_evaluation(uri, "encoder", 0.84, 2.5, started_s=0, teacher=0.860)
    static = log_evaluation(uri, "static", 0.71, 14.0, started_s=10, teacher=0.865)
    no_speed = log_evaluation(uri, "lattice", 0.90, None, started_s=20, teacher=0.867)
    alone = log_evaluation(uri, "dynamic", 0.80, 2.0, started_s=30, in_pipeline=False)  # `embedforge evaluate`
    log = RunLog(uri, "embedforge")
    log.client.create_run(log.experiment_id, run_name="pipeline")  # DVC skipped evaluate: no new student
    monkeypatch.setattr(runs, "PAGE_SIZE", 2)  # several pages of runs

    points = logged_points(log, SPLIT)

    assert points == [
        Point(alone[:8], "dynamic", 0.80, 2.0),
        Point(no_speed[:8], "lattice", 0.90, None),
        Point(static[:8], "static", 0.71, 14.0),
        Point(encoder[:8], "encoder", 0.84, 2.5),
        Point("teacher", "teacher", 0.867, 1.0),  # from the newest evaluate run that scored it
    ]
    found = frontier(points)
    assert [point.run for point, on in zip(found.points, found.optimal, strict=True) if on] == [
        "teacher",
        encoder[:8],
        static[:8],
    ]
    assert names(found.left_out) == [no_speed[:8]]


def test_each_exported_variant_is_a_point_of_its_own_beside_its_student(project):
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    encoder = log_evaluation(uri, "encoder", 0.84, 2.5, started_s=0, teacher=0.860)
    log_export(uri, encoder, {"onnx_fp32": (0.84, 3.4), "onnx_int8": (0.835, 5.9)}, started_s=1)

    points = logged_points(RunLog(uri, "embedforge"), SPLIT)

    assert points == [
        Point(encoder[:8], "encoder", 0.84, 2.5),
        Point(encoder[:8], "encoder, onnx_fp32", 0.84, 3.4),
        Point(encoder[:8], "encoder, onnx_int8", 0.835, 5.9),
        Point("teacher", "teacher", 0.860, 1.0),
    ]
    found = frontier(points)
    on_it = [point.family for point, on in zip(found.points, found.optimal, strict=True) if on]
    assert on_it == ["teacher", "encoder, onnx_fp32", "encoder, onnx_int8"]  # the fp32 graph beats its student


def test_a_row_reads_its_sts_split_from_the_logged_list_else_from_the_schema_default():
    assert first_sts_split({"evaluate.sts_splits": "['sick/test', 'stsb/validation']"}) == "sick/test"
    default = EvaluateParams().sts_splits[0]
    assert first_sts_split({}) == default
    assert first_sts_split({"evaluate.sts_splits": "['sick/te"}) == default  # cut short at MLflow's limit
    assert first_sts_split({"evaluate.sts_splits": "[]"}) == default
