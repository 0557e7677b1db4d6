"""DICOM (Part 10, or a bare dataset): pixels in modality units and de-identified header columns.

Nothing from a header leaves this module except derived, non-identifying values: pseudonyms
(`components.privacy.deid.pseudonym`) of PatientID and SOPInstanceUID, ``site`` = pseudonym of
InstitutionName, ``scanner`` = Manufacturer, ``sex``, ``age_band`` (decade), ``modality``,
``photometric`` and the pixel spacing. A waveform object (no pixels) is read as a recording, its
header the same way.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, iter_pixels
from pydicom.tag import BaseTag
from pydicom.values import convert_DS_string, convert_IS_string

from components.privacy.deid import pseudonym
from components.readers.base import (
    DecodeLimits, Decoded, ImageDecodeError, Reader, check_declared, is_colour, short_reason, spacing_columns,
)
from components.readers.audio import recording
from components.readers.clips import ClipSpec, NotAClipModel, fit_frame, sample_indices, stack_clip, to_grey
from components.readers.waveform import is_waveform, waveform_recording

# Multi-frame objects of these modalities are stacks of slices (volumes); elsewhere frames are time.
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
_PLAIN_ASCII = re.compile(rb"[ -\[\]-~]*")  # printable ASCII but the value separator (backslash)
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
# Values larger than this are read from the file's bytes when first used, not when the header is parsed:
# a cine loop's frames are decoded one at a time, and a copy of all of them would double its memory.
_DEFER_BYTES = 16 * 2**20
_NATIVE_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})  # Implicit and Explicit VR Little Endian
# Values `_plain_value` decodes without pydicom: binary integers (VR: bytes, signed) and text VRs whose
# one plain-ASCII value pydicom gives as the right-stripped string (UIDs: of NULs too; dates and times
# as text, pydicom's default).
_BINARY_INTS = {"US": (2, False), "SS": (2, True), "UL": (4, False), "SL": (4, True)}
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_NUMBER_STRINGS = {"DS": convert_DS_string, "IS": convert_IS_string}
_CONVERT = object()  # `_plain_value`: leave this value to pydicom
_kept: tuple[bytes, Dataset] | None = None  # a file and its dataset, parsed for the next `parse` call


class DicomReader(Reader, name="dicom", formats="DICOM (Part 10)", suffixes=(".dcm", ".dicom", ".ima", "")):
    """DICOM files (with or without the Part 10 preamble); the header gives spacing and subgroups."""

    def accepts(self, data: bytes) -> bool:
        return data[128:132] == b"DICM" or data[:2] in (b"\x02\x00", b"\x08\x00")

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None, clip: ClipSpec | None = None) -> Decoded:
        """An image or volume (`dicom_to_array`), a cine loop sampled by `clip` (`cine_to_clip`), or a
        waveform (voice, ECG: `components.readers.waveform`) as a recording.

        Raises:
            NotAClipModel: a cine loop and `clip` is None.
        """
        try:
            with warnings.catch_warnings():  # pydicom warnings can quote header values
                warnings.simplefilter("ignore")
                ds = parse(data)
                if is_waveform(ds):
                    samples, rate, clip_level = waveform_recording(ds, limits)
                    return recording(samples, rate, clip_level, header_columns(ds, salt))
                if is_cine(ds):
                    if clip is None:
                        raise NotAClipModel("a multi-frame DICOM cine loop was given where an image is expected")
                    arr, columns = cine_to_clip(ds, io.BytesIO(data), clip, limits)
                    return Decoded(arr, {**header_columns(ds, salt), **columns}, kind="video")
                arr = dicom_to_array(ds, limits)
        except ImageDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file can fail anywhere in the parser
            raise ImageDecodeError(f"corrupt or truncated DICOM: {short_reason(exc)}") from None
        spacing = _spacing(ds, volume=arr.ndim == 3 and not is_colour(arr))
        return Decoded(arr, {**header_columns(ds, salt), **spacing_columns(spacing)})


@cache
def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword")
    return BaseTag(tag)


def _has(ds: Dataset, keyword: str) -> bool:
    """``keyword in ds`` without looking the keyword up in pydicom's dictionary on each call (as `_value`)."""
    return _tag(keyword) in ds


def _value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` by a cached tag: pydicom's keyword look-up costs more than reading
    the element, and a header is read some fifty times per image. A value still as read is decoded
    here where that is plain (`_plain_value`): pydicom's conversion of one element costs about 10 us,
    as much as a small image's pixels."""
    tag = _tag(keyword)
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement) and (value := _plain_value(elem)) is not _CONVERT:
        return value
    return ds[tag].value


@cache
def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _plain_value(elem: RawDataElement) -> Any:
    """The value pydicom gives a raw element, for the encodings where that is plain: one binary integer
    (US, SS, UL, SL), OB/OW bytes, IS and DS by pydicom's converters, and text that is printable ASCII
    without a backslash (one value; every DICOM character set reads those bytes as ASCII),
    right-stripped of spaces. `_CONVERT` for anything else (empty, deferred, UN, text other than a UID
    padded with NULs, PN, sequences): pydicom converts those."""
    value, vr = elem.value, elem.VR or _dictionary_vr(elem.tag)
    if not isinstance(value, bytes) or not value:
        return _CONVERT
    if vr in _BINARY_INTS:
        size, signed = _BINARY_INTS[vr]
        if len(value) != size:
            return _CONVERT
        return int.from_bytes(value, "little" if elem.is_little_endian else "big", signed=signed)
    if vr in ("OB", "OW", "OB or OW"):
        return value
    if vr in _NUMBER_STRINGS:  # pydicom's own converter, without the element around it
        return _NUMBER_STRINGS[vr](value, elem.is_little_endian)
    if vr == "UI":  # padded with a NUL to an even length; always in the default character set
        value = value.rstrip(b"\0 ")
    if not _PLAIN_ASCII.fullmatch(value):
        return _CONVERT
    return value.decode("ascii").rstrip(" ") if vr in _TEXT_VRS else _CONVERT


def parse(data: bytes, keep: bool = False) -> Dataset:
    """A whole DICOM file's dataset, pixels parsed but not decoded; values over `_DEFER_BYTES` (a cine
    loop's frames) stay in `data` until used.

    Parsing costs more than decoding a small image, and ingest needs the header twice: `keep` holds
    the dataset (one file, by the identity of `data`) for the next call, which takes it (the burned-in
    screen keeps it for the reader), so each file is parsed once and no header outlives its reading.
    Callers must not change the dataset.

    Raises:
        Exception: whatever pydicom raises for a damaged file (nothing is kept then).
    """
    global _kept
    kept, _kept = _kept, None
    if kept is not None and kept[0] is data:
        ds = kept[1]
    else:
        del kept  # the previous file's bytes are not held while this one is parsed
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM", defer_size=_DEFER_BYTES)
    if keep:
        _kept = (data, ds)
    return ds


def _frames(ds: Dataset) -> int:
    try:
        return int(_value(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def refuse_identifying_pixels(ds: Dataset) -> None:
    """Refuse pixels the header says identify the patient (de-identification acts on the header only).

    Raises:
        ImageDecodeError: BurnedInAnnotation or RecognizableVisualFeatures is YES.
    """
    if header_text(ds, "BurnedInAnnotation").upper() == "YES":
        raise ImageDecodeError("DICOM BurnedInAnnotation is YES: text in the pixels may identify the patient")
    if header_text(ds, "RecognizableVisualFeatures").upper() == "YES":
        raise ImageDecodeError("DICOM RecognizableVisualFeatures is YES: the pixels show features that may identify the patient")


def is_cine(ds: Dataset) -> bool:
    """Whether a DICOM header describes a cine loop (frames over time) rather than an image or volume:
    several frames that are colour, of a modality other than CT/MR/PT/NM, or with a frame time or
    cine rate (MR cine)."""
    if _frames(ds) < 2:
        return False
    timed = any(_has(ds, k) for k in ("FrameTime", "FrameTimeVector", "CineRate"))
    modality = header_text(ds, "Modality").upper()
    return timed or int(_value(ds, "SamplesPerPixel", 1) or 1) > 1 or modality not in VOLUME_MODALITIES


def _frame_rate(ds: Dataset) -> float | None:
    """Frames per second: CineRate, else 1000 / FrameTime, else from the FrameTimeVector (ms between frames)."""
    def number(keyword: str) -> float | None:
        try:
            x = float(_value(ds, keyword))
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) and x > 0 else None

    if rate := number("CineRate") or number("RecommendedDisplayFrameRate"):
        return rate
    if ms := number("FrameTime"):
        return 1000.0 / ms
    vector = [float(v) for v in (_value(ds, "FrameTimeVector") or [])[1:] if float(v) > 0]
    return 1000.0 * len(vector) / sum(vector) if vector else None


def cine_to_clip(ds: Dataset, file: io.BytesIO, spec: ClipSpec,
                 limits: DecodeLimits | None) -> tuple[np.ndarray, dict[str, Any]]:
    """A cine loop's sampled frames as the stored clip (`clips.stack_clip`) and its clip columns.

    Only the sampled frames are decoded, one at a time (`pydicom.pixels.iter_pixels` with their
    indices), in any transfer syntax pydicom decodes; each is made grey and resized at once.

    Args:
        ds: the header (read without pixels). file: the whole file, for the pixel data.

    Raises:
        TooLarge: declared frames, size or duration over `limits`.
        ImageDecodeError: BurnedInAnnotation or RecognizableVisualFeatures YES, a palette-colour loop, undecodable pixel data.
    """
    refuse_identifying_pixels(ds)
    photometric = header_text(ds, "PhotometricInterpretation").upper()
    if photometric == "PALETTE COLOR":
        raise ImageDecodeError("PALETTE COLOR DICOM is not supported: its pixel values are palette indices")
    frames, fps = _frames(ds), _frame_rate(ds)
    rows, columns = int(_value(ds, "Rows", 0) or 0), int(_value(ds, "Columns", 0) or 0)
    bits = int(_value(ds, "BitsStored", 8) or 8)
    check_declared(limits, rows=rows, columns=columns, frames=frames,
                   channels=int(_value(ds, "SamplesPerPixel", 1) or 1),
                   itemsize=(int(_value(ds, "BitsAllocated", 8) or 8) + 7) // 8,
                   seconds=frames / fps if fps else None, streamed=True)
    wanted = sample_indices(frames, spec.frames, spec.stride)
    order = sorted(set(wanted))
    try:
        decoded = dict(zip(order, (fit_frame(to_grey(f), spec) for f in iter_pixels(file, indices=order)), strict=True))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        where = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageDecodeError(f"cannot decode DICOM cine pixel data{where}: {short_reason(exc)}") from None
    unsigned = int(_value(ds, "PixelRepresentation", 0) or 0) == 0
    top = float(2**bits - 1)
    clip = [top - decoded[i] if photometric == "MONOCHROME1" else decoded[i] for i in wanted]
    arr = stack_clip(clip, spec, full_scale=top if unsigned and bits <= 16 else None)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    cols = {"frames": frames, "fps": fps, "duration_s": frames / fps if fps else None, "source_height": rows,
            "source_width": columns, "codec": syntax.name if syntax is not None else None}
    return arr, {k: v for k, v in cols.items() if v is not None}


def dicom_to_array(ds: Dataset, limits: DecodeLimits | None) -> np.ndarray:
    """Pixels of a DICOM dataset in modality units.

    Monochrome images become float32 after the modality LUT (HU for CT); MONOCHROME1 is inverted
    within the stored value range so that higher means brighter, as in MONOCHROME2. Colour images
    (RGB, YBR) come back as (H, W, 3) uint8 RGB. Multi-frame CT/MR/PT/NM objects come back as a
    volume (frames, H, W), each frame through its own rescale when the object is enhanced.

    Raises:
        NotAClipModel: a cine loop (`is_cine`; `cine_to_clip` reads those).
        ImageDecodeError: no pixel data, BurnedInAnnotation or RecognizableVisualFeatures YES (the
            pixels themselves may identify the patient), a palette-colour image, or pixel data that
            cannot be decoded.
    """
    if not any(_has(ds, k) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError("DICOM has no pixel data (truncated file or not an image object)")
    refuse_identifying_pixels(ds)
    frames = _frames(ds)
    samples = int(_value(ds, "SamplesPerPixel", 1) or 1)
    photometric = header_text(ds, "PhotometricInterpretation").upper()
    if frames > 1 and is_cine(ds):
        modality = header_text(ds, "Modality").upper()
        raise NotAClipModel(f"multi-frame {modality or 'DICOM'} object ({frames} frames) is a cine loop, "
                            "not an image or volume (read it with a clip spec)")
    if photometric == "PALETTE COLOR":
        raise ImageDecodeError("PALETTE COLOR DICOM is not supported: its pixel values are palette indices")
    stored = -(-int(_value(ds, "BitsAllocated", 8) or 8) // 8)
    # Monochrome pixels come back as float32, colour as uint8: the larger of that and the stored size.
    check_declared(limits, rows=int(_value(ds, "Rows", 0) or 0), columns=int(_value(ds, "Columns", 0) or 0),
                   frames=frames, channels=samples, itemsize=max(stored, 4 if samples == 1 else 1))
    try:
        arr = native_pixels(ds)
        if arr is None:
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        where = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageDecodeError(f"cannot decode DICOM pixel data{where}: {short_reason(exc)}") from None
    if samples > 1:
        if arr.ndim != 3 or arr.shape[-1] != samples:
            raise ImageDecodeError(f"unexpected colour DICOM pixel shape {arr.shape}")
        rgb = arr[..., :3]
        if rgb.dtype != np.uint8:
            rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)
    if arr.ndim != (3 if frames > 1 else 2):
        raise ImageDecodeError(f"unexpected DICOM pixel shape {arr.shape} for {frames} frame(s)")
    rescale = _frame_rescale(ds, frames)

    def to_units(values: np.ndarray, per_frame: bool) -> np.ndarray:
        if rescale is None:
            shift = _whole_shift(values, ds)
            if shift is None:
                return np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
            # 16-bit integers plus a whole shift are exact in float32: one pass, not a cast and an add
            return np.add(values, np.float32(shift), dtype=np.float32) if shift else values.astype(np.float32)
        slope, intercept = (rescale[:, 0], rescale[:, 1]) if per_frame else rescale[0]
        if per_frame:
            slope, intercept = slope[:, None, None], intercept[:, None, None]
        return values * slope + intercept

    out = to_units(arr, frames > 1).astype(np.float32, copy=False)
    if photometric == "MONOCHROME1":
        if np.issubdtype(arr.dtype, np.integer):
            bits = int(_value(ds, "BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
            signed = int(_value(ds, "PixelRepresentation", 0) or 0) == 1
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            ends = to_units(np.array([lo, hi]), False)
            top = float(ends.min() + ends.max())
        else:
            top = float(np.nanmin(out) + np.nanmax(out))
        out = (top - out).astype(np.float32)
    return out


def native_pixels(ds: Dataset) -> np.ndarray | None:
    """The stored values of a one-frame, one-sample, uncompressed little-endian image whose stored bits
    fill its allocated bits (nothing to mask or sign-extend), exactly as `ds.pixel_array` gives them,
    read straight from the pixel data; None for any other image (pydicom's decoder reads those).

    pydicom's decoder checks every pixel attribute on each call: for a small image that costs more
    than parsing the whole header (benchmarks/intake.py).
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax not in _NATIVE_LE or not _has(ds, "PixelData") or _frames(ds) != 1 or _value(ds, "SamplesPerPixel", 1) != 1:
        return None
    bits, signed = _value(ds, "BitsAllocated"), _value(ds, "PixelRepresentation")
    rows, columns = _value(ds, "Rows"), _value(ds, "Columns")
    if bits not in (8, 16, 32) or _value(ds, "BitsStored") != bits or signed not in (0, 1) or not rows or not columns:
        return None
    data = _value(ds, "PixelData")
    count = rows * columns
    if not isinstance(data, bytes) or len(data) not in (count * bits // 8, count * bits // 8 + 1):  # + even padding
        return None
    return np.frombuffer(data, dtype=f"<{'ui'[signed]}{bits // 8}", count=count).reshape(rows, columns)


def _whole_shift(values: np.ndarray, ds: Dataset) -> float | None:
    """The top-level modality LUT as a shift when it is one that float32 computes exactly (pixels of at
    most 16-bit integers, no LUT sequence, slope 1 and a whole intercept under 2**23, or no rescale:
    0); None otherwise (`apply_modality_lut` in float64 then). CT's usual rescale is such a shift."""
    if values.dtype.kind not in "iu" or values.dtype.itemsize > 2 or _value(ds, "ModalityLUTSequence"):
        return None
    if not (_has(ds, "RescaleSlope") and _has(ds, "RescaleIntercept")):  # pydicom applies neither alone
        return 0.0
    try:
        slope, intercept = float(_value(ds, "RescaleSlope")), float(_value(ds, "RescaleIntercept"))
    except (TypeError, ValueError):
        return None
    return intercept if slope == 1.0 and intercept.is_integer() and abs(intercept) < 2**23 else None


def _frame_rescale(ds: Dataset, frames: int) -> np.ndarray | None:
    """Per-frame (slope, intercept) rows from enhanced functional groups; None when the top level
    (RescaleSlope/Intercept or a Modality LUT Sequence) or nothing applies."""
    if any(_has(ds, k) for k in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence")):
        return None

    def pick(item: Dataset | None) -> tuple[float, float] | None:
        seq = item.get("PixelValueTransformationSequence") if item is not None else None
        if not seq:
            return None
        return float(seq[0].get("RescaleSlope", 1) or 1), float(seq[0].get("RescaleIntercept", 0) or 0)

    shared = _value(ds, "SharedFunctionalGroupsSequence")
    per = _value(ds, "PerFrameFunctionalGroupsSequence") or []
    common = pick(shared[0]) if shared else None
    own = [pick(per[i]) if i < len(per) else None for i in range(frames)]
    if common is None and not any(own):
        return None
    return np.array([o or common or (1.0, 0.0) for o in own], dtype=np.float64)


def _spacing(ds: Dataset, volume: bool) -> tuple[float | None, float | None, float | None]:
    """(between slices, between rows, between columns) in mm from the header or its functional groups."""
    def number(value: Any) -> float | None:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) and x > 0 else None

    measures = None
    shared = _value(ds, "SharedFunctionalGroupsSequence")
    if shared and shared[0].get("PixelMeasuresSequence"):
        measures = shared[0].PixelMeasuresSequence[0]
    pixel = _value(ds, "PixelSpacing") or _value(ds, "ImagerPixelSpacing") or (
        measures.get("PixelSpacing") if measures is not None else None)
    h = w = None
    if pixel is not None and len(pixel) == 2:
        h, w = number(pixel[0]), number(pixel[1])
    d = None
    if volume:
        for holder in (ds, measures):
            if holder is not None:
                d = number(holder.get("SpacingBetweenSlices")) or number(holder.get("SliceThickness"))
                if d is not None:
                    break
    return d, h, w


def header_columns(ds: Dataset, salt: str) -> dict[str, Any]:
    """The derived, non-identifying manifest values a header gives (absent ones left out).

    ``patient_id``: pseudonym of PatientID (else StudyInstanceUID); ``image_id``: pseudonym of
    SOPInstanceUID; ``site``: ``site-`` + pseudonym of InstitutionName.
    """
    def text(keyword: str) -> str:
        return header_text(ds, keyword)

    patient = text("PatientID") or text("StudyInstanceUID")
    sop = str(_value(ds, "SOPInstanceUID", "") or "")
    institution = text("InstitutionName")
    sex = text("PatientSex").upper()
    band = age_band(text("PatientAge"))
    if band is None:
        band = _age_from_dates(text("PatientBirthDate"), text("StudyDate"))
    columns = {
        "patient_id": pseudonym(patient, salt) if patient else None,
        "image_id": pseudonym(sop, salt) if sop else None,
        "site": f"site-{pseudonym(institution, salt, 8)}" if institution else None,
        "sex": sex if sex in ("M", "F", "O") else None,
        "age_band": band,
        "scanner": text("Manufacturer") or None,
        "modality": text("Modality") or None,
        "photometric": text("PhotometricInterpretation") or None,
    }
    return {k: v for k, v in columns.items() if v is not None}


def header_text(ds: Dataset, keyword: str) -> str:
    """``str(ds.get(keyword) or "").strip()``, by `_value`."""
    return str(_value(ds, keyword, "") or "").strip()


def age_band(patient_age: str | None) -> str | None:
    """Decade of a DICOM age string: ``045Y`` -> ``40-49``; under a year ``0-9``; 90 and over ``90+``."""
    m = _AGE.match(str(patient_age or ""))
    if not m:
        return None
    years = int(m.group(1)) if m.group(2) == "Y" else 0
    if years >= 90:
        return "90+"
    lo = years // 10 * 10
    return f"{lo}-{lo + 9}"


def _age_from_dates(birth: str, study: str) -> str | None:
    if not (re.fullmatch(r"\d{8}", birth) and re.fullmatch(r"\d{8}", study)):
        return None
    years = int(study[:4]) - int(birth[:4]) - (1 if study[4:] < birth[4:] else 0)
    return age_band(f"{years:03d}Y") if 0 <= years < 200 else None


def is_keyword(name: str) -> bool:
    """Whether `name` is a DICOM attribute keyword (e.g. ``SOPInstanceUID``)."""
    return tag_for_keyword(name) is not None


def header_value(path: Path, keyword: str) -> str:
    """One attribute of a DICOM file's header as text, read without the pixels.

    Raises:
        Exception: whatever pydicom raises for an unreadable file (the caller reports it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[keyword])
    return str(head.get(keyword, "") or "").strip()
