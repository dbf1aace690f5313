"""registry.py: named import handlers; unknown names fail loudly with the list of known ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app.host import SqliteProjects, SqliteUsers
from flask_dicom_inbox import BadRequest, DicomInbox, HandlerRegistry, InboxState
from flask_dicom_inbox.handlers.inbox import InboxHandler
from flask_dicom_inbox.registry import ImportHandler, PreparedImport, Submission

from .conftest import submit


class _Handler:
    """A minimal host handler: refuses every submission with a message of its own."""

    def __init__(self, tag: str = "host") -> None:
        self.tag = tag
        self.prepared: list[Submission] = []

    def prepare(self, submission: Submission) -> PreparedImport:
        self.prepared.append(submission)
        raise BadRequest(f"refused by the {self.tag} handler")

    def open_source(self, request: Any, config: Any) -> contextlib.AbstractContextManager[Path]:
        @contextlib.contextmanager
        def _source() -> Iterator[Path]:
            yield Path(request.session_path)

        return _source()


class _OnlyPrepare:
    def prepare(self, submission: Submission) -> PreparedImport:
        return PreparedImport(session_path="/x")


def _registry(*names: str) -> HandlerRegistry:
    registry = HandlerRegistry()
    for name in names:
        registry.register(name, _Handler(name))
    return registry


@pytest.mark.parametrize("name", ["nope", "INBOX", "inbox "])
def test_unknown_handler_is_a_400_naming_every_registered_handler(name: str) -> None:
    registry = _registry("inbox", "zip_upload", "gradual")
    with pytest.raises(BadRequest) as caught:
        registry.get(name)
    assert caught.value.status_code == 400
    assert caught.value.to_dict()["code"] == 400
    for known in ("inbox", "zip_upload", "gradual"):
        assert known in caught.value.message
    assert "import-handler" in caught.value.errors


@pytest.mark.parametrize("name", [None, ""])
def test_missing_handler_is_a_400_naming_every_registered_handler(name: str | None) -> None:
    registry = _registry("inbox", "zip_upload")
    with pytest.raises(BadRequest) as caught:
        registry.get(name)
    assert caught.value.status_code == 400
    assert "required" in caught.value.message
    assert "inbox" in caught.value.message
    assert "zip_upload" in caught.value.message


def test_get_returns_the_registered_handler() -> None:
    registry = HandlerRegistry()
    handler = _Handler()
    registry.register("mine", handler)
    assert registry.get("mine") is handler
    assert "mine" in registry
    assert list(registry) == ["mine"]


def test_duplicate_registration_is_refused() -> None:
    registry = HandlerRegistry()
    first = _Handler("first")
    registry.register("mine", first)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("mine", _Handler("second"))
    assert registry.get("mine") is first


def test_duplicate_registration_with_replace_replaces() -> None:
    registry = HandlerRegistry()
    registry.register("mine", _Handler("first"))
    second = _Handler("second")
    registry.register("mine", second, replace=True)
    assert registry.get("mine") is second
    assert list(registry) == ["mine"]


@pytest.mark.parametrize("bad", [object(), _OnlyPrepare(), "inbox", None])
def test_object_lacking_prepare_or_open_source_is_refused(bad: Any) -> None:
    registry = HandlerRegistry()
    with pytest.raises(TypeError):
        registry.register("mine", bad)
    assert "mine" not in registry


@pytest.mark.parametrize("name", ["", "a b", "tab\there"])
def test_invalid_handler_names_are_refused(name: str) -> None:
    registry = HandlerRegistry()
    with pytest.raises(ValueError):
        registry.register(name, _Handler())


def test_empty_registry_says_none() -> None:
    with pytest.raises(BadRequest, match=r"\(none\)"):
        HandlerRegistry().get("inbox")


def test_inbox_handler_satisfies_the_protocol() -> None:
    assert isinstance(InboxHandler(), ImportHandler)


def test_dicom_inbox_registers_inbox_through_register_handler(app: Flask) -> None:
    calls: list[tuple[str, object]] = []

    class _Recording(DicomInbox):
        def register_handler(
            self, name: str, handler: ImportHandler, *, replace: bool = False
        ) -> None:
            calls.append((name, handler))
            super().register_handler(name, handler, replace=replace)

    ext = _Recording(users=SqliteUsers(app), projects=SqliteProjects(app))
    assert [name for name, _ in calls] == ["inbox", "DICOM-zip"]
    assert isinstance(calls[0][1], InboxHandler)
    assert ext.registry.get("inbox") is calls[0][1]


def test_app_registry_holds_inbox(state: InboxState) -> None:
    assert "inbox" in state.registry
    assert isinstance(state.registry.get("inbox"), InboxHandler)
    assert state.registry is state.extension.registry


def test_host_registers_a_handler_on_the_app_extension(state: InboxState) -> None:
    handler = _Handler()
    state.extension.register_handler("host_upload", handler)
    assert state.registry.get("host_upload") is handler
    assert list(state.registry) == ["DICOM-zip", "host_upload", "inbox"]
    with pytest.raises(ValueError):
        state.extension.register_handler("inbox", _Handler())
    assert isinstance(state.registry.get("inbox"), InboxHandler)


def test_host_handler_is_used_by_the_import_endpoint(
    state: InboxState, client: FlaskClient, inbox: Path
) -> None:
    handler = _Handler("host")
    state.extension.register_handler("host_upload", handler)
    folder = inbox / "test_proj" / "s1"
    folder.mkdir()
    response = submit(
        client, **{"import-handler": "host_upload", "PROJECT_ID": "test_proj", "path": folder}
    )
    assert response.status_code == 400
    assert response.get_json()["message"] == "refused by the host handler"
    assert len(handler.prepared) == 1
    assert handler.prepared[0].params.project_id == "test_proj"
    assert state.store.ids() == []


def test_import_endpoint_names_registered_handlers_for_unknown_name(
    state: InboxState, client: FlaskClient, inbox: Path
) -> None:
    state.extension.register_handler("host_upload", _Handler())
    folder = inbox / "test_proj" / "s1"
    folder.mkdir()
    response = submit(
        client, **{"import-handler": "nope", "PROJECT_ID": "test_proj", "path": folder}
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == 400
    assert "inbox" in body["message"]
    assert "host_upload" in body["message"]
    assert state.store.ids() == []
