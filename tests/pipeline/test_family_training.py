"""The seed families through runs of the real train stage: lattice, dynamic dimensions, the causal LM's
generations, staged phases with their resume, time limit and MLflow runs."""

import itertools
import json
import logging
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import DYNAMIC, LATTICE, STAGED, Killed
from safetensors.torch import load_file

from embedforge.api import load_sentence_transformer
from embedforge.stages import train
from embedforge.training.schedule import resume_ramp, warmup_cosine


def test_a_lattice_batch_too_big_for_memory_is_split_and_a_batch_size_that_fits_is_named(project, ready, caplog):
    student = [*LATTICE, "model.lattice.size=[12, 12, 12]", "model.lattice.channels=8", "train.epochs=1"]
    roomy = train.run(ready(*student))
    needed_mb = roomy["result.memory_estimate_mb"]
    with caplog.at_level(logging.WARNING, logger="embedforge"):
        tight = train.run(ready(*student, f"train.memory_limit_mb={needed_mb * 0.6}"))
    assert roomy["result.micro_batches"] == 1 and tight["result.micro_batches"] > 1
    assert "would fit in one pass" in caplog.text


def test_dynamic_resume_restores_the_grown_dimensions(project, ready):
    train.run(ready(*DYNAMIC, "train.epochs=2", "train.early_stopping.patience=5"))
    state = json.loads(Path("checkpoints/last/state.json").read_text())
    assert state["architecture"]["student_dim"] == 32
    results = train.run(ready(*DYNAMIC, "train.epochs=3", "train.early_stopping.patience=5", "train.resume=true"))
    epochs = pd.read_csv(project / "plots/train/epochs.csv")
    assert epochs["dims"].tolist() == [24, 32, 32] and results["result.epochs"] == 3


def test_causal_lm_logs_perplexity_accuracy_and_generations_per_epoch_to_files_and_mlflow(project, ready):
    from mlflow.tracking import MlflowClient

    from embedforge.stages import run_stage

    prompts = ["train.objective=clm", "train.clm.prompts=[A man is, Two dogs]", "tracking.enabled=true"]
    results = run_stage("train", ready(*prompts))

    epochs = pd.read_csv(project / "plots/train/epochs.csv")
    assert epochs["val.perplexity"].tolist() == pytest.approx([math.exp(v) for v in epochs["val.val_loss"]])
    assert epochs["val.token_accuracy"].between(0, 1).all()
    generations = pd.read_csv(project / "plots/train/generations.csv", keep_default_na=False)
    assert generations[["epoch", "prompt"]].values.tolist() == [
        [1, "A man is"],
        [1, "Two dogs"],
        [2, "A man is"],
        [2, "Two dogs"],
    ]
    assert results["result.perplexity"] == pytest.approx(math.exp(results["result.val_loss"]))
    config = json.loads((project / "models/student/config.json").read_text())
    assert config["is_decoder"] is True  # the saved student keeps its causal attention
    assert load_sentence_transformer(project / "models/student").encode(["A dog runs."]).shape == (1, 64)

    client = MlflowClient(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("embedforge").experiment_id])[0]
    logged = sorted(item.path for item in client.list_artifacts(run.info.run_id, "generations"))
    assert logged == ["generations/epoch_001.txt", "generations/epoch_002.txt"]
    text = Path(client.download_artifacts(run.info.run_id, "generations/epoch_002.txt")).read_text()
    assert text.startswith("A man is -> ") and "\nTwo dogs -> " in text
    assert "val.perplexity" in run.data.metrics and "val.token_accuracy" in run.data.metrics


def test_staged_phases_continue_from_the_previous_best_with_the_resume_ramp(project, ready):
    records, starts = [], {}

    def first_weights_of_each_phase(trainer, state, index) -> None:
        phase = trainer.checkpoints.name
        if phase not in starts:
            starts[phase] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    results = train.run(ready(*STAGED), on_step=records.append, before_micro_batch=first_weights_of_each_phase)

    phases = [records[0]] + [r for previous, r in itertools.pairwise(records) if r.step < previous.step]
    assert [r.step for r in phases] == [1, 1, 1]
    summary = json.loads((project / "metrics/train.json").read_text())
    assert list(summary["phases"]) == ["foundation", "consolidation", "mastery"]
    steps_per_epoch = {
        name: summary["phases"][name]["steps"] // summary["phases"][name]["epochs"] for name in summary["phases"]
    }
    consolidation = records[summary["phases"]["foundation"]["steps"] :][: summary["phases"]["consolidation"]["steps"]]
    total = summary["phases"]["consolidation"]["steps"]
    for record in consolidation[:4]:  # no second warm-up: cosine times the ramp from 0.25 over 2 epochs
        step = record.step - 1
        ramp = resume_ramp(step / steps_per_epoch["consolidation"], 2, 0.25)
        assert record.lr == pytest.approx(1e-3 * warmup_cosine(step, total, 0) * ramp)
    assert consolidation[0].lr == pytest.approx(0.25e-3)

    for previous, phase in (("foundation", "consolidation"), ("consolidation", "mastery")):
        best = load_file(f"checkpoints/{previous}/best/weights.safetensors")
        for name, tensor in starts[phase].items():
            assert torch.equal(tensor, best[f"model.{name}"]), (phase, name)
    curve = pd.read_csv(project / "plots/train/steps.csv")
    assert curve["step"].tolist() == list(range(1, int(results["result.steps"]) + 1))  # numbered on across phases
    assert curve["phase"].unique().tolist() == ["foundation", "consolidation", "mastery"]


def test_staged_training_logs_each_phase_as_a_child_mlflow_run(project, ready):
    from mlflow.tracking import MlflowClient

    from embedforge.stages import run_stage

    run_stage("train", ready(*STAGED, "tracking.enabled=true", "tracking.registered_model=null"))
    client = MlflowClient(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("embedforge").experiment_id])
    parent = next(run for run in runs if run.info.run_name == "train")
    children = {run.info.run_name: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"train.foundation", "train.consolidation", "train.mastery"}
    for child in children.values():
        assert "val.sts_spearman" in child.data.metrics and "phase.examples" in child.data.metrics
    assert (
        children["train.foundation"].data.metrics["phase.examples"]
        < children["train.mastery"].data.metrics["phase.examples"]
    )


def test_lattice_trains_logs_similarity_and_saves_a_loadable_model(project, ready, caplog):
    with caplog.at_level(logging.WARNING, logger="embedforge"):
        results = train.run(ready(*LATTICE))

    assert "the lattice has 36 cells, more than a tenth of the" in caplog.text  # the seed's over-fitting rule
    model = load_sentence_transformer(project / "models/student")
    vectors = model.encode(["A dog runs.", "Two men talk."])
    assert vectors.shape == (2, 64) and abs(float((vectors**2).sum(axis=1).mean()) - 1) < 1e-5
    epochs = pd.read_csv(project / "plots/train/epochs.csv")
    assert epochs["val.similarity"].between(-1, 1).all() and len(epochs) == 2
    summary = json.loads((project / "metrics/train.json").read_text())
    assert summary["similarity_final"] == pytest.approx(epochs["val.similarity"].iloc[-1])
    assert summary["similarity_best"] == pytest.approx(epochs["val.similarity"].max())
    assert results["result.similarity_best"] >= results["result.similarity_final"]


def test_dynamic_dimensions_grow_on_saturation_adapt_the_batch_and_reload(project, ready):
    results = train.run(ready(*DYNAMIC, "train.epochs=3", "train.early_stopping.patience=5"))

    epochs = pd.read_csv(project / "plots/train/epochs.csv")
    assert epochs["dims"].tolist() == [24, 32, 32]  # 16 + 8, + 8, then capped at max_dims
    assert epochs["batch_size"].tolist() == [8 * 16 // 24, 8 * 16 // 32, 8 * 16 // 32]
    assert epochs["sparsity"].between(0, 1).all() and set(epochs["sparsity_in_band"]) <= {0.0, 1.0}
    dims_of_best = [16, 24, 32][int(results["result.best_epoch"]) - 1]  # the dims it trained with, before it grew
    model = load_sentence_transformer(project / "models/student")
    assert model.encode(["A dog runs."]).shape == (1, dims_of_best)
    assert results["result.embedding_dim"] == dims_of_best


def test_embedding_objectives_write_an_empty_generations_table(project, ready):
    train.run(ready("train.epochs=1"))
    assert (project / "plots/train/generations.csv").read_text().strip() == "epoch,prompt,continuation"


def test_train_max_minutes_spans_every_staged_phase(project, ready, caplog):
    with caplog.at_level(logging.WARNING, logger="embedforge"):
        results = train.run(ready(*STAGED, "train.max_minutes=0.0001"))  # 6 ms: out of time after the first step
    summary = json.loads((project / "metrics/train.json").read_text())
    assert list(summary["phases"]) == ["foundation"] and results["result.steps"] == 1
    assert "train.max_minutes ran out before phase consolidation" in caplog.text
    assert (project / "models/student/modules.json").is_file()


def test_staged_resume_skips_finished_phases_and_resumes_the_current_one(project, ready):
    def kill_in_consolidation(record) -> None:
        if Path("checkpoints/foundation/finished.json").is_file() and record.step == 3:
            raise Killed

    with pytest.raises(Killed):
        train.run(ready(*STAGED, "train.checkpoint_every_steps=1"), on_step=kill_in_consolidation)
    assert not Path("checkpoints/consolidation/finished.json").exists()
    foundation = json.loads(Path("checkpoints/foundation/finished.json").read_text())

    resumed = []
    results = train.run(ready(*STAGED, "train.checkpoint_every_steps=1", "train.resume=true"), on_step=resumed.append)
    summary = json.loads((project / "metrics/train.json").read_text())
    assert summary["phases"]["foundation"]["steps"] == foundation["state"]["step"]  # read back, not retrained
    assert summary["phases"]["foundation"]["train_seconds"] > 0
    assert resumed[0].step == 3  # the kill came before step 3 was checkpointed: consolidation redoes it
    assert results["result.steps"] == sum(phase["steps"] for phase in summary["phases"].values())
