"""Ingest: turn a source into a de-identified manifest plus sharded pixel files.

Sources (`ingest_source` detects the kind; docs/manifest.md is the data contract):

* ``dicom``: a folder holding ``labels.csv`` and the images it lists (nested folders, mixed
  series), usually DICOM; PNG, JPEG, NIfTI and ``.npy`` files listed there are decoded too.
  Columns: the key column (``cfg.key_column``, ``path`` by default: the file relative to the
  folder; or a DICOM keyword such as ``SOPInstanceUID`` matched against each file's header),
  ``label``, and optionally ``patient_id`` and ``split`` (train/val/test).
* ``nifti``: the same layout where the listed files are NIfTI-1/2 volumes (``.nii``, ``.nii.gz``).
* ``png``: a folder of PNG/JPEG images in class-named subfolders (``<class>/.../<file>``), or
  ``<split>/<class>/...`` when every top-level folder is train, val or test.
* ``npz``: a MedMNIST ``.npz`` (``{train,val,test}_{images,labels}``); ``medmnist:<name>`` is
  first turned into ``<data root>/<name>.npz`` by `resolve_medmnist`.

Output under ``out_dir``: ``manifest.parquet`` (`MANIFEST_COLUMNS`, then whichever of
`EXTRA_COLUMNS` the source has), ``images/<NNNNN>.npz`` shards (uncompressed zip archives whose
members are ``<content hash>.npy``; a row's ``path`` is ``images/<NNNNN>.npz/<hash>.npy``, read it
with `ImageStore`), ``sources.csv`` (``image_id``, the source file it came from) and
``problems.json`` (every skipped input as ``{"file", "reason"}``). Shards keep a dataset of
100,000 images at a few hundred files, which DVC hashes, caches and pushes faster than one
file per image (benchmarks/intake.py measures both).

De-identification: nothing from a DICOM header reaches the outputs except derived, non-identifying
values: ``patient_id`` = HMAC pseudonym of PatientID (or of labels.csv ``patient_id``), ``site`` =
pseudonym of InstitutionName, ``scanner`` = Manufacturer, ``sex``, ``age_band`` (decade),
``modality``, ``photometric`` and the pixel spacing. ``image_id`` is a pseudonym of SOPInstanceUID
(or of the relative path). Source paths appear only in problems.json and sources.csv (the
operator's own file names, so that a report can name the file to fix).

DICOM pixels become float32 in modality units (Hounsfield units for CT) via the modality LUT
(RescaleSlope/Intercept, or the Pixel Value Transformation of enhanced multi-frame objects);
MONOCHROME1 is inverted so that higher always means brighter. Multi-frame CT, MR, PT and NM
objects are volumes (D, H, W); other multi-frame objects (cine loops) are refused. NIfTI volumes
are reoriented to RAS and stored (D, H, W) = (inferior→superior, anterior→posterior, right→left).
The same `decode_image` serves uploads in the model server, so training and serving decode
identically.

Throughput: inputs are decoded in chunks of ``cfg.shard_size`` (one shard each) by ``cfg.workers``
processes; memory holds a few chunks' worth of small records, never the dataset's pixels.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Self

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from components.data.artifacts import MANIFEST_COLUMNS, SPLITS, IngestedDataset
from components.config import IngestConfig
from components.privacy.deid import deid_dicom, pseudonym

if TYPE_CHECKING:  # pandas and pyarrow load lazily: decoding processes start without them
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "EXTRA_COLUMNS", "ImageDecodeError", "ImageStore", "age_band", "content_hash", "decode_image",
    "deid_dicom", "dicom_to_array", "ingest_source", "read_manifest", "resolve_medmnist",
]

logger = logging.getLogger(__name__)

# Optional manifest columns and their dtypes, in this order, after MANIFEST_COLUMNS.
EXTRA_COLUMNS: dict[str, str] = {
    "site": "string", "sex": "string", "age_band": "string", "scanner": "string", "modality": "string",
    "photometric": "string",
    "spacing_d": "float64", "spacing_h": "float64", "spacing_w": "float64",  # mm between slices, rows, columns
}
SUPPORTED_SOURCES = (
    ("a folder with labels.csv (columns path or the configured key column, label; optional "
     "patient_id, split) and the DICOM or NIfTI (.nii, .nii.gz) files it lists"),
    "a folder of PNG/JPEG images in class-named subfolders (optionally under train/val/test)",
    "a MedMNIST .npz file (train/val/test _images and _labels), or medmnist:<name>",
)
MEDMNIST_PREFIX = "medmnist:"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima", ""})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Names that conventionally mean "no finding": listed first so that index 1 is the finding.
NEGATIVE_CLASS_NAMES = ("normal", "negative", "healthy", "benign", "no_finding", "no finding", "control")
# Multi-frame objects of these modalities are stacks of slices (volumes); elsewhere frames are time.
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
MAX_GZIP_BYTES = 1 << 30  # a .nii.gz expanding beyond this is refused (decompression bomb)
SOURCES_FILE = "sources.csv"
PROBLEMS_FILE = "problems.json"
MANIFEST_FILE = "manifest.parquet"
CLASS_NAMES_ATTR = "class_names"  # key of the class order in the manifest's metadata (DataFrame.attrs)

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_NPY = b"\x93NUMPY"
_GZIP = b"\x1f\x8b"
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same pixels give the same shard bytes


class ImageDecodeError(ValueError):
    """An input's bytes are not an image this platform can use; the message says why."""


class Decoded(NamedTuple):
    """A decoded input: pixels in the stored layout, the DICOM header if any, spacing (d, h, w) in mm."""

    array: np.ndarray
    dicom: Dataset | None
    spacing: tuple[float | None, float | None, float | None]


# ---------------------------------------------------------------------------------------------
# Decoding: one path for ingest and for the model server.


def decode_image(data: bytes, salt: str = "") -> np.ndarray:
    """Decode an uploaded file's bytes (PNG, JPEG, DICOM, NIfTI or .npy) into the array ingest would store.

    Args:
        data: the whole file.
        salt: accepted for symmetry with ingest; only pixels are returned, so no header value needs
            pseudonymising here.

    Returns:
        2D grey (H, W), 2D colour (H, W, 3) uint8, or a 3D volume (D, H, W). DICOM gives float32 in
        modality units (Hounsfield units for CT); PNG/JPEG keep their integer dtype.

    Raises:
        ImageDecodeError: empty body, unknown format, corrupt file, cine or burned-in DICOM, 4D
            NIfTI, NaN/infinite values, or an unusable shape.
    """
    del salt
    return _decode_bytes(data).array


def dicom_to_array(ds: Dataset) -> np.ndarray:
    """Pixels of a DICOM dataset in modality units.

    Monochrome images become float32 after the modality LUT (HU for CT); MONOCHROME1 is inverted
    within the stored value range so that higher means brighter, as in MONOCHROME2. Colour images
    (RGB, YBR) come back as (H, W, 3) uint8 RGB. Multi-frame CT/MR/PT/NM objects come back as a
    volume (frames, H, W), each frame through its own rescale when the object is enhanced.

    Raises:
        ImageDecodeError: no pixel data, BurnedInAnnotation YES (the pixels themselves may carry
            identifiers), multi-frame colour or cine objects, a palette-colour image, or pixel data
            that cannot be decoded.
    """
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError("DICOM has no pixel data (truncated file or not an image object)")
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        raise ImageDecodeError("DICOM BurnedInAnnotation is YES: text in the pixels may identify the patient")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if frames > 1 and (samples > 1 or modality not in VOLUME_MODALITIES):
        raise ImageDecodeError(
            f"multi-frame {modality or 'DICOM'} object ({frames} frames) is a cine or time series, not a "
            f"volume; only multi-frame {', '.join(sorted(VOLUME_MODALITIES))} is read (as a 3D volume)")
    if photometric == "PALETTE COLOR":
        raise ImageDecodeError("PALETTE COLOR DICOM is not supported: its pixel values are palette indices")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        where = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageDecodeError(f"cannot decode DICOM pixel data{where}: {_short(exc)}") from None
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
            return np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
        slope, intercept = (rescale[:, 0], rescale[:, 1]) if per_frame else rescale[0]
        if per_frame:
            slope, intercept = slope[:, None, None], intercept[:, None, None]
        return values * slope + intercept

    out = to_units(arr, frames > 1).astype(np.float32)
    if photometric == "MONOCHROME1":
        if np.issubdtype(arr.dtype, np.integer):
            bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
            signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            ends = to_units(np.array([lo, hi]), False)
            top = float(ends.min() + ends.max())
        else:
            top = float(np.nanmin(out) + np.nanmax(out))
        out = (top - out).astype(np.float32)
    return out


def _frame_rescale(ds: Dataset, frames: int) -> np.ndarray | None:
    """Per-frame (slope, intercept) rows from enhanced functional groups; None when the top level
    (RescaleSlope/Intercept or a Modality LUT Sequence) or nothing applies."""
    if any(k in ds for k in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence")):
        return None

    def pick(item: Dataset | None) -> tuple[float, float] | None:
        seq = item.get("PixelValueTransformationSequence") if item is not None else None
        if not seq:
            return None
        return float(seq[0].get("RescaleSlope", 1) or 1), float(seq[0].get("RescaleIntercept", 0) or 0)

    shared = ds.get("SharedFunctionalGroupsSequence")
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    common = pick(shared[0]) if shared else None
    own = [pick(per[i]) if i < len(per) else None for i in range(frames)]
    if common is None and not any(own):
        return None
    return np.array([o or common or (1.0, 0.0) for o in own], dtype=np.float64)


def _dicom_spacing(ds: Dataset, volume: bool) -> tuple[float | None, float | None, float | None]:
    """(between slices, between rows, between columns) in mm from the header or its functional groups."""
    def number(value: Any) -> float | None:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) and x > 0 else None

    measures = None
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get("PixelMeasuresSequence"):
        measures = shared[0].PixelMeasuresSequence[0]
    pixel = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (
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


def _decode_bytes(data: bytes) -> Decoded:
    """Sniff the format from the content (never the suffix) and decode; DICOM also gives its header."""
    if not data:
        raise ImageDecodeError("empty file")
    ds: Dataset | None = None
    spacing: tuple[float | None, float | None, float | None] = (None, None, None)
    if data.startswith(_GZIP):
        data = _gunzip(data)
        if not _nifti_version(data):
            raise ImageDecodeError("gzip content is not a NIfTI volume (only .nii.gz is read compressed)")
    if data.startswith((_PNG, _JPEG)):
        arr = _decode_pil(data)
    elif data.startswith(_NPY):
        arr = _decode_npy(data)
    elif version := _nifti_version(data):
        arr, spacing = _decode_nifti(data, version)
    elif data[128:132] == b"DICM" or data[:2] in (b"\x02\x00", b"\x08\x00"):
        try:
            with warnings.catch_warnings():  # pydicom warnings can quote header values
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
                arr = dicom_to_array(ds)
        except ImageDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file can fail anywhere in the parser
            raise ImageDecodeError(f"corrupt or truncated DICOM: {_short(exc)}") from None
        spacing = _dicom_spacing(ds, volume=arr.ndim == 3 and not _is_colour(arr))
    else:
        raise ImageDecodeError("unrecognised content: expected PNG, JPEG, DICOM (Part 10), NIfTI or .npy")
    return Decoded(_check_array(arr), ds, spacing)


def _gunzip(data: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_GZIP_BYTES)
    except zlib.error as exc:
        raise ImageDecodeError(f"corrupt or truncated gzip: {_short(exc)}") from None
    if inflater.unconsumed_tail:
        raise ImageDecodeError(f"gzip content expands beyond {MAX_GZIP_BYTES >> 20} MiB")
    if not inflater.eof:
        raise ImageDecodeError("corrupt or truncated gzip: unexpected end of data")
    return out


def _nifti_version(data: bytes) -> int:
    """1 or 2 for a single-file NIfTI header (either byte order), else 0."""
    if len(data) >= 348 and data[344:348] == b"n+1\x00" and data[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return 1
    if len(data) >= 540 and data[4:8] == b"n+2\x00" and data[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return 2
    if len(data) >= 348 and data[344:348] == b"ni1\x00":
        raise ImageDecodeError("NIfTI header/image pair (.hdr/.img) is not supported: convert it to one .nii file")
    return 0


def _decode_nifti(data: bytes, version: int) -> tuple[np.ndarray, tuple[float | None, float | None, float | None]]:
    import nibabel as nib

    kind = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    try:
        img = nib.as_closest_canonical(kind.from_bytes(data))
        arr = np.asanyarray(img.dataobj)
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise ImageDecodeError(f"corrupt or truncated NIfTI: {_short(exc)}") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3:
        raise ImageDecodeError(f"NIfTI of shape {arr.shape}: 4D volumes (time series or several channels) "
                               "are not supported")
    if arr.ndim == 2:
        arr = arr[..., np.newaxis]
    zooms += [1.0] * (3 - len(zooms))
    # RAS (x: right→left, y: posterior→anterior, z: inferior→superior) → (D, H, W) with rows from anterior.
    volume = np.ascontiguousarray(np.flip(np.transpose(arr, (2, 1, 0)), axis=1))
    spacing = tuple(z if math.isfinite(z) and z > 0 else None for z in (zooms[2], zooms[1], zooms[0]))
    if volume.shape[0] == 1:
        return volume[0], (None, spacing[1], spacing[2])
    return volume, (spacing[0], spacing[1], spacing[2])


def _decode_pil(data: bytes) -> np.ndarray:
    kind = "PNG" if data.startswith(_PNG) else "JPEG"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if getattr(opened, "n_frames", 1) > 1:
                    raise ImageDecodeError(f"animated {kind} is not supported")
                opened.load()
                img = ImageOps.exif_transpose(opened)
                return _pil_to_array(img)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, bomb errors
        raise ImageDecodeError(f"corrupt or truncated {kind}: {_short(exc)}") from None


def _pil_to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode.startswith("I;16"):
        return np.asarray(img, dtype=np.uint16) if mode != "I;16B" else np.asarray(img).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(img, dtype=np.int32)
        return arr.astype(np.uint16) if arr.size and arr.min() >= 0 and arr.max() <= 65535 else arr
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode == "P" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])  # a grey palette is a grey image
    return rgb


def _decode_npy(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt .npy: {_short(exc)}") from None


def _check_array(arr: np.ndarray) -> np.ndarray:
    """Bring an array to the stored layout and refuse what cannot be an image."""
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageDecodeError(f"pixel dtype {arr.dtype} is not numeric")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ImageDecodeError(f"unsupported array shape {arr.shape}: "
                               "expected (H, W), (H, W, C) or (D, H, W)")
    if arr.size == 0 or min(arr.shape) == 0:
        raise ImageDecodeError(f"empty image of shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ImageDecodeError("image contains NaN or infinite values")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _is_colour(arr: np.ndarray) -> bool:
    return arr.ndim == 3 and arr.shape[-1] in (3, 4)


def content_hash(arr: np.ndarray) -> str:
    """sha256 over ``"<shape>|<dtype.str>|"`` and the C-order pixel bytes (shape like ``64x64``)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{'x'.join(map(str, arr.shape))}|{arr.dtype.str}|".encode())
    h.update(arr.data.cast("B"))
    return h.hexdigest()


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


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest written by ingest with the contract's dtypes (unknown extra columns as strings)."""
    import pandas as pd

    df = pd.read_parquet(path)
    dtypes = {c: MANIFEST_COLUMNS.get(c) or EXTRA_COLUMNS.get(c, "string") for c in df.columns}
    return df.astype(dtypes)


# ---------------------------------------------------------------------------------------------
# Stored pixels: uncompressed .npz shards, one member per distinct image.


class _ShardWriter:
    """Writes one shard, ``images/<index>.npz``, member by member (one image in memory at a time)."""

    def __init__(self, out_dir: Path, index: int):
        self.rel = f"images/{index:05d}.npz"
        self.path = out_dir / self.rel
        self._zip: zipfile.ZipFile | None = None
        self._members: set[str] = set()

    def add(self, arr: np.ndarray) -> dict[str, Any]:
        """Store `arr` (identical pixels share a member) and return its manifest pixel columns."""
        digest = content_hash(arr)
        member = f"{digest}.npy"
        if member not in self._members:
            if self._zip is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._zip = zipfile.ZipFile(self.path.with_suffix(".tmp"), "w", zipfile.ZIP_STORED, allowZip64=True)
            with self._zip.open(zipfile.ZipInfo(member, date_time=_ZIP_TIME), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
            self._members.add(member)
        return _pixel_columns(arr, digest, f"{self.rel}/{member}")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self.path.with_suffix(".tmp").replace(self.path)
            self._zip = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pixel_columns(arr: np.ndarray, digest: str, rel: str) -> dict[str, Any]:
    colour = _is_colour(arr)
    spatial = arr.shape[:2] if colour else arr.shape
    ndim = len(spatial)
    return {
        "path": rel,
        "ndim": ndim,
        "height": int(spatial[-2]),
        "width": int(spatial[-1]),
        "depth": int(spatial[0]) if ndim == 3 else 1,
        "channels": int(arr.shape[-1]) if colour else 1,
        "dtype": str(arr.dtype),
        "intensity_min": float(arr.min()),
        "intensity_max": float(arr.max()),
        "intensity_mean": float(arr.mean(dtype=np.float64)),
        "intensity_std": float(arr.std(dtype=np.float64)),
        "content_hash": digest,
    }


class ImageStore:
    """Reads the images a manifest points to; ``path`` is a shard member or a plain ``.npy`` file.

    Keeps up to `max_open` shards open, so reading rows grouped by shard costs one open per shard.
    Use as a context manager, or call `close`.
    """

    def __init__(self, root: Path, max_open: int = 16):
        self.root = Path(root)
        self.max_open = max_open
        self._open: dict[str, zipfile.ZipFile] = {}

    def _member(self, rel: str) -> tuple[zipfile.ZipFile, str] | None:
        shard, sep, member = rel.partition(".npz/")
        if not sep:
            return None
        key = shard + ".npz"
        zf = self._open.pop(key, None) or zipfile.ZipFile(self.root / key)
        self._open[key] = zf  # most recently used last
        while len(self._open) > self.max_open:
            self._open.pop(next(iter(self._open))).close()
        return zf, member

    def read_bytes(self, rel: str) -> bytes:
        """The image as the bytes of a ``.npy`` file (what the model server accepts as an upload)."""
        found = self._member(rel)
        return (self.root / rel).read_bytes() if found is None else found[0].read(found[1])

    def load(self, rel: str) -> np.ndarray:
        found = self._member(rel)
        if found is None:
            return np.load(self.root / rel, allow_pickle=False)
        with found[0].open(found[1]) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def close(self) -> None:
        for zf in self._open.values():
            zf.close()
        self._open.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# medmnist:<name>


def resolve_medmnist(source: str, data_root: Path | None, cfg: IngestConfig) -> Path:
    """The local ``.npz`` of ``medmnist:<name>``: ``<data_root>/<name>.npz``, downloaded there first
    when absent, ``cfg.medmnist_url`` is set and the network answers within ``cfg.download_timeout_s``.

    Raises:
        ValueError: a malformed name, or the file is absent and could not be downloaded; the message
            says where to put the file.
    """
    name = source.removeprefix(MEDMNIST_PREFIX).strip().lower()
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"{source}: expected medmnist:<name>, e.g. medmnist:pneumoniamnist or medmnist:adrenalmnist3d")
    if data_root is None:
        raise ValueError(f"{source}: no data root; set MEDGATE_DATA_ROOT to the folder holding {name}.npz")
    path = Path(data_root) / f"{name}.npz"
    if path.is_file():
        return path
    why = "downloads are off (ingest.medmnist_url is empty)"
    if cfg.medmnist_url:
        url = cfg.medmnist_url.format(name=name)
        try:
            _download(url, path, cfg.download_timeout_s)
            return path
        except Exception as exc:  # noqa: BLE001 - offline, refused, timed out, unwritable: all say the same
            why = f"downloading {url} failed ({type(exc).__name__}: {_short(exc)})"
    raise ValueError(
        f"{source}: {path} does not exist and {why}. Put the MedMNIST file {name}.npz in {path.parent} "
        f"(or set MEDGATE_DATA_ROOT to the folder that holds it), then run again.")


def _download(url: str, path: Path, timeout_s: float) -> None:
    """Fetch `url` to `path` atomically, bounded by `timeout_s` per network operation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        with zipfile.ZipFile(tmp) as zf:  # a captive portal's HTML page is not a dataset
            if not any(n.endswith("_images.npy") for n in zf.namelist()):
                raise ValueError("the downloaded file has no *_images arrays")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Ingest.

_BATCH_ROWS = 1024  # rows held as dicts before they are packed into an Arrow batch


def _schema() -> pa.Schema:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(c, types[t]) for c, t in {**MANIFEST_COLUMNS, **EXTRA_COLUMNS}.items()])


@dataclass
class _Sink:
    """Collects manifest rows (in compact Arrow batches), sources and problems, one image at a time."""

    out_dir: Path
    salt: str
    sources: Any  # csv writer of sources.csv
    allowed_labels: frozenset[str] | None = None
    problems: list[dict[str, str]] = field(default_factory=list)
    image_ids: set[str] = field(default_factory=set)
    batches: list[pa.Table] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    shards: int = 0

    def problem(self, file: str, reason: str) -> None:
        self.problems.append({"file": file, "reason": reason})

    def reserve_shards(self, n: int) -> int:
        first = self.shards
        self.shards += n
        return first

    def label_allowed(self, file: str, label: str) -> bool:
        if self.allowed_labels is not None and label not in self.allowed_labels:
            self.problem(file, f"label {label!r} is not one of ingest.class_names")
            return False
        return True

    def add(self, file: str, pixels: dict[str, Any], *, label: str, split: str | None, patient_id: str,
            image_id: str, extra: dict[str, Any] | None = None) -> None:
        while image_id in self.image_ids:  # e.g. the same SOP instance copied twice
            image_id = pseudonym(image_id + "/dup", self.salt)
        self.image_ids.add(image_id)
        self.pending.append({"image_id": image_id, "patient_id": patient_id, "label": label, "split": split,
                             **pixels, **(extra or {})})
        self.sources.writerow([image_id, file])
        if len(self.pending) >= _BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            import pyarrow as pa

            self.batches.append(pa.Table.from_pylist(self.pending, schema=_schema()))
            self.pending = []

    def frame(self) -> pd.DataFrame:
        """The manifest, its strings left in Arrow buffers (a Python object per value would make
        memory grow by kilobytes per image)."""
        self.flush()
        import pandas as pd
        import pyarrow as pa

        table = pa.concat_tables(self.batches) if self.batches else _schema().empty_table()
        extras = [c for c in EXTRA_COLUMNS if table.column(c).null_count < len(table)]
        table = table.select([*MANIFEST_COLUMNS, *extras])
        return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


class _Progress:
    """A rich progress bar (counts only, never file names), or nothing."""

    def __init__(self, bar: Any = None, task: Any = None):
        self._bar, self._task = bar, task

    def grow(self, n: int) -> None:
        """n more steps to come (work is discovered in phases: headers, files, npz splits)."""
        if self._bar is not None:
            task = next(t for t in self._bar.tasks if t.id == self._task)
            self._bar.update(self._task, total=(task.total or 0) + n)

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


@contextlib.contextmanager
def _progress(show: bool, description: str) -> Iterator[_Progress]:
    if not show:
        yield _Progress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        yield _Progress(bar, bar.add_task(description, total=None))


def ingest_source(source: str | Path, out_dir: Path, cfg: IngestConfig, salt: str,
                  show_progress: bool = False) -> IngestedDataset:
    """Ingest a source into ``out_dir`` (see the module docstring for kinds and outputs).

    Streams: pixels go to shard files as they are decoded, by ``cfg.workers`` processes; memory
    holds compact manifest rows, not images. Bad inputs (corrupt, truncated or empty files,
    non-images, missing files or label rows, labels outside ``cfg.class_names``, NaN pixels, cine or
    burned-in DICOM, 4D NIfTI) are skipped and listed in problems.json; constant images,
    duplicates and split leaks are kept for validate to flag. Nothing identifying is logged.

    Args:
        source: a folder or a ``.npz`` path (resolve ``medmnist:<name>`` with `resolve_medmnist`).
        out_dir: where manifest.parquet, images/, sources.csv and problems.json go; must not be
            inside the source. A previous ingest's outputs there are replaced.
        cfg: the ingest section of params.yaml.
        salt: secret key of the pseudonyms (same salt, same pseudonyms).
        show_progress: draw a progress bar (counts only, no file names).

    Returns:
        The IngestedDataset record.

    Raises:
        ValueError: unsupported or missing source (the message lists what is supported), an empty
            salt, a labels.csv without the needed columns, or nothing usable left after skipping.
    """
    if isinstance(source, str) and source.startswith(MEDMNIST_PREFIX):
        raise ValueError(f"{source}: resolve medmnist:<name> to its .npz path (resolve_medmnist) before ingest; "
                         f"supported: {'; '.join(SUPPORTED_SOURCES)}")
    src = Path(source)
    if not salt:
        raise ValueError("ingest needs a non-empty salt: pseudonyms without a secret key can be reversed")
    if not src.exists():
        raise ValueError(f"{src}: source does not exist; supported: {'; '.join(SUPPORTED_SOURCES)}")
    kind = _detect_kind(src)
    out_dir = Path(out_dir)
    _check_out_dir(src, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "images", ignore_errors=True)  # a previous ingest's outputs, never another's
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)

    with open(out_dir / SOURCES_FILE, "w", newline="") as sources_file, \
            _progress(show_progress, f"ingest {kind}") as progress:
        writer = csv.writer(sources_file, lineterminator="\n")
        writer.writerow(["image_id", "source"])
        sink = _Sink(out_dir, salt, writer,
                     allowed_labels=frozenset(cfg.class_names) if cfg.class_names else None)
        if kind in ("dicom", "nifti"):
            _ingest_labelled_folder(src, cfg, sink, progress)
        elif kind == "png":
            _ingest_class_folders(src, cfg, sink, progress)
        else:
            _ingest_npz(src, cfg, sink, progress)

    (out_dir / PROBLEMS_FILE).write_text(json.dumps(sink.problems, indent=1) + "\n")
    manifest = sink.frame()
    if manifest.empty:
        first = f"; first: {sink.problems[0]['file']}: {sink.problems[0]['reason']}" if sink.problems else ""
        raise ValueError(f"{src}: no usable images ({len(sink.problems)} problems{first})")
    class_names = tuple(cfg.class_names) if cfg.class_names else order_class_names(manifest["label"].astype(str))
    # The class order travels with the manifest (parquet metadata): prepare indexes labels by it.
    manifest.attrs[CLASS_NAMES_ATTR] = list(class_names)
    manifest_path = out_dir / MANIFEST_FILE
    manifest.to_parquet(manifest_path, index=False)
    result = IngestedDataset(
        manifest=manifest_path,
        source=str(source),
        kind=kind,
        num_images=len(manifest),
        num_patients=int(manifest["patient_id"].nunique()),
        class_names=class_names,
        problems=tuple(sink.problems),
    )
    logger.info("ingest %s: %d images, %d patients, %d classes, %d problems", kind, result.num_images,
                result.num_patients, len(class_names), len(sink.problems))
    return result


def _detect_kind(src: Path) -> str:
    if src.is_file() and src.suffix.lower() == ".npz":
        return "npz"
    if src.is_dir():
        if (src / "labels.csv").is_file():
            files = [p for p in _walk_files(src) if p != "labels.csv" and _maybe_image(p)]
            return "nifti" if files and all(p.lower().endswith(NIFTI_SUFFIXES) for p in files) else "dicom"
        for sub in src.iterdir():
            if sub.is_dir() and not sub.name.startswith(".") and any(
                    p.suffix.lower() in IMAGE_SUFFIXES for p in sub.rglob("*") if p.is_file()):
                return "png"
    raise ValueError(f"{src}: unsupported source; supported: {'; '.join(SUPPORTED_SOURCES)}")


def _check_out_dir(src: Path, out_dir: Path) -> None:
    s, o = src.resolve(), out_dir.resolve()
    if src.is_dir() and (o == s or s in o.parents):
        raise ValueError(f"{out_dir}: out_dir is inside the source {src}; ingest never writes into raw data")
    if o / "images" == s or (o / "images") in s.parents:
        raise ValueError(f"{src}: source lies inside {out_dir / 'images'}, which ingest replaces")


def _walk_files(root: Path) -> list[str]:
    """Relative posix paths of the non-hidden files under root, sorted."""
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# Decoding files in worker processes, one shard per chunk.


@dataclass(frozen=True)
class _Result:
    """What a worker learned from one file; identifiers leave it only as pseudonyms."""

    file: str
    pixels: dict[str, Any] | None = None  # manifest pixel columns; None when the file was skipped
    header: dict[str, Any] = field(default_factory=dict)  # derived header columns (site, sex, spacing...)
    patient: str = ""  # pseudonym of the header's PatientID (or StudyInstanceUID)
    instance: str = ""  # pseudonym of the header's SOPInstanceUID
    problem: str = ""


def _decode_chunk(src: str, files: Sequence[str], out_dir: str, shard: int, salt: str,
                  on_file: Callable[[], None] | None = None) -> list[_Result]:
    """Decode `files` (relative to `src`) into shard `shard` of `out_dir`; runs in a worker process."""
    results = []
    with _ShardWriter(Path(out_dir), shard) as writer:
        for rel in files:
            try:
                decoded = _decode_bytes((Path(src) / rel).read_bytes())
            except (ImageDecodeError, OSError) as exc:
                results.append(_Result(rel, problem=_short(exc)))
            else:
                ds = decoded.dicom
                header = _header_columns(ds, salt) if ds is not None else {}
                header.update({k: v for k, v in zip(("spacing_d", "spacing_h", "spacing_w"), decoded.spacing,
                                                    strict=True) if v is not None})
                patient = _patient_key(ds) if ds is not None else ""
                sop = str(ds.get("SOPInstanceUID", "") or "") if ds is not None else ""
                results.append(_Result(rel, writer.add(decoded.array), header,
                                       pseudonym(patient, salt) if patient else "", pseudonym(sop, salt) if sop else ""))
            if on_file is not None:
                on_file()
    return results


# Starting a process costs about a second (a fresh interpreter imports numpy, pydicom, Pillow): fewer
# chunks than this decode faster in this process (benchmarks/intake.py measures both).
_POOL_MIN_CHUNKS = 4


def _worker_count(cfg: IngestConfig) -> int:
    return cfg.workers or len(os.sched_getaffinity(0))


def _decode_files(src: Path, files: list[str], cfg: IngestConfig, sink: _Sink, progress: _Progress) -> Iterator[_Result]:
    """Results for `files`, in order. Two or more chunks and workers: a process pool (spawned, since
    the caller may run threads), with at most two chunks per worker in flight."""
    size = max(1, cfg.shard_size)
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    first = sink.reserve_shards(len(chunks))
    workers = min(_worker_count(cfg), len(chunks))
    if workers <= 1 or len(chunks) < _POOL_MIN_CHUNKS:
        for k, chunk in enumerate(chunks):
            yield from _decode_chunk(str(src), chunk, str(sink.out_dir), first + k, sink.salt, progress.step)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        queue: deque[tuple[int, Future[list[_Result]]]] = deque()
        upcoming = iter(enumerate(chunks))

        def submit() -> None:
            nxt = next(upcoming, None)
            if nxt is not None:
                k, chunk = nxt
                queue.append((len(chunk), pool.submit(_decode_chunk, str(src), chunk, str(sink.out_dir),
                                                      first + k, sink.salt)))

        for _ in range(2 * workers):
            submit()
        while queue:
            n, future = queue.popleft()
            results = future.result()
            submit()
            progress.step(n)
            yield from results


# ---------------------------------------------------------------------------------------------
# Source kinds.


def _ingest_labelled_folder(src: Path, cfg: IngestConfig, sink: _Sink, progress: _Progress) -> None:
    labels_path = src / "labels.csv"
    with open(labels_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        key = cfg.key_column
        missing = [c for c in (key, "label") if c not in columns]
        if missing:
            raise ValueError(f"{labels_path}: missing column(s) {missing}; has {columns}")
        rows = [(i + 2, {k: (v or "").strip() for k, v in r.items() if k is not None})
                for i, r in enumerate(reader)]

    files = [p for p in _walk_files(src) if p != "labels.csv" and _maybe_image(p)]
    by_key: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    if key == "path":
        by_key = {p: p for p in files}
    else:
        if tag_for_keyword(key) is None:
            raise ValueError(f"{labels_path}: key column {key!r} is neither 'path' nor a DICOM keyword")
        progress.grow(len(files))
        for rel in files:  # header pass: which file carries which key value
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    head = pydicom.dcmread(src / rel, stop_before_pixels=True, specific_tags=[key])
                value = str(head.get(key, "") or "").strip()
            except Exception as exc:  # noqa: BLE001 - any unreadable header is a reported problem
                unreadable[rel] = f"unreadable DICOM header: {_short(exc)}"
                value = ""
            if value and value not in by_key:
                by_key[value] = rel
            progress.step()

    accepted: list[tuple[str, str, str | None, str]] = []  # (file, label, split, labels.csv patient_id)
    used: set[str] = set()
    for line, row in rows:
        ref = row.get(key, "")
        where = f"labels.csv:{line}"
        if key == "path":
            normalised = _normalise_rel(ref)
            if normalised is None:
                sink.problem(where, "path is empty, absolute or leaves the source folder")
                continue
            ref = where = normalised
        found = by_key.get(ref) if ref else None
        if found is None:
            if key == "path":
                reason = "listed in labels.csv but the file is missing" if not (src / ref).is_file() \
                    else "listed in labels.csv but not an image file (hidden or unsupported suffix)"
                sink.problem(ref, reason)
            else:
                sink.problem(where, f"no file has this row's {key}")
            continue
        rel = found
        if rel in used:
            sink.problem(rel, "listed more than once in labels.csv; the first row is kept")
            continue
        used.add(rel)
        label = row.get("label", "")
        if not label:
            sink.problem(rel, "empty label in labels.csv")
            continue
        split = row.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            sink.problem(rel, f"split {split!r} is not one of {', '.join(SPLITS)}")
            continue
        if sink.label_allowed(rel, label):
            accepted.append((rel, label, split, row.get("patient_id", "")))

    progress.grow(len(accepted))
    results = _decode_files(src, [a[0] for a in accepted], cfg, sink, progress)
    for (rel, label, split, patient_csv), result in zip(accepted, results, strict=True):
        if result.pixels is None:
            sink.problem(rel, result.problem)
            continue
        patient = pseudonym(patient_csv, sink.salt) if patient_csv else result.patient or pseudonym(rel, sink.salt)
        sink.add(rel, result.pixels, label=label, split=split, patient_id=patient,
                 image_id=result.instance or pseudonym(rel, sink.salt), extra=result.header)
    for rel in files:
        if rel not in used:
            sink.problem(rel, unreadable.get(rel, "no row in labels.csv"))


def _maybe_image(rel: str) -> bool:
    lower = rel.lower()
    suffix = PurePosixPath(lower).suffix
    return suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES or suffix == ".npy" or lower.endswith(NIFTI_SUFFIXES)


def _normalise_rel(value: str) -> str | None:
    if not value:
        return None
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        return None
    parts = [x for x in p.parts if x not in (".", "")]
    return "/".join(parts) or None


def _patient_key(ds: Dataset) -> str:
    for keyword in ("PatientID", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return value
    return ""


def _header_columns(ds: Dataset, salt: str) -> dict[str, Any]:
    """The derived, non-identifying values a header may contribute (None where absent)."""
    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip()

    institution = text("InstitutionName")
    sex = text("PatientSex").upper()
    band = age_band(text("PatientAge"))
    if band is None:
        band = _age_from_dates(text("PatientBirthDate"), text("StudyDate"))
    return {
        "site": f"site-{pseudonym(institution, salt, 8)}" if institution else None,
        "sex": sex if sex in ("M", "F", "O") else None,
        "age_band": band,
        "scanner": text("Manufacturer") or None,
        "modality": text("Modality") or None,
        "photometric": text("PhotometricInterpretation") or None,
    }


def _age_from_dates(birth: str, study: str) -> str | None:
    if not (re.fullmatch(r"\d{8}", birth) and re.fullmatch(r"\d{8}", study)):
        return None
    years = int(study[:4]) - int(birth[:4]) - (1 if study[4:] < birth[4:] else 0)
    return age_band(f"{years:03d}Y") if 0 <= years < 200 else None


def _ingest_class_folders(src: Path, cfg: IngestConfig, sink: _Sink, progress: _Progress) -> None:
    top = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_layout = bool(top) and all(name in SPLITS for name in top)
    accepted: list[tuple[str, str, str | None]] = []
    for rel in _walk_files(src):
        if PurePosixPath(rel).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        parts = PurePosixPath(rel).parts
        split = parts[0] if split_layout else None
        class_parts = parts[1:] if split_layout else parts
        if len(class_parts) < 2:
            sink.problem(rel, "image is not inside a class folder")
        elif sink.label_allowed(rel, class_parts[0]):
            accepted.append((rel, class_parts[0], split))
    progress.grow(len(accepted))
    results = _decode_files(src, [a[0] for a in accepted], cfg, sink, progress)
    for (rel, label, split), result in zip(accepted, results, strict=True):
        if result.pixels is None:
            sink.problem(rel, result.problem)
            continue
        name = PurePosixPath(rel).stem
        patient_src = name.split("_", 1)[0] if cfg.patient_from_filename_prefix else rel
        sink.add(rel, result.pixels, label=label, split=split, patient_id=pseudonym(patient_src, sink.salt),
                 image_id=pseudonym(rel, sink.salt))


def _ingest_npz(src: Path, cfg: IngestConfig, sink: _Sink, progress: _Progress) -> None:
    """MedMNIST npz. MedMNIST publishes no patient ids, so every image is its own patient
    (pseudonym of ``<split>/<index>``): patient-level leakage inside its official splits cannot be
    checked (duplicate pixels across splits can, by validate), and the given split is kept."""
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{src}: not a readable .npz file ({_short(exc)}); "
                         f"supported: {'; '.join(SUPPORTED_SOURCES)}") from None
    chunk = max(1, cfg.shard_size)
    with zf:
        members = set(zf.namelist())
        present = [s for s in SPLITS if f"{s}_images.npy" in members]
        if not present:
            raise ValueError(f"{src}: no train/val/test _images arrays in this .npz; "
                             f"supported: {'; '.join(SUPPORTED_SOURCES)}")
        for split in present:
            where = f"{src.name}:{split}"
            try:
                labels = np.load(io.BytesIO(zf.read(f"{split}_labels.npy")), allow_pickle=False)
            except KeyError:
                sink.problem(where, f"{split}_labels is missing; split skipped")
                continue
            except Exception as exc:  # noqa: BLE001 - zip, zlib and numpy errors alike
                sink.problem(where, f"{split}_labels unreadable ({_short(exc)}); split skipped")
                continue
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.ndim != 1:
                sink.problem(where, f"labels of shape {labels.shape} (multi-label) are not supported; "
                                    "split skipped")
                continue
            try:
                images = _iter_npy_member(zf, f"{split}_images.npy", chunk)
                total = next(images)
            except Exception as exc:  # noqa: BLE001 - zip, zlib and numpy errors alike
                sink.problem(where, f"{split}_images unreadable ({_short(exc)}); split skipped")
                continue
            assert isinstance(total, int)
            if total != len(labels):
                images.close()
                sink.problem(where, f"{total} images but {len(labels)} labels; split skipped")
                continue
            progress.grow(total)
            index = 0
            try:
                for block in images:
                    assert isinstance(block, np.ndarray)
                    with _ShardWriter(sink.out_dir, sink.reserve_shards(1)) as writer:
                        for img in block:
                            progress.step()
                            item = f"{src.name}:{split}_images[{index}]"
                            label = str(int(labels[index]))
                            try:
                                arr = _check_array(img)
                            except ImageDecodeError as exc:
                                sink.problem(item, str(exc))
                            else:
                                if sink.label_allowed(item, label):
                                    sink.add(item, writer.add(arr), label=label, split=split,
                                             patient_id=pseudonym(f"{split}/{index}", sink.salt),
                                             image_id=f"{split}-{index:06d}")
                            index += 1
            except Exception as exc:  # noqa: BLE001 - zip, zlib and numpy errors alike
                sink.problem(where, f"{split}_images truncated or corrupt after {index} images "
                                    f"({_short(exc)})")


def _iter_npy_member(zf: zipfile.ZipFile, member: str, chunk: int) -> Generator[int | np.ndarray, None, None]:
    """First the number of images, then blocks of up to `chunk` images, read without loading all."""
    fp: IO[bytes] = zf.open(member)
    with fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f".npy format version {version} not supported")
        if dtype.hasobject:
            raise ValueError("object arrays are not images")
        if not shape:
            raise ValueError("a scalar is not an image stack")
        yield int(shape[0])
        if fortran:  # column-major: one image's pixels are not contiguous, so read it whole
            fp.seek(0)
            yield np.load(fp, allow_pickle=False)
            return
        per = math.prod(shape[1:]) * dtype.itemsize
        for start in range(0, shape[0], chunk):
            n = min(chunk, shape[0] - start)
            buf = fp.read(n * per)
            if len(buf) != n * per:
                raise ValueError("unexpected end of data")
            yield np.frombuffer(buf, dtype=dtype).reshape((n, *shape[1:]))


def order_class_names(labels: Iterable[str]) -> tuple[str, ...]:
    """The distinct labels in a stable order: numerically when all are integers (MedMNIST); otherwise a
    conventional negative name ("normal", "benign"...) first, then alphabetically, so that for two
    classes `class_names[1]`, the positive class, is the finding."""
    labels = set(labels)
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        return tuple(sorted(labels, key=int))
    first = [x for x in NEGATIVE_CLASS_NAMES if x in labels]
    return (*first, *sorted(labels - set(first)))


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    text = " ".join(re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", text).split())  # no memory addresses
    return text if len(text) <= limit else text[: limit - 3] + "..."
