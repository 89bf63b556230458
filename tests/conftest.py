"""Shared fixtures: a small slice of the local mirror, and a project directory to run stages in.

The mirror's location comes from EMBEDFORGE_MIRROR (CI sets it to ../shared/data);
it is read once here and removed from the environment so that each test decides
its own source explicitly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from embedforge.config import MIRROR_ENV, Params, load_params

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MIRROR = os.environ.pop(MIRROR_ENV, None)
SLICE_ROWS = 120
MIRROR_SPLITS = {
    "snli": ["train", "validation", "test"],
    "stsb": ["train", "validation"],
    "sick": ["train", "validation"],
}


@pytest.fixture(scope="session")
def shared_mirror() -> Path:
    if not SHARED_MIRROR or not Path(SHARED_MIRROR).is_dir():
        pytest.fail(f"set {MIRROR_ENV} to the local dataset mirror (e.g. ../shared/data) to run the tests")
    return Path(SHARED_MIRROR)


@pytest.fixture(scope="session")
def small_mirror(shared_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SLICE_ROWS rows of every split of the shared mirror, same layout and columns."""
    root = tmp_path_factory.mktemp("mirror")
    for dataset, splits in MIRROR_SPLITS.items():
        (root / dataset).mkdir()
        for split in splits:
            frame = pd.read_parquet(shared_mirror / dataset / f"{split}.parquet").head(SLICE_ROWS)
            frame.to_parquet(root / dataset / f"{split}.parquet", index=False)
    return root


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow sqlite store: creating one takes seconds, copying it takes none."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_mlflow_db: Path) -> Path:
    """A working directory holding the repository's params.yaml and an empty default MLflow store."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow.set_tracking_uri exports it; restored after the test
    return tmp_path


@pytest.fixture
def mirror_params(project: Path, small_mirror: Path):
    """Build params for a run on the small mirror, with extra ``--set`` overrides."""

    def build(*overrides: str) -> Params:
        return load_params(
            project / "params.yaml",
            ["download.source=mirror", f"download.mirror={small_mirror}", "tracking.enabled=false", *overrides],
        )

    return build


def leftovers(root: Path) -> list[Path]:
    """Temporary files or directories a failed stage must not leave behind."""
    return [path for path in root.rglob(".*") if path.name.endswith(".tmp")]
