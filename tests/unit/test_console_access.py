"""Who the console lets in, in-process (Starlette's TestClient, no server): a registry without users,
a removed user's session, reports outside the runs folder, requests from another site."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from console.app import create_app
from console.auth import hash_password
from registry import db, repository as repo, users
from services.origin import allowed_hosts

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette's note on httpx
    from starlette.testclient import TestClient

PASSWORD = "a-long-password"
HASHED, OTHER_HASH = hash_password(PASSWORD), hash_password("another-password")  # once: argon2 is slow on purpose


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    db.upgrade_database(f"sqlite:///{tmp_path / 'registry.db'}")
    return tmp_path


def client(ws: Path, *, anonymous: bool) -> TestClient:
    sessions = db.make_session_factory(f"sqlite:///{ws / 'registry.db'}")
    return TestClient(create_app(sessions, ws, "secret", allowed_hosts("testserver"), anonymous=anonymous), base_url="http://testserver")


def _add(ws: Path, name: str, role: str = "approver") -> None:
    with db.make_session_factory(f"sqlite:///{ws / 'registry.db'}")() as s:
        users.add_user(s, name, role, HASHED, actor="test")
        s.commit()


def _sign_in(c: TestClient, name: str) -> str:
    """Signs in; returns the session's CSRF token."""
    csrf = c.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
    signed = c.post("/login", data={"name": name, "password": PASSWORD, "csrf": csrf}, follow_redirects=False)
    assert signed.status_code == 303, signed.text
    return c.get("/runs").text.split('name="csrf" value="')[1].split('"')[0]


def test_short_passwords_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 10 characters"):
        hash_password("short")


def test_without_users_pages_are_read_only_on_loopback_and_closed_elsewhere(ws: Path) -> None:
    open_ = client(ws, anonymous=True)
    assert open_.get("/runs").status_code == 200
    refused = open_.post("/models/m/1/approve", data={"csrf": "", "reason": "x"})
    assert refused.status_code == 403 and "sign in" in refused.text
    closed = client(ws, anonymous=False)
    assert closed.get("/runs", follow_redirects=False).headers["location"].startswith("/login")


def test_a_removed_user_is_signed_out_and_a_re_added_one_needs_a_new_sign_in(ws: Path) -> None:
    _add(ws, "ada")
    c = client(ws, anonymous=True)
    _sign_in(c, "ada")
    assert c.get("/runs", follow_redirects=False).status_code == 200
    with db.make_session_factory(f"sqlite:///{ws / 'registry.db'}")() as s:
        users.remove_user(s, "ada", actor="test")
        users.add_user(s, "ada", "viewer", OTHER_HASH, actor="test")
        s.commit()
    assert c.get("/runs", follow_redirects=False).status_code == 303  # the old session ended


def test_reports_are_served_from_the_runs_folder_only(ws: Path) -> None:
    _add(ws, "ada")
    inside, outside = ws / "runs" / "r1" / "report.html", ws / "secret.html"
    for path in (inside, outside):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<p>{path.name}</p>")
    with db.make_session_factory(f"sqlite:///{ws / 'registry.db'}")() as s:
        uids = []
        for path in (inside, outside):
            run = repo.start_run(s, dataset_id=None, params={}, git_commit=None, prefect_flow_run_id=None, trigger="manual")
            repo.finish_run(s, run.run_uid, status="completed", summary={"report": str(path)})
            uids.append(run.run_uid)
        s.commit()
    c = client(ws, anonymous=False)
    _sign_in(c, "ada")
    served = c.get(f"/runs/{uids[0]}/report")
    assert served.status_code == 200 and "report.html" in served.text and "sandbox" in served.headers["content-security-policy"]
    assert c.get(f"/runs/{uids[1]}/report").status_code == 404


def test_requests_from_another_site_are_refused(ws: Path) -> None:
    _add(ws, "ada")
    c = client(ws, anonymous=False)
    csrf = _sign_in(c, "ada")
    forged = c.post("/logout", data={"csrf": csrf}, headers={"Origin": "http://evil.example"}, follow_redirects=False)
    assert forged.status_code == 403 and "origin" in forged.text
    assert c.get("/runs", headers={"Host": "rebound.example"}).status_code == 403
    assert c.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
