"""The DVC remote on an S3-compatible server (moto's server mode on 127.0.0.1, through dvc-s3): a run pushes
the dataset and the stage outputs; a fresh workspace pulls them and reproduces the run's metrics without
the source data; a store that is down fails the run's push after its retries, and production is untouched."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.data.artifacts import WEIGHTS_FILE, file_sha256
from flows.workspace import DVC_CACHE_FILES, INGEST_DIR, configure_remote, create_workspace, stage_dir, tool_env, tracked_version
from registry import repository as repo
from registry.db import make_session_factory
from tests.scale.conftest import QUICK
from tests.scale.servers import PROJECT, S3_KEYS, s3_client, s3_server

pytestmark = pytest.mark.timeout(600)
BUCKET = "medgate-test"


def medgate_run(ws: Path, env: dict[str, str]) -> tuple[int, str, dict]:
    """`medgate run --json` on `ws`: exit code, stderr, and the run's summary.json."""
    proc = subprocess.run([sys.executable, "-m", "cli", "run", "--workspace", str(ws), "--json"], env=env, cwd=PROJECT,
                          capture_output=True, text=True, timeout=420)
    summaries = sorted((ws / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    return proc.returncode, proc.stdout[-3000:] + proc.stderr[-3000:], json.loads(summaries[-1].read_text())


def dvc(ws: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env={**tool_env(), **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"dvc {' '.join(args)} in {ws}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout


def dvc_outs(ws: Path) -> dict[str, dict]:
    """Every stage output dvc.lock records: path -> {"md5", "cached"} (dvc.yaml's `cache: false` outputs are never pushed)."""
    uncached = {path for stage in yaml.safe_load((ws / "dvc.yaml").read_text())["stages"].values()
                for entry in [*stage.get("outs", []), *stage.get("metrics", [])] if isinstance(entry, dict)
                for path, options in entry.items() if options.get("cache") is False}
    return {out["path"]: {"md5": out["md5"], "cached": out["path"] not in uncached}
            for stage in yaml.safe_load((ws / "dvc.lock").read_text())["stages"].values() for out in stage.get("outs", [])}


def production(ws: Path) -> list[tuple[str, int]]:
    with make_session_factory(f"sqlite:///{ws / '.medgate' / 'registry.db'}")() as session:
        return [(mv.name, mv.version) for mv in repo.list_versions(session) if mv.stage == "production"]


def test_runs_push_to_s3_and_a_fresh_workspace_pulls_and_reproduces(tmp_path: Path, env: dict[str, str]) -> None:
    ws = create_workspace(tmp_path / "ws", QUICK)
    remote = f"s3://{BUCKET}/medgate"
    with s3_server(env, tmp_path / "s3.log") as endpoint:
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        run_env = {**env, **S3_KEYS, "MEDGATE_DVC_REMOTE": remote, "MEDGATE_DVC_REMOTE_ENDPOINT": endpoint}
        code, output, summary = medgate_run(ws, run_env)
        assert code == 0 and summary["status"] == "completed", output
        assert summary["data_remote"] == "medgate" and "push" in summary["timings_s"]

        # The store holds every file of the dataset version and of the checkpoint the run trained.
        stored = {o["Key"].removeprefix("medgate/files/md5/").replace("/", "") for o in
                  s3_client(endpoint).list_objects_v2(Bucket=BUCKET, MaxKeys=10000).get("Contents", [])}
        version = tracked_version(ws, INGEST_DIR)
        listing = json.loads((ws / DVC_CACHE_FILES / version[:2] / f"{version[2:]}.dir").read_text())
        assert f"{version}.dir" in stored and {entry["md5"] for entry in listing} <= stored
        cached = {path for path, out in dvc_outs(ws).items() if out["cached"]}
        outs = {dvc_outs(ws)[path]["md5"] for path in cached}
        assert {"data/prepare", "data/train", "data/evaluate/plots"} <= cached and outs <= stored, outs - stored

        # A second machine: a workspace with the project's files and what git would carry (dvc.lock,
        # the dataset's .dvc file), no source data, no cache. It pulls the dataset and every cached stage
        # output; baseline and evaluate, run again on the pulled test split and checkpoint (nothing
        # ingested or trained here), give the run's metrics.
        fresh = create_workspace(tmp_path / "fresh", QUICK)
        for name in ("dvc.lock", f"{INGEST_DIR}.dvc"):
            (fresh / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ws / name, fresh / name)
        configure_remote(fresh, remote, endpoint)
        dvc(fresh, S3_KEYS, "pull", "-q")
        assert not (fresh / "data" / "source").exists() and tracked_version(fresh, INGEST_DIR) == version
        assert file_sha256(fresh / "data/train" / WEIGHTS_FILE) == file_sha256(ws / "data/train" / WEIGHTS_FILE)
        for stage in ("baseline", "evaluate"):
            dvc(fresh, S3_KEYS, "repro", "--force", "--single-item", stage)
        assert dvc_outs(fresh)["data/evaluate/predictions.csv"] == dvc_outs(ws)["data/evaluate/predictions.csv"]
        metrics = json.loads((stage_dir(fresh, "evaluate") / "metrics.json").read_text())
        for key in ("auc", "sensitivity", "specificity", "accuracy"):
            assert metrics[key] == pytest.approx(summary["metrics"][key], abs=1e-9), key

    # The store is down (its server stopped) and the remote moved there: the run's push retries, then
    # the run fails naming `dvc push`; no version is registered and production is unchanged.
    before = production(ws)
    code, output, failed = medgate_run(ws, {**run_env, "MEDGATE_DVC_REMOTE": f"s3://{BUCKET}/moved"})
    assert code == 1 and failed["status"] == "failed", output
    assert "dvc push to remote medgate failed" in failed["error"] and f"Could not connect to the endpoint URL: \"{endpoint}/{BUCKET}/moved/" in failed["error"], failed["error"]
    log = (Path(failed["summary_path"]).parent / "flow.log").read_text()
    assert "Retry 3/3" in log, log[-3000:]  # the push task's three retries, with back-off
    assert production(ws) == before and before
