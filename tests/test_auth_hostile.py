"""Hostile authentication and authorization (issue 4).

test_submit.py already covers: no header (401 + challenge), wrong password, unknown user, empty
user or password, a collaborator submitting (403), a non-admin reading another's request (404)
and the lists showing only one's own. Here: malformed headers, timing, cookies, other projects'
users, and that a 404 for another's request cannot be told from a missing one.
"""

from __future__ import annotations

import base64
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from example_app.demo import write_session
from flask_dicom_inbox import InboxState

from .conftest import auth, submit, tree

URL = "/data/services/import"


@pytest.fixture
def session(inbox: Path) -> Path:
    folder = inbox / "test_proj" / "s"
    write_session(folder, series=1, files_per_series=1)
    return folder


def _query(session: Path) -> dict[str, str]:
    return {"import-handler": "inbox", "PROJECT_ID": "test_proj", "path": str(session)}


def _unchanged(state: InboxState) -> tuple[Any, ...]:
    cfg = state.config
    return (tree(cfg.prearchive_path), tree(cfg.archive_path), state.store.ids(), len(state.queue))


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic"},
        {"Authorization": "Basic !!!not-base64!!!"},
        {"Authorization": "Bearer admin-pw"},
        {"Authorization": "admin:admin-pw"},
        _basic(b"admin"),  # no colon
        _basic(b":"),
        _basic(b"admin:admin-pw\x00"),
        _basic(b"admin\x00:admin-pw"),
        _basic(b"' OR 1=1 --:x"),
        _basic(b"admin' --:anything"),
        _basic(b"ADMIN:admin-pw"),  # user names are case-sensitive
        _basic(b"admin:" + b"x" * 100_000),
        _basic("\u00e4dmin:\u00fc".encode()),
        _basic(b"\xff\xfe:\xff"),
    ],
    ids=lambda h: repr(h["Authorization"][:40]),
)
def test_malformed_or_forged_credentials_are_401(
    client: FlaskClient, state: InboxState, session: Path, headers: dict[str, str]
) -> None:
    before = _unchanged(state)
    response = client.post(URL, query_string=_query(session), headers=headers)
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.get_json()["code"] == 401
    assert _unchanged(state) == before


def test_colon_in_password_splits_at_the_first_colon(
    app: Any, client: FlaskClient, session: Path
) -> None:
    from example_app.host import SqliteUsers

    SqliteUsers(app).create("colon", "pa:ss:word")
    response = client.post(URL, query_string=_query(session), headers=_basic(b"colon:pa:ss:word"))
    assert response.status_code == 403, "authenticated, but not a member of test_proj"


def test_forged_or_stale_session_cookie_is_401(
    client: FlaskClient, state: InboxState, session: Path
) -> None:
    before = _unchanged(state)
    for token in ("forged", "0" * 64, "../../etc/passwd", "x" * 3000):
        client.set_cookie("JSESSIONID", token)
        response = client.post(URL, query_string=_query(session))
        assert response.status_code == 401
        assert "session has expired" in response.get_json()["message"]
    # A valid cookie does not rescue a bad basic-auth header.
    token = client.put(
        "/data/services/auth", data={"username": "admin", "password": "admin-pw"}
    ).get_data(as_text=True)
    client.set_cookie("JSESSIONID", token)
    response = client.post(URL, query_string=_query(session), headers=auth("admin", "wrong"))
    assert response.status_code == 401
    assert _unchanged(state) == before


def test_users_of_another_project_are_403_both_ways(
    client: FlaskClient, state: InboxState, inbox: Path, session: Path
) -> None:
    before = _unchanged(state)
    # outsider edits other_proj only: neither the destination nor the folder's project.
    response = submit(client, user="outsider", PROJECT_ID="test_proj", path=str(session))
    assert response.status_code == 403
    assert "cannot edit the destination project 'test_proj'" in response.get_json()["message"]
    # member edits test_proj: may not import into other_proj, nor from other_proj's folder.
    response = submit(client, user="member", PROJECT_ID="other_proj", path=str(session))
    assert response.status_code == 403
    theirs = inbox / "other_proj" / "t"
    write_session(theirs, series=1, files_per_series=1, seed=2)
    response = submit(client, user="member", PROJECT_ID="test_proj", path=str(theirs))
    assert response.status_code == 403
    assert "whose inbox folder holds the path" in response.get_json()["message"]
    assert _unchanged(state) == before


def test_collaborator_reads_nothing_it_did_not_submit(
    client: FlaskClient, state: InboxState, session: Path
) -> None:
    rid = submit(client, user="member", PROJECT_ID="test_proj", path=str(session))
    url = rid.get_data(as_text=True).strip()
    assert client.get(url, headers=auth("collab")).status_code == 404
    assert client.get("/xapi/dicom/list/all", headers=auth("collab")).get_json() == []
    assert client.get("/xapi/dicom/list/active", headers=auth("collab")).get_json() == []
    response = submit(client, user="collab", PROJECT_ID="test_proj", path=str(session))
    assert response.status_code == 403


def test_another_users_request_looks_exactly_like_a_missing_one(
    client: FlaskClient, session: Path
) -> None:
    url = submit(client, user="member", PROJECT_ID="test_proj", path=str(session))
    rid = int(url.get_data(as_text=True).strip().rsplit("/", 1)[1])
    hidden = client.get(f"/xapi/dicom/{rid}", headers=auth("owner"))
    missing = client.get(f"/xapi/dicom/{rid + 1000}", headers=auth("owner"))
    assert hidden.status_code == missing.status_code == 404
    hidden_body, missing_body = hidden.get_json(), missing.get_json()
    assert hidden_body["message"].replace(str(rid), "N") == missing_body["message"].replace(
        str(rid + 1000), "N"
    )
    assert hidden_body["errors"] == missing_body["errors"]
    assert client.get(f"/xapi/dicom/{rid}", headers=auth("admin")).status_code == 200


def _median_seconds(client: FlaskClient, headers: dict[str, str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = client.get("/xapi/dicom/list/all", headers=headers)
        times.append(time.perf_counter() - start)
        assert response.status_code == 401
    return statistics.median(times)


def test_unknown_user_costs_as_long_as_a_wrong_password(client: FlaskClient) -> None:
    """Medians of 15 attempts each, interleaved, within 0.5x-2x (the machine is noisy)."""
    known, unknown = [], []
    for _ in range(3):
        known.append(_median_seconds(client, auth("member", "wrong-password"), 5))
        unknown.append(_median_seconds(client, auth("no-such-user", "wrong-password"), 5))
    k, u = statistics.median(known), statistics.median(unknown)
    assert k > 0.005, f"a password check should cost a hash ({k * 1000:.1f} ms)"
    assert 0.5 <= u / k <= 2.0, (
        f"unknown user {u * 1000:.1f} ms vs wrong password {k * 1000:.1f} ms"
    )
