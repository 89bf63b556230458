"""Sharing what the pipeline computed through a DVC remote, so a colleague pulls it instead of recomputing it.

Every cached output in dvc.lock travels: the datasets, teacher embeddings, token ids, checkpoints, the
student and the report; the metrics and plots live in git. Push and pull also carry DVC's run cache
(``--run-cache``). A fresh clone at the same commit that pulls finds ``dvc status`` clean and
``dvc repro`` a no-op. ``embedforge run`` never pushes by itself: what leaves the machine is the user's
decision.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from embedforge.errors import UserError

PLUGINS = {  # remote URL scheme -> DVC's plugin module, and what installs it
    "s3": ("dvc_s3", "pip install 'embedforge[s3]'"),
    "gs": ("dvc_gs", "pip install dvc-gs"),
    "azure": ("dvc_azure", "pip install dvc-azure"),
}


def dvc_executable() -> str:
    """The dvc beside this interpreter (the project's virtual environment), else the one on PATH."""
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None:
        raise UserError("dvc is not installed in this environment; install embedforge with its dependencies")
    return dvc


def _require_project() -> None:
    if not Path(".dvc").is_dir():
        raise UserError(f"no .dvc/ in {Path.cwd()}: run this from the project's root (or `dvc init` there first)")


def _require_plugin(url: str) -> None:
    """A remote whose plugin is missing fails at the first push; say so when it is added, with the fix."""
    scheme = urlparse(url).scheme
    if scheme in PLUGINS and importlib.util.find_spec(PLUGINS[scheme][0]) is None:
        module, install = PLUGINS[scheme]
        raise UserError(f"{scheme}:// remotes need DVC's {module.replace('_', '-')} plugin: {install}")


def _dvc(*args: str, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    """Run dvc; a failure is the user's to act on, in DVC's own words (shown above when not captured)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([dvc_executable(), *args], capture_output=capture, text=True, env=env, check=False)
    if check and done.returncode:
        detail = f": {(done.stderr or done.stdout).strip()}" if capture else " (its message is above)"
        error = UserError(f"dvc {' '.join(args[:2])} failed{detail}")
        error.exit_code = done.returncode
        raise error
    return done


def add(name: str, url: str, *, default: bool, endpoint_url: str | None, local: bool, force: bool) -> None:
    """``dvc remote add`` with the plugin checked and an S3-compatible endpoint (MinIO, moto, Ceph) set.

    ``local`` writes .dvc/config.local, which git ignores: the place for a remote only this machine uses.
    Credentials never go through here: DVC reads the cloud's usual environment and profile files, or
    ``dvc remote modify --local NAME access_key_id ...``.
    """
    _require_project()
    _require_plugin(url)
    scope = ["--local"] if local else []
    _dvc("remote", "add", *scope, *(["--default"] if default else []), *(["--force"] if force else []), name, url)
    if endpoint_url:
        _dvc("remote", "modify", *scope, name, "endpointurl", endpoint_url)


def remotes() -> dict[str, str]:
    """The configured remotes by name, and their URLs (every config level, as DVC merges them)."""
    _require_project()
    listed = _dvc("remote", "list").stdout  # "NAME<TAB>URL", the default one followed by " (default)"
    pairs = (line.split(maxsplit=1) for line in listed.splitlines() if line.strip())
    return {name: url.removesuffix(" (default)") for name, url in pairs}


def _require_remote(name: str | None) -> None:
    configured = remotes()
    if name is not None and name not in configured:
        known = ", ".join(sorted(configured)) or "none"
        raise UserError(f"no DVC remote named {name!r} (configured: {known}); add it with `embedforge remote add`")
    if name is None:
        default = _dvc("remote", "default", check=False)
        if default.returncode or not default.stdout.strip():
            raise UserError("no default DVC remote: `embedforge remote add NAME URL` makes one (or pass --remote NAME)")
        name = default.stdout.strip()
    _require_plugin(configured[name])


def transfer(direction: str, remote: str | None, targets: list[str], jobs: int | None) -> None:
    """``dvc push`` or ``dvc pull`` of ``targets`` (stages or outputs; all by default) and the run cache."""
    _require_project()
    _require_remote(remote)
    options = [*(["--remote", remote] if remote else []), *(["--jobs", str(jobs)] if jobs else [])]
    _dvc(direction, "--run-cache", *options, *targets, capture=False)
