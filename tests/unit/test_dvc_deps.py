"""dvc.yaml declares what each stage really depends on: the code it imports and the params it reads.

A stage's code is every embedforge module its stage module imports, transitively, at module level or inside
a function (read from the source, so lazy imports count), plus the model families a stage reaches through the
family registry (entry points, loaded by name), and each family's models, imported inside its hooks.
Plumbing that decides nothing about a stage's outputs is left out: the config package (its defaults reach DVC
through the resolved params file, value by value), errors, files, paths, tracking, memory, dvcfile and the
package roots, and what only they import.
"""

import ast
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT

from embedforge.config import Params, flatten
from embedforge.families import FAMILIES
from embedforge.paths import RESOLVED_PARAMS_PATH, VALIDATION_RESULTS_PATH
from embedforge.stages import STAGES

SRC = REPO_ROOT / "src"
PLUMBING = {
    "embedforge",
    "embedforge.api",
    "embedforge.errors",
    "embedforge.files",
    "embedforge.paths",
    "embedforge.tracking",
    "embedforge.memory",
    "embedforge.dvcfile",
    "embedforge.stages",
}
GATED = ("precompute", "tokenize", "train", "evaluate")


def module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imports_of(name: str) -> set[str]:
    """The embedforge modules ``name`` imports anywhere in its source, with their parent packages."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module_file(name).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("embedforge")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedforge"):
            found.add(node.module)
            if node.module == "embedforge.families":
                found |= {type(family).__module__ for family in FAMILIES.values()}
            for alias in node.names:
                if module_file(f"{node.module}.{alias.name}"):
                    found.add(f"{node.module}.{alias.name}")
    parents = {".".join(module.split(".")[:depth]) for module in found for depth in range(1, module.count(".") + 1)}
    return found | parents


def stage_code(stage: str) -> set[Path]:
    seen, todo = set(), [f"embedforge.stages.{stage}"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            if module not in PLUMBING:  # what only plumbing imports (tracking's redact) is plumbing too
                todo += imports_of(module) - seen
    decisive = {m for m in seen if m not in PLUMBING and not m.startswith("embedforge.config")}
    return {module_file(m).relative_to(REPO_ROOT) for m in decisive if not is_docstring_only(module_file(m))}


def is_docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def dvc_stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def declared_code(stage: str) -> dict[str, set[Path]]:
    """Each declared src/ dep and the Python files it covers."""
    covered = {}
    for dep in dvc_stages()[stage]["deps"]:
        path = REPO_ROOT / dep
        if dep.startswith("src/"):
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            covered[dep] = {file.relative_to(REPO_ROOT) for file in files}
    return covered


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_declares_exactly_the_code_it_runs(stage):
    needed = stage_code(stage)
    declared = declared_code(stage)
    covered = set().union(*declared.values())
    assert not needed - covered, f"{stage}: undeclared code deps {sorted(map(str, needed - covered))}"
    unused = [dep for dep, files in declared.items() if not files & needed]
    assert not unused, f"{stage}: declared code it does not import: {unused}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_reads_its_params_from_the_resolved_file(stage):
    """Params given as the resolved values (preset and schema defaults included), not params.yaml's text."""
    declared = dvc_stages()[stage]["params"]
    assert [list(entry) for entry in declared] == [[str(RESOLVED_PARAMS_PATH)]], declared


@pytest.mark.parametrize("stage", GATED)
def test_gated_stages_depend_on_the_validation_results(stage):
    assert str(VALIDATION_RESULTS_PATH) in dvc_stages()[stage]["deps"]


def declared_param_keys(stage: str) -> list[str]:
    return [key for entry in dvc_stages()[stage].get("params", []) for key in next(iter(entry.values()))]


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_declared_param_names_a_resolved_param(stage):
    """A key in dvc.yaml is a dotted name (or section) of the resolved params, as MLflow logs them."""
    resolved = flatten(Params().to_dict())
    unknown = [
        key
        for key in declared_param_keys(stage)
        if not any(name == key or name.startswith(f"{key}.") for name in resolved)
    ]
    assert not unknown, f"{stage}: dvc.yaml names params the schema does not have: {unknown}"


def test_precompute_reads_the_chunking_params_and_train_its_whole_section():
    """Precompute embeds a long text as chunks of tokenize.max_length tokens sharing tokenize.chunk_overlap; train
    reads all of train (train.max_chunks_per_text among it)."""
    assert {"tokenize.max_length", "tokenize.chunk_overlap"} <= set(declared_param_keys("precompute"))
    assert "train" in declared_param_keys("train")
