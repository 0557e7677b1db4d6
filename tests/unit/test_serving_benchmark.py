"""benchmarks/serving.py's parts that run without servers: the hand-written FastAPI baseline in-process,
and the targets table computed from measured figures."""

from __future__ import annotations

import importlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from components.ml.models import load_model
from components.ml.transforms import preprocess
from tests import tiny_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
CLASS_NAMES = ("normal", "lesion")


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("serving"), importlib.import_module("serving_targets")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_fastapi_baseline_answers_what_the_network_computes(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    model_dir = tiny_model.save_tiny_model(tmp_path / "model", CLASS_NAMES)
    monkeypatch.setenv("MEDGATE_BASELINE_MODEL", str(model_dir))
    monkeypatch.setenv("MEDGATE_BASELINE_THREADS", "0")  # leave this process's thread count alone
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "fastapi_baseline", raising=False)
    baseline = importlib.import_module("fastapi_baseline")
    image = np.random.default_rng(1).uniform(0, 255, (16, 16)).astype(np.float32)
    upload = io.BytesIO()
    np.save(upload, image)

    with TestClient(baseline.app) as client:
        assert client.get("/readyz").status_code == 200
        resp = client.post("/predict", files={"image": ("a.npy", upload.getvalue(), "application/octet-stream")})
    assert resp.status_code == 200, resp.text
    network, spec = load_model(model_dir)
    with torch.inference_mode():
        expected = torch.softmax(network(torch.from_numpy(preprocess(image, spec.preprocessing)[None])), 1)[0]
    body = resp.json()
    assert [body["probabilities"][name] for name in CLASS_NAMES] == pytest.approx(expected.tolist(), abs=1e-5)
    assert body["label"] == CLASS_NAMES[int(expected.argmax())]


def _level(serving, route, concurrency, per_s, p50_ms, cpu_ms=2.0, errors=0):
    return serving.LevelResult(route=route, concurrency=concurrency, requests=int(per_s * 10) + errors,
                               errors=errors, seconds=10.0, p50_ms=p50_ms, p95_ms=p50_ms, p99_ms=p50_ms,
                               server_cpu_ms=cpu_ms)


def test_targets_are_ratios_of_the_same_run(bench_modules):
    serving, serving_targets = bench_modules
    raw = serving.RawResult(threads=1, callers=2, batch1_p50_ms=1.5, batch1_per_s=600,
                            per_batch={1: 500.0, 8: 1000.0, 32: 1100.0}, cpu_ms_per_image={1: 1.8, 8: 0.7, 32: 0.5})
    levels = [
        _level(serving, "bento", 1, 100, 9.0, cpu_ms=5.0), _level(serving, "bento", 32, 400, 80.0),
        _level(serving, "fastapi", 1, 20, 48.0, cpu_ms=4.0), _level(serving, "fastapi", 32, 180, 170.0),
        _level(serving, "fastapi-1w", 1, 120, 8.0, cpu_ms=3.5),  # the faster lone-client baseline counts
        _level(serving, "floor", 32, 450, 70.0, errors=3),
    ]
    wide = {"raw": {"best_per_s": 100.0, "batch1_p50_ms": 10.0, "cpu_ms_per_image": {"1": 11.0}},
            "service": [{"route": "bento", "images": 1, "concurrency": 1, "per_s": 50.0, "p50_ms": 16.0,
                         "server_cpu_ms": 12.5, "errors": 0},
                        {"route": "bento", "images": 1, "concurrency": 32, "per_s": 85.0, "p50_ms": 300.0,
                         "server_cpu_ms": 11.0, "errors": 0}]}

    rows = {(route, name): (value, goal, met)
            for route, name, value, _, goal, met in serving_targets.targets(raw, levels, None, wide)}

    assert rows[("bento", "req/s at c=32: medgate / FastAPI endpoint")] == (pytest.approx(400 / 180), 2.0, True)
    assert rows[("bento", "p50 at c=1: medgate - FastAPI endpoint (ms)")] == (pytest.approx(1.0), 2.0, True)
    assert rows[("bento", "server CPU-ms/request at c=1: medgate - FastAPI endpoint")][0] == pytest.approx(1.5)
    assert rows[("bento", "req/s at c=32: medgate / BentoML floor")][::2] == (pytest.approx(400 / 450), True)
    assert rows[("wide", "images/s at c=32 / raw best batch (ResNet-18 w64)")][::2] == (pytest.approx(0.85), True)
    assert rows[("wide", "p50 at c=1 - raw batch-1 p50 (ResNet-18 w64, ms)")] == (pytest.approx(6.0), 5.0, False)
    assert rows[("wide", "server CPU-ms/request at c=1 - raw batch-1 CPU-ms/image")][0] == pytest.approx(1.5)
    # CPU time per request at c=32: floor 2.0, medgate 2.0, the network 0.5 at its cheapest batch.
    assert rows[("bento", "req/s at c=32 / BentoML floor of a service costing the floor + the network")][0] == \
        pytest.approx(2.0 / 2.5)
    assert rows[("bento", "server CPU-ms/request at c=32: medgate - network - floor (its own cost over the floor)")][0] == \
        pytest.approx(-0.5)
    assert rows[("floor", "errors")] == (3, 0, False)
    assert rows[("bento", "errors")] == (0, 0, True)

