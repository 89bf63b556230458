"""The train stage run for real on a 2-layer, 64-wide student of the tiny teacher and the small mirror's pairs:
what it saves and logs, the schedule, early stopping, precision, out of memory, a diverged loss, resume."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import Killed
from sentence_transformers import SentenceTransformer

from embedforge.data.held_out import held_out
from embedforge.files import sha256_file
from embedforge.stages import train
from embedforge.training.divergence import TrainingDiverged


def test_resumed_run_retraces_the_uninterrupted_loss_trajectory(ready):
    overrides = ["train.resume_warmup.enabled=false", "train.loader_workers=1", "train.epochs=3"]
    uninterrupted = losses_of(ready(*overrides))

    def kill_after_step_7(step) -> None:
        if step.step == 7:
            raise Killed

    with pytest.raises(Killed):
        train.run(ready(*overrides), on_step=kill_after_step_7)
    state = json.loads(Path("checkpoints/last/state.json").read_text())
    assert state["step"] == 6  # checkpoints every 2 steps: step 7 was lost with the kill
    resumed = losses_of(ready(*overrides, "train.resume=true"))

    assert sorted(resumed) == [s for s in sorted(uninterrupted) if s > 6]
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], abs=1e-5), step
    curve = pd.read_csv("plots/train/steps.csv")
    assert curve["step"].tolist() == sorted(uninterrupted)


def test_resume_ramps_the_learning_rate_from_a_fifth(ready):
    full, resumed = {}, {}
    train.run(ready("train.epochs=3"), on_step=lambda step: full.update({step.step: step.lr}))
    steps_per_epoch = max(full) // 3

    def kill_in_second_epoch(step) -> None:
        if step.step == steps_per_epoch + 1:
            raise Killed

    with pytest.raises(Killed):
        train.run(ready("train.epochs=3"), on_step=kill_in_second_epoch)
    train.run(
        ready("train.epochs=3", "train.resume=true", "train.resume_warmup.epochs=1"),
        on_step=lambda step: resumed.update({step.step: step.lr}),
    )
    first = steps_per_epoch + 1
    assert min(resumed) == first
    assert resumed[first] == pytest.approx(0.2 * full[first])
    assert 0.2 * full[first + 1] < resumed[first + 1] < full[first + 1]
    assert resumed[first + steps_per_epoch] == pytest.approx(full[first + steps_per_epoch])


def losses_of(cfg, **hooks) -> dict[int, float]:
    seen: dict[int, float] = {}

    def record(step) -> None:
        seen[step.step] = step.loss_value

    train.run(cfg, on_step=record, **hooks)
    return seen


def test_train_saves_a_sentence_transformer_checkpoints_metrics_and_curves(project, ready, capsys):
    results = train.run(ready())

    assert "epoch 2/2" in capsys.readouterr().err  # the progress bar

    model = SentenceTransformer(str(project / "models/student"), device="cpu")
    assert model.encode(["A dog runs.", "Two men talk."]).shape == (2, 64)
    assert (project / "models/student/model.safetensors").is_file()
    for name in ("last", "best"):
        files = {p.name for p in (project / "checkpoints" / name).iterdir()}
        assert files == {"weights.safetensors", "optimizer.pt", "rng.safetensors", "state.json", "history.json"}
    summary = json.loads((project / "metrics/train.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == results["result.steps"] > 2
    assert -1 <= summary["sts_spearman"] <= 1 and summary["val_loss"] > 0
    assert -1 <= summary["initial_sts_spearman"] <= 1 and summary["initial_sts_spearman"] != summary["sts_spearman"]
    phases = [summary[f"time.{phase}_pct"] for phase in ("data", "forward", "loss", "backward", "optimizer")]
    assert sum(phases) == pytest.approx(100) and min(phases) >= 0
    assert summary["tokens_per_s"] > summary["examples_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["memory_estimate_mb"] > 0 and summary["micro_batches"] == 1
    steps = pd.read_csv(project / "plots/train/steps.csv")
    epochs = pd.read_csv(project / "plots/train/epochs.csv")
    assert steps["step"].tolist() == list(range(1, summary["steps"] + 1))
    assert {"step.loss", "step.lr", "step.tokens_per_s", "step.loss.infonce", "step.loss.distill"} <= set(steps)
    assert epochs["epoch"].tolist() == [1, 2] and "val.sts_spearman" in epochs


def test_training_improves_the_student_over_its_fresh_initialisation(ready):
    fresh: dict[str, float] = {}

    def validate_the_fresh_student(trainer, state, index) -> None:
        if not fresh:
            fresh.update(trainer.validate(trainer))

    losses = []
    results = train.run(
        ready(), before_micro_batch=validate_the_fresh_student, on_step=lambda step: losses.append(step.loss_value)
    )
    # measured at seeds 42, 1 and 7: the last steps' loss is 0.13-0.38 of the first's, val_loss 2.24 -> 1.93-2.03
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])
    assert results["result.val_loss"] < fresh["val_loss"] - 0.1


def test_learning_rate_warms_up_then_decays(ready):
    rates = []
    train.run(ready("train.warmup_ratio=0.25"), on_step=lambda step: rates.append(step.lr))
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(1e-3)
    assert rates[:peak] == sorted(rates[:peak]) and rates[peak:] == sorted(rates[peak:], reverse=True)
    assert 0 < peak < len(rates) - 1 and rates[-1] < 0.1 * max(rates)


def test_out_of_memory_halves_the_micro_batch_and_finishes(ready):
    failures = []

    def fail_once_at_step_3(trainer, state, index) -> None:
        if state.step == 2 and not failures:
            failures.append(state.micro_batches)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    results = train.run(ready(), before_micro_batch=fail_once_at_step_3)
    assert failures == [1] and results["result.micro_batches"] == 2
    curve = pd.read_csv("plots/train/steps.csv")
    assert curve["step"].tolist() == list(range(1, int(results["result.steps"]) + 1))


def test_nan_loss_stops_naming_step_and_batch_and_leaves_best_intact(ready):
    seen = {}

    def poison_first_step_of_epoch_2(trainer, state, index) -> None:
        if state.epoch == 1 and state.batches_done == 0 and not seen:
            seen["step"] = state.step + 1
            seen["best"] = sha256_file(Path("checkpoints/best/weights.safetensors"))
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.fill_(float("nan"))

    with pytest.raises(TrainingDiverged) as diverged:
        train.run(ready("train.epochs=3"), before_micro_batch=poison_first_step_of_epoch_2)
    message = str(diverged.value)
    assert f"at step {seen['step']} (epoch 2, batch 1 of" in message and "checkpoints/best is untouched" in message
    assert sha256_file(Path("checkpoints/best/weights.safetensors")) == seen["best"]
    assert json.loads(Path("checkpoints/last/state.json").read_text())["step"] == seen["step"] - 1


def test_distillation_alone_trains_on_every_distinct_training_sentence_but_the_held_out_ones(ready):
    cfg = ready("train.objectives={infonce: 0.0, distill: 1.0}", "train.epochs=1")
    results = train.run(cfg)
    token_ids = set()
    for dataset in ("snli", "stsb"):
        table = pd.read_parquet(f"data/tokens/{dataset}/train.parquet", columns=["sentence_id", "chunk"])
        token_ids |= set(table.loc[table["chunk"] == 0, "sentence_id"])
    ids = np.array(sorted(token_ids))
    kept = int((~held_out(ids, cfg.train.held_out_share, cfg.seed)).sum())
    assert 0 < kept < len(ids) and results["result.steps"] == -(-kept // 8)
    assert results["result.val_loss"] > 0


def test_early_stopping_ends_training_when_the_score_stops_improving(ready):
    results = train.run(ready("train.epochs=5", "train.early_stopping.patience=1", "train.early_stopping.min_delta=5"))
    assert results["result.epochs"] == 2 and results["result.best_epoch"] == 1


def test_training_is_logged_to_mlflow_with_steps_epochs_and_the_model(project, ready):
    from mlflow.tracking import MlflowClient

    from embedforge.stages import run_stage

    run_stage("train", ready("tracking.enabled=true", "train.epochs=1"))
    client = MlflowClient(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("embedforge").experiment_id])[0]
    assert run.data.params["train.lr"] == "0.001" and run.data.params["train.early_stopping.patience"] == "2"
    losses = client.get_metric_history(run.info.run_id, "step.loss")
    assert [m.step for m in losses] == list(range(1, len(losses) + 1)) and len(losses) > 2
    for metric in (
        "val.sts_spearman",
        "time.backward_pct",
        "epoch.tokens_per_s",
        "epoch.peak_rss_mb",
        "memory.estimate_mb",
        "step.tokens_per_s",
    ):
        assert metric in run.data.metrics, metric
    assert not set(run.data.metrics) & set(run.data.params)  # no metric shadows a param
    models = client.search_logged_models([run.info.experiment_id])
    assert [m.name for m in models] == ["student"]


def test_every_epoch_logs_its_last_step_even_between_logging_intervals(project, ready):
    train.run(ready("train.log_every_steps=1000"))
    steps = pd.read_csv(project / "plots/train/steps.csv")
    summary = json.loads((project / "metrics/train.json").read_text())
    assert steps["epoch"].tolist() == [1, 2] and steps["step"].iloc[-1] == summary["steps"]


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_precision_sets_the_dtype_the_forward_pass_computes_in(ready, precision, dtype):
    output_dtypes, in_training_steps, weight_dtypes = set(), set(), set()

    def watch_the_first_query_projection(trainer, state, index) -> None:
        if not weight_dtypes:
            query = trainer.model[0].auto_model.encoder.layer[0].attention.self.query
            query.register_forward_hook(lambda module, inputs, output: output_dtypes.add(output.dtype))
            weight_dtypes.add(query.weight.dtype)

    results = train.run(
        ready(f"train.precision={precision}", "train.max_steps=2"),
        before_micro_batch=watch_the_first_query_projection,
        on_step=lambda step: in_training_steps.update(output_dtypes),  # not model.save's model card, run in fp32
    )
    assert in_training_steps == {dtype}
    assert weight_dtypes == {torch.float32}  # mixed precision: the weights the optimizer updates stay fp32
    assert math.isfinite(results["result.val_loss"])
