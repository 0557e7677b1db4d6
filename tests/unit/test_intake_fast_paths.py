"""Ingest's fast paths give what the general paths give: DICOM parsed once, pixels read without
pydicom's decoder, CT's rescale in float32, header text without pydicom's conversion, shard members,
the source walk, the level columns."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from components.config import default_params
from components.data.labels import relative_file
from components.data.shards import ShardWriter
from components.data.sources import walk_files
from components.demo.cohort import generate_cohort
from components.readers.audio import level_columns
from components.readers.base import DecodeLimits
from components.readers import dicom as dicom_reader
from components.readers.dicom import dicom_to_array, header_columns, native_pixels, parse
from components.stages.ingest import ingest_source

SALT = "unit-test-salt"
LIMITS = DecodeLimits(**default_params().ingest.limits.model_dump())


def _dicom(pixels: np.ndarray, *, bits_stored: int | None = None, syntax: str = ExplicitVRLittleEndian,
           frames: int = 1, **header: object) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(pixels.dtype.kind == "i")
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buf.getvalue()


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_native_pixels_are_pydicoms_pixel_array(dtype: type, syntax: str) -> None:
    info = np.iinfo(dtype)
    pixels = np.random.default_rng(1).integers(info.min, info.max, (7, 9), endpoint=True).astype(dtype)
    data = _dicom(pixels, syntax=syntax)
    fast = native_pixels(parse(data))
    expected = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert fast is not None and fast.dtype == expected.dtype and np.array_equal(fast, expected)


def test_native_pixels_leave_what_needs_decoding_to_pydicom() -> None:
    signed12 = np.array([[0, 2047, 2048, 4095]], dtype=np.int16)  # 12 stored bits: 2048.. are negative
    stored12 = _dicom(signed12, bits_stored=12)
    assert native_pixels(parse(stored12)) is None
    assert np.array_equal(dicom_to_array(parse(stored12), LIMITS), [[0, 2047, -2048, -1]])
    volume = np.zeros((2, 4, 4), dtype=np.int16)
    assert native_pixels(parse(_dicom(volume, frames=2))) is None
    ds = pydicom.dcmread(io.BytesIO(_dicom(np.arange(16, dtype=np.uint8).reshape(4, 4))))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    compressed = parse(buf.getvalue())
    assert native_pixels(compressed) is None
    assert np.array_equal(dicom_to_array(compressed, LIMITS), np.arange(16).reshape(4, 4))


@pytest.mark.parametrize("rescale", [(1, -1024), (1, 0), (1.0, 3000), (0.5, -1024), (1, 0.5), (2, -3), None, (None, -1024)])
def test_modality_units_are_apply_modality_luts(rescale: tuple[float | None, float] | None) -> None:
    pixels = np.random.default_rng(2).integers(-2000, 4000, (6, 5)).astype(np.int16)
    header = {}
    if rescale is not None:
        slope, intercept = rescale
        header = {"RescaleIntercept": intercept} if slope is None else {"RescaleSlope": slope, "RescaleIntercept": intercept}
    ds = parse(_dicom(pixels, **header))
    expected = np.asarray(apply_modality_lut(pixels, pydicom.dcmread(io.BytesIO(_dicom(pixels, **header)))),
                          dtype=np.float64).astype(np.float32)
    got = dicom_to_array(ds, LIMITS)
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def _header_dataset(charset: str | None, values: dict[str, object]) -> bytes:
    header = {"SpecificCharacterSet": charset} if charset else {}
    return _dicom(np.zeros((2, 2), dtype=np.int16), **header, **values)


@pytest.mark.parametrize(("charset", "values"), [
    (None, {"PatientID": " MRN 7 ", "InstitutionName": "General", "PatientSex": "F", "PatientAge": "045Y",
            "Manufacturer": "Acme^[x]~"}),
    (None, {"PatientID": "", "StudyInstanceUID": "1.2.3.4", "Manufacturer": ["Acme", "Beta"],
            "PatientBirthDate": "19700101", "StudyDate": "20200601", "PatientSex": "M "}),
    ("ISO_IR 100", {"PatientID": "Müller", "InstitutionName": "Hôpital Saint-Éloi", "Manufacturer": "Siemens"}),
    ("ISO_IR 192", {"PatientID": "患者12", "InstitutionName": "病院", "PatientAge": "089Y"}),
])
def test_header_columns_read_without_conversion_match_pydicoms(charset: str | None, values: dict[str, object]) -> None:
    data = _header_dataset(charset, values)
    converted = pydicom.dcmread(io.BytesIO(data))
    for _ in converted:  # iterating converts every element the way pydicom does
        pass
    assert header_columns(parse(data), SALT) == header_columns(converted, SALT)


def test_a_raw_value_padded_with_nuls_goes_through_pydicom() -> None:
    data = _header_dataset(None, {"InstitutionName": "General"}).replace(b"General ", b"General\x00")
    converted = pydicom.dcmread(io.BytesIO(data))
    for _ in converted:
        pass
    assert header_columns(parse(data), SALT) == header_columns(converted, SALT)


_VALUES = {  # keyword: values as written, one of each VR `_plain_value` decodes (and some it leaves to pydicom)
    "Rows": 7, "SmallestImagePixelValue": -3, "ReferencedFrameNumber": 12, "SimpleFrameList": [70000],
    "RescaleSlope": "0.5", "RescaleIntercept": "-1024", "PixelSpacing": ["0.7", " 1.25e-1"], "SliceThickness": "9.75",
    "NumberOfFrames": "1", "InstanceNumber": " 12 ", "SeriesNumber": "1.0", "SOPInstanceUID": "1.2.345",
    "StudyInstanceUID": "1.2.3456", "Modality": "CT", "PatientAge": "045Y", "StudyDate": "20200601",
    "Manufacturer": "Acme ", "ImageType": ["ORIGINAL", "PRIMARY"], "PatientName": "Doe^Jane", "InstitutionName": "",
    "FrameTimeVector": ["0", "33.3"],
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # "1.0": pydicom reads it, and so must this
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_values_read_without_conversion_are_pydicoms(syntax: str) -> None:
    """Every value `_value` decodes itself equals what pydicom converts, and has a type that compares the same."""
    values = dict(_VALUES)
    values["ReferencedFrameNumber"] = 12  # IS in the dictionary; US/SS/UL/SL below set by element
    data = _dicom(np.arange(12, dtype=np.int16).reshape(3, 4), syntax=syntax, **values)
    raw, converted = parse(data), pydicom.dcmread(io.BytesIO(data))
    for keyword in [*values, "PixelData", "BitsAllocated", "PixelRepresentation"]:
        fast, expected = dicom_reader._value(raw, keyword), converted.get(keyword)
        expected = list(expected) if isinstance(expected, MultiValue) else expected
        fast = list(fast) if isinstance(fast, list) else fast
        assert fast == expected and (fast is None) == (expected is None), keyword
        assert dicom_reader.header_text(raw, keyword) == str(converted.get(keyword) or "").strip(), keyword
    malformed = parse(data.replace(b"9.75", b"9,75"))  # left to pydicom, which refuses it
    with pytest.raises(ValueError, match="9,75"):
        dicom_reader._value(malformed, "SliceThickness")


def test_plain_values_cover_the_binary_integer_vrs() -> None:
    ds = Dataset()
    ds.add_new(0x00091001, "SS", -2)
    ds.add_new(0x00091002, "UL", 70000)
    ds.add_new(0x00091003, "SL", -70000)
    ds.add_new(0x00091004, "US", [1, 2])  # two values: pydicom's list
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf)
    raw = parse(buf.getvalue())
    for tag, expected in ((0x00091001, -2), (0x00091002, 70000), (0x00091003, -70000)):
        value = dicom_reader._plain_value(raw.get_item(tag))
        assert value == expected and type(value) is int
    assert dicom_reader._plain_value(raw.get_item(0x00091004)) is dicom_reader._CONVERT


def test_ingest_parses_each_dicom_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The burned-in screen and the reader share one parse (it costs more than a small image's pixels)."""
    cohort = generate_cohort(tmp_path / "cohort", default_params(cohort={"patients": 3, "images_per_patient": 2,
                                                                         "image_size": 32}).cohort)
    calls = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = ingest_source(cohort, tmp_path / "out", default_params(ingest={"workers": 1}).ingest, SALT)
    assert result.num_images == 6 and len(calls) == 6
    assert dicom_reader._kept is None  # the reader took the screen's dataset: no header outlives its file


def test_shard_members_are_the_bytes_np_save_writes(tmp_path: Path) -> None:
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2, 3, 3), np.uint8), np.arange(5, dtype=">i2")]
    with ShardWriter(tmp_path, 0) as writer:
        members = [writer.add(a)["path"].rsplit("/", 1)[1] for a in arrays]
    with zipfile.ZipFile(tmp_path / "images" / "00000.npz") as zf:
        for array, member in zip(arrays, members, strict=True):
            expected = io.BytesIO()
            np.save(expected, array)
            assert zf.read(member) == expected.getvalue()


@pytest.mark.parametrize("zip64_limit", [zipfile.ZIP64_LIMIT, 150])  # 150: zip64 headers and offsets on small members
def test_shards_are_the_bytes_zipfile_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64_limit: int) -> None:
    """Members written with their CRC known up front give the shard zipfile's own writer gives (DVC sees no change)."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", zip64_limit)
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2, 3, 3), np.uint8), np.arange(40, dtype=">i2"),
              np.arange(12, dtype=np.float32).reshape(3, 4)]  # the last: a duplicate, stored once
    with ShardWriter(tmp_path, 0) as writer:
        members = [writer.add(a)["path"].rsplit("/", 1)[1] for a in arrays]
    expected = tmp_path / "zipfile.npz"
    with zipfile.ZipFile(expected, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for array, member in list(zip(arrays, members, strict=True))[:3]:
            info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
            npy = io.BytesIO()
            np.save(npy, array)
            info.file_size = len(npy.getvalue())
            with zf.open(info, "w") as f:
                f.write(npy.getvalue())
    assert (tmp_path / "images" / "00000.npz").read_bytes() == expected.read_bytes()


@pytest.mark.parametrize(("value", "expected"), [
    ("p00001/0.dcm", "p00001/0.dcm"), ("a/..b/c.dcm", "a/..b/c.dcm"), ("./a//b/", "a/b"), ("a\\b.dcm", "a/b.dcm"),
    ("a/./b.dcm", "a/b.dcm"), ("/abs.dcm", None), ("../x.dcm", None), ("a/../b.dcm", None), ("", None), (".", None),
])
def test_relative_file_keeps_clean_paths_and_cleans_or_refuses_the_rest(value: str, expected: str | None) -> None:
    assert relative_file(value) == expected


def test_walk_files_follows_file_links_not_folder_links_and_skips_hidden(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    for rel in ("b/2.dcm", "a.dcm", ".hidden.dcm", ".cache/x.dcm", "b/c/3.dcm"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (elsewhere / "d").mkdir(parents=True)
    (elsewhere / "d" / "4.dcm").write_bytes(b"x")
    os.symlink(elsewhere / "d" / "4.dcm", root / "linked.dcm")
    os.symlink(elsewhere / "d", root / "linked-folder")
    os.symlink(tmp_path / "missing.dcm", root / "broken.dcm")
    assert walk_files(root) == ["a.dcm", "b/2.dcm", "b/c/3.dcm", "linked.dcm"]
    assert walk_files(root / "a.dcm") == ["a.dcm"]


def test_level_columns_peak_and_clipping_on_any_channel() -> None:
    stereo = np.zeros((100, 2), dtype=np.float32)
    stereo[:10, 1] = -1.0  # clipped on the right channel only
    stereo[50, 0] = 0.5
    cols = level_columns(stereo, 1000, clip=0.999)
    assert cols["clipped_fraction"] == 0.1 and cols["peak_dbfs"] == 0.0
    quiet = level_columns(stereo * 0.25, 1000, clip=0.999)
    assert quiet["clipped_fraction"] == 0 and quiet["peak_dbfs"] == pytest.approx(20 * np.log10(0.25))
