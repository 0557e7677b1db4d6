"""PhysioNet/CinC 2016 heart sounds through the pipeline's stages, beside the classical baseline (a benchmark, not a test).

For each seed, ../shared/data/physionet2016 gets a record-level 70/15/15 split stratified by label and
site (a ``split`` column in a copy of its labels.csv; each recording is linked, not copied); then the
stage functions the flow runs: ingest (recordings resampled to ``ingest.audio.sample_rate``), prepare
(band-pass 25-400 Hz, log-mel windows over that band), train, baseline (MFCC statistics, gradient boosting) and
evaluate (per recording: the mean of its windows' scores; threshold chosen on validation). With
``--leave-site-out`` each site is also held out once as the test split.

Printed: per seed and the mean and spread over seeds of test AUC, MAcc, sensitivity and specificity of
the network and the baseline, the threshold, training seconds, and the issue's minimums; ingest
throughput against a bare ``soundfile.read`` loop over the same files, and against a loop that also
hashes and stores each recording (what any intake must do). The CPU is shared with other
work: the load average is printed with the figures.

    python benchmarks/audio.py [--seeds 3] [--workdir DIR] [--set train.max_epochs=20 ...] [--leave-site-out]
    python benchmarks/audio.py --intake-only 5 [--set ingest.audio.sample_rate=4000] [--set ingest.workers=1]

``--intake-only`` times ingest alone against those loops and one that also resamples to the stored
rate, in interleaved rounds (medians), without training.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROJECT = Path(__file__).resolve().parents[1]
DATA = PROJECT.parent / "shared" / "data" / "physionet2016"
sys.path.insert(0, str(PROJECT))

from components.config import default_params, merged  # noqa: E402 - after the path is set
from components.ml.runtime import keep_freed_memory  # noqa: E402

MINIMUMS = {"auc": 0.87, "macc": 0.80}
# Heart sounds at the recordings' own 2 kHz (nothing to resample), band-passed to 25-400 Hz with the mel
# filters over that band only; 128 ms STFT frames (7.8 Hz bins) every 32 ms, 5 s windows.
HEART = {"ingest": {"audio": {"sample_rate": 2000}},
         "prepare": {"audio": {"band_low_hz": 25.0, "band_high_hz": 400.0, "window_s": 5.0, "hop_s": 2.5,
                               "n_fft": 256, "hop_length": 64}}}
SHOWN = ("auc", "macc", "sensitivity", "specificity", "operating_threshold")


def split_labels(labels: pd.DataFrame, seed: int, test_site: str | None) -> pd.DataFrame:
    """labels.csv with a ``split``: 70/15/15 stratified by label and site, or `test_site` as test."""
    from sklearn.model_selection import train_test_split

    out = labels.copy()
    strata = out["label"] + "/" + out["site"]
    if test_site is not None:
        rest = out.index[out["site"] != test_site]
        train, val = train_test_split(rest, test_size=0.15, stratify=strata[rest], random_state=seed)
        out["split"] = "test"
        out.loc[train, "split"], out.loc[val, "split"] = "train", "val"
        return out
    train, other = train_test_split(out.index, test_size=0.30, stratify=strata, random_state=seed)
    val, test = train_test_split(other, test_size=0.5, stratify=strata[other], random_state=seed)
    out.loc[train, "split"], out.loc[val, "split"], out.loc[test, "split"] = "train", "val", "test"
    return out


def linked_source(src: Path, labels: pd.DataFrame) -> Path:
    """A source folder at `src` whose recordings link to the data set's (ingest walks real folders only)."""
    (src / "audio").mkdir(parents=True, exist_ok=True)
    for rel in labels["path"]:
        if not (src / rel).exists():
            (src / rel).symlink_to(DATA / rel)
    labels[[c for c in ("path", "label", "site", "split") if c in labels]].to_csv(src / "labels.csv", index=False)
    return src


def run_once(work: Path, labels: pd.DataFrame, params: Any, seed: int) -> dict[str, float]:
    from components.stages.baseline import train_baseline
    from components.stages.evaluate import evaluate_model
    from components.stages.ingest import ingest_source
    from components.stages.prepare import prepare_dataset
    from components.stages.train import train_model

    src = linked_source(work / "source", labels)
    started = time.monotonic()
    dataset = ingest_source(src, work / "ingest", params.ingest, "benchmark-salt")
    ingest_s = time.monotonic() - started
    prepare_dataset(dataset.manifest, params.prepare, work / "prepare")
    started = time.monotonic()
    train_model(work / "prepare", params.train.model_copy(update={"seed": seed}), work / "train")
    train_s = time.monotonic() - started
    base = train_baseline(work / "prepare", params.baseline, (params.evaluate.operating_point,
                                                             params.evaluate.target_sensitivity), work / "baseline")
    report = evaluate_model(work / "prepare", work / "train", params.evaluate, work / "evaluate", work / "baseline")
    base["macc"] = (base["sensitivity"] + base["specificity"]) / 2
    return {**{k: report.metrics[k] for k in SHOWN}, **{f"baseline_{k}": base[k] for k in SHOWN},
            "train_s": train_s, "ingest_s": ingest_s}


def bare_read_seconds(paths: list[Path]) -> float:
    import soundfile

    started = time.monotonic()
    for p in paths:
        soundfile.read(p, dtype="float32")
    return time.monotonic() - started


def bare_store_seconds(paths: list[Path], out: Path) -> float:
    """A loop doing the least any intake does with a recording: read it, hash it, store its samples
    (one uncompressed zip member each, as ingest's shards). Reading 16-bit PCM costs about one copy of
    the samples, so against the bare read loop alone any stored copy or hash is a large share."""
    import hashlib
    import zipfile

    import soundfile

    started = time.monotonic()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as shard:
        for p in paths:
            data = p.read_bytes()
            samples, _ = soundfile.read(io.BytesIO(data), dtype="float32")
            with shard.open(f"{hashlib.sha256(data).hexdigest()}.npy", "w") as f:
                np.lib.format.write_array(f, samples, allow_pickle=False)
    return time.monotonic() - started


def bare_intake_seconds(paths: list[Path], out: Path | None, rate: int) -> float:
    """What any intake that stores samples at one rate under a content hash must do: read, resample to
    `rate` (as ingest: scipy's polyphase filter, when the rates differ), hash the stored float32
    samples (ingest's content hash is of what it stores), store them (one zip member each); with no
    `out`, only read and resample."""
    import hashlib
    import zipfile

    import soundfile
    from scipy.signal import resample_poly

    started = time.monotonic()
    with zipfile.ZipFile(out or io.BytesIO(), "w", zipfile.ZIP_STORED) as shard:
        for p in paths:
            samples, source_rate = soundfile.read(io.BytesIO(p.read_bytes()), dtype="float32")
            if source_rate != rate:
                g = math.gcd(source_rate, rate)
                samples = resample_poly(samples, rate // g, source_rate // g).astype(np.float32)
            if out is not None:
                with shard.open(f"{hashlib.sha256(samples.data.cast('B')).hexdigest()}.npy", "w") as f:
                    np.lib.format.write_array(f, samples, allow_pickle=False)
    return time.monotonic() - started


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (a process pool's workers)."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def intake_only(labels: pd.DataFrame, params: Any, root: Path, repeat: int) -> None:
    """Ingest's throughput alone against the bare loops, on the same files in the same run: `repeat`
    rounds, each timing every contender in turn (a load from elsewhere falls on all), then medians."""
    from components.stages.ingest import ingest_source

    src = linked_source(root / "intake-source", labels)
    paths = [DATA / p for p in labels["path"]]
    rate = params.ingest.audio.sample_rate

    def ingest() -> float:
        started = time.monotonic()
        ingest_source(src, root / "intake-out", params.ingest, "benchmark-salt")
        return time.monotonic() - started

    contenders = {"soundfile.read": lambda: bare_read_seconds(paths),
                  "read+hash+store": lambda: bare_store_seconds(paths, root / "bare-store.zip"),
                  f"read+{rate} Hz": lambda: bare_intake_seconds(paths, None, rate),
                  f"read+{rate} Hz+hash+store": lambda: bare_intake_seconds(paths, root / "bare-intake.zip", rate),
                  f"ingest (workers {params.ingest.workers or 'all'})": ingest}
    import scipy.signal  # noqa: F401 - imported before the clocks start, as ingest's imports are by its warm-up
    ingest()  # warms the page cache and ingest's one-off imports
    load = os.getloadavg()[0]
    wall: dict[str, list[float]] = {k: [] for k in contenders}
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeat):
        for name, run in contenders.items():
            before = cpu_seconds()
            wall[name].append(run())
            cpu[name].append(cpu_seconds() - before)
    print(f"{len(paths)} recordings, stored at {rate} Hz; medians of {repeat} interleaved rounds; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("CPU seconds: this process's and its finished worker processes' (what a shared machine's load leaves alone)")
    print(f"{'contender':<30}{'seconds':>9}{'ratio':>7}{'CPU s':>8}{'ratio':>7}")
    ingest_name = next(reversed(contenders))
    for name in contenders:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<30}{w:>9.2f}{w / statistics.median(wall[ingest_name]):>7.2f}"
              f"{c:>8.2f}{c / statistics.median(cpu[ingest_name]):>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], help="a params override, e.g. train.max_epochs=20")
    parser.add_argument("--leave-site-out", action="store_true")
    parser.add_argument("--intake-only", type=int, metavar="ROUNDS", default=0,
                        help="only ingest's throughput against the bare loops, over ROUNDS interleaved rounds")
    args = parser.parse_args()
    keep_freed_memory()  # as the train and evaluate stages' processes do
    if not (DATA / "labels.csv").is_file():
        sys.exit(f"{DATA}: not found (the benchmark needs ../shared/data/physionet2016)")
    overrides: dict[str, Any] = HEART
    for item in args.set:
        key, value = item.split("=", 1)
        for part in reversed(key.split(".")):
            value = {part: value}  # type: ignore[assignment]
        overrides = merged(overrides, value)  # type: ignore[arg-type]
    params = default_params(**overrides)
    labels = pd.read_csv(DATA / "labels.csv", dtype=str)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="medgate-audio-"))
    if args.intake_only:
        intake_only(labels, params, root, args.intake_only)
        return
    runs = [(f"seed {s}", split_labels(labels, s, None), s) for s in range(args.seeds)]
    if args.leave_site_out:
        runs += [(f"site {site} out", split_labels(labels, 0, site), 0) for site in sorted(labels["site"].unique())]
    results = {}
    for name, split, seed in runs:
        results[name] = run_once(root / name.replace(" ", "-"), split, params, seed)
        print(name, {k: round(v, 3) for k, v in results[name].items()}, flush=True)
    paths = [DATA / p for p in labels["path"]]
    bare, store = bare_read_seconds(paths), bare_store_seconds(paths, root / "bare-store.zip")
    print(f"\nload average {os.getloadavg()[0]:.1f}; {len(labels)} recordings")
    for group in ("seed", "site"):  # the stratified splits, then the sites held out
        chosen = [r for n, r in results.items() if n.startswith(group)]
        if not chosen:
            continue
        print(f"\n{len(chosen)} {'seeds of the stratified split' if group == 'seed' else 'sites held out'}:")
        for key in (*SHOWN, *(f"baseline_{k}" for k in SHOWN), "train_s"):
            values = [r[key] for r in chosen]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            target = f"  (minimum {MINIMUMS[key]})" if key in MINIMUMS and group == "seed" else ""
            print(f"{key:28s} {np.mean(values):.3f} +- {spread:.3f}{target}")
    ingest = statistics.mean(r["ingest_s"] for r in results.values())
    print(f"ingest {ingest:.1f} s against a bare soundfile.read loop {bare:.1f} s: ratio {bare / ingest:.2f} (minimum 0.8)")
    print(f"ingest against a bare read + hash + store loop {store:.1f} s: ratio {store / ingest:.2f}")
    print("PhysioNet/CinC 2016 best entries: MAcc about 0.86 on the hidden test set")


if __name__ == "__main__":
    main()
