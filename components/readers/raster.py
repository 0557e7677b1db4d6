"""PNG and JPEG through Pillow: grey as (H, W) uint8/uint16, colour as (H, W, 3) uint8 RGB.

EXIF orientation is applied; animated files are refused. The file is opened by its format's Pillow
plugin, which parses the header only, and the size it declares is checked against the caller's
`DecodeLimits` before any pixel is decoded. Pillow's decompression-bomb check (`Image.MAX_IMAGE_PIXELS`,
applied by `Image.open`) is a process-wide setting that changing per call would race between the
service's threads: it is left as it is and not relied on; the limits are per call.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin

from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, check_declared, short_reason

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_OPENERS = {"PNG": PngImagePlugin.PngImageFile, "JPEG": JpegImagePlugin.jpeg_factory}


class RasterReader(
    Reader, name="raster", formats="PNG, JPEG", suffixes=(".png", ".jpg", ".jpeg"), in_class_folders=True,
):
    """PNG and JPEG images; also read from class-named folders."""

    def accepts(self, data: bytes) -> bool:
        return data.startswith((PNG_MAGIC, JPEG_MAGIC))

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None) -> Decoded:
        kind = "PNG" if data.startswith(PNG_MAGIC) else "JPEG" if data.startswith(JPEG_MAGIC) else None
        if kind is None:
            raise ImageDecodeError("not a PNG or JPEG file")
        try:
            with _OPENERS[kind](io.BytesIO(data)) as opened:
                if getattr(opened, "n_frames", 1) > 1:
                    raise ImageDecodeError(f"animated {kind} is not supported")
                channels, itemsize = _decoded_layout(opened.mode)
                width, height = opened.size
                check_declared(limits, rows=height, columns=width, channels=channels, itemsize=itemsize)
                opened.load()
                return Decoded(_to_array(ImageOps.exif_transpose(opened)))
        except ImageDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
            raise ImageDecodeError(f"corrupt or truncated {kind}: {short_reason(exc)}") from None


def _decoded_layout(mode: str) -> tuple[int, int]:
    """(channels, bytes per value) of the array `_to_array` makes from an image of this mode."""
    if mode.startswith("I;16"):
        return 1, 2
    if mode in ("I", "F"):
        return 1, 4
    if mode in ("1", "L", "LA"):
        return 1, 1
    return 3, 1  # palette and colour modes come back as RGB (a grey palette as grey, which is less)


def _to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode.startswith("I;16"):
        return np.asarray(img, dtype=np.uint16) if mode != "I;16B" else np.asarray(img).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(img, dtype=np.int32)
        return arr.astype(np.uint16) if arr.size and arr.min() >= 0 and arr.max() <= 65535 else arr
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode == "P" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])  # a grey palette is a grey image
    return rgb
