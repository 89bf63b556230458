"""Training on several processes (torch.distributed, gloo on CPU), each a real process: the same steps as one
process, one writer, one MLflow run, a kill resumed on another world size, two nodes, an out-of-memory rank."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import QUICK_TRAINING, TINY_STUDENT
from safetensors.torch import load_file
from team_stack import free_port

from embedforge.stages import run_stage, train
from embedforge.training.distributed import World, gather_rows, gathered_candidates
from embedforge.training.losses import InfoNCELoss


def test_two_processes_take_the_same_steps_as_one_with_one_writer_and_one_mlflow_run(ready, project):
    overrides = [*NO_DROPOUT, "train.batch_size=7", "train.epochs=2"]  # 7: the ranks' slices differ in size
    train.run(ready(*overrides))
    one_curve, one_weights = curve_and_weights(project)
    shutil.rmtree(project / "plots")

    cfg = ready(*overrides, "train.nproc_per_node=2", "tracking.enabled=true")
    results = run_stage("train", cfg)

    two_curve, two_weights = curve_and_weights(project)
    assert results["result.world_size"] == 2 and len(one_curve) >= 20
    assert one_curve.index.tolist() == two_curve.index.tolist()
    assert (one_curve - two_curve).abs().max() < 1e-4
    assert largest_difference(one_weights, two_weights) < 1e-4
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns/mlflow.db'}")
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert [run.info.run_name for run in runs] == ["train"] and runs[0].info.status == "FINISHED"
    run = runs[0]
    logged_steps = [point.step for point in client.get_metric_history(run.info.run_id, "step.loss")]
    assert logged_steps == one_curve.index.tolist()  # each step once: one writer
    assert run.data.metrics["result.world_size"] == 2
    spread = [f"epoch.rank_tokens_per_s.{stat}" for stat in ("min", "mean", "max")]
    assert {*spread, "epoch.rank_peak_rss_mb.max"} <= set(run.data.metrics)
    assert run.data.metrics[spread[0]] <= run.data.metrics[spread[1]] <= run.data.metrics[spread[2]]


def test_a_killed_two_process_run_resumes_on_one_process_and_retraces_an_uninterrupted_run(ready, project):
    overrides = [
        *NO_DROPOUT,
        "train.epochs=5",
        "train.checkpoint_every_steps=3",
        "train.resume_warmup.enabled=false",
        "train.held_out_share=0",
    ]
    train.run(ready(*overrides))
    uninterrupted_curve, uninterrupted_weights = curve_and_weights(project)
    shutil.rmtree(project / "checkpoints")
    shutil.rmtree(project / "plots")

    arguments = [*TINY_STUDENT, *QUICK_TRAINING, *overrides, "tracking.enabled=false", "train.nproc_per_node=2"]
    arguments.append(f"precompute.teacher={ready().precompute.teacher}")
    command = [EMBEDFORGE, "train", *(item for argument in arguments for item in ("--set", argument))]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while checkpoint_step(project) < 6 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = checkpoint_step(project)
    time.sleep(1.5)
    assert checkpoint_step(project) == killed_at  # no worker outlived its launcher
    assert 6 <= killed_at < len(uninterrupted_curve)

    results = train.run(ready(*overrides, "train.resume=true"))

    resumed_curve, resumed_weights = curve_and_weights(project)
    assert results["result.world_size"] == 1 and results["result.steps"] == len(uninterrupted_curve)
    assert resumed_curve.index.tolist() == uninterrupted_curve.index.tolist()
    assert (resumed_curve - uninterrupted_curve).abs().max() < 1e-4
    assert largest_difference(resumed_weights, uninterrupted_weights) < 1e-4


def test_two_nodes_meeting_at_a_rendezvous_endpoint_train_as_one_process(ready, project):
    overrides = [*NO_DROPOUT, "train.max_steps=8"]
    train.run(ready(*overrides))
    one_curve, one_weights = curve_and_weights(project)
    shutil.rmtree(project / "plots")

    arguments = [*TINY_STUDENT, *QUICK_TRAINING, *overrides, "tracking.enabled=false", "train.nnodes=2"]
    arguments += [f"train.rdzv_endpoint=127.0.0.1:{free_port()}", f"precompute.teacher={ready().precompute.teacher}"]
    command = [EMBEDFORGE, "train", *(item for argument in arguments for item in ("--set", argument))]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]

    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert all("result.world_size: 2" in output for output in outputs)
    two_curve, two_weights = curve_and_weights(project)
    assert (one_curve - two_curve).abs().max() < 1e-4
    assert largest_difference(one_weights, two_weights) < 1e-4


def test_running_out_of_memory_on_one_rank_backs_off_every_rank_and_keeps_the_steps(ready, project):
    """Distillation across two ranks, accumulating two micro-batches from step 3 on, against one process."""
    overrides = [*NO_DROPOUT, "train.objectives={infonce: 0.0, distill: 1.0}", "train.max_steps=6"]
    train.run(ready(*overrides))
    one_curve, one_weights = curve_and_weights(project)

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(
        rank_running_train, args=(free_port(), project, ready(*overrides), results), nprocs=2, start_method="spawn"
    )
    by_rank = dict(results.get() for _ in range(2))

    assert by_rank[0]["result.micro_batches"] == 2 and by_rank[1] == {}  # rank 0 backed off too; rank 1 wrote nothing
    two_curve, two_weights = curve_and_weights(project)
    assert (one_curve - two_curve).abs().max() < 1e-4
    assert largest_difference(one_weights, two_weights) < 1e-4


NO_DROPOUT = ["model.dropout=0", "train.early_stopping.patience=100"]


EMBEDFORGE = str(Path(sys.executable).parent / "embedforge")


def curve_and_weights(project: Path) -> tuple[pd.Series, dict[str, torch.Tensor]]:
    steps = pd.read_csv(project / "plots/train/steps.csv").set_index("step")["step.loss"]
    return steps, load_file(project / "checkpoints/last/weights.safetensors")


def largest_difference(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> float:
    assert left.keys() == right.keys()
    return max(float((left[name].float() - right[name].float()).abs().max()) for name in left)


def checkpoint_step(project: Path) -> int:
    state = project / "checkpoints/last/state.json"
    try:
        return json.loads(state.read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def rank_running_train(rank: int, port: int, project: Path, cfg, results) -> None:
    """What torchrun would start: one rank of a world of two, in the project directory."""
    os.chdir(project)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    results.put((rank, train.run(cfg, before_micro_batch=out_of_memory_once_on_rank_one)))


def out_of_memory_once_on_rank_one(trainer, state, index) -> None:
    """Rank 1 alone runs out of memory in its first micro-batch of step 3."""
    if trainer.world.rank == 1 and state.step == 2 and state.micro_batches == 1:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")


def gathered_loss_worker(rank: int, port: int, anchors, positives, negatives, results) -> None:
    """One rank: its slice of the batch, InfoNCE over every rank's candidates, the gradients of its inputs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        world = World(rank=rank, size=2)
        halves = [part.tolist() for part in torch.arange(len(anchors)).tensor_split(2)]
        mine = halves[rank]
        counts = bool(mine)
        if not counts:  # a batch smaller than the world: this rank trains on the first example, weight 0
            mine = [0]
        leaves = [tensor[mine].clone().requires_grad_() for tensor in (anchors, positives, negatives)]
        loss = InfoNCELoss(0.05)(*gathered_candidates(*leaves, counts))
        share = len(mine) / len(anchors) if counts else 0.0
        (loss * share).backward()
        summed = torch.tensor([float(loss.detach()) * share])
        dist.all_reduce(summed)
        agreed = world.any(rank == 1, "cpu")
        results.put((rank, float(summed), [leaf.grad.tolist() for leaf in leaves], mine if counts else [], agreed))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("batch", [7, 1])
def test_infonce_over_gathered_candidates_equals_one_process_over_the_whole_batch(batch):
    torch.manual_seed(0)
    anchors, positives, negatives = (torch.randn(batch, 16) for _ in range(3))
    whole = [tensor.clone().requires_grad_() for tensor in (anchors, positives, negatives)]
    expected = InfoNCELoss(0.05)(*whole)
    expected.backward()

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(
        gathered_loss_worker,
        args=(free_port(), anchors, positives, negatives, results),
        nprocs=2,
        start_method="spawn",
    )
    found = sorted(results.get() for _ in range(2))

    assert all(loss == pytest.approx(expected.detach().item(), abs=1e-5) for _, loss, _, _, _ in found)
    assert all(agreed for *_, agreed in found)  # rank 1's flag reached rank 0
    gradients = [torch.zeros_like(tensor) for tensor in whole]
    for _, _, grads, rows, _ in found:
        for total, grad in zip(gradients, grads, strict=True):
            total[rows] += torch.tensor(grad)[: len(rows)]
    for total, leaf in zip(gradients, whole, strict=True):
        torch.testing.assert_close(total, leaf.grad, atol=1e-5, rtol=1e-4)


def uneven_rows_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        local = torch.full((3, 2), float(rank + 1), requires_grad=True)
        rows, offset = gather_rows(local, 3 if rank == 0 else 1)
        (rows * torch.arange(len(rows)).unsqueeze(1)).sum().backward()
        results.put((rank, rows.detach().tolist(), offset, local.grad.tolist()))
    finally:
        dist.destroy_process_group()


def test_gather_rows_keeps_each_ranks_rows_in_order_and_sends_gradients_home():
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(uneven_rows_worker, args=(free_port(), results), nprocs=2, start_method="spawn")
    first, second = sorted(results.get() for _ in range(2))
    assert first[1] == second[1] == [[1.0, 1.0]] * 3 + [[2.0, 2.0]]
    assert (first[2], second[2]) == (0, 3)
    # both ranks weight gathered row i by i, so a row's gradient is 2 i on the rank that owns it
    assert first[3] == [[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]]
    assert second[3] == [[6.0, 6.0], [0.0, 0.0], [0.0, 0.0]]  # its one counted row landed at row 3
