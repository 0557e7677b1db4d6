"""Training throughput on this machine, as ratios measured in one run (not a test).

1. medgate's training step (`components.stages.train.train_model`: batched augmentation, weighted loss,
   one-cycle schedule, validation and a checkpoint every epoch) against a bare PyTorch loop on
   the same network, data and batch size (no augmentation, no validation, no checkpoint), with
   `data_fraction` (training.json: the share of the batch loop's time spent waiting for a batch).
   Cases: PneumoniaMNIST at 28x28, and AdrenalMNIST3D upsampled (trilinear) from the 28^3 release
   to 64^3 (the 64^3 release is not in ../shared/data) on `--share-3d` of its training split, the
   validation split and the BatchNorm recalibration images cut by the same share so that an
   epoch keeps a full run's proportions.
2. The data path: MONAI's per-image random transforms through a DataLoader (0 and 2 workers)
   against `BatchAugmentation` on the batch tensor, images/s of augmentation alone (first case).
3. OpenMP waiting: the bare loop in fresh processes with OMP_WAIT_POLICY active or passive, 1 or 2
   threads. The policy is read when the OpenMP runtime loads, hence the separate processes.
4. glibc's malloc (last case): the bare loop in fresh processes with freed memory kept for reuse, as
   medgate's train and evaluate stages run (`components.ml.runtime.keep_freed_memory`), and with glibc's
   defaults, which map and fault in afresh each block above 32 MiB: images/s, page faults, peak memory.

The CPU of a shared machine is noisy: every figure is the median of `--repeats` interleaved runs.

Measured 2026-12-05, idle 2-core machine, 3 repeats (issue 18's targets: whole epochs at least 0.85 of the bare
loop, at most 15% of an epoch waiting for batches):

    28x28: step 0.97, whole epochs 0.94, data_fraction 0.03 (2 threads)
    64^3: step 0.83, whole epochs 0.77, data_fraction 0.14 (2 threads; batches made in the step's thread,
        as components.ml.prefetch.worth_a_thread decides: with the worker thread beside it 0.76 / 0.71)
        step 0.91, whole epochs 0.84, data_fraction 0.05 (train.num_threads=1, the worker on the other core)
        without augmentation (train.augment.enabled=false), 2 threads: step 1.02, whole epochs 0.94
    augmenting a batch of 64 volumes at 64^3 costs 124 ms of CPU (74 ms on 2 threads: resampling 36, depth 20,
        noise 12) against 443 ms for the step on 2 threads: with every core in the step, that cost cannot hide
        behind it, and with validation (6-8% of an epoch) it bounds whole epochs near 0.80 of the bare loop.
    64^3 again (`--case 64 --ratios-only`, idle, 2026-12-05, later): step 0.81, whole epochs 0.76, data_fraction 0.13.
    4. kept: 121-139 images/s, 0.4 million page faults, peak 2.07 GiB; glibc's defaults: 67-83 images/s,
        3.6 million, 1.91 GiB: 1.7-1.8x the speed for 8% more memory.

    python benchmarks/throughput.py [--data data/prepare | --case all|28|64] [--epochs 2] [--repeats 3] [--ratios-only]

Without --data it runs the MedMNIST cases from ../shared/data (`--case 28` or `--case 64`: one of them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from components.config import TrainConfig

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


def bare_loop(images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, input_shape: tuple[int, ...], epochs: int) -> float:
    """Images/s of a plain PyTorch training loop: shuffled batches, cross-entropy, AdamW."""
    import torch
    from torch import nn

    from components.ml.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, input_shape, int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()
    seen, started = 0, time.monotonic()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(cfg.batch_size):
            if len(idx) < 2:
                continue
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            seen += len(idx)
    return seen / (time.monotonic() - started)


def medgate_step(data_dir: Path, cfg: TrainConfig, epochs: int) -> dict[str, float]:
    """Images/s of `train_model`: of its batch loop, and of whole epochs (validation and checkpoint included)."""
    from components.data.artifacts import TRAINING_FILE
    from components.stages.train import train_model

    with tempfile.TemporaryDirectory() as tmp:
        fixed = cfg.model_copy(update={"epochs": epochs, "patience": epochs + 1})
        train_model(data_dir, fixed, Path(tmp) / "train", Path(tmp) / "state")
        history = json.loads((Path(tmp) / "train" / "history.json").read_text())
        training = json.loads((Path(tmp) / "train" / TRAINING_FILE).read_text())
    images = sum(h["images_per_second"] * h["train_seconds"] for h in history)
    return {"step": training["images_per_second"], "epoch": images / sum(h["seconds"] for h in history),
            "data_fraction": training["data_fraction"]}


def compare_with_bare_loop(data_dir: Path, cfg: TrainConfig, epochs: int = 2, repeats: int = 3) -> dict[str, float]:
    """Median images/s of medgate's training step and of a bare loop, interleaved, and their ratio."""
    from components.data.prepared import load_split, read_dataset_info
    from components.ml.runtime import set_threads

    info = read_dataset_info(data_dir)
    images, labels, _ = load_split(data_dir, "train")
    threads = set_threads(cfg.num_threads)
    medgate, medgate_epoch, data_fraction, bare = [], [], [], []
    for _ in range(repeats):
        result = medgate_step(data_dir, cfg, epochs)
        medgate.append(result["step"])
        medgate_epoch.append(result["epoch"])
        data_fraction.append(result["data_fraction"])
        set_threads(cfg.num_threads)
        bare.append(bare_loop(images, labels, cfg, tuple(info["input_shape"]), epochs))
    m, e, b = statistics.median(medgate), statistics.median(medgate_epoch), statistics.median(bare)
    return {"medgate_images_per_second": m, "medgate_epoch_images_per_second": e, "bare_images_per_second": b,
            "ratio": m / b, "epoch_ratio": e / b, "data_fraction": statistics.median(data_fraction),
            "threads": threads, "batch_size": cfg.batch_size}


def _monai_per_image(cfg: TrainConfig, spatial_dims: int):
    """The same kinds of random change as BatchAugmentation, as MONAI array transforms on one image."""
    from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandFlip, RandGaussianNoise

    a = cfg.augment
    return Compose([
        RandAffine(prob=a.affine_probability, rotate_range=(np.radians(a.rotate_degrees),) if spatial_dims == 2 else (np.radians(a.rotate_degrees), 0, 0),
                   scale_range=a.zoom, translate_range=a.translate, padding_mode="border"),
        *[RandFlip(prob=0.5, spatial_axis=axis % spatial_dims) for axis in a.flip_axes],
        RandAdjustContrast(prob=1.0, gamma=(1 - a.contrast, 1 + a.contrast)),
        RandGaussianNoise(prob=a.noise_probability, std=a.noise_std),
    ])


def augmentation_paths(images: np.ndarray, cfg: TrainConfig, max_images: int = 2048) -> dict[str, float]:
    """Images/s of augmentation alone: MONAI per image in a DataLoader (0 and 2 workers) and batched."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from components.ml.transforms import BatchAugmentation

    images = images[:max_images]
    spatial_dims = images.ndim - 2
    per_image = _monai_per_image(cfg, spatial_dims)

    class Augmented(Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.as_tensor(per_image(torch.from_numpy(images[i])))

    out: dict[str, float] = {}
    for workers in (0, 2):
        loader = DataLoader(Augmented(), batch_size=cfg.batch_size, num_workers=workers)
        started = time.monotonic()
        for _ in loader:
            pass
        out[f"monai_per_image_{workers}_workers"] = len(images) / (time.monotonic() - started)
    batched = BatchAugmentation(cfg.augment, spatial_dims, torch.Generator().manual_seed(0))
    x = torch.from_numpy(images)
    started = time.monotonic()
    for idx in torch.arange(len(x)).split(cfg.batch_size):
        batched(x[idx])
    out["batched"] = len(images) / (time.monotonic() - started)
    return out


def _bare_in_fresh_process(data: Path, epochs: int, threads: int, policy: str, *flags: str) -> tuple[float, int, int]:
    """The bare loop run by this script in a new process: (images/s, minor page faults, peak resident KiB)."""
    cmd = [sys.executable, __file__, "--bare-only", "--threads", str(threads), "--epochs", str(epochs), "--data", str(data), *flags]
    result = subprocess.run(cmd, env={**os.environ, "OMP_WAIT_POLICY": policy}, capture_output=True, text=True, cwd=PROJECT, check=True)
    rate, faults, peak = result.stdout.split()[-3:]
    return float(rate), int(faults), int(peak)


def openmp_policies(data: Path, epochs: int) -> dict[str, float]:
    """The bare loop's images/s per OMP_WAIT_POLICY and thread count, each in a fresh process."""
    return {f"{policy.lower()}_{threads}_threads": _bare_in_fresh_process(data, epochs, threads, policy)[0]
            for policy in ("ACTIVE", "PASSIVE") for threads in (1, 2)}


def allocator(data: Path, epochs: int, repeats: int) -> dict[str, tuple[float, int, int]]:
    """The bare loop (every core) with freed memory kept, as medgate's stages run, and with glibc's defaults,
    in fresh processes, interleaved: the medians of images/s, minor page faults and peak resident KiB."""
    runs: dict[str, list[tuple[float, int, int]]] = {"kept (medgate's stages)": [], "glibc's defaults": []}
    for _ in range(repeats):
        for name, flags in zip(runs, ((), ("--glibc-default-malloc",))):
            runs[name].append(_bare_in_fresh_process(data, epochs, 0, "PASSIVE", *flags))
    return {name: tuple(statistics.median(column) for column in zip(*values)) for name, values in runs.items()}  # type: ignore[misc]


def _prepared_from_npz(npz: Path, out_dir: Path, size: int = 0, share: float = 1.0) -> Path:
    """A prepared-dataset folder (the layout components.stages.prepare writes) from a MedMNIST file:
    the first `share` of each split, resized (bilinear or trilinear) to `size` pixels a side when given."""
    import pandas as pd
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    with np.load(npz) as raw:
        for split in ("train", "val", "test"):
            count = max(2, round(len(raw[f"{split}_labels"]) * share))
            x = raw[f"{split}_images"][:count].astype(np.float32)[:, None] / 255.0
            y = raw[f"{split}_labels"][:count, 0].astype(np.int64)
            if size:
                mode = "trilinear" if x.ndim == 5 else "bilinear"
                x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size,) * (x.ndim - 2), mode=mode, align_corners=False).numpy()
            np.savez(out_dir / f"{split}.npz", images=x, labels=y)
            ids = [f"{split}-{i}" for i in range(len(y))]
            pd.DataFrame({"image_id": ids, "patient_id": ids, "label": y.astype(str), "path": ""}).to_csv(out_dir / f"{split}.csv", index=False)
    shape = list(x.shape[1:])
    classes = [str(c) for c in range(int(y.max()) + 1)]
    preprocessing = {"spatial_size": shape[1:], "channels": shape[0], "lower": 0.0, "upper": 255.0}
    (out_dir / "dataset.json").write_text(json.dumps({"class_names": classes, "input_shape": shape, "preprocessing": preprocessing}))
    return out_dir


def _cases(args: argparse.Namespace, tmp: Path, cfg: TrainConfig) -> list[tuple[str, Path, TrainConfig]]:
    """(name, prepared folder, train params) per case: --data alone, or the two MedMNIST cases."""
    if args.data:
        return [(Path(args.data).name, Path(args.data), cfg)]
    share = args.share_3d
    recalibration = max(1, round(cfg.bn_recalibration_images * share)) if cfg.bn_recalibration_images else 0
    cases = []
    if args.case in ("all", "28"):
        cases.append(("PneumoniaMNIST 28x28", _prepared_from_npz(SHARED_DATA / "pneumoniamnist.npz", tmp / "28"), cfg))
    if args.case in ("all", "64"):
        cases.append((f"AdrenalMNIST3D 64^3 ({share:.0%} of it)", _prepared_from_npz(SHARED_DATA / "adrenalmnist3d.npz", tmp / "64", 64, share),
                      cfg.model_copy(update={"bn_recalibration_images": recalibration})))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="a prepared dataset folder (default: the PneumoniaMNIST and AdrenalMNIST3D cases)")
    parser.add_argument("--params", type=Path, default=PROJECT / "params.yaml")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", choices=["all", "28", "64"], default="all", help="without --data: which MedMNIST case(s)")
    parser.add_argument("--share-3d", type=float, default=0.33, help="share of AdrenalMNIST3D's splits in the 64^3 case")
    parser.add_argument("--ratios-only", action="store_true", help="only part 1 (the ratios to the bare loop)")
    parser.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--glibc-default-malloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # As in the dvc.yaml stages; only takes effect before torch loads the OpenMP runtime, below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from components.config import load_params
    from components.data.prepared import load_split, read_dataset_info
    from components.ml.runtime import keep_freed_memory, set_threads

    if not args.glibc_default_malloc:
        keep_freed_memory()  # as the train stage's process does, for both loops: the comparison is of the loops
    cfg = load_params(args.params).train
    with tempfile.TemporaryDirectory() as tmp:
        if args.bare_only:
            data_dir = Path(args.data)
            set_threads(args.threads)
            images, labels, _ = load_split(data_dir, "train")
            subset = slice(0, 1024)  # enough batches for a steady rate; the active policy can be very slow
            rate = bare_loop(images[subset], labels[subset], cfg, tuple(read_dataset_info(data_dir)["input_shape"]), args.epochs)
            # VmHWM, not ru_maxrss: a forked child starts with its parent's maximum.
            peak = next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
            print(rate, resource.getrusage(resource.RUSAGE_SELF).ru_minflt, peak)
            return
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the CPU is shared: compare ratios, not absolutes)")
        cases = _cases(args, Path(tmp), cfg)
        for name, data_dir, case_cfg in cases:
            images, _, _ = load_split(data_dir, "train")
            print(f"\n1. {name}: {len(images)} training images of shape {images.shape[1:]}, batch {case_cfg.batch_size}, "
                  f"{args.epochs} epochs x {args.repeats} repeats")
            step = compare_with_bare_loop(data_dir, case_cfg, args.epochs, args.repeats)
            print(f"   training step, images/s ({step['threads']} threads):")
            print(f"   bare PyTorch loop          {step['bare_images_per_second']:8.1f}")
            print(f"   medgate train step         {step['medgate_images_per_second']:8.1f}   ratio {step['ratio']:.2f}")
            print(f"   medgate whole epochs       {step['medgate_epoch_images_per_second']:8.1f}   ratio {step['epoch_ratio']:.2f} (with validation and checkpoint)")
            print(f"   data_fraction              {step['data_fraction']:8.2f}   (share of the batch loop spent waiting for a batch)")
        if args.ratios_only:
            return
        name, data_dir, case_cfg = cases[0]
        images, _, _ = load_split(data_dir, "train")
        aug = augmentation_paths(images, case_cfg)
        print(f"\n2. augmentation alone ({name}), images/s:")
        for label, value in aug.items():
            print(f"   {label:28s} {value:8.0f}")
        print(f"\n3. OpenMP wait policy, bare loop images/s ({name}, fresh processes):")
        for label, value in openmp_policies(data_dir, args.epochs).items():
            print(f"   {label:28s} {value:8.0f}")
        name, data_dir, _ = cases[-1]
        print(f"\n4. freed memory kept or given back (glibc's malloc), bare loop ({name}, fresh processes, {args.repeats} repeats):")
        for label, (rate, faults, peak) in allocator(data_dir, args.epochs, args.repeats).items():
            print(f"   {label:28s} {rate:8.1f} images/s  {faults / 1e3:8.0f}k page faults  peak {peak / 1024:6.0f} MiB")
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
