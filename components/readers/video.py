"""Video containers (MP4, MOV, AVI; H.264, MPEG-4, MJPEG and the other codecs FFmpeg decodes) through PyAV.

PyAV's wheel bundles its own FFmpeg libraries: no system ffmpeg is needed. A clip is decoded as a
stream: every frame passes through the decoder (later frames depend on earlier ones), but only the
sampled ones (`clips.sample_indices`) are converted, already resized by FFmpeg's scaler, so memory
holds ``ClipSpec.frames`` small frames, never the clip at full resolution. The declared frame
count, size and duration are checked against the `DecodeLimits` before the first frame is decoded.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import numpy as np

from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, check_declared, short_reason
from components.readers.clips import ClipSpec, NotAClipModel, sample_indices, stack_clip

_AVI = (b"RIFF", b"AVI ")
_QUICKTIME_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")


class VideoReader(
    Reader, name="video", formats="video (MP4, MOV, AVI)", suffixes=(".mp4", ".m4v", ".mov", ".avi"), in_class_folders=True,
):
    """MP4, MOV and AVI files: sampled grey frames and the clip's frames, fps, duration, size and codec."""

    def accepts(self, data: bytes) -> bool:
        return _demuxer(data) is not None

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None, clip: ClipSpec | None = None) -> Decoded:
        """Decode a clip to (T, size, size) uint8 grey; `salt` is unused (a container holds no patient ids).

        Raises:
            NotAClipModel: `clip` is None (nothing says how to sample it).
            TooLarge: declared frames, size or duration over `limits`.
            ImageDecodeError: no video stream (audio only), zero frames, a truncated or corrupt file.
        """
        import av

        demuxer = _demuxer(data)
        if demuxer is None:
            raise ImageDecodeError("not a video container (MP4, MOV or AVI)")
        try:
            with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
                if clip is None:
                    raise NotAClipModel("a video clip was given where an image is expected")
                return _decode(container, clip, limits)
        except ImageDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - FFmpeg errors of every kind for damaged files
            raise ImageDecodeError(f"corrupt or truncated video: {short_reason(exc)}") from None


def _demuxer(data: bytes) -> str | None:
    """FFmpeg's demuxer for a container recognised by its magic bytes (never FFmpeg's own probing,
    which would also read a PNG or JPEG as a one-frame video)."""
    if data[4:8] in _QUICKTIME_BOXES:
        return "mov"  # FFmpeg's demuxer for QuickTime, MP4 and M4V
    if data[:4] == _AVI[0] and data[8:12] == _AVI[1]:
        return "avi"
    return None


def _decode(container: Any, spec: ClipSpec, limits: DecodeLimits | None) -> Decoded:
    kinds = sorted({s.type for s in container.streams})
    if not kinds:  # a file cut before its index (or a recording never finished) lists nothing
        raise ImageDecodeError("corrupt or truncated video: the container lists no streams")
    if not container.streams.video:
        raise ImageDecodeError(f"no video stream in the file ({', '.join(kinds)} streams only)")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    seconds = _duration(container, stream)
    declared = int(stream.frames or 0)
    total = declared or (round(seconds * fps) if seconds and fps else 0)
    if width < 1 or height < 1:
        raise ImageDecodeError("video stream declares no frame size")
    check_declared(limits, rows=height, columns=width, frames=total, seconds=seconds, streamed=True)
    from av.video.reformatter import VideoReformatter

    stream.thread_type = "AUTO"
    scaler = VideoReformatter()  # one scaling context per clip; AREA: a clean downscale, and the fastest here
    wanted = sample_indices(total, spec.frames, spec.stride) if total else []
    keep = set(wanted)
    picked: dict[int, np.ndarray] = {}  # unknown length: every frame, small, sampled at the end
    decoded, failure = 0, ""
    try:
        for frame in container.decode(stream):
            if decoded in keep or not total:
                picked[decoded] = scaler.reformat(frame, spec.size, spec.size, "gray", interpolation="AREA").to_ndarray()
            decoded += 1
            if limits is not None and decoded > limits.max_frames:
                raise ImageDecodeError(f"decodes more than the limit of {limits.max_frames} frames")
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged packet fails in FFmpeg's decoder
        failure = f" ({short_reason(exc, 120)})"
    if declared > decoded or (failure and decoded):
        raise ImageDecodeError(f"truncated video: {declared or 'more'} frames declared, {decoded} decoded{failure}")
    if decoded == 0:
        raise ImageDecodeError(f"video stream has zero decodable frames{failure}")
    indices = wanted if total and decoded >= total else sample_indices(decoded, spec.frames, spec.stride)
    frames = [picked[i] for i in indices if i in picked]
    columns = {"frames": decoded, "fps": fps or None, "duration_s": seconds or (decoded / fps if fps else None),
               "source_height": height, "source_width": width, "codec": ctx.name}
    return Decoded(stack_clip(frames, spec, full_scale=255), {k: v for k, v in columns.items() if v is not None},
                   kind="video")


def _duration(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * Fraction(stream.time_base))
    return float(container.duration) / 1_000_000 if container.duration else 0.0
