"""The pixel store: shards written member by member, read back by manifest path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from components.data.shards import ImageStore, ShardWriter, pixel_columns
from components.readers.base import content_hash

_PINNED_HASH = "02673033ce231b03ea447af4f7c99c5a9ecf85beccd9d1481e0e484af63654ba"


def test_shard_writer_stores_identical_pixels_once(tmp_path: Path) -> None:
    a, b = np.arange(12, dtype=np.uint8).reshape(3, 4), np.ones((2, 2, 3), np.uint8)
    with ShardWriter(tmp_path, 7) as writer:
        first, again, colour = writer.add(a), writer.add(a.copy()), writer.add(b)
    assert first == again and first["path"] == f"images/00007.npz/{content_hash(a)}.npy"
    assert (colour["ndim"], colour["channels"], colour["height"], colour["width"]) == (2, 3, 2, 2)
    with ImageStore(tmp_path) as store:
        np.testing.assert_array_equal(store.load(first["path"]), a)
        np.testing.assert_array_equal(store.load(colour["path"]), b)


def test_image_store_reads_plain_npy_files_too(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    (tmp_path / "images").mkdir()
    np.save(tmp_path / "images" / "x.npy", arr)
    with ImageStore(tmp_path) as store:
        np.testing.assert_array_equal(store.load("images/x.npy"), arr)
        assert np.load(io.BytesIO(store.read_bytes("images/x.npy"))).shape == (3, 4)


@pytest.mark.parametrize("arr", [
    np.random.default_rng(3).normal(40, 300, (33, 47)).astype(np.float32),
    np.random.default_rng(4).integers(0, 255, (9, 11, 3), dtype=np.uint8),
    np.random.default_rng(5).integers(-2000, 4000, (4, 6, 5)).astype(np.int16),
    np.arange(10, dtype=np.float32).reshape(1, 10),
])
def test_pixel_columns_are_numpys_statistics_to_the_bit(arr: np.ndarray) -> None:
    cols = pixel_columns(arr, "h", "images/00000.npz/h.npy")
    assert cols["intensity_mean"] == float(np.mean(arr, dtype=np.float64))
    assert cols["intensity_std"] == float(np.std(arr, dtype=np.float64))
    assert (cols["intensity_min"], cols["intensity_max"]) == (float(arr.min()), float(arr.max()))
    assert cols["dtype"] == str(arr.dtype) and cols["content_hash"] == "h"


def test_content_hash_is_pinned() -> None:
    """The manifest's content_hash of a known array: a change here changes every dataset's hashes."""
    assert content_hash(np.arange(12, dtype=np.int16).reshape(3, 4)) == _PINNED_HASH
