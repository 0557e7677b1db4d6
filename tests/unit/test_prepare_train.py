"""prepare splits by patient; a short training run learns a synthetic task better than chance."""

import json

import numpy as np
import pandas as pd

from components.config import EvaluateConfig, ModelConfig, PrepareConfig, TrainConfig
from components.evaluate import evaluate_model
from components.prepare import prepare_dataset, split_patients
from components.train import train_model


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


def test_split_keeps_patients_whole(tmp_path):
    manifest = pd.read_parquet(make_manifest(tmp_path))
    splits = split_patients(manifest, PrepareConfig())
    per_patient = manifest.assign(split=splits).groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    assert set(splits) == {"train", "val", "test"}


def test_fixed_splits_are_kept(tmp_path):
    manifest = pd.read_parquet(make_manifest(tmp_path))
    manifest["split"] = np.where(manifest.index % 3 == 0, "test", "train")
    assert (split_patients(manifest, PrepareConfig()) == manifest["split"]).all()


def test_prepare_train_evaluate_beats_chance(tmp_path):
    manifest = make_manifest(tmp_path / "ingest", patients=60)
    prepared = prepare_dataset(manifest, PrepareConfig(val_fraction=0.2, test_fraction=0.25), tmp_path / "prepare")
    assert prepared.class_names == ("neg", "pos")
    assert prepared.input_shape == (1, 16, 16)
    info = json.loads((tmp_path / "prepare" / "dataset.json").read_text())
    assert info["preprocessing"]["lower"] == 0.0 and info["preprocessing"]["upper"] == 255.0

    cfg = TrainConfig(model=ModelConfig(width=8), epochs=6, batch_size=16, learning_rate=3e-3, patience=6)
    trained = train_model(tmp_path / "prepare", cfg, tmp_path / "train")
    history = json.loads((tmp_path / "train" / "history.json").read_text())
    assert len(history) >= 1 and (tmp_path / "train" / "checkpoint.pt").exists()
    assert trained.best_val_auc > 0.7

    report = evaluate_model(tmp_path / "prepare", tmp_path / "train", EvaluateConfig(bootstrap_samples=50), tmp_path / "evaluate")
    assert report.metrics["auc"] > 0.7  # held-out patients, better than chance (0.5)
    predictions = pd.read_csv(tmp_path / "evaluate" / "predictions.csv")
    assert len(predictions) == prepared.counts["test"]
    assert {"prob_neg", "prob_pos"} <= set(predictions.columns)
