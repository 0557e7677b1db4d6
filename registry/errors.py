"""Exceptions raised by the registry's repository functions."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error the registry raises on purpose."""


class NotFoundError(RegistryError, LookupError):
    """A row the caller named (by id, uid or name) does not exist."""


class InvalidTransition(RegistryError):
    """The requested stage or status change is not allowed from the row's current state."""


class PromotionConflict(RegistryError):
    """Another writer changed the production version of this model name first.

    Raised when the production version found under the lock is not the champion
    the caller's gate decision was made against, or when the database's
    one-production-per-name index refused the change. Nothing was written; re-run
    the gate against the new champion before trying again.
    """


class SchemaOutOfDate(RegistryError):
    """The database's schema is not the one this code was written for; `medgate db upgrade` migrates it."""
