"""train: fit a MONAI network on the prepared train split, selecting the epoch by validation AUC.

Writes under `out_dir`: `model.pt` + `model.json` (the selected epoch, see components.ml.models),
`history.json` (the training curves: one record per epoch with losses, validation AUC, learning
rate and timings) and `training.json` (totals: epochs, best epoch, wall time, images/s, device).

Resumable: after every epoch the whole state (weights, optimizer, scheduler, random generators,
the best weights so far and the history) is written atomically to `state_dir/checkpoint.pt`,
keyed to this training's inputs (train params, prepared data, training code). A run finding a
checkpoint with its own key continues after that checkpoint's epoch (or, when it had finished,
only rewrites the outputs); a checkpoint with another key is ignored and overwritten. dvc.yaml
declares `state_dir` a `persist` output, which `dvc repro` does not delete before running, so
`medgate run` after a killed run continues from the last finished epoch.

Deterministic for a given seed on CPU, across a resume too; GPU kernels may differ slightly.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.metrics import roc_auc_score
from torch import nn

from components.ml import models, transforms
from components.data.artifacts import HISTORY_FILE, TRAINING_FILE, TrainedModel
from components.config import TrainConfig, load_params
from components.ml.distributed import (
    SINGLE,
    Replica,
    global_loss,
    join_process_group,
    leave_process_group,
    under_torchrun,
)
from components.ml.models import ModelSpec, build_model, file_sha256, resolve_family, save_model
from components.stages.prepare import DATASET_FILE, load_split, read_dataset_info
from components.ml.transforms import BatchAugmentation, Preprocessing

CHECKPOINT_FILE = "checkpoint.pt"


def score_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC (one-vs-rest macro for multi-class); NaN when a class is absent."""
    try:
        if probs.shape[1] == 2:
            return float(roc_auc_score(labels, probs[:, 1]))
        return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=range(probs.shape[1])))
    except ValueError:
        return float("nan")


@torch.no_grad()
def predict_probs(model: nn.Module, images: np.ndarray, batch_size: int = 256, device: torch.device | None = None) -> np.ndarray:
    """Softmax class probabilities for prepared images (N, C, *spatial)."""
    model.eval()
    device = device or next(model.parameters()).device
    out = [
        torch.softmax(model(torch.from_numpy(images[i : i + batch_size]).to(device)).float(), dim=1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def set_threads(num_threads: int) -> int:
    """Intra-op threads: `num_threads`, or with 0 every core this process may use. Returns the count."""
    count = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(count)
    return count


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse class frequency, scaled so that a balanced set gets weight 1 per class."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return counts.sum() / np.maximum(counts, 1) / num_classes


def input_key(data_dir: Path, cfg: TrainConfig) -> str:
    """What a checkpoint must match to be resumed: train params, prepared data, training code."""
    digest = hashlib.sha256(cfg.model_dump_json().encode())
    for name in (DATASET_FILE, "train.npz", "val.npz"):
        digest.update(file_sha256(data_dir / name).encode())
    for module in (models, transforms):
        digest.update(Path(inspect.getfile(module)).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def _save_atomically(obj: Any, path: Path) -> None:
    """A kill during the write leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def bn_calibration_images(images: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """The training images `recalibrate_batchnorm` averages over: all, or a fixed seeded sample of `limit`."""
    if limit <= 0 or len(images) <= limit:
        return images
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    return images[chosen]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> None:
    """Recompute BatchNorm statistics as exact averages over the (unaugmented) training images.

    On small datasets the weights move fast between the few steps of an epoch, so the running
    averages lag behind them and eval-mode outputs collapse to one class ("precise BN" fixes it).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    for i in range(0, len(images), batch_size):
        model(torch.from_numpy(images[i : i + batch_size]).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


class _Ema:
    """Exponential moving average of the weights (and BatchNorm statistics), with a warm-up so
    that the first steps, far from the final weights, fade out quickly."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                self.state[key].copy_(value)


def plan_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """`cfg.epochs`, or for 0 enough epochs for about `cfg.steps` optimizer steps within
    [min_epochs, max_epochs]: a fixed number of epochs under-trains small datasets."""
    if cfg.epochs:
        return cfg.epochs
    return int(min(cfg.max_epochs, max(cfg.min_epochs, math.ceil(cfg.steps / max(steps_per_epoch, 1)))))


def epoch_batches(labels: np.ndarray, cfg: TrainConfig, weights: np.ndarray, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches of indices: shuffled, or class-balanced sampling with replacement."""
    n = len(labels)
    if cfg.class_balance == "sampler":
        order = torch.multinomial(torch.as_tensor(weights[labels]), n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    batches = list(order.split(cfg.batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot train on a batch of one
        batches.pop()
    return batches


def train_model(
    data_dir: Path,
    cfg: TrainConfig,
    out_dir: Path,
    state_dir: Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    replica: Replica = SINGLE,
) -> TrainedModel:
    """Train on `data_dir` (written by prepare) and save the best-validation-AUC model in `out_dir`.

    Args:
        data_dir: the prepare stage's output.
        cfg: the `train` section.
        out_dir: receives model.pt, model.json, history.json and training.json.
        state_dir: where the resumable checkpoint lives (default `out_dir`).
        on_epoch: called with each epoch's history record after its checkpoint is written.
        replica: this process's place under torchrun (components.ml.distributed); rank 0 writes the files.
    """
    started_wall = time.monotonic()
    threads = set_threads(cfg.num_threads)
    device = models.resolve_device(cfg.device, "train.device")
    state_dir = state_dir or out_dir
    info = read_dataset_info(data_dir)
    class_names = tuple(info["class_names"])
    input_shape = tuple(info["input_shape"])
    x_train, y_train, _ = load_split(data_dir, "train")
    x_bn = bn_calibration_images(x_train, cfg.bn_recalibration_images, cfg.seed)
    x_val, y_val, _ = load_split(data_dir, "val")
    key = input_key(data_dir, cfg)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, input_shape, len(class_names)).to(device)
    weights = class_weights(y_train, len(class_names))
    loss_weights = torch.tensor(weights if cfg.class_balance == "weighted_loss" else np.ones(len(class_names)), dtype=torch.float32)
    criterion = nn.CrossEntropyLoss(weight=loss_weights.to(device), label_smoothing=cfg.label_smoothing)
    criterion_sum = nn.CrossEntropyLoss(weight=loss_weights.to(device), label_smoothing=cfg.label_smoothing, reduction="sum")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    augment_gen = torch.Generator().manual_seed(cfg.seed + 1)
    steps_per_epoch = len(epoch_batches(y_train, cfg, weights, torch.Generator().manual_seed(0)))
    epochs = plan_epochs(cfg, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate, total_steps=max(1, steps_per_epoch * epochs))
    augment = BatchAugmentation(cfg.augment, len(input_shape) - 1, augment_gen)
    ema = _Ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    on_gpu = device.type == "cuda"
    net: nn.Module = torch.compile(replica.wrap(model, device)) if on_gpu and cfg.compile else replica.wrap(model, device)  # type: ignore[assignment]
    eval_model = build_model(cfg.model, input_shape, len(class_names)).to(device) if ema else model

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"auc": -math.inf, "loss": math.inf, "epoch": 0, "weights": _copy_state(model)}
    stale, finished, resumed_from, stopped = 0, False, 0, "epochs"
    checkpoint_path = state_dir / CHECKPOINT_FILE
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            shuffle_gen.set_state(saved["shuffle_rng"])
            augment_gen.set_state(saved["augment_rng"])
            torch.set_rng_state(saved["torch_rng"])
            if ema is not None:
                ema.state, ema.steps = {k: v.to(device) for k, v in saved["ema"].items()}, int(saved["ema_steps"])
            history, best, stale, finished = saved["history"], saved["best"], int(saved["stale"]), bool(saved["finished"])
            resumed_from, stopped = int(saved["epoch"]), str(saved["stopped"])

    def write_checkpoint(epoch: int) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        _save_atomically(
            {
                "key": key, "epoch": epoch, "finished": finished, "stopped": stopped, "stale": stale, "history": history, "best": best,
                "model": _copy_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "shuffle_rng": shuffle_gen.get_state(), "augment_rng": augment_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "ema": {k: v.cpu() for k, v in ema.state.items()} if ema else {}, "ema_steps": ema.steps if ema else 0,
            },
            checkpoint_path,
        )

    deadline = time.monotonic() + cfg.max_minutes * 60
    columns = [TextColumn("train"), BarColumn(), TextColumn("epoch {task.completed}/{task.total} {task.fields[status]}"), TimeElapsedColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=epochs, completed=len(history), status="")
        if resumed_from and not finished:
            progress.console.print(f"train: resuming after epoch {resumed_from} from {checkpoint_path}")
        for epoch in range(len(history) + 1, epochs + 1):
            if finished:
                break
            model.train()
            epoch_start = time.monotonic()
            total, seen, data_seconds = 0.0, 0, 0.0
            for idx in epoch_batches(y_train, cfg, weights, shuffle_gen):
                t0 = time.monotonic()
                images = augment(torch.from_numpy(x_train[idx.numpy()]).to(device, non_blocking=True))
                labels = torch.from_numpy(y_train[idx.numpy()]).to(device, non_blocking=True)
                if replica.distributed and len(idx) < 2 * replica.world_size:
                    continue  # a slice of one image cannot train BatchNorm
                if replica.distributed:  # every replica drew the same global batch; each trains on its slice
                    global_weight = criterion_sum.weight[labels].sum()
                    images, labels = replica.shard(images), replica.shard(labels)
                data_seconds += time.monotonic() - t0
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu and cfg.amp):
                    logits = net(images)
                    loss = global_loss(criterion_sum, logits, labels, global_weight, replica) if replica.distributed else criterion(logits, labels)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                total += loss.item() * len(labels)
                seen += len(labels)
            train_seconds = time.monotonic() - epoch_start
            if ema is not None:
                eval_model.load_state_dict(ema.state)
            recalibrate_batchnorm(eval_model, x_bn, device)
            val_probs = predict_probs(eval_model, x_val, device=device)
            val_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(val_probs).clamp_min(1e-7)), torch.from_numpy(y_val)))
            val_auc = score_auc(y_val, val_probs)
            record = {
                "epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss, "val_auc": val_auc,
                "learning_rate": float(scheduler.get_last_lr()[0]), "seconds": time.monotonic() - epoch_start,
                "train_seconds": train_seconds, "data_seconds": data_seconds, "images_per_second": seen / max(train_seconds, 1e-9),
            }
            history.append(record)
            # NaN (one class in val) never counts as better; equal AUC prefers the lower validation loss.
            if val_auc > best["auc"] or (val_auc == best["auc"] and val_loss < best["loss"]):
                best = {"auc": val_auc, "loss": val_loss, "epoch": epoch, "weights": _copy_state(eval_model)}
                stale = 0
            else:
                stale += 1
            # Not early in the schedule: there the one-cycle learning rate is high and validation AUC noisy.
            if stale >= cfg.patience and epoch >= cfg.early_stopping_after * epochs:
                stopped = "early stopping"
            elif time.monotonic() > deadline:
                stopped = "time limit"
            finished = replica.agree(epoch == epochs or stopped != "epochs")
            if replica.is_main:
                write_checkpoint(epoch)
            progress.update(task, completed=epoch, status=f"loss {record['train_loss']:.3f} val_auc {val_auc:.3f}")
            progress.console.print(
                f"epoch {epoch}/{epochs}: loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, val AUC {val_auc:.4f}, "
                f"{record['images_per_second']:.0f} img/s ({data_seconds / max(train_seconds, 1e-9):.0%} in data)",
                soft_wrap=True,
            )
            if on_epoch is not None:
                on_epoch(record)
            if finished:
                break

    if best["epoch"] == 0:  # validation AUC never defined (one class in val): keep the last epoch
        best = {**best, "epoch": len(history), "weights": _copy_state(eval_model)}
    model.load_state_dict(best["weights"])
    if not replica.is_main:
        return TrainedModel(out_dir / models.WEIGHTS_FILE, resolve_family(cfg.model, input_shape), best["epoch"], best["auc"])
    spec = ModelSpec(cfg.model, input_shape, class_names, Preprocessing.from_dict(info["preprocessing"]))
    save_model(model, spec, out_dir)
    (out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=2))
    train_seconds = sum(h["train_seconds"] for h in history)
    summary = {
        "family": resolve_family(cfg.model, input_shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs_planned": epochs,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_auc": best["auc"],
        "stopped": stopped,
        "resumed_after_epoch": resumed_from,
        "seconds": sum(h["seconds"] for h in history),
        "train_seconds": train_seconds,
        "images_per_second": sum(h["images_per_second"] * h["train_seconds"] for h in history) / max(train_seconds, 1e-9),
        "data_fraction": sum(h["data_seconds"] for h in history) / max(train_seconds, 1e-9),
        "device": device.type,
        "threads": threads,
        "processes": replica.world_size,
        "this_call_seconds": time.monotonic() - started_wall,
    }
    (out_dir / TRAINING_FILE).write_text(json.dumps(summary, indent=2))
    return TrainedModel(out_dir / models.WEIGHTS_FILE, summary["family"], best["epoch"], best["auc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--state", type=Path, default=None, help="folder of the resumable checkpoint (default: --out)")
    args = parser.parse_args()
    params = load_params(args.params)
    processes = params.orchestration.train_processes
    if processes > 1 and not torch.distributed.is_torchelastic_launched():
        raise SystemExit(under_torchrun(processes, "components.stages.train", sys.argv[1:]))
    replica = join_process_group(models.resolve_device(params.train.device, "train.device").type)
    try:
        result = train_model(args.data, params.train, args.out, args.state, replica=replica)
    finally:
        leave_process_group()
    if replica.is_main:
        print(f"train: {result.family}, best epoch {result.best_epoch}, validation AUC {result.best_val_auc:.4f}")


if __name__ == "__main__":
    main()
