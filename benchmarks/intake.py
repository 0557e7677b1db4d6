"""Intake benchmark: `ingest_source` on a folder of generated DICOM files against a bare pydicom loop.

    python benchmarks/intake.py [--files 3000] [--size 128] [--workers 0] [--repeat 1] [--json PATH]

In one run, on the same files, it measures (images per second; the median of `--repeat` rounds, each
round timing every contender in turn, so that a load from elsewhere falls on all of them):
- ``dcmread``: the bare loop ``for f in files: pydicom.dcmread(f)`` (headers parsed, pixels not
  decoded: pydicom reads them lazily), the baseline the issue names;
- ``dcmread+pixels``: the same loop touching ``ds.pixel_array`` (what any real reader must do);
- ``ingest x1``: ingest with one process (read, decode, modality LUT, de-identified header
  columns, hash, shard write, manifest);
- ``ingest xN``: ingest with `--workers` processes (0: every core this process may use). A pool
  starts only where it saves more than its start and only on cores that stay idle
  (`components.data.decoding`): 1,000 files never start one; ``--files 8000 --workers 2`` may.
Each ingest runs in a fresh process, which reports its peak resident memory and, apart from the
ingest's seconds, what importing the libraries ingest loads on first use cost it (pandas and pyarrow
for the manifest: a constant, as the bare loop's ``import pydicom`` is); ingesting half the
files in another process shows whether memory grows with the number of files.
It then times ``dvc add`` and ``dvc push`` (to a local remote) of the ingest's sharded output
against the same images stored one ``.npy`` file per image (the layout before shards).

Files: a template CT slice (the default cohort's headers, fake identifiers included) with random
12-bit pixels, `--size` pixels square, ten slices per patient, listed in labels.csv. Nothing is
asserted: the ratios are printed for the closing note, with the load average, since the machine
may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

PROJECT = Path(__file__).resolve().parents[1]


def make_corpus(root: Path, files: int, size: int) -> list[Path]:
    """`files` DICOM slices (ten per patient) and their labels.csv under `root`."""
    from components.config import default_params
    from components.demo.cohort import generate_cohort

    template_dir = generate_cohort(root / "template", default_params(cohort={"patients": 1, "images_per_patient": 1, "image_size": 64}).cohort)
    template = pydicom.dcmread(next(template_dir.rglob("*.dcm")))
    shutil.rmtree(template_dir)
    template.Rows = template.Columns = size
    rng = np.random.default_rng(0)
    paths, rows = [], ["path,label"]
    for i in range(files):
        patient = i // 10
        template.PatientID = f"BENCH{patient:06d}"
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{i + 1}"
        template.PixelData = rng.integers(0, 4096, (size, size), dtype=np.int16).tobytes()
        rel = f"p{patient:05d}/{i % 10}.dcm"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        template.save_as(root / rel, enforce_file_format=True)
        paths.append(root / rel)
        rows.append(f"{rel},{('normal', 'lesion')[patient % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return paths


def bare_loop(paths: list[Path], pixels: bool, cpu: list[float] | None = None) -> float:
    """Seconds of the loop; its CPU seconds are appended to `cpu`."""
    started, started_cpu = time.perf_counter(), time.process_time()
    for path in paths:
        ds = pydicom.dcmread(path)
        if pixels:
            ds.pixel_array  # noqa: B018 - decoding is what is timed
    if cpu is not None:
        cpu.append(time.process_time() - started_cpu)
    return time.perf_counter() - started


def ingest_in_child(src: Path, out: Path, workers: int, limit: int | None = None) -> dict[str, Any]:
    """Run ingest in a fresh interpreter; its seconds and peak RSS (MiB)."""
    code = (
        "import json, resource, sys, time\n"
        "from pathlib import Path\n"
        "from components.config import default_params\n"
        "from components.stages.ingest import ingest_source\n"
        f"src, out = Path({str(src)!r}), Path({str(out)!r})\n"
        "t = time.perf_counter()\n"
        "import pandas, pyarrow.parquet  # what ingest imports on first use (the manifest)\n"
        "imports = time.perf_counter() - t\n"
        "usage = lambda: (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))\n"
        "t, c = time.perf_counter(), usage()\n"
        f"r = ingest_source(src, out, default_params(ingest={{'workers': {workers}}}).ingest, salt='bench')\n"
        "s = time.perf_counter() - t\n"
        "cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(usage(), c))\n"
        "print(json.dumps({'seconds': s, 'cpu_s': cpu, 'imports_s': imports, 'images': r.num_images,\n"
        "                  'problems': len(r.problems),\n"
        "                  'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    if limit is not None:  # a copy of labels.csv with the first `limit` rows: the other files are "unlisted"
        half = src.parent / f"{src.name}-first{limit}"
        if not half.exists():
            half.mkdir()
            lines = (src / "labels.csv").read_text().splitlines()[: limit + 1]
            for line in lines[1:]:
                rel = line.split(",")[0]
                (half / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(src / rel, half / rel)
            (half / "labels.csv").write_text("\n".join(lines) + "\n")
        code = code.replace(repr(str(src)), repr(str(half)))
    out_text = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    return json.loads(out_text.strip().splitlines()[-1])


def dvc_times(data: Path, scratch: Path) -> dict[str, float]:
    """`dvc add` and `dvc push` (local remote) of `data` copied into a fresh DVC project."""
    project = scratch / "project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def dvc(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, check=True, capture_output=True)
        return time.perf_counter() - started

    dvc("init", "--no-scm", "-q")
    dvc("remote", "add", "-d", "local", str(scratch / "remote"))
    shutil.copytree(data, project / "data")
    out = {"add_s": dvc("add", "-q", "data"), "push_s": dvc("push", "-q")}
    shutil.rmtree(scratch / "remote", ignore_errors=True)
    return out


def explode_shards(ingest_dir: Path, out: Path) -> int:
    """The same images one .npy file per image (`images/<2 hex>/<hash>.npy`), with the manifest."""
    import pandas as pd

    from components.data.shards import ImageStore

    manifest = pd.read_parquet(ingest_dir / "manifest.parquet")
    out.mkdir(parents=True)
    with ImageStore(ingest_dir) as store:
        for rel, digest in zip(manifest["path"], manifest["content_hash"], strict=True):
            target = out / "images" / digest[:2] / f"{digest}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.read_bytes(rel))
    shutil.copy(ingest_dir / "manifest.parquet", out / "manifest.parquet")
    return len(list((out / "images").rglob("*.npy")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128, help="pixels per side of each slice")
    parser.add_argument("--workers", type=int, default=0, help="processes of the parallel ingest (0: every core)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-dvc", action="store_true", help="skip the DVC comparison")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medgate-intake-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        paths = make_corpus(root / "src", args.files, args.size)
        print(f"corpus: {len(paths)} DICOM files of {args.size}x{args.size} int16 in {time.perf_counter() - started:.1f} s")
        bare_loop(paths, pixels=True)  # warm the page cache: every contender then reads from memory

        parallel = f"ingest x{args.workers or len(os.sched_getaffinity(0))}"
        rounds: dict[str, list[float]] = {"dcmread": [], "dcmread+pixels": [], "ingest x1": [], parallel: []}
        cpu: dict[str, list[float]] = {k: [] for k in rounds}
        trials: dict[str, list[dict[str, Any]]] = {"ingest x1": [], parallel: []}
        for _ in range(args.repeat):  # interleaved: every contender once per round
            rounds["dcmread"].append(bare_loop(paths, pixels=False, cpu=cpu["dcmread"]))
            rounds["dcmread+pixels"].append(bare_loop(paths, pixels=True, cpu=cpu["dcmread+pixels"]))
            for label, workers in (("ingest x1", 1), (parallel, args.workers)):
                trials[label].append(ingest_in_child(root / "src", root / "out", workers))
                rounds[label].append(trials[label][-1]["seconds"])
                cpu[label].append(trials[label][-1]["cpu_s"])
        seconds = {k: statistics.median(v) for k, v in rounds.items()}
        cpu_s = {k: statistics.median(v) for k, v in cpu.items()}
        runs = {k: max(v, key=lambda r: r["rss_mib"]) for k, v in trials.items()}
        imports = statistics.median(t["imports_s"] for v in trials.values() for t in v)
        half = ingest_in_child(root / "src", root / "out-half", args.workers, limit=len(paths) // 2)

        rates = {k: len(paths) / v for k, v in seconds.items()}
        print(f"\n{'contender':<18}{'seconds':>10}{'images/s':>12}{'vs dcmread':>12}{'vs +pixels':>12}"
              f"{'CPU s':>8}{'vs +pixels':>12}")
        for k, v in seconds.items():
            print(f"{k:<18}{v:>10.2f}{rates[k]:>12.0f}{rates[k] / rates['dcmread']:>12.2f}"
                  f"{rates[k] / rates['dcmread+pixels']:>12.2f}{cpu_s[k]:>8.2f}{cpu_s['dcmread+pixels'] / cpu_s[k]:>12.2f}")
        print(f"(medians of {args.repeat} interleaved rounds; CPU s: the loop's or the ingest process's and its "
              f"workers', which a load from elsewhere leaves alone; each ingest process also spent {imports:.2f} s "
              "importing pandas and pyarrow, not counted above)")
        peak = {k: round(r["rss_mib"]) for k, r in runs.items()}
        print(f"\npeak RSS of the ingest process: {peak} MiB; with half the files ({len(paths) // 2}, parallel): "
              f"{half['rss_mib']:.0f} MiB")

        dvc: dict[str, Any] = {}
        if not args.no_dvc:
            exploded = explode_shards(root / "out", root / "per-file")
            shards = len(list((root / "out" / "images").glob("*.npz")))
            sharded = dvc_times(root / "out", root / "dvc")
            per_file = dvc_times(root / "per-file", root / "dvc")
            dvc = {"sharded": {**sharded, "files": shards}, "per_file": {**per_file, "files": exploded}}
            print(f"\nDVC, {shards} shards vs {exploded} files: add {sharded['add_s']:.1f} s vs {per_file['add_s']:.1f} s, "
                  f"push {sharded['push_s']:.1f} s vs {per_file['push_s']:.1f} s")
    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps({
            "files": len(paths), "size": args.size, "repeat": args.repeat, "seconds": seconds, "rounds": rounds,
            "images_per_s": rates, "cpu_s": cpu_s, "cpu_rounds": cpu, "ingest_imports_s": imports,
            "ratio_ingest_to_dcmread": {k: rates[k] / rates["dcmread"] for k in runs},
            "peak_rss_mib": peak, "half_files_rss_mib": half["rss_mib"],
            "dvc": dvc,
            "load_average": [load_before[0], load_after[0]],
        }, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT))
    main()
