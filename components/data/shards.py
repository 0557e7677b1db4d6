"""Stored pixels: uncompressed ``images/<NNNNN>.npz`` shards, one ``<content hash>.npy`` member per distinct image.

A manifest row's ``path`` is ``images/<NNNNN>.npz/<hash>.npy`` (or a plain
``.npy`` file); `ImageStore` reads either. Shards keep a dataset of 100,000 images at a few hundred
files, which DVC hashes, caches and pushes faster than one file per image (benchmarks/intake.py
measures both). Fixed member timestamps: the same pixels give the same shard bytes.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from functools import cache
from pathlib import Path
from typing import Any, Self

import numpy as np

from components.readers.base import content_hash, is_colour

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ShardWriter:
    """Writes one shard, ``images/<index>.npz`` under `out_dir`, member by member (one image in memory at a time)."""

    def __init__(self, out_dir: Path, index: int):
        self.rel = f"images/{index:05d}.npz"
        self.path = out_dir / self.rel
        self._zip: zipfile.ZipFile | None = None
        self._members: set[str] = set()

    def add(self, arr: np.ndarray) -> dict[str, Any]:
        """Store `arr` (identical pixels share a member) and return its manifest pixel columns."""
        digest = content_hash(arr)
        member = f"{digest}.npy"
        if member not in self._members:
            if self._zip is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._zip = zipfile.ZipFile(self.path.with_suffix(".tmp"), "w", zipfile.ZIP_STORED, allowZip64=True)
            # the bytes `np.save` writes, without copying the pixels
            _store(self._zip, member, _npy_header(arr.dtype.str, arr.shape), np.ascontiguousarray(arr).data.cast("B"))
            self._members.add(member)
        return pixel_columns(arr, digest, f"{self.rel}/{member}")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self.path.with_suffix(".tmp").replace(self.path)
            self._zip = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _store(zf: zipfile.ZipFile, name: str, header: bytes, data: memoryview) -> None:
    """Append a stored member `header` + `data` to `zf` (open for writing) with the bytes
    ``zf.open(name, "w")`` writes, zip64 fields only where the member needs them. Its CRC and size
    are known before it is written, so its header is written once: zipfile writes it, seeks back to
    rewrite it and flushes its buffer around every member, which costs more than the CRC."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.file_size = info.compress_size = len(header) + data.nbytes
    info.CRC = zlib.crc32(data, zlib.crc32(header))
    info.external_attr = 0o600 << 16  # what zipfile gives a member written without one
    info.header_offset = zf.start_dir
    zf.fp.write(info.FileHeader(info.file_size * 1.05 > zipfile.ZIP64_LIMIT))  # zipfile's own zip64 rule
    zf.fp.write(header)
    zf.fp.write(data)
    zf.start_dir = zf.fp.tell()  # where the central directory, written by `close`, begins
    zf.filelist.append(info)
    zf.NameToInfo[name] = info


@cache
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header `np.save` writes for a C-order array (format 1.0; one per dtype and shape)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def pixel_columns(arr: np.ndarray, digest: str, rel: str) -> dict[str, Any]:
    """The manifest columns of a stored array: `rel` (its path), shape, dtype, intensity statistics, hash.

    The statistics are `np.mean`'s and `np.std`'s in float64 to the bit: their reductions, called
    without numpy's Python wrappers (a small image's statistics cost less than those)."""
    colour = is_colour(arr)
    mean = np.add.reduce(arr, axis=None, dtype=np.float64) / arr.size
    deviation = np.subtract(arr, mean, dtype=np.float64)  # np.std's steps, its mean computed once
    spatial = arr.shape[:2] if colour else arr.shape
    ndim = len(spatial)
    return {
        "path": rel,
        "ndim": ndim,
        "height": int(spatial[-2]) if ndim > 1 else 1,  # a recording: 1 x samples
        "width": int(spatial[-1]),
        "depth": int(spatial[0]) if ndim == 3 else 1,
        "channels": int(arr.shape[-1]) if colour else 1,
        "dtype": _dtype_name(arr.dtype),
        "intensity_min": float(np.minimum.reduce(arr, axis=None)),
        "intensity_max": float(np.maximum.reduce(arr, axis=None)),
        "intensity_mean": float(mean),
        "intensity_std": math.sqrt(np.add.reduce(np.square(deviation, out=deviation), axis=None) / deviation.size),
        "content_hash": digest,
    }


@cache
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)  # costs more than a small image's minimum


class ImageStore:
    """Reads the images a manifest points to; ``path`` is a shard member or a plain ``.npy`` file.

    Keeps up to `max_open` shards open, so reading rows grouped by shard costs one open per shard.
    Use as a context manager, or call `close`.
    """

    def __init__(self, root: Path, max_open: int = 16):
        self.root = Path(root)
        self.max_open = max_open
        self._open: dict[str, zipfile.ZipFile] = {}

    def _member(self, rel: str) -> tuple[zipfile.ZipFile, str] | None:
        shard, sep, member = rel.partition(".npz/")
        if not sep:
            return None
        key = shard + ".npz"
        zf = self._open.pop(key, None) or zipfile.ZipFile(self.root / key)
        self._open[key] = zf  # most recently used last
        while len(self._open) > self.max_open:
            self._open.pop(next(iter(self._open))).close()
        return zf, member

    def read_bytes(self, rel: str) -> bytes:
        """The image as the bytes of a ``.npy`` file (what the model server accepts as an upload)."""
        found = self._member(rel)
        return (self.root / rel).read_bytes() if found is None else found[0].read(found[1])

    def load(self, rel: str) -> np.ndarray:
        found = self._member(rel)
        if found is None:
            return np.load(self.root / rel, allow_pickle=False)
        with found[0].open(found[1]) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def close(self) -> None:
        for zf in self._open.values():
            zf.close()
        self._open.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
