"""Readers: one module per data format behind one interface (`base.Reader`), used by ingest and the service.

A reader claims files by suffix (`Reader.claims`) and by content (`Reader.accepts`, magic bytes) and
`read`s one file into a `Decoded`: the array in the stored layout plus the manifest columns the file
determines. A new format (video) is a new module with a `Reader` subclass, added to `READERS`
below; ingest and the service find it there, so neither changes.
"""

from __future__ import annotations

import numpy as np

from components.readers.audio import AudioReader
from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, TooLarge, check_array
from components.readers.dicom import DicomReader
from components.readers.nifti import NiftiReader
from components.readers.npy import NpyReader
from components.readers.raster import RasterReader

__all__ = ["READERS", "DecodeLimits", "Decoded", "ImageDecodeError", "Reader", "TooLarge", "decode", "decode_image", "reader_for_name"]

# Content is matched in this order; the first reader that accepts a file's bytes reads it.
READERS: tuple[Reader, ...] = (RasterReader(), NpyReader(), NiftiReader(), DicomReader(), AudioReader())


def reader_for_name(name: str) -> Reader | None:
    """The reader whose suffixes claim a file called `name`, or None (not a file ingest reads)."""
    return next((r for r in READERS if r.claims(name)), None)


def decode(data: bytes, salt: str, limits: DecodeLimits | None = None) -> Decoded:
    """Decode a whole file by its content (never its suffix) through the reader that accepts it.

    Args:
        data: the file's bytes.
        salt: secret key of the pseudonyms in the returned columns.
        limits: the most the file may declare (`base.DecodeLimits`); None: no limit.

    Raises:
        ImageDecodeError: empty or unrecognised content, or what the format's reader refuses; the
            array checks (`base.check_array`) apply to every image.
    """
    if not data:
        raise ImageDecodeError("empty file")
    reader = next((r for r in READERS if r.accepts(data)), None)
    if reader is None:
        formats = [r.formats for r in READERS]
        raise ImageDecodeError(f"unrecognised content: expected {', '.join(formats[:-1])} or {formats[-1]}")
    decoded = reader.read(data, salt, limits)
    if decoded.kind != "image":
        return decoded
    return Decoded(check_array(decoded.array), decoded.columns)


def decode_image(data: bytes, salt: str = "") -> np.ndarray:
    """Decode an uploaded file's bytes (PNG, JPEG, DICOM, NIfTI or .npy) into the array ingest would store.

    Args:
        data: the whole file.
        salt: accepted for symmetry with ingest; only pixels are returned, so no header value needs
            pseudonymising here.

    Returns:
        2D grey (H, W), 2D colour (H, W, 3) uint8, or a 3D volume (D, H, W). DICOM gives float32 in
        modality units (Hounsfield units for CT); PNG/JPEG keep their integer dtype.

    Raises:
        ImageDecodeError: empty body, unknown format, corrupt file, cine or burned-in DICOM, 4D
            NIfTI, NaN/infinite values, or an unusable shape.
    """
    return decode(data, salt).array
