"""A real Bento, built offline, served by `medgate serve` on 127.0.0.1 from a real registry, over HTTP.

The session server (tests/integration/bento_fixtures.py) needs an API key; its client sends it.
The reload test promotes a second Bento and rolls back while requests are in flight.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Self

import httpx
import numpy as np
import pytest
import torch

from components.data.artifacts import MODEL_REF_FILE
from components.stages.package import bento_sources
from services.smoke import check_golden, smoke_test_bento
from services.supervisor import BENTO_HEADER
from tests.conftest import PROJECT, wait_gone
from tests.images import FORGED, npy_bytes
from tests.integration.bento_fixtures import (
    API_KEY,
    CARD_HTML,
    CARD_MARKDOWN,
    CLASS_NAMES,
    MODEL_NAME,
    descendants,
    package_tiny_model,
    stored_image,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def in_process(packaged):
    """The same service class, in this process, pinned by MEDGATE_MODEL_TAG to the same model."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDGATE_MODEL_TAG", packaged["model_tag"])
        mp.delenv("MEDGATE_API_KEY", raising=False)
        for name in ("services.service", "services.inference"):
            mp.delitem(sys.modules, name, raising=False)
        threads = torch.get_num_threads()
        svc = importlib.import_module("services.service").Classifier()
        torch.set_num_threads(threads)  # the server's thread count: undone for the tests after this one
        yield svc
        for name in ("services.service", "services.inference"):
            sys.modules.pop(name, None)


def post_image(client: httpx.Client, data: bytes, name: str = "image.npy") -> httpx.Response:
    return client.post("/predict", files={"image": (name, data, "application/octet-stream")})


def test_bento_pins_the_exact_model_and_leaves_the_repo_alone(packaged):
    import bentoml

    bento = bentoml.bentos.get(packaged["bento_tag"])
    assert [str(m.tag) for m in bento.info.all_models] == [packaged["model_tag"]]
    ref = json.loads(Path(bento.path_of(f"src/services/{MODEL_REF_FILE}")).read_text())
    assert ref["model_tag"] == packaged["model_tag"] and ref["max_latency_ms"] == 500
    assert bento.info.labels["model_tag"] == packaged["model_tag"]
    assert not (PROJECT / "services" / MODEL_REF_FILE).exists()


def test_bento_ships_only_the_modules_the_service_imports(packaged):
    import bentoml

    src = Path(bentoml.bentos.get(packaged["bento_tag"]).path_of("src"))
    shipped = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert shipped == {*bento_sources(PROJECT), f"services/{MODEL_REF_FILE}", "bentofile.yaml"}
    assert {"services/service.py", "services/settings.py", "components/ml/transforms.py", "components/ml/models.py"} <= shipped
    # Training, the other stages, the supervisor and the flows are not the service's: they stay out.
    assert not {"components/stages/train.py", "components/stages/package.py", "services/supervisor.py"} & shipped
    assert not any(p.startswith(("flows/", "cli/", "registry/")) for p in shipped)


def test_http_prediction_equals_in_process(served, in_process, tmp_path):
    data = npy_bytes(stored_image(seed=3))
    resp = post_image(served["client"], data)
    assert resp.status_code == 200, resp.text
    assert resp.headers[BENTO_HEADER] == served["bento_tag"]
    answer = resp.json()
    path = tmp_path / "same.npy"
    path.write_bytes(data)
    local = asyncio.run(in_process.predict(path))
    assert answer["label"] == local["label"] and answer["decision"] == local["decision"]
    assert answer["model_version"] == served["model_tag"]
    np.testing.assert_allclose(
        list(answer["probabilities"].values()), list(local["probabilities"].values()), atol=1e-6
    )


def test_requests_make_no_tracing_spans_unless_asked(served):
    # BentoML's tracing middleware names each request's span in this header; serve.tracing is false by default.
    resp = post_image(served["client"], npy_bytes(stored_image(seed=4)))
    assert resp.status_code == 200, resp.text
    assert "x-bentoml-request-id" not in resp.headers


def test_metrics_count_the_requests_and_the_batchers_forward_passes(served):
    assert post_image(served["client"], npy_bytes(stored_image(seed=5))).status_code == 200
    metrics = served["client"].get("/metrics")
    assert metrics.status_code == 200
    counts = [float(line.split()[-1]) for line in metrics.text.splitlines() if line.startswith("medgate_batch_size_count")]
    assert counts and sum(counts) >= 1, metrics.text[:2000]
    # BentoML's own request metrics sit outside the guard that answers /predict: they count it too.
    answered = [float(line.split()[-1]) for line in metrics.text.splitlines()
                if line.startswith("bentoml_service_request_total{") and 'endpoint="/predict"' in line
                and 'http_response_code="200"' in line]
    assert answered and sum(answered) >= 1, metrics.text[:2000]


def test_batch_metadata_and_model_card_over_http(served):
    client = served["client"]
    files = [("images", (f"{i}.npy", npy_bytes(stored_image(seed=i)))) for i in range(4)]
    resp = client.post("/predict_batch", files=files)
    assert resp.status_code == 200, resp.text
    assert [a["label"] in CLASS_NAMES for a in resp.json()] == [True] * 4
    meta = client.get("/metadata").json()
    assert meta["model_tag"] == served["model_tag"] and meta["dataset_version"] == "ds-http"
    assert meta["operating_threshold"] == 0.4 and meta["serving"]["api_key_required"] is True
    assert meta["model_card"] == {"html": "/model_card", "markdown": "/model_card.md"}
    html = client.get(meta["model_card"]["html"])
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.text == CARD_HTML
    markdown = client.get(meta["model_card"]["markdown"])
    assert markdown.headers["content-type"].startswith("text/markdown") and markdown.text == CARD_MARKDOWN


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        ({"Authorization": "Bearer not-the-key-0123456789"}, 401),
        ({"Authorization": f"Basic {API_KEY}"}, 401),
        ({"X-API-Key": API_KEY}, 200),
        ({"Authorization": f"Bearer {API_KEY}"}, 200),
    ],
    ids=["none", "wrong", "not-bearer", "x-api-key", "bearer"],
)
def test_api_key_is_required_except_for_the_probes(served, headers, status):
    with httpx.Client(base_url=served["base_url"], timeout=30, headers=headers) as client:
        resp = post_image(client, npy_bytes(stored_image(seed=1)))
        assert resp.status_code == status, resp.text
        assert client.get("/metadata").status_code == status
        if status == 401:
            assert "API key" in resp.json()["error"] and resp.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/livez").status_code == 200 and client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    "request_kwargs, status",
    [
        ({"json": {"image": "not a file"}}, 415),
        ({"files": {"image": ("x.png", b"this is not an image")}}, 400),
        ({"files": {"image": ("v.npy", npy_bytes(np.zeros((6, 16, 16), np.float32)))}}, 422),
        ({"files": {"image": ("big.npy", b"\x93NUMPY" + b"0" * 300_000)}}, 413),
        ({"files": {"picture": ("a.npy", b"123")}}, 400),
        ({"files": {"image": ("a.npy", b"")}}, 400),
        ({"files": [("image", ("a.npy", npy_bytes(stored_image(seed=0)))), ("image", ("b.npy", b"x"))]}, 400),
        ({"files": {"image": ("a.npy", npy_bytes(stored_image(seed=0)))}, "data": {"windows": "maybe"}}, 400),
        ({"files": {"image": ("a.npy", npy_bytes(stored_image(seed=0)))}, "data": {"windows": "true"}}, 422),
    ],
    ids=["json", "undecodable", "volume-to-2d-model", "too-big", "missing-field", "empty-file", "two-files",
         "windows-not-a-flag", "windows-to-an-image-model"],
)
def test_malformed_request_gets_a_4xx_and_the_server_lives_on(served, request_kwargs, status):
    client = served["client"]
    resp = client.post("/predict", **request_kwargs)
    assert resp.status_code == status
    assert resp.json()["error"]
    assert client.get("/readyz").status_code == 200
    assert post_image(client, npy_bytes(stored_image(seed=0))).status_code == 200
    assert served["proc"].poll() is None


def test_uploads_never_touch_the_servers_disk(served):
    """The guard reads and parses uploads in memory: BentoML's own handling wrote each to a request folder
    in the server's temporary directory (TMPDIR, set by the fixture)."""
    client = served["client"]
    image = npy_bytes(stored_image(seed=0))
    assert post_image(client, image).status_code == 200
    batch = client.post("/predict_batch", files=[("images", ("a.npy", image)), ("images", ("b.npy", image))])
    assert batch.status_code == 200 and len(batch.json()) == 2
    assert not list(served["tmpdir"].glob("bentoml-request-*"))


@pytest.mark.parametrize("kind", FORGED)
def test_an_upload_declaring_a_huge_image_is_413_naming_the_limit(served, kind):
    """Small files declaring 20000x20000 (DICOM), 9000x9000 (PNG), 8000x8000 (.nii.gz), 10^6x10^6 (.npy):
    refused before decoding, by the limit derived from the model's 16-px input (32x: 512 per side)."""
    client = served["client"]
    resp = post_image(client, FORGED[kind](), name=f"forged-{kind}")
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"].startswith("image: declared size") and "limit of 512 per side" in resp.json()["error"]
    assert post_image(client, npy_bytes(stored_image(seed=0))).status_code == 200


def test_golden_check_passes_on_matching_answers_and_fails_on_tampered(served, in_process, tmp_path):
    golden = []
    for seed in range(3):
        path = tmp_path / f"golden-{seed}.npy"
        path.write_bytes(npy_bytes(stored_image(seed=seed)))
        answer = asyncio.run(in_process.predict(path))
        golden.append((path, [answer["probabilities"][c] for c in CLASS_NAMES]))

    check = check_golden(served["client"], golden, tolerance=1e-4)
    assert check["passed"], check
    assert check["metric"] == "serving_parity" and check["comparison"] == "<=" and check["value"] <= 1e-4

    tampered = [(path, [p + 0.05, q - 0.05]) for path, (p, q) in golden]
    check = check_golden(served["client"], tampered, tolerance=1e-4)
    assert not check["passed"] and check["value"] == pytest.approx(0.05, abs=1e-3)
    assert "disagree" in check["detail"]


def test_smoke_test_starts_its_own_server_without_the_operators_api_key(packaged, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGATE_API_KEY", API_KEY)  # an operator's shell: the check's own server ignores it
    path = tmp_path / "golden.npy"
    path.write_bytes(npy_bytes(stored_image(seed=7)))
    # The registered hash of model.pt goes with it (the flow passes the registry's artifact_sha256).
    check = smoke_test_bento(packaged["bento_tag"], [(path, [0.5, 0.5])], tolerance=0.5, model_sha256=packaged["sha256"])
    assert check["passed"], check


def test_smoke_test_reports_a_bento_that_cannot_start(bentoml_home):
    check = smoke_test_bento("no-such-bento:v1", [(Path("x.npy"), [0.5, 0.5])], tolerance=1e-4, timeout_s=30)
    assert not check["passed"] and check["value"] is None and "did not become ready" in check["detail"]


def test_deploy_containerize_without_an_engine_prints_the_command_and_the_image(served):
    env = {**os.environ, "MEDGATE_DATABASE_URL": f"sqlite:///{served['workspace'] / 'registry.db'}", "COLUMNS": "250"}
    medgate = Path(sys.executable).with_name("medgate")
    # An engine name that cannot be installed here: the outcome does not depend on this machine's docker.
    out = subprocess.run(
        [str(medgate), "deploy", "--containerize", "--backend", "no-such-engine", "--workspace", str(served["workspace"])],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 3, out.stdout + out.stderr
    bento = served["bento_tag"]
    assert f"bentoml containerize {bento} --backend no-such-engine --image-tag {bento}" in out.stdout
    assert f"the image will be tagged {bento}" in out.stdout and "no-such-engine is not installed" in out.stdout


class Load:
    """Clients posting predictions in a loop until stopped; counts answers by status and Bento."""

    def __init__(self, base_url: str, clients: int = 4):
        self.base_url = base_url
        self.seen: Counter[tuple[int, str]] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, seed: int) -> None:
        data = npy_bytes(stored_image(seed=seed))
        with httpx.Client(base_url=self.base_url, timeout=60, headers={"X-API-Key": API_KEY}) as client:
            while not self._stop.is_set():
                try:
                    resp = post_image(client, data)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.seen[(resp.status_code, resp.headers.get(BENTO_HEADER, "?"))] += 1
                if resp.status_code != 200:
                    self.failures.append(f"HTTP {resp.status_code}: {resp.text[:200]}")

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def wait_for_bento(client: httpx.Client, bento_tag: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/livez").headers.get(BENTO_HEADER) == bento_tag:
            return
        time.sleep(0.5)
    pytest.fail(f"still not serving {bento_tag} after {timeout_s} s")


def test_promotion_and_rollback_reload_without_dropping_requests(served, tmp_path_factory):
    """SIGHUP after a promotion, then after a rollback: each time the new Bento takes over under load,
    no request fails, and the old Bento is stopped."""
    from registry import repository as repo

    b = package_tiny_model(tmp_path_factory.mktemp("model-b"), seed=1, with_card=False)
    version_b = served["register"](b["model_tag"], b["bento_tag"], b["sha256"])
    client, proc = served["client"], served["proc"]
    a_backends = descendants(proc.pid)

    with Load(served["base_url"]) as load:
        time.sleep(1)
        with served["sessions"]() as s:
            repo.promote_version(s, version_b, actor="test", reason="better", expected_champion_id=repo.ANY_CHAMPION)
        proc.send_signal(signal.SIGHUP)
        wait_for_bento(client, b["bento_tag"])
        time.sleep(1)
    assert not load.failures, load.failures[:5]
    assert load.seen[(200, served["bento_tag"])] > 0 and load.seen[(200, b["bento_tag"])] > 0, load.seen
    assert client.get("/metadata").json()["model_tag"] == b["model_tag"]
    assert client.get("/model_card").status_code == 404  # B was stored without a card
    wait_gone(a_backends, "old Bento processes")

    b_backends = descendants(proc.pid)
    with Load(served["base_url"]) as load:
        time.sleep(1)
        with served["sessions"]() as s:
            repo.rollback(s, MODEL_NAME, actor="test", reason="incident drill")
        proc.send_signal(signal.SIGHUP)
        wait_for_bento(client, served["bento_tag"])
        time.sleep(1)
    assert not load.failures, load.failures[:5]
    assert load.seen[(200, served["bento_tag"])] > 0, load.seen
    assert client.get("/metadata").json()["model_tag"] == served["model_tag"]
    wait_gone(b_backends, "old Bento processes")
    log = served["log"]()
    assert f"reload: now serving {b['bento_tag']}" in log and f"stopped {b['bento_tag']}" in log


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "attacker.example"},
        {"Host": "attacker.example:3000"},
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["rebound-host", "rebound-host-port", "cross-origin", "opaque-origin", "cross-site"],
)
def test_browser_requests_from_other_sites_are_refused_by_proxy_and_backend(served, headers):
    """DNS rebinding (a foreign Host) and cross-site pages (Origin, Sec-Fetch-Site) get 403 from `medgate
    serve` and from its backend on its own loopback port; the key does not help them."""
    import re

    data = npy_bytes(stored_image(seed=2))
    backend_port = re.findall(r"(?:now serving \S+ on backend port|on http://\S+ \(backend port) (\d+)", served["log"]())[-1]
    for base in (served["base_url"], f"http://127.0.0.1:{backend_port}"):
        with httpx.Client(base_url=base, timeout=30, headers={"X-API-Key": API_KEY}, trust_env=False) as client:
            resp = client.post("/predict", files={"image": ("a.npy", data)}, headers=headers)
            assert resp.status_code == 403 and "refused" in resp.json()["error"], (base, resp.text)
            assert client.get("/metadata", headers=headers).status_code == 403


def test_same_origin_and_plain_clients_are_answered(served):
    port = served["base_url"].rsplit(":", 1)[1]
    client = served["client"]
    for headers in ({"Origin": served["base_url"]}, {"Origin": f"http://localhost:{port}", "Sec-Fetch-Site": "same-origin"},
                    {"Host": f"localhost:{port}"}, {"Sec-Fetch-Site": "none"}):  # fmt: skip
        assert client.get("/metadata", headers=headers).status_code == 200, headers


def test_the_backends_workers_share_a_burst_of_connections(served):
    """Connections opened at once are spread over the worker processes (services.balance), not all
    held by the first to wake."""
    import re
    import socket

    import psutil

    port = int(re.findall(r"(?:now serving \S+ on backend port|on http://\S+ \(backend port) (\d+)", served["log"]())[-1])
    workers = [p for p in map(psutil.Process, descendants(served["proc"].pid))
               if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]
    if len(workers) < 2:
        pytest.skip(f"the backend has {len(workers)} worker process on this machine: nothing to share")
    request = f"GET /livez HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(6 * len(workers))]
    try:
        for client in clients:
            client.sendall(request)
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 200"), "every connection is answered"
        held = sorted(sum(1 for c in w.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
                      for w in workers)
        # The proxy of `medgate serve` holds its own connections to the backend besides these.
        assert sum(held) >= len(clients) and held[-1] - held[0] <= 2, held
    finally:
        for client in clients:
            client.close()
