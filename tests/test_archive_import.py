"""Archives end to end: ``inbox`` with a .zip/.tar/.tgz/.tar.gz path, and ``DICOM-zip`` uploads
through the test client, plain HTTP and the public ``xnat`` client."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import requests
import xnat
from flask import Flask
from flask.testing import FlaskClient

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.handlers.dicom_zip import uploads_folder
from flask_dicom_inbox.requests import RequestStore

from .conftest import (
    PASSWORDS,
    auth,
    delete_app_keys,
    new_record,
    recorded_commands,
    run_worker,
    serve_http,
    submit,
    tree,
)


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The test client runs no worker beside a request: DICOM-zip answers at once here."""
    return {**app_config, "DICOM_INBOX_UPLOAD_WAIT": 0}


def _session(root: Path, *, files: int = 3, rows: int = 16, seed: int = 0) -> dict[str, bytes]:
    folder = root / f"session-{seed}"
    write_session(folder, series=1, files_per_series=files, rows=rows, columns=rows, seed=seed)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.dcm"))}


def _pack(target: Path, files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> Path:
    """Write ``files`` (and ``extra`` members, names unchecked) as the archive ``target``."""
    members = {**files, **(extra or {})}
    name = target.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
            for member, data in members.items():
                zf.writestr(member, data)
    else:
        mode = "w:gz" if name.endswith((".tgz", ".tar.gz")) else "w"
        with tarfile.open(target, mode) as tf:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return target


def _imported(state: InboxState, project: str = "test_proj") -> list[Path]:
    return sorted(state.config.prearchive_path.glob(f"{project}/*/*/SCANS/*/DICOM/*"))


def _work_files(state: InboxState) -> dict[str, bytes]:
    return {k: v for k, v in tree(state.config.work_path).items() if not k.endswith("/")}


def _completed(app: Flask, state: InboxState, record: Any) -> Any:
    """Run the queued jobs; the request's record, which must have ``Completed``."""
    run_worker(app)
    done = state.store.get(record.id)
    assert done.status == "Completed", (done.message, done.errors)
    return done


def _record(state: InboxState, response: Any) -> Any:
    assert response.status_code == 200, response.get_data(as_text=True)
    rid = int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])
    return state.store.get(rid)


@pytest.mark.parametrize("name", ["s.zip", "s.tar", "s.tgz", "s.tar.gz", "S.TAR.GZ", "S.Zip"])
def test_inbox_imports_an_archive_path(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, tmp_path: Path, name: str
) -> None:
    files = _session(tmp_path)
    archive = _pack(inbox / "test_proj" / name, files)
    before = archive.read_bytes()
    response = submit(
        client, PROJECT_ID="test_proj", EXPT_LABEL="arc1", SUBJECT_ID="s1", path=archive
    )
    record = _record(state, response)
    assert record.session_path == str(archive)
    assert run_worker(app) >= 1
    done = state.store.get(record.id)
    assert done.status == "Completed", (done.message, done.errors)
    assert done.errors == []
    imported = _imported(state)
    assert len(imported) == 3
    assert all("/arc1/SCANS/1/DICOM/" in str(p) for p in imported)
    assert archive.read_bytes() == before, "cleanupAfterImport=false keeps the archive"
    assert tree(state.config.work_path / "extract") == {}, "the working folder is removed"


def test_cleanup_deletes_the_archive_once_every_member_is_stored(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, tmp_path: Path
) -> None:
    archive = _pack(inbox / "test_proj" / "clean.tgz", _session(tmp_path))
    response = submit(client, PROJECT_ID="test_proj", cleanupAfterImport="true", path=archive)
    record = _record(state, response)
    done = _completed(app, state, record)
    assert done.errors == []
    assert len(_imported(state)) == 3
    assert not archive.exists(), "deleted once every file was stored"
    assert tree(state.config.work_path / "extract") == {}


def test_cleanup_keeps_an_archive_whose_members_were_refused_and_reports_them(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, tmp_path: Path
) -> None:
    files = _session(tmp_path)
    nested = _pack(tmp_path / "nested.zip", {"x.dcm": b"x"})
    archive = _pack(
        inbox / "test_proj" / "mixed.tgz",
        files,
        extra={"../escape.dcm": b"x", "/etc/evil": b"x", "inner.zip": nested.read_bytes()},
    )
    before = archive.read_bytes()
    response = submit(client, PROJECT_ID="test_proj", cleanupAfterImport="true", path=archive)
    record = _record(state, response)
    done = _completed(app, state, record)
    assert archive.read_bytes() == before, "the refused members live only in the archive: kept"
    assert len(_imported(state)) == 3
    assert sorted((e["path"], e["reason"]) for e in done.errors) == [
        ("../escape.dcm", "'..' in the member name"),
        ("/etc/evil", "absolute member name"),
        ("inner.zip", "nested archive, not expanded"),
        ("mixed.tgz", "archive kept: some of its files were skipped"),
    ]
    assert done.progress["filesSkipped"] >= 3
    assert not (inbox / "escape.dcm").exists() and not (inbox / "test_proj" / "escape.dcm").exists()
    assert tree(state.config.work_path / "extract") == {}


@pytest.mark.parametrize("fault", ["truncated", "bomb", "only-junk"])
def test_cleanup_keeps_the_archive_when_the_import_fails(
    app: Flask,
    client: FlaskClient,
    state: InboxState,
    inbox: Path,
    tmp_path: Path,
    fault: str,
) -> None:
    if fault == "truncated":
        whole = _pack(tmp_path / "w.tar.gz", _session(tmp_path, files=4, rows=64))
        archive = inbox / "test_proj" / "broken.tar.gz"
        archive.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        reason = "truncated"
    elif fault == "bomb":
        archive = _pack(inbox / "test_proj" / "bomb.zip", {"zeros.dcm": bytes(64 << 20)})
        reason = "zip bomb"
    else:
        archive = _pack(inbox / "test_proj" / "junk.zip", {}, extra={"../a": b"a", "b.txt": b"b"})
        reason = "no file could be imported"
    before = archive.read_bytes()
    response = submit(client, PROJECT_ID="test_proj", cleanupAfterImport="true", path=archive)
    record = _record(state, response)
    run_worker(app)
    done = state.store.get(record.id)
    assert done.status == "Failed"
    assert reason in done.message, done.message
    assert archive.read_bytes() == before, "a failed import never deletes the archive"
    assert _imported(state) == []
    assert tree(state.config.work_path / "extract") == {}


def test_archive_paths_are_checked_at_submit(
    client: FlaskClient, state: InboxState, inbox: Path, tmp_path: Path
) -> None:
    fake = inbox / "test_proj" / "fake.zip"
    fake.write_bytes(b"not an archive at all" * 30)
    response = submit(client, PROJECT_ID="test_proj", path=fake)
    assert response.status_code == 400
    assert "neither a zip nor a tar archive" in response.get_json()["message"]

    empty = inbox / "test_proj" / "empty.tar"
    empty.write_bytes(b"")
    assert submit(client, PROJECT_ID="test_proj", path=empty).get_json()["errors"] == {
        "path": ["empty file"]
    }

    rar = inbox / "test_proj" / "s.rar"
    rar.write_bytes(b"Rar!")
    response = submit(client, PROJECT_ID="test_proj", path=rar)
    assert response.status_code == 400
    assert "neither a folder nor a supported archive file" in response.get_json()["message"]

    outside = _pack(tmp_path / "outside.zip", {"a.dcm": b"a"})
    link = inbox / "test_proj" / "link.zip"
    link.symlink_to(outside)
    response = submit(client, PROJECT_ID="test_proj", path=link)
    assert response.status_code == 400
    assert response.get_json()["errors"] == {"path": ["outside the inbox"]}

    other = _pack(inbox / "other_proj" / "theirs.zip", {"a.dcm": b"a"})
    assert submit(client, user="member", PROJECT_ID="test_proj", path=other).status_code == 403
    assert state.store.ids() == []


# -- DICOM-zip -----------------------------------------------------------------------------


class _TrickleStream(io.RawIOBase):
    """A body that can only be read piece by piece, recording each read's size. Seekable, as
    the test client's ``input_stream`` must be (it rewinds the stream before the request)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.reads: list[int] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 256 * 1024))
        self.reads.append(len(chunk))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _upload(
    client: FlaskClient,
    body: bytes | _TrickleStream,
    user: str = "admin",
    *,
    chunked: bool = False,
    **params: str,
) -> Any:
    query = {"import-handler": "DICOM-zip", **params}
    stream = body if isinstance(body, _TrickleStream) else _TrickleStream(body)
    # The stream goes in as wsgi.input itself: the test client would seek in input_stream.
    environ: dict[str, Any] = {"wsgi.input": stream}
    if chunked:
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(len(stream._data.getbuffer()))
    return client.post(
        "/data/services/import",
        query_string=query,
        content_type="application/zip",
        environ_overrides=environ,
        headers=auth(user),
    )


def test_dicom_zip_upload_streams_to_disk_and_imports(
    app: Flask, client: FlaskClient, state: InboxState, tmp_path: Path
) -> None:
    files = _session(tmp_path, files=6, rows=160)  # ~50 KiB of noise per file: ~300 KiB body
    body = _pack(tmp_path / "u.zip", files).read_bytes()
    stream = _TrickleStream(body)
    response = _upload(
        client, stream, PROJECT_ID="test_proj", SUBJECT_ID="s9", EXPT_LABEL="up1", chunked=True
    )
    record = _record(state, response)
    assert len([n for n in stream.reads if n]) >= 2, "read in pieces, not at once"
    assert max(stream.reads) <= 256 * 1024
    saved = Path(record.session_path)
    assert saved.parent == uploads_folder(state.config)
    assert saved.read_bytes() == body
    assert record.handler == "DICOM-zip"
    assert record.status == "Queued"

    done = _completed(app, state, record)
    assert done.resolution.startswith("/prearchive/projects/test_proj/")
    assert done.sessions[0]["subject"] == "s9"
    imported = _imported(state)
    assert len(imported) == 6 and all("/up1/" in str(p) for p in imported)
    # Anonymized like inbox imports: the site script set PatientName to the subject.
    from pydicom import dcmread

    assert str(dcmread(imported[0]).PatientName) == "s9"
    assert _work_files(state) == {}, "the upload and the extraction are gone"


def test_dicom_zip_accepts_tar_gz_and_the_xnat_parameter_names(
    app: Flask, client: FlaskClient, state: InboxState, tmp_path: Path
) -> None:
    body = _pack(tmp_path / "u.tar.gz", _session(tmp_path)).read_bytes()
    response = _upload(client, body, project="test_proj", subject="s2", session="e2")
    record = _record(state, response)
    assert record.project_id == "test_proj"
    done = _completed(app, state, record)
    assert done.sessions[0]["label"] == "e2" and done.sessions[0]["subject"] == "s2"


def _assert_refused_at_the_limit(
    response: Any, stream: _TrickleStream, limit: int, message: str, *, chunked: bool
) -> None:
    """A 413 naming the limit, sent before the body was read (``Content-Length`` known) or
    once the chunks read reached the limit (within one read of the stream's chunks)."""
    assert response.status_code == 413, response.get_data(as_text=True)
    assert message in response.get_json()["message"]
    if chunked:
        assert sum(stream.reads) <= limit + 2 * 256 * 1024, "stopped at the limit"
    else:
        assert stream.reads == [], "refused from Content-Length before reading"


@pytest.mark.parametrize("chunked", [False, True])
def test_dicom_zip_over_the_size_limit_is_413_while_streaming(
    app_config: dict[str, Any], tmp_path: Path, chunked: bool
) -> None:
    from example_app import create_app

    app = create_app({**app_config, "DICOM_INBOX_UPLOAD_MAX_BYTES": 100_000})
    _users(app)
    state = app.extensions["dicom_inbox"]
    try:
        body = _pack(tmp_path / "big.zip", _session(tmp_path, files=4, rows=128)).read_bytes()
        assert len(body) > 100_000
        stream = _TrickleStream(body)
        response = _upload(app.test_client(), stream, PROJECT_ID="test_proj", chunked=chunked)
        _assert_refused_at_the_limit(response, stream, 100_000, "100000", chunked=chunked)
        assert state.store.ids() == []
        assert _work_files(state) == {}
    finally:
        _cleanup(state)


def _multipart(
    client: FlaskClient, data: bytes, handler: str | None, *, chunked: bool = False, **params: str
) -> tuple[Any, _TrickleStream]:
    """POST ``data`` as the file part of a multipart form, with ``params`` as its fields
    (``handler`` None: the form names it, not the query string).

    (The body goes in as the builder's ``input_stream``: the test client's form parsing
    found nothing in a ``wsgi.input`` set through ``environ_overrides``.)
    """
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    part = FileStorage(io.BytesIO(data), filename="session.zip", content_type="application/zip")
    boundary, body = encode_multipart({**params, "file": part})
    stream = _TrickleStream(body)
    response = client.post(
        "/data/services/import",
        query_string={"import-handler": handler} if handler else {},
        input_stream=stream,
        content_length=None if chunked else len(body),
        content_type=f"multipart/form-data; boundary={boundary}",
        environ_overrides={"wsgi.input_terminated": True} if chunked else {},
        headers=auth(),
    )
    return response, stream


@pytest.mark.parametrize("in_query", [True, False])
def test_dicom_zip_as_the_file_part_of_a_multipart_form_imports(
    app: Flask, client: FlaskClient, state: InboxState, tmp_path: Path, in_query: bool
) -> None:
    """The handler named in the query string, or in a form field (``curl -F
    import-handler=DICOM-zip -F file=@s.zip``): a 1.5 MiB archive passes either way."""
    body = _pack(tmp_path / "u.zip", _session(tmp_path, files=10, rows=256)).read_bytes()
    assert len(body) > 1024 * 1024, "over the limit of a form without an upload"
    named = {} if in_query else {"import-handler": "DICOM-zip"}
    response, _stream = _multipart(
        client,
        body,
        "DICOM-zip" if in_query else None,
        PROJECT_ID="test_proj",
        SUBJECT_ID="m1",
        EXPT_LABEL="mp1",
        **named,
    )
    record = _record(state, response)
    assert record.handler == "DICOM-zip"
    done = _completed(app, state, record)
    assert done.sessions[0]["label"] == "mp1" and done.sessions[0]["subject"] == "m1"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_multipart_form_over_its_limit_is_413_before_werkzeug_spools_it(
    app_config: dict[str, Any], chunked: bool
) -> None:
    """Werkzeug writes a form's file part to a temporary file while it parses the form,
    before any check of ours: the limit applies to the form's bytes as they are read."""
    from example_app import create_app
    from flask_dicom_inbox.uploads import FORM_MAX_BYTES

    app = create_app({**app_config, "DICOM_INBOX_UPLOAD_MAX_BYTES": 100_000})
    _users(app)
    state = app.extensions["dicom_inbox"]
    client = app.test_client()
    try:
        cases = [  # (handler, file part bytes, the limit the message names)
            ("DICOM-zip", 100_000 + FORM_MAX_BYTES + 4096, 100_000 + FORM_MAX_BYTES),
            ("inbox", FORM_MAX_BYTES + 4096, FORM_MAX_BYTES),
        ]
        for handler, size, limit in cases:
            data = bytes(range(256)) * (size // 256 + 1)
            response, stream = _multipart(
                client, data, handler, chunked=chunked, PROJECT_ID="test_proj"
            )
            message = f"over the limit of {limit} bytes"
            _assert_refused_at_the_limit(response, stream, limit, message, chunked=chunked)
        assert state.store.ids() == []
        assert _work_files(state) == {}
    finally:
        _cleanup(state)


def test_a_form_413_names_the_limit_that_refused_it(
    app_config: dict[str, Any], tmp_path: Path
) -> None:
    """The host's smaller MAX_CONTENT_LENGTH stays; Werkzeug's own form limits (a field over
    MAX_FORM_MEMORY_SIZE) are named as such, not as the body's size."""
    from example_app import create_app

    app = create_app({**app_config, "MAX_CONTENT_LENGTH": 50_000})
    _users(app)
    state = app.extensions["dicom_inbox"]
    client = app.test_client()
    try:
        big, _stream = _multipart(client, b"x" * 60_000, "DICOM-zip", PROJECT_ID="test_proj")
        assert big.status_code == 413
        assert "over the limit of 50000 bytes" in big.get_json()["message"]
        small = _pack(tmp_path / "s.zip", _session(tmp_path, files=1, rows=8)).read_bytes()
        field, _stream = _multipart(
            client, small, "DICOM-zip", PROJECT_ID="test_proj", note="y" * 40_000
        )
        assert field.status_code == 200, field.get_data(as_text=True)
        app.config["MAX_FORM_MEMORY_SIZE"] = 1_000
        long_field, _stream = _multipart(
            client, small, "DICOM-zip", PROJECT_ID="test_proj", note="y" * 2_000
        )
        assert long_field.status_code == 413
        message = long_field.get_json()["message"]
        assert "MAX_FORM_MEMORY_SIZE" in message and "50000" not in message
    finally:
        _cleanup(state)


def test_dicom_zip_refusals_leave_nothing_behind(
    client: FlaskClient, state: InboxState, tmp_path: Path
) -> None:
    zip_body = _pack(tmp_path / "u.zip", _session(tmp_path)).read_bytes()
    cases = [
        (b"plain text, not an archive" * 100, "admin", {"PROJECT_ID": "test_proj"}, 400),
        (zip_body, "collab", {"PROJECT_ID": "test_proj"}, 403),
        (zip_body, "admin", {"PROJECT_ID": "no_such_proj"}, 400),
        (zip_body, "admin", {"PROJECT_ID": "test_proj", "path": "/tmp/x.zip"}, 400),
        (zip_body, "admin", {"PROJECT_ID": "test_proj", "SUBJECT_ID": "bad label"}, 400),
    ]
    for body, user, params, code in cases:
        response = _upload(client, body, user, **params)
        assert response.status_code == code, (params, response.get_data(as_text=True))
    empty = client.post(
        "/data/services/import",
        query_string={"import-handler": "DICOM-zip", "PROJECT_ID": "test_proj"},
        headers=auth(),
    )
    assert empty.status_code == 400
    assert "request body" in empty.get_json()["message"]
    assert state.store.ids() == []
    assert _work_files(state) == {}


def test_dicom_zip_refused_after_the_upload_is_saved_removes_it(
    client: FlaskClient, state: InboxState, tmp_path: Path
) -> None:
    """A 409 found after the body was saved (the archive holds the label) removes the file."""
    (state.config.archive_path / "auto_proj" / "arc001" / "taken").mkdir(parents=True)
    body = _pack(tmp_path / "u.zip", _session(tmp_path)).read_bytes()
    response = _upload(client, body, PROJECT_ID="auto_proj", EXPT_LABEL="taken")
    assert response.status_code == 409, response.get_data(as_text=True)
    assert state.store.ids() == []
    assert _work_files(state) == {}


def _users(app: Flask) -> None:
    from example_app.host import SqliteProjects, SqliteUsers

    users, projects = SqliteUsers(app), SqliteProjects(app)
    for name, password in PASSWORDS.items():
        users.create(name, password, admin=(name == "admin"))
    projects.create("test_proj", "owner")
    projects.add_member("test_proj", "member", "member")


def _cleanup(state: InboxState) -> None:
    delete_app_keys(state)  # (its queue's name in rq:queues too, which a pattern misses)
    state.redis.close()


# -- over real HTTP: the synchronous answer, and the public xnat client --------------------


@pytest.fixture
def server_url(app: Flask, state: InboxState) -> Iterator[str]:
    """The app on a loopback HTTP server thread; DICOM-zip waits for its import here."""
    state.config = dataclasses.replace(state.config, upload_wait=60)
    with serve_http(app) as url:
        yield url


def _in_background(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except BaseException as exc:  # handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=run, name="archive-client", daemon=True)
    thread.start()
    return thread, out


def _work_until_done(app: Flask, state: InboxState, thread: threading.Thread) -> None:
    """Run the worker in this (main) thread, as RQ's timeouts need, while the client waits."""
    deadline = time.monotonic() + 60
    while thread.is_alive():
        assert time.monotonic() < deadline, "the upload never finished"
        if len(state.queue):
            run_worker(app)
        time.sleep(0.05)
    thread.join()


@pytest.mark.slow
def test_xnat_client_import_with_dicom_zip(
    app: Flask, server_url: str, state: InboxState, tmp_path: Path
) -> None:
    archive = _pack(tmp_path / "upload.zip", _session(tmp_path, files=4))
    connection = xnat.connect(
        server_url, user="admin", password=PASSWORDS["admin"], no_parse_model=True
    )
    try:
        thread, out = _in_background(
            lambda: connection.services.import_(
                str(archive),
                project="test_proj",
                subject="xs1",
                experiment="xe1",
                import_handler="DICOM-zip",
            )
        )
        _work_until_done(app, state, thread)
    finally:
        connection.disconnect()
    assert "error" not in out, out.get("error")
    session = out["result"]
    assert type(session).__name__ == "PrearchiveSession"
    [record] = state.store.list_requests()
    assert record.status == "Completed"
    assert record.handler == "DICOM-zip"
    assert session.uri == f"/data{record.resolution}"
    assert session.uri.startswith("/data/prearchive/projects/test_proj/")
    assert session.uri.endswith("/xe1")
    assert record.sessions[0]["subject"] == "xs1"
    assert len(_imported(state)) == 4
    assert _work_files(state) == {}


@pytest.mark.slow
def test_synchronous_answer_reports_a_failed_upload(
    app: Flask, server_url: str, state: InboxState, tmp_path: Path
) -> None:
    whole = _pack(tmp_path / "w.zip", _session(tmp_path, files=4, rows=64)).read_bytes()
    # Cut the local data but keep a valid end record: the member data is corrupt.
    body = whole[:200] + bytes(len(whole) - 400) + whole[-200:]
    thread, out = _in_background(
        lambda: requests.post(
            f"{server_url}/data/services/import",
            params={"import-handler": "DICOM-zip", "PROJECT_ID": "test_proj"},
            data=body,
            headers={"Content-Type": "application/zip"},
            auth=("admin", PASSWORDS["admin"]),
            timeout=60,
        )
    )
    _work_until_done(app, state, thread)
    response = out["result"]
    assert response.status_code == 400, response.text
    [record] = state.store.list_requests()
    assert record.status == "Failed"
    assert response.json()["message"].startswith(f"import request {record.id} failed: ")
    assert response.json()["errors"] == {"request": [f"/xapi/dicom/{record.id}"]}
    assert _work_files(state) == {}, "a failed upload is removed too"


def test_an_upload_waits_on_the_status_alone_and_reads_the_record_once_at_the_end(
    state: InboxState,
) -> None:
    """The DICOM-zip call waits for its import: a whole read every 0.2 s decoded all the
    errors so far each time (quadratic in a big archive's skipped members)."""
    from flask_dicom_inbox.handlers.dicom_zip import wait_for_answer

    store = state.store
    record = new_record(
        store, handler="DICOM-zip", session_path="/x/upload.zip", cleanup_after_import=True
    )
    store.add_errors(record.id, ({"path": f"{i}.txt", "reason": "no"} for i in range(1000)))

    # The "worker" writes through a client of its own: only the waiter's commands are recorded.
    other = RequestStore(redis.Redis(connection_pool=state.redis.connection_pool), store.prefix)

    def import_meanwhile() -> None:
        time.sleep(1.0)
        other.set_status(record.id, "Accepted")
        other.set_status(record.id, "Importing")
        other.set_result(record.id, sessions=[], resolution="/prearchive/projects/P/1/E")
        other.set_status(record.id, "Completed")

    worker = threading.Thread(target=import_meanwhile)
    worker.start()
    waiting = SimpleNamespace(store=store, config=SimpleNamespace(upload_wait=30))
    errors_key = f"{state.config.key_prefix}request:{record.id}:errors"
    with recorded_commands(state.redis) as commands:
        answer = wait_for_answer(waiting, record, "/xapi/dicom/1")  # type: ignore[arg-type]
    worker.join()
    assert answer == "/data/prearchive/projects/P/1/E"
    polls = [c for c in commands if c[0] == "HGET"]  # 0.2 s apart for about 1 s
    assert len(polls) >= 3, "it polled while the import ran"
    assert sum(1 for c in commands if c[1:] == (errors_key,)) == 1, "one whole read, at the end"
