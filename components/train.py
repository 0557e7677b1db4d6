"""train: fit a MONAI network on the prepared train split, selecting the epoch by validation AUC.

Writes under `out_dir`: `model.pt` + `model.json` (the best epoch, see components.models),
`checkpoint.pt` (the last epoch, with optimizer state) and `history.json` (the training curves).
Deterministic for a given seed on CPU; GPU kernels may differ slightly between runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from components.artifacts import TrainedModel
from components.config import TrainConfig, load_params
from components.models import ModelSpec, build_model, resolve_family, save_model
from components.prepare import load_split, read_dataset_info
from components.transforms import Preprocessing, training_augmentation

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"


class _ArrayDataset(Dataset):
    """Prepared images with optional per-sample MONAI augmentation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment=None):
        self.images, self.labels, self.augment = torch.from_numpy(images), torch.from_numpy(labels), augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.augment is not None:
            image = torch.as_tensor(self.augment(image)).float()
        return image, self.labels[i]


def score_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC (one-vs-rest macro for multi-class); NaN when a class is absent."""
    try:
        if probs.shape[1] == 2:
            return float(roc_auc_score(labels, probs[:, 1]))
        return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=range(probs.shape[1])))
    except ValueError:
        return float("nan")


@torch.no_grad()
def predict_probs(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax class probabilities for prepared images (N, C, *spatial)."""
    model.eval()
    out = [torch.softmax(model(torch.from_numpy(images[i : i + batch_size])), dim=1) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def train_model(data_dir: Path, cfg: TrainConfig, out_dir: Path) -> TrainedModel:
    """Train on `data_dir` (written by prepare) and save the best-validation-AUC model in `out_dir`."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    info = read_dataset_info(data_dir)
    class_names = tuple(info["class_names"])
    input_shape = tuple(info["input_shape"])
    x_train, y_train, _ = load_split(data_dir, "train")
    x_val, y_val, _ = load_split(data_dir, "val")

    model = build_model(cfg.model, input_shape, len(class_names))
    counts = np.bincount(y_train, minlength=len(class_names)).astype(np.float64)
    weights = counts.sum() / np.maximum(counts, 1) / len(class_names) if cfg.class_weighting else np.ones(len(class_names))
    criterion = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps = max(1, -(-len(y_train) // cfg.batch_size)) * cfg.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate, total_steps=steps)
    augment = training_augmentation(len(input_shape) - 1) if cfg.augment else None
    loader = DataLoader(
        _ArrayDataset(x_train, y_train, augment),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(cfg.model, input_shape, class_names, Preprocessing.from_dict(info["preprocessing"]))
    history: list[dict[str, float]] = []
    best_auc, best_epoch, stale = -1.0, 0, 0
    deadline = time.monotonic() + cfg.max_minutes * 60
    columns = [TextColumn("train"), BarColumn(), TextColumn("epoch {task.completed}/{task.total} {task.fields[status]}"), TimeElapsedColumn()]
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=cfg.epochs, status="")
        for epoch in range(1, cfg.epochs + 1):
            started = time.monotonic()
            model.train()
            total, seen = 0.0, 0
            for images, labels in loader:
                optimizer.zero_grad()
                loss = criterion(model(images), labels)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(labels)
                seen += len(labels)
            val_probs = predict_probs(model, x_val)
            val_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(val_probs).clamp_min(1e-7)), torch.from_numpy(y_val)))
            val_auc = score_auc(y_val, val_probs)
            history.append(
                {"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss, "val_auc": val_auc, "seconds": time.monotonic() - started}
            )
            if val_auc > best_auc:  # NaN (one class in val) never counts as better
                best_auc, best_epoch, stale = val_auc, epoch, 0
                save_model(model, spec, out_dir)
            else:
                stale += 1
            torch.save(
                {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                out_dir / CHECKPOINT_FILE,
            )
            progress.update(task, advance=1, status=f"loss {total / max(seen, 1):.3f} val_auc {val_auc:.3f}")
            if stale >= cfg.patience or time.monotonic() > deadline:
                break
    if best_epoch == 0:  # validation AUC never defined (one class in val): keep the last epoch
        best_epoch = len(history)
        save_model(model, spec, out_dir)
    (out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=2))
    return TrainedModel(out_dir / "model.pt", resolve_family(cfg.model, input_shape), best_epoch, best_auc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = train_model(args.data, load_params(args.params).train, args.out)
    print(f"train: {result.family}, best epoch {result.best_epoch}, validation AUC {result.best_val_auc:.4f}")


if __name__ == "__main__":
    main()
