"""The embedded cine cohort (``cohort:cine``): beating-ventricle phantoms as real multi-frame DICOM.

Each clip is an ultrasound-like short-axis view: a bright myocardial ring around a dark blood pool
in a speckled sector, beating at a random rate and phase. The label is the contraction: ``normal``
(the cavity's diameter shortens by 28-40% at each beat) or ``reduced`` (5-15%). The mean cavity radius,
wall thickness, position, brightness and speckle are drawn per clip over ranges much wider than the
contraction, so one frame (or the mean of per-frame scores) says little about the class: the label
is readable only from the motion. Patients have `clips_per_patient` clips of the same label.

The headers carry FAKE identifiers (names, MRNs, birth dates, institutions) listed in
``identifiers.json`` for the PHI scan, as the CT cohort does. Same config, same bytes.

`cine_bytes` writes one multi-frame object (ultrasound, MR or XA; FrameTime and CineRate set) in
explicit VR little endian, RLE lossless (pydicom's encoder) or JPEG baseline (each frame
JPEG-compressed by Pillow and encapsulated); the readers' tests use it too.

Layout of `out_dir`: ``patient-NNN/clip-K.dcm``, ``labels.csv`` (path, label), ``identifiers.json``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian, JPEGBaseline8Bit, MultiFrameGrayscaleByteSecondaryCaptureImageStorage, RLELossless,
    UltrasoundMultiFrameImageStorage, XRayAngiographicImageStorage, generate_uid,
)

from components.config import CineCohortConfig

_SOP_CLASSES = {"US": UltrasoundMultiFrameImageStorage, "XA": XRayAngiographicImageStorage,
                "MR": MultiFrameGrayscaleByteSecondaryCaptureImageStorage}
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg": JPEGBaseline8Bit}


def cine_bytes(frames: np.ndarray, *, fps: float, modality: str = "US", syntax: str = "explicit",
               patient_id: str = "FAKE-0001", patient_name: str = "Phantom^Fake", uid_prefix: str | None = None,
               extra: dict[str, object] | None = None) -> bytes:
    """A multi-frame cine DICOM file of `frames` (T, H, W) uint8 grey or (T, H, W, 3) uint8 RGB.

    Args:
        fps: frames per second (FrameTime = 1000 / fps ms, CineRate = fps).
        modality: US, XA or MR (its multi-frame SOP class).
        syntax: ``explicit``, ``rle`` or ``jpeg`` (baseline, lossy).
        uid_prefix: derive UIDs deterministically from this text (None: random UIDs).
        extra: more header attributes by keyword. BurnedInAnnotation is NO (nothing is drawn into
            the frames) unless `extra` sets it (None: absent, as many ultrasound exports leave it).
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    colour = frames.ndim == 4
    uid = (lambda part: generate_uid(entropy_srcs=[uid_prefix, part])) if uid_prefix else (lambda part: generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = SYNTAXES[syntax]
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.PatientName, ds.PatientID, ds.Modality = patient_name, patient_id, modality
    ds.NumberOfFrames = len(frames)
    ds.FrameTime, ds.CineRate = f"{1000.0 / fps:.3f}", int(round(fps))
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.BurnedInAnnotation = "NO"
    for keyword, value in (extra or {}).items():
        if value is None:
            ds.pop(keyword, None)
        else:
            setattr(ds, keyword, value)
    if syntax == "explicit":
        ds.PixelData = frames.tobytes()
    elif syntax == "rle":
        ds.PixelData = frames.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.PixelData = encapsulate([_jpeg(f) for f in frames])
        ds["PixelData"].VR = "OB"
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


CLASS_NAMES: tuple[str, str] = ("normal", "reduced")  # index 1 is the finding
# Fractional shortening of the cavity's diameter: normal 28-40%, reduced 5-15% (clinically, a left
# ventricle shortens by 25-45%; under 15% is severely reduced).
_SHORTENING = {"normal": (0.28, 0.40), "reduced": (0.05, 0.15)}
_NAMES = ("Arden^Fake", "Brook^Fake", "Cove^Fake", "Dale^Fake", "Eske^Fake", "Fenn^Fake", "Glen^Fake", "Holt^Fake")


def generate_cine_cohort(out_dir: Path, cfg: CineCohortConfig) -> Path:
    """Write the cine cohort described in the module docstring into `out_dir` (its own files replaced).

    Raises:
        ValueError: a config that cannot make a cohort (no patients or clips, frames < 8, size < 32).
    """
    if cfg.patients < 2 or cfg.clips_per_patient < 1 or cfg.frames < 8 or cfg.size < 32:
        raise ValueError("cine cohort needs >= 2 patients, >= 1 clip each, >= 8 frames and size >= 32")
    out_dir = Path(out_dir)
    for old in out_dir.glob("patient-*"):
        shutil.rmtree(old)
    rng = np.random.default_rng(cfg.seed)
    labels = np.array([CLASS_NAMES[p % 2] for p in range(cfg.patients)])
    rng.shuffle(labels)
    ids: dict[str, set[str]] = {"patient_names": set(), "patient_ids": set(), "birth_dates": set(), "institution_names": set()}
    rows = []
    for p, label in enumerate(labels):
        name, mrn = f"{_NAMES[p % len(_NAMES)]}^{p:03d}", f"CINE-MRN-{70000 + p * 13}"
        birth, institution = f"19{40 + p % 50:02d}0{1 + p % 9}1{p % 9}", f"Phantom Heart Centre {p % 3}"
        ids["patient_names"].add(name)
        ids["patient_ids"].add(mrn)
        ids["birth_dates"].add(birth)
        ids["institution_names"].add(institution)
        folder = out_dir / f"patient-{p:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(cfg.clips_per_patient):
            fps = float(rng.uniform(25, 35))
            frames = beating_ventricle(rng, cfg.frames, cfg.size, fps, str(label))
            data = cine_bytes(frames, fps=fps, modality="US", patient_id=mrn, patient_name=name,
                              uid_prefix=f"{cfg.seed}/{p}/{k}",
                              extra={"PatientBirthDate": birth, "InstitutionName": institution, "PatientSex": "FM"[p % 2]})
            (folder / f"clip-{k}.dcm").write_bytes(data)
            rows.append((f"patient-{p:03d}/clip-{k}.dcm", str(label)))
    with open(out_dir / "labels.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([("path", "label"), *rows])
    (out_dir / "identifiers.json").write_text(json.dumps({k: sorted(v) for k, v in ids.items()}, indent=1) + "\n")
    return out_dir


def beating_ventricle(rng: np.random.Generator, frames: int, size: int, fps: float, label: str) -> np.ndarray:
    """One clip (frames, size, size) uint8: a ring beating with the label's fractional shortening."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.42, 0.58, 2)
    mean_radius = rng.uniform(0.12, 0.30)
    wall = rng.uniform(0.05, 0.09)
    shortening = rng.uniform(*_SHORTENING[label])
    period_s, phase = rng.uniform(0.55, 0.9), rng.uniform(0, 2 * np.pi)
    tissue, blood, ring = rng.uniform(60, 100), rng.uniform(5, 25), rng.uniform(150, 220)
    muscle = (mean_radius + wall) ** 2 - mean_radius**2  # the ring's area / pi
    distance = np.hypot(yy - cy, xx - cx)
    sector = (np.abs(np.arctan2(xx - 0.5, yy + 0.05)) < 0.6) & (np.hypot(yy + 0.05, xx - 0.5) < 1.05)
    out = np.empty((frames, size, size), np.uint8)
    for t in range(frames):
        beat = 0.5 * (1 - np.cos(2 * np.pi * t / (fps * period_s) + phase))  # 0 relaxed, 1 contracted
        radius = mean_radius * (1 + shortening / 2 - shortening * beat)
        outer = np.sqrt(radius**2 + muscle)  # the wall thickens as it contracts: its area stays the same
        img = np.where(distance < radius, blood, tissue)
        img = np.where((distance >= radius) & (distance < outer), ring, img)
        speckle = rng.rayleigh(1.0, (size, size)) / 1.25
        out[t] = np.clip(img * speckle * sector, 0, 255).astype(np.uint8)
    return out
