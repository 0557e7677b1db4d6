"""train: fit a MONAI network on the prepared train split, keeping the epoch `train.select` picks (validation AUC by default).

Writes under `out_dir`: `model.pt` + `model.json` (the selected epoch, see components.ml.models),
`history.json` (the training curves: one record per epoch with losses, validation AUC, learning
rate and timings) and `training.json` (totals: epochs, best epoch, wall time, images/s, device).

Resumable: after every epoch the whole state (weights, optimizer, scheduler, random generators,
the best weights so far and the history) is written atomically to `state_dir/checkpoint.pt`,
keyed to this training's inputs (train params, prepared data, training code). A run finding a
checkpoint with its own key continues after that checkpoint's epoch (or, when it had finished,
only rewrites the outputs); a checkpoint with another key is ignored and overwritten. dvc.yaml
declares `state_dir` a `persist` output, which `dvc repro` does not delete before running, so
`medgate run` after a killed run continues from the last finished epoch. A seed ensemble
(`train.ensemble` > 1) trains member i into `state_dir/member-<i>/`, with its own checkpoint there.

Deterministic for a given seed on CPU, across a resume too; GPU kernels may differ slightly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from components.config import TrainConfig, load_params, stage_arguments
from components.data.artifacts import (
    CHECKPOINT_FILE,
    DATASET_FILE,
    HISTORY_FILE,
    TRAINING_FILE,
    WEIGHTS_FILE,
    TrainedModel,
    file_sha256,
)
from components.data.prepared import load_split, read_dataset_info
from components.imports import import_closure, module_name
from components.ml.audio import AudioPreprocessing, SpectrogramAugmentation
from components.ml.distributed import (
    SINGLE,
    Replica,
    global_loss,
    join_process_group,
    leave_process_group,
    under_torchrun,
)
from components.ml.ensemble import combine_members
from components.ml.metrics import score_auc
from components.ml.mixup import mix_batch, mixed_loss
from components.ml.models import ModelSpec, build_model, preprocessing_from_dict, resolve_family, save_model
from components.ml.predictor import class_prior, trained_prior
from components.ml.prefetch import prefetched, worth_a_thread
from components.ml.runtime import keep_freed_memory, predict_probs, resolve_device, set_threads
from components.ml.schedule import one_cycle, plan_within_budget
from components.ml.transforms import BatchAugmentation
from components.ml.weights import WeightAverage, bn_calibration_images, recalibrate_batchnorm


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse class frequency, scaled so that a balanced set gets weight 1 per class."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return counts.sum() / np.maximum(counts, 1) / num_classes


def training_priors(labels: np.ndarray, num_classes: int, cfg: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The training split's class prior and the one the loss trained under (uniform when class-balanced),
    for the model spec: what prior correction moves the predictions between."""
    prior = class_prior(labels, num_classes)
    balanced = cfg.class_balance != "none"
    trained = trained_prior(prior, class_weights(labels, num_classes) if balanced else np.ones(num_classes))
    return tuple(prior.tolist()), tuple(trained.tolist())


def input_key(data_dir: Path, cfg: TrainConfig) -> str:
    """What a checkpoint must match to be resumed: train params, prepared data, training code
    (this module and every project module it imports)."""
    digest = hashlib.sha256(cfg.model_dump_json().encode())
    for name in (DATASET_FILE, "train.npz", "val.npz"):
        digest.update(file_sha256(data_dir / name).encode())
    root = Path(__file__).parents[2]
    for path in sorted(import_closure(root, [module_name(root, Path(__file__))])):  # __name__ is __main__ under -m
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _save_atomically(obj: Any, path: Path) -> None:
    """A kill during the write leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


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


@dataclass(frozen=True)
class _Data:
    """The prepared splits training reads."""

    info: dict[str, Any]
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_bn: np.ndarray  # the images BatchNorm statistics are recomputed over
    x_val: np.ndarray
    y_val: np.ndarray


def _load_data(data_dir: Path, cfg: TrainConfig) -> _Data:
    info = read_dataset_info(data_dir)
    x_train, y_train, _ = load_split(data_dir, "train")
    x_val, y_val, _ = load_split(data_dir, "val")
    return _Data(
        info, tuple(info["class_names"]), tuple(info["input_shape"]), x_train, y_train,
        bn_calibration_images(x_train, cfg.bn_recalibration_images, cfg.seed), x_val, y_val,
    )


@dataclass
class _Run:
    """The objects one training updates step by step; their state is what a checkpoint saves."""

    model: nn.Module
    net: nn.Module  # what the steps run: the model, under DDP and torch.compile where they apply
    eval_model: nn.Module  # what is validated and selected: the model, or a copy holding the EMA weights
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    criterion: nn.CrossEntropyLoss
    criterion_sum: nn.CrossEntropyLoss
    augment: BatchAugmentation | SpectrogramAugmentation
    ema: WeightAverage | None
    shuffle_gen: torch.Generator
    augment_gen: torch.Generator
    weights: np.ndarray  # inverse class frequencies
    steps_per_epoch: int
    epochs_configured: int  # what params ask for (plan_epochs)
    epochs: int  # what the schedule is planned for: epochs_configured, or fewer to fit the time budget


def _build_run(data: _Data, cfg: TrainConfig, device: torch.device, replica: Replica) -> _Run:
    """Network, loss, optimizer, schedule and generators, seeded from `cfg.seed`."""
    torch.manual_seed(cfg.seed)
    num_classes = len(data.class_names)
    preprocessing = preprocessing_from_dict(data.info["preprocessing"])
    audio = isinstance(preprocessing, AudioPreprocessing)
    model = build_model(cfg.model, data.input_shape, num_classes, audio).to(device)
    weights = class_weights(data.y_train, num_classes)
    loss_weights = torch.tensor(weights if cfg.class_balance == "weighted_loss" else np.ones(num_classes), dtype=torch.float32).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    augment_gen = torch.Generator().manual_seed(cfg.seed + 1)
    steps_per_epoch = len(epoch_batches(data.y_train, cfg, weights, torch.Generator().manual_seed(0)))
    epochs = plan_epochs(cfg, steps_per_epoch)
    scheduler = one_cycle(optimizer, cfg.learning_rate, steps_per_epoch * epochs)
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    net = replica.wrap(model, device)
    if device.type == "cuda" and cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return _Run(
        model=model,
        net=net,
        eval_model=build_model(cfg.model, data.input_shape, num_classes, audio).to(device) if ema else model,
        optimizer=optimizer,
        scheduler=scheduler,
        criterion=nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=cfg.label_smoothing),
        criterion_sum=nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=cfg.label_smoothing, reduction="sum"),
        augment=SpectrogramAugmentation(cfg.audio_augment, preprocessing.upper_db - preprocessing.lower_db, augment_gen)
        if audio else BatchAugmentation(cfg.augment, len(data.input_shape) - 1, augment_gen,
                                        clip=getattr(preprocessing, "clip", None) is not None),
        ema=ema,
        shuffle_gen=shuffle_gen,
        augment_gen=augment_gen,
        weights=weights,
        steps_per_epoch=steps_per_epoch,
        epochs_configured=epochs,
        epochs=epochs,
    )


@dataclass
class _Course:
    """How far training got: the history, the best epoch so far and why it stopped."""

    best: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    stale: int = 0  # epochs since the best one
    finished: bool = False
    resumed_from: int = 0
    stopped: str = "epochs"  # epochs | early stopping | time limit
    plan: str = "params"  # why run.epochs: params | budget (re-planned after the first epoch)


def _resume(run: _Run, path: Path, key: str, device: torch.device) -> _Course:
    """The course so far: from the checkpoint at `path` when it has this training's `key` (the run's
    objects then take its state), else a fresh one."""
    course = _Course(best={"auc": -math.inf, "loss": math.inf, "epoch": 0, "weights": _copy_state(run.model)})
    if not path.exists():
        return course
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("key") != key:
        return course
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.shuffle_gen.set_state(saved["shuffle_rng"])
    run.augment_gen.set_state(saved["augment_rng"])
    torch.set_rng_state(saved["torch_rng"])
    run.epochs = int(saved["epochs_planned"])  # the scheduler's state, loaded above, is planned for these
    if run.ema is not None:
        run.ema.state, run.ema.steps = {k: v.to(device) for k, v in saved["ema"].items()}, int(saved["ema_steps"])
    return _Course(
        best=saved["best"], history=saved["history"], stale=int(saved["stale"]), finished=bool(saved["finished"]),
        resumed_from=int(saved["epoch"]), stopped=str(saved["stopped"]), plan=str(saved["plan"]),
    )


def _save_checkpoint(run: _Run, course: _Course, key: str, epoch: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ema = run.ema
    _save_atomically(
        {
            "key": key, "epoch": epoch, "finished": course.finished, "stopped": course.stopped, "stale": course.stale,
            "epochs_planned": run.epochs, "plan": course.plan,
            "history": course.history, "best": course.best,
            "model": _copy_state(run.model), "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "shuffle_rng": run.shuffle_gen.get_state(), "augment_rng": run.augment_gen.get_state(), "torch_rng": torch.get_rng_state(),
            "ema": {k: v.cpu() for k, v in ema.state.items()} if ema else {}, "ema_steps": ema.steps if ema else 0,
        },
        path,
    )


def _train_epoch(run: _Run, data: _Data, cfg: TrainConfig, device: torch.device, replica: Replica) -> tuple[float, int, float]:
    """One pass over the training split. Returns the summed loss, the images trained on and the
    seconds the loop waited for batches (indexed, copied and augmented `cfg.prefetch_batches`
    ahead on a background thread where the step leaves it a core)."""
    run.model.train()
    on_gpu = device.type == "cuda"
    total, seen, data_seconds = 0.0, 0, 0.0

    def make(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        rows = idx.numpy()
        images = run.augment(torch.from_numpy(data.x_train[rows]).to(device, non_blocking=True))
        labels = torch.from_numpy(data.y_train[rows]).to(device, non_blocking=True)
        mixed, partners, lam = mix_batch(images, labels, cfg.mixup_alpha, run.augment_gen)
        return mixed, labels, partners, lam

    depth = worth_a_thread(cfg.prefetch_batches, torch.get_num_threads(), on_gpu)
    for (images, labels, partners, lam), waited in prefetched(make, epoch_batches(data.y_train, cfg, run.weights, run.shuffle_gen), depth):
        data_seconds += waited
        if replica.distributed and len(labels) < 2 * replica.world_size:
            continue  # a slice of one image cannot train BatchNorm
        if replica.distributed:  # every replica drew the same global batch; each trains on its slice
            images = replica.shard(images)
        run.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu and cfg.amp):
            logits = run.net(images)
            loss = mixed_loss(partial(_batch_loss, run, logits, replica), labels, partners, lam)
        loss.backward()
        run.optimizer.step()
        if run.scheduler.last_epoch < run.scheduler.total_steps - 1:  # after the last step: its rate, the schedule's end
            run.scheduler.step()
        if run.ema is not None:
            run.ema.update(run.model)
        total += loss.item() * len(images)
        seen += len(images)
    return total, seen, data_seconds


def _batch_loss(run: _Run, logits: torch.Tensor, replica: Replica, labels: torch.Tensor) -> torch.Tensor:
    """The loss of `logits` against `labels` (the whole global batch's): under torchrun, this replica's
    slice's share of the global batch's weighted mean."""
    if not replica.distributed:
        return run.criterion(logits, labels)
    return global_loss(run.criterion_sum, logits, replica.shard(labels), run.criterion_sum.weight[labels].sum(), replica)


def _validate(run: _Run, data: _Data, device: torch.device) -> tuple[float, float]:
    """Validation loss and AUC of the weights being selected, with BatchNorm statistics recomputed first."""
    if run.ema is not None:
        run.eval_model.load_state_dict(run.ema.state)
    recalibrate_batchnorm(run.eval_model, data.x_bn, device)
    val_probs = predict_probs(run.eval_model, data.x_val, device=device)
    val_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(val_probs).clamp_min(1e-7)), torch.from_numpy(data.y_val)))
    return val_loss, score_auc(data.y_val, val_probs)


def _better(val_auc: float, val_loss: float, best: dict[str, Any], select: str) -> bool:
    """Whether an epoch with these validation figures replaces `best` under `select` (train.select)."""
    if select == "last":
        return True
    if select == "val_loss":
        return val_loss < best["loss"]
    # NaN (one class in val) never counts as better; equal AUC prefers the lower validation loss.
    return val_auc > best["auc"] or (val_auc == best["auc"] and val_loss < best["loss"])


def _select(run: _Run, course: _Course, record: dict[str, float], cfg: TrainConfig, deadline: float, replica: Replica) -> None:
    """Keep the epoch of `record` when it is the best so far, and decide whether training stops."""
    val_auc, val_loss, epoch = record["val_auc"], record["val_loss"], int(record["epoch"])
    if _better(val_auc, val_loss, course.best, cfg.select):
        course.best = {"auc": val_auc, "loss": val_loss, "epoch": epoch, "weights": _copy_state(run.eval_model)}
        course.stale = 0
    else:
        course.stale += 1
    # Not early in the schedule: there the one-cycle learning rate is high and validation AUC noisy.
    if course.stale >= cfg.patience and epoch >= cfg.early_stopping_after * run.epochs:
        course.stopped = "early stopping"
    elif epoch < run.epochs and time.monotonic() > deadline:  # the plan misjudged: a safety net
        course.stopped = "time limit"
    course.finished = replica.agree(epoch == run.epochs or course.stopped != "epochs")


def _plan_budget(run: _Run, course: _Course, cfg: TrainConfig, epoch_seconds: float, seconds_left: float, replica: Replica) -> None:
    """After the first epoch: fewer epochs when the configured ones would overrun `max_minutes`, the
    one-cycle schedule re-planned to end with them (rank 0's clock decides for every replica)."""
    epochs = replica.agree_value(plan_within_budget(run.epochs, 1, epoch_seconds, seconds_left))
    if epochs >= run.epochs:
        return
    run.epochs = epochs
    run.scheduler = one_cycle(run.optimizer, cfg.learning_rate, run.steps_per_epoch * epochs, run.scheduler.last_epoch)
    course.plan = f"budget: {epochs} of {run.epochs_configured} epochs fit in {cfg.max_minutes:g} min at {epoch_seconds:.1f} s per epoch"


def _epoch_record(run: _Run, epoch: int, started: float, trained: tuple[float, int, float, float], validated: tuple[float, float]) -> dict[str, float]:
    """One epoch's history record. `train_seconds` is the batch loop's time and `data_seconds` the part
    of it spent waiting for batches; `seconds`, the whole epoch, is completed after the checkpoint."""
    total, seen, data_seconds, train_seconds = trained
    return {
        "epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": validated[0], "val_auc": validated[1],
        "learning_rate": float(run.scheduler.get_last_lr()[0]), "seconds": time.monotonic() - started,
        "train_seconds": train_seconds, "data_seconds": data_seconds, "images_per_second": seen / max(train_seconds, 1e-9),
    }


def _training_summary(run: _Run, course: _Course, family: str, device: torch.device, threads: int, replica: Replica) -> dict[str, Any]:
    """training.json: totals over the epochs run (this call's and those before a resume)."""
    history = course.history
    train_seconds = sum(h["train_seconds"] for h in history)
    return {
        "family": family,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "epochs_configured": run.epochs_configured,
        "epochs_planned": run.epochs,
        "plan": course.plan,
        "epochs_run": len(history),
        "best_epoch": course.best["epoch"],
        "best_val_auc": course.best["auc"],
        "stopped": course.stopped,
        "resumed_after_epoch": course.resumed_from,
        "seconds": sum(h["seconds"] for h in history),
        "train_seconds": train_seconds,
        "images_per_second": sum(h["images_per_second"] * h["train_seconds"] for h in history) / max(train_seconds, 1e-9),
        "data_fraction": sum(h["data_seconds"] for h in history) / max(train_seconds, 1e-9),  # waiting for batches
        "device": device.type,
        "threads": threads,
        "processes": replica.world_size,
    }


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

    With `cfg.ensemble` > 1, trains a seed ensemble instead (`_train_ensemble`).
    """
    if cfg.ensemble > 1:
        return _train_ensemble(data_dir, cfg, out_dir, state_dir, on_epoch, replica)
    started_wall = time.monotonic()
    threads = set_threads(cfg.num_threads)
    device = resolve_device(cfg.device, "train.device")
    checkpoint_path = (state_dir or out_dir) / CHECKPOINT_FILE
    data = _load_data(data_dir, cfg)
    key = input_key(data_dir, cfg)
    run = _build_run(data, cfg, device, replica)
    course = _resume(run, checkpoint_path, key, device)

    deadline = time.monotonic() + cfg.max_minutes * 60
    columns = [TextColumn("train"), BarColumn(), TextColumn("epoch {task.completed}/{task.total} {task.fields[status]}"), TimeElapsedColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=run.epochs, completed=len(course.history), status="")
        if course.resumed_from and not course.finished:
            progress.console.print(f"train: resuming after epoch {course.resumed_from} from {checkpoint_path}")
        for epoch in range(len(course.history) + 1, run.epochs_configured + 1):
            if course.finished:
                break
            started = time.monotonic()
            trained = (*_train_epoch(run, data, cfg, device, replica), time.monotonic() - started)
            validated = _validate(run, data, device)
            if epoch == 1:
                _plan_budget(run, course, cfg, time.monotonic() - started, deadline - time.monotonic(), replica)
                progress.update(task, total=run.epochs)
            record = _epoch_record(run, epoch, started, trained, validated)
            course.history.append(record)
            _select(run, course, record, cfg, deadline, replica)
            if replica.is_main:
                _save_checkpoint(run, course, key, epoch, checkpoint_path)
            record["seconds"] = time.monotonic() - started  # the whole epoch, its checkpoint included
            progress.update(task, completed=epoch, status=f"loss {record['train_loss']:.3f} val_auc {record['val_auc']:.3f}")
            progress.console.print(
                f"epoch {epoch}/{run.epochs}: loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
                f"val AUC {record['val_auc']:.4f}, {record['images_per_second']:.0f} img/s "
                f"({record['data_seconds'] / max(record['train_seconds'], 1e-9):.0%} waiting for data)",
                soft_wrap=True,
            )
            if on_epoch is not None:
                on_epoch(record)

    if course.best["epoch"] == 0:  # validation AUC never defined (one class in val): keep the last epoch
        course.best = {**course.best, "epoch": len(course.history), "weights": _copy_state(run.eval_model)}
    run.model.load_state_dict(course.best["weights"])
    data_prior, loss_prior = training_priors(data.y_train, len(data.class_names), cfg)
    spec = ModelSpec(cfg.model, data.input_shape, data.class_names, preprocessing_from_dict(data.info["preprocessing"]),
                     class_prior=data_prior, trained_prior=loss_prior)
    family = resolve_family(cfg.model, data.input_shape, spec.audio)
    if replica.is_main:
        save_model(run.model, spec, out_dir)
        (out_dir / HISTORY_FILE).write_text(json.dumps(course.history, indent=2))
        summary = _training_summary(run, course, family, device, threads, replica)
        (out_dir / TRAINING_FILE).write_text(json.dumps({**summary, "this_call_seconds": time.monotonic() - started_wall}, indent=2))
    return TrainedModel(out_dir / WEIGHTS_FILE, family, course.best["epoch"], course.best["auc"])


def _train_ensemble(data_dir: Path, cfg: TrainConfig, out_dir: Path, state_dir: Path | None,
                    on_epoch: Callable[[dict[str, float]], None] | None, replica: Replica) -> TrainedModel:
    """`cfg.ensemble` networks on the same split, seeds `cfg.seed + i`, saved in `out_dir` as one model
    (components.ml.ensemble).

    Member i is trained by `train_model` into `<state_dir>/member-<i>` (its own resumable checkpoint
    there: a member finished before a kill is not trained again) within `max_minutes / ensemble`.
    """
    folders = [(state_dir or out_dir) / f"member-{i}" for i in range(cfg.ensemble)]
    for i, folder in enumerate(folders):
        member = cfg.model_copy(update={"seed": cfg.seed + i, "max_minutes": cfg.max_minutes / cfg.ensemble, "ensemble": 1})
        trained = train_model(data_dir, member, folder, on_epoch=on_epoch, replica=replica)
    val_auc = combine_members(folders, data_dir, out_dir) if replica.is_main else math.nan
    return TrainedModel(out_dir / WEIGHTS_FILE, trained.family, 0, val_auc)


def main() -> None:
    args = stage_arguments(__doc__, ["data"], {"state": "folder of the resumable checkpoint (default: --out)"})
    keep_freed_memory()
    params = load_params(args.params)
    processes = params.orchestration.train_processes
    if processes > 1 and not torch.distributed.is_torchelastic_launched():
        raise SystemExit(under_torchrun(processes, "components.stages.train", sys.argv[1:]))
    replica = join_process_group(resolve_device(params.train.device, "train.device").type)
    try:
        result = train_model(args.data, params.train, args.out, args.state, replica=replica)
    finally:
        leave_process_group()
    if replica.is_main:
        print(f"train: {result.family}, best epoch {result.best_epoch}, validation AUC {result.best_val_auc:.4f}")


if __name__ == "__main__":
    main()
