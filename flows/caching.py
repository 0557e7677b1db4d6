"""Skipping work that has not changed, beyond what `dvc repro` already skips.

DVC keys prepare, train, baseline and evaluate on the hashes of their inputs and params. Around
them the flow skips, by content:

- ingest, when the source's content (`source_fingerprint`: every file's sha256, never a
  timestamp), the ingest params, the de-identification salt and the ingest code are those of the
  last ingest and `dvc add` finds the ingest folder at the version recorded for it;
- `dvc push`, when the remote configuration, the ingest folder's `.dvc` file and `dvc.lock` (which name every
  pushed file by its hash) are those of the last push that succeeded (`push_key`);
- registering, gating, packaging and smoke-testing, when the model that evaluate just scored is
  the production model of that name (same weights, same dataset and test data versions, same
  gate policy): the run reports the production version as reused instead of registering a
  duplicate and building a second Bento of the same weights (`unchanged_production`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from components.config import GateConfig, GatePolicy, IngestConfig
from components.data.artifacts import IngestedDataset, content_digest, file_sha256, read_keyed_json, to_dict, write_json_atomically
from components.imports import import_closure
from flows.workspace import INGEST_DIR, PROJECT_ROOT
from registry import repository as repo
from registry.models import ModelVersion

INGEST_CACHE = "ingest_cache.json"
PUSH_RECORD = "last_push.json"
INGEST_MODULE = "components.stages.ingest"  # with every module it imports, the code that decides what ingest writes


@dataclass(frozen=True)
class Fingerprint:
    """The content hash of a source and how many files it covers."""

    digest: str
    files: int


def source_fingerprint(path: Path) -> Fingerprint:
    """sha256 over (relative path, content sha256) of every file under `path` (or of the file).

    Renaming, adding, changing or removing a file changes it; touching one does not.

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path)
    if path.is_file():
        return Fingerprint(hashlib.sha256(f"{path.name}\0{file_sha256(path)}".encode()).hexdigest(), 1)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: source not found")
    digest, count = hashlib.sha256(), 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = Path(root) / name
            digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
            count += 1
    return Fingerprint(digest.hexdigest(), count)


def ingest_key(source_dir: Path, cfg: IngestConfig, salt: str) -> str:
    """What an ingest's outputs depend on: source content, ingest params, salt and ingest code.

    A labels file as the source (``--labels``) depends on its whole folder and on which file it is."""
    source_dir = Path(source_dir)
    if source_dir.is_file() and source_dir.suffix.lower() == ".csv":
        digest = hashlib.sha256(f"{source_fingerprint(source_dir.parent).digest}\0{source_dir.name}".encode())
    else:
        digest = hashlib.sha256(source_fingerprint(source_dir).digest.encode())
    digest.update(cfg.model_dump_json().encode())
    digest.update(hashlib.sha256(salt.encode()).digest())
    for path in sorted(import_closure(PROJECT_ROOT, [INGEST_MODULE])):
        digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cached_ingest(state_dir: Path, key: str) -> tuple[IngestedDataset, str] | None:
    """The dataset and DVC version of the last ingest when it had this key and its manifest exists."""
    if (record := read_keyed_json(state_dir / INGEST_CACHE, key)) is None:
        return None
    fields: dict[str, Any] = record["dataset"]
    dataset = IngestedDataset(
        **{**fields, "manifest": Path(fields["manifest"]), "class_names": tuple(fields["class_names"]),
           "problems": tuple(fields["problems"])}
    )
    return (dataset, record["version"]) if dataset.manifest.exists() else None


def remember_ingest(state_dir: Path, key: str, dataset: IngestedDataset, version: str) -> None:
    write_json_atomically(state_dir / INGEST_CACHE, {"key": key, "version": version, "dataset": to_dict(dataset)})


def push_key(workspace: Path) -> str:
    """What a `dvc push` sends, and where: the DVC config (remotes), the dataset's .dvc file, dvc.lock."""
    return content_digest(*(workspace / rel for rel in (".dvc/config", ".dvc/config.local", f"{INGEST_DIR}.dvc", "dvc.lock")))


def pushed_already(state_dir: Path, key: str) -> bool:
    return read_keyed_json(state_dir / PUSH_RECORD, key) is not None


def remember_push(state_dir: Path, key: str) -> None:
    write_json_atomically(state_dir / PUSH_RECORD, {"key": key})


def unchanged_production(
    session: Session, name: str, weights_sha256: str, dataset_version: str, test_data_version: str, gate: GateConfig
) -> ModelVersion | None:
    """The production version of `name` when it is this very model under the same gate policy.

    Same weights (sha256 of model.pt), trained on the same dataset version, tested on the same
    test data, and gated by the policy the run that made it had: gating it again could only
    repeat that decision, and packaging it again would build a second Bento of the same weights.
    """
    production = repo.get_champion(session, name)
    if production is None or production.bento_tag is None:
        return None
    if (production.artifact_sha256, production.dataset_version, production.test_data_version) != (
        weights_sha256, dataset_version, test_data_version
    ):
        return None
    run_gate = (production.run.params or {}).get("gate")
    run_policy = GateConfig.model_validate(run_gate).for_model(name) if run_gate else GatePolicy()
    return production if run_policy == gate.for_model(name) else None
