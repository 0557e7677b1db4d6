"""Registry repository and database invariants, on SQLite and on PostgreSQL.

Every test runs against a fresh SQLite file and, where PostgreSQL answers at
``MEDGATE_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``),
against a fresh schema created for that test and dropped afterwards.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC
from functools import partial
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry import db, errors, models, repository as repo
from registry.models import ModelVersion

PG_URL = os.environ.get("MEDGATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SHA = "ab" * 32
TABLES = ("datasets", "runs", "model_versions", "gate_decisions", "audit_log", "drift_events")


def _postgres_unavailable() -> str | None:
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: skip, with the reason
        return f"PostgreSQL not reachable at {make_url(PG_URL).render_as_string()}: {type(exc).__name__}"
    finally:
        engine.dispose()
    return None


@pytest.fixture(scope="session")
def postgres_skip_reason() -> str | None:
    return _postgres_unavailable()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_skip_reason: str | None) -> Iterator[str]:
    """A registry URL with nothing in it yet (SQLite file in a folder not yet made, or an empty PG schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'not-yet' / 'registry.db'}"
        return
    if postgres_skip_reason:
        pytest.skip(postgres_skip_reason)
    schema = f"medgate_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield (
            make_url(PG_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    db.upgrade_database(db_url)
    made = db.make_session_factory(db_url)
    yield made
    bind = made.kw["bind"]
    bind.dispose()


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as s:
        yield s


def _dialect(factory: sessionmaker[Session]) -> str:
    return str(factory.kw["bind"].dialect.name)


def _run(session: Session) -> models.Run:
    dataset = repo.record_dataset(
        session,
        source="medmnist:pneumoniamnist",
        version="md5-0123",
        kind="prepared",
        num_images=100,
        num_patients=None,
        counts={"train": {"normal": 40, "pneumonia": 40}, "test": {"normal": 10, "pneumonia": 10}},
        class_names=["normal", "pneumonia"],
        validation_success=True,
        report_path="reports/validate.html",
    )
    return repo.start_run(
        session,
        dataset_id=dataset.id,
        params={"train": {"lr": 0.001, "epochs": 2}},
        git_commit="deadbeef",
        prefect_flow_run_id=None,
        trigger="manual",
    )


def _register(session: Session, run: models.Run, name: str = "pneumonia", **kw: Any) -> ModelVersion:
    return repo.register_model_version(
        session,
        name=name,
        run_id=run.id,
        dataset_version="md5-0123",
        test_data_version="md5-test",
        metrics={"auc": 0.9},
        artifact_sha256=SHA,
        **kw,
    )


def _versions(factory: sessionmaker[Session], count: int, name: str = "pneumonia") -> list[int]:
    with factory() as s:
        run = _run(s)
        ids = [_register(s, run, name).id for _ in range(count)]
        s.commit()
    return ids


def _drift(session: Session, run: models.Run, baseline_id: int, version: str = "md5-0456") -> models.DriftEvent:
    """A drift event on dataset `version` (recorded here) against version id `baseline_id`."""
    dataset = repo.record_dataset(
        session, source="medmnist:pneumoniamnist", version=version, kind="raw", num_images=100, num_patients=None,
        counts={}, class_names=["normal", "pneumonia"], validation_success=True, report_path=None,
    )
    return repo.record_drift(
        session, run_id=run.id, dataset_id=dataset.id, baseline_version_id=baseline_id,
        checks=[{"name": "class_share", "value": 0.35, "bound": 0.2, "detail": "largest change: class 'pneumonia'"}],
        reason="dataset md5-0456 drifted",
    )


def _stages(factory: sessionmaker[Session], name: str = "pneumonia") -> dict[int, str]:
    with factory() as s:
        return {v.version: v.stage for v in repo.list_versions(s, name)}


# -- schema and engine ---------------------------------------------------------------------------


def test_upgrade_twice_is_a_no_op_and_schema_matches_models(
    db_url: str, factory: sessionmaker[Session]
) -> None:
    db.upgrade_database(db_url)
    assert db.current_revision(db_url) == db.head_revision() == "0004"
    with factory.kw["bind"].connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), models.Base.metadata)
    assert diff == []


def test_downgrade_then_upgrade_through_alembic_cli_config(
    db_url: str, factory: sessionmaker[Session]
) -> None:
    with factory() as s:
        _run(s)
        s.commit()
    factory.kw["bind"].dispose()
    command.downgrade(db.alembic_config(db_url), "base")
    assert db.current_revision(db_url) is None
    command.upgrade(db.alembic_config(db_url), "head")
    with factory() as s:
        assert repo.list_datasets(s) == []


def test_concurrent_upgrades_take_turns(db_url: str) -> None:
    """Two processes' `medgate db upgrade` at once on an empty PostgreSQL schema: both succeed, one
    migrates (the advisory lock; without it the second's CREATE TABLE collides with the first's)."""
    import subprocess
    import sys
    import time

    if db_url.startswith("sqlite"):
        pytest.skip("SQLite serialises the upgrades by BEGIN IMMEDIATE, as every other write")
    start_at = time.time() + 2  # after each process's imports: they upgrade together
    code = "import sys, time; from registry import db; time.sleep(max(0.0, float(sys.argv[2]) - time.time())); db.upgrade_database(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url, str(start_at)], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    stderr = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-500:] for e in stderr]
    assert db.current_revision(db_url) == db.head_revision()


def test_commands_check_the_schema_and_only_db_upgrade_migrates_a_server_database(
    db_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a command finding the schema behind exits 2 naming `medgate db upgrade`, changing
    nothing; after it, commands run without DDL. SQLite (the workspace's own file) migrates itself."""
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("MEDGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--json", "-w", str(tmp_path)])
    if "sqlite" in db_url:
        assert listed.exit_code == 0 and db.current_revision(db_url) == db.head_revision()
        return
    assert listed.exit_code == 2 and "run `medgate db upgrade`" in listed.output, listed.output
    assert db.current_revision(db_url) is None
    upgraded = runner.invoke(app, ["db", "upgrade", "-w", str(tmp_path)])
    assert upgraded.exit_code == 0 and f"none -> {db.head_revision()}" in upgraded.output, upgraded.output
    assert runner.invoke(app, ["models", "list", "--json", "-w", str(tmp_path)]).exit_code == 0
    with pytest.raises(errors.SchemaOutOfDate, match="newer than this medgate"):
        engine = db.make_engine(db_url)
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        engine.dispose()
        db.ensure_schema(db_url, upgrade=True)


def test_sqlite_engine_is_safe_for_concurrent_writers(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'r.db'}"
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert (tmp_path / "a" / "b").is_dir()
    finally:
        engine.dispose()


# -- datasets and runs ---------------------------------------------------------------------------


def test_record_dataset_is_idempotent_on_source_and_version(session: Session) -> None:
    args: dict[str, Any] = {
        "source": "data/raw/chest",
        "version": "abc123",
        "kind": "raw",
        "num_images": 10,
        "num_patients": 4,
        "counts": {"all": 10},
        "class_names": ["a", "b"],
        "validation_success": False,
        "report_path": None,
    }
    first = repo.record_dataset(session, **args)
    second = repo.record_dataset(session, **{**args, "validation_success": True, "report_path": "r.html"})
    session.commit()
    assert first.id == second.id
    assert len(repo.list_datasets(session)) == 1
    assert second.validation_success is True and second.report_path == "r.html"
    assert second.created_at.tzinfo is UTC
    other = repo.record_dataset(session, **{**args, "version": "def456"})
    assert other.id != first.id


def test_run_lifecycle(session: Session) -> None:
    run = _run(session)
    assert run.status == "running" and len(run.run_uid) == 36
    assert run.params_hash == repo.hash_params({"train": {"epochs": 2, "lr": 0.001}})
    with pytest.raises(ValueError):
        repo.finish_run(session, run.run_uid, status="running")
    done = repo.finish_run(session, run.run_uid, status="completed", summary={"auc": 0.91})
    session.commit()
    assert done.status == "completed" and done.finished_at is not None and done.summary == {"auc": 0.91}
    with pytest.raises(errors.InvalidTransition):
        repo.finish_run(session, run.run_uid, status="failed", error="late")
    with pytest.raises(errors.NotFoundError):
        repo.finish_run(session, str(uuid.uuid4()), status="failed")
    assert repo.get_run(session, run.run_uid) is done


def test_drift_events_are_audited_and_order_datasets(session: Session) -> None:
    run = _run(session)
    v1 = _register(session, run)
    assert repo.latest_drift(session, "pneumonia") is None
    first = _drift(session, run, v1.id)
    later = _drift(session, run, v1.id, version="md5-0789")
    session.commit()
    assert repo.latest_drift(session, "pneumonia") is later and repo.latest_drift(session, "other") is None
    assert first.dataset.version == "md5-0456" and first.checks[0]["bound"] == 0.2
    # A version's place is its first record, under any source.
    repo.record_dataset(
        session, source="elsewhere", version="md5-0123", kind="raw", num_images=1, num_patients=None, counts={},
        class_names=["a", "b"], validation_success=True, report_path=None,
    )
    assert repo.dataset_seq(session, "md5-0123") < repo.dataset_seq(session, "md5-0456") < repo.dataset_seq(session, "md5-0789")
    assert repo.dataset_seq(session, "never-seen") is None
    audit = [e for e in repo.audit_trail(session, "pneumonia") if e.action == "drift"]
    assert [(e.model_version_id, e.from_stage, e.to_stage, e.reason) for e in audit] == [(v1.id, None, None, "dataset md5-0456 drifted")] * 2
    with pytest.raises(errors.NotFoundError):
        repo.record_drift(session, run_id=run.id, dataset_id=10_000, baseline_version_id=v1.id, checks=[], reason="x")


# -- model versions ------------------------------------------------------------------------------


def test_register_numbers_versions_per_name_and_audits(session: Session) -> None:
    run = _run(session)
    a1, a2 = _register(session, run, "a"), _register(session, run, "a")
    b1 = _register(session, run, "b", model_tag="b:1abc", bento_tag="svc:xyz")
    session.commit()
    assert [(v.name, v.version, v.stage) for v in (a1, a2, b1)] == [
        ("a", 1, "candidate"),
        ("a", 2, "candidate"),
        ("b", 1, "candidate"),
    ]
    assert repo.get_version(session, "a", 2) is a2 and repo.get_version(session, "a", 3) is None
    assert [e.action for e in repo.audit_trail(session, "a")] == ["register", "register"]
    assert len(repo.audit_trail(session)) == 3


def test_register_refuses_bad_inputs(session: Session) -> None:
    run = _run(session)
    with pytest.raises(ValueError, match="sha256"):
        repo.register_model_version(
            session,
            name="m",
            run_id=run.id,
            dataset_version="d",
            test_data_version="t",
            metrics={},
            artifact_sha256="xyz",
        )
    for bad in ("model:latest", "model", "model:"):
        with pytest.raises(ValueError, match="exact BentoML tag"):
            _register(session, run, model_tag=bad)
    with pytest.raises(errors.NotFoundError):
        _register(session, models.Run(id=999_999))


def test_concurrent_registrations_get_distinct_numbers(factory: sessionmaker[Session]) -> None:
    with factory() as s:
        run_id = _run(s).id
        s.commit()
    barrier = threading.Barrier(4)
    numbers: list[int] = []
    failures: list[BaseException] = []

    def register() -> None:
        try:
            with factory() as s:
                barrier.wait()
                numbers.append(_register(s, s.get_one(models.Run, run_id), "shared").version)
                s.commit()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    assert sorted(numbers) == [1, 2, 3, 4]


def test_set_package_only_retags_candidates(session: Session) -> None:
    version = _register(session, _run(session))
    session.commit()
    repo.set_package(session, version.id, "pneumonia:a1", "pneumonia_service:b1")
    session.commit()
    assert (version.model_tag, version.bento_tag) == ("pneumonia:a1", "pneumonia_service:b1")
    with pytest.raises(ValueError):
        repo.set_package(session, version.id, "pneumonia:latest", "pneumonia_service:b1")
    repo.promote_version(session, version.id, actor="ci", reason="first")
    assert repo.set_package(session, version.id, "pneumonia:a1", "pneumonia_service:b1") is version
    with pytest.raises(errors.InvalidTransition):
        repo.set_package(session, version.id, "pneumonia:a2", "pneumonia_service:b2")


def test_gate_decisions_are_stored_with_their_checks(session: Session) -> None:
    run = _run(session)
    v1, v2 = _register(session, run), _register(session, run)
    checks = [{"metric": "auc", "value": 0.91, "lower": 0.8, "passed": True}]
    repo.record_gate_decision(
        session, model_version_id=v2.id, promote=False, checks=[], champion_version_id=None, reason="x"
    )
    decision = repo.record_gate_decision(
        session, model_version_id=v2.id, promote=True, checks=checks, champion_version_id=v1.id, reason="ok"
    )
    session.commit()
    assert repo.latest_gate_decision(session, v2.id) is decision
    assert decision.checks == checks and decision.model_version is v2
    assert repo.latest_gate_decision(session, v1.id) is None


# -- stage changes -------------------------------------------------------------------------------


def test_promote_archives_the_previous_production_with_audit_rows(session: Session) -> None:
    run = _run(session)
    v1, v2 = _register(session, run), _register(session, run)
    other = _register(session, run, "other")
    session.commit()
    assert repo.get_champion(session, "pneumonia") is None and repo.latest_production(session) is None
    repo.promote_version(session, v1.id, actor="ci", reason="first model")
    repo.promote_version(session, other.id, actor="ci", reason="other model")
    assert repo.latest_production(session) is other
    repo.promote_version(session, v2.id, actor="alice", reason="better auc")
    assert (v1.stage, v2.stage) == ("archived", "production")
    assert repo.get_champion(session, "pneumonia") is v2
    assert repo.latest_production(session) is v2
    assert v2.promoted_at is not None and v2.promoted_at.tzinfo is UTC
    trail = [
        (e.action, e.model_version_id, e.from_stage, e.to_stage, e.actor)
        for e in repo.audit_trail(session, "pneumonia")
    ]
    assert trail[2:] == [
        ("promote", v1.id, "candidate", "production", "ci"),
        ("archive", v1.id, "production", "archived", "alice"),
        ("promote", v2.id, "candidate", "production", "alice"),
    ]
    # Promoting the production version again changes nothing.
    repo.promote_version(session, v2.id, actor="alice", reason="again")
    assert len(repo.audit_trail(session, "pneumonia")) == 5


def test_promote_refuses_when_production_changed_since_the_gate(session: Session) -> None:
    run = _run(session)
    v1, v2 = _register(session, run), _register(session, run)
    repo.record_gate_decision(
        session,
        model_version_id=v2.id,
        promote=True,
        checks=[],
        champion_version_id=None,
        reason="no champion",
    )
    session.commit()
    repo.promote_version(session, v1.id, actor="ci", reason="manual", expected_champion_id=None)
    with pytest.raises(errors.PromotionConflict, match="re-run the gate"):
        repo.promote_version(session, v2.id, actor="ci", reason="gate passed")
    assert (v1.stage, v2.stage) == ("production", "candidate")
    with pytest.raises(errors.PromotionConflict):
        repo.promote_version(session, v2.id, actor="ci", reason="x", expected_champion_id=None)
    repo.promote_version(session, v2.id, actor="ci", reason="re-gated", expected_champion_id=v1.id)
    assert repo.get_champion(session, "pneumonia") is v2


def test_reject_only_candidates_and_rejected_never_promote(session: Session) -> None:
    run = _run(session)
    v1, v2 = _register(session, run), _register(session, run)
    session.commit()
    repo.reject_version(session, v1.id, actor="ci", reason="gate refused: auc below 0.8")
    assert v1.stage == "rejected"
    repo.reject_version(session, v1.id, actor="ci", reason="again")  # no-op
    with pytest.raises(errors.InvalidTransition):
        repo.promote_version(session, v1.id, actor="ci", reason="x")
    repo.promote_version(session, v2.id, actor="ci", reason="ok")
    with pytest.raises(errors.InvalidTransition):
        repo.reject_version(session, v2.id, actor="ci", reason="use rollback")
    with pytest.raises(errors.NotFoundError):
        repo.reject_version(session, 999_999, actor="ci", reason="x")
    assert [e.action for e in repo.audit_trail(session, "pneumonia")][2:] == ["reject", "promote"]


def test_rollback_restores_the_previous_production(session: Session) -> None:
    run = _run(session)
    v1, v2, v3, v4 = (_register(session, run) for _ in range(4))
    session.commit()
    with pytest.raises(errors.InvalidTransition, match="no production"):
        repo.rollback(session, "pneumonia", actor="ops", reason="x")
    repo.promote_version(session, v1.id, actor="ci", reason="1")
    with pytest.raises(errors.InvalidTransition, match="no earlier"):
        repo.rollback(session, "pneumonia", actor="ops", reason="x")
    repo.promote_version(session, v2.id, actor="ci", reason="2")
    repo.promote_version(session, v3.id, actor="ci", reason="3")
    assert repo.rollback(session, "pneumonia", actor="ops", reason="v3 drifts") is v2
    assert (v2.stage, v3.stage) == ("production", "archived")
    # The previous production is now v3 again: rolling back twice toggles.
    assert repo.rollback(session, "pneumonia", actor="ops", reason="undo") is v3
    assert repo.rollback(session, "pneumonia", actor="ops", reason="pin", to_version=1) is v1
    assert _stages_in(session) == {1: "production", 2: "archived", 3: "archived", 4: "candidate"}
    with pytest.raises(errors.InvalidTransition, match="only archived"):
        repo.rollback(session, "pneumonia", actor="ops", reason="x", to_version=4)
    with pytest.raises(errors.NotFoundError):
        repo.rollback(session, "pneumonia", actor="ops", reason="x", to_version=9)
    with pytest.raises(errors.NotFoundError):
        repo.rollback(session, "nobody", actor="ops", reason="x")
    last = repo.audit_trail(session, "pneumonia")[-2:]
    assert [(e.action, e.model_version_id, e.to_stage) for e in last] == [
        ("rollback", v3.id, "archived"),
        ("rollback", v1.id, "production"),
    ]
    assert v4.stage == "candidate"


def _stages_in(session: Session, name: str = "pneumonia") -> dict[int, str]:
    return {v.version: v.stage for v in repo.list_versions(session, name)}


# -- database-level invariants -------------------------------------------------------------------


def test_database_allows_one_production_per_name(factory: sessionmaker[Session]) -> None:
    v1, v2 = _versions(factory, 2)
    _versions(factory, 1, name="other")
    with factory() as s:
        s.execute(text("UPDATE model_versions SET stage = 'production' WHERE id = :id"), {"id": v1})
        s.execute(text("UPDATE model_versions SET stage = 'production' WHERE name = 'other'"))
        with pytest.raises(IntegrityError):
            s.execute(text("UPDATE model_versions SET stage = 'production' WHERE id = :id"), {"id": v2})
        s.rollback()
    with factory() as s, pytest.raises(IntegrityError):
        s.execute(text("UPDATE model_versions SET stage = 'staging' WHERE id = :id"), {"id": v1})


@pytest.mark.parametrize("actor", ["", "x" * 201])
def test_promotion_and_its_audit_rows_commit_together(factory: sessionmaker[Session], actor: str) -> None:
    v1, v2 = _versions(factory, 2)
    with factory() as s:
        repo.promote_version(s, v1, actor="ci", reason="first")
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split()
        statements.append(f"{words[0]} {words[2] if words[0] == 'INSERT' else words[1]}")

    engine = factory.kw["bind"]
    with factory() as s:
        audit_before = len(repo.audit_trail(s))
        event.listen(engine, "before_cursor_execute", record)
        try:
            # The database refuses the audit insert (a CHECK constraint; PostgreSQL
            # reports the over-long varchar as DataError).
            with pytest.raises((IntegrityError, DataError)):
                repo.promote_version(s, v2, actor=actor, reason="bad actor")
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert not s.in_transaction()
    # Both stage updates reached the database before the audit insert failed.
    assert statements.count("UPDATE model_versions") == 2
    assert statements.index("INSERT audit_log") > max(
        i for i, x in enumerate(statements) if x.startswith("UPDATE")
    )
    assert _stages(factory) == {1: "production", 2: "candidate"}
    with factory() as s:
        assert len(repo.audit_trail(s)) == audit_before
        assert repo.get_champion(s, "pneumonia") is not None


def test_rows_are_never_deleted_and_audit_rows_never_change(factory: sessionmaker[Session]) -> None:
    (v1,) = _versions(factory, 1)
    with factory() as s:
        repo.record_gate_decision(
            s, model_version_id=v1, promote=True, checks=[], champion_version_id=None, reason="ok"
        )
        _drift(s, s.get_one(models.Run, s.get_one(ModelVersion, v1).run_id), v1)
        s.commit()
        repo.promote_version(s, v1, actor="ci", reason="ok")
    for table in TABLES:
        with factory() as s, pytest.raises(IntegrityError, match="medgate registry"):
            s.execute(text(f"DELETE FROM {table}"))
    with factory() as s, pytest.raises(IntegrityError, match="append-only|not allowed"):
        s.execute(text("UPDATE audit_log SET actor = 'mallory'"))
    with factory() as s, pytest.raises(IntegrityError, match="append-only|not allowed"):
        s.execute(text("UPDATE drift_events SET model_name = 'other'"))
    with factory() as s:
        s.delete(s.get_one(ModelVersion, v1))
        with pytest.raises(IntegrityError):
            s.commit()
    if _dialect(factory) == "postgresql":
        for table in TABLES:
            with factory() as s, pytest.raises(IntegrityError, match="TRUNCATE"):
                s.execute(text(f"TRUNCATE {table} CASCADE"))
    with factory() as s:
        counts = {t: s.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
        actors = s.scalars(select(models.AuditEntry.actor)).all()
    assert all(n >= 1 for n in counts.values()), counts
    assert "mallory" not in actors


def test_no_row_is_replaced_by_any_write_path(factory: sessionmaker[Session]) -> None:
    """SQLite's REPLACE deletes the row in its way without firing DELETE triggers: every table refuses
    it (insert and update); on PostgreSQL an upsert of an append-only row is an UPDATE, refused too."""
    v1, v2 = _versions(factory, 2)
    with factory() as s:
        _drift(s, s.get_one(models.Run, s.get_one(ModelVersion, v1).run_id), v1)
        repo.record_gate_decision(s, model_version_id=v1, promote=True, checks=[], champion_version_id=None, reason="ok")
        s.commit()
        repo.promote_version(s, v1, actor="ci", reason="ok")
    with factory() as s:
        rows = {t: dict(s.execute(text(f"SELECT * FROM {t} ORDER BY id LIMIT 1")).mappings().one()) for t in TABLES}
    sqlite = _dialect(factory) == "sqlite"
    for table, row in rows.items():
        columns = ", ".join(row)
        values = ", ".join(f":{c}" for c in row)
        upsert = (
            [f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({values})", f"REPLACE INTO {table} ({columns}) VALUES ({values})"]
            if sqlite
            else [f"INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id"]
        )
        if table in ("audit_log", "drift_events") or sqlite:
            for statement in upsert:
                params = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in row.items()}
                with factory() as s, pytest.raises(IntegrityError, match="never replaced|not allowed"):
                    s.execute(text(statement), params)
                    s.commit()
    if sqlite:
        with factory() as s, pytest.raises(IntegrityError, match="never replaced"):
            version_2 = s.get_one(ModelVersion, v2).version
            s.execute(text("UPDATE OR REPLACE model_versions SET version = :v WHERE id = :id"), {"v": version_2, "id": v1})
        with factory() as s, pytest.raises(IntegrityError, match="never replaced"):
            s.execute(text("UPDATE OR REPLACE model_versions SET stage = 'production' WHERE id = :id"), {"id": v2})
    with factory() as s:
        after = {t: dict(s.execute(text(f"SELECT * FROM {t} ORDER BY id LIMIT 1")).mappings().one()) for t in TABLES}
        assert s.execute(text("SELECT count(*) FROM model_versions")).scalar_one() == 2
        assert repo.get_champion(s, s.get_one(ModelVersion, v1).name).id == v1
    assert after == rows


# -- races ---------------------------------------------------------------------------------------


def _race(factory: sessionmaker[Session], work: list[Callable[[Session], object]]) -> list[object]:
    """Run each callable in its own thread and session, released at the same moment."""
    barrier = threading.Barrier(len(work))
    results: list[object] = [None] * len(work)

    def target(i: int) -> None:
        with factory() as s:
            barrier.wait()
            try:
                results[i] = work[i](s)
            except BaseException as exc:  # noqa: BLE001 - the caller inspects every outcome
                results[i] = exc

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a promotion hung"
    return results


@pytest.mark.parametrize("round_", range(3))
def test_race_two_gated_promotions_one_wins(factory: sessionmaker[Session], round_: int) -> None:
    """Both candidates passed the gate against 'no champion'; the second to lock must lose."""
    name = f"race{round_}"
    v1, v2 = _versions(factory, 2, name=name)
    with factory() as s:
        for vid in (v1, v2):
            repo.record_gate_decision(
                s, model_version_id=vid, promote=True, checks=[], champion_version_id=None, reason="ok"
            )
        s.commit()
    results = _race(
        factory,
        [partial(repo.promote_version, version_id=vid, actor="ci", reason="race") for vid in (v1, v2)],
    )
    winners = [r for r in results if isinstance(r, ModelVersion)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], errors.PromotionConflict), repr(losers[0])
    stages = _stages(factory, name)
    assert sorted(stages.values()) == ["candidate", "production"]
    with factory() as s:
        champion = repo.get_champion(s, name)
        assert champion is not None and champion.id == winners[0].id
        promotes = [e for e in repo.audit_trail(s, name) if e.action != "register"]
        assert [(e.action, e.model_version_id) for e in promotes] == [("promote", champion.id)]


def test_race_unchecked_promotions_serialise(factory: sessionmaker[Session]) -> None:
    """Without a champion expectation both succeed one after the other; still one production."""
    v1, v2 = _versions(factory, 2)
    results = _race(
        factory,
        [
            partial(
                repo.promote_version,
                version_id=vid,
                actor="ops",
                reason="race",
                expected_champion_id=repo.ANY_CHAMPION,
            )
            for vid in (v1, v2)
        ],
    )
    assert all(isinstance(r, ModelVersion) for r in results), results
    assert sorted(_stages(factory).values()) == ["archived", "production"]
    with factory() as s:
        actions = [e.action for e in repo.audit_trail(s, "pneumonia") if e.action != "register"]
    assert actions == ["promote", "archive", "promote"]
