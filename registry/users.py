"""Console accounts: names, roles and password hashes (hashed by the caller, never stored in clear).

Accounts are never deleted: `remove_user` marks the row removed, and adding the name again restores
it with a new role and hash, so an audit log actor keeps naming one account. Each change writes an
audit row (`repository.audit_account`). These functions flush only; the caller commits.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import InvalidTransition, NotFoundError
from registry.models import MAX_ACTOR_LENGTH, Role, User, utcnow
from registry.repository import audit_account


def get_user(session: Session, name: str) -> User | None:
    """The active (not removed) account `name`, or None."""
    return session.scalars(select(User).where(User.name == name, User.removed_at.is_(None))).one_or_none()


def list_users(session: Session, *, include_removed: bool = False) -> list[User]:
    stmt = select(User).order_by(User.name)
    return list(session.scalars(stmt if include_removed else stmt.where(User.removed_at.is_(None))))


def count_users(session: Session) -> int:
    """How many active accounts exist."""
    return int(session.scalar(select(func.count()).select_from(User).where(User.removed_at.is_(None))) or 0)


def add_user(session: Session, name: str, role: str, password_hash: str, *, actor: str) -> User:
    """Add account `name` (or restore a removed one) with `role`.

    Raises:
        ValueError: an empty or over-long name, or an unknown role.
        InvalidTransition: an active account has that name.
    """
    if not name.strip() or len(name) > MAX_ACTOR_LENGTH or name != name.strip():
        raise ValueError(f"a user name is 1 to {MAX_ACTOR_LENGTH} characters without surrounding spaces, got {name!r}")
    if role not in set(Role):
        raise ValueError(f"role must be one of {', '.join(Role)}, got {role!r}")
    user = session.scalars(select(User).where(User.name == name)).one_or_none()
    if user is not None and user.removed_at is None:
        raise InvalidTransition(f"user {name!r} exists already (remove it first to change it)")
    if user is None:
        user = User(name=name, role=role, password_hash=password_hash, created_at=utcnow())
        session.add(user)
    else:
        user.role, user.password_hash, user.removed_at = role, password_hash, None
    audit_account(session, actor=actor, action="user-add", reason=f"{name} added as {role}")
    return user


def remove_user(session: Session, name: str, *, actor: str) -> User:
    """Mark account `name` removed: it can no longer sign in, and its sessions end.

    Raises:
        NotFoundError: no active account has that name.
    """
    user = get_user(session, name)
    if user is None:
        raise NotFoundError(f"no user {name!r}")
    user.removed_at = utcnow()
    audit_account(session, actor=actor, action="user-remove", reason=f"{name} ({user.role}) removed")
    return user
