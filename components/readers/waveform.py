"""DICOM waveforms (Basic Voice Audio, ECG and other multiplexes in a WaveformSequence) as recordings.

The first multiplex group is read: its channels as float32 samples in [-1, 1] (full scale of the
stored sample type; 8-bit mu-law and A-law are expanded by ITU-T G.711) at the group's
SamplingFrequency, made a recording as the audio reader makes one (`components.readers.audio.recording`). The declared samples, channels and duration are checked against the
`DecodeLimits` before any sample is decoded. The header goes through the same de-identification as
an image's (`components.readers.dicom.header_columns`: pseudonyms and derived values only).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from components.readers.base import DecodeLimits, ImageDecodeError, check_declared

# WaveformSampleInterpretation -> (numpy type, full scale, offset) of linear codes.
_LINEAR = {"SB": ("i1", 128.0, 0.0), "UB": ("u1", 128.0, 128.0), "SS": ("<i2", 32768.0, 0.0),
           "US": ("<u2", 32768.0, 32768.0), "SL": ("<i4", 2.0**31, 0.0), "UL": ("<u4", 2.0**31, 2.0**31)}
_WAVEFORM_SEQUENCE, _PIXEL_DATA = BaseTag(0x54000100), BaseTag(0x7FE00010)


def is_waveform(ds: Dataset) -> bool:
    """Whether a header holds waveforms and no image."""
    # By tag: a keyword look-up costs more than the check, which every DICOM file goes through.
    return _WAVEFORM_SEQUENCE in ds and _PIXEL_DATA not in ds and len(ds[_WAVEFORM_SEQUENCE].value) > 0


def waveform_recording(ds: Dataset, limits: DecodeLimits | None) -> tuple[np.ndarray, int, float]:
    """The first multiplex group as ((samples, channels) float32 in [-1, 1], sample rate in Hz, the
    level at which a sample is clipped: the largest its sample type holds).

    Raises:
        ImageDecodeError: a group without samples, rate or data, a sample type not listed above, or
            data shorter than declared. TooLarge: declared over `limits`.
    """
    group = ds.WaveformSequence[0]
    try:
        channels = int(group.NumberOfWaveformChannels)
        count = int(group.NumberOfWaveformSamples)
        rate = float(group.SamplingFrequency)
        kind = str(group.WaveformSampleInterpretation).strip().upper()
        data = bytes(group.WaveformData)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageDecodeError(f"DICOM waveform without channels, samples, rate or data: {exc}") from None
    if channels < 1 or count < 1 or not 0 < rate < 10**7:
        raise ImageDecodeError(f"DICOM waveform declares {channels} channels, {count} samples at {rate:g} Hz")
    if round(rate) != rate:
        raise ImageDecodeError(f"DICOM waveform sampling frequency {rate:g} Hz is not a whole number")
    check_declared(limits, samples=count, channels=channels, itemsize=4, seconds=count / rate)
    if kind in _COMPANDED:
        expand, clip = _COMPANDED[kind]
        values = expand(_samples(data, "u1", count * channels))
    elif kind in _LINEAR:
        dtype, scale, offset = _LINEAR[kind]
        values = (_samples(data, dtype, count * channels).astype(np.float64) - offset) / scale
        clip = 1.0 - 1.0 / scale
    else:
        raise ImageDecodeError(f"DICOM waveform sample interpretation {kind!r} is not supported")
    return values.reshape(count, channels).astype(np.float32), int(rate), clip


def _samples(data: bytes, dtype: str, n: int) -> np.ndarray:
    size = np.dtype(dtype).itemsize * n
    if len(data) < size:
        raise ImageDecodeError(f"truncated DICOM waveform: {n} samples declared, data for {len(data) // np.dtype(dtype).itemsize}")
    return np.frombuffer(data[:size], dtype=dtype)


def mu_law(codes: np.ndarray) -> np.ndarray:
    """G.711 mu-law codes (uint8) -> linear values in [-1, 1]."""
    u = ~codes.astype(np.uint8)
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa.astype(np.int32) << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude) / 32768.0


def a_law(codes: np.ndarray) -> np.ndarray:
    """G.711 A-law codes (uint8) -> linear values in [-1, 1]."""
    a = codes.astype(np.uint8) ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, (a & 0x0F).astype(np.int32)
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent, 1) - 1)
    return np.where(a & 0x80, magnitude, -magnitude) / 32768.0


# G.711 mu-law and A-law (8-bit codes): the expansion, and the largest magnitude it gives (full scale).
_COMPANDED = {"MB": (mu_law, 32124 / 32768), "AB": (a_law, 32256 / 32768)}
