"""COVID-BLUES lung-ultrasound clips through medgate's stages, patient-level 5-fold CV (a benchmark, not a test).

Data: ../shared/data/covid-blues (362 MP4 clips of 63 patients; labels.csv: PCR per patient,
labels_severity.csv: severity 0-3 per clip). Tasks:

* ``pcr``: labels.csv; clip AUC, and patient accuracy with the mean of a patient's clip scores;
* ``severity01``: severity 0 against 1-3 (a labels file derived from labels_severity.csv); clip AUC;
* ``severity4``: the four severity classes; macro AUC.

Each clip is ingested once per task (ingest.video: frames x size), then for each fold the manifest's
split column is set (test: the fold's patients; val: a seeded 15% of the other patients; train: the
rest) and prepare, train and evaluate run as their stages do, once per model family (``--families``;
``frame_cnn`` is the frame-averaged 2D baseline every temporal model is measured against). Printed:
mean +- sd over folds per task and family, train seconds per fold, and the paper's figures.

Resumable: each fold's metrics are appended to ``results.jsonl`` in ``--workdir`` as it finishes, and a
second call with the same workdir skips what is there (a task's ingest too), so the whole run (hours
on this CPU) can be taken in parts; ``--summary-only`` prints the table of what is there.

First, ``--throughput``: ingest's decoding and sampling (components.readers) against a bare PyAV
decode loop over the same files, frames per second, in the same run.

    python benchmarks/video.py [--tasks pcr severity01 severity4] [--families frame_cnn cnn_rnn resnet3d]
        [--folds 5] [--only-folds 0 1 2] [--workdir DIR] [--set train.max_epochs=20 ...] [--throughput-only] [--summary-only]

The CPU of this machine is shared with other work: the load average is printed with the figures.

The settings of the figures reported on issue 13 (112 px frames: at 64 px the B-lines and the pleural line are
a pixel or two; the last epoch kept, since a validation split of about 8 patients picks lucky early epochs):

    python benchmarks/video.py --tasks severity01 pcr --families resnet3d frame_cnn --workdir DIR --set
        train.epochs=40 train.batch_size=16 train.num_threads=1 train.select=last ingest.video.size=112 prepare.max_size=112

Severity 0 against 1-3 with `train.model.input_norm=instance` added (each clip standardised by the network, so
the gain an operator set for a patient is not a feature), 5 folds, 2026-12-05, load 2-4: resnet3d clip AUC
0.650 +- 0.128 (without: 0.599 +- 0.149), frame_cnn 0.632 +- 0.081 (without: 0.614 +- 0.114); for PCR, whose
label is the patient's, it costs: resnet3d 0.629 +- 0.095, patient accuracy 0.506 (without: 0.663, 0.665).
The four severity classes (``--tasks severity4``, same settings with input_norm=instance), 5 folds, 2026-12-05,
load 1.4-4: macro AUC resnet3d 0.554 +- 0.067 (folds 0.527 0.543 0.651 0.578 0.469, 190-350 s a fold), frame_cnn
0.535 +- 0.029 (0.526 0.532 0.550 0.573 0.494, 574-797 s beside other jobs; fold 4's 1601 s includes 996 s
paused); in 9 of the 10 trainings validation loss ends above its value at epoch 16 (overfitting). Against it,
severity 0 against 1-3 with `train.mixup_alpha=0.4` added: resnet3d 0.657 +- 0.097 (folds 0.823 0.570 0.617
0.649 0.625, 230 s a fold, load 1-2), no better than without it (0.650); with test-time flips on the same models
0.654 +- 0.084; with train.epochs=16 instead of 40 0.567 +- 0.078; with train.weight_decay=0.05 (AdamW) 0.641 +-
0.110.
A seed ensemble on top of the mixup settings (`train.ensemble=3`: seeds 0-2, probabilities averaged; with
train.num_threads=2 and train.max_minutes=90, so that a pause cannot cut a member short), 5 folds, 2026-12-05, load
2-3: resnet3d 0.637 +- 0.101 (folds 0.805 0.570 0.567 0.656 0.586, 442-480 s a fold, fold 0 698 s with a pause
and other jobs running; one network 0.657), its members alone 0.643, 0.642 and 0.606: no gain, the spread stays.
At 160 px instead of 112 (`ingest.video.size=160 prepare.max_size=160`, one network, train.num_threads=2, the
stages' memory kept for reuse), 5 folds, 2026-12-05, idle: resnet3d 0.641 +- 0.095 (folds 0.765 0.580 0.561 0.723
0.579), 222-237 s a fold for twice the pixels of the 112 px runs' 230 s: more detail does not lift it either.
The 112 px mixup settings with train.num_threads=2, idle, 2026-12-05: 0.662 +- 0.090 (0.810 0.588 0.595 0.643 0.673),
103-105 s a fold; with clip augmentation in-plane only (time moved by whole frames, no longer zoomed or shifted by
part of a frame, which blended neighbouring frames): 0.663 +- 0.081 (0.773 0.548 0.647 0.656 0.693), 101-105 s;
with 32 frames a clip instead of 16 (ingest.video.frames=32): 0.628 +- 0.059 (0.673 0.552 0.616 0.700 0.598), 212-222 s.
On the same 112 px mixup settings, 2 threads, nothing else running (but a minute of tests in fold 0 of the first): the CNN+GRU (`--families cnn_rnn`) 0.626 +- 0.087 (0.763
0.569 0.539 0.648 0.612), 260-296 s a fold; resnet3d with EMA weights (train.ema_decay=0.99: weights averaged over
about the last 100 steps, some 6 epochs) 0.651 +- 0.079 (0.750 0.558 0.617 0.715 0.617), 110-134 s.

A sweep on a GPU lent for one session (an H100, 2026-12-05; the same prepare, train and evaluate stages and the same
folds, train.amp=false and train.compile=false so that the arithmetic is float32 as here; six trainings at once,
about 20 s a fold): the 112 px mixup settings gave 0.655 +- 0.090 there (here 0.662), and no change reached 0.70:
dropout 0.3 0.669, ResNet-18 instead of 10 0.667, stronger in-plane augmentation 0.657, no mixup 0.658, width 8
0.644, width 32 0.644, class-balanced batches 0.652, 80 epochs 0.649, AdamW 0.05 with 80 epochs 0.656,
learning rate 0.001 0.647, label smoothing 0.1 0.638, input_norm none 0.614, the CNN+GRU 0.618, the frame CNN 0.615;
trained on the four severity classes and scored 1 - P(severity 0): 0.605 (with label smoothing 0.618, 80 epochs
0.619). The mean of the 13 resnet3d variants' probabilities: 0.664 (0.817 0.589 0.604 0.711 0.599). On another
patient split (fold seed 99 instead of 13) the 112 px settings gave 0.658 +- 0.066: the ceiling is not the split's.
The classical baseline (components/stages/baseline.py, gradient boosting on radiomics-style features of the same
112 px clips, here) gave 0.476 +- 0.112. With networks trained from scratch on 63 patients the task sits near 0.66;
the paper's higher figures come from image models pretrained elsewhere, which cannot be fetched here (offline).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PROJECT = Path(__file__).resolve().parents[1]
DATA = PROJECT.parent / "shared" / "data" / "covid-blues"
sys.path.insert(0, str(PROJECT))

from components.config import load_params, merged  # noqa: E402 - after the path is set
from components.ml.runtime import keep_freed_memory  # noqa: E402

PAPER = ("paper (Wiedemann et al., IEEE JBHI 2025): up to 0.79 accuracy with targeted training of its image "
         "models; 0.65 for models trained only on other datasets")
SALT = "benchmark-salt"


def throughput(files: list[Path], spec: Any, limits: Any) -> dict[str, float]:
    """Frames per second: a bare PyAV decode of every frame, and medgate's reader (decode + sample + resize)
    within ingest's decode `limits`."""
    import av

    from components.readers import decode

    started, frames = time.perf_counter(), 0
    for path in files:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames += sum(1 for _ in container.decode(stream))
    bare = frames / (time.perf_counter() - started)
    started = time.perf_counter()
    for path in files:
        decode(path.read_bytes(), SALT, limits, clip=spec)
    ours = frames / (time.perf_counter() - started)
    return {"frames": frames, "bare_fps": bare, "medgate_fps": ours, "ratio": ours / bare}


def task_source(task: str, root: Path) -> Path:
    """A folder holding the task's labels.csv beside a link to the clips (the shared data stays read-only)."""
    folder = root / f"source-{task}"
    (folder / "lus_videos").mkdir(parents=True, exist_ok=True)
    for clip in (DATA / "lus_videos").glob("*.mp4"):  # file links: ingest walks real folders only
        if not (folder / "lus_videos" / clip.name).exists():
            (folder / "lus_videos" / clip.name).symlink_to(clip)
    with open(DATA / ("labels.csv" if task == "pcr" else "labels_severity.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if task == "severity01":
            row["label"] = "severity_0" if row["label"] == "severity_0" else "severity_1-3"
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "patient_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder


def fold_manifests(manifest_path: Path, folds: int, seed: int) -> list[Path]:
    """One manifest per fold beside `manifest_path`, its split column set by patient."""
    import pandas as pd

    manifest = pd.read_parquet(manifest_path)
    patients = np.array(sorted(manifest["patient_id"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    out = []
    for k, test in enumerate(np.array_split(patients, folds)):
        rest = np.array([p for p in patients if p not in set(test)])
        val = set(rng.choice(rest, size=max(2, round(0.15 * len(rest))), replace=False))
        split = manifest["patient_id"].map(lambda p, t=set(test), v=val: "test" if p in t else "val" if p in v else "train")
        path = manifest_path.with_name(f"manifest-fold{k}.parquet")
        fold = manifest.assign(split=split.astype("string"))
        fold.attrs = manifest.attrs
        fold.to_parquet(path, index=False)
        out.append(path)
    return out


def run_fold(manifest: Path, params: Any, family: str, out: Path) -> dict[str, float]:
    from components.stages.evaluate import evaluate_model
    from components.stages.prepare import prepare_dataset
    from components.stages.train import train_model

    data = out / "prepare"
    if not (data / "dataset.json").exists():
        prepare_dataset(manifest, params.prepare, data)
    train_cfg = params.train.model_copy(update={"model": params.train.model.model_copy(update={"family": family})})
    started = time.monotonic()
    train_model(data, train_cfg, out / family / "train")
    seconds = time.monotonic() - started
    report = evaluate_model(data, out / family / "train", params.evaluate, out / family / "evaluate")
    train_auc = json.loads((out / family / "train" / "training.json").read_text()).get("train_auc")
    return {**report.metrics, "train_seconds": seconds, **({"train_auc": train_auc} if train_auc is not None else {})}


RESULTS = "results.jsonl"


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def read_results(path: Path) -> dict[str, dict[str, list[dict[str, float]]]]:
    """results.jsonl as task -> family -> each fold's metrics, in fold order."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for record in sorted(_records(path), key=lambda r: r["fold"]):
        results.setdefault(record["task"], {}).setdefault(record["family"], []).append(record["metrics"])
    return results


def summarise(results: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    keys = ("auc", "patient_auc", "patient_accuracy", "accuracy", "train_seconds")
    print(f"\n{'task':<12}{'family':<11}" + "".join(f"{k:>20}" for k in keys))
    for task, by_family in results.items():
        for family, folds in by_family.items():
            cells = []
            for key in keys:
                values = [f[key] for f in folds if key in f and f[key] == f[key]]
                cells.append(f"{statistics.mean(values):.3f} +- {statistics.stdev(values) if len(values) > 1 else 0:.3f}"
                             if values else "-")
            per_fold = " ".join(f"{f['auc']:.3f}" for f in folds)
            print(f"{task:<12}{family:<11}" + "".join(f"{c:>20}" for c in cells) + f"   folds' auc: {per_fold}")
    print(f"\n{PAPER}\nload average {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["pcr", "severity01", "severity4"])
    parser.add_argument("--families", nargs="+", default=["frame_cnn", "cnn_rnn", "resnet3d"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", nargs="+", type=int, default=None, help="run these folds (0-based) only, e.g. for screening")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="params overrides, e.g. train.max_epochs=20")
    parser.add_argument("--throughput-files", type=int, default=40)
    parser.add_argument("--throughput-only", action="store_true")
    parser.add_argument("--summary-only", action="store_true", help="print the table of --workdir's results.jsonl")
    args = parser.parse_args()
    keep_freed_memory()  # as the train and evaluate stages' processes do
    if args.summary_only:
        summarise(read_results(args.workdir / RESULTS))
        return
    if not DATA.is_dir():
        sys.exit(f"{DATA}: not found; this benchmark needs the COVID-BLUES clips there")
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        *path, leaf = key.split(".")
        node = overrides
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    params = load_params(PROJECT / "params.yaml")
    # COVID-BLUES is a public research release without names or direct identifiers (its PROVENANCE.md):
    # its MP4 clips' risk of burned-in text is accepted, as a dataset's params.yaml would (`--set` can change it).
    params = type(params).model_validate(merged(params.model_dump(by_alias=True),
                                                merged({"ingest": {"accept_burned_in_risk": ["VIDEO"]}}, overrides)))

    from components.readers import ClipSpec, DecodeLimits
    from components.stages.ingest import ingest_source

    spec = ClipSpec.from_dict(params.ingest.video.model_dump())
    files = sorted((DATA / "lus_videos").glob("*.mp4"))[: args.throughput_files]
    print("throughput:", json.dumps({k: round(v, 3) for k, v in throughput(files, spec, DecodeLimits(**params.ingest.limits.model_dump())).items()}))
    if args.throughput_only:
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="medgate-video-"))
    root.mkdir(parents=True, exist_ok=True)
    done = {(r["task"], r["fold"], r["family"]) for r in _records(root / RESULTS)}
    for task in args.tasks:
        manifest = root / f"ingest-{task}" / "manifest.parquet"
        if not manifest.exists():
            manifest = ingest_source(task_source(task, root), root / f"ingest-{task}", params.ingest, SALT).manifest
        for k, fold_manifest in enumerate(fold_manifests(manifest, args.folds, params.prepare.seed)):
            for family in args.families:
                if (task, k, family) in done or (args.only_folds is not None and k not in args.only_folds):
                    continue
                metrics = run_fold(fold_manifest, params, family, root / f"{task}-fold{k}")
                with open(root / RESULTS, "a") as f:
                    f.write(json.dumps({"task": task, "fold": k, "family": family, "metrics": metrics}) + "\n")
                print(f"{task} fold {k} {family}: auc {metrics['auc']:.3f} "
                      f"patient_acc {metrics.get('patient_accuracy', float('nan')):.3f} {metrics['train_seconds']:.0f} s",
                      flush=True)
    summarise(read_results(root / RESULTS))


if __name__ == "__main__":
    main()
