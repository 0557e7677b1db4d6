"""Recordings (WAV, FLAC, OGG) through soundfile (libsndfile): float32 mono samples and level columns.

WAV may hold 8/16/24/32-bit PCM or 32/64-bit float; stereo and multichannel recordings are
downmixed to mono (the mean of the channels). The header's frame count, channels and duration are
checked against the `DecodeLimits` before any sample is decoded, and a WAV whose data chunk
declares more bytes than the file holds is refused as truncated (libsndfile would silently read
the part that is there). Samples stay at the source's rate here; `resample` brings them to a
model's rate (ingest and the service call it with ``ingest.audio.sample_rate``).

The level columns are measured at the source's rate, before resampling (which overshoots at clips):
``peak_dbfs`` (0 dBFS is full scale), ``rms_dbfs``, ``dc_offset`` (mean sample), ``clipped_fraction``
(frames at full scale on any channel), ``silent_fraction`` (20 ms frames whose RMS is under
`SILENCE_DBFS`).
"""

from __future__ import annotations

import io
import struct
from math import gcd
from typing import Any

import numpy as np

from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, check_declared, short_reason

FORMATS = {b"RIFF": "WAV", b"RF64": "WAV", b"fLaC": "FLAC", b"OggS": "OGG"}
# Digital silence by convention: a frame whose RMS is 60 dB under full scale holds no usable signal.
SILENCE_DBFS = -60.0
SILENCE_FRAME_S = 0.02
# Full scale: a sample within one quantisation step of +-1 was clipped (16-bit steps for float and
# compressed formats).
PCM_BITS = {"PCM_U8": 8, "PCM_S8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}
_FLOOR = 1e-10  # for the logarithm of a silent recording's level


class AudioReader(
    Reader, name="audio", formats="WAV, FLAC, OGG", suffixes=(".wav", ".flac", ".ogg"), in_class_folders=True,
):
    """WAV, FLAC and OGG recordings; also read from class-named folders."""

    def accepts(self, data: bytes) -> bool:
        return data[:4] in FORMATS and (data[:4] not in (b"RIFF", b"RF64") or data[8:12] == b"WAVE")

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None) -> Decoded:
        import soundfile

        kind = FORMATS.get(data[:4], "WAV, FLAC or OGG")
        try:  # one open for the header and the samples: opening costs about as much as reading a short recording
            sound = soundfile.SoundFile(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - libsndfile raises its own error or RuntimeError
            raise ImageDecodeError(f"unreadable {kind} header: {short_reason(exc)}") from None
        with sound:
            frames, rate, subtype = sound.frames, sound.samplerate, sound.subtype
            if frames <= 0 or rate <= 0:
                raise ImageDecodeError(f"{kind} holds zero samples")
            check_declared(limits, samples=frames, channels=sound.channels, itemsize=4, seconds=frames / rate)
            if kind == "WAV":
                check_wav_length(data)
            try:
                samples = sound.read(dtype="float32", always_2d=True)
            except Exception as exc:  # noqa: BLE001
                raise ImageDecodeError(f"corrupt or truncated {kind}: {short_reason(exc)}") from None
        if samples.size == 0:
            raise ImageDecodeError(f"{kind} holds zero samples")
        if not np.isfinite(samples).all():
            raise ImageDecodeError(f"{kind} holds NaN or infinite samples")
        return recording(samples, rate, 1.0 - 2.0 ** (1 - PCM_BITS.get(subtype, 16)))


def recording(samples: np.ndarray, rate: int, clip: float, columns: dict[str, Any] | None = None) -> Decoded:
    """A decoded recording from (frames, channels) float samples in [-1, 1] at `rate`: the mono downmix,
    `columns` and the level columns (samples at or over `clip` in magnitude count as clipped)."""
    mono = np.ascontiguousarray(samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32))
    return Decoded(mono, {**(columns or {}), **level_columns(samples, rate, clip), "sample_rate": int(rate),
                          "source_channels": int(samples.shape[1])}, kind="audio")


def check_wav_length(data: bytes) -> None:
    """Refuse a RIFF/WAVE file whose ``data`` chunk declares more bytes than the file holds.

    Raises:
        ImageDecodeError: truncated data chunk, or no data chunk at all.
    """
    if data[:4] == b"RF64":
        return  # sizes live in the ds64 chunk; libsndfile reads what is there
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if chunk == b"data":
            held = len(data) - pos - 8
            if size > held:
                raise ImageDecodeError(f"truncated WAV: data chunk declares {size} bytes, the file holds {held}")
            return
        pos += 8 + size + (size & 1)
    raise ImageDecodeError("WAV has no data chunk")


def level_columns(samples: np.ndarray, rate: int, clip: float) -> dict[str, float]:
    """Duration and level columns of (frames, channels) float samples in [-1, 1] (module docstring);
    samples at or over `clip` in magnitude count as clipped."""
    # One pass per statistic over float32 (float64 sums): each pass costs about as much as decoding PCM.
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)
    peak = max(float(samples.max()), -float(samples.min()))
    # Frames at full scale on any channel; none when the peak is below it (most recordings: no pass then).
    clipped = 0 if peak < clip else np.count_nonzero(np.abs(samples).max(axis=1) >= clip)
    squares = np.square(mono)
    frame = max(1, round(SILENCE_FRAME_S * rate))
    n = max(1, len(mono) // frame)
    framed = squares[: n * frame].reshape(n, frame) if len(mono) >= frame else squares[None, :]
    frame_power = framed.mean(axis=1, dtype=np.float64)
    # The whole recording's mean square from its frames' (and the tail's): one pass fewer.
    power = (frame_power.sum() * framed.shape[1] + squares[framed.size:].sum(dtype=np.float64)) / len(mono)
    frame_rms = np.sqrt(frame_power)
    return {
        "duration_s": len(mono) / rate,
        "peak_dbfs": float(20 * np.log10(max(peak, _FLOOR))),
        "rms_dbfs": float(20 * np.log10(max(float(np.sqrt(power)), _FLOOR))),
        "dc_offset": float(mono.mean(dtype=np.float64)),
        "clipped_fraction": float(clipped / len(mono)),
        "silent_fraction": float(np.count_nonzero(frame_rms < 10 ** (SILENCE_DBFS / 20)) / len(frame_rms)),
    }


def resample(samples: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """float32 mono `samples` at `source_rate` brought to `rate` (polyphase, scipy's anti-aliasing filter)."""
    if source_rate == rate:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(source_rate), int(rate))
    return resample_poly(samples, rate // g, source_rate // g).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Mono float32 `samples` as a 32-bit float WAV file (lossless: what a client uploads of a stored recording)."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, subtype="FLOAT", format="WAV")
    return buf.getvalue()


def at_rate(decoded: Decoded, rate: int) -> Decoded:
    """An audio `Decoded` with its samples at `rate` (its columns keep the source's ``sample_rate``)."""
    return Decoded(resample(decoded.array, decoded.columns["sample_rate"], rate), decoded.columns, decoded.kind)
