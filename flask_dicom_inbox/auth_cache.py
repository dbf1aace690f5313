"""A short-lived memory of credentials that just passed the host's password check.

A password hash worth its name costs tens of milliseconds (scrypt, ~78 ms here), and clients
poll a status URL with basic auth every second: without this, 50 pollers keep a core busy
hashing. Only successful checks are remembered, under an HMAC of the credentials with a key
made at start (never the password), for ``DICOM_INBOX_AUTH_CACHE_SECONDS``; each hit still asks
the host for the user, so a removed user is refused at once. A changed password lets the old
one in for at most that long. Failed checks are never remembered.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time


class CredentialCache:
    """Credentials verified recently, per process; bounded in size."""

    def __init__(self, seconds: float, max_entries: int = 4096) -> None:
        self.seconds = float(seconds)
        self._max = max_entries
        self._key = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _digest(self, username: str, password: str) -> bytes:
        message = f"{username}\x00{password}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def verified(self, username: str, password: str) -> bool:
        """Whether these exact credentials passed the host's check in the last ``seconds``."""
        if self.seconds <= 0:
            return False
        digest = self._digest(username, password)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return False
            if entry[1] < time.monotonic() or entry[0] != username:
                del self._entries[digest]
                return False
            return True

    def remember(self, username: str, password: str) -> None:
        if self.seconds <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self._max:
                for digest in [d for d, (_u, until) in self._entries.items() if until < now]:
                    del self._entries[digest]
                if len(self._entries) >= self._max:
                    self._entries.clear()
            self._entries[self._digest(username, password)] = (username, now + self.seconds)
