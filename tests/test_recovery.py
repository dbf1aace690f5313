"""A SIGKILLed work-horse: `flask dicom-inbox recover` and a new worker finish the request,
every source present exactly once, byte-identical, no temporary file left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.recovery import is_leased, recover
from flask_dicom_inbox.storage import TEMP_PREFIX

from .conftest import auth, child_pids, run_worker, submit, wait_until


def _submitted_move(client: FlaskClient, inbox: Path, label: str) -> tuple[Path, int]:
    """A 10-file session submitted with cleanupAfterImport=true; its folder and request id."""
    session = inbox / "test_proj" / label
    write_session(session, series=2, files_per_series=5)
    response = submit(
        client, PROJECT_ID="test_proj", EXPT_LABEL=label, path=str(session),
        cleanupAfterImport="true",
    )  # fmt: skip
    return session, int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])


def _env(app_config: dict[str, Any]) -> dict[str, str]:
    values = {**app_config, "DICOM_INBOX_LEASE_SECONDS": 2}
    return {**os.environ, **{f"FLASK_{k}": str(v) for k, v in values.items() if k != "TESTING"}}


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "cleanup"), [(1, False), (2, True), (3, False)])
def test_sigkilled_work_horse_is_recovered(
    app: Flask,
    client: FlaskClient,
    inbox: Path,
    state: InboxState,
    app_config: dict[str, Any],
    seed: int,
    cleanup: bool,
) -> None:
    app.config["DICOM_INBOX_LEASE_SECONDS"] = 2
    from flask_dicom_inbox.config import InboxConfig

    state.config = InboxConfig.from_app(app)
    assert (
        client.put("/xapi/anonymize/site/enabled", data="false", headers=auth()).status_code == 200
    )
    session = inbox / "test_proj" / f"kill{seed}"
    generated = write_session(session, series=4, files_per_series=150, rows=256, columns=256)
    originals = {p.name: p.read_bytes() for p in generated.files}
    response = submit(
        client, PROJECT_ID="test_proj", EXPT_LABEL=f"kill{seed}", path=str(session),
        cleanupAfterImport=str(cleanup).lower(),
    )  # fmt: skip
    assert response.status_code == 200
    rid = int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker"],
        env=_env(app_config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: is_leased(state, rid), 60, "the import to start")
        done_at_kill = random.Random(seed).randint(20, 400)
        wait_until(
            lambda: (
                (state.store.get(rid) or state.store.get(rid)).progress["filesDone"] >= done_at_kill
            ),  # type: ignore[union-attr]
            60,
            "progress",
        )
        [horse] = child_pids(worker.pid)
        os.kill(horse, signal.SIGKILL)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    record = state.store.get(rid)
    assert record is not None and record.status == "Importing"
    assert record.progress["filesDone"] < 600, "killed before the end"
    wait_until(lambda: not is_leased(state, rid), 10, "the dead horse's lease to lapse")
    assert recover(state) == [rid]
    assert state.store.get(rid).status == "Queued"  # type: ignore[union-attr]
    run_worker(app)
    final = client.get(f"/xapi/dicom/{rid}", headers=auth()).get_json()
    assert final["status"] == "Completed", (final["message"], final["errors"][:3])
    assert [h["status"] for h in final["history"]][-4:] == [
        "Queued",
        "Accepted",
        "Importing",
        "Completed",
    ]
    written = [p for p in state.config.prearchive_path.rglob("*") if p.is_file()]
    assert not [p for p in written if p.name.startswith(TEMP_PREFIX)]
    names = [p.name for p in written]
    assert sorted(names) == sorted(originals), "every source exactly once"
    for path in written:
        assert path.read_bytes() == originals[path.name]
    if cleanup:
        assert not any(p.exists() for p in generated.files)
    else:
        assert all(p.read_bytes() == originals[p.name] for p in generated.files)


@pytest.mark.parametrize("cut_short", [2, 3])
def test_a_request_cut_short_max_attempts_times_is_failed_not_re_queued(
    client: FlaskClient, inbox: Path, state: InboxState, cut_short: int
) -> None:
    """Each dead import is an Importing entry in the history; at DICOM_INBOX_MAX_ATTEMPTS
    (3) recovery fails the request with the reason instead of queuing it once more."""
    session = inbox / "test_proj" / "poison"
    write_session(session, series=1, files_per_series=1)
    assert submit(client, PROJECT_ID="test_proj", path=str(session)).status_code == 200
    [record] = list(state.store.active())
    state.queue.empty()  # each attempt's job died with its work-horse
    for attempt in range(cut_short):
        if attempt:
            state.store.set_status(record.id, "Queued", "re-queued: its job was lost")
        state.store.set_status(record.id, "Accepted")
        state.store.set_status(record.id, "Importing")
    assert state.store.attempts(record.id) == cut_short
    requeued = recover(state)
    after = state.store.get(record.id)
    assert after is not None
    if cut_short < state.config.max_attempts:
        assert requeued == [record.id] and after.status == "Queued"
        assert len(state.queue) == 1
    else:
        assert requeued == [] and after.status == "Failed"
        assert f"cut short {cut_short} times" in after.message
        assert "DICOM_INBOX_MAX_ATTEMPTS" in after.message
        assert len(state.queue) == 0
        assert session.exists(), "the source stays"


def test_recover_leaves_queued_and_leased_requests_alone(
    client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    session = inbox / "test_proj" / "waiting"
    write_session(session, series=1, files_per_series=1)
    assert submit(client, PROJECT_ID="test_proj", path=str(session)).status_code == 200
    assert recover(state) == [], "a queued job will run: nothing to do"
    [record] = list(state.store.active())
    state.queue.empty()  # the job vanished (e.g. Redis lost the queue)
    state.store.redis.hset(f"{state.config.key_prefix}request:{record.id}", "timestamp", 0)
    from flask_dicom_inbox.recovery import Lease

    lease = Lease(state, record.id)
    assert lease.acquire()
    try:
        assert recover(state) == [], "a leased request is being worked on"
    finally:
        lease.release()
    assert recover(state) == [record.id]
    assert len(state.queue) == 1


def test_a_move_retried_after_its_folder_was_cleaned_up_completes_without_errors(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    """The kill matrix's narrowest window, made deterministic: an earlier run stored every
    file and removed the session folder, then died before recording the result. The retry
    must count the stored files from the request's ledger, not report a missing folder."""
    from flask_dicom_inbox.fanout import begin_run, end_run
    from flask_dicom_inbox.importer import ImportEngine
    from flask_dicom_inbox.service import _engine_options, _phase_runner

    session, rid = _submitted_move(client, inbox, "gone")
    record = state.store.get(rid)
    assert record is not None

    def one_run() -> list[dict[str, Any]]:
        run = begin_run(state.redis, state.config.key_prefix, rid, claim_seconds=5)
        try:
            return ImportEngine(
                request=record, store=state.store, storage=state.storage,
                options=_engine_options(state, record), runner=_phase_runner(state, record, run),
                script_texts=state.anonymization_texts(record),
            ).run(session)  # fmt: skip
        finally:
            end_run(state.redis, state.config.key_prefix, rid, run)

    first = one_run()  # the run that is "killed" after its cleanup: its ledger stays
    assert not session.exists()
    again = one_run()
    assert [(s["label"], s["files"]) for s in again] == [(s["label"], s["files"]) for s in first]
    assert again[0]["files"] == 10
    after = state.store.get(rid)
    assert after is not None and after.errors == []
    assert after.progress["filesImported"] == 10
    state.queue.empty()  # the helper jobs nobody took


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the job catches it."""


def test_a_run_killed_between_its_cleanup_and_its_status_is_completed_by_the_retry(
    client: FlaskClient, inbox: Path, state: InboxState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 19 of the kill matrix, made deterministic: the job stored every file and removed
    the session folder, then died before recording "Completed". The ledger of
    stored files must outlive that moment, or the retry finds neither folder nor files."""
    from flask_dicom_inbox.requests import COMPLETED
    from flask_dicom_inbox.service import execute_import

    session, rid = _submitted_move(client, inbox, "latekill")
    real_set_status = state.store.set_status

    def dies_before_completed(request_id: int, status: str, message: str = "") -> None:
        if status == COMPLETED:
            raise _Killed
        real_set_status(request_id, status, message)

    monkeypatch.setattr(state.store, "set_status", dies_before_completed)
    with pytest.raises(_Killed):
        execute_import(state, rid, None)
    assert not session.exists()  # the cleanup ran: the ledger is all that is left
    assert len(dict(state.store.iter_stored(rid))) == 10
    monkeypatch.undo()

    assert execute_import(state, rid, None) == COMPLETED
    after = state.store.get(rid)
    assert after is not None and after.errors == []
    assert after.progress["filesImported"] == 10
    assert sum(int(s["files"]) for s in after.sessions) == 10
    assert dict(state.store.iter_stored(rid)) == {}  # forgotten once the outcome is recorded


def test_the_outcome_is_written_before_the_run_ends_and_a_failed_run_end_keeps_it(
    client: FlaskClient,
    inbox: Path,
    state: InboxState,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ "Completed" is written while the run is still current (deleting its chunk keys no
    longer delays the outcome), and a Redis error in that deletion leaves the request
    Completed and the job successful: the keys expire on their own, and the log says so."""
    import redis

    import flask_dicom_inbox.service as service
    from flask_dicom_inbox.fanout import run_key
    from flask_dicom_inbox.requests import COMPLETED

    _session, rid = _submitted_move(client, inbox, "runend")
    current_at_completed: list[bytes | None] = []
    real_set_status = state.store.set_status

    def noting_the_run(request_id: int, status: str, message: str = "") -> None:
        if status == COMPLETED:
            key = run_key(state.config.key_prefix, request_id)
            current_at_completed.append(state.redis.get(key))
        real_set_status(request_id, status, message)

    def redis_gone(*_args: object) -> None:
        raise redis.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(state.store, "set_status", noting_the_run)
    monkeypatch.setattr(service, "end_run", redis_gone)
    with caplog.at_level("WARNING", logger="flask_dicom_inbox"):
        assert service.execute_import(state, rid, None) == COMPLETED
    assert len(current_at_completed) == 1 and current_at_completed[0], "run ended too early"
    record = state.store.get(rid)
    assert record is not None and record.status == COMPLETED
    assert record.progress["filesImported"] == 10
    assert f"request {rid}: its run's keys were not deleted" in caplog.text
    state.queue.empty()  # the helper jobs nobody took


def test_a_worker_told_to_stop_during_a_recovery_pass_stops_before_its_next_job(
    state: InboxState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM lands in a recovery pass (every lease period while idle, so often): RQ raises
    StopRequested there, and the pass's own error guard must not swallow it."""
    from flask_dicom_inbox import workers

    def recover_after_sigterm(pass_state: InboxState) -> list[int]:
        monkeypatch.setattr(workers, "recover", recover)  # one signal, on the first pass
        os.kill(os.getpid(), signal.SIGTERM)
        return recover(pass_state)

    monkeypatch.setattr(workers, "recover", recover_after_sigterm)
    job = state.queue.enqueue(os.getcwd)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        workers.make_worker(state, simple=True).work(burst=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert job.get_status(refresh=True) == "queued", "the worker stopped before taking a job"
    assert state.queue.job_ids == [job.id]
    state.queue.empty()  # and the job with it
