"""The reader interface every data format implements, and the array rules they share."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


class ImageDecodeError(ValueError):
    """An input's bytes are not an image this platform can use; the message says why."""


class TooLarge(ImageDecodeError):
    """A file declares more than the `DecodeLimits` allow; refused before anything is decoded."""


@dataclass(frozen=True)
class DecodeLimits:
    """The most a reader may decode from one file.

    Readers check these against the sizes a file's header declares (rows, columns, frames, samples,
    bytes per value, duration) before decoding any pixel or sample, and raise `TooLarge` naming the
    limit: a small file declaring a huge image is refused, never expanded to find out.
    """

    max_bytes: int  # the decoded array at its decoded dtype: every frame, slice, channel or sample
    max_side: int  # rows or columns of one image, slice or frame
    max_frames: int  # frames of a clip or slices of a volume
    max_seconds: float  # duration of a clip or a recording


def check_declared(limits: DecodeLimits | None, *, rows: int = 1, columns: int = 1, frames: int = 1,
                   channels: int = 1, samples: int = 1, itemsize: int = 1, seconds: float | None = None,
                   streamed: bool = False) -> None:
    """Refuse a file whose declared size exceeds `limits` (None: no limit).

    `samples`: of a recording, per channel. `streamed`: the frames are decoded one at a time and only a sample is kept (a clip), so the byte
    limit applies to one frame; the frame count and duration are still limited.

    Raises:
        TooLarge: the first limit exceeded, named with the declared value.
    """
    if limits is None:
        return
    if max(rows, columns) > limits.max_side:
        raise TooLarge(f"declared size {rows}x{columns} exceeds the limit of {limits.max_side} per side")
    if frames > limits.max_frames:
        raise TooLarge(f"declares {frames} frames or slices, over the limit of {limits.max_frames}")
    if seconds is not None and seconds > limits.max_seconds:
        raise TooLarge(f"declares {seconds:.1f} s, over the limit of {limits.max_seconds:g} s")
    size = rows * columns * (1 if streamed else frames) * samples * channels * itemsize
    if size > limits.max_bytes:
        raise TooLarge(f"declares {size / 2**20:.1f} MiB decoded, over the limit of {limits.max_bytes / 2**20:.1f} MiB")


@dataclass(frozen=True)
class Decoded:
    """One decoded file: its pixels and the manifest columns the file itself determines.

    `columns` holds only derived, non-identifying values (pseudonyms, never header text that names
    anyone): ``patient_id`` and ``image_id`` where the file carries them, subgroup columns
    (``site``, ``sex``...), ``spacing_d/h/w`` in mm. Absent values are left out, never None.
    """

    array: np.ndarray
    columns: dict[str, Any] = field(default_factory=dict)
    # "image" (2D, or a 3D volume): `check_array` applies. A modality with another array layout
    # (a clip's frames, a recording's samples) names itself and checks its arrays in its own reader.
    kind: str = "image"


class Reader(ABC):
    """One data format: which files it claims (by name and by content) and how it decodes them."""

    name: ClassVar[str]  # short id, e.g. "dicom"
    formats: ClassVar[str]  # what it reads, for messages: "PNG, JPEG"
    suffixes: ClassVar[tuple[str, ...]]  # lower-case file name endings; "" means a name without suffix
    in_class_folders: ClassVar[bool] = False  # also read from class-named folders (sources without labels.csv)

    def __init_subclass__(cls, *, name: str, formats: str, suffixes: tuple[str, ...], in_class_folders: bool = False,
                          **kwargs: Any) -> None:
        """A format declares itself in its class statement: ``class X(Reader, name=..., formats=..., suffixes=...)``."""
        super().__init_subclass__(**kwargs)
        cls.name, cls.formats, cls.suffixes, cls.in_class_folders = name, formats, suffixes, in_class_folders

    @abstractmethod
    def accepts(self, data: bytes) -> bool:
        """Whether `data` starts like this format (magic bytes; never the file name)."""

    @abstractmethod
    def read(self, data: bytes, salt: str, limits: DecodeLimits | None) -> Decoded:
        """Decode a whole file; `salt` keys the pseudonyms of any identifier it holds.

        The declared size is checked against `limits` (`check_declared`; None: a trusted file, no
        limit) before any pixel or sample is decoded.

        Raises:
            TooLarge: the file declares more than `limits` allow.
            ImageDecodeError: the bytes are damaged or hold what this platform refuses.
        """

    def claims(self, name: str) -> bool:
        """Whether a file called `name` is one of this format's by its suffix."""
        lower = name.lower()
        return any(lower.endswith(s) if s else not _has_suffix(lower) for s in self.suffixes)


def _has_suffix(name: str) -> bool:
    """``PurePosixPath(name).suffix != ""`` for a relative file path, without building the path (ingest asks per file)."""
    last = name.rstrip("/").rsplit("/", 1)[-1]
    dot = last.rfind(".")
    return 0 < dot < len(last) - 1


def check_array(arr: np.ndarray) -> np.ndarray:
    """Bring an array to the stored layout and refuse what cannot be an image.

    Raises:
        ImageDecodeError: a non-numeric dtype, a shape other than (H, W), (H, W, C) or (D, H, W),
            an empty array, or NaN/infinite values.
    """
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


def is_colour(arr: np.ndarray) -> bool:
    """Whether the last axis of a stored array is colour channels (RGB or RGBA), not space."""
    return arr.ndim == 3 and arr.shape[-1] in (3, 4)


def content_hash(arr: np.ndarray) -> str:
    """sha256 over ``"<shape>|<dtype.str>|"`` and the C-order pixel bytes (shape like ``64x64``)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{'x'.join(map(str, arr.shape))}|{arr.dtype.str}|".encode())
    h.update(arr.data.cast("B"))
    return h.hexdigest()


def spacing_columns(spacing: tuple[float | None, float | None, float | None]) -> dict[str, float]:
    """The manifest's ``spacing_d/h/w`` (mm between slices, rows, columns) that are known."""
    return {k: v for k, v in zip(("spacing_d", "spacing_h", "spacing_w"), spacing, strict=True) if v is not None}


def short_reason(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line for a problem report (no memory addresses, at most `limit` chars)."""
    text = str(exc) or type(exc).__name__
    text = " ".join(re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
