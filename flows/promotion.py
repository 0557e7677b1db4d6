"""Promotion: the one gate step that the training flow, the CLI and a manual promotion all run.

`evaluate_gate` compares a candidate's metrics with the current production model (the champion)
through `components.stages.gate.decide_promotion`. Change thresholds only mean something on the same
test data: when the champion was tested on another version, it is first re-evaluated on the
candidate's prepared test split (model from the BentoML store, metrics by
`components.stages.evaluate.evaluate_model`), and the decision says so. When that is impossible, the
change checks fail with the reason. `promote_manually` is what `medgate models promote` runs.

Drift: `mark_drift` records a run whose dataset drifted beyond a bound; with
`drift.require_retraining`, `read_retraining` turns the latest such record into the gate's
`drift retrained_since_drift` check on every promotion of that model name.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml
from sqlalchemy.orm import Session

from components.config import DriftConfig, EvaluateConfig, GatePolicy, Params, merged
from components.stages.gate import Check, GateDecision, RetrainingRequirement, decide_promotion
from registry import repository as repo
from registry.errors import InvalidTransition, NotFoundError
from registry.models import ModelVersion, Stage

if TYPE_CHECKING:
    from components.data.drift import DriftReport

PREPARED_DIR = "data/prepare"
# DVC 3 keeps a folder's listing at <cache>/files/md5/<2 hex>/<30 hex>.dir, its files beside it.
DVC_CACHE_FILES = ".dvc/cache/files/md5"


class ComparisonUnavailable(RuntimeError):
    """The champion could not be evaluated on the candidate's test data (the message says why)."""


@dataclass(frozen=True)
class ChampionFacts:
    """What the gate needs of the production version, read once so no transaction stays open."""

    id: int
    name: str
    version: int
    metrics: dict[str, Any]
    test_data_version: str
    model_tag: str | None
    artifact_sha256: str

    @classmethod
    def of(cls, mv: ModelVersion) -> ChampionFacts:
        return cls(mv.id, mv.name, mv.version, dict(mv.metrics or {}), mv.test_data_version, mv.model_tag, mv.artifact_sha256)


@dataclass(frozen=True)
class GateOutcome:
    """The gate's decision and how the champion's metrics were obtained."""

    decision: GateDecision
    champion: ChampionFacts | None
    champion_reevaluated: bool = False
    champion_note: str = ""

    def with_check(self, check: Check) -> GateOutcome:
        return replace(self, decision=self.decision.with_check(check))

    @property
    def champion_id(self) -> int | None:
        return self.champion.id if self.champion is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.decision.to_dict(),
            "champion_reevaluated": self.champion_reevaluated,
            "champion_note": self.champion_note,
        }


def read_champion(session: Session, name: str) -> ChampionFacts | None:
    champion = repo.get_champion(session, name)
    return ChampionFacts.of(champion) if champion is not None else None


def evaluate_gate(
    metrics: dict[str, Any],
    test_data_version: str,
    champion: ChampionFacts | None,
    policy: GatePolicy,
    workspace: Path,
    evaluate_cfg: EvaluateConfig,
    scratch_dir: Path,
    retraining: RetrainingRequirement | None = None,
) -> GateOutcome:
    """The gate on a candidate: `decide_promotion` against the champion, on the same test data.

    Args:
        metrics: the candidate's test metrics (with `subgroups`).
        test_data_version: DVC hash of the prepared data the candidate was tested on.
        champion: the production version of the same name, or None.
        policy: the gate policy for the model name (params.yaml `gate`).
        workspace: where that prepared data lives (data/prepare, or the DVC cache).
        evaluate_cfg: how to evaluate the champion when it must be re-evaluated.
        scratch_dir: where a re-evaluation writes its metrics and predictions.
        retraining: what drift requires of the candidate (`read_retraining`), or None.
    """
    if champion is None:
        return GateOutcome(decide_promotion(metrics, None, policy, retraining=retraining), None)
    # Without change thresholds the champion's metrics are not used: nothing to re-evaluate.
    if champion.test_data_version == test_data_version or not policy.changes:
        return GateOutcome(decide_promotion(metrics, champion.metrics, policy, champion.version, retraining), champion)
    label = f"champion v{champion.version}"
    try:
        data_dir = locate_prepared_data(workspace, test_data_version, scratch_dir / "test-data")
        champion_metrics = reevaluate_champion(champion, data_dir, evaluate_cfg, scratch_dir / f"champion-v{champion.version}")
    except ComparisonUnavailable as exc:
        note = f"{label} could not be evaluated on the candidate's test data {test_data_version[:12]}: {exc}"
        decision = decide_promotion(metrics, {}, policy, champion.version, retraining)
        checks = tuple(replace(c, detail=note) if c.kind == "change" else c for c in decision.checks)
        return GateOutcome(replace(decision, checks=checks, reason=f"{note}; {decision.reason}"), champion, False, note)
    note = (
        f"{label} was tested on data {champion.test_data_version[:12]}; it was re-evaluated on the "
        f"candidate's test data {test_data_version[:12]} before the change checks"
    )
    decision = decide_promotion(metrics, champion_metrics, policy, champion.version, retraining)
    checks = tuple(
        replace(c, detail=f"{c.detail}; champion re-evaluated on this test data".lstrip("; ")) if c.kind == "change" else c
        for c in decision.checks
    )
    reason = f"{label} re-evaluated on the candidate's test data; {decision.reason}"
    return GateOutcome(replace(decision, checks=checks, reason=reason), champion, True, note)


def describe_drift(checks: list[dict[str, Any]]) -> str:
    """`class_share 0.35 > 0.2, ...`: the exceeded drift statistics of a report or a drift event."""
    return ", ".join(f"{c['name']} {c['value']:g} > {c['bound']:g}" for c in checks)


def mark_drift(
    session: Session, *, name: str, baseline_version: int, run_id: int, run_uid: str, dataset_id: int,
    dataset_version: str, drift: DriftReport, cfg: DriftConfig, actor: str,
) -> dict[str, Any]:
    """The summary's `drift` field of a run; a dataset that drifted beyond a bound from the training
    data of production `name` v`baseline_version` is also recorded (drift event and a `drift` audit
    row on that version, by `actor`). Flushes only."""
    exceeded = [{"name": c.name, "value": c.value, "bound": c.bound, "detail": c.detail} for c in drift.exceeded]
    required = bool(exceeded) and cfg.require_retraining
    marked = {"against": drift.baseline, "exceeded": exceeded, "retraining_required": required}
    if not exceeded:
        return marked
    baseline = repo.get_version(session, name, baseline_version)
    if baseline is None:
        raise NotFoundError(f"{name} has no version {baseline_version}")
    follows = (
        "retraining required: no model of this name trained on older data is promoted (drift.require_retraining)"
        if required else "validation fails on it (drift.require_retraining is off)"
    )
    repo.record_drift(
        session, run_id=run_id, dataset_id=dataset_id, baseline_version_id=baseline.id, checks=exceeded, actor=actor,
        reason=f"run {run_uid}: dataset {dataset_version[:12]} drifted beyond its bound from this model's training data "
               f"({describe_drift(exceeded)}); {follows}",
    )
    return marked


def read_retraining(session: Session, name: str, cfg: DriftConfig, trained_version: str) -> RetrainingRequirement | None:
    """What drift requires of a model of `name` trained on dataset `trained_version`: the latest drift
    event of `name` when `drift.require_retraining` is set, else None (no check)."""
    event = repo.latest_drift(session, name) if cfg.require_retraining else None
    if event is None:
        return None
    drifted = event.dataset.version
    return RetrainingRequirement(
        drifted, repo.dataset_seq(session, drifted) or event.dataset_id, trained_version,
        repo.dataset_seq(session, trained_version), describe_drift(event.checks),
    )


def reevaluate_champion(champion: ChampionFacts, data_dir: Path, cfg: EvaluateConfig, out_dir: Path) -> dict[str, Any]:
    """The champion's metrics on `data_dir`'s splits, by the candidate's own evaluation procedure.

    The champion is loaded from the BentoML model store by its exact tag and its weights are checked
    against the registered sha256. Like the candidate, its operating threshold is chosen on the
    validation split of `data_dir` and its metrics are taken on the test split.

    Raises:
        ComparisonUnavailable: no model in the store, a sha256 mismatch, data of another shape or
            label set, or an evaluation error.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    from components.stages.evaluate import METRICS_FILE, evaluate_model
    from components.data.artifacts import WEIGHTS_FILE, file_sha256
    from components.data.prepared import read_dataset_info

    if not champion.model_tag:
        raise ComparisonUnavailable("it has no model in the BentoML store (it was never packaged)")
    try:
        stored = bentoml.models.get(champion.model_tag)
    except NotFound:
        raise ComparisonUnavailable(f"model {champion.model_tag} is not in the BentoML model store") from None
    model_dir = Path(stored.path)
    meta = dict(stored.info.metadata)
    try:
        if file_sha256(model_dir / WEIGHTS_FILE) != champion.artifact_sha256:
            raise ComparisonUnavailable(f"{model_dir / WEIGHTS_FILE} does not match the registered sha256")
        info = read_dataset_info(data_dir)
        for key in ("input_shape", "class_names"):
            if list(meta.get(key, [])) != list(info[key]):
                raise ComparisonUnavailable(f"its {key} {meta.get(key)} differs from the test data's {info[key]}")
        evaluate_model(data_dir, model_dir, cfg, out_dir)
        return json.loads((out_dir / METRICS_FILE).read_text())
    except ComparisonUnavailable:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ComparisonUnavailable(f"evaluation failed: {type(exc).__name__}: {exc}") from exc


def prepared_data_version(workspace: Path) -> str | None:
    """DVC hash of the workspace's data/prepare as dvc.lock records it (the test data's version)."""
    lock = workspace / "dvc.lock"
    if not lock.is_file():
        return None
    stage = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("prepare", {})
    for out in stage.get("outs", ()):
        if out.get("path") == PREPARED_DIR and out.get("md5"):
            return str(out["md5"]).removesuffix(".dir")
    return None


def locate_prepared_data(workspace: Path, version: str, scratch_dir: Path) -> Path:
    """A folder holding prepared data `version`: data/prepare when it is that version, else a
    read-only view (symlinks) of it assembled from the workspace's DVC cache under `scratch_dir`.

    Raises:
        ComparisonUnavailable: the version is in neither place.
    """
    if prepared_data_version(workspace) == version and (workspace / PREPARED_DIR).is_dir():
        return workspace / PREPARED_DIR
    cache = workspace / DVC_CACHE_FILES
    listing = cache / version[:2] / f"{version[2:]}.dir"
    if not listing.is_file():
        raise ComparisonUnavailable(
            f"prepared data {version[:12]} is neither the workspace's {PREPARED_DIR} nor in its DVC cache ({cache})"
        )
    view = scratch_dir / version
    for entry in json.loads(listing.read_text()):
        source = cache / entry["md5"][:2] / entry["md5"][2:]
        if not source.is_file():
            raise ComparisonUnavailable(f"{listing}: {entry['relpath']} is missing from the DVC cache")
        target = view / entry["relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source.resolve())
    return view


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None: JSON columns (PostgreSQL's JSONB) refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def without_none(value: Any) -> Any:
    """`json_safe(value)` with None entries left out: BentoML's model metadata refuses None."""
    value = json_safe(value)
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value if v is not None]
    return value


def describe_check(check: dict[str, Any] | Check) -> str:
    """One line for a check: `value auc 0.8123 >= 0.85: fail (detail)`."""
    c = check if isinstance(check, dict) else asdict(check)
    value = "n/a" if c.get("value") is None else f"{c['value']:.4f}"
    detail = f" ({c['detail']})" if c.get("detail") else ""
    return f"{c['kind']} {c['metric']} {value} {c['comparison']} {c['threshold']}: {c['verdict']}{detail}"


# -- manual promotion ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManualPromotion:
    """What `promote_manually` did: the gate's outcome, and whether production changed."""

    name: str
    version: int
    outcome: GateOutcome
    promoted: bool
    overridden: bool
    audit_reason: str | None
    bento_tag: str | None

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.outcome.decision.checks if c.verdict == "fail"]


def promote_manually(
    sessions: Callable[[], Session],
    workspace: Path,
    params: Params,
    name: str,
    version: int,
    *,
    reason: str,
    actor: str,
    override: bool = False,
) -> ManualPromotion:
    """Run the gate on version `version` of `name` against the current champion and promote it if
    the gate passes, or if `override` is set (the audit row then says OVERRIDE and lists the failing
    checks). The decision is recorded either way; a refusal without override changes no stage.

    The version's serving-parity check from its last recorded decision, if any, is carried over:
    a Bento that failed it does not return to production without an override.

    Raises:
        NotFoundError: no such version.
        InvalidTransition: the version is production already, was rejected, or has no Bento.
        registry.PromotionConflict: production changed while the gate ran.
    """
    if not reason.strip():
        raise ValueError("a manual promotion needs a reason")
    with sessions() as session:
        mv = repo.get_version(session, name, version)
        if mv is None:
            raise NotFoundError(f"{name} has no version {version}")
        label = f"{name} v{version}"
        if mv.stage == Stage.PRODUCTION:
            raise InvalidTransition(f"{label} is already production")
        if mv.stage == Stage.REJECTED:
            raise InvalidTransition(f"{label} was rejected; rejected versions never return (train a new version)")
        if not mv.bento_tag:
            raise InvalidTransition(f"{label} has no Bento (it was never packaged); production must be servable")
        candidate_id, metrics, test_data = mv.id, dict(mv.metrics or {}), mv.test_data_version
        evaluate_cfg = _evaluate_config(mv.run.params if mv.run is not None else None, params)
        previous = repo.latest_gate_decision(session, mv.id)
        serving = [c for c in (previous.checks if previous is not None else []) if c.get("kind") == "serving"]
        champion = read_champion(session, name)
        retraining = read_retraining(session, name, params.drift, mv.dataset_version)
        bento_tag = mv.bento_tag

    with tempfile.TemporaryDirectory(prefix="medgate-gate-") as scratch:
        outcome = evaluate_gate(
            metrics, test_data, champion, params.gate.policy_for(name), workspace, evaluate_cfg, Path(scratch), retraining
        )
    carried = "from the last recorded decision"
    for check in serving[-1:]:
        detail = check.get("detail") or ""
        outcome = outcome.with_check(Check(**{**check, "detail": detail if detail.startswith(carried) else f"{carried}; {detail}"}))
    decision = outcome.decision
    failed = [c for c in decision.checks if c.verdict == "fail"]

    if decision.promote:
        audit_reason: str | None = f"manual promotion: {reason}; gate passed: {decision.reason}"
    elif override:
        shown = "; ".join(describe_check(c) for c in failed) or decision.reason
        audit_reason = f"OVERRIDE of a refused gate: {reason}; failing checks: {shown}"
    else:
        audit_reason = None
    with sessions() as session:
        repo.record_gate_decision(
            session, model_version_id=candidate_id, promote=decision.promote, checks=json_safe(decision.to_dict()["checks"]),
            champion_version_id=outcome.champion_id, reason=f"manual gate requested by {actor}: {decision.reason}",
        )
        session.commit()
        if audit_reason is not None:
            repo.promote_version(
                session, candidate_id, actor=actor, reason=audit_reason, expected_champion_id=outcome.champion_id
            )
    return ManualPromotion(
        name, version, outcome, audit_reason is not None, override and not decision.promote, audit_reason, bento_tag
    )


def _evaluate_config(run_params: dict[str, Any] | None, params: Params) -> EvaluateConfig:
    """The evaluation settings the candidate was evaluated with (its run's params; keys it predates
    from params.yaml), else params.yaml's."""
    try:
        return EvaluateConfig.model_validate(merged(params.evaluate.model_dump(), (run_params or {})["evaluate"]))
    except (KeyError, ValueError, AttributeError):
        return params.evaluate
