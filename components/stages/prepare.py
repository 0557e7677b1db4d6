"""prepare: patient-level splits and the preprocessed arrays the network trains on.

Reads the ingest manifest and its pixel files, writes under `out_dir`:
`{train,val,test}.npz` (images float32 (N, C, *spatial) in [0, 1], labels int64),
`{train,val,test}.csv` (one row per image: id, patient, label and subgroup columns),
and `dataset.json` (class names, input shape, preprocessing, counts).
Recordings (a manifest of 1-D samples) become log-mel windows (components/ml/audio.py): one array
and one row per window, the recording's ``image_id`` repeated and its ``window`` index added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.artifacts import PreparedDataset
from components.data.manifest import (
    AUDIO_RATE_ATTR, CLASS_NAMES_ATTR, CLIP_SPEC_ATTR, SPLITS, SUBGROUP_COLUMNS, order_class_names,
)
from components.data.prepared import write_dataset_info, write_split
from components.data.shards import ImageStore
from components.config import PrepareConfig, load_params, stage_arguments
from components.ml.audio import AudioPreprocessing, db_range, preprocess_recording
from components.ml.transforms import Preprocessing, preprocess
from components.readers.clips import ClipSpec


def split_patients(manifest: pd.DataFrame, cfg: PrepareConfig) -> pd.Series:
    """Each row's split. Fixed splits in the manifest are kept; otherwise patients are assigned
    to train/val/test, stratified by their label, so no patient spans two splits.

    Patients are shuffled (seeded) from the manifest's order, which is the source's file order, not
    from their pseudonyms: those depend on the workspace's de-identification salt, and the same
    source with the same params must get the same split in every workspace.
    """
    given = manifest["split"]
    if given.notna().all():
        return given.astype(str)
    rng = np.random.default_rng(cfg.seed)
    patient_label = manifest.groupby("patient_id")["label"].agg(lambda s: s.mode().iloc[0])
    first_seen = {pid: i for i, pid in enumerate(dict.fromkeys(manifest["patient_id"]))}
    assignment: dict[str, str] = {}
    for _, patients in sorted(patient_label.groupby(patient_label), key=lambda kv: str(kv[0])):
        ids = np.array(sorted(patients.index, key=first_seen.__getitem__))
        rng.shuffle(ids)
        n_test = round(len(ids) * cfg.test_fraction)
        n_val = round(len(ids) * cfg.val_fraction)
        for i, pid in enumerate(ids):
            assignment[pid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return manifest["patient_id"].map(assignment)


def choose_preprocessing(manifest: pd.DataFrame, train: pd.DataFrame, cfg: PrepareConfig) -> Preprocessing:
    """Spatial size and intensity window from the data and params.

    CT (modality column says CT) uses the configured window in Hounsfield units; 8-bit images
    map 0-255; anything else maps the training split's observed range.
    """
    ndims = manifest["ndim"].unique()
    channels = manifest["channels"].unique()
    if len(ndims) != 1 or len(channels) != 1:
        raise ValueError(
            f"mixed image kinds in one dataset: ndim {sorted(ndims)}, channels {sorted(channels)}; "
            "split the source into one dataset per kind"
        )
    size = cfg.image_size or min(int(max(manifest["height"].max(), manifest["width"].max())), cfg.max_size)
    if int(ndims[0]) == 3:
        spatial: tuple[int, ...] = (min(int(manifest["depth"].max()), size), size, size)
    else:
        spatial = (size, size)
    modality = manifest["modality"] if "modality" in manifest else pd.Series(dtype=str)
    if (modality == "CT").all() and len(modality):
        lower = cfg.window_level - cfg.window_width / 2
        upper = cfg.window_level + cfg.window_width / 2
    elif (manifest["dtype"] == "uint8").all():
        lower, upper = 0.0, 255.0
    else:
        lower, upper = float(train["intensity_min"].min()), float(train["intensity_max"].max())
        if upper <= lower:
            upper = lower + 1.0
    return Preprocessing(spatial_size=spatial, channels=int(channels[0]), lower=lower, upper=upper, clip=_clip_spec(manifest))


def _clip_spec(manifest: pd.DataFrame) -> dict[str, Any] | None:
    """How a clip dataset's clips were sampled (ingest's manifest metadata); None for images and volumes.

    Raises:
        ValueError: clips mixed with images, or clips without the sampling they were stored with.
    """
    if "frames" not in manifest or manifest["frames"].isna().all():
        return None
    raw = manifest.attrs.get(CLIP_SPEC_ATTR)
    if manifest["frames"].isna().any() or not raw:
        raise ValueError("clips mixed with still images, or clips without ingest's clip_spec; one dataset per kind")
    spec = ClipSpec.from_dict(raw)  # checked here, not first at serving
    return spec.to_dict()


def prepare_dataset(manifest_path: Path, cfg: PrepareConfig, out_dir: Path) -> PreparedDataset:
    """Split by patient, preprocess every image once, and write the arrays per split."""
    manifest = pd.read_parquet(manifest_path)
    root = manifest_path.parent
    class_names = tuple(manifest.attrs.get(CLASS_NAMES_ATTR) or order_class_names(manifest["label"].dropna().astype(str)))
    manifest = manifest.assign(split=split_patients(manifest, cfg))
    missing = set(SPLITS) - set(manifest["split"])
    if missing:
        raise ValueError(f"{manifest_path}: no images in split(s) {sorted(missing)}; the dataset is too small")
    label_index = {name: i for i, name in enumerate(class_names)}
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = ["image_id", "patient_id", "label", "path", *[c for c in SUBGROUP_COLUMNS if c in manifest]]
    if (manifest["ndim"] == 1).all():
        spec_info, counts = _prepare_recordings(manifest, root, cfg, out_dir, label_index, keep)
        return _finish(out_dir, manifest, class_names, spec_info, counts)
    spec = choose_preprocessing(manifest, manifest[manifest["split"] == "train"], cfg)
    counts: dict[str, int] = {}
    for split in SPLITS:
        # The manifest's (the source's) order, not the pseudonyms': training sees the same batches in every workspace.
        rows = manifest[manifest["split"] == split]
        images = np.zeros((len(rows), *spec.input_shape), dtype=np.float32)
        with ImageStore(root) as store:  # rows point into the ingest's image shards
            for i, rel in enumerate(rows["path"]):
                images[i] = preprocess(store.load(rel), spec)
        labels = rows["label"].map(label_index).to_numpy(dtype=np.int64)
        write_split(out_dir, split, images, labels, rows[keep])
        counts[split] = len(rows)
    return _finish(out_dir, manifest, class_names, spec, counts)


def _finish(out_dir: Path, manifest: pd.DataFrame, class_names: tuple[str, ...],
            spec: Preprocessing | AudioPreprocessing, counts: dict[str, int]) -> PreparedDataset:
    write_dataset_info(out_dir, {
        "class_names": list(class_names),
        "input_shape": list(spec.input_shape),
        "preprocessing": spec.to_dict(),
        "counts": counts,
        "class_counts": {s: manifest[manifest["split"] == s]["label"].value_counts().to_dict() for s in SPLITS},
    })
    return PreparedDataset(out_dir=out_dir, class_names=class_names, input_shape=spec.input_shape, counts=counts)


def _prepare_recordings(manifest: pd.DataFrame, root: Path, cfg: PrepareConfig, out_dir: Path,
                        label_index: dict[str, int], keep: list[str]) -> tuple[AudioPreprocessing, dict[str, int]]:
    """Every split's recordings as log-mel windows, scaled by the training split's dB range."""
    rate = int(manifest.attrs.get(AUDIO_RATE_ATTR) or 0)
    if rate <= 0:
        raise ValueError("a manifest of recordings without its stored sample rate; re-run ingest")
    spec = AudioPreprocessing.from_config(cfg.audio, rate)
    with ImageStore(root) as store:
        train_paths = manifest.loc[manifest["split"] == "train", "path"]
        spec = AudioPreprocessing.from_config(cfg.audio, rate, *db_range([store.load(p) for p in train_paths], spec))
        counts: dict[str, int] = {}
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            per_recording = [preprocess_recording(store.load(rel), spec) for rel in rows["path"]]
            repeat = np.array([len(w) for w in per_recording], dtype=np.int64)
            images = np.concatenate(per_recording) if per_recording else np.zeros((0, *spec.input_shape), np.float32)
            window_rows = rows[keep].loc[rows.index.repeat(repeat)].assign(
                window=np.concatenate([np.arange(k) for k in repeat]) if len(repeat) else [])
            labels = window_rows["label"].map(label_index).to_numpy(dtype=np.int64)
            write_split(out_dir, split, images, labels, window_rows)
            counts[split] = len(rows)
    return spec, counts


def main() -> None:
    args = stage_arguments(__doc__, ["manifest"])
    result = prepare_dataset(args.manifest, load_params(args.params).prepare, args.out)
    print(f"prepare: {result.counts} images, classes {list(result.class_names)}, input {result.input_shape}")


if __name__ == "__main__":
    main()
