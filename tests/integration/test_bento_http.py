"""A real Bento: built offline once, served by `bentoml serve` on 127.0.0.1, spoken to over HTTP.

Uses the session's temporary BENTOML_HOME (tests/conftest.py); every server is stopped by its fixture.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from components.config import ModelConfig, PackageConfig, ServeConfig
from components.models import ModelSpec, build_model, save_model
from components.package import (
    MODEL_REF_FILE,
    build_bento,
    find_free_port,
    save_to_model_store,
    serve_in_background,
    smoke_test_bento,
    wait_until_ready,
)
from components.transforms import Preprocessing
from tests.conftest import PROJECT

CLASS_NAMES = ("benign", "malignant")

# TEMPORARY stand-in for components.ingest (PNG/JPEG/.npy only) while that module is being written;
# used only when the real module is absent, and only in this test's copies of the code.
INGEST_SHIM = """
import io
import numpy as np
from PIL import Image

class ImageDecodeError(ValueError):
    pass

def decode_image(data: bytes, salt: str = "") -> np.ndarray:
    if data.startswith(b"\\x93NUMPY"):
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise ImageDecodeError(f"not a readable .npy array: {exc}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img)
    except OSError:
        raise ImageDecodeError("not a PNG, JPEG, DICOM or .npy file") from None
"""
INGEST_PRESENT = importlib.util.find_spec("components.ingest") is not None


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def stored_image(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((24, 24)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, bentoml_home):
    """A tiny model in the store and a Bento built from it, with the build's wall time."""
    torch.manual_seed(0)
    spec = ModelSpec(
        model=ModelConfig(width=4),
        input_shape=(1, 16, 16),
        class_names=CLASS_NAMES,
        preprocessing=Preprocessing(spatial_size=(16, 16), channels=1, lower=0.0, upper=255.0),
    )
    model_dir = tmp_path_factory.mktemp("model")
    save_model(build_model(spec.model, spec.input_shape, 2), spec, model_dir)
    model_tag, _ = save_to_model_store(
        model_dir, "tiny-http", {"dataset_version": "ds-http", "operating_threshold": 0.4}
    )

    source_root = PROJECT
    if not INGEST_PRESENT:
        source_root = tmp_path_factory.mktemp("source")
        for package in ("services", "components"):
            shutil.copytree(
                PROJECT / package, source_root / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        (source_root / "components" / "ingest.py").write_text(INGEST_SHIM)
    started = time.perf_counter()
    bento_tag = build_bento(
        model_tag,
        PackageConfig(model_name="tiny-http-bento", max_batch_size=16, max_latency_ms=500),
        {"dataset_version": "ds-http"},
        serve_cfg=ServeConfig(max_upload_bytes=200_000),
        source_root=source_root,
    )
    return {"model_tag": model_tag, "bento_tag": bento_tag, "build_s": time.perf_counter() - started}


@pytest.fixture(scope="module")
def server(packaged):
    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with (
        tempfile.TemporaryFile("w+b") as log,
        serve_in_background(packaged["bento_tag"], port, log=log) as proc,
    ):
        problem = wait_until_ready(base, proc, timeout_s=90)
        if problem:
            log.seek(0)
            pytest.fail(f"{problem}\n{log.read().decode(errors='replace')[-3000:]}")
        with httpx.Client(base_url=base, timeout=30) as client:
            yield {"client": client, "proc": proc, "ready_s": time.perf_counter() - started, **packaged}
    assert proc.poll() is not None, "the server outlived its fixture"


@pytest.fixture(scope="module")
def in_process(packaged, tmp_path_factory):
    """The same service class, in this process, pinned by MEDGATE_MODEL_TAG to the same model."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGATE_MODEL_TAG", packaged["model_tag"])
        if not INGEST_PRESENT:
            mp.setitem(sys.modules, "components.ingest", _import_shim(tmp_path_factory.mktemp("shim")))
        for name in ("services.service", "services.inference"):
            mp.delitem(sys.modules, name, raising=False)
        threads = torch.get_num_threads()
        yield importlib.import_module("services.service").Classifier()
        torch.set_num_threads(threads)
        for name in ("services.service", "services.inference"):
            sys.modules.pop(name, None)


def _import_shim(folder: Path) -> types.ModuleType:
    path = folder / "ingest.py"
    path.write_text(INGEST_SHIM)
    spec = importlib.util.spec_from_file_location("components.ingest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def post_image(client: httpx.Client, data: bytes, name: str = "image.npy") -> httpx.Response:
    return client.post("/predict", files={"image": (name, data, "application/octet-stream")})


def test_bento_pins_the_exact_model_and_leaves_the_repo_alone(packaged):
    import bentoml

    bento = bentoml.bentos.get(packaged["bento_tag"])
    assert [str(m.tag) for m in bento.info.all_models] == [packaged["model_tag"]]
    ref = json.loads(Path(bento.path_of(f"src/services/{MODEL_REF_FILE}")).read_text())
    assert ref["model_tag"] == packaged["model_tag"] and ref["max_latency_ms"] == 500
    assert bento.info.labels["model_tag"] == packaged["model_tag"]
    assert Path(bento.path_of("src/components/transforms.py")).is_file()
    assert not (PROJECT / "services" / MODEL_REF_FILE).exists()


def test_http_prediction_equals_in_process(server, in_process, tmp_path):
    data = npy_bytes(stored_image(seed=3))
    resp = post_image(server["client"], data)
    assert resp.status_code == 200, resp.text
    served = resp.json()
    path = tmp_path / "same.npy"
    path.write_bytes(data)
    import asyncio

    local = asyncio.run(in_process.predict(path))
    assert served["label"] == local["label"] and served["decision"] == local["decision"]
    assert served["model_version"] == server["model_tag"]
    np.testing.assert_allclose(
        list(served["probabilities"].values()), list(local["probabilities"].values()), atol=1e-6
    )


def test_batch_and_metadata_over_http(server):
    client = server["client"]
    files = [("images", (f"{i}.npy", npy_bytes(stored_image(seed=i)))) for i in range(4)]
    resp = client.post("/predict_batch", files=files)
    assert resp.status_code == 200, resp.text
    assert [a["label"] in CLASS_NAMES for a in resp.json()] == [True] * 4
    meta = client.get("/metadata").json()
    assert meta["model_tag"] == server["model_tag"] and meta["dataset_version"] == "ds-http"
    assert meta["operating_threshold"] == 0.4


@pytest.mark.parametrize(
    "request_kwargs, status",
    [
        ({"json": {"image": "not a file"}}, 415),
        ({"files": {"image": ("x.png", b"this is not an image")}}, 400),
        ({"files": {"image": ("v.npy", npy_bytes(np.zeros((6, 16, 16), np.float32)))}}, 422),
        ({"files": {"image": ("big.npy", b"\x93NUMPY" + b"0" * 300_000)}}, 413),
    ],
    ids=["json", "undecodable", "volume-to-2d-model", "too-big"],
)
def test_malformed_request_gets_a_4xx_and_the_server_lives_on(server, request_kwargs, status):
    client = server["client"]
    resp = client.post("/predict", **request_kwargs)
    assert resp.status_code == status
    assert resp.json()["error"]
    assert client.get("/readyz").status_code == 200
    assert post_image(client, npy_bytes(stored_image(seed=0))).status_code == 200
    assert server["proc"].poll() is None


def test_timings(server, capsys):
    client, data = server["client"], npy_bytes(stored_image(seed=5))
    latencies = []
    for _ in range(50):
        started = time.perf_counter()
        assert post_image(client, data).status_code == 200
        latencies.append(time.perf_counter() - started)
    p50_ms = statistics.median(latencies) * 1000
    with capsys.disabled():
        print(
            f"\nbuild {server['build_s']:.1f} s, ready {server['ready_s']:.1f} s, p50 of 50 sequential predictions {p50_ms:.1f} ms"
        )
    assert p50_ms < 1000


def test_smoke_test_passes_on_matching_golden_and_fails_on_tampered(packaged, in_process, tmp_path):
    import asyncio

    golden = []
    for seed in range(3):
        path = tmp_path / f"golden-{seed}.npy"
        path.write_bytes(npy_bytes(stored_image(seed=seed)))
        answer = asyncio.run(in_process.predict(path))
        golden.append((path, [answer["probabilities"][c] for c in CLASS_NAMES]))

    check = smoke_test_bento(packaged["bento_tag"], golden, tolerance=1e-4)
    assert check["passed"], check
    assert check["metric"] == "serving_parity" and check["comparison"] == "<=" and check["value"] <= 1e-4

    tampered = [(path, [p + 0.05, q - 0.05]) for path, (p, q) in golden]
    check = smoke_test_bento(packaged["bento_tag"], tampered, tolerance=1e-4)
    assert not check["passed"] and check["value"] == pytest.approx(0.05, abs=1e-3)
    assert "disagree" in check["detail"]


def test_smoke_test_reports_a_bento_that_cannot_start(bentoml_home):
    check = smoke_test_bento("no-such-bento:v1", [(Path("x.npy"), [0.5, 0.5])], tolerance=1e-4, timeout_s=30)
    assert not check["passed"] and check["value"] is None and "did not become ready" in check["detail"]
