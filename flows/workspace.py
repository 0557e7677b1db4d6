"""The workspace: a folder with params.yaml and dvc.yaml that DVC manages (no git needed).

Generated data lives under `data/` (DVC outputs), run records under `runs/`, the default
SQLite registry and the de-identification salt under `.medgate/`.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import merged
from flows.children import start_child, stop_child

# The project folder: its dvc.yaml, .dvc config, params.yaml and components/ seed new workspaces.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Ingest's folder: written by the flow (its source is a run argument) and `dvc add`ed, so it is no
# dvc.yaml stage; prepare's entry there reads it. Every other stage folder comes from dvc.yaml (`stage_dir`).
INGEST_DIR = "data/ingest"


class WorkspaceError(RuntimeError):
    pass


class StageError(RuntimeError):
    """A DVC stage failed; the message names the stage and ends with its last output lines."""


@dataclass(frozen=True)
class StageRun:
    stage: str
    seconds: float
    reused: bool


def tool_env() -> dict[str, str]:
    """Environment for DVC and its stage commands: this interpreter's tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _dvc(workspace: Path, *args: str, echo: bool = False) -> tuple[int, list[str]]:
    """Run `dvc ARGS` in the workspace, as a child that ends with this process (`flows.children`);
    returns the exit code and the last output lines."""
    proc = start_child(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tail: deque[str] = deque(maxlen=40)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            if echo:
                print(line, end="", flush=True)
        return proc.wait(), list(tail)
    except BaseException:  # interrupted (Ctrl-C, a cancelled task): DVC and its stage stop with us
        stop_child(proc)
        raise


def ensure_workspace(workspace: Path) -> None:
    """Check the workspace holds params.yaml and dvc.yaml; make it a DVC project if it is not one."""
    for name in ("params.yaml", "dvc.yaml"):
        if not (workspace / name).is_file():
            raise WorkspaceError(
                f"{workspace}: no {name}; run medgate in a workspace (`medgate init DIR` makes one) or set MEDGATE_WORKSPACE"
            )
    if not (workspace / ".dvc").is_dir():
        for args in (("init", "--no-scm", "-q"), ("config", "core.analytics", "false")):
            code, tail = _dvc(workspace, *args)
            if code:
                raise WorkspaceError(f"{workspace}: dvc {' '.join(args)} failed: {' | '.join(tail)}")


def create_workspace(root: Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """A workspace at `root` (created if needed): the project's dvc.yaml and DVC config, its params.yaml
    with `overrides` merged in (nested: {"train": {"epochs": 3}}), and `components` linked so that
    dvc.yaml's code dependencies resolve as in the project. Existing data and runs are kept."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    if not (root / ".dvc").exists():
        ignore = shutil.ignore_patterns("cache", "tmp", "config.local")
        shutil.copytree(PROJECT_ROOT / ".dvc", root / ".dvc", ignore=ignore)
    if not (root / "components").exists():
        (root / "components").symlink_to(PROJECT_ROOT / "components")
    if overrides:
        update_params(root, overrides, base=PROJECT_ROOT / "params.yaml")
    else:  # verbatim: its comments document every setting
        shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    return root


def update_params(workspace: Path, overrides: Mapping[str, Any], base: Path | None = None) -> None:
    """Merge `overrides` (nested sections) into the workspace's params.yaml, or into `base`'s and write it there."""
    params = merged(yaml.safe_load((base or workspace / "params.yaml").read_text()), overrides)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def track_dataset(workspace: Path, rel_path: str) -> str:
    """`dvc add` a folder and return its DVC hash: the dataset's version."""
    code, tail = _dvc(workspace, "add", "-q", rel_path)
    if code:
        raise StageError(f"dvc add {rel_path} failed: {' | '.join(tail)}")
    return tracked_version(workspace, rel_path)


def tracked_version(workspace: Path, rel_path: str) -> str | None:
    """The DVC hash its `.dvc` file records for a tracked folder (the last `dvc add`), or None."""
    dvc_file = workspace / f"{rel_path}.dvc"
    if not dvc_file.is_file():
        return None
    return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]).removesuffix(".dir")


def default_remote(workspace: Path) -> str | None:
    """The name of the workspace's default DVC remote (`dvc remote add -d NAME URL`), if any.

    Read from .dvc/config and config.local (the latter wins), as DVC does, without starting DVC.
    """
    name = None
    for config in (workspace / ".dvc" / "config", workspace / ".dvc" / "config.local"):
        parser = configparser.ConfigParser()
        parser.read(config)
        name = parser.get("core", "remote", fallback=name)
    return name or None


LOCAL_REMOTE = "medgate"
DVC_CACHE_FILES = Path(".dvc/cache/files/md5")  # DVC 3: <2 hex>/<30 hex>, a folder's listing as <...>.dir


def configure_remote(workspace: Path, url: str | None = None, endpoint: str | None = None) -> str:
    """Make `url` the workspace's default DVC remote, named ``medgate``, in .dvc/config.local.

    Without `url`, a default remote the project already names (in .dvc/config) is kept, else the
    local folder .medgate/dvc-remote becomes the default. `endpoint` is the endpoint URL of
    S3-compatible storage (MinIO, Ceph...). Returns the default remote's name; runs no DVC command
    when the configuration is already so.
    """
    current = default_remote(workspace)
    if url is None:
        if current not in (None, LOCAL_REMOTE):
            return current
        url = str(workspace / ".medgate" / "dvc-remote")
    parser = configparser.ConfigParser()
    parser.read(workspace / ".dvc" / "config.local")
    section = f'remote "{LOCAL_REMOTE}"'
    if current == LOCAL_REMOTE and parser.get(section, "url", fallback=None) == url \
            and parser.get(section, "endpointurl", fallback=None) == endpoint:
        return LOCAL_REMOTE
    if "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)
    commands = [("remote", "add", "--local", "--force", "--default", LOCAL_REMOTE, url)]
    if endpoint:
        commands.append(("remote", "modify", "--local", LOCAL_REMOTE, "endpointurl", endpoint))
    for args in commands:
        code, tail = _dvc(workspace, *args)
        if code:
            raise WorkspaceError(f"{workspace}: dvc {' '.join(args[:2])} {url} failed: {' | '.join(tail)}")
    return LOCAL_REMOTE


def tracked_file(workspace: Path, tracked: str, version: str, relpath: str) -> Path | None:
    """File `relpath` of version `version` of the `dvc add`-ed folder `tracked`: in the workspace
    when the folder is at that version, else in the DVC cache; None when neither holds it."""
    if tracked_version(workspace, tracked) == version and (path := workspace / tracked / relpath).is_file():
        return path
    path = (cached_folder(workspace, version) or {}).get(relpath)
    return path if path is not None and path.is_file() else None


def cached_folder(workspace: Path, version: str) -> dict[str, Path] | None:
    """relpath -> cache file of each file of folder version `version` (a DVC hash) in the workspace's
    DVC cache, or None when the cache has no listing of that version. A listed file may be absent."""
    cache = workspace / DVC_CACHE_FILES
    listing = cache / version[:2] / f"{version[2:]}.dir"
    if not listing.is_file():
        return None
    return {entry["relpath"]: cache / entry["md5"][:2] / entry["md5"][2:] for entry in json.loads(listing.read_text())}


def push_outputs(workspace: Path) -> None:
    """`dvc push`: the dataset and every stage output to the default remote (e.g. S3).

    Raises:
        StageError: naming the remote and DVC's error lines (`-q` would drop them), e.g. the endpoint
            it could not connect to.
    """
    code, tail = _dvc(workspace, "push")
    if code:
        errors = [line for line in tail if line.startswith("ERROR")] or tail[-10:]
        raise StageError(f"dvc push to remote {default_remote(workspace)} failed (exit {code}): {' | '.join(errors)}")


def pipeline_stages(workspace: Path) -> list[str]:
    """The stages of the workspace's dvc.yaml, in the order written (upstream first)."""
    return list(yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"])


def _paths(entries: list | None, persist: bool | None = None) -> list[str]:
    """The paths of a dvc.yaml list of deps, outs or metrics (an entry is a path or {path: options});
    with `persist` True or False, only the outputs DVC keeps, or clears, before a run."""
    found = []
    for entry in entries or []:
        path, options = next(iter(entry.items())) if isinstance(entry, dict) else (str(entry), None)
        if persist is None or bool((options or {}).get("persist")) == persist:
            found.append(path)
    return found


def stage_dir(workspace: Path, stage: str, persist: bool = False) -> Path:
    """The folder of dvc.yaml's `stage` in `workspace`: the one its outputs (metrics included) are in,
    a lone output folder being its own; with `persist`, the one DVC keeps between runs (train's checkpoints).

    Raises:
        WorkspaceError: dvc.yaml has no such stage, or no such outputs.
    """
    spec = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"].get(stage) or {}
    paths = _paths(spec.get("outs"), persist) + _paths(spec.get("metrics"), persist)
    if not paths:
        kind = "persistent outputs" if persist else "outputs"
        raise WorkspaceError(f"{workspace / 'dvc.yaml'}: no stage {stage!r} with {kind}")
    return workspace / os.path.commonpath(paths)


def stage_waves(workspace: Path) -> list[list[str]]:
    """dvc.yaml's stages in waves: each stage after every stage whose outputs it depends on, and the
    stages of one wave independent of each other (prepare; train, baseline; evaluate)."""
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]

    def inside(dep: str, out: str) -> bool:
        return dep == out or dep.startswith(out.rstrip("/") + "/") or out.startswith(dep.rstrip("/") + "/")

    outs = {name: _paths(spec.get("outs")) + _paths(spec.get("metrics")) for name, spec in stages.items()}
    upstream = {
        name: {other for other in stages if other != name and any(inside(d, o) for d in _paths(spec.get("deps")) for o in outs[other])}
        for name, spec in stages.items()
    }
    waves: list[list[str]] = []
    done: set[str] = set()
    while len(done) < len(stages):
        wave = [name for name in stages if name not in done and upstream[name] <= done]
        if not wave:
            raise WorkspaceError(f"{workspace / 'dvc.yaml'}: stages depend on each other in a cycle")
        waves.append(wave)
        done.update(wave)
    return waves


def stages_up_to_date(workspace: Path) -> bool:
    """Whether `dvc status` finds every stage and tracked dataset unchanged (then nothing needs reproducing)."""
    code, tail = _dvc(workspace, "status", "--json")
    return code == 0 and "".join(tail).strip() == "{}"


def reproduce_stage(workspace: Path, stage: str) -> StageRun:
    """`dvc repro` one stage (its upstream stages already reproduced); reused when DVC skipped it."""
    started = time.monotonic()
    # --wait-for-lock: stages of one wave run at once and each takes DVC's repo lock briefly.
    code, tail = _dvc(workspace, "--wait-for-lock", "repro", "--single-item", stage, echo=True)
    if code:
        raise StageError(f"stage {stage} failed (dvc repro exit {code}):\n" + "\n".join(tail[-15:]))
    reused = any("didn't change, skipping" in line for line in tail)
    return StageRun(stage, time.monotonic() - started, reused)


def dvc_lock_hash(workspace: Path) -> str | None:
    """The content hash of dvc.lock: which inputs, params and outputs this run's stages had."""
    lock = workspace / "dvc.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.exists() else None
