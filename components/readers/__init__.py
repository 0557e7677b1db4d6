"""Readers: one module per data format behind one interface (`base.Reader`), used by ingest and the service.

A reader claims files by suffix (`Reader.claims`) and by content (`Reader.accepts`, magic bytes) and
`read`s one file into a `Decoded`: the array in the stored layout plus the manifest columns the file
determines. A new format is a new module with a `Reader` subclass that declares itself in its class
statement (``class X(Reader, name=..., formats=..., suffixes=...)``), added to `READERS` below;
ingest and the service find it there, so neither changes.
"""

from __future__ import annotations

import numpy as np

from components.readers.audio import AudioReader
from components.readers.base import DecodeLimits, Decoded, ImageDecodeError, Reader, TooLarge, check_array
from components.readers.clips import ClipSpec, NotAClipModel
from components.readers.dicom import DicomReader
from components.readers.nifti import NiftiReader
from components.readers.npy import NpyReader
from components.readers.raster import RasterReader
from components.readers.video import VideoReader

__all__ = ["READERS", "ClipSpec", "DecodeLimits", "Decoded", "ImageDecodeError", "NotAClipModel", "Reader", "TooLarge",
           "decode", "decode_image", "reader_for_name"]

# Content is matched in this order; the first reader that accepts a file's bytes reads it.
READERS: tuple[Reader, ...] = (RasterReader(), NpyReader(), NiftiReader(), VideoReader(), DicomReader(), AudioReader())
# Readers that also take a `ClipSpec` (`read(..., clip=)`): clips, and DICOM for its cine loops.
_CLIP_READERS = (VideoReader, DicomReader)


def reader_for_name(name: str) -> Reader | None:
    """The reader whose suffixes claim a file called `name`, or None (not a file ingest reads)."""
    return next((r for r in READERS if r.claims(name)), None)


def decode(data: bytes, salt: str, limits: DecodeLimits | None, clip: ClipSpec | None = None) -> Decoded:
    """Decode a whole file by its content (never its suffix) through the reader that accepts it.

    Args:
        data: the file's bytes.
        salt: secret key of the pseudonyms in the returned columns.
        limits: the most the file may declare (`base.DecodeLimits`), checked before decoding; None
            only for files this platform made itself.
        clip: how a clip (video, DICOM cine) is sampled and stored (``kind="video"``); None: a clip
            is refused with `NotAClipModel`.

    Raises:
        TooLarge: the file declares more than `limits` allow (nothing was decoded).
        ImageDecodeError: empty or unrecognised content, or what the format's reader refuses; the
            array checks (`base.check_array`) apply to every image.
    """
    if not data:
        raise ImageDecodeError("empty file")
    reader = next((r for r in READERS if r.accepts(data)), None)
    if reader is None:
        formats = [r.formats for r in READERS]
        raise ImageDecodeError(f"unrecognised content: expected {', '.join(formats[:-1])} or {formats[-1]}")
    decoded = reader.read(data, salt, limits, clip=clip) if isinstance(reader, _CLIP_READERS) \
        else reader.read(data, salt, limits)
    if decoded.kind != "image":
        return decoded
    return Decoded(check_array(decoded.array), decoded.columns)


def decode_image(data: bytes, limits: DecodeLimits | None, salt: str = "") -> np.ndarray:
    """Decode an uploaded file's bytes (PNG, JPEG, DICOM, NIfTI or .npy) into the array ingest would store.

    Args:
        data: the whole file.
        limits: as for `decode`.
        salt: accepted for symmetry with ingest; only pixels are returned, so no header value needs
            pseudonymising here.

    Returns:
        2D grey (H, W), 2D colour (H, W, 3) uint8, or a 3D volume (D, H, W). DICOM gives float32 in
        modality units (Hounsfield units for CT); PNG/JPEG keep their integer dtype.

    Raises:
        TooLarge: the file declares more than `limits` allow.
        ImageDecodeError: empty body, unknown format, corrupt file, cine or burned-in DICOM, 4D
            NIfTI, NaN/infinite values, or an unusable shape.
    """
    return decode(data, salt, limits).array
