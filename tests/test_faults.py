"""Faults (issue 4): concurrent workers and submissions, a Redis restart mid-import, a full
destination disk, sources changed under a running import, and request-sized job timeouts.

Workers here are real ``flask --app example_app dicom-inbox worker`` processes configured
through ``FLASK_*`` environment variables, except where a test needs to act at an exact point
of an import: those run the in-process worker and watch the request's own progress writes.
"""

from __future__ import annotations

import gc
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import SimpleWorker, Worker
from rq.job import Job
from rq.timeouts import BaseDeathPenalty

from example_app import create_app
from example_app.demo import write_session
from example_app.host import SqliteProjects, SqliteUsers
from flask_dicom_inbox import DicomInbox, InboxState
from flask_dicom_inbox.config import InboxConfig
from flask_dicom_inbox.filetable import FileTable
from flask_dicom_inbox.jobs import job_id_for
from flask_dicom_inbox.requests import RequestStore
from flask_dicom_inbox.storage import TEMP_PREFIX

from .conftest import (
    PASSWORDS,
    auth,
    delete_app_keys,
    free_port,
    run_worker,
    submit,
    tree,
    wait_until,
)

# -- helpers ----------------------------------------------------------------------------------


def _env(config: dict[str, Any]) -> dict[str, str]:
    return {**os.environ, **{f"FLASK_{k}": str(v) for k, v in config.items() if k != "TESTING"}}


class Workers:
    """Real worker processes; stopped (warm shutdown, then killed) at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, config: dict[str, Any], *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker",
             *extra],
            env=_env(config), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop()


def _rid(response: Any) -> int:
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])


def _no_anonymization(client: FlaskClient) -> None:
    """Copies are then byte-identical to their sources, so 'exactly once' is checkable."""
    response = client.put("/xapi/anonymize/site/enabled", data="false", headers=auth())
    assert response.status_code == 200


def _written(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _build_app(config: dict[str, Any]) -> Flask:
    """The example app with conftest's users and projects, on ``config``."""
    application = create_app(config)
    users, projects = SqliteUsers(application), SqliteProjects(application)
    for name, password in PASSWORDS.items():
        users.create(name, password, admin=(name == "admin"))
    projects.create("test_proj", "owner")
    projects.add_member("test_proj", "member", "member")
    inbox = DicomInbox.state(application).config.inbox_path
    (inbox / "test_proj").mkdir(parents=True, exist_ok=True)
    return application


# -- concurrency ------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_workers_and_ten_concurrent_requests(
    app: Flask, state: InboxState, inbox: Path, app_config: dict[str, Any], workers: Workers
) -> None:
    _no_anonymization(app.test_client())
    sessions = {}
    for n in range(10):
        folder = inbox / "test_proj" / f"c{n}"
        sessions[n] = (folder, write_session(folder, series=2, files_per_series=5, seed=10 + n))
    sources = {n: {p.name: p.read_bytes() for p in g.files} for n, (_f, g) in sessions.items()}
    inbox_before = tree(inbox)
    for _ in range(2):
        workers.start(app_config)
    # Both listening before the burst: else the first one up may take all ten small imports.
    _wait_until(lambda: Worker.count(queue=state.queue) == 2, 60, "both workers to listen")
    barrier = threading.Barrier(10)
    answers: dict[int, Any] = {}

    def post(n: int) -> None:
        client = app.test_client()  # one client per thread, as separate HTTP clients would be
        barrier.wait()
        answers[n] = submit(
            client, PROJECT_ID="test_proj", EXPT_LABEL=f"c{n}", path=str(sessions[n][0])
        )

    threads = [threading.Thread(target=post, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = {n: _rid(answers[n]) for n in range(10)}
    assert len(set(ids.values())) == 10

    def all_finished() -> bool:
        return all(state.store.get(i).finished for i in ids.values())  # type: ignore[union-attr]

    try:
        _wait_until(all_finished, 240, "ten requests to finish")
    except AssertionError:
        raise AssertionError(workers.logs()) from None
    prearchive = state.config.prearchive_path
    for n, rid in ids.items():
        record = state.store.get(rid)
        assert record is not None
        assert record.status == "Completed", (record.message, record.errors)
        [session] = record.sessions
        ts_and_label = session["url"].split("/")[-2:]
        folder = prearchive / "test_proj" / ts_and_label[0] / ts_and_label[1]
        got = {p.name: p.read_bytes() for p in _written(folder)}
        assert got == sources[n], f"request {rid}: its own files, each exactly once"
    everything = _written(prearchive)
    assert len(everything) == 100, "nothing imported twice"
    assert not [p for p in everything if p.name.startswith(TEMP_PREFIX)]
    assert tree(inbox) == inbox_before, "copy mode keeps every source"
    ran_on = {
        Job.fetch(job_id_for(state.config.key_prefix, rid), connection=state.redis).worker_name
        for rid in ids.values()
    }
    assert len(ran_on) == 2, f"both workers took requests: {ran_on}"


def test_same_folder_submitted_twice_at_once_is_accepted_once(
    app: Flask, state: InboxState, inbox: Path
) -> None:
    folder = inbox / "test_proj" / "twice"
    write_session(folder, series=1, files_per_series=2)
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def post(label: str) -> None:
        client = app.test_client()
        barrier.wait()
        codes.append(
            submit(client, PROJECT_ID="test_proj", EXPT_LABEL=label, path=str(folder)).status_code
        )

    threads = [threading.Thread(target=post, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(codes) == [200, 409]
    assert len(state.store.ids()) == 1 and len(state.queue) == 1


@pytest.mark.slow
def test_same_folder_is_409_while_the_first_is_importing(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, app_config: dict[str, Any],
    workers: Workers,
) -> None:  # fmt: skip
    folder = inbox / "test_proj" / "busy"
    write_session(folder, series=3, files_per_series=100, rows=128, columns=128)
    rid = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="busy", path=str(folder)))
    workers.start(app_config)

    def importing() -> bool:
        record = state.store.get(rid)
        return record is not None and record.status == "Importing"

    _wait_until(importing, 60, "the import to start")
    again = submit(client, PROJECT_ID="test_proj", EXPT_LABEL="busy2", path=str(folder))
    assert again.status_code == 409, again.get_data(as_text=True)
    assert f"request {rid} (Importing)" in again.get_json()["message"]
    inner = submit(client, PROJECT_ID="test_proj", path=str(folder / "series002"))
    assert inner.status_code == 409
    _wait_until(lambda: state.store.get(rid).finished, 120, "the import to end")  # type: ignore[union-attr]
    assert state.store.get(rid).status == "Completed"  # type: ignore[union-attr]
    assert submit(client, PROJECT_ID="test_proj", path=str(folder)).status_code == 200


# -- Redis restarted mid-import ---------------------------------------------------------------
class PrivateRedis:
    """A ``redis-server`` of our own, append-only, that the test stops and starts again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder), "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        conn = redis.Redis(port=self.port)

        def answers() -> bool:
            try:
                return bool(conn.ping())
            except redis.exceptions.ConnectionError:
                return False

        _wait_until(answers, 20, "the private redis-server")
        conn.close()

    def shutdown(self) -> None:
        assert self.proc is not None
        conn = redis.Redis(port=self.port)
        try:
            conn.shutdown()  # flushes the append-only file, then drops the connection
        except redis.exceptions.ConnectionError:
            pass
        self.proc.wait(20)
        conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(folder)
    server.start()
    yield server
    server.stop()


def _record_fields(store: RequestStore, rid: int) -> dict[str, Any]:
    record = store.get(rid)
    assert record is not None
    return {
        "username": record.username, "session_path": record.session_path,
        "parameters": record.parameters, "created": record.created,
    }  # fmt: skip


@pytest.mark.slow
def test_worker_survives_a_redis_restart_mid_import(
    tmp_path: Path, app_config: dict[str, Any], private_redis: PrivateRedis, workers: Workers
) -> None:
    config = {**app_config, "DICOM_INBOX_REDIS_URL": private_redis.url,
              "DICOM_INBOX_PROGRESS_EVERY": 20}  # fmt: skip
    application = _build_app(config)
    state = DicomInbox.state(application)
    client = application.test_client()
    inbox = state.config.inbox_path
    # An earlier, finished request and the one to be interrupted: no record may be lost.
    early = inbox / "test_proj" / "early"
    write_session(early, series=1, files_per_series=2, seed=1)
    early_id = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="early", path=str(early)))
    run_worker(application)
    folder = inbox / "test_proj" / "long"
    generated = write_session(folder, series=4, files_per_series=150, rows=128, columns=128)
    rid = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="long", path=str(folder)))
    kept = {i: _record_fields(state.store, i) for i in (early_id, rid)}
    workers.start(config)
    total = len(generated.files)

    def done_at_least(n: int) -> Callable[[], bool]:
        return lambda: state.store.get(rid).progress["filesDone"] >= n  # type: ignore[union-attr]

    _wait_until(done_at_least(60), 120, "the import to be under way")
    assert not state.store.get(rid).finished, "Redis goes down mid-import"  # type: ignore[union-attr]
    private_redis.shutdown()
    time.sleep(2)
    private_redis.start()
    state.redis.connection_pool.disconnect()
    try:
        _wait_until(lambda: state.store.get(rid).finished, 180, "the import to finish")  # type: ignore[union-attr]
    except AssertionError:
        raise AssertionError(workers.logs()) from None
    record = state.store.get(rid)
    assert record is not None
    assert record.status == "Completed", (record.message, record.errors[:3], workers.logs())
    assert record.progress["filesImported"] == total
    for i, fields in kept.items():
        assert _record_fields(state.store, i) == fields, f"request {i} survived intact"
    assert state.store.get(early_id).status == "Completed"  # type: ignore[union-attr]
    assert [h["status"] for h in record.history][:3] == ["Queued", "Accepted", "Importing"]
    assert state.store.ids() == [rid, early_id]
    written = _written(state.config.prearchive_path / "test_proj")
    assert not [p for p in written if p.name.startswith(TEMP_PREFIX)]
    names = sorted(p.name for p in written if "long" in p.parts)
    assert names == sorted(p.name for p in generated.files), "every file exactly once"


# -- destination disk full --------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs; skipped only when mounting is not permitted here."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_destination_disk_fails_cleanly(
    tmp_path: Path, app_config: dict[str, Any], small_disk: Path
) -> None:
    prearchive = small_disk / "prearchive"
    config = {**app_config, "DICOM_INBOX_PREARCHIVE_PATH": str(prearchive),
              "DATABASE": str(tmp_path / "disk.sqlite"),
              "DICOM_INBOX_KEY_PREFIX": f"dicom-inbox-test-{uuid.uuid4().hex[:10]}:"}  # fmt: skip
    application = _build_app(config)
    state = DicomInbox.state(application)
    try:
        client = application.test_client()
        folder = state.config.inbox_path / "test_proj" / "big"
        write_session(folder, series=2, files_per_series=50, rows=256, columns=256)
        before = tree(folder)
        assert sum(len(b) for b in before.values()) > 10 * 2**20, "bigger than the disk"
        rid = _rid(
            submit(client, PROJECT_ID="test_proj", EXPT_LABEL="big", cleanupAfterImport="true",
                   path=str(folder))
        )  # fmt: skip
        run_worker(application)
        record = state.store.get(rid)
        assert record is not None
        assert record.status == "Failed"
        assert "full" in record.message and "No space left" in record.message, record.message
        assert tree(folder) == before, "sources untouched (no cleanup after a failure)"
        left = _written(prearchive)
        assert not [p for p in left if p.name.startswith(TEMP_PREFIX)], "no temporary file"
        assert left == [], f"{len(left)} file(s) of a failed request left in the prearchive"
    finally:
        delete_app_keys(state)


# -- the request's file records cannot be written (their temporary folder is full) -----------
def _disk_full(*_args: Any) -> None:
    raise sqlite3.OperationalError("database or disk is full")


def test_file_records_that_cannot_be_kept_fail_the_request_before_any_copy(
    app: Flask, client: FlaskClient, state: InboxState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FileTable, "add_files", _disk_full)
    folder = state.config.inbox_path / "test_proj" / "nowalk"
    write_session(folder, series=1, files_per_series=3)
    rid = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="nowalk", path=str(folder)))
    run_worker(app)
    record = state.store.get(rid)
    assert record is not None and record.status == "Failed"
    assert "could not keep this request's file records" in record.message, record.message
    assert "database or disk is full" in record.message and "TMPDIR" in record.message
    assert _written(state.config.prearchive_path) == []


def test_stored_files_that_cannot_be_recorded_are_rolled_back_from_the_ledger(
    app: Flask, client: FlaskClient, state: InboxState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file table fails after the store phase (its temporary file on the filesystem the
    copies just filled, say): the request fails, and its copies, found from the Redis ledger,
    are removed; the sources are untouched."""

    def tally_then_fail(_table: FileTable, rows: Any) -> None:
        for _row in rows:  # each stored file is tallied, as the real call would
            pass
        _disk_full()

    monkeypatch.setattr(FileTable, "add_stored", tally_then_fail)
    folder = state.config.inbox_path / "test_proj" / "norecord"
    write_session(folder, series=2, files_per_series=3)
    before = tree(folder)
    rid = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="norecord", path=str(folder)))
    run_worker(app)
    record = state.store.get(rid)
    assert record is not None and record.status == "Failed"
    assert "could not record the stored files" in record.message, record.message
    assert "copies this request had written were removed" in record.message
    assert tree(folder) == before
    assert _written(state.config.prearchive_path) == []


# -- sources changed under a running import ---------------------------------------------------
class _HookedStore(RequestStore):
    """The real store, calling hooks at exact points of the engine's own progress writes.

    ``on_found()`` runs once, when the walk's file count is written (after the scan, before
    any header is read or file stored); ``on_imported(n)`` after each progress write, with
    the files stored so far (with ``DICOM_INBOX_PROGRESS_EVERY=1``, a write per stored file or
    chunk, so ``n == total`` means every file is durable and cleanup has not begun).
    """

    on_found: Callable[[], None] = staticmethod(lambda: None)
    on_imported: Callable[[int], None] = staticmethod(lambda n: None)
    _found_seen = False

    def set_progress(self, request_id: int, **values: int) -> None:
        super().set_progress(request_id, **values)
        if "filesFound" in values and not self._found_seen:
            self._found_seen = True
            self.on_found()

    def add_progress(self, request_id: int, **deltas: int) -> None:
        super().add_progress(request_id, **deltas)
        record = self.get(request_id)
        assert record is not None
        self.on_imported(record.progress["filesImported"])


@pytest.fixture
def hooked(app: Flask, state: InboxState) -> _HookedStore:
    app.config["DICOM_INBOX_PROGRESS_EVERY"] = 1
    state.config = InboxConfig.from_app(app)
    store = _HookedStore(state.redis, state.config.key_prefix)
    state.store = store
    return store


def test_sources_changed_or_removed_before_they_are_stored_are_kept_and_reported(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, hooked: _HookedStore
) -> None:
    folder = inbox / "test_proj" / "shifting"
    generated = write_session(folder, series=2, files_per_series=3)
    changed, removed = generated.files[1], generated.files[4]

    def after_the_scan() -> None:
        with open(changed, "ab") as out:
            out.write(b"appended by the scanner")
        removed.unlink()

    hooked.on_found = after_the_scan
    rid = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="shift", cleanupAfterImport="true",
                      path=str(folder)))  # fmt: skip
    run_worker(app)
    record = state.store.get(rid)
    assert record is not None
    assert record.status == "Completed", record.message
    reasons = {e["path"]: e["reason"] for e in record.errors}
    assert "changed" in reasons[str(changed.relative_to(folder))]
    assert str(removed.relative_to(folder)) in reasons, record.errors
    assert changed.read_bytes().endswith(b"appended by the scanner"), "kept, unchanged by us"
    others = [p for p in generated.files if p not in (changed, removed)]
    stored = {p.name for p in _written(state.config.prearchive_path)}
    assert stored == {p.name for p in others}
    assert not any(p.exists() for p in others), "the imported ones cleaned up"


def test_source_changed_after_it_was_stored_is_not_deleted_and_reported(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, hooked: _HookedStore
) -> None:
    folder = inbox / "test_proj" / "late_change"
    generated = write_session(folder, series=1, files_per_series=4)
    victim = generated.files[0]

    def after_all_stored(imported: int) -> None:
        if imported == len(generated.files):
            with open(victim, "ab") as out:
                out.write(b"rewritten after the copy")

    hooked.on_imported = after_all_stored
    rid = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="late", cleanupAfterImport="true",
                      path=str(folder)))  # fmt: skip
    run_worker(app)
    record = state.store.get(rid)
    assert record is not None
    assert record.status == "Completed", record.message
    reasons = {e["path"]: e["reason"] for e in record.errors}
    assert "changed since the scan" in reasons[str(victim.relative_to(folder))]
    assert victim.read_bytes().endswith(b"rewritten after the copy"), "never deleted unseen"
    assert not any(p.exists() for p in generated.files[1:])


def test_source_removed_after_it_was_stored_is_reported(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, hooked: _HookedStore
) -> None:
    folder = inbox / "test_proj" / "late_removal"
    generated = write_session(folder, series=1, files_per_series=4)
    victim = generated.files[0]

    def after_all_stored(imported: int) -> None:
        if imported == len(generated.files) and victim.exists():
            victim.unlink()

    hooked.on_imported = after_all_stored
    rid = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="gone", cleanupAfterImport="true",
                      path=str(folder)))  # fmt: skip
    run_worker(app)
    record = state.store.get(rid)
    assert record is not None
    assert record.status == "Completed", record.message
    assert not any(p.exists() for p in generated.files)
    reasons = {e["path"]: e["reason"] for e in record.errors}
    assert str(victim.relative_to(folder)) in reasons, record.errors


# -- limits -----------------------------------------------------------------------------------
def test_job_timeout_grows_with_the_file_count(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    app.config["DICOM_INBOX_JOB_TIMEOUT"] = 100
    app.config["DICOM_INBOX_JOB_TIMEOUT_PER_FILE"] = 2
    state.config = InboxConfig.from_app(app)
    timeouts = {}
    for files in (3, 40):
        folder = inbox / "test_proj" / f"t{files}"
        write_session(folder, series=1, files_per_series=files, rows=4, columns=4, seed=files)
        (folder / "notes.txt").write_text("counted too: the job must walk it")
        rid = _rid(submit(client, PROJECT_ID="test_proj", path=str(folder)))
        job = Job.fetch(job_id_for(state.config.key_prefix, rid), connection=state.redis)
        timeouts[files] = job.timeout
    assert timeouts == {3: 100 + 4 * 2, 40: 100 + 41 * 2}


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    wait_until(predicate, timeout, what, interval=0.05)


def _timed_out_import(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, worker: Worker
) -> None:
    """4,000 anonymized files under a 1 s job timeout, run by ``worker`` (in burst mode): the
    request fails with the timeout as its reason, soon, with no file blamed for it and no
    temporary file left."""
    assert client.put("/xapi/anonymize/site/enabled", data="true", headers=auth()).status_code
    app.config["DICOM_INBOX_JOB_TIMEOUT"] = 1
    app.config["DICOM_INBOX_JOB_TIMEOUT_PER_FILE"] = 0
    state.config = InboxConfig.from_app(app)
    folder = inbox / "test_proj" / "slow"
    write_session(folder, series=4, files_per_series=1000, rows=32, columns=32)
    rid = _rid(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="slow", path=str(folder)))
    started = time.monotonic()
    worker.work(burst=True)
    took = time.monotonic() - started
    record = state.store.get(rid)
    assert record is not None
    assert record.status == "Failed", (record.status, record.message, record.errors[:3])
    assert record.message == "the import timed out after 1 s", record.message
    assert not record.errors, record.errors[:3]
    gc.collect()
    assert took < 10, f"the job ended {took:.1f} s after it began, long past its timeout"
    assert not [
        p for p in state.config.prearchive_path.rglob("*") if p.name.startswith(TEMP_PREFIX)
    ]


@pytest.mark.slow
# The timeout can land between open() and its `with`, in this test's 4,000 file creations:
# that file object is closed (with a ResourceWarning) when collected, below, not leaked.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_job_that_outlives_its_timeout_fails_the_request_with_the_reason(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    """RQ's job timeout (SIGALRM) lands mid-file most of the time: in a header read or in a
    file's anonymization, each guarded against that file's own faults. The guards let it
    through, so the request fails with the reason instead of running on (a file reported
    unreadable) until RQ kills the work-horse a minute later and recovery starts it again."""
    worker = SimpleWorker([state.queue], connection=state.redis, job_class=state.job_class)
    _timed_out_import(app, client, state, inbox, worker)


class _LostAlarm(BaseDeathPenalty):
    """RQ's job timeout whose SIGALRM exception never arrives as such (pydicom, for one, turns
    an exception raised while it looks a keyword up into a KeyError)."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


class _WorkerWithLostAlarms(SimpleWorker):
    death_penalty_class = _LostAlarm


@pytest.mark.slow
def test_a_job_whose_timeout_alarm_was_lost_still_fails_at_its_deadline(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    """The job notes its deadline; the chunk loop and the per-file guards end it there, with
    the same reason, even when RQ's own alarm never lands."""
    worker = _WorkerWithLostAlarms([state.queue], connection=state.redis, job_class=state.job_class)
    _timed_out_import(app, client, state, inbox, worker)
