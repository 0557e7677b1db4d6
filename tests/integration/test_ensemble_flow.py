"""A seed ensemble with test-time flips through the whole flow: one model, one Bento, answers as evaluated."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.integration.conftest import TINY, make_workspace

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def test_ensemble_with_flips_is_packaged_and_served_as_evaluated(tmp_path, prefect_api, clean_env):
    import bentoml

    from components.data.prepared import load_split
    from components.ml.models import load_model
    from components.ml.runtime import predict_probs
    from flows.pipeline import training_flow
    from flows.workspace import stage_dir

    ws = make_workspace(tmp_path / "ws", {
        **TINY, "train": {**TINY["train"], "ensemble": 2}, "evaluate": {**TINY["evaluate"], "tta_flip_axes": [-1]},
    })
    summary = training_flow(workspace=str(ws))
    assert summary["status"] == "completed" and summary["gate"]["promote"], summary["gate"]
    serving = next(c for c in summary["gate"]["checks"] if c["kind"] == "serving")
    assert serving["verdict"] == "pass", serving  # the Bento answered the golden images as evaluate did

    metrics = json.loads((stage_dir(ws, "evaluate") / "metrics.json").read_text())
    # temperature 1.0: evaluate.calibrate_prediction is off by default (params.yaml)
    assert metrics["prediction"] == {"tta_flip_axes": [-1], "prior_correction": True, "temperature": 1.0, "members": 2}
    assert len(metrics["members"]) == 2 and all("auc" in m and "accuracy" in m for m in metrics["members"])
    assert (ws / "data" / "train_state" / "member-1" / "checkpoint.pt").is_file()

    bento = bentoml.bentos.get(summary["bento_tag"])
    (model_tag,) = [str(m.tag) for m in bento.info.all_models]
    model, spec = load_model(Path(bentoml.models.get(model_tag).path))
    assert spec.members == 2 and spec.tta_flip_axes == (-1,) and spec.prior_correction
    x_test, _, rows = load_split(stage_dir(ws, "prepare"), "test")
    evaluated = pd.read_csv(stage_dir(ws, "evaluate") / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    columns = [f"prob_{name}" for name in spec.class_names]
    np.testing.assert_allclose(predict_probs(model, x_test), evaluated.loc[rows["image_id"], columns].to_numpy(), atol=1e-6)
    assert "member 1" in Path(summary["report"]).read_text()
