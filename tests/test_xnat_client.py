"""The public ``xnat`` client (xnatpy 0.8.1) against the example app over real HTTP, and the
server-side sessions behind its ``JSESSIONID`` login."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import xnat
from flask import Flask, Response
from flask import request as flask_request
from flask.testing import FlaskClient

from example_app.demo import write_session
from flask_dicom_inbox import InboxState

from .conftest import PASSWORDS, auth, run_worker, serve_http, submit

# The client's own calls during connect / import / status / disconnect, and nothing else.
CLIENT_CALLS = {
    ("GET", "/"),
    ("PUT", "/data/services/auth"),
    ("GET", "/data/auth"),
    ("GET", "/data/JSESSION"),
    ("POST", "/data/services/import"),
    ("GET", "/xapi/dicom/{id}"),
    ("DELETE", "/data/JSESSION"),
}


@pytest.fixture
def calls(app: Flask) -> list[tuple[str, str, int, bool]]:
    """Every request the app answers: (method, path, status, sent an Authorization header)."""
    seen: list[tuple[str, str, int, bool]] = []

    @app.after_request
    def _record(response: Response) -> Response:
        seen.append(
            (
                flask_request.method,
                flask_request.path,
                response.status_code,
                "Authorization" in flask_request.headers,
            )
        )
        return response

    return seen


@pytest.fixture
def server_url(app: Flask, calls: list[tuple[str, str, int, bool]]) -> Iterator[str]:
    """The example app on a real loopback HTTP server, served from a thread."""
    with serve_http(app) as url:
        yield url


@pytest.fixture
def plain(app: Flask) -> FlaskClient:
    """A test client that keeps no cookies: each test says exactly what it sends."""
    return app.test_client(use_cookies=False)


def _login(client: FlaskClient, user: str = "admin", password: str | None = None) -> str:
    secret = PASSWORDS[user] if password is None else password
    response = client.put("/data/services/auth", data={"username": user, "password": secret})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def _cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"JSESSIONID={token}"}


def _session_keys(state: InboxState) -> dict[bytes, object]:
    pattern = f"{state.config.key_prefix}session:*"
    return {key: state.redis.get(key) for key in state.redis.scan_iter(match=pattern)}


def test_xnat_client_imports_through_the_inbox_and_logs_out(
    app: Flask,
    server_url: str,
    calls: list[tuple[str, str, int, bool]],
    inbox: Path,
    state: InboxState,
) -> None:
    session_dir = inbox / "test_proj" / "xnatpy" / "visit1"
    generated = write_session(session_dir, series=2, files_per_series=3)

    connection = xnat.connect(
        server_url, user="admin", password=PASSWORDS["admin"], no_parse_model=True
    )
    token = connection.jsession
    try:
        assert connection.logged_in_user == "admin"
        assert token and token != PASSWORDS["admin"]
        assert connection.session_expiration_time is not None
        assert connection.session_expiration_time[1] == 900

        request = connection.services.import_dicom_inbox(
            path=str(session_dir), project="test_proj", subject="subj01", experiment="exp01"
        )
        assert request.status == "Queued"
        assert run_worker(app) == 1  # in the main thread: RQ's job timeout needs signals
        deadline = time.monotonic() + 30
        while (status := request.status) != "Completed":
            assert status != "Failed" and time.monotonic() < deadline, status
            time.sleep(0.1)
        assert request.project_id == "test_proj"
        assert request.subject_id == "subj01"
        assert request.cleanup_after_import is False
        assert request.username == "admin"
        assert request.session_path == str(session_dir)
        assert request.uri == f"/xapi/dicom/{request.id}"
        assert isinstance(request.id, int)
        assert state.store.get(request.id) is not None
    finally:
        connection.disconnect()

    imported = list(state.config.prearchive_path.glob("test_proj/*/exp01/SCANS/*/DICOM/*"))
    assert len(imported) == len(generated.files) == 6

    # What the client called, all answered 200, and only the login carried the password.
    status_path = f"/xapi/dicom/{request.id}"
    made = {(m, "/xapi/dicom/{id}" if p == status_path else p) for m, p, _s, _a in calls}
    assert made == CLIENT_CALLS
    assert all(status == 200 for _m, _p, status, _a in calls), calls
    assert not any(sent_header for *_rest, sent_header in calls), "cookie auth, not basic"
    assert calls[-1][:2] == ("DELETE", "/data/JSESSION")

    # DELETE /data/JSESSION ended the server-side session.
    assert _session_keys(state) == {}
    after = requests.get(f"{server_url}/data/auth", cookies={"JSESSIONID": token}, timeout=10)
    assert after.status_code == 401
    assert after.headers["WWW-Authenticate"].startswith("Basic")
    assert after.json()["message"] == "the session has expired or was ended: log in again"


def test_wrong_credentials_at_login_are_401(plain: FlaskClient, state: InboxState) -> None:
    for username, password in [("admin", "not-the-password"), ("nobody", "whatever")]:
        response = plain.put(
            "/data/services/auth", data={"username": username, "password": password}
        )
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        body = response.get_json()
        assert body["code"] == 401 and body["status"] == "Unauthorized"
        assert body["message"] == "invalid username or password"
        assert "Set-Cookie" not in response.headers
    missing = plain.put("/data/services/auth", data={"username": "admin"})
    assert missing.status_code == 400
    assert set(missing.get_json()["errors"]) == {"password"}
    assert _session_keys(state) == {}


def test_login_answers_a_token_that_is_not_the_password_and_stores_only_its_hash(
    plain: FlaskClient, state: InboxState
) -> None:
    response = plain.put(
        "/data/services/auth", data={"username": "member", "password": PASSWORDS["member"]}
    )
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    token = response.get_data(as_text=True)
    assert len(token) >= 40 and PASSWORDS["member"] not in token
    cookies = response.headers.getlist("Set-Cookie")
    session_cookie = next(c for c in cookies if c.startswith("JSESSIONID="))
    assert session_cookie.split(";")[0] == f"JSESSIONID={token}"
    attributes = {part.strip().lower() for part in session_cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/"} <= attributes
    assert any(c.startswith('SESSION_EXPIRATION_TIME="') and ",900000" in c for c in cookies)

    keys = _session_keys(state)
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert keys == {f"{state.config.key_prefix}session:{digest}".encode(): b"member"}
    for key, value in keys.items():
        assert isinstance(value, bytes)
        assert token.encode() not in key and token.encode() not in value
        assert PASSWORDS["member"].encode() not in key + value
    ttl = state.redis.ttl(next(iter(keys)))
    assert 0 < ttl <= 900

    # Two logins are two sessions.
    assert _login(plain, "member") != token
    assert len(_session_keys(state)) == 2


def test_cookie_authenticates_like_basic_auth(
    app: Flask, client: FlaskClient, plain: FlaskClient, inbox: Path
) -> None:
    session_dir = inbox / "test_proj" / "cookie"
    write_session(session_dir, series=1, files_per_series=2)
    submitted = submit(client, user="member", PROJECT_ID="test_proj", path=str(session_dir))
    assert submitted.status_code == 200, submitted.get_data(as_text=True)
    status_url = submitted.get_data(as_text=True).strip()

    member = _login(plain, "member")
    check = plain.get("/data/auth", headers=_cookie(member))
    assert check.status_code == 200
    assert check.get_data(as_text=True) == "User 'member' is logged in."
    status = plain.get(status_url, headers=_cookie(member))
    assert status.status_code == 200, status.get_data(as_text=True)
    assert status.get_json()["username"] == "member"
    assert plain.get("/xapi/dicom/list/all", headers=_cookie(member)).get_json()[0]["id"] == int(
        status_url.rsplit("/", 1)[1]
    )
    # The cookie's user is the one checked: another user's request stays hidden.
    outsider = _login(plain, "outsider")
    assert plain.get(status_url, headers=_cookie(outsider)).status_code == 404
    # A bad basic-auth header is refused even next to a valid cookie.
    both = plain.get(status_url, headers={**_cookie(member), **auth("member", "wrong")})
    assert both.status_code == 401
    assert both.get_json()["message"] == "invalid username or password"
    # An unknown token is refused, and so is no credential at all.
    assert plain.get(status_url, headers=_cookie("x" * 43)).status_code == 401
    bare = plain.get(status_url)
    assert bare.status_code == 401
    assert bare.get_json()["message"].startswith("authentication required")


def test_jsession_heartbeat_and_basic_auth(plain: FlaskClient, state: InboxState) -> None:
    token = _login(plain, "collab")
    beat = plain.get("/data/JSESSION", headers=_cookie(token))
    assert beat.status_code == 200 and beat.get_data(as_text=True) == token
    # With basic auth, XNAT hands out a new session.
    fresh = plain.get("/data/JSESSION", headers=auth("collab"))
    assert fresh.status_code == 200
    new_token = fresh.get_data(as_text=True)
    assert new_token not in {token, PASSWORDS["collab"]}
    assert plain.get("/data/auth", headers=_cookie(new_token)).status_code == 200
    assert len(_session_keys(state)) == 2


def test_logout_revokes_the_session_and_is_always_200(
    plain: FlaskClient, state: InboxState
) -> None:
    token = _login(plain, "owner")
    other = _login(plain, "owner")
    assert plain.get("/data/auth", headers=_cookie(token)).status_code == 200

    out = plain.delete("/data/JSESSION", headers=_cookie(token))
    assert out.status_code == 200
    expired = next(c for c in out.headers.getlist("Set-Cookie") if c.startswith("JSESSIONID="))
    assert "Expires=Thu, 01 Jan 1970" in expired
    refused = plain.get("/data/auth", headers=_cookie(token))
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    # Only that session ended; logging out again, or without a session, is still exactly 200.
    assert plain.get("/data/auth", headers=_cookie(other)).status_code == 200
    assert plain.delete("/data/JSESSION", headers=_cookie(token)).status_code == 200
    assert plain.delete("/data/JSESSION").status_code == 200
    assert len(_session_keys(state)) == 1


def test_session_expires_when_idle(app: Flask, plain: FlaskClient, state: InboxState) -> None:
    app.config["DICOM_INBOX_SESSION_TTL"] = 1
    token = _login(plain, "admin")
    [key] = _session_keys(state)
    assert 0 < state.redis.pttl(key) <= 1000
    # Each use restarts the clock (sliding expiry, as XNAT's sessions).
    for _ in range(2):
        time.sleep(0.6)
        assert plain.get("/data/auth", headers=_cookie(token)).status_code == 200
    time.sleep(1.3)
    expired = plain.get("/xapi/dicom/list/all", headers=_cookie(token))
    assert expired.status_code == 401
    assert expired.get_json()["message"] == "the session has expired or was ended: log in again"
    assert _session_keys(state) == {}
