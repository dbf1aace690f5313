"""The credential cache: a polling client costs one password hash per TTL, not one per call;
a changed password stops working within the TTL, a removed user at once."""

from __future__ import annotations

import base64
import time

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from example_app.db import connect
from example_app.host import SqliteUsers
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.auth_cache import CredentialCache
from flask_dicom_inbox.config import InboxConfig

from .conftest import auth


def test_only_the_exact_credentials_are_remembered_until_they_expire() -> None:
    cache = CredentialCache(0.3)
    cache.remember("member", "member-pw")
    assert cache.verified("member", "member-pw")
    assert not cache.verified("member", "member-pw ")
    assert not cache.verified("member", "wrong")
    assert not cache.verified("admin", "member-pw")
    time.sleep(0.4)
    assert not cache.verified("member", "member-pw")


def test_zero_seconds_remembers_nothing() -> None:
    cache = CredentialCache(0)
    cache.remember("member", "member-pw")
    assert not cache.verified("member", "member-pw")


def test_the_cache_holds_no_password() -> None:
    cache = CredentialCache(30)
    cache.remember("member", "secret-password")
    assert b"secret-password" not in repr(cache._entries).encode()


def test_the_cache_stays_bounded() -> None:
    cache = CredentialCache(30, max_entries=10)
    for n in range(25):
        cache.remember(f"user{n}", "pw")
    assert len(cache._entries) <= 10
    assert cache.verified("user24", "pw")


def _set_password(app: Flask, user: str, password: str) -> None:
    with connect(app.config["DATABASE"]) as conn:
        conn.execute(
            "UPDATE users SET password_hash = ? WHERE name = ?",
            (generate_password_hash(password), user),
        )


def _use_cache(app: Flask, state: InboxState, seconds: float) -> None:
    app.config["DICOM_INBOX_AUTH_CACHE_SECONDS"] = seconds
    state.config = InboxConfig.from_app(app)
    state.credential_cache = CredentialCache(state.config.auth_cache_seconds)


def test_a_changed_password_stops_working_within_the_ttl(
    app: Flask, client: FlaskClient, state: InboxState
) -> None:
    _use_cache(app, state, 1.0)
    assert client.get("/xapi/dicom/list/all", headers=auth("member")).status_code == 200
    _set_password(app, "member", "new-pw")
    assert client.get("/xapi/dicom/list/all", headers=auth("member")).status_code == 200
    time.sleep(1.2)
    assert client.get("/xapi/dicom/list/all", headers=auth("member")).status_code == 401
    assert client.get("/xapi/dicom/list/all", headers=auth("member", "new-pw")).status_code == 200


def test_without_the_cache_a_changed_password_stops_working_at_once(
    app: Flask, client: FlaskClient, state: InboxState
) -> None:
    _use_cache(app, state, 0)
    assert client.get("/xapi/dicom/list/all", headers=auth("member")).status_code == 200
    _set_password(app, "member", "new-pw")
    assert client.get("/xapi/dicom/list/all", headers=auth("member")).status_code == 401


def test_a_removed_user_is_refused_at_once(
    app: Flask, client: FlaskClient, state: InboxState
) -> None:
    _use_cache(app, state, 60)
    SqliteUsers(app).create("leaver", "leaver-pw")
    headers = {"Authorization": "Basic " + base64.b64encode(b"leaver:leaver-pw").decode()}
    assert client.get("/xapi/dicom/list/all", headers=headers).status_code == 200
    with connect(app.config["DATABASE"]) as conn:
        conn.execute("DELETE FROM users WHERE name = 'leaver'")
    assert client.get("/xapi/dicom/list/all", headers=headers).status_code == 401


def test_cached_checks_skip_the_password_hash(
    app: Flask, client: FlaskClient, state: InboxState
) -> None:
    _use_cache(app, state, 60)

    def median_seconds() -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            assert client.get("/xapi/dicom/list/all", headers=auth("member")).status_code == 200
            times.append(time.perf_counter() - start)
        return sorted(times)[3]

    cached = median_seconds()
    _use_cache(app, state, 0)
    uncached = median_seconds()
    assert cached < uncached / 2, (cached, uncached)
