"""Pure request handling for the model service: upload checks, decoding, batching, post-processing.

Nothing here imports BentoML, so each step is testable on its own. The training code (and with it
MONAI and PyTorch) is imported at first use: `bentoml serve` imports this module in its supervising
process too, which then starts seconds sooner. Problems with a request raise
`InputProblem`, whose `status` is the HTTP status the service answers with (always 4xx).
Messages name the problem and never contain pixel data or DICOM header values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from components.ml.audio import AudioPreprocessing
    from components.ml.transforms import Preprocessing

# Magic numbers of the 2D-only formats: a 3D model cannot take them, whatever their array shape.
_FLAT_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
_MAX_MESSAGE = 300
logger = logging.getLogger("medgate.service")


class InputProblem(ValueError):
    """A request the service refuses; `status` is the 4xx HTTP status to answer with."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelCard:
    """What the service needs to know about the model it serves, read from the model's metadata.

    `class_names` is the label order of the network's outputs; for two classes, `class_names[1]`
    is the positive class that `operating_threshold` applies to.
    """

    model_tag: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing | AudioPreprocessing
    operating_threshold: float

    @property
    def audio(self) -> bool:
        """Whether the model takes recordings (its preprocessing makes log-mel windows)."""
        return getattr(self.preprocessing, "kind", "") == "audio"

    @property
    def spatial_dims(self) -> int:
        return 0 if self.audio else len(self.preprocessing.spatial_size)


def read_upload(path: Path, max_bytes: int, name: str = "image") -> bytes:
    """The bytes of one uploaded file, refusing empty and oversized ones."""
    size = path.stat().st_size
    if size == 0:
        raise InputProblem(f"{name}: the upload is empty")
    if size > max_bytes:
        raise InputProblem(
            f"{name}: the upload is {size} bytes, over the limit of {max_bytes}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    return path.read_bytes()


def decode_upload(data: bytes, card: ModelCard, name: str = "image") -> np.ndarray:
    """Upload bytes (PNG, JPEG, DICOM or .npy) → the stored array form, checked against the model's dimensions.

    DICOM is decoded to Hounsfield units and de-identified in memory by `components.readers`; no header
    value reaches a message or a log here.
    """
    if card.spatial_dims == 3:
        for magic, kind in _FLAT_IMAGE_MAGIC.items():
            if data.startswith(magic):
                raise InputProblem(
                    f"{name}: a {kind} is a 2D image; this model takes 3D volumes (D, H, W)",
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                )
    from components.readers import ImageDecodeError, decode_image

    try:
        image = decode_image(data)
    except ImageDecodeError as exc:
        raise InputProblem(f"{name}: could not decode the upload: {_clip(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes fail in many ways (pydicom, Pillow's
        # DecompressionBombError, MemoryError on a forged size); each is the upload's fault, never a 5xx.
        # Their messages may quote file contents (e.g. a DICOM element): log and answer without them.
        logger.warning("%s: decoder raised %s", name, type(exc).__name__)
        raise InputProblem(f"{name}: could not decode the upload as PNG, JPEG, DICOM or .npy") from None
    return np.asarray(image)


def decode_recording(data: bytes, card: ModelCard, max_seconds: float, name: str = "image") -> np.ndarray:
    """Upload bytes (WAV, FLAC, OGG) → mono samples at the model's rate; an image is answered 422, a
    recording declaring more than `max_seconds` 413 (from its header, before decoding)."""
    from components.readers import DecodeLimits, ImageDecodeError, TooLarge, decode
    from components.readers.audio import AudioReader, at_rate

    if not AudioReader().accepts(data):
        raise InputProblem(f"{name}: this model takes recordings (WAV, FLAC or OGG), not images or other files",
                           HTTPStatus.UNPROCESSABLE_ENTITY)
    limits = DecodeLimits(max_bytes=2**31, max_side=2**31, max_frames=1, max_seconds=max_seconds)
    try:
        return at_rate(decode(data, "", limits), card.preprocessing.sample_rate).array  # type: ignore[union-attr]
    except TooLarge as exc:
        raise InputProblem(f"{name}: {_clip(str(exc))}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
    except ImageDecodeError as exc:
        raise InputProblem(f"{name}: could not decode the upload: {_clip(str(exc))}") from None


def prepare_recordings(recordings: Sequence[np.ndarray], card: ModelCard) -> tuple[np.ndarray, list[int]]:
    """Decoded recordings → their log-mel windows stacked (N, 1, n_mels, T), and each one's window count."""
    from components.ml.audio import preprocess_recording

    windows = [preprocess_recording(r, card.preprocessing) for r in recordings]  # type: ignore[arg-type]
    return np.concatenate(windows), [len(w) for w in windows]


def per_upload(probabilities: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Rows of window probabilities → one row per upload, the mean of its `counts` windows (images: 1 each)."""
    ends = np.cumsum(counts)
    return np.stack([probabilities[end - n:end].mean(axis=0) for n, end in zip(counts, ends, strict=True)])


def prepare_inputs(images: Sequence[np.ndarray], card: ModelCard, names: Sequence[str]) -> np.ndarray:
    """Decoded images → the network's float32 batch (N, C, *spatial), by the training preprocessing."""
    from components.ml.transforms import PreprocessError, preprocess

    batch = []
    for image, name in zip(images, names, strict=True):
        if image.dtype.kind not in "biuf":
            raise InputProblem(
                f"{name}: pixel type {image.dtype} is not numeric", HTTPStatus.UNPROCESSABLE_ENTITY
            )
        try:
            batch.append(preprocess(image, card.preprocessing))
        except PreprocessError as exc:
            raise InputProblem(f"{name}: {exc}", HTTPStatus.UNPROCESSABLE_ENTITY) from None
    return np.stack(batch)


def to_prediction(probabilities: np.ndarray, card: ModelCard) -> dict[str, Any]:
    """One row of class probabilities → the service's answer.

    `label` is the most probable class. `decision` applies the operating point chosen at evaluation:
    for two classes it is `class_names[1]` (positive) when p(class_names[1]) >= operating_threshold,
    else `class_names[0]`; for more classes it equals `label`.
    """
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(card.class_names):
        raise ValueError(f"{probs.shape[0]} probabilities for {len(card.class_names)} classes")
    label = card.class_names[int(np.argmax(probs))]
    if len(card.class_names) == 2:
        decision = card.class_names[1] if probs[1] >= card.operating_threshold else card.class_names[0]
    else:
        decision = label
    return {
        "label": label,
        "probabilities": {name: float(p) for name, p in zip(card.class_names, probs, strict=True)},
        "decision": decision,
        "model_version": card.model_tag,
    }


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
