"""benchmarks/serving.py end to end (`--quick`): real servers on 127.0.0.1 and a stand-in model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_quick_run_prints_the_targets_table(tmp_path):
    """The targets table of a smoke run (a few minutes on a loaded 2-CPU machine: four server start-ups)."""
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "serving.py"), "--quick", "--stand-in", "--no-wide", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "req/s at c=32: medgate / FastAPI endpoint" in proc.stdout
    targets = {(t["route"], t["target"]): t for t in json.loads(out.read_text())["targets"]}
    assert targets[("bento", "req/s at c=32: medgate / BentoML floor")]["value"] > 0
    assert all(targets[(route, "errors")]["value"] == 0 for route in ("bento", "floor", "fastapi"))
    assert targets[("bento", "memory growth, burst of oversized uploads (MB)")]["met"]
