"""prepare splits by patient; training learns a synthetic task, resumes after an interruption
exactly where it stopped, and the baseline, evaluation and report run on its outputs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import default_params
from components.stages.evaluate import evaluate_model
from components.data.manifest import CLASS_NAMES_ATTR, order_class_names
from components.stages.prepare import prepare_dataset, split_patients
from components.data.artifacts import CHECKPOINT_FILE, HISTORY_FILE, TRAINING_FILE
from components.ml.weights import bn_calibration_images
from components.stages.train import (
    _better,
    class_weights,
    epoch_batches,
    plan_epochs,
    train_model,
)

# Small and single-threaded: the mechanics are under test here, not the model's quality.
TINY = default_params(train={"model": {"width": 4}, "epochs": 4, "batch_size": 16, "learning_rate": 3e-3, "patience": 10, "num_threads": 1}).train


def make_manifest(root, patients=40, per_patient=3, size=16, seed=0):
    """Patients with a bright square (positive) or not; pixels 0-255 uint8."""
    rng = np.random.default_rng(seed)
    rows = []
    (root / "images").mkdir(parents=True)
    for p in range(patients):
        label = "pos" if p % 2 else "neg"
        for k in range(per_patient):
            img = rng.integers(0, 80, (size, size)).astype(np.uint8)
            if label == "pos":
                r, c = rng.integers(2, size - 7, 2)
                img[r : r + 5, c : c + 5] = 220
            rel = f"images/{p}-{k}.npy"
            np.save(root / rel, img)
            rows.append({
                "image_id": f"{p}-{k}", "patient_id": f"p{p}", "label": label, "split": None, "path": rel,
                "ndim": 2, "height": size, "width": size, "depth": 1, "channels": 1, "dtype": "uint8",
                "intensity_min": float(img.min()), "intensity_max": float(img.max()),
                "intensity_mean": float(img.mean()), "intensity_std": float(img.std()), "content_hash": f"h{p}-{k}",
                "site": "a" if p < patients // 2 else "b",
            })
    frame = pd.DataFrame(rows).astype({"split": "string"})
    frame.to_parquet(root / "manifest.parquet")
    return root / "manifest.parquet"


def prepare_tiny(root: Path, patients: int) -> Path:
    """`make_manifest`'s dataset (two images per patient) through prepare, a quarter each for val and test."""
    manifest = make_manifest(root / "ingest", patients=patients, per_patient=2)
    prepare_dataset(manifest, default_params(prepare={"val_fraction": 0.25, "test_fraction": 0.25}).prepare, root / "prepare")
    return root / "prepare"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_tiny(tmp_path_factory.mktemp("prepared"), patients=48)


def test_split_keeps_patients_whole(tmp_path):
    manifest = pd.read_parquet(make_manifest(tmp_path))
    splits = split_patients(manifest, default_params().prepare)
    per_patient = manifest.assign(split=splits).groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    assert set(splits) == {"train", "val", "test"}


def test_split_follows_the_source_order_not_the_pseudonyms(tmp_path):
    """Two workspaces (two salts) pseudonymize the same patients differently: same split all the same."""
    manifest = pd.read_parquet(make_manifest(tmp_path))
    renamed = manifest.assign(patient_id=manifest["patient_id"].map(lambda p: f"other-salt-{hash(p) % 10**9:09d}"))
    assert (split_patients(manifest, default_params().prepare) == split_patients(renamed, default_params().prepare)).all()
    assert not (split_patients(manifest, default_params().prepare) == split_patients(manifest, default_params(prepare={"seed": 99}).prepare)).all()


def test_fixed_splits_are_kept(tmp_path):
    manifest = pd.read_parquet(make_manifest(tmp_path))
    manifest["split"] = np.where(manifest.index % 3 == 0, "test", "train")
    assert (split_patients(manifest, default_params().prepare) == manifest["split"]).all()


def test_class_order_puts_the_finding_second():
    assert order_class_names(["lesion", "normal", "lesion"]) == ("normal", "lesion")
    assert order_class_names(["10", "2", "1"]) == ("1", "2", "10")
    assert order_class_names(["dog", "cat"]) == ("cat", "dog")


def test_batchnorm_calibration_sample_is_fixed_and_bounded():
    images = np.arange(100, dtype=np.float32).reshape(100, 1)
    assert bn_calibration_images(images, 0, seed=0) is images and bn_calibration_images(images, 100, 0) is images
    sample = bn_calibration_images(images, 30, seed=1)
    assert len(sample) == 30 and len(np.unique(sample)) == 30 and np.isin(sample, images).all()
    np.testing.assert_array_equal(sample, bn_calibration_images(images, 30, seed=1))  # same every epoch and on resume
    assert not np.array_equal(sample, bn_calibration_images(images, 30, seed=2))


def test_prepare_follows_the_class_order_ingest_stored(tmp_path):
    # ingest.class_names (here: "pos" first) must decide label indices, not prepare's default order.
    path = make_manifest(tmp_path / "ingest", patients=20, per_patient=1)
    manifest = pd.read_parquet(path)
    manifest.attrs[CLASS_NAMES_ATTR] = ["pos", "neg"]
    manifest.to_parquet(path)
    result = prepare_dataset(path, default_params().prepare, tmp_path / "prepare")
    assert result.class_names == ("pos", "neg")
    with np.load(tmp_path / "prepare" / "train.npz") as arrays:
        rows = pd.read_csv(tmp_path / "prepare" / "train.csv", dtype=str)
        expected = (rows["label"] == "neg").astype(int).to_numpy()
        np.testing.assert_array_equal(arrays["labels"], expected)


def test_epochs_follow_the_dataset_size():
    auto = default_params(train={"epochs": 0, "steps": 1000, "min_epochs": 10, "max_epochs": 60}).train
    assert plan_epochs(auto, steps_per_epoch=9) == 60  # small set: capped at max_epochs
    assert plan_epochs(auto, steps_per_epoch=40) == 25  # 1000 steps
    assert plan_epochs(auto, steps_per_epoch=500) == 10  # large set: at least min_epochs
    assert plan_epochs(default_params(train={"epochs": 7}).train, steps_per_epoch=9) == 7


def test_class_weights_balance_the_loss():
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights == pytest.approx([2 / 3, 2.0])  # each class contributes equally: 3 * 2/3 == 1 * 2


def test_sampler_balances_the_classes_seen():
    labels = np.array([0] * 90 + [1] * 10)
    cfg = default_params(train={"class_balance": "sampler", "batch_size": 25}).train
    batches = epoch_batches(labels, cfg, class_weights(labels, 2), torch.Generator().manual_seed(0))
    seen = labels[torch.cat(batches).numpy()]
    assert len(seen) == 100 and 0.35 < seen.mean() < 0.65  # about half positives, from 10% in the data
    shuffled = epoch_batches(labels, default_params(train={"batch_size": 25}).train, class_weights(labels, 2), torch.Generator().manual_seed(0))
    assert sorted(torch.cat(shuffled).tolist()) == list(range(100))  # otherwise: every image once


def test_prepare_train_evaluate_beats_chance(prepared, tmp_path):
    info = json.loads((prepared / "dataset.json").read_text())
    assert info["class_names"] == ["neg", "pos"] and info["input_shape"] == [1, 16, 16]
    assert info["preprocessing"]["lower"] == 0.0 and info["preprocessing"]["upper"] == 255.0

    trained = train_model(prepared, TINY.model_copy(update={"epochs": 8, "model": default_params(train={"model": {"width": 8}}).train.model}), tmp_path / "train")
    history = json.loads((tmp_path / "train" / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert {"train_loss", "val_loss", "val_auc", "learning_rate", "images_per_second"} <= set(history[0])
    assert trained.best_val_auc > 0.7

    from components.stages.baseline import train_baseline

    baseline = train_baseline(prepared, default_params(baseline={"classifier": "logistic_regression"}).baseline, ("youden", 0.9), tmp_path / "baseline")
    assert baseline["auc"] > 0.7  # the bright square moves the intensity histogram: easy for the baseline too

    report = evaluate_model(prepared, tmp_path / "train", default_params(evaluate={"bootstrap_samples": 50}).evaluate, tmp_path / "evaluate", tmp_path / "baseline")
    assert report.metrics["auc"] > 0.7  # held-out patients, better than chance (0.5)
    assert report.metrics["baseline_auc"] == pytest.approx(baseline["auc"])
    assert report.metrics["auc_minus_baseline"] == pytest.approx(report.metrics["auc"] - baseline["auc"])
    assert report.metrics["auc_minus_baseline_ci_lower"] <= report.metrics["auc_minus_baseline"] <= report.metrics["auc_minus_baseline_ci_upper"]
    predictions = pd.read_csv(tmp_path / "evaluate" / "predictions.csv")
    assert len(predictions) == info["counts"]["test"]
    assert {"prob_neg", "prob_pos"} <= set(predictions.columns)
    argmax = (predictions["prob_pos"] > predictions["prob_neg"]).map({True: "pos", False: "neg"})
    assert report.metrics["argmax_accuracy"] == pytest.approx((argmax == predictions["label"]).mean())
    roc = json.loads((tmp_path / "evaluate" / "plots" / "roc.json").read_text())
    assert roc[0]["fpr"] == 0.0 and roc[-1]["tpr"] == 1.0

    from components.documents.report import write_report

    gate = {"promote": False, "reason": "refused: auc >= 0.99", "checks": [
        {"kind": "value", "metric": "auc", "value": report.metrics["auc"], "threshold": 0.99, "comparison": ">=", "verdict": "fail", "detail": ""}]}
    page = write_report(tmp_path / "report.html", {"run_id": "r1", "model_name": "squares"}, tmp_path / "evaluate", tmp_path / "train", tmp_path / "baseline", gate).read_text()
    assert page.count("<svg") == 4  # ROC, confusion, calibration, training curves
    assert "REFUSED" in page and "auc &gt;= 0.99" in page and "site" in page
    assert "<script" not in page and "src=" not in page  # self-contained: nothing to fetch


def test_epoch_selection_rules():
    best = {"auc": 0.8, "loss": 0.5}
    assert _better(0.9, 0.9, best, "val_auc") and _better(0.8, 0.4, best, "val_auc") and not _better(0.7, 0.1, best, "val_auc")
    assert not _better(float("nan"), 0.1, best, "val_auc")  # one class in val: never better
    assert _better(0.1, 0.4, best, "val_loss") and not _better(0.99, 0.6, best, "val_loss")
    assert _better(0.1, 9.0, best, "last")


def test_selecting_the_last_epoch_never_stops_early(prepared, tmp_path):
    cfg = TINY.model_copy(update={"select": "last", "patience": 1, "early_stopping_after": 0.0})
    trained = train_model(prepared, cfg, tmp_path / "train")
    summary = json.loads((tmp_path / "train" / TRAINING_FILE).read_text())
    assert trained.best_epoch == cfg.epochs == len(json.loads((tmp_path / "train" / HISTORY_FILE).read_text()))
    assert summary["stopped"] == "epochs"


class Killed(Exception):
    """Stands in for a kill between two epochs."""


def _stop_after(epoch):
    def on_epoch(record):
        if record["epoch"] == epoch:
            raise Killed

    return on_epoch


def _weights(folder):
    return torch.load(folder / "model.pt", weights_only=True)


def test_resume_continues_from_the_checkpoint_and_matches_an_uninterrupted_run(prepared, tmp_path):
    train_model(prepared, TINY, tmp_path / "full", tmp_path / "full-state")

    with pytest.raises(Killed):
        train_model(prepared, TINY, tmp_path / "train", tmp_path / "state", on_epoch=_stop_after(2))
    checkpoint = torch.load(tmp_path / "state" / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["epoch"] == 2 and not checkpoint["finished"]
    steps_per_epoch = checkpoint["scheduler"]["last_epoch"] // 2
    assert checkpoint["optimizer"]["state"][0]["step"] == 2 * steps_per_epoch
    assert not (tmp_path / "train" / "model.pt").exists()

    epochs_run = []
    train_model(prepared, TINY, tmp_path / "train", tmp_path / "state", on_epoch=lambda r: epochs_run.append(r["epoch"]))
    assert epochs_run == [3, 4]  # continued after epoch 2, not started over
    assert json.loads((tmp_path / "train" / TRAINING_FILE).read_text())["resumed_after_epoch"] == 2
    final = torch.load(tmp_path / "state" / CHECKPOINT_FILE, weights_only=True)
    assert final["optimizer"]["state"][0]["step"] == 4 * steps_per_epoch and final["finished"]
    # Weights, optimizer moments, schedule and random generators all came back: bit-identical results.
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "train")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    losses = [[h["train_loss"], h["val_auc"]] for h in json.loads((tmp_path / "train" / HISTORY_FILE).read_text())]
    assert losses == [[h["train_loss"], h["val_auc"]] for h in json.loads((tmp_path / "full" / HISTORY_FILE).read_text())]


def test_finished_checkpoint_rewrites_outputs_without_training(prepared, tmp_path):
    train_model(prepared, TINY, tmp_path / "train", tmp_path / "state")
    before = _weights(tmp_path / "train")
    for path in (tmp_path / "train").iterdir():  # what `dvc repro` does to a stage's outputs
        path.unlink()
    epochs_run = []
    train_model(prepared, TINY, tmp_path / "train", tmp_path / "state", on_epoch=lambda r: epochs_run.append(r["epoch"]))
    assert epochs_run == []
    after = _weights(tmp_path / "train")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_of_other_inputs_is_not_resumed(prepared, tmp_path):
    with pytest.raises(Killed):
        train_model(prepared, TINY, tmp_path / "train", tmp_path / "state", on_epoch=_stop_after(2))
    epochs_run = []
    other = TINY.model_copy(update={"learning_rate": 1e-3})
    train_model(prepared, other, tmp_path / "train", tmp_path / "state", on_epoch=lambda r: epochs_run.append(r["epoch"]))
    assert epochs_run == [1, 2, 3, 4]
