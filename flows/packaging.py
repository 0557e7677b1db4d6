"""Packaging: the candidate into the BentoML model store and a Bento (`package`), and the Bento
served and checked against evaluate's own predictions on golden images (`smoke_test`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from components.config import Params
from components.data.artifacts import PREDICTIONS_FILE
from components.stages.gate import Check
from flows.settings import Settings
from flows.workspace import INGEST_DIR, stage_dir


# An I/O task (the model store, `bentoml build`): retried once.
@task(name="package", retries=1, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def package_task(
    settings: Settings, params: Params, name: str, metadata: dict[str, Any], card_files: dict[str, str]
) -> tuple[str, str, str]:
    from components.stages.package import build_bento, save_to_model_store
    from services.settings import settings_for_model

    get_run_logger().info("packaging %s v%s: model store, then bento build", name, metadata.get("model_version"))
    model_tag, sha256 = save_to_model_store(stage_dir(settings.workspace, "train"), name, metadata, files=card_files)
    serving = settings_for_model(model_tag, params.package, params.serve)
    bento_tag = build_bento(serving.to_dict(), labels={"model": name}, name=params.package.model_name)
    return model_tag, bento_tag, sha256


@task(name="smoke_test")
def smoke_test_task(settings: Settings, params: Params, bento_tag: str, model_sha256: str | None = None) -> Check:
    """Serve the Bento (its model.pt checked against `model_sha256`, the registered hash) and compare its
    answers to golden images with evaluate's."""
    from components.data.shards import ImageStore
    from components.readers.audio import wav_bytes
    from services.smoke import smoke_test_bento

    ws = settings.workspace
    predictions = pd.read_csv(stage_dir(ws, "evaluate") / PREDICTIONS_FILE, dtype={"image_id": str})
    golden_rows = predictions.head(params.serve.golden_set_size)
    prob_columns = [c for c in predictions.columns if c.startswith("prob_")]
    # The golden images leave their shards as the .npy uploads a client would send; recordings as WAV.
    with tempfile.TemporaryDirectory() as tmp, ImageStore(ws / INGEST_DIR) as store:
        golden = []
        for i, (_, row) in enumerate(golden_rows.iterrows()):
            stored = store.load(row["path"])
            if stored.ndim == 1:
                (path := Path(tmp) / f"golden-{i}.wav").write_bytes(wav_bytes(stored, params.ingest.audio.sample_rate))
            else:
                (path := Path(tmp) / f"golden-{i}.npy").write_bytes(store.read_bytes(row["path"]))
            golden.append((path, [float(row[c]) for c in prob_columns]))
        result = smoke_test_bento(bento_tag, golden, params.serve.probability_tolerance, model_sha256=model_sha256)
    return Check(
        kind="serving",
        metric=result["metric"],
        value=result["value"],
        threshold=result["threshold"],
        comparison=result["comparison"],
        verdict="pass" if result["passed"] else "fail",
        detail=result.get("detail", ""),
    )
