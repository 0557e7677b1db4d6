"""NumPy ``.npy`` arrays, read without pickles: what the model server's clients send most."""

from __future__ import annotations

import io

import numpy as np

from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, short_reason

NPY_MAGIC = b"\x93NUMPY"


class NpyReader(Reader):
    """A single ``.npy`` array in the stored layout: (H, W), (H, W, C) or (D, H, W)."""

    name = "npy"
    formats = ".npy"
    suffixes = (".npy",)

    def accepts(self, data: bytes) -> bool:
        return data.startswith(NPY_MAGIC)

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None = None) -> Decoded:
        try:
            return Decoded(np.load(io.BytesIO(data), allow_pickle=False))
        except (ValueError, OSError, EOFError) as exc:
            raise ImageDecodeError(f"corrupt .npy: {short_reason(exc)}") from None
