"""The embedded cine cohort end to end: a flow run that trains a clip model, promotes it, and whose
Bento answers a clip (DICOM cine, MP4) over HTTP and refuses a 2D image with 422."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from tests.integration.conftest import make_workspace

pytestmark = pytest.mark.slow


def test_cine_cohort_runs_end_to_end_and_its_bento_answers_clips(tmp_path, prefect_api, clean_env) -> None:
    from components.demo.cine import beating_ventricle, cine_bytes
    from flows.datasets import CINE_SOURCE
    from flows.pipeline import training_flow
    from services.processes import find_free_port, serve_in_background, wait_until_ready
    from tests.images import grey_image, png_bytes
    from tests.videos import video_bytes

    ws = make_workspace(tmp_path / "ws", {"evaluate": {"bootstrap_samples": 100}})
    started = time.monotonic()
    summary = training_flow(source=CINE_SOURCE, workspace=str(ws))
    seconds = time.monotonic() - started
    assert summary["status"] == "completed" and summary["gate"]["promote"], summary["gate"]
    assert summary["metrics"]["auc"] >= 0.95, summary["metrics"]
    print(f"cine cohort flow: {seconds:.0f} s, test AUC {summary['metrics']['auc']:.3f}")  # noqa: T201 - the measure

    rng = np.random.default_rng(99)
    normal = beating_ventricle(rng, 32, 64, 30.0, "normal")
    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "serve.log", "wb") as log, serve_in_background(summary["bento_tag"], port, log=log) as proc:
        assert wait_until_ready(base, proc, 180) is None, (tmp_path / "serve.log").read_text()[-3000:]
        for name, body in (("clip.dcm", cine_bytes(normal, fps=30.0)), ("clip.mp4", video_bytes(normal))):
            answer = httpx.post(f"{base}/predict", files={"image": (name, body)}, timeout=60)
            assert answer.status_code == 200, answer.text
            assert set(answer.json()["probabilities"]) == {"normal", "reduced"}
        refused = httpx.post(f"{base}/predict", files={"image": ("x.png", png_bytes(grey_image()))}, timeout=60)
        assert refused.status_code == 422 and "takes clips" in refused.json()["error"]
