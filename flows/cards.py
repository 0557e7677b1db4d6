"""Model cards from the registry: gather one version's facts and render them with `components.documents.modelcard`.

The flow writes the card at packaging (into the BentoML model store entry, so the Bento carries it)
and again under `runs/<run_uid>/` once the gate's final decision is recorded; `medgate models show`
renders it from the registry, so it always shows the current stage and decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from components.config import ModelCardConfig, ModelCardText, Params
from components.documents.modelcard import CardFacts, RenderedCard, render_model_card
from registry import repository as repo
from registry.models import ModelVersion

# The params sections that determine the model and its metrics, shown on the card.
CARD_PARAM_SECTIONS = ("prepare", "train", "evaluate")

PACKAGING_NOTE = (
    "This card was written at packaging, before the Bento was built and its serving parity checked: "
    "the Bento tag and the final gate decision are in the registry (`medgate models show`)."
)


def card_text(run_params: Mapping[str, Any] | None, params: Params, name: str) -> ModelCardText:
    """The intended use and limits the version was trained under (its run's params), else params.yaml's."""
    raw = (run_params or {}).get("modelcard")
    if raw is None:
        return params.modelcard.for_model(name)
    return ModelCardConfig.model_validate(raw).for_model(name)


def card_facts(session: Session, mv: ModelVersion, use: ModelCardText, *,
               gate: Mapping[str, Any] | None = None, stage: str | None = None, notes: tuple[str, ...] = ()) -> CardFacts:
    """The facts of version `mv` as the registry holds them.

    Args:
        gate: the decision to show (e.g. the flow's, before it is recorded); default the latest recorded.
        stage: the stage to show; default the registry's.
    """
    run = mv.run
    dataset = run.dataset if run is not None and run.dataset is not None else None
    if dataset is None:
        dataset = next((d for d in reversed(repo.list_datasets(session)) if d.version == mv.dataset_version), None)
    if gate is None:
        gate = recorded_gate(session, mv)
    return CardFacts(
        model_name=mv.name,
        model_version=mv.version,
        stage=stage or mv.stage,
        use=use,
        dataset={
            "version": mv.dataset_version,
            **(
                {
                    "source": dataset.source,
                    "kind": dataset.kind,
                    "num_images": dataset.num_images,
                    "num_patients": dataset.num_patients,
                    "class_names": list(dataset.class_names),
                    "validation_success": dataset.validation_success,
                    "report_path": dataset.report_path,
                }
                if dataset is not None
                else {}
            ),
        },
        metrics=dict(mv.metrics or {}),
        gate=gate,
        lineage={
            "run_id": run.run_uid if run is not None else None,
            "git_commit": run.git_commit if run is not None else None,
            "params_hash": run.params_hash if run is not None else None,
            "prefect_flow_run_id": (run.prefect_flow_run_id or None) if run is not None else None,
            "dataset_version": mv.dataset_version,
            "test_data_version": mv.test_data_version,
            "model_tag": mv.model_tag,
            "bento_tag": mv.bento_tag,
            "artifact_sha256": mv.artifact_sha256,
        },
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        params={k: run.params[k] for k in CARD_PARAM_SECTIONS if k in (run.params or {})} if run is not None else None,
        history=tuple(
            {"at": e.at.isoformat(timespec="seconds"), "actor": e.actor, "action": e.action,
             "from_stage": e.from_stage, "to_stage": e.to_stage, "reason": e.reason}
            for e in repo.audit_trail(session, mv.name)
            if e.model_version_id == mv.id
        ),
        notes=notes,
    )


def recorded_gate(session: Session, mv: ModelVersion) -> dict[str, Any] | None:
    """The latest recorded gate decision on `mv` as a dict (champion as a version number), or None."""
    decision = repo.latest_gate_decision(session, mv.id)
    if decision is None:
        return None
    numbers = {v.id: v.version for v in repo.list_versions(session, mv.name)}
    return {
        "promote": decision.promote,
        "reason": decision.reason,
        "champion_version": numbers.get(decision.champion_version_id) if decision.champion_version_id else None,
        "checks": list(decision.checks),
        "decided_at": decision.created_at.isoformat(timespec="seconds"),
    }


def render_card(session: Session, mv: ModelVersion, params: Params, **kwargs: Any) -> RenderedCard:
    """The card of `mv` (see `card_facts` for the keyword arguments)."""
    use = card_text(mv.run.params if mv.run is not None else None, params, mv.name)
    return render_model_card(card_facts(session, mv, use, **kwargs))


def write_card(card: RenderedCard, folder: Path) -> dict[str, Path]:
    """Write the card's files into `folder`; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, text in card.files().items():
        (folder / name).write_text(text, encoding="utf-8")
        written[name] = folder / name
    return written
