"""The whole flow on a tiny cohort, on real components: Prefect, DVC, GX, BentoML, SQLite."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import set_params

pytestmark = pytest.mark.timeout(900)


def medgate(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--workspace", str(workspace)],
        capture_output=True, text=True, timeout=600,
    )


def test_promote_then_refuse_then_stop_at_validate(first_run, clean_env):
    from flows.pipeline import ValidationFailed, training_flow
    from flows.settings import get_settings

    ws, first = first_run["ws"], first_run["summary"]
    assert first["status"] == "completed"
    assert first["validation"]["success"] and Path(first["validation"]["report"]).exists()
    assert first["gate"]["promote"], first["gate"]
    assert any(c["kind"] == "serving" and c["verdict"] == "pass" for c in first["gate"]["checks"])
    assert first["production"]["version"] == first["model_version"] == 1
    assert first["bento_tag"] and first["production"]["bento_tag"] == first["bento_tag"]
    assert json.loads(Path(first["summary_path"]).read_text())["run_id"] == first["run_id"]
    assert (ws / "dvc.lock").exists()

    listed = medgate(ws, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(m["version"], m["stage"]) for m in json.loads(listed.stdout)] == [(1, "production")]
    # The model card: under the run, and in the BentoML model store entry the Bento pins.
    import bentoml

    card = Path(first["model_card"])
    assert card.with_suffix(".html").exists()
    assert all(text in card.read_text() for text in ("Stage: **production**", first["bento_tag"], first["run_id"], "| data quality (Great Expectations) | passed |"))
    model_tag = json.loads(medgate(ws, "models", "show", "1", "--json").stdout)["lineage"]["model_tag"]
    assert "## Gate decision" in Path(bentoml.models.get(model_tag).path_of("model_card.md")).read_text()
    # PHI: the flow's own scans passed, and none of the cohort's fake identifiers is in any artifact now
    # (dataset, stage outputs, reports, log, summary.json, registry, model store entry, Bento).
    from flows.datasets import scan_run

    assert first["phi_scan"]["clean"] and {c["kind"]: c["verdict"] for c in first["gate"]["checks"]}["privacy"] == "pass"
    scan = scan_run(get_settings(ws), ws / "data/source/default-cohort/identifiers.json", Path(first["summary_path"]).parent, model_tag, first["bento_tag"])
    assert scan.clean and scan.files > 50, scan.findings

    # A candidate that cannot meet a stricter change threshold: refused, production unchanged,
    # and the unchanged data, code and params let DVC reuse prepare, train and evaluate.
    set_params(ws, {"gate": {"default": {"changes": {"auc": {"absolute": 0.5}}}}})
    second = training_flow(workspace=str(ws))
    assert second["status"] == "completed"
    assert not second["gate"]["promote"]
    failed = [c for c in second["gate"]["checks"] if c["verdict"] == "fail"]
    assert [(c["kind"], c["metric"]) for c in failed] == [("change", "auc")]
    assert second["production"]["version"] == 1 and second["model_version"] == 2
    assert second["bento_tag"] is None
    assert not second["gate"]["champion_reevaluated"]  # same test data: the champion's recorded metrics are compared
    assert "REFUSED" in Path(second["model_card"]).read_text()
    # ingest too: same source content, params, salt and code as the last ingest (flows/caching.py)
    # validate too (its suites' outcomes, for the same manifest and params; the report is made anew),
    # and the push of unchanged data to the workspace's DVC remote.
    assert set(second["stages_reused"]) == {"ingest", "validate", "push", *yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]}
    stages = {m["version"]: m["stage"] for m in json.loads(medgate(ws, "models", "list", "--json").stdout)}
    assert stages == {1: "production", 2: "rejected"}

    # A broken expectation stops the run at validate, naming the expectation; nothing downstream runs.
    set_params(ws, {"validate": {"min_rows": 100000}})
    with pytest.raises(ValidationFailed) as failure:
        training_flow(workspace=str(ws))
    assert "expect_table_row_count_to_be_between" in str(failure.value)
    runs = sorted((ws / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    last = json.loads((runs[-1] / "summary.json").read_text())
    assert last["status"] == "failed" and "metrics" not in last and "model_version" not in last
    assert Path(last["validation"]["report"]).exists()
    stages = {m["version"]: m["stage"] for m in json.loads(medgate(ws, "models", "list", "--json").stdout)}
    assert stages == {1: "production", 2: "rejected"}
    get_settings.cache_clear()


def test_dvc_repro_outside_the_flow_skips_unchanged(first_run_copy, clean_env):
    """After a flow run, a plain `dvc repro` reproduces nothing; a train param change re-runs train onwards only."""
    from flows.workspace import tool_env

    ws = first_run_copy
    out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "didn't change, skipping" in out.stdout and "Running stage" not in out.stdout

    set_params(ws, {"train": {"learning_rate": 0.001}})
    out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Running stage 'train'" in out.stdout and "Running stage 'evaluate'" in out.stdout
    assert "Running stage 'prepare'" not in out.stdout
    metrics = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=ws, env=tool_env(), capture_output=True, text=True)
    assert '"auc"' in metrics.stdout
