"""Durable import request records in Redis, with their status history.

RQ keeps a job's result for minutes; these records stay until ``flask dicom-inbox prune``
deletes finished ones, so a status URL keeps answering long after the job is gone. Counters
are Redis hash fields (``HINCRBY``), so several processes can report progress on one request
without overwriting each other.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis

QUEUED = "Queued"
ACCEPTED = "Accepted"
IMPORTING = "Importing"
PROCESSED = "Processed"
COMPLETED = "Completed"
FAILED = "Failed"

FINISHED = frozenset({COMPLETED, FAILED})
STATUSES = (QUEUED, ACCEPTED, IMPORTING, PROCESSED, COMPLETED, FAILED)

#: status -> statuses it may move to. ``Queued`` again is a retry after a dead worker.
_TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({ACCEPTED, FAILED}),
    ACCEPTED: frozenset({IMPORTING, QUEUED, FAILED}),
    IMPORTING: frozenset({PROCESSED, COMPLETED, QUEUED, FAILED}),
    PROCESSED: frozenset({COMPLETED, QUEUED, FAILED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
}

PROGRESS_FIELDS = ("filesFound", "filesDone", "filesImported", "filesSkipped", "bytesDone")


class InvalidTransition(RuntimeError):
    """A status change the lifecycle does not allow (e.g. leaving ``Completed``)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class ImportRequest:
    """One import request as stored; :meth:`to_status` gives the contract's status JSON."""

    id: int
    username: str
    handler: str
    project_id: str
    session_path: str
    cleanup_after_import: bool
    parameters: dict[str, str]
    created: int
    timestamp: int
    status: str
    resolution: str = ""
    message: str = ""
    progress: dict[str, int] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_status(self) -> dict[str, Any]:
        """The status JSON of CONTRACT section 3 (both spellings of cleanupAfterImport)."""
        return {
            "id": self.id,
            "enabled": True,
            "created": self.created,
            "timestamp": self.timestamp,
            "username": self.username,
            "sessionPath": self.session_path,
            "status": self.status,
            "cleanupAfterImport": self.cleanup_after_import,
            "clenaupAfterImport": self.cleanup_after_import,
            "resolution": self.resolution,
            "message": self.message,
            "handler": self.handler,
            "project": self.project_id,
            "parameters": dict(self.parameters),
            "progress": {k: int(self.progress.get(k, 0)) for k in PROGRESS_FIELDS},
            "sessions": list(self.sessions),
            "errors": list(self.errors),
            "history": list(self.history),
        }


class ActiveRequest(NamedTuple):
    """An unfinished request as :meth:`RequestStore.active` lists it."""

    id: int
    session_path: str
    status: str
    timestamp: int


class RequestStore:
    """Reads and writes :class:`ImportRequest` records under one key prefix."""

    def __init__(self, connection: redis.Redis, prefix: str) -> None:
        # redis-py's return types are unions of bytes/str/awaitables; we read bytes only.
        self.redis: Any = connection
        self.prefix = prefix

    # -- keys -------------------------------------------------------------------------------
    def _key(self, request_id: int, suffix: str = "") -> str:
        return f"{self.prefix}request:{request_id}{suffix}"

    @property
    def _all_key(self) -> str:
        return f"{self.prefix}requests"

    @property
    def _active_key(self) -> str:
        return f"{self.prefix}requests:active"

    @property
    def _folders_key(self) -> str:
        """The unfinished requests' folders, a sorted set of :func:`_folder_member` entries."""
        return f"{self.prefix}requests:active-folders"

    def _user_key(self, username: str) -> str:
        return f"{self.prefix}requests:user:{username}"

    # -- create / read ----------------------------------------------------------------------
    def create(
        self,
        *,
        username: str,
        handler: str,
        project_id: str,
        session_path: str,
        cleanup_after_import: bool,
        parameters: dict[str, str],
        options: dict[str, Any],
    ) -> ImportRequest:
        """Store a new ``Queued`` request and return it with its id."""
        request_id = int(self.redis.incr(f"{self.prefix}request:next-id"))
        created = now_ms()
        fixed = {
            "id": request_id,
            "username": username,
            "handler": handler,
            "project_id": project_id,
            "session_path": session_path,
            "cleanup_after_import": cleanup_after_import,
            "parameters": parameters,
            "created": created,
            "options": options,
        }
        entry = {"status": QUEUED, "at": created, "message": "queued"}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self._key(request_id),
            mapping={
                "fixed": json.dumps(fixed),
                "status": QUEUED,
                "timestamp": created,
                "resolution": "",
                "message": "",
                "sessions": "[]",
                **{k: 0 for k in PROGRESS_FIELDS},
            },
        )
        pipe.rpush(self._key(request_id, ":history"), json.dumps(entry))
        pipe.zadd(self._all_key, {str(request_id): request_id})
        pipe.zadd(self._user_key(username), {str(request_id): request_id})
        pipe.sadd(self._active_key, str(request_id))
        pipe.zadd(self._folders_key, {_folder_member(session_path, request_id): 0})
        pipe.execute()
        found = self.get(request_id)
        assert found is not None
        return found

    def get(self, request_id: int) -> ImportRequest | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._key(request_id))
        pipe.lrange(self._key(request_id, ":errors"), 0, -1)
        pipe.lrange(self._key(request_id, ":history"), 0, -1)
        raw, errors, history = pipe.execute()
        if not raw:
            return None
        return self._from_raw(raw, errors, history)

    def heads(self, request_ids: Iterable[int], max_errors: int) -> list[tuple[ImportRequest, int]]:
        """Each request (missing ones left out) with its first ``max_errors`` errors only and
        how many it has, in one round trip: a page of rows need not decode the 20,000 errors
        of a folder of non-DICOM files."""
        ids = list(request_ids)
        pipe = self.redis.pipeline(transaction=False)
        for request_id in ids:
            pipe.hgetall(self._key(request_id))
            if max_errors > 0:
                pipe.lrange(self._key(request_id, ":errors"), 0, max_errors - 1)
            pipe.lrange(self._key(request_id, ":history"), 0, -1)
            pipe.llen(self._key(request_id, ":errors"))
        replies = iter(pipe.execute())
        out: list[tuple[ImportRequest, int]] = []
        for _ in ids:
            raw = next(replies)
            errors = next(replies) if max_errors > 0 else []
            history, count = next(replies), int(next(replies))
            if raw:
                out.append((self._from_raw(raw, errors, history), count))
        return out

    @staticmethod
    def _from_raw(
        raw: dict[bytes, bytes], errors: list[bytes], history: list[bytes]
    ) -> ImportRequest:
        def text(name: str) -> str:
            return raw.get(name.encode(), b"").decode()

        fixed = json.loads(text("fixed"))
        return ImportRequest(
            id=int(fixed["id"]),
            username=fixed["username"],
            handler=fixed["handler"],
            project_id=fixed["project_id"],
            session_path=fixed["session_path"],
            cleanup_after_import=bool(fixed["cleanup_after_import"]),
            parameters=dict(fixed["parameters"]),
            created=int(fixed["created"]),
            options=dict(fixed.get("options", {})),
            timestamp=int(text("timestamp") or 0),
            status=text("status"),
            resolution=text("resolution"),
            message=text("message"),
            progress={k: int(text(k) or 0) for k in PROGRESS_FIELDS},
            sessions=json.loads(text("sessions") or "[]"),
            errors=[json.loads(e) for e in errors],
            history=[json.loads(h) for h in history],
        )

    def ids(self, *, username: str | None = None, active_only: bool = False) -> list[int]:
        """Request ids, newest first; only ``username``'s when given."""
        key = self._user_key(username) if username is not None else self._all_key
        ids = [int(i) for i in self.redis.zrevrange(key, 0, -1)]
        if active_only:
            active = {int(i) for i in self.redis.smembers(self._active_key)}
            ids = [i for i in ids if i in active]
        return ids

    def list_requests(
        self, *, username: str | None = None, active_only: bool = False
    ) -> list[ImportRequest]:
        found = (self.get(i) for i in self.ids(username=username, active_only=active_only))
        return [r for r in found if r is not None]

    def active(self) -> Iterator[ActiveRequest]:
        """Every unfinished request, oldest first: its id, folder, status and timestamp only.

        What recovery needs, and the path-overlap check when its index is not whole; a full read
        decodes each request's errors and history too (a POST took 265 ms, not 8, beside 5
        unfinished requests of 20,000 errors each).
        """
        ids = sorted(int(i) for i in self.redis.smembers(self._active_key))
        pipe = self.redis.pipeline(transaction=False)
        for request_id in ids:
            pipe.hmget(self._key(request_id), "fixed", "status", "timestamp")
        for request_id, (fixed, status, timestamp) in zip(ids, pipe.execute(), strict=True):
            if fixed is None or status is None or status.decode() in FINISHED:
                continue
            yield ActiveRequest(
                id=request_id,
                session_path=str(json.loads(fixed)["session_path"]),
                status=status.decode(),
                timestamp=int(timestamp or 0),
            )

    def overlapping(self, session_path: str) -> ActiveRequest | None:
        """An unfinished request whose folder is ``session_path``, inside it or around it.

        Looked up in the index of unfinished requests' folders: the folder and what lies
        inside it in one lexical range, each folder around it by name, in two round trips
        (the first checks the index is whole), however many requests are unfinished (every
        submission asks, under the submit lock; reading each unfinished request took about
        20 ms a POST at 1,000 queued ones).
        Requests recorded before the index existed are read one by one, and indexed.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(self._active_key)
        pipe.zcard(self._folders_key)
        unfinished, indexed = pipe.execute()
        if unfinished != indexed:
            return self._overlapping_unindexed(session_path)
        key = _folder_key(session_path)
        pipe = self.redis.pipeline(transaction=False)
        # The folder itself and everything inside it: keys from "<folder>/" up to "<folder>0"
        # ("0" is the byte after "/"); each folder around it: its own key, any request id.
        pipe.zrangebylex(self._folders_key, b"[" + key, b"(" + key[:-1] + b"0", 0, 1)
        for outer in _outer_folders(session_path):
            around = _folder_key(outer) + b"\x00"
            pipe.zrangebylex(self._folders_key, b"[" + around, b"(" + around[:-1] + b"\x01", 0, 1)
        for found in pipe.execute():
            if found:
                folder, request_id = _parse_folder_member(found[0])
                status, timestamp = self.redis.hmget(self._key(request_id), "status", "timestamp")
                return ActiveRequest(
                    id=request_id,
                    session_path=folder,
                    status=(status or b"").decode(),
                    timestamp=int(timestamp or 0),
                )
        return None

    def _overlapping_unindexed(self, session_path: str) -> ActiveRequest | None:
        """The overlap check by reading every unfinished request; the index is made anew from
        what it reads (a request that ends meanwhile leaves a stale entry: the sizes then
        differ again, and the next check makes it anew once more)."""
        found: ActiveRequest | None = None
        members: dict[bytes, int] = {}
        for other in self.active():
            members[_folder_member(other.session_path, other.id)] = 0
            if found is None and os.path.commonpath([other.session_path, session_path]) in (
                other.session_path,
                session_path,
            ):
                found = other
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._folders_key)
        if members:
            pipe.zadd(self._folders_key, members)
        pipe.execute()
        return found

    # -- updates ----------------------------------------------------------------------------
    def set_status(self, request_id: int, status: str, message: str = "") -> None:
        """Move to ``status``, recording it in the history; refuses illegal moves."""
        current, fixed = self.redis.hmget(self._key(request_id), "status", "fixed")
        if current is None:
            raise KeyError(request_id)
        old = current.decode()
        if status == old:
            return
        if status not in _TRANSITIONS[old]:
            raise InvalidTransition(f"request {request_id}: {old} -> {status} is not allowed")
        at = now_ms()
        pipe = self.redis.pipeline(transaction=True)
        mapping: dict[str, Any] = {"status": status, "timestamp": at}
        if message:
            mapping["message"] = message
        pipe.hset(self._key(request_id), mapping=mapping)
        pipe.rpush(
            self._key(request_id, ":history"),
            json.dumps({"status": status, "at": at, "message": message}),
        )
        if status in FINISHED:
            pipe.srem(self._active_key, str(request_id))
            if fixed is not None:
                folder = str(json.loads(fixed)["session_path"])
                pipe.zrem(self._folders_key, _folder_member(folder, request_id))
            # The ledger of stored files only serves a retry of an unfinished request; it goes
            # with the status that ends the request, so no crash can leave it behind.
            # UNLINK: freeing a 50,000-file ledger in DEL held the shared Redis ~17 ms.
            pipe.unlink(self._key(request_id, ":stored"))
        pipe.execute()

    def add_progress(self, request_id: int, **deltas: int) -> None:
        """Add to progress counters atomically (safe with several writers)."""
        pipe = self.redis.pipeline(transaction=False)
        for name, delta in deltas.items():
            if name not in PROGRESS_FIELDS:
                raise KeyError(name)
            if delta:
                pipe.hincrby(self._key(request_id), name, delta)
        pipe.hset(self._key(request_id), "timestamp", now_ms())
        pipe.execute()

    def attempts(self, request_id: int) -> int:
        """How many times the request began importing (its history's ``Importing`` entries)."""
        history = self.redis.lrange(self._key(request_id, ":history"), 0, -1)
        return sum(1 for entry in history if json.loads(entry).get("status") == IMPORTING)

    def status_of(self, request_id: int) -> str | None:
        """The request's status alone (``None``: no such request), for a waiting loop."""
        raw = self.redis.hget(self._key(request_id), "status")
        return None if raw is None else str(raw.decode())

    def progress(self, request_id: int) -> dict[str, int]:
        """The request's progress counters alone (its errors may be tens of thousands)."""
        values = self.redis.hmget(self._key(request_id), PROGRESS_FIELDS)
        return {k: int(v or 0) for k, v in zip(PROGRESS_FIELDS, values, strict=True)}

    def set_progress(self, request_id: int, **values: int) -> None:
        for name in values:
            if name not in PROGRESS_FIELDS:
                raise KeyError(name)
        self.redis.hset(self._key(request_id), mapping={**values, "timestamp": now_ms()})

    def reset_progress(self, request_id: int) -> None:
        """Start counting afresh (a retried job walks the folder again)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(request_id), mapping={k: 0 for k in PROGRESS_FIELDS})
        pipe.delete(self._key(request_id, ":errors"))
        pipe.execute()

    def add_errors(self, request_id: int, errors: Iterable[dict[str, str]]) -> None:
        encoded = [json.dumps(e) for e in errors]
        if encoded:
            self.redis.rpush(self._key(request_id, ":errors"), *encoded)

    def set_result(
        self, request_id: int, *, sessions: list[dict[str, Any]], resolution: str
    ) -> None:
        self.redis.hset(
            self._key(request_id),
            mapping={"sessions": json.dumps(sessions), "resolution": resolution},
        )

    def set_option(self, request_id: int, name: str, value: Any) -> None:
        """Remember a job-time decision (e.g. the prearchive timestamp) for a retry."""
        key = self._key(request_id)
        raw = self.redis.hget(key, "fixed")
        if raw is None:
            raise KeyError(request_id)
        fixed = json.loads(raw)
        fixed.setdefault("options", {})[name] = value
        self.redis.hset(key, "fixed", json.dumps(fixed))

    # -- retention --------------------------------------------------------------------------
    def prune(self, finished_before: int, *, dry_run: bool = False, batch: int = 500) -> list[int]:
        """Delete the records of requests that finished before ``finished_before`` (ms since
        the epoch, by the record's last change); return their ids in the order they were made.

        Records otherwise stay for ever, and ``/xapi/dicom/list/all`` reads every one. An
        unfinished request is never touched, and a finished one never changes again, so a
        request cannot finish and be pruned half way. Read in batches of ``batch`` ids.
        """
        pruned: list[int] = []
        after = "-inf"
        while True:
            ids = [
                int(i)
                for i in self.redis.zrangebyscore(self._all_key, after, "+inf", start=0, num=batch)
            ]
            if not ids:
                return pruned
            after = f"({ids[-1]}"
            pipe = self.redis.pipeline(transaction=False)
            for request_id in ids:
                pipe.hmget(self._key(request_id), "status", "timestamp", "fixed")
            doomed: list[tuple[int, str]] = []
            for request_id, (status, timestamp, fixed) in zip(ids, pipe.execute(), strict=True):
                if status is None or fixed is None or status.decode() not in FINISHED:
                    continue
                if int(timestamp or 0) < finished_before:
                    doomed.append((request_id, str(json.loads(fixed)["username"])))
            if doomed and not dry_run:
                pipe = self.redis.pipeline(transaction=True)
                for request_id, username in doomed:
                    pipe.unlink(
                        *(self._key(request_id, s) for s in ("", ":errors", ":history", ":stored"))
                    )
                    pipe.zrem(self._all_key, str(request_id))
                    pipe.zrem(self._user_key(username), str(request_id))
                pipe.execute()
            pruned.extend(request_id for request_id, _user in doomed)

    # -- the ledger of stored files: what a retried run must count but can no longer see -----
    def add_stored(self, request_id: int, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Record files stored durably (by source path): a file moved away by a killed run
        is gone from the inbox, and only this ledger lets the retry count it."""
        if entries:
            self.redis.hset(
                self._key(request_id, ":stored"),
                mapping={k: json.dumps(v) for k, v in entries.items()},
            )

    def iter_stored(self, request_id: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """The ledger's ``(source path, entry)`` pairs, read a thousand at a time (a retry of
        a 50,000-file request would otherwise decode the whole ledger at once)."""
        for key, value in self.redis.hscan_iter(self._key(request_id, ":stored"), count=1000):
            yield (key.decode() if isinstance(key, bytes) else str(key)), json.loads(value)


def _folder_key(path: str) -> bytes:
    """``path`` with one trailing "/", as bytes: a folder's key sorts just before the keys of
    the folders inside it (``/a/b/`` < ``/a/b/c/``) and is no prefix of ``/a/bc/``'s."""
    return (path.rstrip("/") + "/").encode("utf-8", "surrogateescape")


def _folder_member(path: str, request_id: int) -> bytes:
    """An unfinished request's entry in the folder index: its folder's key, NUL, its id."""
    return _folder_key(path) + b"\x00" + str(int(request_id)).encode()


def _parse_folder_member(member: bytes) -> tuple[str, int]:
    """The folder and request id of a :func:`_folder_member` entry."""
    key, request_id = member.rsplit(b"\x00", 1)
    return key[:-1].decode("utf-8", "surrogateescape"), int(request_id)


def _outer_folders(path: str) -> Iterator[str]:
    """Each folder around ``path`` (an absolute, normalised path), the root first."""
    parts = path.rstrip("/").split("/")
    for end in range(1, len(parts)):
        yield "/".join(parts[:end]) or "/"
