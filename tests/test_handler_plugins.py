"""Third-party import handlers: one declared by a package in the ``flask_dicom_inbox.handlers``
entry-point group, one registered by the host; both import files end to end, and
``flask dicom-inbox handlers`` lists them with where they came from."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.handlers.inbox import InboxHandler
from flask_dicom_inbox.registry import ENTRY_POINT_GROUP

from .conftest import run_worker, submit

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

PACKAGE = Path(__file__).parent / "handler_pkg"
MODULE = "dicom_inbox_test_handlers"


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make tests/handler_pkg an installed distribution for this test only.

    Its ``.dist-info`` (METADATA and entry_points.txt, the entry points read from the
    package's own pyproject.toml) goes into a folder on ``sys.path``, where
    ``importlib.metadata`` finds it; the environment itself is left as it was. Listed before
    ``app`` in a test's arguments, so the app's extension loads the entry points.
    """
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    site = tmp_path / "site"
    info = site / f"{MODULE}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = [f"[{ENTRY_POINT_GROUP}]"]
    lines += [f"{k} = {v}" for k, v in project["entry-points"][ENTRY_POINT_GROUP].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(PACKAGE))
    monkeypatch.syspath_prepend(str(site))
    module = __import__(MODULE)
    module.CALLS.clear()
    yield module
    for name in [m for m in sys.modules if m == MODULE or m.startswith(f"{MODULE}.")]:
        del sys.modules[name]


def _import_folder(client: FlaskClient, inbox: Path, handler: str, label: str) -> Any:
    folder = inbox / "test_proj" / label
    write_session(folder, series=1, files_per_series=2, rows=8, columns=8)
    return submit(
        client,
        **{"import-handler": handler, "PROJECT_ID": "test_proj", "EXPT_LABEL": label},
        path=folder,
    )


def _finished(app: Flask, state: InboxState, response: Any) -> Any:
    assert response.status_code == 200, response.get_data(as_text=True)
    rid = int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])
    run_worker(app)
    record = state.store.get(rid)
    assert record is not None
    return record


def test_entry_point_handler_imports_end_to_end(
    plugin_site: Any, app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    assert "test-entry" in state.registry
    assert type(state.registry.get("test-entry")) is plugin_site.EntryHandler
    assert state.registry.source_of("test-entry") == f"entry point {MODULE}:EntryHandler"

    record = _finished(app, state, _import_folder(client, inbox, "test-entry", "ep1"))
    assert record.status == "Completed", (record.message, record.errors)
    assert record.handler == "test-entry"
    files = list(state.config.prearchive_path.glob("test_proj/*/ep1/SCANS/*/DICOM/*"))
    assert len(files) == 2
    assert [c[:2] for c in plugin_site.CALLS] == [
        ("entry", "prepare"),
        ("entry", "open_source"),
        ("entry", "finish"),
    ]
    assert plugin_site.CALLS[-1] == ("entry", "finish", True)


def test_host_registered_handler_from_the_package_imports_end_to_end(
    plugin_site: Any, app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    plugin_site.register(state.extension)  # DicomInbox.register_handler, the public call
    assert state.registry.source_of("test-host") == "host"
    record = _finished(app, state, _import_folder(client, inbox, "test-host", "host1"))
    assert record.status == "Completed", (record.message, record.errors)
    assert len(list(state.config.prearchive_path.glob("test_proj/*/host1/SCANS/*/DICOM/*"))) == 2
    assert ("host", "finish", True) in plugin_site.CALLS
    assert not any(tag == "entry" for tag, *_ in plugin_site.CALLS)


def test_broken_entry_points_are_logged_and_skipped(
    caplog: pytest.LogCaptureFixture, plugin_site: Any, tmp_path: Path, redis_url: str
) -> None:
    from example_app import create_app

    with caplog.at_level(logging.ERROR, logger="flask_dicom_inbox"):
        app = create_app(
            {
                "TESTING": True,
                "DATABASE": str(tmp_path / "db.sqlite"),
                "DICOM_INBOX_PATH": str(tmp_path / "inbox"),
                "DICOM_INBOX_PREARCHIVE_PATH": str(tmp_path / "pre"),
                "DICOM_INBOX_ARCHIVE_PATH": str(tmp_path / "arc"),
                "DICOM_INBOX_REDIS_URL": redis_url,
            }
        )
    registry = app.extensions["dicom_inbox"].registry
    assert set(registry.broken) == {"test-missing", "test-not-a-handler", "inbox"}
    assert "ModuleNotFoundError" in registry.broken["test-missing"]
    assert "TypeError" in registry.broken["test-not-a-handler"]
    assert "already registered" in registry.broken["inbox"]
    # The built-in keeps its name; the good entry point is there.
    assert isinstance(registry.get("inbox"), InboxHandler)
    assert "test-entry" in registry
    logged = " ".join(r.getMessage() for r in caplog.records)
    for name in ("test-missing", "test-not-a-handler", "inbox"):
        assert f"entry point {name!r} skipped" in logged
    app.extensions["dicom_inbox"].redis.close()


def test_cli_lists_every_handler_with_its_source(plugin_site: Any, app: Flask) -> None:
    plugin_site.register(app.extensions["dicom_inbox"].extension)
    result = app.test_cli_runner().invoke(args=["dicom-inbox", "handlers"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.output.splitlines()]
    listed = {row[0]: row[1:] for row in rows if row[1] != "BROKEN"}
    assert listed == {
        "DICOM-zip": ["flask_dicom_inbox.handlers.dicom_zip.DicomZipHandler", "built-in"],
        "inbox": ["flask_dicom_inbox.handlers.inbox.InboxHandler", "built-in"],
        "test-entry": [f"{MODULE}.EntryHandler", f"entry point {MODULE}:EntryHandler"],
        "test-host": [f"{MODULE}.HostHandler", "host"],
    }
    broken = {row[0] for row in rows if row[1] == "BROKEN"}
    assert broken == {"test-missing", "test-not-a-handler", "inbox"}


def test_without_the_package_no_plugin_is_registered(state: InboxState) -> None:
    assert list(state.registry) == ["DICOM-zip", "inbox"]
    assert state.registry.broken == {}
