"""NumPy ``.npy`` arrays, read without pickles: what the model server's clients send most."""

from __future__ import annotations

import functools
import io
import math
from typing import IO

import numpy as np

from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, check_declared, short_reason

NPY_MAGIC = b"\x93NUMPY"


class NpyReader(Reader, name="npy", formats=".npy", suffixes=(".npy",)):
    """A single ``.npy`` array in the stored layout: (H, W), (H, W, C) or (D, H, W)."""

    def accepts(self, data: bytes) -> bool:
        return data.startswith(NPY_MAGIC)

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None) -> Decoded:
        try:
            stream = io.BytesIO(data)
            shape, fortran_order, dtype = read_npy_header(stream)
            offset = stream.tell()
            check_declared(limits, **_layout(shape), itemsize=dtype.itemsize)
            if dtype.hasobject:
                raise ValueError("object arrays need pickles, which are refused")
            count = math.prod(shape)
            if len(data) - offset < count * dtype.itemsize:
                raise ValueError(f"{len(data) - offset} bytes of data for {count} values of {dtype}")
            # The header is parsed once (np.load would parse it again); the copy makes the array writable.
            flat = np.frombuffer(data, dtype, count, offset).copy()
            return Decoded(flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape))
        except ImageDecodeError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise ImageDecodeError(f"corrupt .npy: {short_reason(exc)}") from None


def read_npy_header(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, Fortran order and dtype a .npy header declares; `fp` is left at the first data byte."""
    version = np.lib.format.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version} not supported")
    length_field = fp.read(2 if version == (1, 0) else 4)
    header = fp.read(int.from_bytes(length_field, "little"))
    return _parse_header(version, length_field + header)


@functools.lru_cache(maxsize=64)
def _parse_header(version: tuple[int, int], raw: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    # numpy parses the header's dict with ast.literal_eval, 0.1 ms a time; a service's clients send the
    # same few headers again and again. A truncated or malformed header raises here, and is not cached.
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(io.BytesIO(raw))


def _layout(shape: tuple[int, ...]) -> dict[str, int]:
    """The declared shape as `check_declared`'s rows, columns, frames and channels (stored layout:
    (H, W), (H, W, C) with C <= 4, (D, H, W); any other leading axes count as frames)."""
    if len(shape) < 2:
        return {"columns": math.prod(shape)}
    if len(shape) == 3 and shape[-1] <= 4:
        return {"rows": shape[0], "columns": shape[1], "channels": shape[2]}
    return {"rows": shape[-2], "columns": shape[-1], "frames": math.prod(shape[:-2])}
