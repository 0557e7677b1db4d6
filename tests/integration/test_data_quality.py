"""Bad data end to end: a generated corpus of broken files through `medgate data validate` and the
flow (real ingest, GX, DVC, Prefect, SQLite), and a patient name leaking through a folder name."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from components.demo.cohort import generate_cohort
from components.config import default_params
from tests.integration.conftest import TINY, make_workspace

pytestmark = pytest.mark.timeout(600)

CLASSES = {"ingest": {"class_names": ["normal", "lesion"]}}
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
    for file, words in SKIPPED.items():
        assert any(file in line and words in line for line in lines), (file, out.stdout)
    for check, files in FLAGGED.items():
        assert any(check in line for line in lines), check
        for file in files:
            assert any(line.strip() == file for line in lines), (check, file)
    report_path = Path(out.stdout.split("report: ")[-1].split()[0])
    page = report_path.read_text()
    assert "FAILED" in page and all(file in page for file in [*SKIPPED, *set().union(*FLAGGED.values())])
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
    assert [(d["source"], d["validation"], d["images"]) for d in listed] == [(str(corpus), "failed", summary["dataset"]["images"])]
    assert listed[0]["version"] == summary["dataset"]["version"] and listed[0]["report"] == summary["validation"]["report"]
    assert json.loads(medgate(ws, "models", "list", "--json").stdout) == []
    get_settings.cache_clear()


def test_a_patient_name_in_a_folder_name_fails_the_run(tmp_path: Path, prefect_api, clean_env) -> None:
    """Hospital exports often name folders after patients: sources.csv would carry the name into the
    dataset. The PHI scan finds it before anything trains and the run fails."""
    from flows.pipeline import PhiFound, training_flow
    from flows.settings import get_settings

    src = generate_cohort(tmp_path / "src", default_params(cohort={"patients": 12, "images_per_patient": 2, "image_size": 32, "seed": 4}).cohort)
    name = json.loads((src / "identifiers.json").read_text())["patient_names"][0]
    (src / "site-a" / "case-000").rename(src / "site-a" / name)
    labels = (src / "labels.csv").read_text().replace("site-a/case-000/", f"site-a/{name}/")
    (src / "labels.csv").write_text(labels)
    ws = make_workspace(tmp_path / "ws", TINY)
    with pytest.raises(PhiFound) as found:
        training_flow(source=str(src), workspace=str(ws))
    assert "data/ingest/sources.csv" in str(found.value) and name not in str(found.value)
    summary = json.loads(next((ws / "runs").glob("*/summary.json")).read_text())
    assert summary["status"] == "failed" and summary["validation"]["success"]
    assert {f["kind"] for f in summary["phi_scan"]["findings"]} == {"patient_names"}
    assert name not in json.dumps(summary)
    assert not (ws / "data" / "prepare").exists()
    get_settings.cache_clear()
