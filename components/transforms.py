"""The one preprocessing path, shared by prepare, train, evaluate and the model service.

Stored images (see docs/manifest.md) are channel-last: (H, W), (H, W, C) or (D, H, W).
`preprocess` turns one into the network's float32 input (C, *spatial) in [0, 1]; its
parameters (`Preprocessing`) are stored with the model so the service repeats it exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, RandAffine, RandFlip, RandGaussianNoise, Resize, ScaleIntensityRange


class PreprocessError(ValueError):
    """An image that this model cannot take (wrong dimensions or channels, non-finite pixels)."""


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of `preprocess`.

    Args:
        spatial_size: (H, W) for 2D models, (D, H, W) for 3D ones.
        channels: channels the network takes (1 grey, 3 RGB).
        lower, upper: intensity window mapped to [0, 1] and clipped; for CT these are
            Hounsfield units (level -/+ width/2), for 8-bit images 0 and 255.
    """

    spatial_size: tuple[int, ...]
    channels: int
    lower: float
    upper: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        return cls(
            spatial_size=tuple(int(s) for s in raw["spatial_size"]),
            channels=int(raw["channels"]),
            lower=float(raw["lower"]),
            upper=float(raw["upper"]),
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, *self.spatial_size)


def to_channel_first(image: np.ndarray, spatial_dims: int, channels: int) -> np.ndarray:
    """(H, W) / (H, W, C) / (D, H, W) → (C, *spatial); raises PreprocessError on a mismatch."""
    arr = np.asarray(image)
    if arr.ndim == spatial_dims:
        arr = arr[np.newaxis]
    elif arr.ndim == spatial_dims + 1 and arr.shape[-1] in (1, 3, 4):
        arr = np.moveaxis(arr, -1, 0)
        if arr.shape[0] == 4:  # RGBA: alpha carries no image content
            arr = arr[:3]
    else:
        kind = "2D image (H, W) or (H, W, C)" if spatial_dims == 2 else "3D volume (D, H, W)"
        raise PreprocessError(f"expected a {kind}, got an array of shape {tuple(arr.shape)}")
    if arr.shape[0] != channels:
        raise PreprocessError(f"expected {channels} channel(s), got {arr.shape[0]}")
    return arr


def preprocess(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """One stored or uploaded image → float32 (C, *spatial) in [0, 1]."""
    arr = to_channel_first(image, len(spec.spatial_size), spec.channels).astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise PreprocessError("image has non-finite pixel values (NaN or inf)")
    pipeline = Compose(
        [
            ScaleIntensityRange(a_min=spec.lower, a_max=spec.upper, b_min=0.0, b_max=1.0, clip=True),
            Resize(spatial_size=spec.spatial_size, mode="area"),
        ]
    )
    out = pipeline(arr)
    return np.asarray(out.numpy() if isinstance(out, torch.Tensor) else out, dtype=np.float32)


def preprocess_batch(images: list[np.ndarray], spec: Preprocessing) -> np.ndarray:
    """Several images → float32 (N, C, *spatial)."""
    return np.stack([preprocess(img, spec) for img in images]) if images else np.zeros((0, *spec.input_shape), np.float32)


def training_augmentation(spatial_dims: int) -> Compose:
    """Random, label-preserving changes applied to each training image (channel-first tensor).

    Mild by design: small rotations and zooms, flips and noise keep a lesion a lesion.
    """
    return Compose(
        [
            RandFlip(prob=0.5, spatial_axis=spatial_dims - 1),
            RandAffine(
                prob=0.5,
                rotate_range=(0.26,) if spatial_dims == 2 else (0.26, 0.0, 0.0),
                scale_range=0.1,
                padding_mode="border",
            ),
            RandGaussianNoise(prob=0.2, std=0.02),
        ]
    )
