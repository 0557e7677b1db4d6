"""Multi-frame DICOM cine writing: the embedded cine cohort's files and the readers' test clips.

`cine_bytes` writes a real multi-frame object (ultrasound, MR or XA; FrameTime and CineRate set)
in explicit VR little endian, RLE lossless (pydicom's encoder) or JPEG baseline (each frame
JPEG-compressed by Pillow and encapsulated), with FAKE identifiers only.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian, JPEGBaseline8Bit, MultiFrameGrayscaleByteSecondaryCaptureImageStorage, RLELossless,
    UltrasoundMultiFrameImageStorage, XRayAngiographicImageStorage, generate_uid,
)

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
        extra: more header attributes by keyword (e.g. ``BurnedInAnnotation``).
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
    for keyword, value in (extra or {}).items():
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
