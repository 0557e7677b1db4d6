"""Pure request handling for the model service: upload checks, decoding, batching, post-processing.

Nothing here imports BentoML, so each step is testable on its own. The training code (and with it
MONAI and PyTorch) is imported at first use: `bentoml serve` imports this module in its supervising
process too, which then starts seconds sooner. Problems with a request raise
`InputProblem`, whose `status` is the HTTP status the service answers with (always 4xx).
Messages name the problem and never contain pixel data or DICOM header values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from components.ml.audio import AudioPreprocessing
    from components.ml.transforms import Preprocessing
    from components.readers import DecodeLimits

# Magic numbers of the 2D-only formats: a 3D model cannot take them, whatever their array shape.
_FLAT_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
_NPY_MAGIC = b"\x93NUMPY"  # a stored array: a clip model takes its stored clip form (T, H, W) too
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
    """The bytes of one uploaded file, refusing an oversized one."""
    size = path.stat().st_size
    if size > max_bytes:
        raise InputProblem(
            f"{name}: the upload is {size} bytes, over the limit of {max_bytes}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    return path.read_bytes()


def decode_limits(input_shape: Sequence[int], side_multiple: int, max_decoded_bytes: int,
                  max_seconds: float = 0.0) -> DecodeLimits:
    """What one upload may declare, derived from the model's input shape (C, H, W) or (C, D, H, W).

    Preprocessing resizes every image to the input's size, so anything far larger only costs memory:
    each side (rows, columns) may be up to `side_multiple` times the input's larger in-plane side,
    the slices of a volume up to `side_multiple` times its depth (one for a 2D model), and the decoded
    array up to the input's float32 size scaled by `side_multiple` along both in-plane axes (a grey
    image at the largest side just fits), never more than `max_decoded_bytes`. `max_seconds`: how
    long a clip may last, for a model of clips (whose depth is its frames); 0 for a model of images.
    """
    from components.readers import DecodeLimits

    depth = input_shape[1] if len(input_shape) == 4 else 1
    max_bytes = min(max_decoded_bytes, side_multiple**2 * math.prod(input_shape) * 4)
    return DecodeLimits(max_bytes=max_bytes, max_side=side_multiple * max(input_shape[-2:]),
                        max_frames=side_multiple * depth, max_seconds=max_seconds)


def decode_upload(data: bytes, card: ModelCard, limits: DecodeLimits, name: str = "image") -> np.ndarray:
    """Upload bytes (PNG, JPEG, DICOM, NIfTI, .npy; for a model of clips MP4, MOV, AVI or DICOM cine) →
    the stored array form, checked against the model's dimensions.

    The size the file declares is checked against `limits` before anything is decoded. DICOM is
    decoded to Hounsfield units and de-identified in memory by `components.readers`; no header value
    reaches a message or a log here. A clip is decoded in bounded memory and sampled as the model's
    training clips were (`Preprocessing.clip`); a clip to an image model and an image to a clip model
    are answered 422. A clip model also takes a .npy of the stored clip form (T, H, W).

    Raises:
        InputProblem: 413 over `limits` (naming the limit), 422 a 2D format to a 3D model or a clip to an image model (and back), 400 anything
            the decoders refuse or fail on.
        MemoryError: the server has no memory for an image within the limits now (a 503 for the caller).
    """
    takes = "clips (video or DICOM cine)" if card.preprocessing.clip else "3D volumes (D, H, W)"
    if card.spatial_dims == 3:
        for magic, kind in _FLAT_IMAGE_MAGIC.items():
            if data.startswith(magic):
                raise InputProblem(f"{name}: a {kind} is a 2D image; this model takes {takes}",
                                   HTTPStatus.UNPROCESSABLE_ENTITY)
    from components.readers import ClipSpec, ImageDecodeError, NotAClipModel, TooLarge, decode

    clip = ClipSpec.from_dict(card.preprocessing.clip) if card.preprocessing.clip else None
    try:
        decoded = decode(data, "", limits, clip)
    except TooLarge as exc:
        raise InputProblem(f"{name}: {_clip(str(exc))} for this model", HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
    except NotAClipModel:
        raise InputProblem(f"{name}: the upload is a clip (video or DICOM cine); this model takes images",
                           HTTPStatus.UNPROCESSABLE_ENTITY) from None
    except ImageDecodeError as exc:
        raise InputProblem(f"{name}: could not decode the upload: {_clip(str(exc))}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes fail in many ways (pydicom, Pillow);
        # each is the upload's fault, never a 5xx. Their messages may quote file contents (e.g. a DICOM
        # element): log and answer without them.
        logger.warning("%s: decoder raised %s", name, type(exc).__name__)
        raise InputProblem(f"{name}: could not decode the upload as PNG, JPEG, DICOM, NIfTI or .npy") from None
    if clip is not None and decoded.kind != "video" and not data.startswith(_NPY_MAGIC):
        raise InputProblem(f"{name}: the upload is a still image or volume; this model takes {takes}",
                           HTTPStatus.UNPROCESSABLE_ENTITY)
    return np.asarray(decoded.array)


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


def recording_spans(recordings: Sequence[np.ndarray], card: ModelCard) -> list[list[tuple[float, float]]]:
    """Each recording's windows as (start, end) seconds, in the order `prepare_recordings` stacks them."""
    from components.ml.audio import window_spans

    return [window_spans(len(r), card.preprocessing) for r in recordings]  # type: ignore[arg-type]


def window_scores(rows: np.ndarray, spans: Sequence[tuple[float, float]], card: ModelCard) -> list[dict[str, Any]]:
    """One recording's windows (`spans`) with their class probabilities (`rows`, in `class_names` order)."""
    return [{"start_s": round(start, 3), "end_s": round(end, 3),
             "probabilities": {name: float(p) for name, p in zip(card.class_names, row, strict=True)}}
            for (start, end), row in zip(spans, rows, strict=True)]


def per_upload(probabilities: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Rows of window probabilities → one row per upload, the mean of its `counts` windows (images: 1 each)."""
    if all(n == 1 for n in counts):  # one row each (images): nothing to average
        return probabilities
    ends = np.cumsum(counts)
    return np.stack([probabilities[end - n:end].mean(axis=0) for n, end in zip(counts, ends, strict=True)])


def prepare_input(image: np.ndarray, card: ModelCard, name: str = "image") -> np.ndarray:
    """One decoded image → the network's float32 input (C, *spatial), by the training preprocessing."""
    from components.ml.transforms import PreprocessError, preprocess

    if image.dtype.kind not in "biuf":
        raise InputProblem(f"{name}: pixel type {image.dtype} is not numeric", HTTPStatus.UNPROCESSABLE_ENTITY)
    try:
        return preprocess(image, card.preprocessing)
    except PreprocessError as exc:
        raise InputProblem(f"{name}: {exc}", HTTPStatus.UNPROCESSABLE_ENTITY) from None


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
