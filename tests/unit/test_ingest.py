"""Ingest of each source kind, de-identification and bad inputs (the readers: test_readers.py)."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from components.config import default_params
from components.data.manifest import AUDIO_COLUMNS, EXTRA_COLUMNS, MANIFEST_COLUMNS, read_manifest
from components.data.shards import ImageStore
from components.demo.cohort import generate_cohort
from components.privacy.deid import deid_dicom, pseudonym
from components.privacy.names import file_pseudonym, source_label
from components.readers import decode_image
from components.readers.base import content_hash
from components.readers.clips import VIDEO_COLUMNS
from components.stages.ingest import ingest_source
from tests.conftest import problems_by_file
from tests.images import jpeg_bytes, medmnist_npz, npy_bytes, png_bytes

SALT = "unit-test-salt"
PNG_OK = default_params(ingest={"accept_burned_in_risk": ["PNG", "JPEG"]}).ingest  # tests that read PNG and JPEG
COHORT = default_params(cohort={"patients": 8, "images_per_patient": 2, "image_size": 32, "seed": 11}).cohort
DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), COHORT)


@pytest.fixture(scope="module")
def ingested(cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ingested")
    return ingest_source(cohort, out, default_params().ingest, SALT), out


def _identifiers(cohort: Path) -> list[str]:
    ids = json.loads((cohort / "identifiers.json").read_text())
    return [v for values in ids.values() for v in values if v]


def _write_labels(folder: Path, rows: list[dict[str, str]]) -> None:
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---- DICOM folder -----------------------------------------------------------------------------


def test_dicom_manifest_columns_dtypes_and_files(ingested) -> None:
    result, out = ingested
    assert result.kind == "dicom"
    assert result.num_images == COHORT.patients * COHORT.images_per_patient
    assert result.num_patients == COHORT.patients
    assert result.class_names == ("normal", "lesion")
    assert result.problems == ()
    assert json.loads((out / "problems.json").read_text()) == []
    df = pd.read_parquet(result.manifest)
    # 2D: no slice spacing; images: no clip or recording columns; CT: no burned-in text risk
    assert list(df.columns) == [*MANIFEST_COLUMNS, *[c for c in EXTRA_COLUMNS if c not in ("spacing_d", "burned_in_risk")
                                                     and c not in VIDEO_COLUMNS and c not in AUDIO_COLUMNS]]
    for column, dtype in {**MANIFEST_COLUMNS, **EXTRA_COLUMNS}.items():
        if column in df:
            assert str(df[column].dtype) == dtype, column
    assert (df["ndim"] == 2).all() and (df["depth"] == 1).all() and (df["channels"] == 1).all()
    assert (df["height"] == COHORT.image_size).all() and (df["dtype"] == "float32").all()
    assert df["split"].isna().all()
    assert df["image_id"].is_unique
    store = ImageStore(out)
    for row in df.itertuples():
        arr = store.load(row.path)
        assert re.fullmatch(rf"images/\d{{5}}\.npz/{row.content_hash}\.npy", row.path)
        assert content_hash(arr) == row.content_hash
        assert arr.dtype == np.float32 and arr.shape == (COHORT.image_size, COHORT.image_size)
        assert row.intensity_min == pytest.approx(float(arr.min()))
    assert set(df["modality"]) == {"CT"} and set(df["photometric"]) == {"MONOCHROME2"}
    assert df["site"].str.fullmatch(r"site-[0-9a-f]{8}").all()
    assert set(df["sex"]) <= {"M", "F"}
    assert df["age_band"].str.fullmatch(r"\d0-\d9|90\+").all()
    assert set(df["scanner"]) <= {"SIEMENS", "GE MEDICAL SYSTEMS", "Philips"}
    assert (df["spacing_h"] == df["spacing_w"]).all()
    assert df["spacing_h"].between(360 / COHORT.image_size, 400 / COHORT.image_size).all()  # the sites' FOV


def test_dicom_pseudonyms_are_patient_level_and_salted(cohort: Path, ingested, tmp_path: Path) -> None:
    result, _ = ingested
    df = read_manifest(result.manifest)
    assert df["patient_id"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert (df.groupby("patient_id")["label"].nunique() == 1).all()
    with open(cohort / "labels.csv", newline="") as f:
        first = next(csv.DictReader(f))
    header = pydicom.dcmread(cohort / first["path"], stop_before_pixels=True)
    assert pseudonym(header.PatientID, SALT) in set(df["patient_id"])
    assert pseudonym(header.SOPInstanceUID, SALT) in set(df["image_id"])

    same = read_manifest(ingest_source(cohort, tmp_path / "same", default_params().ingest, SALT).manifest)
    assert list(same["patient_id"]) == list(df["patient_id"])
    assert list(same["image_id"]) == list(df["image_id"])
    other = read_manifest(ingest_source(cohort, tmp_path / "other", default_params().ingest, "another-salt").manifest)
    assert not set(other["patient_id"]) & set(df["patient_id"])
    assert not set(other["site"]) & set(df["site"])
    assert list(other["content_hash"]) == list(df["content_hash"])  # pixels do not depend on the salt


def test_no_identifier_reaches_any_output(cohort: Path, ingested) -> None:
    result, out = ingested
    identifiers = _identifiers(cohort)
    assert len(identifiers) > 20
    table_text = read_manifest(result.manifest).to_csv()
    blobs = {"manifest.csv": table_text.encode()}
    for p in out.rglob("*"):
        if p.is_file():
            blobs[p.relative_to(out).as_posix()] = p.read_bytes()
            blobs[f"name:{p.name}"] = p.name.encode()
    leaks = [(name, v) for name, blob in blobs.items() for v in identifiers if v.encode() in blob]
    assert leaks == []


def test_hounsfield_units_are_plausible(ingested) -> None:
    result, out = ingested
    df = read_manifest(result.manifest)
    assert df["intensity_min"].between(-1100, -900).all()  # air
    assert (df["intensity_max"] > 150).all()  # bone
    arr = ImageStore(out).load(df["path"].iloc[0])
    assert abs(float(np.median(arr[:3, :3])) + 1000) < 60
    assert np.isfinite(arr).all()


def test_deid_dicom_removes_every_identifier(cohort: Path) -> None:
    identifiers = _identifiers(cohort)
    studies = set()
    with open(cohort / "labels.csv", newline="") as f:
        paths = [r["path"] for r in csv.DictReader(f)][: COHORT.images_per_patient]
    for rel in paths:
        ds = pydicom.dcmread(cohort / rel)
        before = str(ds)
        clean = deid_dicom(ds, SALT)
        text = str(clean)
        assert [v for v in identifiers if v in text] == []
        assert str(ds) == before  # the input is not modified
        assert clean.PatientIdentityRemoved == "YES"
        assert clean.PatientID == pseudonym(ds.PatientID, SALT)
        assert not any(elem.tag.is_private for elem in clean.iterall())
        assert clean.file_meta.MediaStorageSOPInstanceUID == clean.SOPInstanceUID
        assert clean.SOPClassUID == ds.SOPClassUID
        assert (clean.PatientSex, clean.PatientAge, clean.Manufacturer) == (ds.PatientSex, ds.PatientAge,
                                                                            ds.Manufacturer)
        np.testing.assert_array_equal(clean.pixel_array, ds.pixel_array)
        studies.add(clean.StudyInstanceUID)
        buf = io.BytesIO()
        clean.save_as(buf, enforce_file_format=True)  # still a writable DICOM file
    assert len(studies) == 1  # references stay consistent within a patient


def test_deid_caps_ages_over_89(cohort: Path) -> None:
    ds = pydicom.dcmread(next(cohort.rglob("*.dcm")))
    ds.PatientAge = "097Y"
    assert deid_dicom(ds, SALT).PatientAge == "090Y"


def test_labels_csv_patient_id_and_split_columns(cohort: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(cohort, src)
    with open(src / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["patient_id"] = "P-ALL"
        r["split"] = ("train", "val", "test")[i % 3]
    _write_labels(src, rows)
    df = read_manifest(ingest_source(src, tmp_path / "out", default_params().ingest, SALT).manifest)
    assert set(df["patient_id"]) == {pseudonym("P-ALL", SALT)}
    assert df["split"].value_counts().to_dict() == {"train": 6, "val": 5, "test": 5}


def test_key_column_matches_dicom_header(cohort: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(cohort, src)
    with open(src / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keyed = [{"SOPInstanceUID": pydicom.dcmread(src / r["path"], stop_before_pixels=True).SOPInstanceUID,
              "label": r["label"]} for r in rows]
    keyed.append({"SOPInstanceUID": "1.2.3.4.5.6.7", "label": "lesion"})
    _write_labels(src, keyed)
    cfg = default_params(ingest={"key_column": "SOPInstanceUID"}).ingest
    result = ingest_source(src, tmp_path / "out", cfg, SALT)
    assert result.num_images == len(rows)
    assert result.problems == ({"file": f"labels.csv:{len(rows) + 2}",
                                "reason": "no file has this row's SOPInstanceUID"},)


# ---- bad inputs ----------------------------------------------------------------------------------


def test_each_bad_input_is_reported_with_file_and_reason(cohort: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good = min(cohort.rglob("*.dcm"))
    raw = good.read_bytes()
    ds = pydicom.dcmread(good)
    (src / "good.dcm").write_bytes(raw)
    (src / "copy.dcm").write_bytes(raw)  # duplicate: kept
    (src / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    (src / "header_only.dcm").write_bytes(raw[:300])
    (src / "empty.dcm").write_bytes(b"")
    (src / "text.png").write_text("this is not an image")
    broken = png_bytes(np.zeros((16, 16), np.uint8))
    (src / "cut.png").write_bytes(broken[: len(broken) // 2])
    (src / "nan.npy").write_bytes(npy_bytes(np.full((8, 8), np.nan, np.float32)))
    (src / "flat.npy").write_bytes(npy_bytes(np.zeros((8, 8), np.float32)))  # constant: kept
    burned = copy.deepcopy(ds)
    burned.BurnedInAnnotation = "YES"
    burned.save_as(src / "burned.dcm", enforce_file_format=True)
    multi = copy.deepcopy(ds)  # a cine loop: frames are time, not slices; stored as a clip
    multi.Modality = "XA"
    multi.NumberOfFrames = 2
    multi.PixelData = ds.PixelData * 2
    multi.save_as(src / "multi.dcm", enforce_file_format=True)
    (src / "unlisted.dcm").write_bytes(raw)
    (src / "notes.txt").write_text("ignored: not an image suffix")
    listed = ["good.dcm", "copy.dcm", "truncated.dcm", "header_only.dcm", "empty.dcm", "text.png", "cut.png",
              "nan.npy", "flat.npy", "burned.dcm", "multi.dcm", "missing.dcm", "../escape.dcm"]
    rows = [{"path": p, "label": "lesion"} for p in listed]
    rows.append({"path": "good.dcm", "label": "normal"})
    _write_labels(src, rows)

    result = ingest_source(src, tmp_path / "out", PNG_OK, SALT)
    reasons = problems_by_file(result.problems, [*listed, "unlisted.dcm"], SALT)
    assert json.loads((tmp_path / "out" / "problems.json").read_text()) == list(result.problems)
    expected = {
        "truncated.dcm": "pixel data",
        "header_only.dcm": "DICOM",
        "empty.dcm": "empty file",
        "text.png": "unrecognised content",
        "cut.png": "corrupt or truncated PNG",
        "nan.npy": "NaN",
        "burned.dcm": "BurnedInAnnotation",
        "missing.dcm": "file is missing",
        "labels.csv:14": "leaves the source folder",
        "unlisted.dcm": "no row in labels.csv",
        "good.dcm": "more than once",
    }
    for file, words in expected.items():
        assert file in reasons, file
        assert words in reasons[file], (file, reasons[file])
    assert len(result.problems) == len(expected)
    df = read_manifest(result.manifest)
    assert result.num_images == 4  # good, its duplicate, the constant image and the cine clip
    assert df["content_hash"].nunique() == 3
    assert sorted(df["dtype"]) == ["float32"] * 3 + ["uint8"]
    assert df["frames"].dropna().tolist() == [2]  # validate flags the mix of images and clips
    assert "notes.txt" not in reasons
    assert not any("PatientID" in r or ds.PatientID in r for r in reasons.values())


def test_nothing_usable_raises_naming_the_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"garbage")
    _write_labels(src, [{"path": "a.dcm", "label": "x"}])
    with pytest.raises(ValueError, match=re.escape(source_label(str(src), SALT))) as raised:
        ingest_source(src, tmp_path / "out", default_params().ingest, SALT)
    assert str(src) not in str(raised.value)  # named by its label, never its path
    assert json.loads((tmp_path / "out" / "problems.json").read_text())[0]["file"] == file_pseudonym("a.dcm", SALT)


@pytest.mark.parametrize("make", ["empty_dir", "text_file", "missing", "dicom_without_labels"])
def test_unsupported_source_lists_supported_kinds(tmp_path: Path, make: str) -> None:
    src = tmp_path / "src"
    if make == "empty_dir":
        src.mkdir()
    elif make == "text_file":
        src = tmp_path / "notes.txt"
        src.write_text("hello")
    elif make == "dicom_without_labels":
        (src / "p").mkdir(parents=True)
        (src / "p" / "1.dcm").write_bytes(b"x")
    with pytest.raises(ValueError) as err:
        ingest_source(src, tmp_path / "out", default_params().ingest, SALT)
    message = str(err.value)
    assert source_label(str(src), SALT) in message and "labels.csv" in message and ".npz" in message and "PNG" in message


def test_missing_label_column_and_bad_arguments(cohort: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "labels.csv").write_text("path,diagnosis\na.dcm,x\n")
    with pytest.raises(ValueError, match="label"):
        ingest_source(src, tmp_path / "out", default_params().ingest, SALT)
    with pytest.raises(ValueError, match="salt"):
        ingest_source(cohort, tmp_path / "out", default_params().ingest, "")
    with pytest.raises(ValueError, match="inside the source"):
        ingest_source(cohort, cohort / "derived", default_params().ingest, SALT)
    with pytest.raises(ValueError, match="medmnist"):
        ingest_source("medmnist:pneumoniamnist", tmp_path / "out", default_params().ingest, SALT)


def test_class_names_config_orders_and_filters(cohort: Path, tmp_path: Path) -> None:
    result = ingest_source(cohort, tmp_path / "out", default_params(ingest={"class_names": ("lesion", "normal")}).ingest, SALT)
    assert result.class_names == ("lesion", "normal")
    only = ingest_source(cohort, tmp_path / "out2", default_params(ingest={"class_names": ("normal",)}).ingest, SALT)
    assert set(read_manifest(only.manifest)["label"]) == {"normal"}
    assert all("class_names" in p["reason"] for p in only.problems) and only.problems


# ---- PNG/JPEG folders ----------------------------------------------------------------------------


def _image_folder(root: Path, split_layout: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test") if split_layout else ("",):
        for cls in ("cat_a", "cat_b"):
            d = root / split / cls
            d.mkdir(parents=True)
            (d / "p1_0.png").write_bytes(png_bytes(rng.integers(0, 255, (20, 24), dtype=np.uint8)))
            (d / "p1_1.png").write_bytes(png_bytes(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)))
            (d / "p2_0.jpg").write_bytes(jpeg_bytes(rng.integers(0, 255, (16, 16), dtype=np.uint8)))
    return root


def test_png_folder(tmp_path: Path) -> None:
    src = _image_folder(tmp_path / "src")
    (src / "cat_a" / "fake.png").write_text("not an image")
    (src / "loose.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    result = ingest_source(src, tmp_path / "out", PNG_OK, SALT)
    assert result.kind == "png" and result.class_names == ("cat_a", "cat_b")
    assert result.num_images == 6 and result.num_patients == 6
    assert set(problems_by_file(result.problems, ["cat_a/fake.png", "loose.png"], SALT)) == {"cat_a/fake.png", "loose.png"}
    df = read_manifest(result.manifest)
    assert list(df.columns) == [*MANIFEST_COLUMNS, "burned_in_risk"]
    assert df["burned_in_risk"].value_counts().to_dict() == {"PNG": 4, "JPEG": 2}  # accepted at risk, and said so
    shapes = {(r.height, r.width, r.channels) for r in df.itertuples()}
    assert shapes == {(20, 24, 1), (20, 24, 3), (16, 16, 1)}
    for row in df.itertuples():
        arr = ImageStore(tmp_path / "out").load(row.path)
        assert arr.dtype == np.uint8
        assert arr.shape == ((row.height, row.width, 3) if row.channels == 3 else (row.height, row.width))
    assert df["split"].isna().all()

    by_prefix = ingest_source(src, tmp_path / "out2", PNG_OK.model_copy(update={"patient_from_filename_prefix": True}), SALT)
    assert by_prefix.num_patients == 2
    patients = set(read_manifest(by_prefix.manifest)["patient_id"])
    assert patients == {pseudonym("p1", SALT), pseudonym("p2", SALT)}


def test_png_folder_with_split_layout(tmp_path: Path) -> None:
    src = _image_folder(tmp_path / "src", split_layout=True)
    df = read_manifest(ingest_source(src, tmp_path / "out", PNG_OK, SALT).manifest)
    assert df["split"].value_counts().to_dict() == {"train": 6, "test": 6}
    assert set(df["label"]) == {"cat_a", "cat_b"}


# ---- npz --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, expected", [
    ((28, 28), (2, 28, 28, 1, 1)),
    ((28, 28, 3), (2, 28, 28, 1, 3)),
    ((28, 28, 28), (3, 28, 28, 28, 1)),
])
def test_npz_2d_rgb_3d(tmp_path: Path, shape, expected) -> None:
    src = medmnist_npz(tmp_path / "tiny.npz", shape)
    result = ingest_source(src, tmp_path / "out", default_params().ingest, SALT)
    assert result.kind == "npz" and result.num_images == 10 and result.num_patients == 10
    df = read_manifest(result.manifest)
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert df["split"].value_counts().to_dict() == {"train": 5, "test": 3, "val": 2}
    assert set(df["label"]) <= {"0", "1"}
    row = df.iloc[0]
    assert tuple(row[["ndim", "height", "width", "depth", "channels"]]) == expected
    stored = ImageStore(tmp_path / "out").load(row["path"])
    with np.load(src) as z:
        np.testing.assert_array_equal(stored, z["train_images"][0])
        assert row["label"] == str(int(z["train_labels"][0, 0]))
    assert row["image_id"] == "train-000000"


def test_npz_problems(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "odd.npz", train_images=rng.integers(0, 255, (4, 8, 8), dtype=np.uint8),
             train_labels=np.zeros((3, 1), np.uint8),
             val_images=np.zeros((2, 8, 8), np.uint8), val_labels=np.zeros((2, 3), np.uint8),
             test_images=np.zeros((2, 8, 8), np.uint8), test_labels=np.array([[0], [1]], np.uint8))
    result = ingest_source(tmp_path / "odd.npz", tmp_path / "out", default_params().ingest, SALT)
    assert result.num_images == 2
    reasons = {p["file"]: p["reason"] for p in result.problems}
    assert "4 images but 3 labels" in reasons["train"]
    assert "multi-label" in reasons["val"]
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=source_label(str(tmp_path / "bad.npz"), SALT)):
        ingest_source(tmp_path / "bad.npz", tmp_path / "out2", default_params().ingest, SALT)


@pytest.mark.data
@pytest.mark.parametrize("name, total, shape", [
    ("pneumoniamnist", 5856, (28, 28)),
    ("adrenalmnist3d", 1584, (28, 28, 28)),
])
def test_real_medmnist(tmp_path: Path, name: str, total: int, shape: tuple[int, ...]) -> None:
    path = DATA_DIR / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} absent: the real MedMNIST files live in ../shared/data")
    result = ingest_source(path, tmp_path, default_params().ingest, SALT)
    assert result.num_images == total and result.problems == () and result.class_names == ("0", "1")
    df = read_manifest(result.manifest)
    with np.load(path) as z:
        expected = {s: len(z[f"{s}_labels"]) for s in ("train", "val", "test")}
    assert df["split"].value_counts().to_dict() == expected
    assert ImageStore(tmp_path).load(df["path"].iloc[0]).shape == shape


# ---- serving decodes as ingest stored -------------------------------------------------------------


def test_decode_image_gives_the_ingested_array(cohort: Path, ingested) -> None:
    result, out = ingested
    df = read_manifest(result.manifest)
    with open(cohort / "labels.csv", newline="") as f:
        first = next(csv.DictReader(f))["path"]
    arr = decode_image((cohort / first).read_bytes(), None, SALT)
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, ImageStore(out).load(df["path"].iloc[0]))  # serving == training


# ---- NIfTI, workers --------------------------------------------------------------------------------


def _nifti(path: Path, data: np.ndarray, zooms=(0.8, 0.9, 2.5), slope: float | None = None) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    if slope is not None:
        img.header.set_slope_inter(slope, -1024.0)
    nib.save(img, path)


def test_nifti_folder_volumes_spacing_and_orientation(tmp_path: Path) -> None:
    import nibabel as nib

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    xyz = rng.integers(0, 2000, (6, 5, 4), dtype=np.int16)  # (x, y, z) in RAS
    _nifti(src / "a.nii.gz", xyz, slope=1.0)
    _nifti(src / "b.nii", rng.integers(0, 100, (6, 5, 4), dtype=np.int16))
    _nifti(src / "flat.nii", rng.integers(0, 100, (6, 5, 1), dtype=np.int16))  # one slice: a 2D image
    _nifti(src / "series.nii", np.zeros((6, 5, 4, 3), np.int16))  # 4D: refused
    (src / "cut.nii.gz").write_bytes((src / "a.nii.gz").read_bytes()[:40])
    _write_labels(src, [{"path": p, "label": lab} for p, lab in
                        [("a.nii.gz", "tumour"), ("b.nii", "normal"), ("flat.nii", "normal"),
                         ("series.nii", "normal"), ("cut.nii.gz", "tumour")]])
    result = ingest_source(src, tmp_path / "out", default_params().ingest, SALT)
    assert result.kind == "nifti" and result.class_names == ("normal", "tumour")
    reasons = problems_by_file(result.problems, ["series.nii", "cut.nii.gz"], SALT)
    assert set(reasons) == {"series.nii", "cut.nii.gz"}
    assert "4D" in reasons["series.nii"] and "gzip" in reasons["cut.nii.gz"]
    names = {file_pseudonym(n, SALT): n for n in ("a.nii.gz", "b.nii", "flat.nii")}
    df = read_manifest(result.manifest).set_index(pd.read_csv(tmp_path / "out" / "sources.csv")["source"].map(names).to_numpy())
    a = df.loc["a.nii.gz"]
    assert tuple(a[["ndim", "depth", "height", "width"]]) == (3, 4, 5, 6)
    assert tuple(a[["spacing_d", "spacing_h", "spacing_w"]]) == pytest.approx((2.5, 0.9, 0.8))
    stored = ImageStore(tmp_path / "out").load(a["path"])
    expected = np.flip(np.transpose(xyz.astype(np.float32) - 1024.0, (2, 1, 0)), axis=1)  # slope 1, intercept -1024
    np.testing.assert_array_equal(stored, expected)
    assert df.loc["flat.nii", "ndim"] == 2 and pd.isna(df.loc["flat.nii", "spacing_d"])
    assert df.loc["b.nii", "dtype"] == "int16"
    assert decode_image((src / "a.nii.gz").read_bytes(), None).shape == (4, 5, 6)  # the server reads NIfTI too
    assert nib.load(src / "a.nii.gz").shape == (6, 5, 4)  # raw data untouched


def test_worker_processes_give_the_same_dataset(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding in two spawned processes, several shards: byte-identical manifest and shards."""
    from components.data import decoding

    monkeypatch.setattr(decoding, "_POOL_START_S", 0.0)  # a small cohort is worth the processes only if they cost nothing
    monkeypatch.setattr(decoding, "spare_cores", lambda since: 1.0)  # and only on a core nothing else uses
    monkeypatch.setattr(decoding, "ProcessPoolExecutor", _Counting)
    _Counting.submitted = 0
    inline = ingest_source(cohort, tmp_path / "a", default_params(ingest={"workers": 1, "shard_size": 4}).ingest, SALT)
    pooled = ingest_source(cohort, tmp_path / "b", default_params(ingest={"workers": 2, "shard_size": 4}).ingest, SALT)
    shards = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert len(shards) == -(-inline.num_images // 4) >= 4  # enough chunks for the pool
    assert shards == sorted(p.name for p in (tmp_path / "b" / "images").iterdir())
    for name in shards:
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    pd.testing.assert_frame_equal(read_manifest(inline.manifest), read_manifest(pooled.manifest))
    assert (tmp_path / "a" / "sources.csv").read_text() == (tmp_path / "b" / "sources.csv").read_text()
    assert _Counting.submitted == len(shards) - 1  # the first chunk decoded here, the rest by the pool


def test_a_small_source_is_decoded_without_starting_processes(cohort: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from components.data import decoding

    monkeypatch.setattr(decoding, "ProcessPoolExecutor", _Counting)
    _Counting.submitted = 0
    ingest_source(cohort, tmp_path / "a", default_params(ingest={"workers": 2, "shard_size": 4}).ingest, SALT)
    assert _Counting.submitted == 0  # a few milliseconds a chunk: starting two processes would cost more


def test_no_processes_start_where_other_work_keeps_the_cores_busy(cohort: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """More processes on busy cores would share them with this one and add their start: never faster."""
    from components.data import decoding

    monkeypatch.setattr(decoding, "_POOL_START_S", 0.0)
    monkeypatch.setattr(decoding, "spare_cores", lambda since: 0.0)
    monkeypatch.setattr(decoding, "ProcessPoolExecutor", _Counting)
    _Counting.submitted = 0
    ingest_source(cohort, tmp_path / "a", default_params(ingest={"workers": 2, "shard_size": 4}).ingest, SALT)
    assert _Counting.submitted == 0


def test_spare_cores_are_the_idle_share_of_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.data import decoding

    monkeypatch.setattr(decoding.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(decoding.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(decoding, "cpu_ticks", lambda: (1150, 1400))
    assert decoding.spare_cores((1000, 1000)) == pytest.approx(1.5)  # 150 of 400 ticks idle, of 4 CPUs
    assert decoding.spare_cores((0, 0)) == 3.0  # all idle: every core but this process's own
    monkeypatch.setattr(decoding, "cpu_ticks", lambda: (1000, 1400))
    assert decoding.spare_cores((1000, 1000)) == 0.0  # none idle
    monkeypatch.setattr(decoding.os, "getloadavg", lambda: (3.5, 3.0, 3.0))
    assert decoding.spare_cores((1000, 1395)) == pytest.approx(0.5)  # too short to measure: the load average
    assert decoding.spare_cores(None) == pytest.approx(0.5)


class _Counting(ProcessPoolExecutor):
    """A process pool that counts the chunks submitted to it."""

    submitted = 0

    def submit(self, *args, **kwargs):  # type: ignore[override]
        type(self).submitted += 1
        return super().submit(*args, **kwargs)
