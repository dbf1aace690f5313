"""Every refusal of CONTRACT section 1, each with its own message and nothing changed on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app.demo import write_session
from flask_dicom_inbox import InboxState

from .conftest import auth, run_worker, submit, tree


@pytest.fixture
def session(inbox: Path) -> Path:
    folder = inbox / "test_proj" / "b" / "c"
    write_session(folder, series=1, files_per_series=2)
    return folder


def _snapshot(state: InboxState) -> dict[str, Any]:
    """Every file of inbox, prearchive and archive, and the number of records."""
    cfg = state.config
    return {
        "inbox": tree(cfg.inbox_path),
        "prearchive": tree(cfg.prearchive_path),
        "archive": tree(cfg.archive_path),
        "records": state.store.ids(),
        "queued": len(state.queue),
    }


def _refused(
    client: FlaskClient,
    state: InboxState,
    code: int,
    *,
    user: str = "admin",
    password: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    before = _snapshot(state)
    response = submit(client, user=user, password=password, **params)
    assert response.status_code == code, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code
    assert {"code", "status", "message", "errors"} <= body.keys()
    assert body["message"]
    assert _snapshot(state) == before, "a refused call must change nothing"
    return body  # type: ignore[no-any-return]


def test_no_credentials_is_401_with_challenge(client: FlaskClient, session: Path) -> None:
    response = client.post(
        "/data/services/import",
        query_string={"import-handler": "inbox", "PROJECT_ID": "test_proj", "path": str(session)},
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.get_json()["message"].startswith("authentication required")


@pytest.mark.parametrize(
    ("user", "password"),
    [("admin", "wrong"), ("nobody", "whatever"), ("admin", ""), ("", "admin-pw")],
)
def test_bad_credentials_are_401(
    client: FlaskClient, state: InboxState, session: Path, user: str, password: str
) -> None:
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    before = _snapshot(state)
    response = client.post(
        "/data/services/import",
        query_string={"import-handler": "inbox", "PROJECT_ID": "test_proj", "path": str(session)},
        headers={"Authorization": f"Basic {token}"},
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert _snapshot(state) == before


def test_403_without_edit_right_on_destination_project(
    client: FlaskClient, state: InboxState, session: Path
) -> None:
    body = _refused(client, state, 403, user="collab", PROJECT_ID="test_proj", path=str(session))
    assert "cannot edit the destination project 'test_proj'" in body["message"]
    assert "PROJECT_ID" in body["errors"]


def test_403_without_edit_right_on_the_inbox_folder_project(
    client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    # outsider owns other_proj (destination) but cannot edit test_proj, whose folder holds the path.
    folder = inbox / "test_proj" / "theirs"
    write_session(folder, series=1, files_per_series=1)
    body = _refused(client, state, 403, user="outsider", PROJECT_ID="other_proj", path=str(folder))
    assert "whose inbox folder holds the path" in body["message"]
    assert "path" in body["errors"]


def test_member_of_both_projects_may_import_across(
    client: FlaskClient, app: Flask, inbox: Path
) -> None:
    folder = inbox / "test_proj" / "across"
    write_session(folder, series=1, files_per_series=1)
    response = submit(
        client, user="owner", PROJECT_ID="auto_proj", EXPT_LABEL="x1", path=str(folder)
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"PROJECT_ID": "test_proj"}, "the path parameter is required"),
        ({"PROJECT_ID": "test_proj", "path": "relative/b/c"}, "path must be absolute"),
        (
            {"PROJECT_ID": "test_proj", "path": "{inbox}/../outside"},
            "is not inside a project folder",
        ),
        (
            {"PROJECT_ID": "test_proj", "path": "{inbox}2/test_proj/b/c"},
            "is not inside a project folder",
        ),
        ({"PROJECT_ID": "test_proj", "path": "{inbox}"}, "is not inside a project folder"),
        ({"PROJECT_ID": "test_proj", "path": "{inbox}/test_proj/missing"}, "does not exist"),
        (
            {"PROJECT_ID": "test_proj", "path": "{inbox}/test_proj/b/c/series001/IM001_00001.dcm"},
            "neither a folder nor a supported archive file",
        ),
        ({"PROJECT_ID": "test_proj", "path": "{inbox}/test_proj/empty"}, "holds no files"),
        (
            {"PROJECT_ID": "test_proj", "path": "{inbox}/nosuchproject/x"},
            "does not belong to any project",
        ),
        ({"PROJECT_ID": "test_proj", "path": "{session}", "SUBJECT_ID": "bad/label"}, "SUBJECT_ID"),
        ({"PROJECT_ID": "test_proj", "path": "{session}", "EXPT_LABEL": "x" * 65}, "EXPT_LABEL"),
        ({"PROJECT_ID": "test_proj", "path": "{session}", "EXPT_LABEL": "has space"}, "EXPT_LABEL"),
        ({"PROJECT_ID": "nosuch", "path": "{session}"}, "no project with the ID 'nosuch'"),
        ({"path": "{session}"}, "PROJECT_ID"),
        (
            {"PROJECT_ID": "test_proj", "path": "{session}", "import-handler": "bogus"},
            "unknown import-handler 'bogus'; registered handlers: DICOM-zip, inbox",
        ),
        (
            {"PROJECT_ID": "test_proj", "path": "{session}", "import-handler": ""},
            "the import-handler parameter is required",
        ),
        (
            {"PROJECT_ID": "test_proj", "path": "{session}", "cleanupAfterImport": "maybe"},
            "cleanupAfterImport",
        ),
        ({"PROJECT_ID": "test_proj", "path": "{session}", "overwrite": "always"}, "overwrite"),
        (
            {"PROJECT_ID": "test_proj", "path": "{session}", "dest": "/elsewhere"},
            "dest must be /prearchive or /archive",
        ),
        ({"PROJECT_ID": "test_proj", "path": "{session}\x00x"}, "NUL byte"),
    ],
)
def test_400_for_each_cause(
    client: FlaskClient,
    state: InboxState,
    inbox: Path,
    session: Path,
    params: dict[str, str],
    fragment: str,
) -> None:
    (inbox / "test_proj" / "empty").mkdir()
    filled = {k: v.format(inbox=inbox, session=session) for k, v in params.items()}
    body = _refused(client, state, 400, **filled)
    assert fragment in body["message"], body


def test_400_for_a_symlink_pointing_out_of_the_inbox(
    client: FlaskClient, state: InboxState, inbox: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write_session(outside, series=1, files_per_series=1)
    os.symlink(outside, inbox / "test_proj" / "link")
    body = _refused(
        client, state, 400, PROJECT_ID="test_proj", path=str(inbox / "test_proj" / "link")
    )
    assert "is not inside a project folder" in body["message"]


def test_409_while_an_unfinished_request_covers_the_folder(
    client: FlaskClient, app: Flask, state: InboxState, session: Path
) -> None:
    first = submit(client, PROJECT_ID="test_proj", EXPT_LABEL="one", path=str(session))
    assert first.status_code == 200
    body = _refused(client, state, 409, PROJECT_ID="test_proj", EXPT_LABEL="two", path=str(session))
    assert "already importing this folder" in body["message"]
    inner = _refused(client, state, 409, PROJECT_ID="test_proj", path=str(session / "series001"))
    assert "overlaps" in inner["message"] or "already importing" in inner["message"]
    run_worker(app)
    again = submit(client, PROJECT_ID="test_proj", EXPT_LABEL="two", path=str(session))
    assert again.status_code == 200, "a finished request no longer blocks the folder"


def test_409_when_the_archive_holds_the_label(
    client: FlaskClient, state: InboxState, session: Path
) -> None:
    (state.config.archive_path / "auto_proj" / "arc001" / "taken").mkdir(parents=True)
    body = _refused(
        client,
        state,
        409,
        user="owner",
        PROJECT_ID="auto_proj",
        EXPT_LABEL="taken",
        path=str(session),
    )
    assert "already holds session 'taken'" in body["message"]


def test_413_over_the_configured_limits(
    app: Flask, client: FlaskClient, state: InboxState, session: Path
) -> None:
    app.config["DICOM_INBOX_MAX_FILES"] = 1
    from flask_dicom_inbox.config import InboxConfig

    state.config = InboxConfig.from_app(app)
    body = _refused(client, state, 413, PROJECT_ID="test_proj", path=str(session))
    assert "more than the limit of 1 files" in body["message"]
    app.config["DICOM_INBOX_MAX_FILES"] = 0
    app.config["DICOM_INBOX_MAX_BYTES"] = 100
    state.config = InboxConfig.from_app(app)
    body = _refused(client, state, 413, PROJECT_ID="test_proj", path=str(session))
    assert "more than the limit of 100 bytes" in body["message"]


def test_the_count_takes_regular_files_only_and_sizes_them_only_under_a_byte_limit(
    tmp_path: Path,
) -> None:
    from flask_dicom_inbox.errors import PayloadTooLarge
    from flask_dicom_inbox.handlers.inbox import count_files

    folder = tmp_path / "session"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "empty").mkdir()
    for path, size in [("one.dcm", 10), ("a/two.dcm", 20), ("a/b/three", 30), ("a/b/.four", 40)]:
        (folder / path).write_bytes(b"x" * size)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "not-ours.dcm").write_bytes(b"y" * 1000)
    (folder / "a" / "linked-folder").symlink_to(outside)
    (folder / "a" / "linked-file.dcm").symlink_to(outside / "not-ours.dcm")
    os.mkfifo(folder / "a" / "pipe")
    assert count_files(folder, max_files=0, max_bytes=0) == (4, None)
    assert count_files(folder, max_files=4, max_bytes=100) == (4, 100)
    with pytest.raises(PayloadTooLarge, match="more than the limit of 99 bytes"):
        count_files(folder, max_files=0, max_bytes=99)
    with pytest.raises(PayloadTooLarge, match="more than the limit of 3 files"):
        count_files(folder, max_files=3, max_bytes=0)


def test_answers_formats_and_aliases(client: FlaskClient, session: Path, inbox: Path) -> None:
    txt = submit(client, PROJECT_ID="test_proj", EXPT_LABEL="f1", path=str(session), format="txt")
    assert txt.status_code == 200
    assert txt.get_data(as_text=True).startswith("/xapi/dicom/")
    assert not txt.get_data(as_text=True).endswith("\r\n")
    other = inbox / "test_proj" / "json"
    write_session(other, series=1, files_per_series=1)
    as_json = submit(
        client, PROJECT_ID="test_proj", session="legacy", path=str(other), format="json"
    )
    assert as_json.status_code == 200
    body = as_json.get_json()
    assert body["status"] == "Queued"
    assert body["parameters"]["session"] == "legacy"
    third = inbox / "test_proj" / "rest"
    write_session(third, series=1, files_per_series=1)
    rest = client.post(
        "/REST/services/import",
        data={"import-handler": "inbox", "PROJECT_ID": "test_proj", "path": str(third)},
        headers=auth(),
    )
    assert rest.status_code == 200, "the /REST alias with a form body works"


def test_prevent_anon_needs_the_host_permission(
    client: FlaskClient, state: InboxState, session: Path
) -> None:
    body = _refused(
        client,
        state,
        403,
        user="member",
        PROJECT_ID="test_proj",
        prevent_anon="true",
        path=str(session),
    )
    assert "without anonymization" in body["message"]
    allowed = submit(
        client, user="owner", PROJECT_ID="test_proj", prevent_anon="true", path=str(session)
    )
    assert allowed.status_code == 200


def test_requests_are_private_to_their_user_and_admins(client: FlaskClient, session: Path) -> None:
    rid = (
        submit(client, user="member", PROJECT_ID="test_proj", path=str(session))
        .get_data(as_text=True)
        .strip()
    )
    assert client.get(rid, headers=auth("member")).status_code == 200
    hidden = client.get(rid, headers=auth("owner"))
    assert hidden.status_code == 404
    assert hidden.get_json()["message"].startswith("no import request")
    assert client.get(rid, headers=auth("admin")).status_code == 200
    assert client.get("/xapi/dicom/999999", headers=auth("admin")).status_code == 404
    assert [
        r["username"] for r in client.get("/xapi/dicom/list/all", headers=auth("owner")).get_json()
    ] == []
    mine = client.get("/xapi/dicom/list/active", headers=auth("member")).get_json()
    assert [r["id"] for r in mine] == [int(rid.rsplit("/", 1)[1])]
    everyone = client.get("/xapi/dicom/list/all", headers=auth("admin")).get_json()
    assert [r["username"] for r in everyone] == ["member"]
    assert client.get("/xapi/dicom/list/all").status_code == 401


def test_lists_are_newest_first_and_active_drops_finished(
    client: FlaskClient, app: Flask, inbox: Path
) -> None:
    ids = []
    for n in range(3):
        folder = inbox / "test_proj" / f"s{n}"
        write_session(folder, series=1, files_per_series=1, seed=n)
        ids.append(
            int(
                submit(client, PROJECT_ID="test_proj", path=str(folder))
                .get_data(as_text=True)
                .strip()
                .rsplit("/", 1)[1]
            )
        )
    listed = [r["id"] for r in client.get("/xapi/dicom/list/all", headers=auth()).get_json()]
    assert listed == sorted(ids, reverse=True)
    assert len(client.get("/xapi/dicom/list/active", headers=auth()).get_json()) == 3
    run_worker(app)
    assert client.get("/xapi/dicom/list/active", headers=auth()).get_json() == []
    statuses = {r["status"] for r in client.get("/xapi/dicom/list/all", headers=auth()).get_json()}
    assert statuses == {"Completed"}
