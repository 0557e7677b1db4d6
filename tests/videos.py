"""Real video files made in memory for the tests (PyAV's bundled FFmpeg encoders)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np


def sweep_frames(n: int = 30, height: int = 64, width: int = 80) -> np.ndarray:
    """(n, H, W) uint8: a white bar sweeping left to right over black, so the frame index shows in the pixels."""
    frames = np.zeros((n, height, width), np.uint8)
    for i in range(n):
        frames[i, :, : (i + 1) * width // n] = 255
    return frames


def video_bytes(frames: np.ndarray, codec: str = "libx264", container: str = "mp4", fps: int = 25,
                audio: bool = False) -> bytes:
    """`frames` (T, H, W) grey uint8 encoded as `codec` in `container` (mp4, mov, avi); T = 0 writes
    a header with an empty video stream; ``audio`` adds a second of silence as AAC."""
    buf = io.BytesIO()
    _write(buf, frames, codec, container, fps, audio)
    return buf.getvalue()


def faststart_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> bytes:
    """H.264 MP4 with its index before the data (``movflags=faststart``, needs a seekable file):
    cutting it keeps the declared frame count while losing frames."""
    _write(str(path), frames, "libx264", "mp4", fps, False, {"movflags": "faststart"})
    return path.read_bytes()


def audio_only_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        _add_silence(out)
    return buf.getvalue()


def _write(target: object, frames: np.ndarray, codec: str, container: str, fps: int, audio: bool,
           options: dict[str, str] | None = None) -> None:
    with av.open(target, "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if not len(frames):
            out.start_encoding()
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio:
            _add_silence(out)


def _add_silence(out: av.container.OutputContainer) -> None:
    stream = out.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
    frame.sample_rate = 16000
    for packet in [*stream.encode(frame), *stream.encode()]:
        out.mux(packet)
