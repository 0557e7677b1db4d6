"""Small test images as upload bytes: .npy, PNG, JPEG and a minimal CT DICOM slice; a tiny MedMNIST .npz;
recordings (WAV, FLAC, OGG) written by soundfile."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def waveform_dicom_bytes(codes: np.ndarray, rate: int, interpretation: str = "SS", patient_name: str = "Doe^Jane",
                         declared_samples: int | None = None) -> bytes:
    """A Basic Voice Audio waveform: stored `codes` (samples x channels, or 1-D) of `interpretation`
    (SS: int16, SB: int8, MB: mu-law bytes...) at `rate` Hz, naming a patient and an institution."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    voice = "1.2.840.10008.5.1.4.1.1.9.4.1"  # Basic Voice Audio Waveform Storage
    codes = codes.reshape(len(codes), -1)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = voice, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = voice, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = patient_name, "MRN-55502", "AU"
    ds.InstitutionName, ds.PatientSex, ds.PatientAge = "St. Example Hospital", "F", "047Y"
    group = Dataset()
    group.MultiplexGroupTimeOffset = 0.0
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = codes.shape[1]
    group.NumberOfWaveformSamples = declared_samples or len(codes)
    group.SamplingFrequency = rate
    group.WaveformBitsAllocated = 8 * codes.dtype.itemsize
    group.WaveformSampleInterpretation = interpretation
    group.WaveformData = codes.tobytes()
    ds.WaveformSequence = Sequence([group])
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


# ---- forged files: small on disk, declaring images far larger than any limit (issue 15) ---------


def forged_rle_dicom(rows: int = 20_000, columns: int = 20_000) -> bytes:
    """An RLE Lossless CT DICOM declaring rows x columns 16-bit pixels and holding a few bytes of them."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = RLELossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    # RLE header: 2 segments (high and low bytes) at offsets 64 and 66, each one run "repeat 0 128 times".
    header = struct.pack("<16L", 2, 64, 66, *([0] * 13))
    ds.PixelData = encapsulate([header + b"\x81\x00\x81\x00"])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@functools.cache
def forged_png(side: int = 9_000) -> bytes:
    """A complete, valid black 8-bit grey PNG of side x side pixels (it compresses to a few tens of KB)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    deflate = zlib.compressobj(9)
    row = bytes(side + 1)  # filter type 0, then the row's pixels
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.cache
def forged_nifti_gz(side: int = 8_000) -> bytes:
    """A complete .nii.gz of one side x side uint8 slice of zeros (it compresses to tens of KB)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((side, side, 1))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    row = bytes(side)
    parts = [deflate.compress(header.binaryblock + b"\x00" * 4)]
    parts += [deflate.compress(row) for _ in range(side)]
    return b"".join(parts) + deflate.flush()


def forged_npy(shape: tuple[int, ...] = (10**6, 10**6)) -> bytes:
    """A .npy header declaring `shape` float64 and no data (144 bytes)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue()


FORGED = {"rle-dicom": forged_rle_dicom, "png": forged_png, "nifti-gz": forged_nifti_gz, "npy": forged_npy}
