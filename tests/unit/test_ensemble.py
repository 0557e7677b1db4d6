"""Seed ensembles and test-time flips through train, evaluate and packaging, on tiny images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import default_params
from components.data.artifacts import CHECKPOINT_FILE, HISTORY_FILE, SPEC_FILE, TRAINING_FILE
from components.data.prepared import load_split
from components.ml.models import load_model
from components.ml.runtime import predict_probs
from components.stages.evaluate import evaluate_model
from components.stages.train import train_model
from tests.unit.test_prepare_train import TINY, Killed, prepare_tiny

ENSEMBLE = TINY.model_copy(update={"epochs": 2, "ensemble": 2})
TTA = default_params(evaluate={"bootstrap_samples": 20, "tta_flip_axes": [-1], "prior_correction": True}).evaluate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("prepared"), patients=48)


def _kill_at(count: int, seen: list[int]):
    def on_epoch(record):
        seen.append(record["epoch"])
        if len(seen) == count:
            raise Killed

    return on_epoch


def test_ensemble_trains_each_member_once_across_a_kill(prepared, tmp_path):
    train, state = tmp_path / "train", tmp_path / "state"
    seen: list[int] = []
    with pytest.raises(Killed):  # member 0 finished, member 1 killed after its first epoch
        train_model(prepared, ENSEMBLE, train, state, on_epoch=_kill_at(3, seen))
    assert torch.load(state / "member-0" / CHECKPOINT_FILE, weights_only=True)["finished"]
    assert torch.load(state / "member-1" / CHECKPOINT_FILE, weights_only=True)["epoch"] == 1

    again: list[int] = []
    result = train_model(prepared, ENSEMBLE, train, state, on_epoch=lambda r: again.append(r["epoch"]))
    assert again == [2], "member 0 is not trained again; member 1 continues after its epoch 1"

    spec = json.loads((train / SPEC_FILE).read_text())
    assert spec["members"] == 2 and spec["trained_prior"] == pytest.approx([0.5, 0.5])
    weights = torch.load(train / "model.pt", weights_only=True)
    for i in (0, 1):
        member = torch.load(state / f"member-{i}" / "model.pt", weights_only=True)
        assert all(torch.equal(weights[f"{i}.{k}"], v) for k, v in member.items())
    assert not torch.equal(weights["0.conv1.weight"], weights["1.conv1.weight"]), "seeds seed and seed + 1"
    training = json.loads((train / TRAINING_FILE).read_text())
    assert training["ensemble"] == 2 and len(training["members"]) == 2 and training["epochs_run"] == 4
    assert training["best_val_auc"] == pytest.approx(result.best_val_auc)
    assert [h["member"] for h in json.loads((train / HISTORY_FILE).read_text())] == [0, 0, 1, 1]


@pytest.fixture(scope="module")
def ensemble_dir(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ensemble")
    train_model(prepared, ENSEMBLE, out / "train", out / "state")
    return out


def test_evaluation_reports_members_and_how_it_predicted(prepared, ensemble_dir):
    report = evaluate_model(prepared, ensemble_dir / "train", TTA, ensemble_dir / "evaluate")
    metrics = json.loads(report.metrics_path.read_text())
    assert metrics["prediction"] == {"tta_flip_axes": [-1], "prior_correction": True, "temperature": 1.0, "members": 2}
    assert len(metrics["members"]) == 2
    assert all({"auc", "accuracy", "balanced_accuracy"} <= set(m) for m in metrics["members"])
    assert {"accuracy", "balanced_accuracy"} <= set(report.metrics)


@pytest.mark.parametrize("calibrate", [False, True])
def test_packaged_ensemble_predicts_as_evaluated(prepared, ensemble_dir, bentoml_home, calibrate):
    import bentoml

    from components.stages.package import save_to_model_store

    out = ensemble_dir / f"evaluate-tta-{calibrate}"
    evaluate_model(prepared, ensemble_dir / "train", TTA.model_copy(update={"calibrate_prediction": calibrate}), out)
    metrics = json.loads((out / "metrics.json").read_text())
    tag, _ = save_to_model_store(ensemble_dir / "train", "tiny-ensemble", {"prediction": metrics["prediction"]})
    stored = Path(bentoml.models.get(tag).path)
    model, spec = load_model(stored)
    assert spec.members == 2 and spec.tta_flip_axes == (-1,) and spec.prior_correction
    assert (spec.temperature != 1.0) == calibrate and spec.temperature == metrics["prediction"]["temperature"]
    x_test, _, rows = load_split(prepared, "test")
    expected = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert list(expected["image_id"]) == list(rows["image_id"])
    prob_columns = [f"prob_{name}" for name in spec.class_names]
    np.testing.assert_allclose(predict_probs(model, x_test), expected[prob_columns].to_numpy(), atol=1e-6)


def test_recordings_are_scored_per_recording():
    from torch import nn

    from components.stages.evaluate import _Splits

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(5, 1, 2, 2).numpy()
    rows = pd.DataFrame({"image_id": ["r1", "r1", "r2", "r3", "r3"], "window": [0, 1, 0, 0, 1], "patient_id": "p"})
    labels = np.array([1, 1, 0, 1, 1])
    splits = _Splits(x, labels, rows, x, labels, rows)
    y_val, y_test, per_recording_rows = splits.labels()
    assert list(per_recording_rows["image_id"]) == ["r1", "r2", "r3"] and list(y_test) == list(y_val) == [1, 0, 1]
    val_windows, windows = splits.predict(net)
    np.testing.assert_allclose(windows, torch.softmax(net(torch.from_numpy(x)), dim=1).detach().numpy(), atol=1e-6)
    _, test_probs = splits.per_item(val_windows, windows)
    np.testing.assert_allclose(test_probs, [windows[:2].mean(0), windows[2], windows[3:].mean(0)], atol=1e-6)


def test_uncorrected_figures_are_those_of_an_evaluation_without_correction(prepared, ensemble_dir, tmp_path):
    import shutil

    model_dir = Path(shutil.copytree(ensemble_dir / "train", tmp_path / "train"))
    spec = json.loads((model_dir / SPEC_FILE).read_text())
    (model_dir / SPEC_FILE).write_text(json.dumps({**spec, "class_prior": [0.8, 0.2]}))  # as if trained on 80/20
    corrected = evaluate_model(prepared, model_dir, TTA, tmp_path / "on").metrics
    off = evaluate_model(prepared, model_dir, TTA.model_copy(update={"prior_correction": False}), tmp_path / "off").metrics
    assert "accuracy_uncorrected" not in off
    assert corrected["accuracy_uncorrected"] == pytest.approx(off["accuracy"])
    assert corrected["balanced_accuracy_uncorrected"] == pytest.approx(off["balanced_accuracy"])
    assert corrected["argmax_accuracy_uncorrected"] == pytest.approx(off["argmax_accuracy"])
    assert corrected["auc"] != off["auc"] or corrected["operating_threshold"] != off["operating_threshold"]
