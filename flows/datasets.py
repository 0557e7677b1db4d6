"""Dataset steps shared by the training flow and `medgate data`: where a source's files are, drift
against the data the production model trained on, and the PHI scan of a run's artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from components.config import Params
from flows.settings import Settings
from flows.workspace import tracked_file

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from components.data.drift import DriftReport
    from components.privacy.phi import PhiScan

DEFAULT_SOURCE = "embedded"
INGEST_DIR = "data/ingest"
IDENTIFIERS_FILE = "identifiers.json"  # written by components.demo.cohort: the fake identifiers in its headers
# Everything a run stores in the workspace besides runs/<id>/ (the raw source is not the run's).
# Memos in the workspace's state folder (.medgate): contents the PHI scan found clean (components.privacy.phi),
# the last outcomes of the validation suites (components.stages.validate) and the run report's last charts
# (components.documents.report).
PHI_MEMO = "phi_clean.json"
SUITES_MEMO = "validate_suites.json"
CHARTS_MEMO = "report_charts.json"
RUN_ARTIFACTS = ("data/ingest", "data/ingest.dvc", "data/prepare", "data/train", "data/baseline", "data/evaluate", "dvc.lock")


def source_path(source: str, settings: Settings, params: Params) -> Path:
    """Where `source`'s files are: the embedded cohort's folder in the workspace, the local .npz of
    ``medmnist:<name>`` (see components.data.medmnist.resolve_medmnist), or the path given.

    Raises:
        ValueError: a ``medmnist:<name>`` that is neither in the data root nor downloadable.
    """
    from components.data.medmnist import MEDMNIST_PREFIX, resolve_medmnist

    if source == DEFAULT_SOURCE:
        return settings.workspace / "data" / "source" / "default-cohort"
    if source.startswith(MEDMNIST_PREFIX):
        return resolve_medmnist(source, settings.data_root, params.ingest)
    return Path(source)


def production_baseline(session: Session, name: str) -> tuple[int, str] | None:
    """(version, dataset version) of the production model `name`, or None."""
    from registry import repository as repo

    champion = repo.get_champion(session, name)
    return (champion.version, champion.dataset_version) if champion is not None else None


def drift_against(settings: Settings, params: Params, name: str, baseline: tuple[int, str] | None,
                  manifest: Path) -> tuple[DriftReport | None, str]:
    """Drift of `manifest` against the production model's training data, or (None, why not)."""
    import pandas as pd

    from components.data.drift import compare_manifests

    if baseline is None:
        return None, f"no production model named {name} yet: nothing to compare with"
    version, dataset_version = baseline
    found = tracked_file(settings.workspace, INGEST_DIR, dataset_version, "manifest.parquet")
    if found is None:
        return None, (f"the training data of {name} v{version} (dataset {dataset_version[:12]}) is neither "
                      f"{INGEST_DIR} nor in the workspace's DVC cache (dvc pull restores it)")
    label = f"{name} v{version} training data (dataset {dataset_version[:12]})"
    return compare_manifests(pd.read_parquet(found), pd.read_parquet(manifest), params.drift, label), ""


def identifiers_for(source: str, settings: Settings, params: Params) -> Path | None:
    """The identifier list of a source that has one (the embedded cohort; a folder with identifiers.json)."""
    try:
        folder = source_path(source, settings, params)
    except ValueError:
        return None
    path = folder / IDENTIFIERS_FILE
    return path if path.is_file() else None


def scan_run(settings: Settings, identifiers: Path, run_dir: Path, model_tag: str | None = None,
             bento_tag: str | None = None) -> PhiScan:
    """Scan every artifact a run stored for the identifiers listed in `identifiers`: the dataset,
    stage outputs, the run's folder (reports, log, gate), the registry, and the model store entry
    and Bento, when packaged."""
    from sqlalchemy.engine import make_url

    import components.demo.cohort
    from components.privacy.phi import load_identifiers, scan_artifacts

    ws = settings.workspace
    # The state folder's own files (caches, memos, lock); not its subfolders (the local DVC remote
    # there holds copies of the data already scanned).
    state = [p for p in settings.state_dir.iterdir() if p.is_file()] if settings.state_dir.is_dir() else []
    paths = [ws / rel for rel in RUN_ARTIFACTS] + [run_dir, *state]
    texts: dict[str, str] = {}
    databases: list[Path] = []
    url = make_url(settings.database_url)
    if url.drivername.startswith("sqlite") and url.database:
        databases.append(Path(url.database))  # open in this process: read through SQLite only
    else:
        texts[f"registry ({url.drivername})"] = registry_dump(settings.database_url)
    if model_tag or bento_tag:
        import bentoml

        paths += [Path(bentoml.models.get(model_tag).path)] if model_tag else []
        paths += [Path(bentoml.get(bento_tag).path)] if bento_tag else []
    # The generator's source defines the fake sites and physicians; a Bento carries a copy of it.
    allowed = [Path(components.demo.cohort.__file__)]
    return scan_artifacts(paths, load_identifiers(identifiers), databases=databases, allowed_files=allowed, texts=texts,
                          relative_to=ws, memo_file=settings.state_dir / PHI_MEMO)


def registry_dump(url: str) -> str:
    """Every row of every registry table as text (for a database server, which has no file to scan)."""
    from sqlalchemy import MetaData, create_engine, select

    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return "\n".join(repr(tuple(row)) for table in meta.sorted_tables for row in conn.execute(select(table)))
    finally:
        engine.dispose()
