"""The status page ``/xapi/dicom/ui``: served behind the same auth, inbox text always escaped, and
live in a real headless Chromium against the example app on a real HTTP server with a real RQ
worker process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app
from example_app.demo import write_session
from example_app.host import SqliteUsers
from flask_dicom_inbox import DicomInbox, api_ui

from .conftest import PASSWORDS, auth, flask_env, new_record, run_worker, serve_http, submit

HOSTILE_FOLDER = "<img src=x onerror=alert(1)>"
HOSTILE_FILE = "<svg onload=alert(2)>.txt"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = os.environ.get("DICOM_INBOX_SCREENSHOT")  # e.g. docs/status-page.png
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    # Small chunks, a progress write per file and no helper jobs: one worker's steady,
    # visible progress.
    return {
        **app_config,
        "DICOM_INBOX_PROGRESS_EVERY": 1,
        "DICOM_INBOX_CHUNK_FILES": 10,
        "DICOM_INBOX_HELPER_JOBS": 0,
    }


def _hostile_session(inbox: Path) -> Path:
    folder = inbox / "test_proj" / HOSTILE_FOLDER
    write_session(folder, series=1, files_per_series=2, rows=8, columns=8, seed=7)
    (folder / HOSTILE_FILE).write_text("not DICOM")
    return folder


def test_status_page_needs_credentials(client: FlaskClient) -> None:
    for url in ("/xapi/dicom/ui", "/xapi/dicom/ui/static/dicom_inbox/status.js"):
        refused = client.get(url)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert client.get(url, headers=auth("member", "wrong")).status_code == 401
    page = client.get("/xapi/dicom/ui", headers=auth("member"))
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    with client.get("/xapi/dicom/ui/static/dicom_inbox/status.js", headers=auth("member")) as js:
        assert js.status_code == 200
        assert b"textContent" in js.data and b"innerHTML" not in js.data


def test_status_page_with_session_cookie(client: FlaskClient) -> None:
    login = client.put(
        "/data/services/auth", data={"username": "member", "password": PASSWORDS["member"]}
    )
    assert login.status_code == 200
    page = client.get("/xapi/dicom/ui")  # the test client sends the JSESSIONID cookie back
    assert page.status_code == 200
    assert b"Import requests of <strong>member</strong>" in page.data


def test_inbox_text_is_escaped_in_the_served_html(
    app: Flask, client: FlaskClient, inbox: Path
) -> None:
    folder = _hostile_session(inbox)
    assert submit(client, "owner", PROJECT_ID="test_proj", path=folder).status_code == 200
    run_worker(app)
    page = client.get("/xapi/dicom/ui", headers=auth("owner"))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-status="Completed"' in html
    assert "<img" not in html and "<svg" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown, as text
    assert "&lt;svg onload=alert(2)&gt;.txt" in html  # the skipped file, as text
    assert '<progress max="3" value="3">' in html  # 2 DICOM files + the skipped one


def test_each_user_sees_their_own_requests(app: Flask, client: FlaskClient, inbox: Path) -> None:
    write_session(inbox / "test_proj" / "mine", series=1, files_per_series=1, rows=8, columns=8)
    assert submit(client, "owner", PROJECT_ID="test_proj", path=inbox / "test_proj" / "mine")
    owner_page = client.get("/xapi/dicom/ui", headers=auth("owner")).get_data(as_text=True)
    member_page = client.get("/xapi/dicom/ui", headers=auth("member")).get_data(as_text=True)
    admin_page = client.get("/xapi/dicom/ui", headers=auth("admin")).get_data(as_text=True)
    assert 'data-request-id="1"' in owner_page and 'data-finished="false"' in owner_page
    assert 'data-request-id="1"' not in member_page and "No import requests yet." in member_page
    assert 'data-request-id="1"' in admin_page


def test_a_row_shows_its_first_errors_and_counts_them_all(
    app: Flask, client: FlaskClient, inbox: Path
) -> None:
    """A request of 50 errors: the page lists the first MAX_ERRORS and says how many more."""
    from flask_dicom_inbox.api_ui import MAX_ERRORS

    write_session(inbox / "test_proj" / "noisy", series=1, files_per_series=1, rows=8, columns=8)
    assert submit(client, PROJECT_ID="test_proj", path=inbox / "test_proj" / "noisy")
    store = DicomInbox.state(app).store
    store.add_errors(1, ({"path": f"junk-{i}.txt", "reason": "not DICOM"} for i in range(50)))
    page = client.get("/xapi/dicom/ui", headers=auth("admin")).get_data(as_text=True)
    assert "50 file(s) skipped or failed" in page
    assert f"junk-{MAX_ERRORS - 1}.txt" in page and f"junk-{MAX_ERRORS}.txt" not in page
    assert f"and {50 - MAX_ERRORS} more" in page


def test_the_rows_the_page_polls_are_its_newest_requests_with_their_first_errors(
    app: Flask, client: FlaskClient, inbox: Path
) -> None:
    """``/xapi/dicom/ui/rows``: the newest MAX_ROWS of the user's requests, each with its
    first MAX_ERRORS errors and errorCount, and the user's total; behind the same auth."""
    from flask_dicom_inbox.api_ui import MAX_ERRORS, MAX_ROWS

    store = DicomInbox.state(app).store
    for i in range(MAX_ROWS + 2):
        record = new_record(
            store, username="owner", session_path=str(inbox / "test_proj" / f"s{i}")
        )
    store.add_errors(record.id, ({"path": f"junk-{i}.txt", "reason": "no"} for i in range(50)))
    assert client.get("/xapi/dicom/ui/rows").status_code == 401
    rows = client.get("/xapi/dicom/ui/rows", headers=auth("owner")).get_json()
    assert rows["total"] == MAX_ROWS + 2
    assert [r["id"] for r in rows["requests"]] == list(range(MAX_ROWS + 2, 2, -1))
    newest = rows["requests"][0]
    assert newest["errorCount"] == 50 and len(newest["errors"]) == MAX_ERRORS
    assert newest["errors"][0] == {"path": "junk-0.txt", "reason": "no"}
    assert {r["errorCount"] for r in rows["requests"][1:]} == {0}
    member = client.get("/xapi/dicom/ui/rows", headers=auth("member")).get_json()
    assert member == {"total": 0, "requests": []}


def test_status_page_honours_script_root_and_url_prefix(app_config: dict[str, Any]) -> None:
    prefixed = create_app({**app_config, "DICOM_INBOX_URL_PREFIX": "/xnat"})
    try:
        SqliteUsers(prefixed).create("admin", PASSWORDS["admin"], admin=True)
        client = prefixed.test_client()
        assert client.get("/xapi/dicom/ui", headers=auth()).status_code == 404
        page = client.get("/xnat/xapi/dicom/ui", headers=auth(), base_url="http://localhost/site")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert 'data-rows-url="/site/xnat/xapi/dicom/ui/rows"' in html
        assert 'data-base="/site/xnat"' in html
        assert 'src="/site/xnat/xapi/dicom/ui/static/dicom_inbox/status.js"' in html
    finally:
        DicomInbox.state(prefixed).redis.close()


# -- the browser test ------------------------------------------------------------------------


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The example app on a real HTTP server (127.0.0.1, a free port) in a thread."""
    with serve_http(app) as url:
        yield url


def _start_worker(app_config: dict[str, Any]) -> subprocess.Popen[bytes]:
    """``flask --app example_app dicom-inbox worker --burst``, configured like ``app``."""
    env = flask_env(app_config)
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker", "--burst"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


_ROW_STATE = """id => {
  const row = document.querySelector(`li.request[data-request-id="${id}"]`);
  if (!row) return null;
  const bar = row.querySelector("progress");
  return {status: row.dataset.status, text: row.querySelector(".status").textContent,
          value: bar.hasAttribute("value") ? bar.value : null, max: bar.max};
}"""


@pytest.mark.slow
def test_status_page_in_headless_chromium(
    app: Flask,
    app_config: dict[str, Any],
    client: FlaskClient,
    inbox: Path,
    live_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # A finished request with hostile names, then a running one big enough to watch.
    small = _hostile_session(inbox)
    big = inbox / "test_proj" / "s01_mr1"
    # 1,600 files, and the page polling 4 times a second instead of once: it must see the
    # bar at two values or more however fast the host imports (800 files took 2 s on one
    # host and 1,600 about 2 s on a faster one, and at one poll a second the page saw a
    # single value between 0 and Completed).
    monkeypatch.setattr(api_ui, "POLL_MS", 250)
    write_session(big, series=4, files_per_series=400, rows=8, columns=8, seed=1)
    assert submit(client, "owner", PROJECT_ID="test_proj", path=small).status_code == 200
    answer = submit(client, "owner", PROJECT_ID="test_proj", SUBJECT_ID="s01", path=big)
    assert answer.status_code == 200
    big_id = int(answer.get_data(as_text=True).strip().rsplit("/", 1)[1])
    login = requests.put(
        f"{live_server}/data/services/auth",
        data={"username": "owner", "password": PASSWORDS["owner"]},
        timeout=10,
    )
    assert login.status_code == 200

    dialogs: list[str] = []
    list_calls: list[float] = []
    worker: subprocess.Popen[bytes] | None = None
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 1100, "height": 620},
        )
        try:
            context.add_cookies([{"name": "JSESSIONID", "value": login.text, "url": live_server}])
            page = context.pages[0] if context.pages else context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on(
                "request",
                lambda r: list_calls.append(time.monotonic()) if "/ui/rows" in r.url else None,
            )
            page.goto(f"{live_server}/xapi/dicom/ui")
            assert page.evaluate(_ROW_STATE, big_id)["status"] == "Queued"

            worker = _start_worker(app_config)
            readings: list[dict[str, Any]] = []
            deadline = time.monotonic() + 180
            shot = False
            while time.monotonic() < deadline:
                now = page.evaluate(_ROW_STATE, big_id)
                readings.append(now)
                ratio = (now["value"] or 0) / (now["max"] or 1)
                if SCREENSHOT and not shot and now["status"] == "Importing" and ratio >= 0.35:
                    page.screenshot(path=SCREENSHOT, full_page=True)
                    shot = True
                if now["status"] == "Completed":
                    break
                page.wait_for_timeout(150)
            running = [
                r["value"]
                for r in readings
                if r["status"] != "Completed" and r["value"] is not None and r["value"] > 0
            ]
            assert len(set(running)) >= 2, f"the bar did not move while running: {readings}"
            assert running == sorted(running)  # it only ever moves forward
            assert running[-1] > running[0]
            final = readings[-1]
            assert final["status"] == "Completed", final
            assert final["text"] == "Completed"
            assert final["value"] == final["max"] == 1600

            # Polling stops once everything is finished.
            page.wait_for_timeout(2500)
            calls = len(list_calls)
            page.wait_for_timeout(2500)
            assert len(list_calls) == calls, "the page still polls with nothing running"
            assert page.locator("#refresh").is_visible()

            # The hostile request, re-rendered by the script: text, never markup.
            small_row = page.locator('li.request[data-status="Completed"]').last
            assert small_row.locator(".path").text_content() == str(small)
            assert small_row.locator("img, svg, script").count() == 0
            assert page.locator("#requests img, #requests svg").count() == 0
            assert HOSTILE_FILE in (small_row.locator(".errors").text_content() or "")
            record = DicomInbox.state(app).store.get(big_id)
            assert record is not None and record.sessions
            big_row = page.locator(f'li.request[data-request-id="{big_id}"]')
            link = big_row.locator(".sessions a").first.get_attribute("href", timeout=5000)
            assert link == f"/data{record.sessions[0]['url']}"
            assert dialogs == []
        finally:
            context.close()
            if worker is not None:
                try:
                    _, err = worker.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    _, err = worker.communicate()
                assert worker.returncode == 0, err.decode(errors="replace")[-2000:]
