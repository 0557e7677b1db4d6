"""The pixel store: shards written member by member, read back by manifest path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from components.data.shards import ImageStore, ShardWriter
from components.readers.base import content_hash


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
