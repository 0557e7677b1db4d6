"""What every clip reader shares: how a clip is sampled and stored (`ClipSpec`), and the frame helpers.

A clip is stored as (T, H, W) uint8 grey: T frames picked uniformly over the whole clip, each
resized to H = W = `ClipSpec.size` as it is decoded, with the `ClipSpec.mask` regions blacked out.
Grey, not colour: B-mode ultrasound, MR and XA cine are monochrome (an RGB-encoded ultrasound clip
carries its grey image in all three channels), and three channels would triple the memory and
the first layer of every video model for the few Doppler overlays that colour would keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from components.readers.base import ImageDecodeError

VIDEO_COLUMNS = ("frames", "fps", "duration_s", "source_height", "source_width", "codec")


class NotAClipModel(ImageDecodeError):
    """A clip was given where no `ClipSpec` says how to sample it (e.g. uploaded to an image model)."""


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is stored (params.yaml ``ingest.video``; a video model's preprocessing records it).

    Attributes:
        frames: frames sampled from the clip (`sample_indices`).
        size: rows and columns of each stored frame.
        mask: regions blacked out in every frame, as (x0, y0, x1, y1) fractions of the width and
            height (e.g. an ultrasound banner with the patient's name burned in).
        stride: 0: frames spread uniformly over the whole clip; k: every k-th frame of a run in the
            clip's middle, keeping the motion's own speed whatever the clip's length.
    """

    frames: int
    size: int
    mask: tuple[tuple[float, float, float, float], ...] = ()
    stride: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ClipSpec:
        """From ``{"frames", "size", "mask"[, "stride"]}`` (params.yaml's ingest.video, or a stored spec;
        one stored before strides samples uniformly)."""
        return cls(int(raw["frames"]), int(raw["size"]), tuple(tuple(float(v) for v in box) for box in raw["mask"]),
                   int(raw.get("stride", 0)))

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as a model's preprocessing stores them."""
        return {"frames": self.frames, "size": self.size, "mask": [list(b) for b in self.mask], "stride": self.stride}

    def __post_init__(self) -> None:
        if self.frames < 1 or self.size < 1 or self.stride < 0:
            raise ValueError(f"clip spec needs at least 1 frame and 1 pixel and a stride of 0 or more, got "
                             f"{self.frames} x {self.size}, stride {self.stride}")
        for box in self.mask:
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"mask region {list(box)} is not [x0, y0, x1, y1] fractions with x0 < x1, y0 < y1")


def sample_indices(total: int, frames: int, stride: int = 0) -> list[int]:
    """`frames` indices of ``range(total)``: with a `stride` k > 0, every k-th index of a run centred in
    the clip; otherwise, or when the clip is shorter than that run, spread uniformly (centres of equal
    segments; repeats when the clip is shorter than `frames`)."""
    if total < 1:
        return []
    if stride > 0 and (span := stride * (frames - 1) + 1) <= total:
        return [(total - span) // 2 + stride * k for k in range(frames)]
    return [min(total - 1, int((k + 0.5) * total / frames)) for k in range(frames)]


def fit_frame(frame: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """One decoded grey frame (H, W), any numeric dtype, resized to the stored size as float32."""
    img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.float32), mode="F")
    return np.asarray(img.resize((spec.size, spec.size), Image.Resampling.BILINEAR), dtype=np.float32)


def apply_mask(clip: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """`clip` (..., H, W) with every mask region set to 0 in every frame (in place; returned)."""
    h, w = clip.shape[-2:]
    for x0, y0, x1, y1 in spec.mask:
        clip[..., int(y0 * h):int(np.ceil(y1 * h)), int(x0 * w):int(np.ceil(x1 * w))] = 0
    return clip


def to_grey(frame: np.ndarray) -> np.ndarray:
    """(H, W) unchanged; (H, W, 3|4) RGB(A) to luma (ITU-R BT.601 weights) as float32."""
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[-1] in (3, 4):
        return frame[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    raise ImageDecodeError(f"unexpected frame shape {frame.shape}")


def stack_clip(frames: Iterable[np.ndarray], spec: ClipSpec, *, full_scale: float | None) -> np.ndarray:
    """The stored clip (T, size, size) uint8 from sampled, fitted frames, mask regions black.

    Args:
        frames: the sampled frames in order (already `fit_frame`d); fewer than ``spec.frames`` are
            spread uniformly to ``spec.frames`` (a clip whose declared length was an estimate).
        full_scale: the value that maps to 255 (255 for 8-bit sources, ``2**bits - 1`` for more);
            None: the clip's own minimum and maximum map to 0 and 255 (float sources, e.g. MR in
            arbitrary units).

    Raises:
        ImageDecodeError: no frame at all.
    """
    kept = list(frames)
    if not kept:
        raise ImageDecodeError("no video frames could be decoded (empty or zero-frame clip)")
    clip = np.stack([kept[i] for i in sample_indices(len(kept), spec.frames)]) if len(kept) != spec.frames \
        else np.stack(kept)
    if full_scale is None:
        lo, hi = float(clip.min()), float(clip.max())
        clip = (clip - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(clip)
    elif full_scale != 255:
        clip = clip * (255.0 / full_scale)
    return apply_mask(np.ascontiguousarray(np.clip(np.rint(clip), 0, 255).astype(np.uint8)), spec)
