"""The host's hooks: ``import_queued``, ``import_started``, ``import_finished`` (blinker).

Each must fire once per request, with the app as sender and the request record as it stands
(id, status), and a receiver that raises must never break the import it hears about.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app.demo import write_session
from flask_dicom_inbox import InboxState, import_finished, import_queued, import_started
from flask_dicom_inbox.requests import ImportRequest
from tests.conftest import run_worker, submit

SIGNALS = {"queued": import_queued, "started": import_started, "finished": import_finished}


@pytest.fixture
def heard(app: Flask) -> Iterator[list[tuple[str, Any, int, str]]]:
    """``(signal, sender, request id, status)`` of every signal sent for ``app``."""
    events: list[tuple[str, Any, int, str]] = []
    receivers = []
    for name, signal in SIGNALS.items():

        def receiver(sender: Any, *, request: ImportRequest, _name: str = name) -> None:
            assert isinstance(request, ImportRequest)
            events.append((_name, sender, request.id, request.status))

        signal.connect(receiver, sender=app)
        receivers.append((signal, receiver))
    yield events
    for signal, receiver in receivers:
        signal.disconnect(receiver, sender=app)


def _request_id(response: Any) -> int:
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])


def test_a_successful_import_sends_each_signal_once(
    app: Flask, client: FlaskClient, inbox: Path, heard: list[tuple[str, Any, int, str]]
) -> None:
    session = inbox / "test_proj" / "ok"
    write_session(session, series=1, files_per_series=3, rows=8, columns=8)
    rid = _request_id(submit(client, PROJECT_ID="test_proj", path=session))
    assert heard == [("queued", app, rid, "Queued")]
    run_worker(app)
    assert heard == [
        ("queued", app, rid, "Queued"),
        ("started", app, rid, "Importing"),
        ("finished", app, rid, "Completed"),
    ]


def test_a_failed_import_sends_finished_with_status_failed(
    app: Flask, client: FlaskClient, inbox: Path, heard: list[tuple[str, Any, int, str]]
) -> None:
    session = inbox / "test_proj" / "junk"
    session.mkdir()
    (session / "notes.txt").write_text("not DICOM")
    rid = _request_id(submit(client, PROJECT_ID="test_proj", path=session))
    run_worker(app)
    assert heard == [
        ("queued", app, rid, "Queued"),
        ("started", app, rid, "Importing"),
        ("finished", app, rid, "Failed"),
    ]


def test_signals_for_another_app_are_not_heard(
    app: Flask, client: FlaskClient, inbox: Path, heard: list[tuple[str, Any, int, str]]
) -> None:
    other: list[Any] = []

    def elsewhere(sender: Any, **_kw: Any) -> None:
        other.append(sender)

    import_queued.connect(elsewhere, sender=object())
    try:
        session = inbox / "test_proj" / "ok"
        write_session(session, series=1, files_per_series=1, rows=8, columns=8)
        _request_id(submit(client, PROJECT_ID="test_proj", path=session))
    finally:
        import_queued.disconnect(elsewhere)
    assert other == []
    assert [name for name, *_ in heard] == ["queued"]


def test_a_raising_receiver_breaks_neither_the_import_nor_other_receivers(
    app: Flask,
    client: FlaskClient,
    inbox: Path,
    state: InboxState,
    heard: list[tuple[str, Any, int, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(sender: Any, **_kw: Any) -> None:
        raise RuntimeError("the host's receiver is broken")

    for signal in SIGNALS.values():
        signal.connect(broken, sender=app)
    try:
        session = inbox / "test_proj" / "ok"
        generated = write_session(session, series=1, files_per_series=3, rows=8, columns=8)
        rid = _request_id(submit(client, PROJECT_ID="test_proj", path=session))
        run_worker(app)
    finally:
        for signal in SIGNALS.values():
            signal.disconnect(broken, sender=app)
    record = state.store.get(rid)
    assert record is not None
    assert record.status == "Completed", record.message
    written = sorted(p.name for p in state.config.prearchive_path.rglob("*.dcm"))
    assert written == sorted(p.name for p in generated.files)
    assert [(name, status) for name, _app, _rid, status in heard] == [
        ("queued", "Queued"),
        ("started", "Importing"),
        ("finished", "Completed"),
    ]
    logged = [r for r in caplog.records if "the host's receiver is broken" in r.getMessage()]
    logged += [
        r
        for r in caplog.records
        if r.exc_info and "the host's receiver is broken" in str(r.exc_info[1])
    ]
    assert len({id(r) for r in logged}) == 3, "each failure is logged"


def test_a_signal_nobody_hears_does_not_read_the_record(
    app: Flask,
    state: InboxState,
    client: FlaskClient,
    inbox: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each signal re-reads the request for its receivers; with none, that read is skipped
    (three a request, on the web and the worker side)."""
    session = inbox / "test_proj" / "unheard"
    write_session(session, series=1, files_per_series=1, rows=8, columns=8)
    rid = _request_id(submit(client, PROJECT_ID="test_proj", path=session))
    record = state.store.get(rid)
    assert record is not None
    reads: list[int] = []
    real_get = state.store.get
    monkeypatch.setattr(state.store, "get", lambda i: reads.append(i) or real_get(i))
    for name in ("import_queued", "import_started", "import_finished"):
        state.signal(name, record)
    assert reads == []
    heard: list[str] = []

    def receiver(sender: Any, *, request: ImportRequest) -> None:
        heard.append(request.status)

    import_started.connect(receiver, sender=app)
    try:
        state.store.set_status(rid, "Accepted", "a worker took the request")
        state.signal("import_started", record)  # a copy from before the change
    finally:
        import_started.disconnect(receiver, sender=app)
    assert reads == [rid] and heard == ["Accepted"]
