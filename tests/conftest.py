"""Fixtures: the example app on a temporary folder, a real Redis with a per-test key prefix and
queue, real users and projects, and a real RQ worker run in-process (``SimpleWorker``)."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
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
from rq import Queue, SimpleWorker
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY
from werkzeug.serving import make_server

from example_app import create_app
from example_app.host import SqliteProjects, SqliteUsers
from flask_dicom_inbox import DicomInbox, InboxState

REDIS_URL = os.environ.get("DICOM_INBOX_TEST_REDIS_URL") or os.environ.get(
    "DICOM_INBOX_REDIS_URL", "redis://127.0.0.1:6379/0"
)

PASSWORDS = {
    "admin": "admin-pw",
    "owner": "owner-pw",
    "member": "member-pw",
    "collab": "collab-pw",
    "outsider": "outsider-pw",
}


@pytest.fixture(scope="session")
def redis_url() -> str:
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError as exc:  # pragma: no cover - environment fault
        pytest.fail(f"the tests need a Redis at {REDIS_URL} (make test starts one): {exc}")
    return REDIS_URL


def _delete_keys(conn: redis.Redis, pattern: str) -> None:
    keys = list(conn.scan_iter(match=pattern, count=1000))
    if keys:
        conn.delete(*keys)


@pytest.fixture
def app_config(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    return {
        "TESTING": True,
        "DATABASE": str(tmp_path / "example.sqlite"),
        "DICOM_INBOX_PATH": str(tmp_path / "inbox"),
        "DICOM_INBOX_PREARCHIVE_PATH": str(tmp_path / "prearchive"),
        "DICOM_INBOX_ARCHIVE_PATH": str(tmp_path / "archive"),
        "DICOM_INBOX_REDIS_URL": redis_url,
        "DICOM_INBOX_KEY_PREFIX": f"dicom-inbox-test-{tag}:",
        "DICOM_INBOX_QUEUE": f"dicom-inbox-test-{tag}",
        "DICOM_INBOX_PROGRESS_EVERY": 5,
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """The example app with users admin, owner, member, collab, outsider and two projects.

    ``test_proj`` (prearchive; owner owns it, member edits, collab reads) and ``auto_proj``
    (auto-archive, owned by owner); ``other_proj`` is owned by outsider.
    """
    application = create_app(app_config)
    users = SqliteUsers(application)
    projects = SqliteProjects(application)
    for name, password in PASSWORDS.items():
        users.create(name, password, admin=(name == "admin"))
    projects.create("test_proj", "owner")
    projects.add_member("test_proj", "member", "member")
    projects.add_member("test_proj", "collab", "collaborator")
    projects.create("auto_proj", "owner", auto_archive=True)
    projects.create("other_proj", "outsider")
    for project in ("test_proj", "auto_proj", "other_proj"):
        (Path(app_config["DICOM_INBOX_PATH"]) / project).mkdir(parents=True, exist_ok=True)
    yield application
    state = DicomInbox.state(application)
    delete_app_keys(state)
    state.redis.close()


def delete_app_keys(state: InboxState) -> None:
    """Every key an app of the tests wrote to the shared Redis: its records, its queue's RQ
    keys, and its jobs and their results (named by the key prefix, which may differ from the
    queue's name)."""
    _delete_keys(state.redis, f"{state.config.key_prefix}*")
    # RQ also lists each worker in one global set (rq:workers), and a worker a test killed
    # never unregisters: its name stays there (a run of the suite left 43) and in the queue's
    # own set, which the pattern below deletes; so that set is read first.
    workers = state.redis.smembers(WORKERS_BY_QUEUE_KEY % state.config.queue)
    if workers:
        state.redis.srem(REDIS_WORKER_KEYS, *workers)
        state.redis.delete(*workers)
    _delete_keys(state.redis, f"rq:*{state.config.queue}*")
    _delete_keys(state.redis, "rq:*:" + state.config.key_prefix.rstrip(":") + "-import-*")
    # RQ lists every queue it enqueued on in one set of its own (rq:queues), which no pattern
    # above reaches: a run of the suite left some 500 names there.
    state.redis.srem(
        Queue.redis_queues_keys, f"{Queue.redis_queue_namespace_prefix}{state.config.queue}"
    )


@pytest.fixture
def state(app: Flask) -> InboxState:
    return DicomInbox.state(app)


@pytest.fixture
def inbox(state: InboxState) -> Path:
    return state.config.inbox_path


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def auth(user: str = "admin", password: str | None = None) -> dict[str, str]:
    """A basic-auth header for one of the fixture users."""
    secret = PASSWORDS[user] if password is None else password
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def run_worker(app: Flask) -> int:
    """Run every queued job in-process with a real RQ worker; return how many ran."""
    state = DicomInbox.state(app)
    worker = SimpleWorker([state.queue], connection=state.redis, job_class=state.job_class)
    before = len(state.queue)
    worker.work(burst=True)
    return before


def submit(
    client: FlaskClient, user: str = "admin", password: str | None = None, **params: Any
) -> Any:
    """POST /data/services/import with ``params`` in the query string."""
    query = {"import-handler": "inbox", **{k: str(v) for k, v in params.items()}}
    for key in [k for k, v in query.items() if v == "None"]:
        query.pop(key)
    return client.post("/data/services/import", query_string=query, headers=auth(user, password))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: compare before and after to prove no change."""
    out: dict[str, bytes] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = path.read_bytes()
        elif path.is_dir():
            out[str(path.relative_to(root)) + "/"] = b""
    return out


def flask_env(app_config: dict[str, Any]) -> dict[str, str]:
    """This environment for a subprocess of the example app (a worker, gunicorn) configured
    like ``app``: its settings as ``FLASK_*`` variables, none inherited from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "DICOM_INBOX_"))}
    for key, value in app_config.items():
        if key.startswith("DICOM_INBOX_") or key == "DATABASE":
            env[f"FLASK_{key}"] = str(value)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_http(wsgi: Any) -> Iterator[str]:
    """``wsgi`` on a real loopback HTTP server (a free port) in a thread; yields its URL."""
    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` forked (a worker's work-horse), from ``/proc``."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def stop_workers(*procs: subprocess.Popen[bytes] | None) -> None:
    """RQ's warm shutdown (SIGTERM) for each worker process still running: an idle worker stops
    at once. One that outlives 20 s is killed, never left running into the next test, and
    fails this one."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for proc in running:
        proc.terminate()
    late = []
    for proc in running:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            late.append(proc.pid)
    if late:
        raise AssertionError(f"worker process(es) {late} outlived their warm shutdown by 20 s")


@contextlib.contextmanager
def recorded_commands(conn: Any) -> Iterator[list[tuple[str, ...]]]:
    """Every command ``conn`` sends meanwhile (pipelined ones too), as (NAME, key, ...):
    what a change may no longer send (a SCAN of the keyspace, a read of every error)."""
    commands: list[tuple[str, ...]] = []
    send, make_pipeline = conn.execute_command, conn.pipeline

    def sent(*args: Any, **options: Any) -> Any:
        commands.append((str(args[0]).upper(), *map(str, args[1:2])))
        return send(*args, **options)

    def pipeline(*args: Any, **options: Any) -> Any:
        pipe = make_pipeline(*args, **options)
        queue = pipe.pipeline_execute_command

        def queued(*command: Any, **kw: Any) -> Any:
            commands.append((str(command[0]).upper(), *map(str, command[1:2])))
            return queue(*command, **kw)

        pipe.pipeline_execute_command = queued
        return pipe

    conn.execute_command, conn.pipeline = sent, pipeline
    try:
        yield commands
    finally:
        del conn.execute_command, conn.pipeline


def new_record(store: Any, **overrides: Any) -> Any:
    """A request record made straight in the store (no submission), for tests of its readers."""
    fields: dict[str, Any] = {
        "username": "admin",
        "handler": "inbox",
        "project_id": "test_proj",
        "session_path": "/nowhere",
        "cleanup_after_import": False,
        "parameters": {},
        "options": {},
    }
    return store.create(**{**fields, **overrides})
