"""MedMNIST: ``medmnist:<name>`` to a local ``.npz`` (downloaded when absent), and reading its splits.

A MedMNIST ``.npz`` holds ``{train,val,test}_{images,labels}``; images are read in blocks straight
from the (possibly compressed) archive, never all at once.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from components.config import IngestConfig
from components.data.manifest import SPLITS
from components.readers.base import short_reason
from components.readers.npy import read_npy_header

MEDMNIST_PREFIX = "medmnist:"


class SplitUnreadable(ValueError):
    """A split of the archive cannot be ingested; the message says why (and that it is skipped)."""


def resolve_medmnist(source: str, data_root: Path | None, cfg: IngestConfig) -> Path:
    """The local ``.npz`` of ``medmnist:<name>``: ``<data_root>/<name>.npz``, downloaded there first
    when absent, ``cfg.medmnist_url`` is set and the network answers within ``cfg.download_timeout_s``.

    Raises:
        ValueError: a malformed name, or the file is absent and could not be downloaded; the message
            says where to put the file.
    """
    name = source.removeprefix(MEDMNIST_PREFIX).strip().lower()
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"{source}: expected medmnist:<name>, e.g. medmnist:pneumoniamnist or medmnist:adrenalmnist3d")
    if data_root is None:
        raise ValueError(f"{source}: no data root; set MEDGATE_DATA_ROOT to the folder holding {name}.npz")
    path = Path(data_root) / f"{name}.npz"
    if path.is_file():
        return path
    why = "downloads are off (ingest.medmnist_url is empty)"
    if cfg.medmnist_url:
        url = cfg.medmnist_url.format(name=name)
        try:
            _download(url, path, cfg.download_timeout_s)
            return path
        except Exception as exc:  # noqa: BLE001 - offline, refused, timed out, unwritable: all say the same
            why = f"downloading {url} failed ({type(exc).__name__}: {short_reason(exc)})"
    raise ValueError(
        f"{source}: {path} does not exist and {why}. Put the MedMNIST file {name}.npz in {path.parent} "
        f"(or set MEDGATE_DATA_ROOT to the folder that holds it), then run again.")


def _download(url: str, path: Path, timeout_s: float) -> None:
    """Fetch `url` to `path` atomically, bounded by `timeout_s` per network operation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        with zipfile.ZipFile(tmp) as zf:  # a captive portal's HTML page is not a dataset
            if not any(n.endswith("_images.npy") for n in zf.namelist()):
                raise ValueError("the downloaded file has no *_images arrays")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def archive_splits(zf: zipfile.ZipFile) -> list[str]:
    """The splits of an open ``.npz`` that have an images array, in train, val, test order."""
    members = set(zf.namelist())
    return [s for s in SPLITS if f"{s}_images.npy" in members]


def open_split(zf: zipfile.ZipFile, split: str, chunk: int) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """A split's labels (1D) and an iterator over its images in blocks of up to `chunk`.

    Raises:
        SplitUnreadable: labels missing, unreadable or multi-label; images unreadable; or the
            counts of images and labels differ.
    """
    try:
        labels = np.load(io.BytesIO(zf.read(f"{split}_labels.npy")), allow_pickle=False)
    except KeyError:
        raise SplitUnreadable(f"{split}_labels is missing; split skipped") from None
    except Exception as exc:  # noqa: BLE001 - zip, zlib and numpy errors alike
        raise SplitUnreadable(f"{split}_labels unreadable ({short_reason(exc)}); split skipped") from None
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise SplitUnreadable(f"labels of shape {labels.shape} (multi-label) are not supported; split skipped")
    fp: IO[bytes] | None = None
    try:
        fp = zf.open(f"{split}_images.npy")
        shape, fortran, dtype = _npy_header(fp)
    except Exception as exc:  # noqa: BLE001 - zip, zlib and numpy errors alike
        if fp is not None:
            fp.close()
        raise SplitUnreadable(f"{split}_images unreadable ({short_reason(exc)}); split skipped") from None
    if shape[0] != len(labels):
        fp.close()
        raise SplitUnreadable(f"{shape[0]} images but {len(labels)} labels; split skipped")
    return labels, _blocks(fp, shape, fortran, dtype, chunk)


def _npy_header(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    shape, fortran, dtype = read_npy_header(fp)
    if dtype.hasobject:
        raise ValueError("object arrays are not images")
    if not shape:
        raise ValueError("a scalar is not an image stack")
    return shape, fortran, dtype


def _blocks(fp: IO[bytes], shape: tuple[int, ...], fortran: bool, dtype: np.dtype,
            chunk: int) -> Iterator[np.ndarray]:
    """Blocks of up to `chunk` images read from `fp` after its header; closes `fp`."""
    with fp:
        if fortran:  # column-major: one image's pixels are not contiguous, so read it whole
            fp.seek(0)
            yield np.load(fp, allow_pickle=False)
            return
        per = math.prod(shape[1:]) * dtype.itemsize
        for start in range(0, shape[0], chunk):
            n = min(chunk, shape[0] - start)
            buf = fp.read(n * per)
            if len(buf) != n * per:
                raise ValueError("unexpected end of data")
            yield np.frombuffer(buf, dtype=dtype).reshape((n, *shape[1:]))
