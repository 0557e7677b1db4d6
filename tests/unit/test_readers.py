"""The readers: one interface for every format, each format's decoding, and the dispatch by content."""

from __future__ import annotations

import copy
import io
import re

import nibabel as nib
import numpy as np
import pydicom
import pytest

from components.config import default_params
from components.data.manifest import EXTRA_COLUMNS, MANIFEST_COLUMNS
from components.readers import (
    READERS, ClipSpec, DecodeLimits, Decoded, ImageDecodeError, Reader, decode, decode_image, reader_for_name,
)
from components.readers.base import check_array
from components.readers.dicom import age_band, dicom_to_array
from tests.images import audio_bytes, dicom_bytes, grey_image, jpeg_bytes, npy_bytes, png_bytes, tone
from tests.videos import sweep_frames, video_bytes

SALT = "unit-test-salt"
LIMITS = DecodeLimits(**default_params().ingest.limits.model_dump())  # what ingest reads with


def _ct_slice() -> pydicom.Dataset:
    pixels = np.random.default_rng(5).integers(0, 3000, (16, 12)).astype(np.int16)  # HU -1024..1975
    return pydicom.dcmread(io.BytesIO(dicom_bytes(pixels)))


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _nifti_bytes() -> bytes:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)
    return nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.5, 1.0])).to_bytes()


# One file of each registered format, and a word every refusal by that reader names. A new reader
# adds its sample here; the interface tests below then hold it to the same contract.
SAMPLES = {
    "raster": png_bytes(grey_image()),
    "npy": npy_bytes(np.zeros((4, 5, 6), np.float32)),
    "nifti": _nifti_bytes(),
    "dicom": dicom_bytes(grey_image().astype(np.int16)),
    "video": video_bytes(sweep_frames(6, 16, 16)),
    "audio": audio_bytes(tone(0.1)),
}
NAMED_IN_REFUSALS = {"raster": "PNG", "npy": ".npy", "nifti": "NIfTI", "dicom": "DICOM", "video": "video", "audio": "WAV"}
CLIP = ClipSpec(frames=4, size=16)  # for the readers that read clips


def _read(reader: Reader, data: bytes) -> Decoded:
    return reader.read(data, SALT, LIMITS, clip=CLIP) if reader.name in ("video", "dicom") else reader.read(data, SALT, LIMITS)


# ---- the interface ----------------------------------------------------------------------------


def test_every_registered_reader_has_a_sample() -> None:
    assert [r.name for r in READERS] == list(dict.fromkeys(r.name for r in READERS))  # unique names
    assert {r.name for r in READERS} == set(SAMPLES) == set(NAMED_IN_REFUSALS)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_reader_reads_its_own_format(reader: Reader) -> None:
    assert isinstance(reader, Reader) and reader.formats
    assert reader.suffixes and all(s == s.lower() for s in reader.suffixes)
    assert all(reader_for_name(f"dir/file{s}") is reader for s in reader.suffixes)
    own = SAMPLES[reader.name]
    assert reader.accepts(own)
    decoded = _read(reader, own)
    assert isinstance(decoded, Decoded)
    if decoded.kind == "image":
        check_array(decoded.array)
    assert set(decoded.columns) <= set(MANIFEST_COLUMNS) | set(EXTRA_COLUMNS)
    assert None not in decoded.columns.values()
    np.testing.assert_array_equal(decode(own, SALT, LIMITS, clip=CLIP).array,
                                  check_array(decoded.array) if decoded.kind == "image" else decoded.array)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_reader_refuses_other_formats_naming_the_problem(reader: Reader) -> None:
    for other, data in SAMPLES.items():
        if other == reader.name:
            continue
        assert not reader.accepts(data), other
        with pytest.raises(ImageDecodeError, match=re.escape(NAMED_IN_REFUSALS[reader.name])):
            _read(reader, data)


def test_dicom_columns_are_pseudonyms_only() -> None:
    ds = _ct_slice()
    columns = decode(_dicom_bytes(ds), SALT, LIMITS).columns
    assert columns["patient_id"] != ds.PatientID and re.fullmatch(r"[0-9a-f]{16}", columns["patient_id"])
    assert ds.SOPInstanceUID not in columns.values() and columns["modality"] == "CT"


# ---- decode_image -------------------------------------------------------------------------------


def test_decode_image_formats() -> None:
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    np.testing.assert_array_equal(decode_image(png_bytes(grey), LIMITS), grey)
    rgb = np.dstack([grey, grey[::-1], grey.T.reshape(12, 10)])
    np.testing.assert_array_equal(decode_image(png_bytes(rgb), LIMITS), rgb)
    jpeg = decode_image(jpeg_bytes(grey), LIMITS)
    assert jpeg.shape == grey.shape and jpeg.dtype == np.uint8
    sixteen = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    np.testing.assert_array_equal(decode_image(png_bytes(sixteen), LIMITS), sixteen)
    volume = np.zeros((4, 5, 6), np.float64)
    decoded = decode_image(npy_bytes(volume), LIMITS)
    assert decoded.shape == (4, 5, 6) and decoded.dtype == np.float32


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"GIF89a not supported", "unrecognised"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "PNG"),
    (b"\xff\xd8\xff\xe0 truncated", "JPEG"),
    (b"\x93NUMPY garbage", ".npy"),
    (b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00", "DICOM"),
])
def test_decode_image_refuses_garbage(data: bytes, words: str) -> None:
    with pytest.raises(ImageDecodeError, match=re.escape(words)):
        decode_image(data, LIMITS)


def test_decode_image_refuses_nan_and_object_arrays() -> None:
    with pytest.raises(ImageDecodeError, match="NaN"):
        decode_image(npy_bytes(np.array([[1.0, np.inf], [0.0, 1.0]])), LIMITS)
    with pytest.raises(ImageDecodeError):
        decode_image(npy_bytes(np.zeros((2, 2, 2, 2))), LIMITS)


# ---- DICOM ----------------------------------------------------------------------------------------


def test_monochrome1_is_inverted() -> None:
    ds = _ct_slice()
    normal = dicom_to_array(ds, LIMITS)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = dicom_to_array(ds, LIMITS)
    lo, hi = -32768 - 1024, 32767 - 1024  # stored int16 range after the -1024 intercept
    np.testing.assert_allclose(inverted, (lo + hi) - normal)
    assert np.corrcoef(inverted.ravel(), normal.ravel())[0, 1] < -0.99


@pytest.mark.parametrize("value, band", [
    ("045Y", "40-49"), ("009Y", "0-9"), ("006M", "0-9"), ("090Y", "90+"), ("101Y", "90+"),
    ("", None), ("abc", None), (None, None),
])
def test_age_band(value, band) -> None:
    assert age_band(value) == band


def test_colour_and_compressed_dicom() -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, UltrasoundImageStorage

    rgb = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 6, 5, 3, 0
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    np.testing.assert_array_equal(decode_image(_dicom_bytes(ds), LIMITS), rgb)

    ct = _ct_slice()
    ct.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ct.PixelData = encapsulate([b"\xff\xd8 not really jpeg \xff\xd9"])
    ct["PixelData"].VR = "OB"
    with pytest.raises(ImageDecodeError, match="transfer syntax JPEG Lossless"):
        decode_image(_dicom_bytes(ct), LIMITS)


def test_multiframe_ct_is_a_volume_with_per_frame_rescale() -> None:
    from pydicom.dataset import Dataset

    ds = _ct_slice()
    one = dicom_to_array(ds, LIMITS)
    stack = copy.deepcopy(ds)
    stack.NumberOfFrames = 3
    stack.PixelData = ds.PixelData * 3
    stack.SpacingBetweenSlices = "2.0"
    volume = decode_image(_dicom_bytes(stack), LIMITS)
    assert volume.shape == (3, *one.shape)
    np.testing.assert_array_equal(volume[2], one)
    # Enhanced objects carry the rescale in functional groups, here one per frame.
    del stack.RescaleSlope, stack.RescaleIntercept
    groups = []
    for slope in (1.0, 2.0, 1.0):
        item, pvt = Dataset(), Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept = slope, -1024
        item.PixelValueTransformationSequence = [pvt]
        groups.append(item)
    stack.PerFrameFunctionalGroupsSequence = groups
    enhanced = dicom_to_array(stack, LIMITS)
    np.testing.assert_allclose(enhanced[0], one)
    np.testing.assert_allclose(enhanced[1], (one + 1024) * 2 - 1024)


def test_npy_arrays_sharing_a_header_each_decode_to_their_own_data() -> None:
    # The header's parse is cached (components.readers.npy): the same header, other pixels, other orders.
    first, second = (np.random.default_rng(seed).random((6, 7)).astype(np.float32) for seed in (0, 1))
    np.testing.assert_array_equal(decode_image(npy_bytes(first), LIMITS), first)
    np.testing.assert_array_equal(decode_image(npy_bytes(second), LIMITS), second)
    np.testing.assert_array_equal(decode_image(npy_bytes(np.asfortranarray(second)), LIMITS), second)
    whole = npy_bytes(first)
    for cut in (9, 12, 40):  # inside the length field, inside the header, inside the data
        with pytest.raises(ImageDecodeError, match=r"\.npy"):
            decode_image(whole[:cut], LIMITS)
