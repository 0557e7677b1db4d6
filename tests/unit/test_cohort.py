"""The embedded synthetic CT cohort: determinism, DICOM headers, labels, plausible HU."""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from components.demo.cohort import CLASS_NAMES, PRIVATE_CREATOR, PRIVATE_GROUP, generate_cohort
from components.config import default_params

SMALL = default_params(cohort={"patients": 9, "images_per_patient": 2, "image_size": 32, "seed": 3}).cohort


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), SMALL)


def test_same_config_gives_identical_bytes(cohort: Path, tmp_path: Path) -> None:
    again = generate_cohort(tmp_path / "again", SMALL)
    assert _files(again) == _files(cohort)
    other = generate_cohort(tmp_path / "other", SMALL.model_copy(update={"seed": 4}))
    assert _files(other) != _files(cohort)


def test_regenerating_smaller_cohort_leaves_no_stale_files(tmp_path: Path) -> None:
    generate_cohort(tmp_path, SMALL)
    generate_cohort(tmp_path, SMALL.model_copy(update={"patients": 3}))
    dicoms = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.dcm")}
    assert dicoms == {r["path"] for r in _rows(tmp_path)}


def test_layout_and_patient_level_labels(cohort: Path) -> None:
    rows = _rows(cohort)
    assert list(rows[0]) == ["path", "label"]
    assert len(rows) == SMALL.patients * SMALL.images_per_patient
    assert {r["label"] for r in rows} <= set(CLASS_NAMES)
    by_folder: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        assert (cohort / r["path"]).is_file()
        assert r["path"].count("/") == 2 and r["path"].endswith(".dcm")
        by_folder[r["path"].rsplit("/", 1)[0]].add(r["label"])
    assert len(by_folder) == SMALL.patients
    assert all(len(labels) == 1 for labels in by_folder.values())
    positives = sum(labels == {"lesion"} for labels in by_folder.values())
    assert positives == round(SMALL.positive_fraction * SMALL.patients)


def test_headers_are_real_ct_dicom_with_fake_identifiers(cohort: Path) -> None:
    ids = json.loads((cohort / "identifiers.json").read_text())
    for key in ("patient_names", "patient_ids", "birth_dates", "accession_numbers",
                "institution_names", "device_serials", "referring_physicians", "uids"):
        assert ids[key], key
    folders = "/".join(r["path"] for r in _rows(cohort))
    for value in ids["patient_ids"] + ids["patient_names"]:
        assert value not in folders  # folder names must not carry the patient

    rows = _rows(cohort)
    ds = pydicom.dcmread(cohort / rows[0]["path"])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.Rows, ds.Columns) == (SMALL.image_size, SMALL.image_size)
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 1
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
    assert len(ds.PixelSpacing) == 2 and float(ds.SliceThickness) > 0
    assert float(ds.WindowCenter) == 40 and float(ds.WindowWidth) == 400
    assert ds.PatientSex in ("M", "F") and ds.PatientAge.endswith("Y")
    assert str(ds.PatientName) in ids["patient_names"]
    assert ds.PatientID in ids["patient_ids"]
    assert ds.PatientBirthDate in ids["birth_dates"]
    assert ds.AccessionNumber in ids["accession_numbers"]
    assert ds.InstitutionName in ids["institution_names"]
    assert ds.DeviceSerialNumber in ids["device_serials"]
    assert str(ds.ReferringPhysicianName) in ids["referring_physicians"]
    assert ds.PatientID in ds.ImageComments
    assert {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID} <= set(ids["uids"])
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    assert ds.PatientID in block[0x01].value
    assert ds.pixel_array.dtype == np.int16 and ds.pixel_array.min() >= 0


def test_patients_share_study_and_differ_in_instances(cohort: Path) -> None:
    rows = _rows(cohort)
    first = [pydicom.dcmread(cohort / r["path"]) for r in rows[: SMALL.images_per_patient]]
    assert len({d.PatientID for d in first}) == 1
    assert len({d.StudyInstanceUID for d in first}) == 1
    assert len({d.SOPInstanceUID for d in first}) == SMALL.images_per_patient


def test_hounsfield_units_are_plausible(cohort: Path) -> None:
    ds = pydicom.dcmread(cohort / _rows(cohort)[0]["path"])
    hu = _hu(ds)
    n = SMALL.image_size
    assert abs(np.median(hu[:3, :3]) + 1000) < 60  # air in the corner
    centre = hu[n // 2 - 3: n // 2 + 3, n // 2 - 3: n // 2 + 3]
    assert -150 < np.median(centre) < 200  # soft tissue or organ in the middle
    assert hu.max() > 200  # bone


def test_sites_have_different_scanners(tmp_path: Path) -> None:
    root = generate_cohort(tmp_path, default_params(cohort={"patients": 12, "images_per_patient": 1, "image_size": 32}).cohort)
    vendors = {}
    for r in _rows(root):
        ds = pydicom.dcmread(root / r["path"], stop_before_pixels=True)
        vendors[r["path"].split("/")[0]] = (ds.Manufacturer, ds.ManufacturerModelName, ds.InstitutionName)
    assert len(vendors) >= 2
    assert len({v[0] for v in vendors.values()}) == len(vendors)


def test_default_cohort_is_quick(tmp_path: Path) -> None:
    start = time.perf_counter()
    generate_cohort(tmp_path, default_params().cohort)
    assert time.perf_counter() - start < 15
    assert len(list(tmp_path.rglob("*.dcm"))) == 60 * 4


@pytest.mark.parametrize("update", [{"patients": 0}, {"image_size": 16}, {"positive_fraction": 1.5}])
def test_impossible_config_is_refused(tmp_path: Path, update: dict) -> None:
    with pytest.raises(ValueError):
        generate_cohort(tmp_path, default_params().cohort.model_copy(update=update))
