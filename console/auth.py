"""Accounts and sessions of the review console: argon2 password hashes, signed session cookies, CSRF tokens.

A session is a cookie signed with the workspace's console secret (itsdangerous): the user's name, a
CSRF token, and a fingerprint of the account's password hash, so that removing the user or giving
them a new password ends every session they had. Every form carries the session's CSRF token; a POST
whose token is missing or differs is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "medgate_console"
SESSION_MAX_AGE_S = 12 * 3600
SECRET_ENV = "MEDGATE_CONSOLE_SECRET"
SECRET_FILE = "console_secret"
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()
# Verified when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("medgate: no such user")


def hash_password(password: str) -> str:
    """The argon2id hash of `password` (argon2-cffi's defaults: salted, memory-hard).

    Raises:
        ValueError: a password shorter than MIN_PASSWORD_LENGTH characters.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches `password_hash` (None: an unknown user, always False, same cost)."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def fingerprint(password_hash: str) -> str:
    """A short digest of an account's hash: a session stays valid only while the account keeps it."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def console_secret(state_dir: Path) -> str:
    """MEDGATE_CONSOLE_SECRET, else the workspace's own random secret (0600), made on first use.

    Several console processes of one workspace share it, so their sessions are interchangeable.
    """
    if value := os.environ.get(SECRET_ENV):
        return value
    path = state_dir / SECRET_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


@dataclass(frozen=True)
class Session:
    """What a session cookie says: who (None before sign-in), their CSRF token, their hash's fingerprint."""

    user: str | None
    csrf: str
    fingerprint: str = ""


class SessionCodec:
    """Signs sessions into cookie values and reads them back (expired or tampered: None)."""

    def __init__(self, secret: str):
        self._serializer = URLSafeTimedSerializer(secret, salt="medgate-console-session")

    def dumps(self, session: Session) -> str:
        return self._serializer.dumps({"u": session.user, "c": session.csrf, "f": session.fingerprint})

    def loads(self, value: str | None) -> Session | None:
        if not value:
            return None
        try:
            data: Any = self._serializer.loads(value, max_age=SESSION_MAX_AGE_S)
        except BadSignature:  # SignatureExpired is one
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        return Session(data.get("u"), data["c"], data.get("f") or "")


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(session: Session | None, submitted: Any) -> bool:
    """Whether a form's `csrf` field is the session's token (compared in constant time)."""
    return session is not None and isinstance(submitted, str) and hmac.compare_digest(session.csrf, submitted)
