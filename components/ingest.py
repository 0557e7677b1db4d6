"""Ingest: turn a source into a de-identified manifest plus pixel files.

Sources (`ingest_source` detects the kind):

* ``dicom``: a folder holding ``labels.csv`` and the images it lists, usually DICOM (PNG, JPEG and
  ``.npy`` files listed there are decoded too). Columns: the key column (``cfg.key_column``,
  ``path`` by default: the file relative to the folder; or a DICOM keyword such as
  ``SOPInstanceUID`` matched against each file's header), ``label``, and optionally ``patient_id``
  and ``split`` (train/val/test).
* ``png``: a folder of PNG/JPEG images in class-named subfolders (``<class>/.../<file>``), or
  ``<split>/<class>/...`` when every top-level folder is train, val or test.
* ``npz``: a MedMNIST ``.npz`` (``{train,val,test}_{images,labels}``).

Output under ``out_dir``: ``manifest.parquet`` (`MANIFEST_COLUMNS`, then whichever of
``site, sex, age_band, scanner, modality, photometric`` the source has), ``images/<2 hex>/<content
hash>.npy`` (pixels only; 2D grey (H, W), 2D colour (H, W, C), 3D (D, H, W)), and
``problems.json`` (every skipped input as ``{"file", "reason"}``).

De-identification: nothing from a DICOM header reaches the outputs except derived, non-identifying
values: ``patient_id`` = HMAC pseudonym of PatientID (or of labels.csv ``patient_id``), ``site`` =
pseudonym of InstitutionName, ``scanner`` = Manufacturer, ``sex``, ``age_band`` (decade),
``modality``, ``photometric``. ``image_id`` is a pseudonym of SOPInstanceUID (or of the relative
path). Source paths appear only in problems.json (the operator's own file names).

DICOM pixels become float32 in modality units (Hounsfield units for CT) via the modality LUT
(RescaleSlope/Intercept); MONOCHROME1 is inverted so that higher always means brighter. The same
`decode_image` serves uploads in the model server, so training and serving decode identically.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from PIL import Image, ImageOps
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from components.artifacts import MANIFEST_COLUMNS, SPLITS, IngestedDataset
from components.config import IngestConfig
from components.deid import deid_dicom, pseudonym

__all__ = [
    "EXTRA_COLUMNS", "ImageDecodeError", "age_band", "content_hash", "decode_image", "deid_dicom",
    "dicom_to_array", "ingest_source", "read_manifest",
]

logger = logging.getLogger(__name__)

# Optional manifest columns, in this order, after MANIFEST_COLUMNS.
EXTRA_COLUMNS: tuple[str, ...] = ("site", "sex", "age_band", "scanner", "modality", "photometric")
SUPPORTED_SOURCES = (
    ("a folder with labels.csv (columns path or the configured key column, label; optional "
     "patient_id, split) and the DICOM files it lists"),
    "a folder of PNG/JPEG images in class-named subfolders (optionally under train/val/test)",
    "a MedMNIST .npz file (train/val/test _images and _labels)",
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima", ""})
# Names that conventionally mean "no finding": listed first so that index 1 is the finding.
NEGATIVE_CLASS_NAMES = ("normal", "negative", "healthy", "benign", "no_finding", "no finding", "control")

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_NPY = b"\x93NUMPY"
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")


class ImageDecodeError(ValueError):
    """An input's bytes are not an image this platform can use; the message says why."""


# ---------------------------------------------------------------------------------------------
# Decoding: one path for ingest and for the model server.


def decode_image(data: bytes, salt: str = "") -> np.ndarray:
    """Decode an uploaded file's bytes (PNG, JPEG, DICOM or .npy) into the array ingest would store.

    Args:
        data: the whole file.
        salt: accepted for symmetry with ingest; only pixels are returned, so no header value needs
            pseudonymising here.

    Returns:
        2D grey (H, W), 2D colour (H, W, 3) uint8, or a 3D volume (D, H, W). DICOM gives float32 in
        modality units (Hounsfield units for CT); PNG/JPEG keep their integer dtype.

    Raises:
        ImageDecodeError: empty body, unknown format, corrupt file, multi-frame or burned-in DICOM,
            NaN/infinite values, or an unusable shape.
    """
    del salt
    return _decode_bytes(data)[0]


def dicom_to_array(ds: Dataset) -> np.ndarray:
    """Pixels of a single-frame DICOM dataset in modality units.

    Monochrome images become float32 after the modality LUT (HU for CT); MONOCHROME1 is inverted
    within the stored value range so that higher means brighter, as in MONOCHROME2. Colour images
    (RGB, YBR) come back as (H, W, 3) uint8 RGB.

    Raises:
        ImageDecodeError: no pixel data, BurnedInAnnotation YES (the pixels themselves may carry
            identifiers), multi-frame (not supported yet), or pixel data that cannot be decoded.
    """
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError("DICOM has no pixel data (truncated file or not an image object)")
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        raise ImageDecodeError("DICOM BurnedInAnnotation is YES: text in the pixels may identify the patient")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise ImageDecodeError(f"multi-frame DICOM ({frames} frames) is not supported yet")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        where = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageDecodeError(f"cannot decode DICOM pixel data{where}: {_short(exc)}") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        if arr.ndim != 3 or arr.shape[-1] != samples:
            raise ImageDecodeError(f"unexpected colour DICOM pixel shape {arr.shape}")
        rgb = arr[..., :3]
        if rgb.dtype != np.uint8:
            rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)
    if arr.ndim != 2:
        raise ImageDecodeError(f"unexpected DICOM pixel shape {arr.shape}")
    out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        if np.issubdtype(arr.dtype, np.integer):
            bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
            signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            ends = np.asarray(apply_modality_lut(np.array([lo, hi]), ds), dtype=np.float64)
            top = float(ends.min() + ends.max())
        else:
            top = float(np.nanmin(out) + np.nanmax(out))
        out = (top - out).astype(np.float32)
    return out


def _decode_bytes(data: bytes) -> tuple[np.ndarray, Dataset | None]:
    """Sniff the format from the content (never the suffix) and decode; DICOM also gives its header."""
    if not data:
        raise ImageDecodeError("empty file")
    ds: Dataset | None = None
    if data.startswith((_PNG, _JPEG)):
        arr = _decode_pil(data)
    elif data.startswith(_NPY):
        arr = _decode_npy(data)
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
    else:
        raise ImageDecodeError("unrecognised content: expected PNG, JPEG, DICOM (Part 10) or .npy")
    return _check_array(arr), ds


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
    h.update(memoryview(arr).cast("B"))
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
    """Read a manifest written by ingest with the contract's dtypes (extra columns as strings)."""
    df = pd.read_parquet(path)
    dtypes = {c: MANIFEST_COLUMNS.get(c, "string") for c in df.columns}
    return df.astype(dtypes)


# ---------------------------------------------------------------------------------------------
# Ingest.


@dataclass
class _Sink:
    """Writes pixel files and collects manifest rows and problems, one image at a time."""

    out_dir: Path
    salt: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    image_ids: set[str] = field(default_factory=set)
    allowed_labels: frozenset[str] | None = None

    def problem(self, file: str, reason: str) -> None:
        self.problems.append({"file": file, "reason": reason})

    def add(self, file: str, arr: np.ndarray, *, label: str, split: str | None, patient_id: str,
            image_id: str, extra: dict[str, str | None] | None = None) -> None:
        if self.allowed_labels is not None and label not in self.allowed_labels:
            self.problem(file, f"label {label!r} is not one of ingest.class_names")
            return
        digest = content_hash(arr)
        rel = f"images/{digest[:2]}/{digest}.npy"
        target = self.out_dir / rel
        if not target.exists():  # identical pixels share one file; both rows stay in the manifest
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            tmp.replace(target)
        while image_id in self.image_ids:  # e.g. the same SOP instance copied twice
            image_id = pseudonym(image_id + "/dup", self.salt)
        self.image_ids.add(image_id)
        colour = _is_colour(arr)
        spatial = arr.shape[:2] if colour else arr.shape
        ndim = len(spatial)
        row: dict[str, Any] = {
            "image_id": image_id,
            "patient_id": patient_id,
            "label": label,
            "split": split,
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
        row.update(extra or {})
        self.rows.append(row)


def ingest_source(source: str | Path, out_dir: Path, cfg: IngestConfig, salt: str,
                  show_progress: bool = False) -> IngestedDataset:
    """Ingest a source into ``out_dir`` (see the module docstring for kinds and outputs).

    Streams: one image is in memory at a time (npz members are read in chunks). Bad inputs (corrupt,
    truncated or empty files, non-images, missing files or label rows, NaN pixels, multi-frame or
    burned-in DICOM) are skipped and listed in problems.json; constant images and duplicates are kept
    for validate to flag. Nothing identifying is logged.

    Args:
        source: a folder or a ``.npz`` path.
        out_dir: where manifest.parquet, images/ and problems.json go; must not be inside the source.
            A previous ingest's outputs there are replaced.
        cfg: the ingest section of params.yaml.
        salt: secret key of the pseudonyms (same salt, same pseudonyms).
        show_progress: draw a rich progress bar (counts only, no file names).

    Returns:
        The IngestedDataset record.

    Raises:
        ValueError: unsupported or missing source (the message lists what is supported), an empty
            salt, a labels.csv without the needed columns, or nothing usable left after skipping.
    """
    if isinstance(source, str) and source.startswith("medmnist:"):
        raise ValueError(f"{source}: resolve medmnist:<name> to its .npz path before ingest; "
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
    (out_dir / "manifest.parquet").unlink(missing_ok=True)
    (out_dir / "images").mkdir()

    sink = _Sink(out_dir, salt, allowed_labels=frozenset(cfg.class_names) if cfg.class_names else None)
    with _progress(show_progress, f"ingest {kind}") as advance:
        if kind == "dicom":
            _ingest_labelled_folder(src, cfg, sink, advance)
        elif kind == "png":
            _ingest_class_folders(src, cfg, sink, advance)
        else:
            _ingest_npz(src, sink, advance)

    (out_dir / "problems.json").write_text(json.dumps(sink.problems, indent=1) + "\n")
    if not sink.rows:
        first = f"; first: {sink.problems[0]['file']}: {sink.problems[0]['reason']}" if sink.problems else ""
        raise ValueError(f"{src}: no usable images ({len(sink.problems)} problems{first})")

    manifest = _manifest_frame(sink.rows)
    manifest_path = out_dir / "manifest.parquet"
    manifest.to_parquet(manifest_path, index=False)
    labels = set(manifest["label"].astype(str))
    class_names = tuple(cfg.class_names) if cfg.class_names else _order_classes(labels)
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
            return "dicom"
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


@contextlib.contextmanager
def _progress(show: bool, description: str) -> Iterator[Callable[[int | None], None]]:
    """Yields advance(total=None): a call with total sets the bar's length, one without steps it."""
    if not show:
        def ignore(total: int | None = None) -> None:
            return None

        yield ignore
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=None)

        def advance(total: int | None = None) -> None:
            if total is not None:
                bar.reset(task, total=total)
            else:
                bar.advance(task)

        yield advance


def _walk_files(root: Path) -> list[str]:
    """Relative posix paths of the non-hidden files under root, sorted."""
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


def _ingest_labelled_folder(src: Path, cfg: IngestConfig, sink: _Sink, advance: Callable[..., None]) -> None:
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
        advance(len(files))
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
            advance()

    advance(len(rows))
    used: set[str] = set()
    for line, row in rows:
        advance()
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
        try:
            arr, ds = _decode_bytes((src / rel).read_bytes())
        except (ImageDecodeError, OSError) as exc:
            sink.problem(rel, _short(exc))
            continue
        extra = _header_columns(ds, sink.salt) if ds is not None else {}
        patient_src = row.get("patient_id") or (_patient_key(ds) if ds is not None else "") or rel
        sop = str(ds.get("SOPInstanceUID", "") or "") if ds is not None else ""
        sink.add(rel, arr, label=label, split=split, patient_id=pseudonym(patient_src, sink.salt),
                 image_id=pseudonym(sop or rel, sink.salt), extra=extra)
    for rel in files:
        if rel not in used:
            sink.problem(rel, unreadable.get(rel, "no row in labels.csv"))


def _maybe_image(rel: str) -> bool:
    suffix = PurePosixPath(rel).suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES or suffix == ".npy"


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


def _header_columns(ds: Dataset, salt: str) -> dict[str, str | None]:
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


def _ingest_class_folders(src: Path, cfg: IngestConfig, sink: _Sink, advance: Callable[..., None]) -> None:
    top = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_layout = bool(top) and all(name in SPLITS for name in top)
    files = [p for p in _walk_files(src) if PurePosixPath(p).suffix.lower() in IMAGE_SUFFIXES]
    advance(len(files))
    for rel in files:
        advance()
        parts = PurePosixPath(rel).parts
        split = parts[0] if split_layout else None
        class_parts = parts[1:] if split_layout else parts
        if len(class_parts) < 2:
            sink.problem(rel, "image is not inside a class folder")
            continue
        try:
            arr, _ = _decode_bytes((src / rel).read_bytes())
        except (ImageDecodeError, OSError) as exc:
            sink.problem(rel, _short(exc))
            continue
        name = PurePosixPath(rel).stem
        patient_src = name.split("_", 1)[0] if cfg.patient_from_filename_prefix else rel
        sink.add(rel, arr, label=class_parts[0], split=split, patient_id=pseudonym(patient_src, sink.salt),
                 image_id=pseudonym(rel, sink.salt))


def _ingest_npz(src: Path, sink: _Sink, advance: Callable[..., None], chunk: int = 256) -> None:
    """MedMNIST npz. MedMNIST publishes no patient ids, so every image is its own patient
    (pseudonym of ``<split>/<index>``): patient-level leakage inside its official splits cannot be
    checked, and the given split is kept in the ``split`` column."""
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{src}: not a readable .npz file ({_short(exc)}); "
                         f"supported: {'; '.join(SUPPORTED_SOURCES)}") from None
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
            advance(total)
            index = 0
            try:
                for block in images:
                    assert isinstance(block, np.ndarray)
                    for img in block:
                        advance()
                        item = f"{split}_images[{index}]"
                        try:
                            arr = _check_array(img)
                        except ImageDecodeError as exc:
                            sink.problem(f"{src.name}:{item}", str(exc))
                        else:
                            key = f"{split}/{index}"
                            sink.add(f"{src.name}:{item}", arr, label=str(int(labels[index])), split=split,
                                     patient_id=pseudonym(key, sink.salt), image_id=f"{split}-{index:06d}")
                        index += 1
            except Exception as exc:  # noqa: BLE001 - zip, zlib and numpy errors alike
                sink.problem(where, f"{split}_images truncated or corrupt after {index} images "
                                    f"({_short(exc)})")


def _iter_npy_member(zf: zipfile.ZipFile, member: str, chunk: int) -> Generator[int | np.ndarray, None, None]:
    """First the number of images, then blocks of up to `chunk` images, read without loading all."""
    fp = zf.open(member)
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


def _manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows)
    extras = [c for c in EXTRA_COLUMNS if c in df.columns and df[c].notna().any()]
    df = df.reindex(columns=[*MANIFEST_COLUMNS, *extras])
    return df.astype({**MANIFEST_COLUMNS, **{c: "string" for c in extras}})


def _order_classes(labels: set[str]) -> tuple[str, ...]:
    """Numeric names by value; otherwise a conventional negative name first, then alphabetical."""
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        return tuple(sorted(labels, key=int))
    first = [x for x in NEGATIVE_CLASS_NAMES if x in labels]
    return (*first, *sorted(labels - set(first)))


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    text = " ".join(re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", text).split())  # no memory addresses
    return text if len(text) <= limit else text[: limit - 3] + "..."
