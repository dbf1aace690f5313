"""The ``dicom-inbox`` console script, run as a subprocess against a real HTTP server.

The example app serves on 127.0.0.1 in a thread (werkzeug); imports that are waited for run in
a real ``flask dicom-inbox worker`` process on the test's own queue and key prefix.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.client import ProgressDisplay

from .conftest import PASSWORDS, auth, flask_env, run_worker, serve_http, submit

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "dicom-inbox"

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def live_url(app: Flask) -> Iterator[str]:
    """The example app on a real HTTP server (a free port) in a thread."""
    with serve_http(app) as url:
        yield url


@pytest.fixture
def worker(app_config: dict[str, Any]) -> Iterator[subprocess.Popen[str]]:
    """``flask --app example_app dicom-inbox worker`` on the test's queue; stopped at teardown."""
    env = flask_env(app_config)
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()  # RQ's warm shutdown
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run the installed ``dicom-inbox`` script with a clean environment and no terminal."""
    script = SCRIPT if SCRIPT.exists() else shutil.which("dicom-inbox")
    assert script, "the dicom-inbox console script is not installed (pip install -e .)"
    home = tmp_path / "home"
    home.mkdir()

    def run(
        *args: str, password: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DICOM_INBOX_", "FLASK_")) and k != "NETRC"
        }
        base["HOME"] = str(home)  # no real ~/.netrc
        if password is not None:
            base["DICOM_INBOX_PASSWORD"] = password
        return subprocess.run(
            [str(script), *args],
            env={**base, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def _request_id(response: Any) -> int:
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])


def _queued_id(stdout_or_err: str) -> int:
    line = next(x for x in stdout_or_err.splitlines() if x.startswith("request "))
    return int(line.split()[1])


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


# -- import --wait with a real worker ---------------------------------------------------------


@pytest.mark.usefixtures("worker")
def test_import_wait_completes_with_password_from_env(
    cli: Cli, live_url: str, inbox: Path, state: InboxState
) -> None:
    session = inbox / "test_proj" / "s01"
    generated = write_session(session, series=2, files_per_series=3, rows=8, columns=8)
    result = cli(
        "import",
        str(session),
        "--project",
        "test_proj",
        "--subject",
        "s01",
        "--label",
        "s01_mr1",
        "--url",
        live_url,
        "--user",
        "owner",
        "--wait",
        "--interval",
        "0.2",
        password=PASSWORDS["owner"],
    )
    assert result.returncode == 0, result.stderr
    rid = _queued_id(result.stderr)
    assert f"{live_url}/xapi/dicom/{rid}" in result.stderr
    assert f"request {rid} Completed: 6 file(s) imported into 1 session(s)" in result.stdout
    assert f"request {rid}: Completed, 6/6 files" in result.stderr  # plain progress lines
    assert "s01_mr1 (subject s01): 6 file(s), 2 scan(s) in the prearchive" in result.stdout
    record = state.store.get(rid)
    assert record is not None and record.status == "Completed"
    assert record.username == "owner"
    assert record.parameters["EXPT_LABEL"] == "s01_mr1"
    assert record.parameters["cleanupAfterImport"] == "false"
    stored = sorted(p.name for p in state.config.prearchive_path.rglob("*.dcm"))
    assert stored == sorted(p.name for p in generated.files)
    assert all(p.exists() for p in generated.files), "no --cleanup: the originals stay"


@pytest.mark.usefixtures("worker")
def test_import_wait_of_a_folder_without_dicom_exits_1_with_the_errors(
    cli: Cli, live_url: str, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "junk"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("no DICOM here")
    (folder / "sub" / "readme.md").write_text("nor here")
    result = cli(
        "import",
        str(folder),
        "--project",
        "test_proj",
        "--url",
        live_url,
        "--user",
        "member",
        "--wait",
        "--interval",
        "0.2",
        password=PASSWORDS["member"],
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    _no_traceback(result)
    rid = _queued_id(result.stderr)
    record = state.store.get(rid)
    assert record is not None and record.status == "Failed"
    assert f"request {rid} Failed: {record.message}" in result.stderr
    assert {e["path"] for e in record.errors} == {"notes.txt", "sub/readme.md"}
    for error in record.errors:
        assert f"  {error['path']}: {error['reason']}" in result.stderr


@pytest.mark.usefixtures("worker")
def test_import_cleanup_removes_the_source(
    cli: Cli, live_url: str, inbox: Path, state: InboxState
) -> None:
    session = inbox / "test_proj" / "to_clean"
    generated = write_session(session, series=1, files_per_series=4, rows=8, columns=8)
    result = cli(
        "import",
        str(session),
        "--project",
        "test_proj",
        "--cleanup",
        "--url",
        live_url,
        "--user",
        "owner",
        "--wait",
        "--interval",
        "0.2",
        password=PASSWORDS["owner"],
    )
    assert result.returncode == 0, result.stderr
    record = state.store.get(_queued_id(result.stderr))
    assert record is not None and record.cleanup_after_import is True
    assert not any(p.exists() for p in generated.files)
    assert not session.exists() or not any(session.rglob("*"))
    stored = sorted(p.name for p in state.config.prearchive_path.rglob("*.dcm"))
    assert stored == sorted(p.name for p in generated.files)


# -- credentials -------------------------------------------------------------------------------


def test_password_from_a_netrc_file(
    cli: Cli, live_url: str, client: FlaskClient, inbox: Path, app: Flask, tmp_path: Path
) -> None:
    session = inbox / "test_proj" / "n1"
    write_session(session, series=1, files_per_series=1, rows=8, columns=8)
    rid = _request_id(submit(client, "owner", PROJECT_ID="test_proj", path=session))
    run_worker(app)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine 127.0.0.1 login owner password {PASSWORDS['owner']}\n")
    netrc_file.chmod(0o600)

    from_netrc = cli(
        "status", str(rid), "--url", live_url, "--user", "owner", NETRC=str(netrc_file)
    )
    assert from_netrc.returncode == 0, from_netrc.stderr
    assert f"id          {rid}\n" in from_netrc.stdout
    # the login may come from netrc too
    login_too = cli("status", str(rid), "--url", live_url, NETRC=str(netrc_file))
    assert login_too.returncode == 0, login_too.stderr
    # no netrc entry for the host, no variable, no terminal: a clear error, no prompt
    elsewhere = tmp_path / "netrc-other"
    elsewhere.write_text("machine example.org login owner password x\n")
    missing = cli("status", str(rid), "--url", live_url, "--user", "owner", NETRC=str(elsewhere))
    assert missing.returncode == 2
    assert missing.stderr.startswith("dicom-inbox: error: no password for owner")
    _no_traceback(missing)


def test_wrong_password_exits_2_with_the_servers_message(
    cli: Cli, live_url: str, inbox: Path, state: InboxState
) -> None:
    session = inbox / "test_proj" / "s01"
    write_session(session, series=1, files_per_series=1, rows=8, columns=8)
    result = cli(
        "import",
        str(session),
        "--project",
        "test_proj",
        "--url",
        live_url,
        "--user",
        "owner",
        "--wait",
        password="not-the-password",
    )
    assert result.returncode == 2
    _no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dicom-inbox: error: HTTP 401 Unauthorized")
    assert state.store.list_requests(username=None, active_only=False) == []


def test_forbidden_project_exits_2(cli: Cli, live_url: str, inbox: Path, state: InboxState) -> None:
    session = inbox / "other_proj" / "s01"
    write_session(session, series=1, files_per_series=1, rows=8, columns=8)
    result = cli(
        "import",
        str(session),
        "--project",
        "other_proj",
        "--url",
        live_url,
        "--user",
        "member",
        password=PASSWORDS["member"],
    )
    assert result.returncode == 2
    _no_traceback(result)
    line = result.stderr.strip()
    assert line.startswith("dicom-inbox: error: HTTP 403 Forbidden: ")
    assert "other_proj" in line and "\n" not in line
    assert state.store.list_requests(username=None, active_only=False) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status", "1", "--user", "owner"], "no server: pass --url or set DICOM_INBOX_URL"),
        (
            ["status", "999", "--url", "LIVE", "--user", "owner"],
            "HTTP 404 Not Found: no import request 999",
        ),
        (["list", "--url", "ftp://x"], "--url must be an http(s) URL, got 'ftp://x'"),
        (
            ["list", "--url", "LIVE"],
            "no user: pass --user, set DICOM_INBOX_USER or add 127.0.0.1 to netrc",
        ),
    ],
)
def test_usage_and_http_errors_are_one_line_and_exit_2(
    cli: Cli, live_url: str, args: list[str], expected: str
) -> None:
    result = cli(*[live_url if a == "LIVE" else a for a in args], password=PASSWORDS["owner"])
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"dicom-inbox: error: {expected}\n"


def test_url_and_user_from_the_environment(cli: Cli, live_url: str) -> None:
    result = cli(
        "list", password=PASSWORDS["owner"], DICOM_INBOX_URL=live_url, DICOM_INBOX_USER="owner"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no import requests\n"


# -- status and list ---------------------------------------------------------------------------


def test_status_prints_a_table_and_raw_json(
    cli: Cli, live_url: str, client: FlaskClient, inbox: Path, app: Flask
) -> None:
    session = inbox / "test_proj" / "st"
    (session / "x").mkdir(parents=True)
    write_session(session, series=1, files_per_series=2, rows=8, columns=8)
    (session / "x" / "notes.txt").write_text("skip me")
    rid = _request_id(
        submit(client, "owner", PROJECT_ID="test_proj", EXPT_LABEL="st1", path=session)
    )
    run_worker(app)
    expected = client.get(f"/xapi/dicom/{rid}", headers=auth("owner")).get_json()
    assert expected["status"] == "Completed"

    table = cli(
        "status", str(rid), "--url", live_url, "--user", "owner", password=PASSWORDS["owner"]
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    rows = dict(line.split(None, 1) for line in lines if line[:1].isalpha() and " " in line)
    assert lines[-4:-2] == ["sessions:", lines[-3]] and lines[-2:] == ["errors:", lines[-1]]
    assert rows["id"] == str(rid)
    assert rows["status"] == "Completed"
    assert rows["project"] == "test_proj"
    assert rows["path"] == expected["sessionPath"]
    assert rows["progress"] == "3/3 files (2 imported, 1 skipped)"
    assert rows["message"] == expected["message"]
    assert f"  x/notes.txt: {expected['errors'][0]['reason']}" in table.stdout
    assert "  st1 (subject " in table.stdout

    raw = cli(
        "status",
        str(rid),
        "--json",
        "--url",
        live_url,
        "--user",
        "owner",
        password=PASSWORDS["owner"],
    )
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout) == expected

    # another user's request is not theirs to see
    hidden = cli(
        "status", str(rid), "--url", live_url, "--user", "member", password=PASSWORDS["member"]
    )
    assert hidden.returncode == 2 and "HTTP 404" in hidden.stderr


def test_list_shows_the_users_requests_and_active_only(
    cli: Cli, live_url: str, client: FlaskClient, inbox: Path, app: Flask
) -> None:
    done_dir, queued_dir = inbox / "test_proj" / "done", inbox / "test_proj" / "waiting"
    write_session(done_dir, series=1, files_per_series=1, rows=8, columns=8, seed=1)
    write_session(queued_dir, series=1, files_per_series=1, rows=8, columns=8, seed=2)
    done = _request_id(submit(client, "owner", PROJECT_ID="test_proj", path=done_dir))
    run_worker(app)
    queued = _request_id(submit(client, "owner", PROJECT_ID="test_proj", path=queued_dir))
    common = ("--url", live_url, "--user", "owner")

    def ids(stdout: str) -> list[int]:
        return [int(line.split()[0]) for line in stdout.splitlines()[1:]]

    everything = cli("list", *common, password=PASSWORDS["owner"])
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines()[0].split()[:3] == ["ID", "STATUS", "PROJECT"]
    assert ids(everything.stdout) == [queued, done]  # newest first
    assert f"{queued_dir}" in everything.stdout and "Completed" in everything.stdout

    active = cli("list", "--active", *common, password=PASSWORDS["owner"])
    assert active.returncode == 0, active.stderr
    assert ids(active.stdout) == [queued]

    raw = cli("list", "--json", *common, password=PASSWORDS["owner"])
    assert [r["id"] for r in json.loads(raw.stdout)] == [queued, done]

    member = cli("list", "--url", live_url, "--user", "member", password=PASSWORDS["member"])
    assert member.returncode == 0 and member.stdout.strip() == "no import requests"


# -- a server behind a path prefix ------------------------------------------------------------


def test_a_url_with_a_path_prefix(cli: Cli, app: Flask, inbox: Path, state: InboxState) -> None:
    session = inbox / "test_proj" / "pre"
    write_session(session, series=1, files_per_series=1, rows=8, columns=8)
    mounted = DispatcherMiddleware(NotFound(), {"/xnat": app})  # as behind a proxy at /xnat
    with serve_http(mounted) as url:
        prefixed = f"{url}/xnat/"
        submitted = cli(
            "import",
            str(session),
            "--project",
            "test_proj",
            "--url",
            prefixed,
            "--user",
            "owner",
            password=PASSWORDS["owner"],
        )
        assert submitted.returncode == 0, submitted.stderr
        rid = _queued_id(submitted.stdout)
        assert submitted.stdout.strip() == f"request {rid} queued: {url}/xnat/xapi/dicom/{rid}"
        shown = cli(
            "status",
            str(rid),
            "--json",
            "--url",
            prefixed,
            "--user",
            "owner",
            password=PASSWORDS["owner"],
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["status"] == "Queued"
        bare = cli("status", str(rid), "--url", url, "--user", "owner", password=PASSWORDS["owner"])
        assert bare.returncode == 2 and "HTTP 404" in bare.stderr  # the prefix is needed
    record = state.store.get(rid)
    assert record is not None and record.session_path == str(session)


# -- the progress display ----------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(status: str, done: int, found: int) -> dict[str, Any]:
    return {"status": status, "progress": {"filesDone": done, "filesFound": found}}


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere() -> None:
    tty = _Terminal()
    bar = ProgressDisplay(tty, 7)
    bar.update(_record("Importing", 5, 20))
    bar.update(_record("Completed", 20, 20))
    bar.close()
    text = tty.getvalue()
    assert text.startswith("\r[" + "#" * 7 + "-" * 23 + "]  25% 5/20 files  Importing")
    assert "\r[" + "#" * 30 + "] 100% 20/20 files  Completed" in text
    assert text.endswith("\n") and text.count("\n") == 1

    log = io.StringIO()
    plain = ProgressDisplay(log, 7, every=3600)
    plain.update(_record("Queued", 0, 0))
    plain.update(_record("Importing", 1, 20))
    plain.update(_record("Importing", 2, 20))  # same status, too soon: not printed
    plain.update(_record("Completed", 20, 20))
    plain.close()
    assert log.getvalue().splitlines() == [
        "request 7: Queued, 0/0 files",
        "request 7: Importing, 1/20 files",
        "request 7: Completed, 20/20 files",
    ]
    assert "\r" not in log.getvalue()


# -- credentials and redirects ----------------------------------------------------------------


def _recording_app(seen: list[str | None]) -> Any:
    """Answers every GET with a finished request record; notes each call's Authorization."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ.get("HTTP_AUTHORIZATION"))
        body = json.dumps({"id": 1, "status": "Completed", "message": "done"}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


def _redirecting_app(seen: list[str | None], to: str | None = None) -> Any:
    """Redirects every call to ``to`` + its path, or (``to`` None) to ``/moved`` + its path on
    this same server, where it answers (and notes the call's Authorization in ``seen``)."""
    answer = _recording_app(seen)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        if to is None and path.startswith("/moved/"):
            return answer(environ, start_response)  # type: ignore[no-any-return]
        target = to if to is not None else f"http://{environ['HTTP_HOST']}/moved"
        start_response("302 Found", [("Location", f"{target}{path}")])
        return [b""]

    return app


def test_a_redirect_to_another_origin_does_not_get_the_password(cli: Cli) -> None:
    """urllib repeats the Authorization header to wherever a redirect points; the client
    sends it back only to the origin (scheme, host, port) it was given for."""
    elsewhere: list[str | None] = []
    with (
        serve_http(_recording_app(elsewhere)) as other,
        serve_http(_redirecting_app([], to=other)) as url,
    ):
        shown = cli("status", "1", "--json", "--url", url, "--user", "owner", password="pw")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "Completed"
    assert elsewhere == [None]


def test_a_redirect_within_the_origin_keeps_the_password(cli: Cli) -> None:
    same: list[str | None] = []
    with serve_http(_redirecting_app(same)) as url:
        shown = cli("status", "1", "--json", "--url", url, "--user", "owner", password="pw")
    assert shown.returncode == 0, shown.stderr
    [sent] = same
    assert sent is not None and sent.startswith("Basic ")
