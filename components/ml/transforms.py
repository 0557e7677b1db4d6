"""The one preprocessing path, shared by prepare, train, evaluate and the model service.

Stored images (see docs/manifest.md) are channel-last: (H, W), (H, W, C) or (D, H, W).
`preprocess` turns one into the network's float32 input (C, *spatial) in [0, 1]; its
parameters (`Preprocessing`) are stored with the model so the service repeats it exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.networks.layers import AffineTransform
from monai.transforms import Resize

from components.config import AugmentConfig


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
        clip: for a model of clips (video, DICOM cine), how an uploaded clip is sampled, as ingest
            sampled its training clips (``{"frames", "size", "mask"}``: `components.readers.clips.ClipSpec`,
            kept as plain values so that training does not import the readers); None: images or volumes.
    """

    spatial_size: tuple[int, ...]
    channels: int
    lower: float
    upper: float
    clip: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values; ``clip`` only for a clip model (model stores refuse None in metadata)."""
        raw = asdict(self)
        if raw["clip"] is None:
            del raw["clip"]
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        clip = raw.get("clip")
        return cls(
            spatial_size=tuple(int(s) for s in raw["spatial_size"]),
            channels=int(raw["channels"]),
            lower=float(raw["lower"]),
            upper=float(raw["upper"]),
            # Plain values (components.readers.clips.ClipSpec reads them; a spec stored before strides has none).
            clip={"frames": int(clip["frames"]), "size": int(clip["size"]), "mask": [list(map(float, b)) for b in clip["mask"]],
                  "stride": int(clip.get("stride", 0))} if clip else None,
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
    """One stored or uploaded image → float32 (C, *spatial) in [0, 1]: the intensity window, then an
    area resize where the image is not already at `spatial_size`."""
    arr = to_channel_first(image, len(spec.spatial_size), spec.channels).astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise PreprocessError("image has non-finite pixel values (NaN or inf)")
    # numpy, not MONAI's ScaleIntensityRange: the same arithmetic without MetaTensor bookkeeping, which
    # cost 0.5 ms of the model service's ~1 ms per-image compute (benchmarks/serving.py).
    arr = np.clip((arr - spec.lower) / (spec.upper - spec.lower), 0.0, 1.0, dtype=np.float32)
    if arr.shape[1:] == spec.spatial_size:
        return arr
    out = _resize(spec.spatial_size)(arr)
    return np.asarray(out.numpy() if isinstance(out, torch.Tensor) else out, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _resize(spatial_size: tuple[int, ...]) -> Resize:
    # Built once: constructing a MONAI transform costs more than applying it to a small image.
    return Resize(spatial_size=spatial_size, mode="area")


def preprocess_batch(images: list[np.ndarray], spec: Preprocessing) -> np.ndarray:
    """Several images → float32 (N, C, *spatial)."""
    return np.stack([preprocess(img, spec) for img in images]) if images else np.zeros((0, *spec.input_shape), np.float32)


class BatchAugmentation:
    """Random, label-preserving changes applied to a whole training batch at once.

    Per image: with `affine_probability` a rotation (in the (H, W) plane, also for volumes),
    zoom and shift resampled by MONAI's `AffineTransform` (bilinear, border padding); a flip
    along each of `flip_axes` with probability 0.5; a contrast change about the mean of the image
    as stored; and with `noise_probability` Gaussian noise. Working on the batch tensor instead of
    image by image keeps augmentation from starving the network of data, and the fewer passes over
    a batch of volumes the better (see benchmarks/throughput.py): flips and contrast ride along
    with the resampling where there is one.

    Args:
        cfg: the `train.augment` section.
        spatial_dims: 2 for images (N, C, H, W), 3 for volumes (N, C, D, H, W) and clips (N, C, T, H, W).
        generator: the source of every random draw, so a seed (and a restored state) repeats a run.
        clip: the first spatial axis is time: each clip's frames are also jittered in time
            (`temporal_jitter`), the same in-plane change applying to all of its frames and none along
            time (a zoom or sub-frame shift there would blend neighbouring frames into each other).
    """

    def __init__(self, cfg: AugmentConfig, spatial_dims: int, generator: torch.Generator, clip: bool = False):
        self.cfg, self.spatial_dims, self.generator, self.clip = cfg, spatial_dims, generator, clip
        self.resample = AffineTransform(normalized=True, padding_mode="border", align_corners=False)

    def _uniform(self, n: int, half_range: float) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) * 2 - 1) * half_range

    def _chosen(self, n: int, probability: float) -> torch.Tensor:
        """Indices of the images (of `n`) that get a change of this `probability`."""
        return (torch.rand(n, generator=self.generator) < probability).nonzero().squeeze(1)

    def affine_matrices(self, n: int) -> torch.Tensor:
        """(n, d+1, d+1) random rotation/zoom/shift matrices in normalised coordinates."""
        cfg, d = self.cfg, self.spatial_dims
        angle = self._uniform(n, math.radians(cfg.rotate_degrees))
        scale = 1 + self._uniform(n, cfg.zoom)
        shift = torch.stack([self._uniform(n, 2 * cfg.translate) for _ in range(d)], dim=1)
        theta = torch.eye(d + 1).repeat(n, 1, 1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        h, w = d - 2, d - 1  # the in-plane axes, last two spatial dimensions
        theta[:, h, h], theta[:, h, w], theta[:, w, h], theta[:, w, w] = cos, -sin, sin, cos
        if d == 3 and not self.clip:
            theta[:, 0, 0] = 1 / scale
        theta[:, :d, d] = shift
        if self.clip:
            theta[:, 0, d] = 0  # time moves by temporal_jitter alone, whole frames at a time
        return theta

    def transform(self, images: torch.Tensor, theta: torch.Tensor, factor: torch.Tensor | None = None,
                  mean: torch.Tensor | None = None) -> torch.Tensor:
        """`images` resampled through `theta` (from `affine_matrices`), bilinear or trilinear with
        border padding, then their contrast changed: `(x - mean) * factor + mean` per image.

        A volume's matrix moves the depth axis by a scale and shift of its own and the in-plane
        axes alike on every slice, so trilinear interpolation separates exactly into a bilinear
        resample of the slices (depth as channels: one sampling grid per volume, not per voxel)
        and a linear one along depth, a matrix product that also applies the contrast: the same
        result as `AffineTransform` in 3D (to float rounding) at a fraction of its cost (at 64^3, a fifth).
        """
        n = images.shape[0]
        factor = torch.ones(n, device=images.device) if factor is None else factor
        mean = torch.zeros(n, device=images.device) if mean is None else mean
        offset = (mean * (1 - factor)).to(images.dtype)
        if self.spatial_dims == 2:
            shape = (n, *[1] * (images.ndim - 1))
            return torch.addcmul(offset.view(shape), self.resample(images, theta), factor.view(shape).to(images.dtype))
        _, channels, depth, height, width = images.shape
        plane = torch.eye(3, device=theta.device).repeat(n, 1, 1)
        plane[:, :2, :2], plane[:, :2, 2] = theta[:, 1:3, 1:3], theta[:, 1:3, 3]
        slices = self.resample(images.reshape(n, channels * depth, height, width), plane)
        if bool((theta[:, 0] == torch.tensor([1.0, 0, 0, 0], dtype=theta.dtype, device=theta.device)).all()):
            # Nothing moves along depth (a clip's time): the pass along it would copy every slice as it is.
            shape = (n, 1, 1, 1, 1)
            return torch.addcmul(offset.view(shape), slices.view(n, channels, depth, height, width), factor.to(images.dtype).view(shape))
        # Source depth of each output slice, in voxels (align_corners=False), clamped as border padding does.
        out = (2 * torch.arange(depth, device=theta.device, dtype=theta.dtype) + 1) / depth - 1
        source = (((out * theta[:, :1, 0] + theta[:, :1, 3] + 1) * depth - 1) / 2).clamp(0, depth - 1)
        below = source.floor().clamp(max=max(depth - 2, 0))
        # Linear interpolation along depth as a (depth x depth) matrix with two weights a row: one
        # matrix product reads each slice once, where gathering the two neighbours read it twice.
        weights = torch.zeros(n, depth, depth, device=theta.device, dtype=images.dtype)
        rows, volumes = torch.arange(depth, device=theta.device).expand(n, depth), torch.arange(n).view(-1, 1)
        weights[volumes, rows, below.long()] = (1 - (source - below)).to(images.dtype)
        weights[volumes, rows, (below + 1).clamp(max=depth - 1).long()] += (source - below).to(images.dtype)
        weights *= factor.to(images.dtype).view(n, 1, 1)
        mixed = torch.baddbmm(offset.view(n, 1, 1).repeat_interleave(channels, 0), weights.repeat_interleave(channels, 0),
                              slices.view(n * channels, depth, height * width))
        return mixed.view(n, channels, depth, height, width)

    def frame_indices(self, n: int, frames: int) -> torch.Tensor:
        """(n, frames) stored frames each clip's positions take: position k moves by up to
        `temporal_jitter` frames (uniform, rounded, clamped), in time order (a sampling that varies
        around the stored one, as ingest's sample from another start or rate would)."""
        moved = torch.arange(frames).float() + self._uniform(n * frames, self.cfg.temporal_jitter).view(n, frames)
        return moved.round().clamp(0, frames - 1).long().sort(dim=1).values

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        cfg, n = self.cfg, images.shape[0]
        if not cfg.enabled or n == 0:
            return images
        device = images.device
        if self.clip and cfg.temporal_jitter > 0:
            index = self.frame_indices(n, images.shape[2]).to(device)
            images = images.gather(2, index.view(n, 1, -1, 1, 1).expand_as(images))
        resampled = self._chosen(n, cfg.affine_probability)
        theta = self.affine_matrices(len(resampled))
        flipped = torch.zeros(n, self.spatial_dims, dtype=torch.bool)
        for axis in cfg.flip_axes:
            flipped[self._chosen(n, 0.5), axis % self.spatial_dims] = True
        factor = 1 + self._uniform(n, cfg.contrast) if cfg.contrast > 0 else torch.ones(n)
        factor = factor.to(device)
        mean = images.mean(dim=tuple(range(1, images.ndim))) if cfg.contrast > 0 else torch.zeros(n, device=device)
        if 2 * len(resampled) > n:
            # Most are resampled: all are, the others through the identity (a change of float
            # rounding only), which costs less than picking the chosen ones out of the batch and back.
            identity = torch.eye(self.spatial_dims + 1).repeat(n, 1, 1)
            identity[resampled] = theta
            resampled, theta = torch.arange(n), identity
        # A resampled image's flips are folded into its matrix (a mirrored sampling grid: the same
        # pixels, no extra pass over the volume).
        theta[:, :, : self.spatial_dims] *= 1 - 2 * flipped[resampled].to(theta.dtype).unsqueeze(1)
        if len(resampled) == n:
            out = self.transform(images, theta.to(device), factor, mean)
        else:  # few chosen: only they are resampled (on 28^3 volumes, a third of the time of all)
            out = torch.empty_like(images)
            if len(resampled):
                chosen = resampled.to(device)
                out[chosen] = self.transform(images[chosen], theta.to(device), factor[chosen], mean[chosen])
        kept_mask = torch.ones(n, dtype=torch.bool)
        kept_mask[resampled] = False
        kept = kept_mask.nonzero().squeeze(1)
        if len(kept):
            unmoved = images[kept.to(device)]
            for axis in range(self.spatial_dims):
                mirror = flipped[kept, axis].nonzero().squeeze(1).to(device)
                if len(mirror):
                    unmoved[mirror] = unmoved[mirror].flip(2 + axis)
            shape = (len(kept), *[1] * (images.ndim - 1))
            f = factor[kept.to(device)].view(shape)
            out[kept.to(device)] = torch.addcmul((mean[kept.to(device)].view(shape) * (1 - f)), unmoved, f)
        chosen = self._chosen(n, cfg.noise_probability if cfg.noise_std > 0 else 0.0).to(device)
        if len(chosen):
            noise = torch.randn((len(chosen), *images.shape[1:]), generator=self.generator).mul_(cfg.noise_std)
            for image, change in zip(chosen.tolist(), noise.to(device)):  # in place: no gather and scatter
                out[image] += change
        return out
