"""The gate step: a candidate's metrics against the production model's (the champion), on the same test data.

`evaluate_gate` is the one gate that the training flow (`gate_task`) and a manual promotion
(flows.promotion) run: `components.stages.gate.decide_promotion` compares the two. Change thresholds
only mean something on the same test data: when the champion was tested on another version, it is
first re-evaluated on the candidate's prepared test split (model from the BentoML store, metrics by
`components.stages.evaluate.evaluate_model`), and the decision says so. When that is impossible,
the change checks fail with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from sqlalchemy.orm import Session

from components.config import EvaluateConfig, GatePolicy
from components.stages.gate import Check, GateDecision, RetrainingRequirement, decide_promotion
from flows.workspace import DVC_CACHE_FILES, cached_folder, stage_dir
from registry import repository as repo
from registry.models import ModelVersion


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
        workspace: where that prepared data lives (prepare's output folder, or the DVC cache).
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


@task(name="gate")
def gate_task(
    metrics: dict[str, Any], test_data_version: str, champion: ChampionFacts | None, policy: GatePolicy, workspace: Path,
    evaluate_cfg: EvaluateConfig, scratch_dir: Path, retraining: RetrainingRequirement | None = None,
) -> GateOutcome:
    """The training flow's gate on its candidate (`evaluate_gate`); it never retries: a refusal is a verdict."""
    return evaluate_gate(metrics, test_data_version, champion, policy, workspace, evaluate_cfg, scratch_dir, retraining)


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

    from components.data.artifacts import METRICS_FILE, WEIGHTS_FILE, file_sha256
    from components.stages.evaluate import evaluate_model
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
    """DVC hash of the workspace's prepare output as dvc.lock records it (the test data's version)."""
    lock = workspace / "dvc.lock"
    if not lock.is_file():
        return None
    stage = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("prepare", {})
    prepared = stage_dir(workspace, "prepare").relative_to(workspace).as_posix()
    for out in stage.get("outs", ()):
        if out.get("path") == prepared and out.get("md5"):
            return str(out["md5"]).removesuffix(".dir")
    return None


def locate_prepared_data(workspace: Path, version: str, scratch_dir: Path) -> Path:
    """A folder holding prepared data `version`: prepare's output folder when it is that version,
    else a read-only view (symlinks) of it assembled from the workspace's DVC cache under `scratch_dir`.

    Raises:
        ComparisonUnavailable: the version is in neither place.
    """
    prepared = stage_dir(workspace, "prepare")
    if prepared_data_version(workspace) == version and prepared.is_dir():
        return prepared
    files = cached_folder(workspace, version)
    if files is None:
        raise ComparisonUnavailable(
            f"prepared data {version[:12]} is neither the workspace's {prepared.relative_to(workspace)} "
            f"nor in its DVC cache ({workspace / DVC_CACHE_FILES})"
        )
    view = scratch_dir / version
    for relpath, source in files.items():
        if not source.is_file():
            raise ComparisonUnavailable(f"prepared data {version[:12]}: {relpath} is missing from the DVC cache")
        target = view / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source.resolve())
    return view
