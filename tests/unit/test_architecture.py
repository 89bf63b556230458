"""The house's layers hold: no import circle in ``src/``, and no package imports a layer above it.

Imports are read from the source (``ast``), wherever they stand: at module level or inside a function, so a
lazy import cannot hide an arrow. An import under ``TYPE_CHECKING`` never runs, so it closes no circle, but it
must respect the layers all the same. ARCHITECTURE.md draws them.
"""

import ast
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from helpers import REPO_ROOT

SRC = REPO_ROOT / "src"

# What each package must never import: the layers above it (ARCHITECTURE.md).
FORBIDDEN = {
    "embedforge.config": (
        "stages",
        "training",
        "models",
        "data",
        "families",
        "objectives",
        "evaluation",
        "embeddings",
        "report",
    ),
    "embedforge.data": ("stages", "training", "models", "families", "objectives", "embeddings"),
    "embedforge.models": ("stages", "training", "families", "objectives"),
    "embedforge.training": ("stages", "families", "objectives"),
    "embedforge.families": ("stages",),
    "embedforge.objectives": ("stages",),
}
# training sees students only as nn modules: of models/ it may use the package's shared helpers, no family module.
TRAINING_MAY_USE_OF_MODELS = {"embedforge.models"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return (path / "__init__.py").is_file() or path.with_suffix(".py").is_file()


def type_checking_blocks(tree: ast.Module) -> set[ast.AST]:
    """The statements under ``if TYPE_CHECKING:``."""
    return {
        inner
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for statement in node.body
        for inner in ast.walk(statement)
    }


def imports_of(path: Path, runtime_only: bool = False) -> set[str]:
    """The embedforge modules ``path`` imports, anywhere in it (``from package import module`` names the module);
    with ``runtime_only``, not those under ``TYPE_CHECKING``."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = type_checking_blocks(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("embedforge")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedforge"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= {name for name in submodules if is_module(name)} or {node.module}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(SRC.rglob("*.py"))}


@pytest.fixture(scope="module")
def runtime_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path, runtime_only=True) for path in sorted(SRC.rglob("*.py"))}


def test_no_import_circle(runtime_graph):
    """Depth-first search from every module; a module met again on the current path closes a circle."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for imported in sorted(runtime_graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(runtime_graph):
        visit(module, [])


def test_no_package_imports_a_layer_above_it(graph):
    wrong = []
    for module, imported in graph.items():
        for package, above in FORBIDDEN.items():
            if module != package and not module.startswith(package + "."):
                continue
            for target in imported:
                layer = target.split(".")[1] if target.count(".") else ""
                if layer in above:
                    wrong.append(f"{module} imports {target}")
                if package == "embedforge.training" and layer == "models" and target not in TRAINING_MAY_USE_OF_MODELS:
                    wrong.append(f"{module} imports {target}: training knows no model family")
    assert wrong == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def launch():\n    from embedforge.stages import train\n", encoding="utf-8")
    assert imports_of(module) == {"embedforge.stages.train"}


def test_type_only_imports_count_for_the_layers_not_for_circles(tmp_path):
    module = tmp_path / "typed.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from embedforge.stages import train\n",
        encoding="utf-8",
    )
    assert imports_of(module) == {"embedforge.stages.train"} and imports_of(module, runtime_only=True) == set()


def test_config_finds_the_families_as_plugins_without_naming_a_family_module():
    """The schema's family registry is filled from the installed entry points: no module of config names the
    families package, not even as a string for importlib, so no arrow runs up from the bottom layer."""
    from embedforge.config.model import ENTRY_POINT_GROUP, families

    named = [path for path in (SRC / "embedforge/config").rglob("*.py") if "embedforge.families" in path.read_text()]
    assert named == []
    built_in = {"encoder", "dynamic", "lattice", "static"}
    assert built_in <= set(families())
    assert {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)} == built_in
