"""The medgate model service: one exact model version, the training preprocessing, adaptive batching.

Endpoints of `Classifier`:
- `POST /predict`: multipart field `image` (PNG, JPEG, DICOM, NIfTI or .npy; for a model of clips MP4,
  MOV, AVI or DICOM cine; for an audio model a WAV, FLAC or OGG recording, up to
  `serve.max_upload_seconds`, scored as the mean of its windows) →
  `{"label", "probabilities": {class: p}, "decision", "model_version"}`. Form field `windows=true`
  (audio models only) adds `"windows": [{"start_s", "end_s", "probabilities"}]`, one per window.
- `POST /predict_batch`: multipart field `images` (one or more files) → a list of the same, in order.
- `GET /metadata`: model tag, name and version, dataset version, class names, preprocessing, `prediction`
  (ensemble members, test-time flips, prior correction: how the probabilities are made), gate
  decision, and `model_card`: its links, or null when the model store entry holds no card.
- `GET /model_card` (HTML) and `GET /model_card.md` (Markdown): the card stored with the model; 404
  without one.
- BentoML's `/livez`, `/readyz` and `/metrics` (Prometheus); `/readyz` answers 200 only once every worker
  process of the server has loaded the model (`__is_ready__`, services.readiness). The workers share
  connections evenly (services.balance).

Over HTTP, `services.guard.UploadGuard` reads the two upload routes' requests, parses each form once in
memory and hands it to `Classifier.answer`: no upload is written to disk, and BentoML's own multipart
handling (temporary files, a pydantic model), which cost more CPU per request than the network, never runs.
Uploads are decoded and preprocessed with the training code (`components.ml.transforms.preprocess`),
then the network runs behind `services.batching.MicroBatcher`: concurrent requests of a worker share
forward passes, and a request that finds the network idle runs at once (on a CPU server, a short batch
runs on the event loop itself: `ServingSettings.inline_forward_s`). (BentoML's own batcher sits
behind an HTTP route; reaching it from `/predict` costs a JSON round trip of every image or a second
process, measured at 11.6 and 9.2 CPU-ms per request against 6.3 for this; see benchmarks/serving.py.)

Bad requests are answered 4xx with `{"error": "..."}`: 400 undecodable or missing upload, 401 without
the API key (when one is set), 413 over the upload limit or declaring a larger image than the limits
derived from the model's input (`services.inference.decode_limits`; checked before decoding), 415 not
multipart, 422 an input this model cannot take (dimensions, channels, a 2D image to a 3D model, a clip to an
image model, an image to an audio model), 429
more than `serve.max_concurrency` requests in flight in one worker. Messages name the problem, never a
DICOM header value or a file name. 503: more work queued than `max_latency_ms` allows, more upload
bytes held than `serve.max_buffered_bytes`, or no memory to decode now; retry later.

Memory: a worker holds at most `max_concurrency` requests, `max_buffered_bytes` of their bodies, and
decodes `decode_threads` uploads at once in threads (besides one small image on the event loop,
`INLINE_DECODE_BYTES`), each one image at a time (decoded, preprocessed, dropped)
and each within the decode limits.

API key: when MEDGATE_API_KEY is set where the server starts, every route but `/livez` and `/readyz`
needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.

The model is pinned by `services/model_ref.json`, written into the Bento by
`components.stages.package.build_bento` (see services.settings); where that file is absent (in-process tests, development) the
environment variable MEDGATE_MODEL_TAG names it. Either way it must be an exact "name:version".
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BadInput, BentoMLException, NotFound, UnprocessableEntity
from bentoml.validators import ContentType
from starlette.responses import JSONResponse, Response

from components.config import default_params
from components.documents.modelcard import HTML_FILE as CARD_HTML
from components.documents.modelcard import MARKDOWN_FILE as CARD_MARKDOWN
from services.balance import ConnectionShare, share_connections
from services.batching import MicroBatcher, Overloaded
from services.guard import ApiKeyGuard, Form, UploadGuard
from services.inference import (
    InputProblem,
    ModelCard,
    decode_limits,
    decode_recording,
    decode_upload,
    per_upload,
    prepare_input,
    prepare_recordings,
    read_upload,
    recording_spans,
    to_prediction,
    window_scores,
)
from services.lifetime import die_with_parent
from services.metrics import BATCH_SIZES
from services.origin import ALLOWED_HOSTS_ENV, OriginGuard, read_allowed_hosts
from services.readiness import WorkerRoll
from services.settings import API_KEY_ENV, MODEL_SHA256_ENV, PINNED_SETTINGS_FILE, UNTRACED, ServingSettings, settings_for_model

if TYPE_CHECKING:
    import torch

    from components.ml.models import ModelSpec

MODEL_TAG_ENV = "MEDGATE_MODEL_TAG"
MIN_API_KEY_LENGTH = 16
OPEN_PATHS = ("/livez", "/readyz")
CARD_ROUTES = {"/model_card": (CARD_HTML, "text/html"), "/model_card.md": (CARD_MARKDOWN, "text/markdown")}
# Image uploads up to this many bytes in one request are decoded on the event loop: a small PNG or DICOM
# decodes in tenths of a millisecond, less than a round trip through a worker thread, and the decode
# limits bound even a small file's decoded size (benchmarks/serving.py measures the effect).
INLINE_DECODE_BYTES = 256 * 1024
logger = logging.getLogger("medgate.service")


def resolve_settings() -> ServingSettings:
    """The pinned model and serving settings: `model_ref.json` beside this file, else MEDGATE_MODEL_TAG.

    Reads only the local BentoML model store (for the input shape, in the environment case); never
    downloads.
    """
    ref = PINNED_SETTINGS_FILE
    env_tag = os.environ.get(MODEL_TAG_ENV)
    if ref.is_file():
        settings = ServingSettings.read(ref)
        if env_tag and env_tag != settings.model_tag:
            logger.warning(
                "%s=%s ignored: this Bento is pinned to %s", MODEL_TAG_ENV, env_tag, settings.model_tag
            )
        return settings
    if not env_tag:
        raise RuntimeError(f"no model pinned: {ref} is absent and {MODEL_TAG_ENV} is not set")
    params = default_params()  # outside a Bento, so beside the project: its params.yaml serves
    return settings_for_model(env_tag, params.package, params.serve)


def _warm_up_decoders() -> None:
    """Decode a tiny .npy and PNG, as uploads are decoded."""
    from PIL import Image

    from components.readers import decode_image

    npy, png = io.BytesIO(), io.BytesIO()
    np.save(npy, np.zeros((4, 4), np.uint8))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png, format="PNG")
    for upload in (npy, png):
        decode_image(upload.getvalue(), None)  # made here: no limit needed


def read_api_key() -> str:
    """MEDGATE_API_KEY where the server starts ("" when unset); a short key is refused (RuntimeError)."""
    key = os.environ.get(API_KEY_ENV, "")
    if key and len(key) < MIN_API_KEY_LENGTH:
        raise RuntimeError(
            f"{API_KEY_ENV} is set but shorter than {MIN_API_KEY_LENGTH} characters: use a long random key"
        )
    return key


SETTINGS = resolve_settings()
PARENT = os.getppid()  # in a worker, its server's supervising process, read as early as can be
API_KEY = read_api_key()
WORKERS = SETTINGS.workers()
_ERRORS = {HTTPStatus.BAD_REQUEST: BadInput, HTTPStatus.UNPROCESSABLE_ENTITY: UnprocessableEntity}
# Declared, so that BentoML does not derive the media type from a JSON schema it builds for every answer.
Json = Annotated[dict[str, Any], ContentType("application/json")]
JsonList = Annotated[list[dict[str, Any]], ContentType("application/json")]


# BentoML divides max_concurrency among the workers: each takes `serve.max_concurrency` requests at once
# and answers more with 429 before reading them.
@bentoml.service(
    name="medgate_classifier",
    workers=WORKERS,
    traffic={"timeout": 60, "max_concurrency": SETTINGS.max_concurrency * WORKERS},
    **({} if SETTINGS.tracing else {"tracing": UNTRACED}),
)
class Classifier:
    """Classifies medical images with one exact model version from the BentoML model store."""

    bento_model = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        index = bentoml.server_context.worker_index  # None outside `bentoml serve`: the only worker
        if index is not None:  # a worker of `bentoml serve`: it ends with the server, even while loading
            die_with_parent(PARENT)  # (services.lifetime)
        # Here, not at import: `bentoml serve` imports this module in its supervising process as well.
        import torch

        from components.ml.runtime import folded_for_inference, resolve_device

        stored = self.bento_model
        metadata = dict(stored.info.metadata)
        model_dir = Path(stored.path)
        network, spec = _load_verified(model_dir, metadata, str(stored.tag))
        self.device = resolve_device(SETTINGS.device, "package.device")
        if SETTINGS.torch_threads > 0:
            # One intra-op thread by default: spinning OpenMP threads starve the event loop on small CPUs.
            torch.set_num_threads(SETTINGS.torch_threads)
        # BatchNorm folded into the convolutions: the same answers (checked on a random batch) for less CPU per
        # image (the default network: 8-12% at batch sizes 1-64, one thread).
        example = torch.randn((2, *SETTINGS.input_shape), generator=torch.Generator().manual_seed(0)).to(self.device)
        self.network, folded = folded_for_inference(network.to(self.device), example)
        self.max_batch_size = SETTINGS.batch_limit(self.device.type)
        self.batcher = MicroBatcher(self._forward, self.max_batch_size, SETTINGS.max_latency_ms, BATCH_SIZES.observe,
                                    SETTINGS.inline_forward_s(self.device.type))
        # Warm up before /readyz answers, not in the first requests: a decode of each in-memory-made format
        # (their libraries initialise lazily, and the first requests arrive on several threads at once), one forward pass.
        _warm_up_decoders()
        self._forward(np.zeros((1, *SETTINGS.input_shape), np.float32))
        self.card = ModelCard(
            model_tag=str(stored.tag),
            class_names=spec.class_names,
            preprocessing=spec.preprocessing,
            operating_threshold=spec.operating_threshold,
        )
        self.max_upload_bytes = SETTINGS.max_upload_bytes
        self.max_batch_images = SETTINGS.max_batch_images
        self.limits = decode_limits(SETTINGS.input_shape, SETTINGS.decode_side_multiple, SETTINGS.max_decoded_bytes,
                                    SETTINGS.max_upload_seconds if self.card.audio or self.card.preprocessing.clip else 0.0)
        # Uploads this worker decodes at once: with the limits, what bounds its decoded memory.
        self.decoding = anyio.CapacityLimiter(SETTINGS.decode_threads)
        self.model_cards = {
            route: (path.read_bytes(), media_type)
            for route, (name, media_type) in CARD_ROUTES.items()
            if (path := model_dir / name).is_file()
        }
        self.description = _describe(stored.tag, metadata, SETTINGS, set(self.model_cards), self.device.type, folded)
        # What is loaded by now (torch, MONAI, BentoML, the network: some 370,000 objects) lives as long as the
        # worker. Frozen, the collector no longer walks it: a full collection over it took 0.37-0.43 s of a
        # worker's CPU, and of every request waiting on it, about once per 1,500 requests at concurrency 32.
        gc.collect()
        gc.freeze()
        self.workers = WorkerRoll(WORKERS if index is not None else 1)
        self.workers.enter(index if index is not None else os.getpid())
        if index is not None and WORKERS > 1:  # before the workers start listening (services.balance)
            share_connections(ConnectionShare(self.workers.folder, index))
        logger.info("serving model %s (sha256 %s verified) on %s", stored.tag, metadata["sha256"][:12], self.device)

    def __is_ready__(self) -> bool:
        """`/readyz`: 200 only once every worker of this server has loaded the model (services.readiness)."""
        return self.workers.complete()

    # Over HTTP, services.guard answers the two upload routes through `answer`, from the body it has read and
    # parsed in memory. These two methods describe the routes (BentoML's OpenAPI document and clients) and
    # serve in-process calls; both ways run `_predict`.
    @bentoml.api
    async def predict(self, image: Path, windows: bool = False) -> Json:
        """Classify one image: form field `image`, a PNG, JPEG, DICOM, NIfTI or .npy file (or a clip or a
        recording, by the model). `windows` (an audio model): also each window's span and probabilities."""
        try:
            (prediction,) = await self._predict([read_upload(image, self.max_upload_bytes)], ["image"], windows)
        except InputProblem as problem:
            raise _as_bentoml(problem) from None
        except Overloaded as exc:
            return _busy(exc)  # type: ignore[return-value]  # BentoML sends a Response as it is
        return prediction

    @bentoml.api
    async def predict_batch(self, images: list[Path], windows: bool = False) -> JsonList:
        """Classify several images: form field `images`, repeated; answers in upload order."""
        try:
            names = self._batch_names(len(images))
            uploads = [read_upload(path, self.max_upload_bytes, name) for path, name in zip(images, names)]
            return await self._predict(uploads, names, windows)
        except InputProblem as problem:
            raise _as_bentoml(problem) from None
        except Overloaded as exc:
            return _busy(exc)  # type: ignore[return-value]

    async def answer(self, route: str, form: Form) -> Response:
        """The HTTP response of an upload route (`/predict` or `/predict_batch`) to its form, as services.guard
        read it: the guard has checked that the route's file field holds one or more files."""
        try:
            windows = _form_flag(form, "windows")
            if route == "/predict":
                if len(form["image"]) > 1:
                    raise InputProblem(f"form field 'image' holds {len(form['image'])} files; /predict takes one "
                                       "(send several to /predict_batch, in field 'images')")
                (prediction,) = await self._predict([form["image"][0].data], ["image"], windows)
                return JSONResponse(prediction)
            names = self._batch_names(len(form["images"]))
            return JSONResponse(await self._predict([part.data for part in form["images"]], names, windows))
        except InputProblem as problem:
            return JSONResponse({"error": str(problem)}, status_code=problem.status)
        except Overloaded as exc:
            return _busy(exc)
        except Exception:  # noqa: BLE001 - answered as BentoML answers an API's failure: logged, not shown
            logger.exception("%s failed", route)
            return JSONResponse({"error": "internal error: see the server's log"},
                                status_code=HTTPStatus.INTERNAL_SERVER_ERROR)

    def _batch_names(self, count: int) -> list[str]:
        """How the uploads of a `/predict_batch` request are named in messages; refuses none or too many."""
        if not count:
            raise InputProblem("no images: send one or more files in form field 'images'")
        if count > self.max_batch_images:
            raise InputProblem(f"{count} images in one request; the limit is {self.max_batch_images}")
        return [f"images[{i}]" for i in range(count)]

    @bentoml.api(route="/metadata")
    def metadata(self) -> Json:
        """The served model: tag, dataset version, class names, preprocessing, gate decision, card links."""
        return self.description

    @bentoml.api(route="/model_card")
    def model_card(self) -> str:
        """The model card stored with the model, as a self-contained HTML page."""
        return self._card("/model_card")  # type: ignore[return-value]  # BentoML sends a Response as it is

    @bentoml.api(route="/model_card.md")
    def model_card_markdown(self) -> str:
        """The model card stored with the model, as Markdown."""
        return self._card("/model_card.md")  # type: ignore[return-value]

    def _card(self, route: str) -> Response:
        if route not in self.model_cards:
            name = CARD_ROUTES[route][0]
            raise NotFound(f"model {self.card.model_tag} has no {name} in its model store entry")
        body, media_type = self.model_cards[route]
        return Response(body, media_type=media_type)

    async def _predict(self, uploads: list[bytes], names: list[str], windows: bool = False) -> list[dict[str, Any]]:
        """The predictions of the uploads (files' bytes), in order. Raises InputProblem (a bad upload, named by
        `names`) and Overloaded (no room to queue or decode now)."""
        if windows and not self.card.audio:
            raise InputProblem("windows: only an audio model scores windows; this one takes whole inputs",
                               HTTPStatus.UNPROCESSABLE_ENTITY)
        if self._decodes_inline(uploads):
            batch, counts, spans = self._prepare(uploads, names)
        else:
            batch, counts, spans = await anyio.to_thread.run_sync(self._prepare, uploads, names, limiter=self.decoding)
        step = self.max_batch_size
        if len(batch) <= step:  # one call: no task to gather
            rows = await self.batcher(batch)
        else:
            rows = np.concatenate(await asyncio.gather(*(self.batcher(batch[i : i + step])
                                                         for i in range(0, len(batch), step))))
        predictions = [to_prediction(row, self.card) for row in per_upload(rows, counts)]
        if windows:
            for prediction, end, n, span in zip(predictions, np.cumsum(counts), counts, spans, strict=True):
                prediction["windows"] = window_scores(rows[end - n:end], span, self.card)
        return predictions

    def _decodes_inline(self, uploads: list[bytes]) -> bool:
        """Whether these uploads are decoded on the event loop: small images (not clips or recordings),
        whose decode and preprocessing take less CPU than handing them to a thread and back."""
        if self.card.audio or self.card.preprocessing.clip:
            return False
        return sum(len(upload) for upload in uploads) <= INLINE_DECODE_BYTES

    def _prepare(self, uploads: list[bytes], names: list[str]) -> tuple[np.ndarray, list[int], list[list[tuple[float, float]]]]:
        """The network's batch, how many of its rows each upload has (a recording: its windows) and, for
        recordings, each window's span in seconds. Each upload is decoded (an image also preprocessed) before
        the next, so one decoded image at a time is alive, never a whole batch."""
        for upload, name in zip(uploads, names, strict=True):
            if not upload:
                raise InputProblem(f"{name}: the upload is empty")
        try:
            if self.card.audio:
                recordings = [decode_recording(u, self.card, self.limits.max_seconds, n) for u, n in zip(uploads, names)]
                return (*prepare_recordings(recordings, self.card), recording_spans(recordings, self.card))
            return np.stack([prepare_input(decode_upload(u, self.card, self.limits, n), self.card, n)
                             for u, n in zip(uploads, names)]), [1] * len(uploads), []
        except MemoryError:
            raise Overloaded("not enough memory free to decode the upload now; retry later") from None

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K), in `class_names` order, of a batch preprocessed like training."""
        import torch

        with torch.inference_mode():
            logits = self.network(torch.from_numpy(batch).to(self.device, non_blocking=True))
            return torch.softmax(logits.float(), dim=1).cpu().numpy()


if API_KEY:
    # Added first, so outermost: a request without the key is refused before its body is read.
    Classifier.add_asgi_middleware(ApiKeyGuard, api_key=API_KEY, open_paths=OPEN_PATHS)  # type: ignore[attr-defined]
if (ALLOWED_HOSTS := read_allowed_hosts(os.environ.get(ALLOWED_HOSTS_ENV))) is not None:
    # `medgate serve`'s backends on loopback ports: no web page reaches them by DNS rebinding or a cross-site form.
    Classifier.add_asgi_middleware(OriginGuard, allowed=ALLOWED_HOSTS)  # type: ignore[attr-defined]
Classifier.add_asgi_middleware(  # type: ignore[attr-defined]  # bentoml.service returns a Service
    UploadGuard,
    answer=lambda route, form: bentoml.get_current_service().answer(route, form),
    max_bytes=SETTINGS.max_upload_bytes,
    max_buffered_bytes=SETTINGS.max_buffered_bytes,
    file_fields={"/predict": "image", "/predict_batch": "images"},
    get_routes=("/metadata", *CARD_ROUTES),
)


def _as_bentoml(problem: InputProblem) -> BentoMLException:
    """A bad upload as the BentoML error of its status, for in-process callers of the API methods."""
    return _ERRORS.get(problem.status, BentoMLException)(str(problem), error_code=problem.status)


def _form_flag(form: Form, field: str) -> bool:
    """A true/false text field of a form (absent: false); 400 for anything else."""
    parts = form.get(field)
    text = parts[0].data.decode("latin-1").strip().lower() if parts else "false"
    if text not in _FLAGS:
        raise InputProblem(f"{field}: expected true or false")
    return _FLAGS[text]


_FLAGS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _busy(exc: Overloaded) -> JSONResponse:
    # Answered here: BentoML replaces the message of any 5xx it raises with a generic one.
    return JSONResponse({"error": str(exc)}, status_code=HTTPStatus.SERVICE_UNAVAILABLE, headers={"Retry-After": "1"})


def _load_verified(model_dir: Path, metadata: dict[str, Any], tag: str) -> tuple[torch.nn.Module, ModelSpec]:
    """Load the network after checking its files against the hashes recorded when it was stored, and
    model.pt against the registry's artifact_sha256 where the server was given it (MODEL_SHA256_ENV).

    Refuses (RuntimeError) a model without a recorded sha256, one the registry records otherwise, or
    whose model.pt or model.json changed.
    """
    from components.ml.models import SPEC_FILE, WEIGHTS_FILE, file_sha256, load_model

    expected = metadata.get("sha256")
    if not isinstance(expected, str) or not expected:
        raise RuntimeError(f"model {tag} has no sha256 in its metadata: refusing to serve it")
    registered = os.environ.get(MODEL_SHA256_ENV)
    if registered and registered != expected:
        raise RuntimeError(
            f"model {tag}: the registry records sha256 {registered[:12]}… for its {WEIGHTS_FILE}, the model store "
            f"{expected[:12]}…: refusing to serve it"
        )
    spec_expected = metadata.get("spec_sha256")
    if spec_expected and file_sha256(model_dir / SPEC_FILE) != spec_expected:
        raise RuntimeError(
            f"model {tag}: {SPEC_FILE} does not match its recorded sha256: refusing to serve it"
        )
    try:
        network, spec = load_model(model_dir, expected_sha256=expected)
    except ValueError as exc:
        raise RuntimeError(
            f"model {tag}: {WEIGHTS_FILE} failed verification, refusing to serve it: {exc}"
        ) from None
    return network, spec


# How the model makes its probabilities (components.ml.models.ModelSpec): shown under /metadata's `prediction`.
_PREDICTION = ("members", "tta_flip_axes", "prior_correction", "temperature", "class_prior", "trained_prior")


def _describe(
    tag: bentoml.Tag, metadata: dict[str, Any], settings: ServingSettings, card_routes: set[str], device_type: str,
    batchnorm_folded: bool,
) -> dict[str, Any]:
    """The /metadata answer. `model_name`/`model_version` are the registry's when the packaging flow
    recorded them, else the model store's; `model_tag` is always the exact store tag."""
    shown = {
        "model_name",
        "model_version",
        "dataset_version",
        "class_names",
        "operating_threshold",
        "preprocessing",
        "input_shape",
        "family",
        "model",
        "sha256",
        "spec_sha256",
        "gate",
        "gate_checks",
        *_PREDICTION,
    }
    class_names = list(metadata["class_names"])
    card_links = {"html": "/model_card", "markdown": "/model_card.md"}
    description = {
        "model_tag": str(tag),
        "model_name": metadata.get("model_name", tag.name),
        "model_version": metadata.get("model_version", tag.version),
        "dataset_version": metadata.get("dataset_version"),
        "class_names": class_names,
        "positive_class": class_names[1] if len(class_names) == 2 else None,
        "operating_threshold": metadata.get("operating_threshold"),
        "preprocessing": metadata.get("preprocessing"),
        "input_shape": metadata.get("input_shape"),
        "family": metadata.get("family"),
        "architecture": metadata.get("model"),
        "prediction": {k: metadata.get(k) for k in _PREDICTION},
        "sha256": metadata.get("sha256"),
        "gate": metadata.get("gate", metadata.get("gate_checks")),
        "model_card": {kind: route for kind, route in card_links.items() if route in card_routes} or None,
        "serving": {
            "device": device_type,
            "batchnorm_folded": batchnorm_folded,
            "max_batch_size": settings.batch_limit(device_type),
            "max_latency_ms": settings.max_latency_ms,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_batch_images": settings.max_batch_images,
            "api_workers": settings.workers(),
            "api_key_required": bool(API_KEY),
        },
        "extra": {k: v for k, v in metadata.items() if k not in shown},
    }
    return json.loads(json.dumps(description, default=str))
