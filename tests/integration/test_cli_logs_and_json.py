"""What `medgate` writes where: libraries' tracebacks in a log file, never the console; `run --json`
gives stdout the summary alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import RLELossless

from components.config import default_params
from components.demo.cohort import generate_cohort
from tests.conftest import PROJECT
from tests.integration.conftest import make_workspace

pytestmark = pytest.mark.timeout(600)

BROKEN = "site-a/case-000/0.dcm"


def medgate(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args, "--workspace", str(workspace)], cwd=PROJECT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=540, check=False)


def test_a_broken_dicoms_decoder_traceback_goes_to_the_log_and_the_console_gets_one_line(tmp_path: Path, clean_env) -> None:
    src = generate_cohort(tmp_path / "src", default_params(cohort={"patients": 6, "images_per_patient": 2, "image_size": 32, "seed": 3}).cohort)
    # RLE-compressed, its frame header cut short: pydicom's decoder logs the exception with its traceback.
    ds = pydicom.dcmread(src / BROKEN)
    ds.compress(RLELossless)
    ds.save_as(src / BROKEN)
    raw = (src / BROKEN).read_bytes()
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    start = raw.index(frame[:64])
    (src / BROKEN).write_bytes(raw[:start] + (99).to_bytes(4, "little") + raw[start + 4:])
    ws = make_workspace(tmp_path / "ws", {"ingest": {"class_names": ["normal", "lesion"]}})

    out = medgate(ws, "data", "validate", str(src))
    assert out.returncode in (0, 3), out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    [problem] = [line for line in out.stdout.splitlines() if BROKEN in line]
    assert "cannot decode DICOM pixel data" in problem and "RLE" in problem
    [pointer] = [line for line in out.stdout.splitlines() if line.startswith("library messages")]
    log = Path(pointer.split(": ", 1)[1])
    assert log.parent.parent == ws / "runs" and log.name == "libraries.log"
    detail = log.read_text()
    assert "Traceback" in detail and "pydicom" in detail and "invalid number of segments" in detail


def test_run_json_prints_the_summary_alone_on_stdout(tmp_path: Path, first_run_copy: Path, clean_env, monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the run starts its own API, as a user's would
    ws = first_run_copy  # an unchanged re-run: its summary is as whole as a first run's
    earlier = set((ws / "runs").glob("*/summary.json"))
    out = medgate(ws, "run", "--json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["status"] == "completed" and summary["gate"]["promote"]
    assert [Path(summary["summary_path"])] == list(set((ws / "runs").glob("*/summary.json")) - earlier)
    assert json.loads(Path(summary["summary_path"]).read_text())["run_id"] == summary["run_id"]
    assert "Beginning flow run" in out.stderr and "Finished in state Completed" in out.stderr, "progress goes to stderr"
