"""PNG and JPEG through Pillow: grey as (H, W) uint8/uint16, colour as (H, W, 3) uint8 RGB.

EXIF orientation is applied; animated files and decompression bombs are refused.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, short_reason

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class RasterReader(Reader):
    """PNG and JPEG images; also read from class-named folders."""

    name = "raster"
    formats = "PNG, JPEG"
    suffixes = (".png", ".jpg", ".jpeg")
    in_class_folders = True

    def accepts(self, data: bytes) -> bool:
        return data.startswith((PNG_MAGIC, JPEG_MAGIC))

    def read(self, data: bytes, salt: str, limits: DecodeLimits | None = None) -> Decoded:
        kind = "PNG" if data.startswith(PNG_MAGIC) else "JPEG" if data.startswith(JPEG_MAGIC) else "PNG or JPEG"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as opened:
                    if getattr(opened, "n_frames", 1) > 1:
                        raise ImageDecodeError(f"animated {kind} is not supported")
                    opened.load()
                    return Decoded(_to_array(ImageOps.exif_transpose(opened)))
        except ImageDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, bomb errors
            raise ImageDecodeError(f"corrupt or truncated {kind}: {short_reason(exc)}") from None


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
