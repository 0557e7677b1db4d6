"""Beyond one process, on this machine: torchrun DDP with 2 gloo processes, and a sweep on a local Dask cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import default_params
from components.stages.evaluate import evaluate_model
from components.stages.prepare import prepare_dataset
from flows.workspace import tool_env
from tests.conftest import PROJECT
from tests.integration.conftest import make_workspace, set_params
from tests.unit.test_prepare_train import make_manifest

pytestmark = pytest.mark.timeout(900)

# Augmentation off and a fixed schedule: what remains between 1 and 2 processes is BatchNorm's
# per-slice statistics and summation order, which the tolerance below is for.
DDP_TRAIN = {"epochs": 5, "batch_size": 16, "patience": 10, "num_threads": 1, "model": {"width": 8}, "augment": {"enabled": False}}


def _train(ws: Path, processes: int, out: str) -> dict:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["orchestration"]["train_processes"] = processes
    (ws / f"{out}.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "components.stages.train", "--params", f"{out}.yaml", "--data", "data/prepare", "--out", out, "--state", f"{out}-state"],
        cwd=ws, env={**tool_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((ws / out / "training.json").read_text())


def test_two_gloo_processes_give_the_metrics_of_one(tmp_path):
    ws = make_workspace(tmp_path / "ws", {"train": DDP_TRAIN})
    prepare_dataset(make_manifest(tmp_path / "ingest", patients=48, per_patient=2), default_params(prepare={"val_fraction": 0.25, "test_fraction": 0.25}).prepare, ws / "data" / "prepare")

    one = _train(ws, 1, "one")
    two = _train(ws, 2, "two")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["epochs_run"] == one["epochs_run"] == 5

    curves = [json.loads((ws / name / "history.json").read_text()) for name in ("one", "two")]
    for a, b in zip(*curves):  # the same steps on the same global batches
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.15, abs=0.02), (a, b)
    metrics = [evaluate_model(ws / "data" / "prepare", ws / name, default_params(evaluate={"bootstrap_samples": 20}).evaluate, ws / f"eval-{name}").metrics for name in ("one", "two")]
    for key in ("auc", "accuracy"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], abs=0.05), (key, metrics)


def test_sweep_fans_trials_out_over_a_local_dask_cluster(first_run_copy, prefect_api, clean_env):
    from flows.distributed import configured
    from flows.settings import get_settings
    from flows.sweep import parse_grid, sweep_flow

    ws = first_run_copy  # ingested and prepared already: the trials and the flow after them start at train
    set_params(ws, {"orchestration": {"task_runner": "dask", "dask_workers": 2}})
    (ws / "params.yaml").write_text("# the operator's note\n" + (ws / "params.yaml").read_text())
    grid = parse_grid(["learning_rate=0.003,0.0003"])
    result = configured(sweep_flow, ws)("embedded", str(ws), grid)

    trials = result["trials"]
    assert [t["overrides"] for t in trials] == [{"learning_rate": 0.003}, {"learning_rate": 0.0003}]
    workers = {t["worker"] for t in trials}
    assert len(workers) == 2 and f":{os.getpid()}" not in "".join(workers), "each trial ran in its own Dask worker process"
    best = max(trials, key=lambda t: t["val_auc"])
    assert result["best"] == best

    # The best trial went through the training flow (on the same Dask runner): params.yaml took its
    # params with comments kept, its finished checkpoint was resumed instead of training again, and the gate ran.
    text = (ws / "params.yaml").read_text()
    assert yaml.safe_load(text)["train"]["learning_rate"] == best["overrides"]["learning_rate"] and "# the operator's note" in text
    run = result["run"]
    assert run["status"] == "completed" and run["trigger"] == "sweep" and run["gate"]["checks"]
    assert run["training"]["resumed_after_epoch"] == run["training"]["epochs_run"], run["training"]
    assert "prepare" in run["stages_reused"]
    with pytest.raises(ValueError, match="not a valid train section"):
        parse_grid(["learning_rat=0.1"])
    get_settings.cache_clear()


def test_sweep_cli_rejects_a_malformed_grid(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cli", "sweep", "-g", "epochs", "-w", str(tmp_path)], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "expected KEY=V1,V2" in out.stdout
