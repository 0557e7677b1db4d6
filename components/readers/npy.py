"""NumPy ``.npy`` arrays, read without pickles: what the model server's clients send most."""

from __future__ import annotations

import io
import math

import numpy as np

from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, check_declared, short_reason

NPY_MAGIC = b"\x93NUMPY"


class NpyReader(Reader, name="npy", formats=".npy", suffixes=(".npy",)):
    """A single ``.npy`` array in the stored layout: (H, W), (H, W, C) or (D, H, W)."""

    def accepts(self, data: bytes) -> bool:
        return data.startswith(NPY_MAGIC)

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None) -> Decoded:
        try:
            shape, dtype = _header(data)
            check_declared(limits, **_layout(shape), itemsize=dtype.itemsize)
            return Decoded(np.load(io.BytesIO(data), allow_pickle=False))
        except ImageDecodeError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise ImageDecodeError(f"corrupt .npy: {short_reason(exc)}") from None


def _header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype the header declares, read without the array."""
    fp = io.BytesIO(data)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    return shape, dtype


def _layout(shape: tuple[int, ...]) -> dict[str, int]:
    """The declared shape as `check_declared`'s rows, columns, frames and channels (stored layout:
    (H, W), (H, W, C) with C <= 4, (D, H, W); any other leading axes count as frames)."""
    if len(shape) < 2:
        return {"columns": math.prod(shape)}
    if len(shape) == 3 and shape[-1] <= 4:
        return {"rows": shape[0], "columns": shape[1], "channels": shape[2]}
    return {"rows": shape[-2], "columns": shape[-1], "frames": math.prod(shape[:-2])}
