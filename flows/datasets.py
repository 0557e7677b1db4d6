"""Dataset steps of the training flow (ingest, version, validate, phi_scan), and what they share
with `medgate data`: where a source's files are and the PHI scan of a run's artifacts."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from components.config import Params
from components.data.artifacts import IngestedDataset, ValidationResult
from components.privacy.names import COHORT_PREFIX, EMBEDDED
from components.stages.gate import Check
from flows.caching import cached_ingest, ingest_key, remember_ingest
from flows.settings import Settings
from flows.sources import SOURCE_NAMES, registered_path
from flows.stages import dvc_status_task
from flows.workspace import INGEST_DIR, PROJECT_ROOT, pipeline_stages, stage_dir, track_dataset, tracked_version

if TYPE_CHECKING:
    from components.privacy.phi import PhiScan

DEFAULT_SOURCE = EMBEDDED
DEFAULT_COHORT_DIR = "data/source/default-cohort"  # where the embedded cohort is generated, in the workspace
CINE_SOURCE = f"{COHORT_PREFIX}cine"  # the embedded cine cohort (components.demo.cine)
CINE_COHORT_DIR = "data/source/cine-cohort"
# The embedded audio cohorts (components.demo.dictation): source name -> spoken (espeak-ng) or tones.
AUDIO_COHORTS = {f"{COHORT_PREFIX}dictation": True, f"{COHORT_PREFIX}tones": False}
IDENTIFIERS_FILE = "identifiers.json"  # written by components.demo.cohort: the fake identifiers in its headers
# Memos in the workspace's state folder (.medgate): contents the PHI scan found clean (components.privacy.phi),
# the last outcomes of the validation suites (components.stages.validate) and the run report's last charts
# (components.documents.report).
PHI_MEMO = "phi_clean.json"
SUITES_MEMO = "validate_suites.json"
CHARTS_MEMO = "report_charts.json"


def source_files(source: str, settings: Settings, params: Params) -> Path:
    """`source_path`, with an embedded cohort generated there first when it is not yet."""
    path = source_path(source, settings, params)
    if (path / "labels.csv").exists():
        return path
    if source == DEFAULT_SOURCE:
        from components.demo.cohort import generate_cohort

        generate_cohort(path, params.cohort)
    elif source == CINE_SOURCE:
        from components.demo.cine import generate_cine_cohort

        generate_cine_cohort(path, params.cohort.cine)
    elif source in AUDIO_COHORTS:
        from components.demo.dictation import generate_dictation

        generate_dictation(path, params.cohort.audio, speech=AUDIO_COHORTS[source])
    return path


@task(name="ingest")
def ingest_task(source: str, settings: Settings, params: Params) -> IngestedDataset:
    from components.stages.ingest import ingest_source

    path = source_files(source, settings, params)
    out_dir = settings.workspace / INGEST_DIR
    shutil.rmtree(out_dir, ignore_errors=True)
    return ingest_source(path, out_dir, params.ingest, salt=settings.deid_salt, show_progress=True, label=source)


# An I/O task: retried with exponential back-off (2, 4 s ...), as `push` is.
@task(name="version", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def version_task(settings: Settings) -> str:
    """`dvc add` the ingest folder; its DVC hash is the dataset's version."""
    return track_dataset(settings.workspace, INGEST_DIR)


@task(name="validate")
def validate_task(
    dataset: IngestedDataset, params: Params, out_dir: Path, state_dir: Path, drift: Any = None, drift_note: str = ""
) -> ValidationResult:
    """The validation of `dataset` (components.stages.validate); the suites' outcomes are memoized in `state_dir`."""
    from components.stages.validate import validate_manifest

    return validate_manifest(
        dataset.manifest, params.validate_, out_dir, list(dataset.problems), class_names=params.ingest.class_names,
        drift=drift, drift_note=drift_note, window=(params.prepare.window_level, params.prepare.window_width),
        memo_file=state_dir / SUITES_MEMO,
    )


@task(name="phi_scan")
def phi_scan_task(
    settings: Settings, params: Params, source: str, class_names: Sequence[str], run_dir: Path,
    model_tag: str | None, bento_tag: str | None,
) -> tuple[Check, dict[str, Any]]:
    """Every artifact of the run scanned for the source's original identifiers (`source_identifiers`,
    gathered here and kept in memory only); a finding fails the check."""
    scan = scan_run(settings, source_identifiers(source, settings, params, class_names), run_dir, model_tag, bento_tag)
    where = "; ".join(f"{f.file} ({f.kind}{', ' + f.where if f.where else ''})" for f in scan.findings[:10])
    detail = f"{scan.files} files, {scan.bytes} bytes scanned for {scan.identifiers} identifier spellings" + (f"; found in {where}" if where else "")
    check = Check("privacy", "phi_findings", float(len(scan.findings)), 0.0, "<=", "pass" if scan.clean else "fail", detail)
    return check, scan.to_dict()


def ingest_and_version(
    source: str, settings: Settings, params: Params, timed: Callable[..., Any]
) -> tuple[IngestedDataset, str, bool, bool]:
    """Ingest and version the source, or reuse the last ingest when nothing it depends on changed
    (flows.caching) and DVC finds the ingest folder at that ingest's version. `timed(task, *args)`
    runs a task (flows.recording.RunRecorder.timed keeps its seconds).

    Returns (dataset, version, reused, all_up_to_date). With a reusable ingest, one `dvc status`
    comes first: when it finds every tracked dataset and stage unchanged (all_up_to_date), the ingest
    folder is at its recorded version and no `dvc add` is needed; otherwise `dvc add` says which version it is.
    """
    ws = settings.workspace
    path = source_path(source, settings, params)
    key = ingest_key(path, params.ingest, settings.deid_salt) if path.exists() else None
    cached = cached_ingest(settings.state_dir, key) if key else None
    if cached is not None:
        if tracked_version(ws, INGEST_DIR) == cached[1] and timed(dvc_status_task, settings):
            return cached[0], cached[1], True, True
        if (version := timed(version_task, settings)) == cached[1]:
            return cached[0], version, True, False
        get_run_logger().info("%s changed since it was ingested: ingesting again", INGEST_DIR)
    dataset = timed(ingest_task, source, settings, params)
    version = timed(version_task, settings)
    remember_ingest(settings.state_dir, ingest_key(path, params.ingest, settings.deid_salt), dataset, version)
    return dataset, version, False, False


def source_path(source: str, settings: Settings, params: Params) -> Path:
    """Where `source`'s files are: an embedded cohort's folder in the workspace, the path a label
    stands for (flows.sources), the local .npz of ``medmnist:<name>`` (see
    components.data.medmnist.resolve_medmnist), or the path given.

    Raises:
        ValueError: a ``medmnist:<name>`` that is neither in the data root nor downloadable.
    """
    from components.data.medmnist import MEDMNIST_PREFIX, resolve_medmnist

    if source == DEFAULT_SOURCE:
        return settings.workspace / DEFAULT_COHORT_DIR
    if source == CINE_SOURCE:
        return settings.workspace / CINE_COHORT_DIR
    if source in AUDIO_COHORTS:
        return settings.workspace / "data/source" / f"{source.removeprefix(COHORT_PREFIX)}-cohort"
    if (registered := registered_path(settings, source)) is not None:
        return registered
    if source.startswith(MEDMNIST_PREFIX):
        return resolve_medmnist(source, settings.data_root, params.ingest)
    return Path(source)


def source_identifiers(source: str, settings: Settings, params: Params, class_names: Sequence[str] = ()) -> dict[str, list[str]]:
    """What the PHI scan looks for in a run's artifacts, by kind: the header values de-identification
    removes from the source's DICOM files (components.privacy.deid.removed_values), labels.csv's
    patient ids, the path components of the image files of a source named by its path (not those of a
    public dataset, nor its class and split folder names), and the fake identifiers of a folder with identifiers.json
    (the embedded cohort). Read from the source now, kept in memory only."""
    from components.data.labels import read_labels
    from components.data.manifest import SPLITS
    from components.data.sources import LABELS_FILE, is_labels_file, walk_files
    from components.privacy.deid import dicom_identifiers
    from components.privacy.names import is_known, path_identifiers, project_words, source_folder
    from components.privacy.phi import load_identifiers
    from components.readers import reader_for_name

    try:
        path = source_path(source, settings, params)
    except ValueError:
        return {}
    root = source_folder(path)
    found: dict[str, list[str]] = {}
    if root.is_dir() and (root / IDENTIFIERS_FILE).is_file():
        found.update(load_identifiers(root / IDENTIFIERS_FILE))
    # The files ingest reads (a reader claims them by name): not labels.csv, identifiers.json or notes.
    files = [rel for rel in (walk_files(root) if root.exists() else []) if reader_for_name(rel) is not None]
    dicom = [root / rel for rel in files if (reader := reader_for_name(rel)) is not None and reader.name == "dicom"]
    found["header_values"] = sorted(dicom_identifiers(dicom))
    if (labels := path if is_labels_file(path) else root / LABELS_FILE).is_file():
        try:
            rows = read_labels(labels, params.ingest.key_column)
        except ValueError:  # ingest reported it; nothing of it was stored
            rows = []
        found["label_patient_ids"] = sorted({v for _, row in rows if (v := row.get("patient_id", "").strip())})
    if not is_known(source):
        # Class and split folders, the label and the pipeline's own words are what the artifacts say anyway.
        public = [*class_names, *SPLITS, source, *project_words(PROJECT_ROOT)]
        found["source_paths"] = sorted(path_identifiers(root, files, public=public))
    return found


def run_artifacts(workspace: Path) -> list[Path]:
    """Everything a run stores in the workspace besides runs/<id>/ (the raw source is not the run's):
    the ingest folder and its .dvc file, every stage's output folder, dvc.lock."""
    stages = [stage_dir(workspace, stage) for stage in pipeline_stages(workspace)]
    return [workspace / INGEST_DIR, workspace / f"{INGEST_DIR}.dvc", *stages, workspace / "dvc.lock"]


def scan_run(settings: Settings, identifiers: Path | Mapping[str, Sequence[str]], run_dir: Path,
             model_tag: str | None = None, bento_tag: str | None = None) -> PhiScan:
    """Scan every artifact a run stored for `identifiers` (kind -> values, or an identifiers.json):
    the dataset, stage outputs, the run's folder (reports, log, gate), the workspace's state files
    (not its local map of source paths), the registry, and the model store entry and Bento, when packaged."""
    from sqlalchemy.engine import make_url

    import components.demo.cohort
    from components.privacy.phi import load_identifiers, scan_artifacts

    ws = settings.workspace
    # The state folder's own files (caches, memos, lock); not its subfolders (the local DVC remote
    # there holds copies of the data already scanned).
    state = [p for p in settings.state_dir.iterdir() if p.is_file() and p.name != SOURCE_NAMES] if settings.state_dir.is_dir() else []
    paths = run_artifacts(ws) + [run_dir, *state]
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
    # The project's own code (a Bento carries copies) holds no patient's data, though its words may
    # spell a folder's name; the cohort generator's defines the fake sites and physicians.
    allowed = [Path(components.demo.cohort.__file__), *(p for pkg in ("components", "services") for p in (PROJECT_ROOT / pkg).rglob("*.py"))]
    if isinstance(identifiers, Path):
        identifiers = load_identifiers(identifiers)
    return scan_artifacts(paths, identifiers, databases=databases, allowed_files=allowed, texts=texts,
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
