"""Bounded decoding (issue 15): a file declaring more than the limits is refused before anything is
decoded, by every reader, and ingest reports any file a reader fails on and goes on with the others."""

from __future__ import annotations

import csv
import io
import threading
import time
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from components.config import default_params
from components.privacy.names import file_pseudonym
from components.readers import DecodeLimits, TooLarge, decode
from components.stages.ingest import ingest_source
from tests.conftest import problems_by_file
from tests.images import FORGED, dicom_bytes, grey_image, npy_bytes, png_bytes

SALT = "unit-test-salt"
# What the service derives for a model of 64x64 grey input (services.inference.decode_limits, 32x).
SERVICE_LIMITS = DecodeLimits(max_bytes=16 * 2**20, max_side=2048, max_frames=32, max_seconds=0.0)
# The size each forged file declares, decoded (DICOM monochrome decodes to float32).
DECLARED_BYTES = {"rle-dicom": 20_000**2 * 4, "png": 9_000**2, "nifti-gz": 8_000**2, "npy": 10**12 * 8}


@pytest.mark.parametrize("kind", FORGED)
def test_a_forged_file_is_refused_before_anything_is_decoded(kind: str) -> None:
    data = FORGED[kind]()
    assert len(data) < 100_000  # small on disk and on the wire: only its header is large
    with pytest.raises(TooLarge):  # first call: the readers' lazy imports are not counted below
        decode(data, SALT, SERVICE_LIMITS)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match=r"exceeds the limit of 2048 per side"):
            decode(data, SALT, SERVICE_LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20 and peak < DECLARED_BYTES[kind] / 30, f"{peak} bytes allocated"


def _nifti(slices: int) -> bytes:
    return nib.Nifti1Image(np.zeros((8, 8, slices), np.int16), np.eye(4)).to_bytes()


def _limits(max_bytes: int) -> DecodeLimits:
    return DecodeLimits(max_bytes=max_bytes, max_side=32, max_frames=4, max_seconds=1.0)


def _zeros(*shape: int, dtype: type = np.uint8) -> np.ndarray:
    return np.zeros(shape, dtype)


BOUNDARIES = {  # (limits, a file exactly at them, the same one step over, the limit the refusal names)
    "png side": (_limits(2**20), png_bytes(_zeros(32, 32)), png_bytes(_zeros(33, 32)), "per side"),
    "png bytes": (_limits(32 * 32), png_bytes(_zeros(32, 32)), png_bytes(_zeros(32, 32, dtype=np.uint16)), "MiB"),
    "npy frames": (_limits(2**20), npy_bytes(_zeros(4, 8, 8)), npy_bytes(_zeros(5, 8, 8)), "frames"),
    "npy bytes": (_limits(32 * 32 * 4), npy_bytes(_zeros(32, 32, dtype=np.float32)),
                  npy_bytes(_zeros(32, 32, dtype=np.float64)), "MiB"),
    "dicom side": (_limits(2**20), dicom_bytes(_zeros(32, 32, dtype=np.int16)),
                   dicom_bytes(_zeros(32, 33, dtype=np.int16)), "per side"),
    # 16-bit stored, float32 decoded: 32x32 needs 4096 bytes, twice what it is stored in.
    "dicom bytes": (_limits(32 * 32 * 2), dicom_bytes(_zeros(32, 16, dtype=np.int16)),
                    dicom_bytes(_zeros(32, 32, dtype=np.int16)), "MiB"),
    "nifti slices": (_limits(2**20), _nifti(4), _nifti(5), "frames"),
}


@pytest.mark.parametrize("limits, fits, over, word", BOUNDARIES.values(), ids=BOUNDARIES.keys())
def test_a_file_at_the_limits_decodes_and_one_step_over_is_refused(limits: DecodeLimits, fits: bytes, over: bytes,
                                                                   word: str) -> None:
    assert decode(fits, SALT, limits).array.size
    with pytest.raises(TooLarge, match=word):
        decode(over, SALT, limits)


def test_png_decoding_never_changes_the_process_warning_filters() -> None:
    """`warnings.catch_warnings` swaps a process-wide list: under the service's threads another
    thread's warning could turn into an error or an ignored one. The raster reader must not touch it."""
    data = png_bytes(grey_image(size=600))
    stop = threading.Event()

    def decode_repeatedly() -> None:
        while not stop.is_set():
            decode(data, SALT, SERVICE_LIMITS)

    before = list(warnings.filters)
    worker = threading.Thread(target=decode_repeatedly)
    worker.start()
    changed = 0
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            changed += warnings.filters != before
    finally:
        stop.set()
        worker.join()
    assert changed == 0


# ---- ingest -------------------------------------------------------------------------------------


def _folder(src: Path, files: dict[str, bytes]) -> None:
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    with open(src / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([name, str(i % 2)] for i, name in enumerate(files))


def _one_value_pixel_spacing() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(grey_image(seed=3).astype(np.int16))))
    ds.PixelSpacing = "0.7"  # one value where the standard has two: the reader's spacing code raises TypeError
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_ingest_reports_each_bad_file_and_keeps_the_others(tmp_path: Path) -> None:
    good = {f"good{i}.dcm": dicom_bytes(grey_image(seed=i).astype(np.int16)) for i in range(3)}
    forged = {"forged.dcm": FORGED["rle-dicom"](), "forged.png": FORGED["png"](),
              "forged.nii.gz": FORGED["nifti-gz"](), "forged.npy": FORGED["npy"]()}
    _folder(tmp_path / "src", {**good, **forged, "spacing.dcm": _one_value_pixel_spacing()})
    # PNG accepted: the forged PNG's reason is then its declared size
    cfg = default_params(ingest={"workers": 1, "limits": {"max_side": 4096}, "accept_burned_in_risk": ["PNG"]}).ingest

    result = ingest_source(tmp_path / "src", tmp_path / "out", cfg, SALT)

    reasons = problems_by_file(result.problems, [*forged, "spacing.dcm"], SALT)
    assert set(reasons) == {*forged, "spacing.dcm"}
    for name in forged:
        assert "exceeds the limit of 4096 per side" in reasons[name], reasons[name]
    assert reasons["spacing.dcm"].startswith("TypeError: ") and "\n" not in reasons["spacing.dcm"]
    assert result.num_images == len(good)


def test_ingest_reports_a_memory_error_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that runs out of memory (numpy asked for a forged size) makes that file's problem only."""
    from components.readers.npy import NpyReader

    real_read, forged = NpyReader.read, FORGED["npy"]()

    def read(self, data, salt, limits):
        if data == forged:
            raise MemoryError("Unable to allocate 7.28 TiB")
        return real_read(self, data, salt, limits)

    monkeypatch.setattr(NpyReader, "read", read)
    _folder(tmp_path / "src", {"good.npy": npy_bytes(grey_image()), "huge.npy": forged})
    cfg = default_params(ingest={"workers": 1}).ingest

    result = ingest_source(tmp_path / "src", tmp_path / "out", cfg, SALT)

    (problem,) = result.problems
    assert problem["file"] == file_pseudonym("huge.npy", SALT)
    assert problem["reason"].startswith("MemoryError: "), problem
    assert result.num_images == 1


def test_a_npy_declaring_more_data_than_it_holds_is_refused_before_allocating(tmp_path: Path) -> None:
    """Limits high enough to let a forged .npy header through: its missing data is found before numpy allocates."""
    _folder(tmp_path / "src", {"good.npy": npy_bytes(grey_image()), "huge.npy": FORGED["npy"]()})
    cfg = default_params(ingest={"workers": 1, "limits": {"max_bytes": 10**14, "max_side": 10**7}}).ingest

    result = ingest_source(tmp_path / "src", tmp_path / "out", cfg, SALT)

    (problem,) = result.problems
    assert problem["file"] == file_pseudonym("huge.npy", SALT)
    assert "corrupt .npy" in problem["reason"] and "bytes of data for" in problem["reason"], problem
    assert result.num_images == 1


def test_a_file_larger_than_the_decoded_limit_is_not_even_read(tmp_path: Path) -> None:
    big = npy_bytes(np.zeros((64, 64), np.float32))
    _folder(tmp_path / "src", {"good.npy": npy_bytes(grey_image()), "big.npy": big})
    cfg = default_params(ingest={"workers": 1, "limits": {"max_bytes": len(big) - 1}}).ingest

    result = ingest_source(tmp_path / "src", tmp_path / "out", cfg, SALT)

    assert [(p["file"], "file of" in p["reason"]) for p in result.problems] == [(file_pseudonym("big.npy", SALT), True)]
