"""Bad data end to end: a generated corpus of broken files through `medgate data validate` and the
flow (real ingest, GX, DVC, Prefect, SQLite), and a patient name leaking through a folder name."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image

from components.demo.cohort import generate_cohort
from components.config import default_params
from components.privacy.names import file_pseudonym, source_label
from tests.integration.conftest import TINY, make_workspace

pytestmark = pytest.mark.timeout(600)
SALT = "test-salt"  # conftest's set_clean_env

CLASSES = {"ingest": {"class_names": ["normal", "lesion"], "accept_burned_in_risk": ["PNG"]}}  # bad PNGs: the decoder's reasons
# file -> words its reason must contain: every bad input of issue 3, refused at intake.
SKIPPED = {
    "bad/truncated.dcm": "DICOM",
    "bad/corrupt.dcm": "DICOM",
    "bad/empty.dcm": "empty file",
    "bad/not_a_png.png": "unrecognised content",
    "bad/cut.png": "corrupt or truncated PNG",
    "bad/nan.npy": "NaN",
    "bad/burned.dcm": "BurnedInAnnotation",
    "bad/tumour.dcm": "not one of ingest.class_names",
    "bad/missing.dcm": "listed in labels.csv but the file is missing",
    "bad/unlisted.dcm": "no row in labels.csv",
}
# check -> files it must name: the defects intake keeps for validation to judge.
FLAGGED = {
    "constant_images": {"bad/flat.npy"},
    "duplicate_images": {"site-a/case-000/0.dcm", "bad/copy.dcm"},
    "duplicates_across_splits": {"site-a/case-000/0.dcm", "bad/copy.dcm"},
    "patient_leakage": {"site-a/case-001/0.dcm", "site-a/case-001/1.dcm"},
    "clip_kind": {"bad/cine.dcm"},  # a cine loop is read as a clip: in a dataset of images, a blocking defect
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real cohort with fixed splits, plus one file or row per kind of bad input."""
    src = generate_cohort(tmp_path_factory.mktemp("corpus") / "src", default_params(cohort={"patients": 12, "images_per_patient": 2, "image_size": 32, "seed": 3}).cohort)
    with open(src / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cases = sorted({r["path"].rsplit("/", 1)[0] for r in rows})
    split_of = {case: ("train", "val", "test")[i % 3] for i, case in enumerate(cases)}
    for r in rows:
        r["split"] = split_of[r["path"].rsplit("/", 1)[0]]
    leak = next(r for r in rows if r["path"] == "site-a/case-001/1.dcm")
    leak["split"] = {"train": "test"}.get(leak["split"], "train")  # one patient, two splits

    bad = src / "bad"
    bad.mkdir()
    first = src / "site-a/case-000/0.dcm"
    raw = first.read_bytes()
    ds = pydicom.dcmread(first)
    (bad / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    (bad / "corrupt.dcm").write_bytes(raw[:132] + b"\xff" * 64)
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "not_a_png.png").write_text("this is a text file")
    png = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png, format="PNG")
    (bad / "cut.png").write_bytes(png.getvalue()[:40])
    np.save(bad / "nan.npy", np.full((32, 32), np.nan, np.float32))
    np.save(bad / "flat.npy", np.full((32, 32), -1000.0, np.float32))
    burned = copy.deepcopy(ds)
    burned.BurnedInAnnotation = "YES"
    burned.save_as(bad / "burned.dcm", enforce_file_format=True)
    cine = copy.deepcopy(ds)
    cine.Modality, cine.NumberOfFrames, cine.PixelData = "XA", 2, ds.PixelData * 2
    cine.save_as(bad / "cine.dcm", enforce_file_format=True)
    shutil.copy(first, bad / "tumour.dcm")
    shutil.copy(first, bad / "copy.dcm")
    shutil.copy(first, bad / "unlisted.dcm")
    other = "test" if split_of["site-a/case-000"] != "test" else "train"
    rows += [
        {"path": f"bad/{name}", "label": label, "split": split, "patient_id": f"bad-{name}"}
        for name, label, split in [
            ("truncated.dcm", "lesion", "train"), ("corrupt.dcm", "lesion", "train"), ("empty.dcm", "normal", "train"),
            ("not_a_png.png", "normal", "train"), ("cut.png", "normal", "train"), ("nan.npy", "normal", "train"),
            ("flat.npy", "normal", "train"), ("burned.dcm", "normal", "train"), ("cine.dcm", "normal", "train"),
            ("tumour.dcm", "tumour", "train"), ("missing.dcm", "normal", "train"), ("copy.dcm", "normal", other),
        ]
    ]
    with open(src / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", "patient_id"])  # empty: the header's
        writer.writeheader()
        writer.writerows(rows)
    return src


def medgate(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args, "--workspace", str(workspace)],
                          capture_output=True, text=True, timeout=300, check=False)


def test_data_validate_names_every_bad_file_and_exits_3(corpus: Path, tmp_path: Path, clean_env) -> None:
    ws = make_workspace(tmp_path / "ws", CLASSES)
    out = medgate(ws, "data", "validate", str(corpus))
    assert out.returncode == 3, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    # The terminal names each file by its pseudonym and its path (the operator's own map); the report
    # by its pseudonym only.
    for file, words in SKIPPED.items():
        assert any(f"{file_pseudonym(file, SALT)} ({corpus}/{file})" in line and words in line for line in lines), (file, out.stdout)
    for check, files in FLAGGED.items():
        assert any(check in line for line in lines), check
        for file in files:
            assert any(line.strip() == f"{file_pseudonym(file, SALT)} ({corpus}/{file})" for line in lines), (check, file)
    report_path = Path(out.stdout.split("report: ")[-1].split()[0])
    page = report_path.read_text()
    files = [*SKIPPED, *set().union(*FLAGGED.values())]
    assert "FAILED" in page and all(file_pseudonym(file, SALT) in page and file not in page for file in files)
    summary = json.loads(report_path.with_suffix(".json").read_text())
    failed = {o["check"] for o in summary["expectations"] if not o["success"]}
    # The cine loop among images also fails the image-kind and clip-length checks (two frames).
    assert failed == set(FLAGGED) | {"image_kind", "clip_frames"}
    assert {f.split(":")[0] for f in summary["failed_expectations"]} == {
        "constant_images", "patient_leakage", "clip_kind", "image_kind", "clip_frames"}
    assert {f.split(":")[0] for f in summary["warnings"]} == {"duplicate_images", "duplicates_across_splits"}

    found = medgate(ws, "data", "report")
    assert found.returncode == 0 and Path(found.stdout.strip()) == report_path


def test_data_validate_needs_no_workspace_and_generates_an_embedded_cohort(tmp_path: Path, clean_env) -> None:
    out = medgate(tmp_path / "empty", "data", "validate", "cohort:tones")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no params.yaml" in out.stdout and "default settings" in out.stdout
    assert re.search(r"data quality: PASSED \(audio, \d+ recordings\)", out.stdout), out.stdout
    assert not (tmp_path / "empty" / "params.yaml").exists()  # validating made no workspace of the folder


def test_flow_stops_at_validate_and_nothing_promotes(corpus: Path, tmp_path: Path, prefect_api, clean_env) -> None:
    from flows.pipeline import ValidationFailed, training_flow
    from flows.settings import get_settings

    ws = make_workspace(tmp_path / "ws", {**TINY, **CLASSES})
    with pytest.raises(ValidationFailed) as failure:
        training_flow(source=str(corpus), workspace=str(ws))
    assert "patient_leakage" in str(failure.value) and "report: " in str(failure.value)
    summary = json.loads(next((ws / "runs").glob("*/summary.json")).read_text())
    assert summary["status"] == "failed" and not summary["validation"]["success"]
    assert summary["dataset"]["skipped_inputs"] == len(SKIPPED)
    assert not (ws / "data" / "prepare").exists() and "metrics" not in summary  # nothing downstream ran

    listed = json.loads(medgate(ws, "data", "list", "--json").stdout)
    label = source_label(str(corpus), SALT)
    assert [(d["source"], d["validation"], d["images"]) for d in listed] == [(label, "failed", summary["dataset"]["images"])]
    assert listed[0]["version"] == summary["dataset"]["version"] and listed[0]["report"] == summary["validation"]["report"]
    assert json.loads(medgate(ws, "models", "list", "--json").stdout) == []
    get_settings.cache_clear()


def _pacs_export(root: Path) -> tuple[Path, list[bytes]]:
    """A small cohort laid out as a PACS export: one patient's folder and files named after them."""
    src = generate_cohort(root, default_params(cohort={"patients": 12, "images_per_patient": 2, "image_size": 32, "seed": 4}).cohort)
    folder = src / "site-a" / "DOE_John_123456"
    (src / "site-a" / "case-000").rename(folder)
    for file in folder.iterdir():
        file.rename(folder / f"DOE_John_123456_{file.name}")
    labels = (src / "labels.csv").read_text()
    labels = re.sub(r"site-a/case-000/(\d+)\.dcm", r"site-a/DOE_John_123456/DOE_John_123456_\1.dcm", labels)
    (src / "labels.csv").write_text(labels)
    (src / "identifiers.json").unlink()  # a hospital's export lists no identifiers: the scan finds them itself
    return src, [b"DOE", b"John", b"123456"]


def _stored_files(ws: Path, local_map: Path) -> list[Path]:
    """Every file under the workspace (links not followed), but the operator's local map of paths."""
    found = []
    for root, _, files in os.walk(ws):
        found += [Path(root) / f for f in files if Path(root) / f != local_map and not (Path(root) / f).is_symlink()]
    return found


def test_names_in_source_paths_are_stored_nowhere(tmp_path: Path, prefect_api, clean_env) -> None:
    """PACS exports name folders and files after the patient (SURNAME_Given_MRN/...). No file of the
    workspace but the operator's local map, no registry row, no Prefect name, parameter, tag or log
    names them, and the PHI scan looks for them on every run. The run is stopped right after that scan
    (the workspace's dvc.yaml lacks a stage), so nothing trains."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.pipeline import training_flow
    from flows.settings import get_settings
    from flows.sources import SOURCE_NAMES, register_source
    from flows.workspace import WorkspaceError

    src, names = _pacs_export(tmp_path / "export")
    ws = make_workspace(tmp_path / "ws", TINY)
    stages = yaml.safe_load((ws / "dvc.yaml").read_text())
    del stages["stages"]["evaluate"]
    (ws / "dvc.yaml").write_text(yaml.safe_dump(stages))
    settings = get_settings(ws)
    label = register_source(settings, str(src))  # what `medgate run --dataset` passes
    with pytest.raises(WorkspaceError):
        training_flow(source=label, workspace=str(ws))
    summary = json.loads(next((ws / "runs").glob("*/summary.json")).read_text())
    assert summary["dataset"]["source"] == label and label.startswith("dataset-")
    assert summary["dataset"]["skipped_inputs"] == 0 and summary["phi_scan"]["clean"], summary["phi_scan"]
    assert summary["phi_scan"]["identifiers"] > 50  # header values and path components were sought

    local_map = settings.state_dir / SOURCE_NAMES
    assert str(src) in local_map.read_text() and local_map.stat().st_mode & 0o077 == 0
    leaks = [(f.relative_to(ws).as_posix(), n.decode()) for f in _stored_files(ws, local_map) for n in names
             if n in f.read_bytes()]
    assert leaks == []
    with sqlite3.connect(settings.state_dir / "registry.db") as db:
        rows = [repr(r) for t in ("runs", "datasets") for r in db.execute(f"SELECT * FROM {t}")]
        prefect_id = db.execute("SELECT prefect_flow_run_id FROM runs").fetchone()[0]
    assert rows and not any(n.decode() in r for r in rows for n in names)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(prefect_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    stored = [run.name, json.dumps(run.parameters), *run.tags, run.state.message or "", *(log.message for log in logs)]
    assert label in run.name and f"dataset:{label}" in run.tags
    assert [t for t in stored for n in names if n.decode() in t] == []
    get_settings.cache_clear()


@pytest.mark.slow
def test_a_pacs_export_trains_and_serves_without_its_names(tmp_path: Path, prefect_api, clean_env) -> None:
    """The whole flow on a PACS-style source: the model card (also in the model store and the Bento), the
    registry and every workspace file but the local map name it by its label only."""
    from flows.datasets import scan_run
    from flows.pipeline import training_flow
    from flows.settings import get_settings
    from flows.sources import SOURCE_NAMES, register_source

    src, names = _pacs_export(tmp_path / "export")
    ws = make_workspace(tmp_path / "ws", TINY)
    settings = get_settings(ws)
    label = register_source(settings, str(src), "pacs-export")
    summary = training_flow(source=label, workspace=str(ws))
    assert summary["status"] == "completed" and summary["gate"]["promote"], summary.get("error")
    assert summary["model_name"] == "pacs-export" and summary["phi_scan"]["clean"]
    card = Path(summary["model_card"]).read_text()
    assert "pacs-export" in card and not any(n.decode() in card for n in names)
    leaks = [(f.relative_to(ws).as_posix(), n.decode()) for f in _stored_files(ws, settings.state_dir / SOURCE_NAMES)
             for n in names if n in f.read_bytes()]
    assert leaks == []
    model_tag = json.loads(medgate(ws, "models", "show", "1", "--json").stdout)["lineage"]["model_tag"]
    scan = scan_run(settings, {"source_paths": ["DOE_John_123456"], "parts": ["John", "123456"]},
                    Path(summary["summary_path"]).parent, model_tag, summary["bento_tag"])  # the model store entry and the Bento too
    assert scan.clean, scan.findings
    get_settings.cache_clear()
