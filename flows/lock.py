"""One run at a time per workspace: an exclusive file lock in `.medgate/run.lock`.

Two runs on one workspace would overwrite each other's `data/` outputs and DVC's lock file, so
the training flow takes this lock before it records anything. The lock is `flock(2)`: the
kernel releases it when the holding process ends, however it ends, so a killed run never
leaves a workspace locked. While held, `.medgate/run.holder.json` names its holder (pid, host, what
it runs, since when, and the registry run once started), replaced whole at each change (never seen
half-written); a clean release removes it. A holder record found by the next run that gets the
lock therefore belongs to a run that was killed: the flow closes that run in the registry
(`close_interrupted_run`). The record is a file of its own because the lock file cannot be
replaced: `flock` locks an inode, and a renamed-over lock file would be a second, unlocked one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from components.data.artifacts import write_json_atomically
from registry import repository as repo
from registry.models import RunStatus, Stage

LOCK_FILE = "run.lock"
HOLDER_FILE = "run.holder.json"
INTERRUPTED_ACTOR = "medgate-recovery"


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace; the message names it and what to do."""


@dataclass
class WorkspaceLock:
    """A held lock. `previous` is the holder record a killed run left behind, if any."""

    path: Path
    fd: int
    holder: dict[str, Any]
    previous: dict[str, Any] | None = field(default=None)

    def record_run(self, run_uid: str) -> None:
        """Name the registry run in the holder record, so that a kill can be traced to it."""
        self.holder["run_uid"] = run_uid
        write_json_atomically(self.path.with_name(HOLDER_FILE), self.holder)


def read_holder(state_dir: Path) -> dict[str, Any] | None:
    """The holder record of the workspace lock in `state_dir` (None when absent or unreadable)."""
    try:
        text = (state_dir / HOLDER_FILE).read_text()
    except OSError:
        return None
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a run that has not yet written its name"
    run = f", registry run {holder['run_uid']}" if holder.get("run_uid") else ""
    return f"{holder.get('purpose', 'a run')} (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}{run})"


@contextmanager
def workspace_lock(state_dir: Path, purpose: str, wait_s: float = 0.0, poll_s: float = 0.5) -> Iterator[WorkspaceLock]:
    """Hold the workspace's run lock for the duration of the block.

    Args:
        state_dir: the workspace's `.medgate` folder.
        purpose: what the holder does, shown to a run that is refused (e.g. "retrain run of embedded").
        wait_s: how long to wait for a busy workspace; 0 refuses at once.
        poll_s: how often to try again while waiting.

    Raises:
        WorkspaceBusy: the lock stayed held for `wait_s` seconds.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(wait_s, 0.0)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:.0f} s" if wait_s > 0 else ""
                    raise WorkspaceBusy(
                        f"{state_dir.parent}: workspace busy{waited}: another medgate run holds {path}: "
                        f"{describe_holder(read_holder(state_dir))}. Two runs on one workspace would overwrite each "
                        "other's data; wait for it to finish, or pass --wait SECONDS to queue behind it."
                    ) from None
                time.sleep(poll_s)
    except BaseException:
        os.close(fd)
        raise
    lock = WorkspaceLock(path, fd, holder={}, previous=read_holder(state_dir))
    lock.holder = {
        "pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        write_json_atomically(state_dir / HOLDER_FILE, lock.holder)
        yield lock
    finally:
        try:
            (state_dir / HOLDER_FILE).unlink(missing_ok=True)  # before the unlock: the next holder finds none
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def close_interrupted_run(session: Session, previous: dict[str, Any] | None) -> str | None:
    """Close the registry records of a run that was killed while holding the lock. Commits.

    Its run becomes `failed` (error: interrupted), and each of its versions still a candidate
    (never gated to the end) becomes `rejected` with that reason; production is never touched.
    Returns the run's uid when there was one to close.
    """
    run_uid = (previous or {}).get("run_uid")
    if not run_uid:
        return None
    run = repo.get_run(session, run_uid)
    if run is None or run.status != RunStatus.RUNNING:
        return None
    reason = f"interrupted: the run's process (pid {previous.get('pid')} on {previous.get('host')}) ended before it finished"  # type: ignore[union-attr]
    repo.finish_run(session, run_uid, status=RunStatus.FAILED.value, summary={"status": "failed", "error": reason}, error=reason)
    for version in repo.list_versions(session):
        if version.run_id == run.id and version.stage == Stage.CANDIDATE:
            repo.reject_version(session, version.id, actor=INTERRUPTED_ACTOR, reason=reason)
    session.commit()
    return run_uid
