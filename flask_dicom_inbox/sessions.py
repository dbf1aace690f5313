"""Server-side login sessions (XNAT's ``JSESSIONID``) kept in Redis.

A session token is a random secret handed to the client once. Redis holds only its SHA-256, so
whoever reads the keys cannot log in with them; the key maps to the username and expires after
``DICOM_INBOX_SESSION_TTL`` seconds without use (each successful lookup restarts the clock, as
XNAT's sessions do). Revoking deletes the key. A token never encodes or derives from a password.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    import redis

#: The config key for the idle lifetime of a session, in seconds.
SESSION_TTL_KEY = "DICOM_INBOX_SESSION_TTL"
DEFAULT_SESSION_TTL = 900

# token_urlsafe(32) gives 43 characters; anything far off that shape is not ours.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{32,128}")


class SessionStore:
    """Create, look up and revoke session tokens under ``{prefix}session:{sha256(token)}``."""

    def __init__(self, redis: redis.Redis, prefix: str, ttl_seconds: float) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"{SESSION_TTL_KEY} must be a positive number of seconds")
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl_seconds * 1000))

    @property
    def ttl_seconds(self) -> float:
        return self._ttl_ms / 1000

    def _key(self, token: str) -> str:
        digest = hashlib.sha256(token.encode("ascii")).hexdigest()
        return f"{self._prefix}session:{digest}"

    def create(self, username: str) -> str:
        """A new token for ``username``; only its hash is stored."""
        token = secrets.token_urlsafe(32)
        self._redis.set(self._key(token), username.encode("utf-8"), px=self._ttl_ms, nx=True)
        return token

    def lookup(self, token: str) -> str | None:
        """The username of a live session (and restart its idle clock), else ``None``."""
        if not _TOKEN_RE.fullmatch(token):
            return None
        value = self._redis.getex(self._key(token), px=self._ttl_ms)
        if value is None:
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def revoke(self, token: str) -> bool:
        """End the session; ``True`` if it was live."""
        if not _TOKEN_RE.fullmatch(token):
            return False
        return bool(self._redis.delete(self._key(token)))


def session_ttl() -> float:
    """The current app's ``DICOM_INBOX_SESSION_TTL`` (default 900 s)."""
    raw = current_app.config.get(SESSION_TTL_KEY, DEFAULT_SESSION_TTL)
    try:
        ttl = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{SESSION_TTL_KEY} must be a number of seconds, not {raw!r}") from None
    if ttl <= 0:
        raise ValueError(f"{SESSION_TTL_KEY} must be a positive number of seconds")
    return ttl


def session_store() -> SessionStore:
    """The session store of the current app (its Redis connection and key prefix)."""
    from .extension import current_state

    state = current_state()
    return SessionStore(state.redis, state.config.key_prefix, session_ttl())
