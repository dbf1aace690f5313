"""Retention: `flask dicom-inbox prune` deletes finished records older than a cutoff, on the
shared Redis, and nothing else."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from flask_dicom_inbox.extension import InboxState
from flask_dicom_inbox.requests import ACCEPTED, COMPLETED, FAILED, IMPORTING, RequestStore

from .conftest import auth, new_record

DAY_MS = 86_400_000


def _record(store: RequestStore, final: str | None, age_days: float, user: str = "admin") -> int:
    """A request that reached ``final`` (None: still importing) ``age_days`` ago."""
    record = new_record(store, username=user, session_path=f"/inbox/test_proj/{time.time_ns()}")
    store.set_status(record.id, ACCEPTED)
    store.set_status(record.id, IMPORTING)
    if final is not None:
        store.set_status(record.id, final, "done")
    store.add_errors(record.id, [{"path": "a.txt", "reason": "not DICOM"}])
    # The last change is what the cutoff compares: moved back in time as the days would.
    changed = int(time.time() * 1000 - age_days * DAY_MS)
    store.redis.hset(store._key(record.id), "timestamp", changed)
    return int(record.id)


def _keys_of(store: RequestStore, request_id: int) -> int:
    """The record's keys still in Redis (``:stored``, the ledger, already goes when a request
    finishes; prune removes it too for records from before that)."""
    return int(
        sum(
            store.redis.exists(store._key(request_id, suffix))
            for suffix in ("", ":errors", ":history", ":stored")
        )
    )


def test_prune_deletes_only_finished_records_last_changed_before_the_cutoff(
    state: InboxState,
) -> None:
    store = state.store
    old_done = _record(store, COMPLETED, 10)
    old_failed = _record(store, FAILED, 10, user="member")
    old_running = _record(store, None, 10)
    new_done = _record(store, COMPLETED, 0.5)
    kept = {rid: store.get(rid) for rid in (old_running, new_done)}

    cutoff = int(time.time() * 1000) - DAY_MS
    assert store.prune(cutoff) == [old_done, old_failed]

    for rid in (old_done, old_failed):
        assert store.get(rid) is None
        assert _keys_of(store, rid) == 0, "its errors and history go with it"
    assert store.ids() == [new_done, old_running]
    assert store.ids(username="member") == []
    assert store.ids(username="admin") == [new_done, old_running]
    for rid, record in kept.items():
        assert store.get(rid) == record, "unfinished and recent records are left as they were"
    assert store.prune(cutoff) == [], "a second pass finds nothing more"


def test_a_dry_run_lists_what_would_go_and_deletes_nothing(state: InboxState) -> None:
    store = state.store
    old = [_record(store, COMPLETED, 30) for _ in range(3)]
    assert store.prune(int(time.time() * 1000), dry_run=True) == old
    assert all(store.get(rid) is not None for rid in old)
    assert sorted(store.ids()) == old


def test_prune_reads_in_batches_and_misses_none_while_it_deletes(state: InboxState) -> None:
    store = state.store
    ids = [_record(store, FAILED if i % 2 else COMPLETED, 5) for i in range(7)]
    recent = _record(store, COMPLETED, 0)
    assert store.prune(int(time.time() * 1000) - DAY_MS, batch=2) == ids
    assert store.ids() == [recent]


def test_the_command_prunes_and_the_status_urls_then_answer_404(
    app: Flask, state: InboxState, client: FlaskClient
) -> None:
    store = state.store
    old = _record(store, COMPLETED, 8)
    recent = _record(store, COMPLETED, 2)
    running = _record(store, None, 8)
    runner = app.test_cli_runner()

    dry = runner.invoke(args=["dicom-inbox", "prune", "--older-than", "7", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would delete 1 request record(s) finished before " in dry.output
    assert dry.output.rstrip().endswith(f": {old}")
    assert client.get(f"/xapi/dicom/{old}", headers=auth()).status_code == 200

    done = runner.invoke(args=["dicom-inbox", "prune", "--older-than", "7"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("deleted 1 request record(s) finished before ")
    assert client.get(f"/xapi/dicom/{old}", headers=auth()).status_code == 404
    listed: list[dict[str, Any]] = client.get("/xapi/dicom/list/all", headers=auth()).get_json()
    assert sorted(r["id"] for r in listed) == [recent, running]

    refused = runner.invoke(args=["dicom-inbox", "prune"])
    assert refused.exit_code != 0 and "--older-than" in refused.output
    negative = runner.invoke(args=["dicom-inbox", "prune", "--older-than", "-1"])
    assert negative.exit_code != 0
    assert sorted(store.ids()) == [recent, running]
