"""The export stage on a tiny student: ONNX fp32 and int8 graphs checked against PyTorch, the model card, and a
serving process that never imports torch. Every family exports or says why in one line."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from common import build_tiny_sentence_model
from helpers import DYNAMIC, LATTICE, TINY_STUDENT

from embedforge import load_model
from embedforge.api import load_sentence_transformer
from embedforge.config import load_params
from embedforge.errors import UserError
from embedforge.families import family as family_of
from embedforge.models import teacher as teachers
from embedforge.models.onnx_student import OnnxStudent
from embedforge.paths import TOKENS_DIR
from embedforge.stages import evaluate, export, report
from embedforge.stages.export import GRAPH_FILES, write_graphs

QUICK = ["evaluate.speed_sentences=60", "evaluate.speed_rounds=1", "evaluate.map_sentences=40"]
SENTENCES = ["A dog runs.", "Three people sit on a long wooden bench near the river at dusk.", "Hi"]
TRAINING = {"steps": 12, "epochs": 2, "best_epoch": 2, "train_seconds": 3.5}


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> Path:
    return build_tiny_sentence_model(tmp_path_factory.mktemp("tiny_student"), seed=1)


@pytest.fixture
def trained(project: Path, validated_data: Path, tiny_teacher: Path, tiny_student: Path):
    """A project whose tiny student was trained (train.json); returns a params builder."""
    shutil.copytree(validated_data, project / "data")
    shutil.copytree(tiny_student, project / "models/student")
    (project / "metrics").mkdir()
    (project / "metrics/train.json").write_text(json.dumps(TRAINING))

    def params(*overrides: str):
        settings = ["tracking.enabled=false", f"precompute.teacher={tiny_teacher}", *QUICK, *overrides]
        return load_params(project / "params.yaml", settings)

    return params


@pytest.fixture
def evaluated(trained):
    """The trained project, evaluated: what export starts from."""
    cfg = trained()
    evaluate.run(cfg)
    return cfg


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_export_writes_checked_graphs_the_tokenizer_and_the_card(project, evaluated, tiny_teacher):
    results = export.run(evaluated)

    exported = project / "models/export"
    assert sorted(path.name for path in exported.iterdir()) == [
        "README.md",
        "model.onnx",
        "model_int8.onnx",
        "onnx.json",
        "tokenizer.json",
    ]
    exports = json.loads((project / "metrics/export.json").read_text())
    figures = {**exports["variants"], "pytorch": exports["pytorch"]}
    assert figures["onnx_fp32"]["cosine_min"] >= 0.9999
    assert 0.9 < figures["onnx_int8"]["cosine_min"] <= figures["onnx_int8"]["cosine_mean"] < 1.0
    assert figures["onnx_int8"]["disk_bytes"] < figures["onnx_fp32"]["disk_bytes"]
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    pytorch = figures["pytorch"]["sts"]["stsb/validation"]["spearman"]
    assert pytorch == pytest.approx(evaluation["student"]["sts"]["stsb/validation"]["spearman"], abs=1e-6)
    assert figures["onnx_fp32"]["sts"]["stsb/validation"]["spearman"] == pytest.approx(pytorch, abs=1e-3)
    for name in ("onnx_fp32", "onnx_int8"):  # beside the PyTorch student here, times its ratio to the teacher
        assert figures[name]["speed_ratio"] == pytest.approx(
            figures[name]["speed_vs_pytorch"] * evaluation["speed_ratio"]
        )
    assert results["export.variants.onnx_int8.speed_ratio"] == figures["onnx_int8"]["speed_ratio"]

    card = (exported / "README.md").read_text()
    matter = front_matter(card)
    assert matter["teacher"]["model"] == str(tiny_teacher)
    [index] = matter["model-index"]
    logged = {
        (result["dataset"]["name"], metric["type"]): metric["value"]
        for result in index["results"]
        for metric in result["metrics"]
    }
    assert logged == {
        (split, f"{measure}_cosine"): pytest.approx(scores[measure], abs=1e-4)
        for split, scores in evaluation["student"]["sts"].items()
        for measure in ("pearson", "spearman")
    }
    assert "Unknown" not in card and "| onnx_int8 | `model_int8.onnx` |" in card
    assert 'load_model("models/export", backend="onnx")' in card

    student = load_model(project / "models/student")
    for variant in GRAPH_FILES:
        served = load_model(exported, backend="onnx", variant=variant)
        cosine = (served.embed(SENTENCES) * student.embed(SENTENCES)).sum(axis=1)
        assert cosine.min() > (0.9999 if variant == "onnx_fp32" else 0.9)


def test_the_export_serves_long_texts_in_a_process_that_never_imports_torch(project, evaluated):
    export.run(evaluated)
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "transformers", "sentence_transformers", "pyarrow", "pandas"):
                    raise ImportError(f"{name} is not installed in a serving image")

        sys.meta_path.insert(0, NoTorch())
        from embedforge import load_model

        model = load_model(sys.argv[1], backend="onnx", variant="onnx_int8")
        filler = " ".join(["The committee discussed the quarterly budget at length."] * 40)
        long_text = filler + " A dog runs through the snow."
        vectors, owner = model.chunk_vectors(["A dog runs.", long_text])
        [match] = model.search("A dog runs through the snow.", ["It is raining.", long_text], top_k=1)
        print(json.dumps({"owner": owner.tolist(), "match": match.text == long_text,
                          "torch": "torch" in sys.modules, "shape": list(model.embed(["a", "b"]).shape)}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(project / "models/export")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served["owner"] == [0, 1, 1, 1] and served["match"] is True
    assert served["torch"] is False and served["shape"] == [2, 64]


def test_a_graph_that_disagrees_with_pytorch_fails_the_stage_and_keeps_the_old_export(project, evaluated):
    export.run(evaluated)
    before = (project / "models/export/model.onnx").read_bytes()
    strict = evaluated.model_copy(update={"export": evaluated.export.model_copy(update={"min_cosine": 1.000001})})
    with pytest.raises(UserError, match=r"the ONNX graph disagrees with the PyTorch student .*export.min_cosine"):
        export.run(strict)
    assert (project / "models/export/model.onnx").read_bytes() == before


def test_load_model_refuses_an_unknown_backend_or_a_missing_export(tmp_path):
    with pytest.raises(UserError, match="backend must be one of torch, onnx, got 'tf'"):
        load_model(tmp_path, backend="tf")
    with pytest.raises(UserError, match="no onnx.json here; point at the output of `embedforge export`"):
        load_model(tmp_path, backend="onnx")


FAMILIES = {  # a tiny student of each family
    "encoder": TINY_STUDENT,
    "static": ["model.kind=static", "model.init=scratch", "model.static.dim=32"],
    "lattice": [*TINY_STUDENT, *LATTICE],
    "dynamic": [*TINY_STUDENT, *DYNAMIC],
}


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_every_family_exports_a_graph_that_computes_its_student(project, ready, tmp_path, kind):
    cfg = ready(*FAMILIES[kind])
    family = family_of(cfg.model.kind)
    teacher = teachers.resolve(cfg.precompute.teacher).path
    built = family.build(cfg.model, TOKENS_DIR / "tokenizer", cfg.tokenize.max_length, teacher, cfg.seed)
    family.save(built, tmp_path / "student")
    student = load_sentence_transformer(tmp_path / "student").eval()
    traced = load_sentence_transformer(tmp_path / "student").eval()
    (tmp_path / "export").mkdir()
    write_graphs(traced, tmp_path / "export", list(GRAPH_FILES), family.model_inputs(traced))
    reference = student.encode(SENTENCES, convert_to_numpy=True)
    served = OnnxStudent(tmp_path / "export", "onnx_fp32").encode(SENTENCES)
    cosine = (served * reference).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999


def test_a_student_that_does_not_trace_is_not_exported_and_says_why_in_one_line(project, evaluated, monkeypatch):
    import torch

    def untraceable(model):
        def inputs(input_ids, attention_mask):  # aten::isin has no ONNX export at opset 17
            kept = torch.isin(input_ids, torch.tensor([0]))
            return {"input_ids": input_ids, "attention_mask": attention_mask * ~kept}

        return inputs

    monkeypatch.setattr(type(family_of("encoder")), "model_inputs", lambda self, model: untraceable(model))
    results = export.run(evaluated)

    reason = json.loads((project / "metrics/export.json").read_text())["not_exported"]
    assert reason.startswith("model.kind encoder does not export to ONNX: ") and "\n" not in reason
    assert "aten::isin" in reason and results["export.not_exported"] == reason
    assert sorted(path.name for path in (project / "models/export").iterdir()) == ["README.md"]
    assert f"Not exported to ONNX: {reason}" in (project / "models/export/README.md").read_text()


def test_a_corpus_without_sts_splits_is_judged_by_its_agreement_with_the_teacher(project, trained):
    cfg = trained("evaluate.sts_splits=[]", "train.held_out_share=0.5", "evaluate.agreement_sentences=30")
    evaluate.run(cfg)
    export.run(cfg)
    report.run(cfg)

    evaluation = json.loads((project / "metrics/eval.json").read_text())
    [quality, speed] = evaluation["verdict"]["checks"]
    assert quality["goal"] == "Spearman of pairwise cosines, student vs teacher, held-out training text"
    assert quality["value"] == evaluation["agreement"]["pairwise_spearman"] and evaluation["agreement"]["units"] == 30
    assert evaluation["verdict"]["split"] is None and speed["goal"] == "speed, student ÷ teacher"
    exported = json.loads((project / "metrics/export.json").read_text())
    assert exported["variants"]["onnx_fp32"]["sts"] == {} and exported["variants"]["onnx_fp32"]["cosine_min"] >= 0.9999
    page = (project / "reports/index.html").read_text()
    assert "reproduces the teacher&#39;s pairwise cosines on held-out training text" in page
    assert "No STS split was scored (evaluate.sts_splits is empty): no scatter to draw." in page
