"""Cross-site request refusal: a browser's state-changing call from another site's page is
refused (403) before its credentials are looked at; curl-like clients, same-origin pages
and every read pass unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app
from example_app.demo import write_session
from flask_dicom_inbox import DicomInbox, InboxState
from flask_dicom_inbox.origin import normalized_origins

from .conftest import auth, delete_app_keys, submit

CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}


def _post_import(client: FlaskClient, folder: Path, **headers: str) -> Any:
    query = {"import-handler": "inbox", "PROJECT_ID": "test_proj", "path": str(folder)}
    return client.post("/data/services/import", query_string=query, headers={**auth(), **headers})


@pytest.fixture
def folder(inbox: Path) -> Path:
    path = inbox / "test_proj" / "s01"
    write_session(path, series=1, files_per_series=2, rows=8, columns=8)
    return path


@pytest.mark.parametrize(
    "headers",
    [
        CROSS_SITE,
        {"Sec-Fetch-Site": "same-site", "Origin": "https://other.localhost"},
        {"Origin": "https://evil.example"},  # a browser without Sec-Fetch-Site
        {"Origin": "null"},  # a sandboxed frame or a data: page
        {"Origin": "http://localhost.evil.example"},
    ],
)
def test_a_browser_s_import_from_another_site_is_refused_and_records_nothing(
    client: FlaskClient, state: InboxState, folder: Path, headers: dict[str, str]
) -> None:
    response = _post_import(client, folder, **headers)
    assert response.status_code == 403
    body = response.get_json()
    assert body["code"] == 403 and "another" in body["message"]
    assert "DICOM_INBOX_TRUSTED_ORIGINS" in body["message"]
    assert state.store.ids() == [] and len(state.queue) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts, the xnat client
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Origin": "http://localhost"},  # an older browser, same origin
    ],
)
def test_clients_and_same_origin_pages_import_as_before(
    client: FlaskClient, state: InboxState, folder: Path, headers: dict[str, str]
) -> None:
    response = _post_import(client, folder, **headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert state.store.ids() == [1]


def test_reads_from_another_site_pass_and_a_write_is_refused_before_authentication(
    client: FlaskClient, folder: Path
) -> None:
    assert submit(client, PROJECT_ID="test_proj", path=folder).status_code == 200
    read = client.get("/xapi/dicom/1", headers={**auth(), **CROSS_SITE})
    assert read.status_code == 200 and read.get_json()["id"] == 1
    # No credentials at all: 403 for the cross-site write, not a 401 login prompt.
    anonymous = client.post("/data/services/import", headers=CROSS_SITE)
    assert anonymous.status_code == 403
    assert "WWW-Authenticate" not in anonymous.headers
    # The other writes of the API are covered too: the login call and the script PUT.
    login = client.put(
        "/data/services/auth", data={"username": "admin", "password": "x"}, headers=CROSS_SITE
    )
    assert login.status_code == 403
    before = client.get("/xapi/anonymize/site", headers=auth()).get_data()
    script = client.put(
        "/xapi/anonymize/site",
        data='version "6.1"\n(0010,0010) := "x"\n',
        content_type="text/plain",
        headers={**auth(), **CROSS_SITE},
    )
    assert script.status_code == 403
    assert client.get("/xapi/anonymize/site", headers=auth()).get_data() == before


def test_a_trusted_origin_may_write(app_config: dict[str, Any], tmp_path: Path) -> None:
    config = {**app_config, "DICOM_INBOX_TRUSTED_ORIGINS": "https://portal.example.org/, "}
    application = create_app(config)
    state = DicomInbox.state(application)
    try:
        from example_app.host import SqliteProjects, SqliteUsers

        SqliteUsers(application).create("admin", "pw", admin=True)
        SqliteProjects(application).create("test_proj", "admin")
        folder = Path(config["DICOM_INBOX_PATH"]) / "test_proj" / "s01"
        write_session(folder, series=1, files_per_series=2, rows=8, columns=8)
        client = application.test_client()
        query = {"import-handler": "inbox", "PROJECT_ID": "test_proj", "path": str(folder)}
        basic = {"Authorization": "Basic YWRtaW46cHc="}  # admin:pw
        trusted = {"Sec-Fetch-Site": "cross-site", "Origin": "https://Portal.example.org"}
        ok = client.post("/data/services/import", query_string=query, headers={**basic, **trusted})
        assert ok.status_code == 200, ok.get_data(as_text=True)
        other = {"Sec-Fetch-Site": "cross-site", "Origin": "https://portal.example.org:8443"}
        refused = client.post(
            "/data/services/import", query_string=query, headers={**basic, **other}
        )
        assert refused.status_code == 403
        assert state.store.ids() == [1]
    finally:
        delete_app_keys(state)
        state.redis.close()


def test_origins_are_normalized_from_text_or_a_list() -> None:
    assert normalized_origins(" https://A.example/ ,http://b.example:8080") == {
        "https://a.example",
        "http://b.example:8080",
    }
    assert normalized_origins(["https://c.example/"]) == {"https://c.example"}
    assert normalized_origins("") == frozenset()
    for bad in ("https://portal.example.org/app", "portal.example.org", "ftp://x.example",
                "https://user@x.example", "https://x.example?q=1", "https://"):  # fmt: skip
        with pytest.raises(ValueError, match="is not an origin"):
            normalized_origins(bad)


def test_the_dashboard_s_buttons_are_refused_from_another_site(
    app: Flask, client: FlaskClient, state: InboxState, folder: Path
) -> None:
    assert submit(client, "member", PROJECT_ID="test_proj", path=folder).status_code == 200
    empty = f"/rq/queue/{state.config.queue}/queued/empty"
    refused = client.post(empty, headers={**auth(), **CROSS_SITE})
    assert refused.status_code == 403 and "another site" in refused.get_json()["message"]
    assert len(state.queue) == 1, "the job is still queued"
    same = client.post(empty, headers={**auth(), "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200
    assert len(state.queue) == 0
