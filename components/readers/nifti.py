"""NIfTI-1/2 single-file volumes (``.nii``, ``.nii.gz``), reoriented to RAS and stored (D, H, W).

(D, H, W) = (inferior→superior, anterior→posterior, right→left); voxel sizes become the spacing
columns. nibabel loads on first use. The header's shape and data type are checked against the
caller's `DecodeLimits` before any voxel is read; a ``.nii.gz`` is inflated header first, then no
further than the voxels its header declares.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from components.readers.base import (
    DecodeLimits, Decoded, ImageDecodeError, Reader, check_declared, short_reason, spacing_columns,
)

MAX_GZIP_BYTES = 1 << 30  # a .nii.gz is never inflated beyond this, whatever its header declares
_HEADER_BYTES = 540  # a NIfTI-2 header; a NIfTI-1 header is the first 348 bytes
_GZIP = b"\x1f\x8b"
_PAIR = b"ni1\x00"  # magic of a .hdr/.img pair's header


class NiftiReader(Reader, name="nifti", formats="NIfTI", suffixes=(".nii", ".nii.gz")):
    """NIfTI-1/2 volumes in one file, either byte order, optionally gzip-compressed."""

    def accepts(self, data: bytes) -> bool:
        return data.startswith(_GZIP) or data[344:348] == _PAIR or _version(data) > 0

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None) -> Decoded:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if data.startswith(_GZIP) else None
        head = _inflate(inflater, data, _HEADER_BYTES) if inflater else data[:_HEADER_BYTES]
        if head[344:348] == _PAIR:
            raise ImageDecodeError("NIfTI header/image pair (.hdr/.img) is not supported: convert it to one .nii file")
        version = _version(head)
        if inflater and not version and len(head) < _HEADER_BYTES and not inflater.eof:
            raise ImageDecodeError("corrupt or truncated gzip: unexpected end of data")
        if not version:
            raise ImageDecodeError("gzip content is not a NIfTI volume (only .nii.gz is read compressed)" if inflater
                                   else "not a NIfTI-1/2 file (no n+1 or n+2 header)")
        end = _check_header(head, version, limits)
        if inflater:
            rest = min(end, MAX_GZIP_BYTES) - len(head)
            data = head + (_inflate(inflater, inflater.unconsumed_tail, rest) if rest > 0 else b"")
        arr, spacing = _decode(data, version)
        return Decoded(arr, spacing_columns(spacing))


def _inflate(inflater: Any, data: bytes, most: int) -> bytes:
    """At most `most` more bytes of a gzip stream whose next input is `data`."""
    try:
        return inflater.decompress(data, most)
    except zlib.error as exc:
        raise ImageDecodeError(f"corrupt or truncated gzip: {short_reason(exc)}") from None


def _check_header(head: bytes, version: int, limits: DecodeLimits | None) -> int:
    """Refuse what the header declares beyond `limits` or this platform; returns where its voxels end.

    Raises:
        TooLarge: the declared volume exceeds `limits`.
        ImageDecodeError: an unreadable header, or a 4D volume.
    """
    import nibabel as nib

    kind = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    try:
        header = kind(head[: kind.sizeof_hdr])
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = header.get_data_dtype()
        slope, inter = header.get_slope_inter()
        offset = int(header["vox_offset"])
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged headers
        raise ImageDecodeError(f"corrupt or truncated NIfTI: {short_reason(exc)}") from None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise ImageDecodeError(f"NIfTI of shape {shape}: 4D volumes (time series or several channels) "
                               "are not supported")
    x, y, z = (*shape, 1, 1)[:3]
    scaled = slope is not None and (slope, inter or 0.0) != (1.0, 0.0)  # nibabel scales to float64
    check_declared(limits, rows=y, columns=x, frames=z, itemsize=8 if scaled else dtype.itemsize)
    return offset + x * y * z * dtype.itemsize


def _version(data: bytes) -> int:
    """1 or 2 for a single-file NIfTI header (either byte order), else 0."""
    if len(data) >= 348 and data[344:348] == b"n+1\x00" and data[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return 1
    if len(data) >= 540 and data[4:8] == b"n+2\x00" and data[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return 2
    return 0


def _decode(data: bytes, version: int) -> tuple[np.ndarray, tuple[float | None, float | None, float | None]]:
    import nibabel as nib

    kind = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    try:
        img = nib.as_closest_canonical(kind.from_bytes(data))
        arr = np.asanyarray(img.dataobj)
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise ImageDecodeError(f"corrupt or truncated NIfTI: {short_reason(exc)}") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:  # more axes were refused with the header
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., np.newaxis]
    zooms += [1.0] * (3 - len(zooms))
    # RAS (x: right→left, y: posterior→anterior, z: inferior→superior) → (D, H, W) with rows from anterior.
    volume = np.ascontiguousarray(np.flip(np.transpose(arr, (2, 1, 0)), axis=1))
    spacing = tuple(z if math.isfinite(z) and z > 0 else None for z in (zooms[2], zooms[1], zooms[0]))
    if volume.shape[0] == 1:
        return volume[0], (None, spacing[1], spacing[2])
    return volume, (spacing[0], spacing[1], spacing[2])
