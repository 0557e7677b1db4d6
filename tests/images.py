"""Small test images as upload bytes: .npy, PNG, JPEG and a minimal CT DICOM slice; a tiny MedMNIST .npz;
recordings (WAV, FLAC, OGG) written by soundfile."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def grey_image(seed: int = 0, size: int = 20) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG")
    return buf.getvalue()


def tone(seconds: float = 1.0, rate: int = 8000, hz: float = 220.0, level: float = 0.5,
         channels: int = 1) -> np.ndarray:
    """A sine tone as float32 samples, (frames,) or (frames, channels) with the channels out of phase."""
    t = np.arange(round(seconds * rate)) / rate
    waves = [level * np.sin(2 * np.pi * hz * t + k) for k in range(channels)]
    return np.stack(waves, axis=1).astype(np.float32) if channels > 1 else waves[0].astype(np.float32)


def audio_bytes(samples: np.ndarray, rate: int = 8000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    """`samples` written by soundfile in `fmt` (WAV, FLAC, OGG) with `subtype` (OGG: Vorbis)."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, subtype="VORBIS" if fmt == "OGG" else subtype, format=fmt)
    return buf.getvalue()


def dicom_bytes(pixels: np.ndarray, patient_name: str = "Doe^Jane") -> bytes:
    """A minimal CT slice (int16 stored values, HU = stored - 1024) naming a patient in its header."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = patient_name, "MRN-55501", "CT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 16 if pixels.dtype == np.int16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def medmnist_npz(path: Path, shape: tuple[int, ...], counts: tuple[int, int, int] = (5, 2, 3)) -> Path:
    """A MedMNIST-like .npz at `path`: uint8 images of `shape` and (n, 1) labels 0/1 per split."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    return path
