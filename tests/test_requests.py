"""requests.py: durable import request records on a real Redis, with a per-test key prefix."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Queue

from flask_dicom_inbox.requests import (
    ACCEPTED,
    COMPLETED,
    FAILED,
    IMPORTING,
    PROCESSED,
    QUEUED,
    InvalidTransition,
    RequestStore,
)

from .conftest import new_record, recorded_commands

# CONTRACT section 3: every field XNAT sends plus ours.
STATUS_FIELDS = {
    "id", "enabled", "created", "timestamp", "username", "sessionPath", "status",
    "cleanupAfterImport", "clenaupAfterImport", "resolution", "parameters", "progress",
    "sessions", "errors",
}  # fmt: skip
PROGRESS_FIELDS = {"filesFound", "filesDone", "filesImported", "filesSkipped", "bytesDone"}


def _delete_keys(conn: redis.Redis, pattern: str) -> None:
    keys = list(conn.scan_iter(match=pattern, count=1000))
    if keys:
        conn.delete(*keys)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def prefix(tag: str) -> str:
    return f"dicom-inbox-test-requests-{tag}:"


@pytest.fixture
def conn(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    _delete_keys(connection, f"{prefix}*")
    connection.close()


@pytest.fixture
def store(conn: redis.Redis, prefix: str) -> RequestStore:
    return RequestStore(conn, prefix)


def _create(store: RequestStore, username: str = "admin", **overrides: Any) -> Any:
    folder = "/data/inbox/test_proj/b/c"
    return new_record(
        store,
        **{
            "username": username,
            "session_path": folder,
            "parameters": {"path": folder, "PROJECT_ID": "test_proj"},
            **overrides,
        },
    )


def test_create_gives_a_queued_request_with_history(store: RequestStore) -> None:
    before = int(time.time() * 1000)
    record = _create(store)
    after = int(time.time() * 1000)
    assert record.status == QUEUED
    assert isinstance(record.id, int)
    assert before <= record.created <= after
    assert record.timestamp == record.created
    assert [h["status"] for h in record.history] == [QUEUED]
    assert record.history[0]["at"] == record.created
    assert record.finished is False
    assert store.get(record.id) == record


def test_create_gives_distinct_increasing_ids(store: RequestStore) -> None:
    ids = [_create(store).id for _ in range(3)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


def test_get_unknown_request_is_none(store: RequestStore) -> None:
    assert store.get(987654321) is None


def test_allowed_transitions_are_recorded_in_history(store: RequestStore) -> None:
    record = _create(store)
    for status in (ACCEPTED, IMPORTING, PROCESSED, COMPLETED):
        store.set_status(record.id, status, message=f"now {status}")
    found = store.get(record.id)
    assert found is not None
    assert found.status == COMPLETED
    assert found.message == f"now {COMPLETED}"
    assert [h["status"] for h in found.history] == [
        QUEUED,
        ACCEPTED,
        IMPORTING,
        PROCESSED,
        COMPLETED,
    ]
    stamps = [h["at"] for h in found.history]
    assert stamps == sorted(stamps)
    assert found.timestamp == stamps[-1]


def test_retry_may_go_back_to_queued(store: RequestStore) -> None:
    record = _create(store)
    store.set_status(record.id, ACCEPTED)
    store.set_status(record.id, IMPORTING)
    store.set_status(record.id, QUEUED, message="worker died; retried")
    found = store.get(record.id)
    assert found is not None
    assert found.status == QUEUED


def test_same_status_again_changes_nothing(store: RequestStore) -> None:
    record = _create(store)
    store.set_status(record.id, QUEUED)
    found = store.get(record.id)
    assert found is not None
    assert len(found.history) == 1


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ((ACCEPTED, IMPORTING, COMPLETED), IMPORTING),
        ((ACCEPTED, IMPORTING, COMPLETED), QUEUED),
        ((FAILED,), QUEUED),
        ((FAILED,), COMPLETED),
        ((), COMPLETED),
        ((), IMPORTING),
        ((ACCEPTED,), PROCESSED),
    ],
)
def test_refused_transitions_raise_and_change_nothing(
    store: RequestStore, path: tuple[str, ...], refused: str
) -> None:
    record = _create(store)
    for status in path:
        store.set_status(record.id, status)
    before = store.get(record.id)
    with pytest.raises(InvalidTransition):
        store.set_status(record.id, refused)
    assert store.get(record.id) == before


def test_set_status_of_unknown_request_raises_key_error(store: RequestStore) -> None:
    with pytest.raises(KeyError):
        store.set_status(987654321, ACCEPTED)


def test_the_active_list_reads_each_request_s_folder_status_and_time_only(
    store: RequestStore,
) -> None:
    """Every submission checks the unfinished requests' folders for overlap: their errors
    and history (thousands of entries for a folder of non-DICOM files) are not read."""
    first, second, done = _create(store), _create(store), _create(store)
    store.add_errors(first.id, ({"path": f"{i}.txt", "reason": "not DICOM"} for i in range(100)))
    store.set_status(second.id, ACCEPTED)
    for status in (ACCEPTED, IMPORTING, COMPLETED):
        store.set_status(done.id, status)
    with recorded_commands(store.redis) as commands:
        active = list(store.active())
    assert [(r.id, r.status) for r in active] == [(first.id, QUEUED), (second.id, ACCEPTED)]
    assert active[0].session_path == first.session_path
    assert active[1].timestamp >= second.created
    names = {c[0] for c in commands}
    assert "LRANGE" not in names and "HGETALL" not in names and "HMGET" in names


@pytest.mark.parametrize("final", [COMPLETED, FAILED])
def test_finished_requests_leave_the_active_set(store: RequestStore, final: str) -> None:
    done = _create(store)
    running = _create(store)
    store.set_status(done.id, ACCEPTED)
    store.set_status(done.id, IMPORTING)
    store.set_status(running.id, ACCEPTED)
    assert store.ids(active_only=True) == [running.id, done.id]
    store.set_status(done.id, final)
    assert store.ids(active_only=True) == [running.id]
    assert [r.id for r in store.active()] == [running.id]
    assert store.ids() == [running.id, done.id]
    finished = store.get(done.id)
    assert finished is not None
    assert finished.finished is True


@pytest.mark.parametrize("final", [COMPLETED, FAILED])
def test_the_ledger_of_stored_files_lasts_until_the_request_ends(
    store: RequestStore, final: str
) -> None:
    """A retry of an unfinished request needs the ledger; the status that ends the request
    takes it away in the same transaction, so a crash after it leaves nothing behind."""
    record = _create(store)
    store.set_status(record.id, ACCEPTED)
    store.set_status(record.id, IMPORTING)
    entry = {"label": "S", "subject": "s", "study": "1", "dir": "/d", "size": 1, "name": "a"}
    store.add_stored(record.id, {"/inbox/p/a.dcm": entry})
    store.set_status(record.id, QUEUED)  # recovered for a retry: still unfinished
    store.set_status(record.id, ACCEPTED)
    store.set_status(record.id, IMPORTING)
    assert dict(store.iter_stored(record.id)) == {"/inbox/p/a.dcm": entry}
    store.set_status(record.id, final)
    assert dict(store.iter_stored(record.id)) == {}


def test_progress_from_two_connections_adds_up(
    redis_url: str, conn: redis.Redis, prefix: str
) -> None:
    first = RequestStore(conn, prefix)
    other_conn = redis.Redis.from_url(redis_url)
    second = RequestStore(other_conn, prefix)
    record = _create(first)
    rounds = 200

    def _report(target: RequestStore) -> None:
        for _ in range(rounds):
            target.add_progress(record.id, filesDone=1, filesImported=1, bytesDone=1000)

    try:
        threads = [threading.Thread(target=_report, args=(s,)) for s in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        second.add_progress(record.id, filesSkipped=3, filesFound=0)
    finally:
        other_conn.close()
    found = first.get(record.id)
    assert found is not None
    assert found.progress == {
        "filesFound": 0,
        "filesDone": 2 * rounds,
        "filesImported": 2 * rounds,
        "filesSkipped": 3,
        "bytesDone": 2 * rounds * 1000,
    }


def test_add_progress_refuses_unknown_counter(store: RequestStore) -> None:
    record = _create(store)
    with pytest.raises(KeyError):
        store.add_progress(record.id, filesEaten=1)


def test_set_and_reset_progress(store: RequestStore) -> None:
    record = _create(store)
    store.set_progress(record.id, filesFound=10, filesDone=4)
    store.add_errors(record.id, [{"path": "x.txt", "reason": "not a DICOM file"}])
    found = store.get(record.id)
    assert found is not None
    assert (found.progress["filesFound"], found.progress["filesDone"]) == (10, 4)
    store.reset_progress(record.id)
    found = store.get(record.id)
    assert found is not None
    assert set(found.progress.values()) == {0}
    assert found.errors == []


def test_ids_and_list_are_newest_first(store: RequestStore) -> None:
    created = [_create(store).id for _ in range(4)]
    assert store.ids() == list(reversed(created))
    assert [r.id for r in store.list_requests()] == list(reversed(created))


def test_ids_and_list_per_user(store: RequestStore) -> None:
    a1 = _create(store, username="alice").id
    b1 = _create(store, username="bob").id
    a2 = _create(store, username="alice").id
    assert store.ids(username="alice") == [a2, a1]
    assert store.ids(username="bob") == [b1]
    assert store.ids(username="carol") == []
    assert [r.username for r in store.list_requests(username="alice")] == ["alice", "alice"]
    store.set_status(a2, FAILED)
    assert store.ids(username="alice", active_only=True) == [a1]
    assert [r.id for r in store.list_requests(username="alice", active_only=True)] == [a1]


def test_errors_are_recorded_in_order(store: RequestStore) -> None:
    record = _create(store)
    store.add_errors(record.id, [{"path": "notes.txt", "reason": "not a DICOM file"}])
    store.add_errors(record.id, [])
    store.add_errors(
        record.id,
        [
            {"path": "DICOMDIR", "reason": "DICOMDIR"},
            {"path": "link.dcm", "reason": "symlink skipped"},
        ],
    )
    found = store.get(record.id)
    assert found is not None
    assert found.errors == [
        {"path": "notes.txt", "reason": "not a DICOM file"},
        {"path": "DICOMDIR", "reason": "DICOMDIR"},
        {"path": "link.dcm", "reason": "symlink skipped"},
    ]
    assert found.to_status()["errors"] == found.errors


@pytest.mark.parametrize("cleanup", [True, False])
def test_to_status_has_every_contract_field(store: RequestStore, cleanup: bool) -> None:
    params = {
        "path": "/data/inbox/test_proj/b/c",
        "PROJECT_ID": "test_proj",
        "SUBJECT_ID": "test_subj",
        "EXPT_LABEL": "test_exp",
        "cleanupAfterImport": str(cleanup).lower(),
    }
    record = _create(store, cleanup_after_import=cleanup, parameters=params)
    sessions = [
        {
            "label": "test_exp",
            "subject": "test_subj",
            "studyInstanceUid": "1.2.3",
            "destination": "prearchive",
            "url": "/prearchive/projects/test_proj/20261128_101500123/test_exp",
            "scans": 2,
            "files": 8,
        }
    ]
    store.set_result(record.id, sessions=sessions, resolution=sessions[0]["url"])
    store.add_progress(record.id, filesFound=8, filesDone=8, filesImported=8, bytesDone=42)
    found = store.get(record.id)
    assert found is not None
    status = found.to_status()
    assert STATUS_FIELDS <= set(status)
    assert set(status["progress"]) == PROGRESS_FIELDS
    assert status["cleanupAfterImport"] is cleanup
    assert status["clenaupAfterImport"] is cleanup
    assert status["enabled"] is True
    assert status["id"] == record.id
    assert status["username"] == "admin"
    assert status["sessionPath"] == "/data/inbox/test_proj/b/c"
    assert status["status"] == QUEUED
    assert status["parameters"] == params
    assert all(isinstance(v, str) for v in status["parameters"].values())
    assert status["sessions"] == sessions
    assert status["resolution"] == sessions[0]["url"]
    assert status["progress"]["bytesDone"] == 42
    assert status["created"] == record.created
    assert status["timestamp"] >= status["created"]
    # epoch milliseconds, not seconds
    assert abs(status["created"] - time.time() * 1000) < 60_000


def test_set_option_is_kept_for_a_retry(store: RequestStore) -> None:
    record = _create(store, options={"a": 1})
    store.set_option(record.id, "timestamp", "20261128_101500123")
    found = store.get(record.id)
    assert found is not None
    assert found.options == {"a": 1, "timestamp": "20261128_101500123"}
    with pytest.raises(KeyError):
        store.set_option(987654321, "x", 1)


def test_records_live_only_under_the_prefix(
    store: RequestStore, conn: redis.Redis, prefix: str
) -> None:
    record = _create(store)
    store.set_status(record.id, ACCEPTED)
    store.add_errors(record.id, [{"path": "a", "reason": "b"}])
    keys = {k.decode() for k in conn.scan_iter(match=f"*{prefix}*", count=1000)}
    assert keys
    assert all(k.startswith(prefix) for k in keys)
    assert not any(k.startswith("rq:") for k in keys)


def test_records_survive_deletion_of_rq_keys(
    store: RequestStore, conn: redis.Redis, tag: str
) -> None:
    record = _create(store)
    store.set_status(record.id, ACCEPTED)
    store.add_progress(record.id, filesFound=3)
    queue = Queue(f"dicom-inbox-test-requests-{tag}", connection=conn)
    queue.enqueue("builtins.len", "abc", job_id=f"dicom-inbox-test-requests-{tag}-job")
    before = store.get(record.id)
    assert before is not None
    try:
        rq_keys = list(conn.scan_iter(match=f"rq:*{tag}*", count=1000))
        assert len(rq_keys) >= 2  # the job hash and the queue list
        conn.delete(*rq_keys)
    finally:
        conn.srem("rq:queues", queue.key)
        _delete_keys(conn, f"rq:*{tag}*")
    assert list(conn.scan_iter(match=f"rq:*{tag}*", count=1000)) == []
    after = store.get(record.id)
    assert after == before
    assert after is not None
    store.set_status(record.id, IMPORTING)
    store.set_status(record.id, COMPLETED)
    final = store.get(record.id)
    assert final is not None
    assert final.to_status()["status"] == COMPLETED


def test_the_overlap_check_finds_the_folder_what_is_inside_it_and_around_it(
    store: RequestStore,
) -> None:
    """Through the index of unfinished folders: equal, inner and outer folders overlap; a
    sibling sharing a name's prefix (/in/ab beside /in/a) does not; a finished request's folder
    is free again; and no unfinished request is read whole or one by one."""
    a = _create(store, session_path="/in/p/a")
    deep = _create(store, session_path="/in/p/x/y/z")
    with recorded_commands(store.redis) as commands:
        assert store.overlapping("/in/p/a").id == a.id  # type: ignore[union-attr]
        assert store.overlapping("/in/p/a/s1").id == a.id  # type: ignore[union-attr]
        assert store.overlapping("/in/p").id in (a.id, deep.id)  # type: ignore[union-attr]
        assert store.overlapping("/in/p/x").id == deep.id  # type: ignore[union-attr]
        assert store.overlapping("/in/p/ab") is None
        assert store.overlapping("/in/p/x/y2") is None
        assert store.overlapping("/in/q") is None
    names = {c[0] for c in commands}
    assert names.isdisjoint({"HGETALL", "LRANGE", "SMEMBERS"}), names
    found = store.overlapping("/in/p/a/s1")
    assert found is not None and (found.session_path, found.status) == ("/in/p/a", QUEUED)
    store.set_status(a.id, ACCEPTED)
    store.set_status(a.id, FAILED, "gone")
    with recorded_commands(store.redis) as commands:
        assert store.overlapping("/in/p/a") is None, "a finished request frees its folder"
        assert store.overlapping("/in/p").id == deep.id  # type: ignore[union-attr]
    assert "SMEMBERS" not in {c[0] for c in commands}, "the index stays whole as requests end"


def test_requests_recorded_before_the_folder_index_are_still_found_and_indexed(
    store: RequestStore,
) -> None:
    old = _create(store, session_path="/in/p/old")
    index = f"{store.prefix}requests:active-folders"
    entry = b"/in/p/old/\x00" + str(old.id).encode()
    store.redis.delete(index)  # as an earlier version left it
    assert store.overlapping("/in/p/old/s1").id == old.id  # type: ignore[union-attr]
    assert store.redis.zrange(index, 0, -1) == [entry], "indexed now"
    # An entry of a request that ended while the index was being made: it goes too.
    store.redis.zadd(index, {b"/in/stale/\x0099": 0})
    assert store.overlapping("/in/stale/s1") is None
    assert store.redis.zrange(index, 0, -1) == [entry]
    with recorded_commands(store.redis) as commands:
        assert store.overlapping("/in/p").id == old.id  # type: ignore[union-attr]
    assert "SMEMBERS" not in {c[0] for c in commands}, "the index serves from now on"
