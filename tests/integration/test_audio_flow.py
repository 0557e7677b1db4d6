"""A flow run on an embedded audio cohort: it validates, trains on log-mel windows, promotes, and its
Bento answers a recording over HTTP (and refuses an image with 422). Slow: a full run with training."""

from __future__ import annotations

import shutil
import tempfile

import httpx
import pytest

from components.demo.dictation import ENGINE
from services.processes import find_free_port, serve_in_background, wait_until_ready
from services.settings import API_KEY_ENV
from tests.images import audio_bytes, grey_image, png_bytes, tone
from tests.integration.conftest import make_workspace, set_clean_env

# The engine's cohort where espeak-ng is installed (make setup installs it), else the tones cohort.
COHORT = "cohort:dictation" if shutil.which(ENGINE) else "cohort:tones"


@pytest.mark.slow
def test_audio_cohort_runs_end_to_end_and_its_bento_answers_recordings(tmp_path, prefect_api) -> None:
    if COHORT == "cohort:tones":
        pytest.skip(f"{ENGINE} (Debian package espeak-ng) is not installed: cohort:dictation cannot be spoken")
    from flows.pipeline import training_flow

    with pytest.MonkeyPatch.context() as mp:
        set_clean_env(mp)
        ws = make_workspace(tmp_path / "ws", {"evaluate": {"bootstrap_samples": 50}})
        summary = training_flow(source=COHORT, workspace=str(ws))
    assert summary["status"] == "completed", summary.get("error")
    metrics = summary["metrics"]
    assert metrics["accuracy"] >= 0.95 and "macc" in metrics, metrics
    checks = {c["metric"]: c for c in summary["gate"]["checks"]}
    assert checks["serving_parity"]["verdict"] == "pass"  # the Bento answered the golden recordings
    assert summary["gate"]["promote"], summary["gate"]
    assert summary["production"]["version"] == summary["model_version"]

    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+b") as log, \
            serve_in_background(summary["bento_tag"], port, "127.0.0.1", log, env={API_KEY_ENV: None}) as proc:
        assert wait_until_ready(base, proc, 120) is None
        with httpx.Client(base_url=base, timeout=30) as client:
            answer = client.post("/predict", files={"image": ("r.wav", audio_bytes(tone(2.0, 16000), 16000))})
            assert answer.status_code == 200 and set(answer.json()["probabilities"]) == {"normal", "finding"}
            scored = client.post("/predict", files={"image": ("r.wav", audio_bytes(tone(9.0, 16000), 16000))},
                                 data={"windows": "true"})
            spans = [(w["start_s"], w["end_s"]) for w in scored.json()["windows"]]
            assert scored.status_code == 200 and spans[0][0] == 0.0 and spans[-1][1] == 9.0 and len(spans) > 1
            image = client.post("/predict", files={"image": ("x.png", png_bytes(grey_image()))})
            assert image.status_code == 422 and "recordings" in image.json()["error"]
