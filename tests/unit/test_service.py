"""The model service in-process: a tiny model saved to the session's BentoML store, served by `Classifier`.

The session's BENTOML_HOME is a temporary folder (tests/conftest.py). The service module reads its
pinned tag and API key at import, so each fixture imports it afresh with its environment.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import struct
import sys
import threading
import time
import tracemalloc
import zlib
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
import torch

from components.documents.modelcard import HTML_FILE, MARKDOWN_FILE
from components.ml.models import load_model
from components.ml.transforms import Preprocessing, preprocess
from tests import tiny_model
from tests.images import FORGED, dicom_bytes, grey_image, jpeg_bytes, npy_bytes, png_bytes

CLASS_NAMES = ("normal", "lesion")
THRESHOLD = 0.3
API_KEY = "unit-test-key-0123456789"
CARD = {HTML_FILE: "<html><body>tiny card</body></html>", MARKDOWN_FILE: "# tiny card\n"}
SERVICE_MODULES = ("services.service", "services.inference", "services.batching", "services.guard")


def save_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    return tiny_model.save_tiny_model(out_dir, CLASS_NAMES, seed)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def import_service(mp: pytest.MonkeyPatch, tag: str, api_key: str | None = None):
    """`services.service` imported afresh, pinned to `tag`, with MEDGATE_API_KEY set or unset."""
    mp.setenv("MEDGATE_MODEL_TAG", tag)
    if api_key is None:
        mp.delenv("MEDGATE_API_KEY", raising=False)
    else:
        mp.setenv("MEDGATE_API_KEY", api_key)
    for name in SERVICE_MODULES:
        mp.delitem(sys.modules, name, raising=False)
    return importlib.import_module("services.service")


@pytest.fixture(scope="module")
def stored_model(tmp_path_factory, bentoml_home):
    """A tiny model with a model card in the store: {"tag", "sha256", "model_dir"}."""
    from components.stages.package import save_to_model_store

    model_dir = save_tiny_model(tmp_path_factory.mktemp("model"))
    metadata = {
        "dataset_version": "ds-123",
        "operating_threshold": THRESHOLD,
        "gate": {"promote": True, "checks": [{"metric": "auc", "passed": True}]},
    }
    tag, sha256 = save_to_model_store(model_dir, "tiny-service", metadata, files=CARD)
    return {"tag": tag, "sha256": sha256, "model_dir": model_dir}


@pytest.fixture(scope="module")
def service_module(stored_model):
    """`services.service` pinned by MEDGATE_MODEL_TAG to the tiny model, no API key."""
    with pytest.MonkeyPatch.context() as mp:
        module = import_service(mp, stored_model["tag"])
        module.test_info = stored_model
        yield module
        for name in SERVICE_MODULES:
            sys.modules.pop(name, None)


def make_classifier(module):
    """A `Classifier` instance; the thread count it sets for a server is undone for the tests after it."""
    threads = torch.get_num_threads()
    try:
        return module.Classifier()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def svc(service_module):
    return make_classifier(service_module)


def offline_probabilities(model_dir: Path, image: np.ndarray) -> np.ndarray:
    """What evaluation computes for one stored image: the same preprocessing and network, no service."""
    network, spec = load_model(model_dir)
    x = torch.from_numpy(preprocess(image, spec.preprocessing)[np.newaxis])
    with torch.inference_mode():
        return torch.softmax(network(x), dim=1).numpy()[0]


def predict(svc, path: Path) -> dict:
    return asyncio.run(svc.predict(path))


def test_save_to_model_store_records_hash_and_spec(service_module):
    import bentoml

    info = service_module.test_info
    name, version = info["tag"].split(":")
    assert name == "tiny-service" and version and version != "latest"
    meta = bentoml.models.get(info["tag"]).info.metadata
    assert meta["sha256"] == info["sha256"]
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["preprocessing"]["spatial_size"] == [16, 16]
    assert meta["dataset_version"] == "ds-123"
    # The evaluated operating point replaces model.json's default, in the stored model.json too.
    assert meta["operating_threshold"] == THRESHOLD
    stored_spec = json.loads(Path(bentoml.models.get(info["tag"]).path_of("model.json")).read_text())
    assert stored_spec["operating_threshold"] == THRESHOLD


def test_predict_png_matches_offline_inference(svc, service_module, tmp_path):
    image = grey_image()
    answer = predict(svc, write(tmp_path / "a.png", png_bytes(image)))
    assert set(answer) == {"label", "probabilities", "decision", "model_version"}
    assert answer["model_version"] == service_module.test_info["tag"]
    assert list(answer["probabilities"]) == list(CLASS_NAMES)
    expected = offline_probabilities(service_module.test_info["model_dir"], image)
    np.testing.assert_allclose(list(answer["probabilities"].values()), expected, atol=1e-6)
    assert answer["label"] == CLASS_NAMES[int(np.argmax(expected))]
    assert answer["decision"] == (CLASS_NAMES[1] if expected[1] >= THRESHOLD else CLASS_NAMES[0])


def test_predict_npy_equals_png_of_same_pixels(svc, tmp_path):
    image = grey_image(seed=1)
    from_png = predict(svc, write(tmp_path / "b.png", png_bytes(image)))
    from_npy = predict(svc, write(tmp_path / "b.npy", npy_bytes(image)))
    assert from_npy == from_png


def test_predict_jpeg(svc, tmp_path):
    answer = predict(svc, write(tmp_path / "c.jpg", jpeg_bytes(grey_image(seed=2))))
    assert answer["label"] in CLASS_NAMES
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_dicom_is_classified_and_its_header_never_surfaces(svc, tmp_path, caplog):
    from bentoml.exceptions import BentoMLException

    caplog.set_level("DEBUG")
    name = "Doe^Jane"
    ct = (np.random.default_rng(4).integers(0, 2000, (20, 20))).astype(np.int16)
    answer = predict(svc, write(tmp_path / "ct.dcm", dicom_bytes(ct, name)))
    assert answer["label"] in CLASS_NAMES
    rgb = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(BentoMLException) as err:
        predict(svc, write(tmp_path / "rgb.dcm", dicom_bytes(rgb, name)))
    assert 400 <= err.value.error_code < 500
    for text in (str(err.value), caplog.text):
        assert "Doe" not in text and "MRN-55501" not in text


def test_predict_batch_answers_in_order(svc, tmp_path):
    paths = [write(tmp_path / f"{i}.npy", npy_bytes(grey_image(seed=i))) for i in range(3)]
    answers = asyncio.run(svc.predict_batch(paths))
    assert len(answers) == 3
    for path, answer in zip(paths, answers, strict=True):
        single = predict(svc, path)
        assert answer["label"] == single["label"]
        np.testing.assert_allclose(
            list(answer["probabilities"].values()), list(single["probabilities"].values()), atol=1e-6
        )


def test_metadata_describes_the_pinned_model(svc, service_module):
    meta = svc.metadata()
    assert meta["model_tag"] == service_module.test_info["tag"]
    assert meta["model_name"] == "tiny-service"
    assert meta["model_version"] == service_module.test_info["tag"].split(":")[1]
    assert meta["dataset_version"] == "ds-123"
    assert meta["class_names"] == list(CLASS_NAMES) and meta["positive_class"] == "lesion"
    assert meta["operating_threshold"] == THRESHOLD
    assert meta["preprocessing"] == {"spatial_size": [16, 16], "channels": 1, "lower": 0.0, "upper": 255.0}
    assert meta["gate"]["checks"][0]["metric"] == "auc"
    assert meta["sha256"] == service_module.test_info["sha256"]
    assert meta["model_card"] == {"html": "/model_card", "markdown": "/model_card.md"}
    assert meta["serving"]["api_key_required"] is False
    on_gpu = torch.cuda.is_available()  # package.device "auto"
    assert meta["serving"]["device"] == ("cuda" if on_gpu else "cpu")
    assert meta["serving"]["max_batch_size"] == (256 if on_gpu else 64)
    assert meta["serving"]["batchnorm_folded"] is True  # the test model is a ResNet
    json.dumps(meta)


def test_model_card_is_served_from_the_model_store_entry(svc):
    html, markdown = svc.model_card(), svc.model_card_markdown()
    assert html.media_type == "text/html" and html.body.decode() == CARD[HTML_FILE]
    assert markdown.media_type == "text/markdown" and markdown.body.decode() == CARD[MARKDOWN_FILE]


def test_a_model_without_a_card_says_so(service_module, tmp_path, monkeypatch):
    import bentoml
    from bentoml.exceptions import NotFound

    from components.stages.package import save_to_model_store

    tag, _ = save_to_model_store(save_tiny_model(tmp_path / "m", seed=2), "tiny-no-card", {})
    monkeypatch.setattr(service_module.Classifier.inner, "bento_model", bentoml.models.BentoModel(tag))
    svc = make_classifier(service_module)
    assert svc.metadata()["model_card"] is None
    with pytest.raises(NotFound, match="no model_card.html") as err:
        svc.model_card()
    assert err.value.error_code == HTTPStatus.NOT_FOUND


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit grey pixels and holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# (upload bytes, acceptable statuses, a word the message must contain). Where components.readers may
# itself refuse an array (400) before preprocessing would (422), either answer is right.
BAD, UNPROCESSABLE = HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY
BAD_UPLOADS = {
    "empty file": (b"", {BAD}, "empty"),
    "not an image": (b"%PDF-1.4 definitely not pixels", {BAD}, "decode"),
    "truncated png": (png_bytes(grey_image())[:40], {BAD}, "decode"),
    "pickled npy": (npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True), {BAD}, "decode"),
    "decompression bomb": (png_header_only(30_000, 30_000), {HTTPStatus.REQUEST_ENTITY_TOO_LARGE}, "limit of"),
    "rgb to grey model": (png_bytes(np.zeros((20, 20, 3), np.uint8)), {UNPROCESSABLE}, "channel"),
    "3d volume to 2d model": (npy_bytes(np.zeros((8, 16, 16), np.float32)), {UNPROCESSABLE}, "2D"),
    "1d array": (npy_bytes(np.zeros(16, np.float32)), {BAD, UNPROCESSABLE}, ""),
    "nan pixels": (npy_bytes(np.full((16, 16), np.nan, np.float32)), {BAD, UNPROCESSABLE}, "finite"),
    "text pixels": (npy_bytes(np.full((16, 16), "a")), {BAD, UNPROCESSABLE}, ""),
}


@pytest.mark.parametrize("data, statuses, word", BAD_UPLOADS.values(), ids=BAD_UPLOADS.keys())
def test_bad_upload_is_a_4xx_naming_the_problem(svc, tmp_path, data, statuses, word):
    from bentoml.exceptions import BentoMLException

    with pytest.raises(BentoMLException) as err:
        predict(svc, write(tmp_path / "upload", data))
    assert err.value.error_code in statuses
    assert str(err.value).startswith("image: ") and word.lower() in str(err.value).lower()


def test_upload_over_the_limit_is_413(svc, tmp_path, monkeypatch):
    from bentoml.exceptions import BentoMLException

    monkeypatch.setattr(svc, "max_upload_bytes", 100)
    with pytest.raises(BentoMLException) as err:
        predict(svc, write(tmp_path / "big.npy", npy_bytes(grey_image())))
    assert err.value.error_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "limit" in str(err.value)


def test_decode_limits_are_a_multiple_of_the_model_input():
    from components.readers import DecodeLimits
    from services.inference import decode_limits

    # 32x the side of a 64x64 grey input; bytes: a float32 image of that side.
    assert decode_limits((1, 64, 64), 32, 2**28) == DecodeLimits(16 * 2**20, 2048, 32, 0.0)
    volume = decode_limits((1, 28, 28, 28), 32, 2**28)
    assert (volume.max_side, volume.max_frames, volume.max_bytes) == (896, 896, 32**2 * 28**3 * 4)
    assert decode_limits((1, 64, 128, 128), 32, 2**28).max_bytes == 2**28  # never over the ceiling


@pytest.mark.parametrize("kind", FORGED)
def test_a_forged_upload_is_413_naming_the_limit(svc, tmp_path, kind):
    from bentoml.exceptions import BentoMLException

    with pytest.raises(BentoMLException) as err:
        predict(svc, write(tmp_path / "upload", FORGED[kind]()))
    assert err.value.error_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert f"exceeds the limit of {16 * 32} per side for this model" in str(err.value)  # 32x the 16-px input


def test_window_scores_are_refused_for_an_image_model(svc, tmp_path):
    from bentoml.exceptions import BentoMLException

    with pytest.raises(BentoMLException, match="only an audio model scores windows") as err:
        asyncio.run(svc.predict(write(tmp_path / "x.png", png_bytes(grey_image())), windows=True))
    assert err.value.error_code == HTTPStatus.UNPROCESSABLE_ENTITY


def test_a_memory_error_while_decoding_is_503_not_500(svc, tmp_path, monkeypatch):
    """A decoder that finds no memory for an image within the limits (numpy's MemoryError) must not become a 500."""
    from components.readers.npy import NpyReader

    def read(self, data, salt, limits):
        raise MemoryError("Unable to allocate 7.28 TiB")

    monkeypatch.setattr(NpyReader, "read", read)
    answer = predict(svc, write(tmp_path / "image.npy", npy_bytes(grey_image())))
    assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE and answer.headers["retry-after"] == "1"
    assert "memory" in json.loads(answer.body)["error"]


def test_a_npy_declaring_more_data_than_it_holds_is_400_before_allocating(svc, tmp_path, monkeypatch):
    from components.readers import DecodeLimits

    monkeypatch.setattr(svc, "limits", DecodeLimits(10**14, 10**7, 10**7, 0.0))  # the forged header passes them
    from bentoml.exceptions import BentoMLException

    with pytest.raises(BentoMLException) as err:
        predict(svc, write(tmp_path / "huge.npy", FORGED["npy"]()))
    assert err.value.error_code == HTTPStatus.BAD_REQUEST and "0 bytes of data for" in str(err.value)


def test_a_batch_is_decoded_and_preprocessed_one_image_at_a_time(svc, tmp_path):
    uploads = [png_bytes(grey_image(seed=i, size=512)) for i in range(24)]
    names = [f"images[{i}]" for i in range(len(uploads))]

    def peak_bytes(n: int) -> int:
        tracemalloc.start()
        try:
            batch, counts, _ = svc._prepare(uploads[:n], names[:n])
            assert batch.shape == (n, 1, 16, 16) and counts == [1] * n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak_bytes(1)
    one, all_of_them = peak_bytes(1), peak_bytes(len(uploads))
    # 24 decoded 512x512 images alive at once would be 6 MiB more than one of them.
    assert all_of_them < 1.5 * one, (one, all_of_them)


def test_small_images_decode_on_the_event_loop_and_large_ones_in_a_thread(svc, service_module, tmp_path):
    small, large = png_bytes(grey_image()), b"\0" * (service_module.INLINE_DECODE_BYTES + 1)
    assert svc._decodes_inline([small]) and not svc._decodes_inline([large])
    assert not svc._decodes_inline([small] * (service_module.INLINE_DECODE_BYTES // len(small) + 1))
    assert predict(svc, write(tmp_path / "small.png", small))["label"] in svc.card.class_names


def test_each_worker_bounds_its_requests_and_decodes(svc, service_module):
    settings = service_module.SETTINGS
    traffic = service_module.Classifier.config["traffic"]
    # BentoML divides the service's max_concurrency among its workers.
    assert traffic["max_concurrency"] == settings.max_concurrency * service_module.WORKERS
    assert svc.decoding.total_tokens == settings.decode_threads


def test_what_a_worker_loads_is_frozen_out_of_the_garbage_collector(service_module):
    import gc

    gc.unfreeze()
    try:
        make_classifier(service_module)
        assert gc.get_freeze_count() > 10_000  # the imports and the network, never walked again
    finally:
        gc.unfreeze()


def test_ready_only_once_every_worker_has_loaded_the_model(service_module, tmp_path, monkeypatch):
    # A worker that answers /readyz before its siblings have loaded would take every connection opened at the
    # first 200 (measured: one of two workers served all of a benchmark's 32 connections).
    monkeypatch.setattr(service_module, "WORKERS", 2)
    monkeypatch.setattr("services.readiness.sibling_folder", lambda: tmp_path / "roll")
    monkeypatch.setattr(service_module.bentoml.server_context, "worker_index", 1)
    first = make_classifier(service_module)
    assert not first.__is_ready__()
    monkeypatch.setattr(service_module.bentoml.server_context, "worker_index", 2)
    second = make_classifier(service_module)
    assert first.__is_ready__() and second.__is_ready__()


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_guard_bounds_the_request_bytes_a_worker_holds():
    from starlette.responses import PlainTextResponse
    from starlette.testclient import TestClient

    from services.guard import UploadGuard

    async def app(scope, receive, send):
        raise AssertionError("the guard answers the upload routes itself")

    async def answer(route, form):
        return PlainTextResponse(f"{guard.buffered} {len(form['image'][0].data)}")

    guard = UploadGuard(app, max_bytes=10_000, max_buffered_bytes=5_000, file_fields={"/predict": "image"},
                        answer=answer)
    client = TestClient(guard)  # no lifespan: this app has none
    held = client.post("/predict", files={"image": ("a.npy", b"x" * 1_000)})
    buffered, upload = map(int, held.text.split())
    assert held.status_code == 200 and 1_000 < buffered < 1_500 and upload == 1_000  # the body, while it is served
    assert guard.buffered == 0
    refused = client.post("/predict", files={"image": ("a.npy", b"x" * 6_000)})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "limit is 5000" in refused.json()["error"] and guard.buffered == 0


def test_bad_image_in_a_batch_is_named_by_position(svc, tmp_path):
    from bentoml.exceptions import BentoMLException

    good = write(tmp_path / "good.npy", npy_bytes(grey_image()))
    bad = write(tmp_path / "bad.npy", npy_bytes(np.zeros((20, 20, 3), np.uint8)))
    with pytest.raises(BentoMLException) as err:
        asyncio.run(svc.predict_batch([good, bad]))
    assert err.value.error_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert "images[1]" in str(err.value)
    with pytest.raises(BentoMLException) as err:
        asyncio.run(svc.predict_batch([]))
    assert err.value.error_code == HTTPStatus.BAD_REQUEST


def test_2d_image_to_a_3d_model_is_refused_before_decoding():
    from services.inference import InputProblem, ModelCard, decode_limits, decode_upload

    card = ModelCard("m:1", CLASS_NAMES, Preprocessing((8, 16, 16), 1, -1000.0, 1000.0), 0.5)
    with pytest.raises(InputProblem, match="PNG is a 2D image") as err:
        decode_upload(png_bytes(grey_image()), card, decode_limits((1, 8, 16, 16), 32, 2**28))
    assert err.value.status == HTTPStatus.UNPROCESSABLE_ENTITY


@pytest.mark.parametrize(
    "probs, threshold, label, decision",
    [
        ([0.8, 0.2], 0.3, "normal", "normal"),
        ([0.65, 0.35], 0.3, "normal", "lesion"),  # below 0.5 but above the operating point
        ([0.3, 0.7], 0.9, "lesion", "normal"),
        ([0.5, 0.5], 0.5, "normal", "lesion"),  # p >= threshold is positive
    ],
)
def test_decision_applies_the_operating_threshold(probs, threshold, label, decision):
    from services.inference import ModelCard, to_prediction

    card = ModelCard("m:1", CLASS_NAMES, Preprocessing((16, 16), 1, 0.0, 255.0), threshold)
    answer = to_prediction(np.array(probs), card)
    assert (answer["label"], answer["decision"]) == (label, decision)


def test_multiclass_decision_is_the_label():
    from services.inference import ModelCard, to_prediction

    card = ModelCard("m:1", ("a", "b", "c"), Preprocessing((16, 16), 1, 0.0, 255.0), 0.5)
    assert to_prediction(np.array([0.2, 0.3, 0.5]), card)["decision"] == "c"


@pytest.mark.parametrize("tampered", ["model.pt", "model.json"])
def test_tampered_model_files_refuse_to_load(service_module, tmp_path, monkeypatch, tampered):
    import bentoml

    from components.stages.package import save_to_model_store

    tag, _ = save_to_model_store(save_tiny_model(tmp_path / "m", seed=1), "tiny-tampered", {})
    stored = Path(bentoml.models.get(tag).path_of(tampered))
    if tampered == "model.pt":
        state = torch.load(stored, weights_only=True)
        next(iter(state.values())).add_(1.0)
        torch.save(state, stored)
    else:
        stored.write_text(stored.read_text().replace('"lesion"', '"healthy"'))
    monkeypatch.setattr(service_module.Classifier.inner, "bento_model", bentoml.models.BentoModel(tag))
    with pytest.raises(RuntimeError, match="refusing"):
        make_classifier(service_module)


def test_a_model_store_entry_the_registry_records_otherwise_is_refused(service_module, stored_model, monkeypatch):
    """`medgate serve` gives each backend the registry's artifact_sha256: model.pt must have it, whatever
    the model store's own metadata says."""
    monkeypatch.setenv("MEDGATE_MODEL_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="registry records sha256 000000000000.*refusing"):
        make_classifier(service_module)
    monkeypatch.setenv("MEDGATE_MODEL_SHA256", stored_model["sha256"])
    assert make_classifier(service_module).card.model_tag == stored_model["tag"]


def test_concurrent_requests_share_forward_passes(svc, tmp_path):
    """Requests that arrive while the network is busy run together in the next forward pass."""
    paths = [write(tmp_path / f"{i}.npy", npy_bytes(grey_image(seed=i))) for i in range(12)]
    singles = [predict(svc, p) for p in paths]
    svc.batcher.batch_sizes.clear()

    async def together():
        return await asyncio.gather(*(svc.predict(p) for p in paths))

    answers = asyncio.run(together())
    assert max(svc.batcher.batch_sizes) > 1 and sum(svc.batcher.batch_sizes) == len(paths)
    for single, answer in zip(singles, answers, strict=True):
        assert answer["label"] == single["label"]
        np.testing.assert_allclose(
            list(answer["probabilities"].values()), list(single["probabilities"].values()), atol=1e-5
        )


class SlowDouble:
    """A stand-in network: doubles its input, holding the first call until released."""

    def __init__(self, first_call_s: float = 5.0, fail_on: float | None = None):
        self.calls: list[list[float]] = []
        self.release = threading.Event()
        self.first_call_s = first_call_s
        self.fail_on = fail_on

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch[:, 0].tolist())
        if len(self.calls) == 1:
            self.release.wait(self.first_call_s)
        if self.fail_on in batch[:, 0]:
            raise ValueError("bad batch")
        return batch * 2


def test_batcher_runs_an_idle_request_at_once_and_queued_ones_together():
    from services.batching import MicroBatcher

    fn = SlowDouble()

    async def main():
        batcher = MicroBatcher(fn, max_batch_size=4, max_latency_ms=10_000)
        first = asyncio.create_task(batcher(np.array([[1.0]])))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(batcher(np.array([[float(i)]]))) for i in range(2, 8)]
        await asyncio.sleep(0.05)
        fn.release.set()
        return await asyncio.gather(first, *queued)

    answers = asyncio.run(main())
    assert fn.calls == [[1.0], [2.0, 3.0, 4.0, 5.0], [6.0, 7.0]]
    assert [float(a[0, 0]) for a in answers] == [2.0 * i for i in range(1, 8)]


def test_batcher_keeps_clients_that_come_back_together_in_one_batch():
    """Closed-loop clients (each sends again when answered) come back a little apart: the batch waits for them.
    Leaving with the first one split them into two groups that alternated (1, 7, 1, 7, ...)."""
    from services.batching import MicroBatcher

    def network(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.03)
        return batch

    async def main():
        batcher = MicroBatcher(network, max_batch_size=64, max_latency_ms=10_000)

        async def client(i: int) -> None:
            for _ in range(10):
                await batcher(np.array([[float(i)]]))
                await asyncio.sleep(0.0002 * i)  # client i comes back 0.2 i ms after its answer

        await asyncio.gather(*(client(i) for i in range(8)))
        return list(batcher.batch_sizes), batcher.gathers

    sizes, gathers = asyncio.run(main())
    assert sum(sizes) == 80 and gathers > 0
    assert sizes.count(8) >= 8, sizes


def test_batcher_never_waits_for_a_lone_client():
    from services.batching import MicroBatcher

    def network(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.01)
        return batch

    async def main():
        batcher = MicroBatcher(network, max_batch_size=64, max_latency_ms=10_000)
        for i in range(10):
            await batcher(np.array([[float(i)]]))
        together = await asyncio.gather(*(batcher(np.array([[float(i)]])) for i in range(3)))  # one burst of 3...
        for i in range(3):  # ...then one client again: the first call waits at most one batch's time, once
            await batcher(np.array([[float(i)]]))
        return list(batcher.batch_sizes), batcher.gathers, len(together)

    sizes, gathers, burst = asyncio.run(main())
    assert burst == 3 and sizes == [1] * 10 + [3] + [1, 1, 1], sizes
    assert gathers == 1  # only the first call after the burst waited


def test_batcher_runs_short_batches_on_the_event_loop_and_long_ones_in_a_thread():
    from services.batching import MicroBatcher

    loop_thread, threads = threading.get_ident(), []

    def network(batch: np.ndarray) -> np.ndarray:
        threads.append((len(batch), threading.get_ident() == loop_thread))
        time.sleep(0.001 * len(batch))  # 1 ms a row
        return batch

    async def main():
        batcher = MicroBatcher(network, max_batch_size=64, max_latency_ms=10_000, inline_s=0.02)
        for _ in range(3):
            await batcher(np.zeros((1, 1)))
        await batcher(np.zeros((64, 1)))  # about 64 ms expected: over inline_s
        await batcher(np.zeros((1, 1)))

    asyncio.run(main())
    # The first call, with nothing learnt yet, in a thread; then short batches on the loop, the long one not.
    assert threads == [(1, False), (1, True), (1, True), (64, False), (1, True)]


def test_batcher_answers_an_inline_batchs_callers_before_running_the_next():
    from services.batching import MicroBatcher

    answered, seen = set(), []

    def network(batch: np.ndarray) -> np.ndarray:
        seen.append(sorted(answered))
        return batch

    async def main():
        batcher = MicroBatcher(network, max_batch_size=2, max_latency_ms=10_000, inline_s=1.0)
        await batcher(np.zeros((1, 1)))  # learns that a call is short
        answered.clear()

        async def client(i: int) -> None:
            await batcher(np.array([[float(i)]]))
            answered.add(i)

        await asyncio.gather(*(client(i) for i in range(4)))

    asyncio.run(main())
    assert seen[1:] == [[], [0, 1]]  # clients 0 and 1 had their answers before the batch of 2 and 3 ran


def test_inline_forward_only_where_no_cpu_is_free_beside_the_workers(service_module, monkeypatch):
    from dataclasses import replace

    from services.settings import INLINE_FORWARD_S

    monkeypatch.setattr("services.settings.os.sched_getaffinity", lambda pid: set(range(4)))
    settings = service_module.SETTINGS
    assert replace(settings, api_workers=0, torch_threads=1).inline_forward_s("cpu") == INLINE_FORWARD_S
    assert replace(settings, api_workers=2, torch_threads=2).inline_forward_s("cpu") == INLINE_FORWARD_S
    assert replace(settings, api_workers=1, torch_threads=0).inline_forward_s("cpu") == INLINE_FORWARD_S
    assert replace(settings, api_workers=2, torch_threads=1).inline_forward_s("cpu") == 0  # 2 CPUs free for the loops
    assert replace(settings, api_workers=0, torch_threads=1).inline_forward_s("cuda") == 0  # the loop runs beside the GPU


def test_batcher_fails_only_the_callers_of_a_failing_batch():
    from services.batching import MicroBatcher

    fn = SlowDouble(fail_on=3.0)

    async def main():
        batcher = MicroBatcher(fn, max_batch_size=2, max_latency_ms=10_000)
        tasks = [asyncio.create_task(batcher(np.array([[1.0]])))]
        await asyncio.sleep(0.05)
        tasks += [asyncio.create_task(batcher(np.array([[x]]))) for x in (2.0, 3.0, 4.0)]
        await asyncio.sleep(0.05)
        fn.release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, second, third, fourth = asyncio.run(main())
    assert fn.calls == [[1.0], [2.0, 3.0], [4.0]]
    assert isinstance(second, ValueError) and isinstance(third, ValueError)
    assert float(first[0, 0]) == 2.0 and float(fourth[0, 0]) == 8.0


def test_batcher_refuses_work_beyond_its_latency_budget():
    from services.batching import MicroBatcher, Overloaded

    release, calls = threading.Event(), []

    def slow(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            time.sleep(0.1)  # what the batcher learns a call costs
        else:
            release.wait(10)  # later calls hold the queue until the test has looked (a loaded CPU cannot hurry them)
        return batch

    async def main():
        batcher = MicroBatcher(slow, max_batch_size=1, max_latency_ms=150)
        await batcher(np.zeros((1, 1)))  # learns that a call takes about 100 ms
        running = asyncio.create_task(batcher(np.zeros((1, 1))))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher(np.zeros((1, 1))))  # waits one call: within budget
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="budget"):
            await batcher(np.zeros((1, 1)))  # two calls ahead: about 200 ms > 150 ms
        release.set()
        await asyncio.gather(running, queued)

    asyncio.run(main())


def test_an_overloaded_service_answers_503_with_its_reason(svc, tmp_path, monkeypatch):
    from services.batching import Overloaded

    async def busy(rows: np.ndarray) -> np.ndarray:
        raise Overloaded("server busy: about 2500 ms of queued work, over the 2000 ms budget; retry later")

    monkeypatch.setattr(svc, "batcher", busy)
    for answer in (
        predict(svc, write(tmp_path / "a.npy", npy_bytes(grey_image()))),
        asyncio.run(svc.predict_batch([tmp_path / "a.npy"])),
    ):
        assert answer.status_code == HTTPStatus.SERVICE_UNAVAILABLE and answer.headers["retry-after"] == "1"
        assert json.loads(answer.body)["error"].startswith("server busy")


@pytest.mark.parametrize("tag", ["tiny-service", "tiny-service:latest", ":abc"])
def test_only_exact_model_tags_are_accepted(tag):
    from services.settings import exact_model_tag

    with pytest.raises(ValueError, match="exact version"):
        exact_model_tag(tag)


@pytest.fixture(scope="module")
def asgi_app(service_module):
    # One app per process: a second one of the same service would register its Prometheus metrics again.
    return service_module.Classifier.to_asgi()


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
class TestHTTP:
    """The service's ASGI app in-process: what a client sees for malformed requests."""

    @pytest.fixture(scope="class")
    def client(self, asgi_app):
        from starlette.testclient import TestClient

        with TestClient(asgi_app) as client:
            yield client

    def test_predict_over_http(self, client):
        resp = client.post("/predict", files={"image": ("a.png", png_bytes(grey_image()), "image/png")})
        assert resp.status_code == 200, resp.text
        assert resp.json()["label"] in CLASS_NAMES

    def test_metadata_answers_get_and_post(self, client):
        assert client.get("/metadata").json()["class_names"] == list(CLASS_NAMES)
        assert client.post("/metadata").status_code == 200

    @pytest.mark.parametrize(
        "kwargs, status, words",
        [
            ({"json": {"image": "x"}}, 415, "multipart"),
            ({"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, "empty"),
            (
                {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}},
                400,
                "",
            ),
            ({"files": {"picture": ("a.png", b"123")}}, 400, "missing form field 'image'"),
            (
                {"data": {"image": "http://example.com/a.png"}, "files": {"x": ("x", b"1")}},
                400,
                "file upload",
            ),
            ({"files": {"image": ("a.png", b"garbage")}}, 400, "decode"),
            ({"files": {"image": ("v.npy", npy_bytes(np.zeros((8, 16, 16), np.float32)))}}, 422, "2D"),
        ],
        ids=["json", "empty", "malformed", "missing-field", "text-field", "garbage", "volume"],
    )
    def test_bad_request_is_a_4xx_json_error(self, client, kwargs, status, words):
        resp = client.post("/predict", **kwargs)
        assert resp.status_code == status
        body = resp.json()
        assert isinstance(body, dict) and words in body["error"]

    def test_body_over_the_limit_is_413(self, client, service_module):
        limit = service_module.SETTINGS.max_upload_bytes
        resp = client.post("/predict", files={"image": ("a.npy", b"\x93NUMPY" + b"0" * (limit + 1))})
        assert resp.status_code == 413 and "limit" in resp.json()["error"]

    def test_batch_over_http(self, client):
        files = [("images", (f"{i}.png", png_bytes(grey_image(seed=i)), "image/png")) for i in range(3)]
        resp = client.post("/predict_batch", files=files)
        assert resp.status_code == 200 and len(resp.json()) == 3


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
class TestApiKey:
    """MEDGATE_API_KEY set where the service starts: everything but the probes needs the key."""

    @pytest.fixture(scope="class")
    def client(self, service_module, asgi_app):
        """The service's app behind the guard as the service adds it when MEDGATE_API_KEY is set."""
        from starlette.testclient import TestClient

        from services.guard import ApiKeyGuard

        guarded = ApiKeyGuard(asgi_app, api_key=API_KEY, open_paths=service_module.OPEN_PATHS)
        with TestClient(guarded) as client:
            yield client

    def test_the_key_set_at_start_adds_the_guard_outermost(self, stored_model):
        with pytest.MonkeyPatch.context() as mp:
            module = import_service(mp, stored_model["tag"], api_key=API_KEY)
            first_cls, first_options = module.Classifier.middlewares[0]
            assert first_cls.__name__ == "ApiKeyGuard"
            assert first_options == {"api_key": API_KEY, "open_paths": ("/livez", "/readyz")}
            assert make_classifier(module).metadata()["serving"]["api_key_required"] is True
        for name in SERVICE_MODULES:
            sys.modules.pop(name, None)

    @pytest.mark.parametrize(
        "headers, status",
        [
            ({}, 401),
            ({"Authorization": "Bearer wrong-key-0123456789"}, 401),
            ({"Authorization": API_KEY}, 401),
            ({"X-API-Key": API_KEY[:-1]}, 401),
            ({"Authorization": f"Bearer {API_KEY}"}, 200),
            ({"authorization": f"bearer {API_KEY}"}, 200),
            ({"X-API-Key": API_KEY}, 200),
        ],
        ids=["none", "wrong", "no-scheme", "prefix", "bearer", "lowercase", "x-api-key"],
    )
    def test_requests_need_the_key(self, client, headers, status):
        files = {"image": ("a.png", png_bytes(grey_image()), "image/png")}
        resp = client.post("/predict", files=files, headers=headers)
        assert resp.status_code == status, resp.text
        assert client.get("/metadata", headers=headers).status_code == status
        assert client.get("/model_card", headers=headers).status_code == status
        if status == 401:
            assert "API key" in resp.json()["error"] and resp.headers["www-authenticate"].startswith("Bearer")

    def test_probes_stay_open(self, client):
        assert client.get("/livez").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 401

    def test_a_short_key_is_refused_at_start(self, stored_model):
        with pytest.MonkeyPatch.context() as mp, pytest.raises(RuntimeError, match="shorter than 16"):
            import_service(mp, stored_model["tag"], api_key="short")
        for name in SERVICE_MODULES:
            sys.modules.pop(name, None)


def test_serving_settings_round_trip_and_refuse_unservable_values():
    from dataclasses import replace

    from components.config import default_params
    from services.settings import ServingSettings, settings_for_model

    params = default_params()
    base = settings_for_model("m:1", params.package, params.serve, input_shape=(1, 16, 16))
    settings = replace(base, max_batch_size=8, max_latency_ms=50, device="cpu")
    assert ServingSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(ValueError, match="max_batch_size >= 2"):
        replace(base, max_batch_size=1)
    with pytest.raises(ValueError, match="gpu_max_batch_size >= 2"):
        replace(base, gpu_max_batch_size=0)
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        replace(base, device="tpu")
    with pytest.raises(ValueError, match="exact version"):
        replace(base, model_tag="m:latest")


def test_device_setting_picks_the_gpu_only_where_there_is_one():
    from components.ml.runtime import resolve_device

    assert resolve_device("cpu", "package.device").type == "cpu"
    assert resolve_device("auto", "package.device").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda", "package.device").type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="package.device is cuda but no CUDA device"):
            resolve_device("cuda", "package.device")


@pytest.mark.parametrize("tag, message", [("tiny-service", "exact version"), ("tiny-service:latest", "exact version"),
                                          ("absent:v1", "not in the")])
def test_build_refuses_a_loose_or_missing_model_before_building(stored_model, tag, message):
    """A loose tag is refused even where the store would resolve it to a version (the tiny model is there)."""
    from components.config import default_params
    from components.stages.package import build_bento
    from services.settings import settings_for_model

    with pytest.raises(ValueError, match=message):
        settings_for_model(tag, default_params().package, default_params().serve)
    with pytest.raises(ValueError, match=message):
        build_bento({"model_tag": tag, "input_shape": [1, 16, 16]}, {})


def test_an_ensemble_with_flips_is_served_as_evaluated(tmp_path, bentoml_home):
    """Two networks, test-time flips, a temperature and prior correction, read from the stored model: each member runs
    once per batch and the answers are the offline predictor's; a plain model is served bare."""
    import dataclasses

    import bentoml

    from components.ml.models import load_networks, save_model
    from components.stages.package import save_to_model_store

    nets, spec = zip(*(load_networks(save_tiny_model(tmp_path / f"m{seed}", seed)) for seed in (0, 1)))
    ensemble = dataclasses.replace(spec[0], members=2, class_prior=(0.7, 0.3), trained_prior=(0.5, 0.5))
    save_model([n[0] for n in nets], ensemble, tmp_path / "ensemble")
    prediction = {"tta_flip_axes": [-1], "prior_correction": True, "temperature": 0.8}
    tag, _ = save_to_model_store(tmp_path / "ensemble", "tiny-ensemble", {"prediction": prediction})
    with pytest.MonkeyPatch.context() as mp:
        svc = make_classifier(import_service(mp, tag))
        calls = []
        for member in svc.network.members.children():  # each member's first convolution: folded or not, it runs
            first = next(m for m in member.modules() if isinstance(m, torch.nn.Conv2d))
            first.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
        image = grey_image()
        answer = predict(svc, write(tmp_path / "a.png", png_bytes(image)))
        assert calls == [2, 2], "one forward per member, on the image and its flip"
        assert svc.metadata()["prediction"] == {**prediction, "members": 2, "class_prior": [0.7, 0.3], "trained_prior": [0.5, 0.5]}
    for name in SERVICE_MODULES:
        sys.modules.pop(name, None)
    expected = offline_probabilities(Path(bentoml.models.get(tag).path), image)
    np.testing.assert_allclose(list(answer["probabilities"].values()), expected, atol=1e-6)


def test_a_plain_model_is_served_as_the_bare_network(svc):
    assert not hasattr(svc.network, "members"), "one network, no flips, no correction: one forward as before"
