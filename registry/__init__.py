"""medgate model registry: datasets, runs, model versions, gate decisions, drift events, audit log.

Typical use::

    from registry import make_session_factory, upgrade_database, promote_version

    upgrade_database(url)                      # migrations to head, idempotent
    Session = make_session_factory(url)
    with Session() as session:
        promote_version(session, version_id, actor="ci", reason="gate passed")

See :mod:`registry.repository` for which functions commit and which only flush.
"""

from registry.db import (
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
    make_engine,
    make_session_factory,
    upgrade_database,
)
from registry.errors import InvalidTransition, NotFoundError, PromotionConflict, RegistryError, SchemaOutOfDate
from registry.models import (
    AuditEntry,
    Base,
    Dataset,
    DriftEvent,
    GateDecision,
    ModelVersion,
    Run,
    RunStatus,
    Stage,
)
from registry.repository import (
    ANY_CHAMPION,
    FROM_GATE,
    audit_trail,
    dataset_seq,
    finish_run,
    get_champion,
    get_run,
    get_version,
    hash_params,
    latest_drift,
    latest_gate_decision,
    latest_production,
    list_datasets,
    list_versions,
    promote_version,
    record_dataset,
    record_drift,
    record_gate_decision,
    register_model_version,
    reject_version,
    rollback,
    set_package,
    start_run,
)

__all__ = [
    "ANY_CHAMPION",
    "FROM_GATE",
    "AuditEntry",
    "Base",
    "Dataset",
    "DriftEvent",
    "GateDecision",
    "InvalidTransition",
    "ModelVersion",
    "NotFoundError",
    "PromotionConflict",
    "RegistryError",
    "Run",
    "RunStatus",
    "SchemaOutOfDate",
    "Stage",
    "alembic_config",
    "audit_trail",
    "current_revision",
    "dataset_seq",
    "ensure_schema",
    "finish_run",
    "get_champion",
    "get_run",
    "get_version",
    "head_revision",
    "hash_params",
    "latest_drift",
    "latest_gate_decision",
    "latest_production",
    "list_datasets",
    "list_versions",
    "make_engine",
    "make_session_factory",
    "promote_version",
    "record_dataset",
    "record_drift",
    "record_gate_decision",
    "register_model_version",
    "reject_version",
    "rollback",
    "set_package",
    "start_run",
    "upgrade_database",
]
