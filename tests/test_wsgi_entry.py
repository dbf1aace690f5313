"""The WSGI entry point docs/deployment.md serves: the app from the environment, the
collector frozen over what loading left, and gunicorn running it with the documented flags."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from flask import Flask

from .conftest import PASSWORDS, flask_env, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]


def test_the_wsgi_module_builds_the_app_from_the_environment_and_freezes_what_it_loaded(
    app_config: dict[str, Any],
) -> None:
    probe = (
        "import gc, json; import example_app.wsgi as w; "
        "print(json.dumps({'frozen': gc.get_freeze_count(), 'kind': type(w.app).__name__, "
        "'database': w.app.config['DATABASE'], "
        "'prefix': w.app.config['DICOM_INBOX_KEY_PREFIX']}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=flask_env(app_config),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["kind"] == "Flask"
    assert found["database"] == app_config["DATABASE"]
    assert found["prefix"] == app_config["DICOM_INBOX_KEY_PREFIX"]
    # Flask, pydicom and the app are tens of thousands of objects; none is walked again.
    assert found["frozen"] > 20_000


def _documented_gunicorn_command() -> list[str]:
    text = (ROOT / "docs" / "deployment.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("gunicorn -w")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_gunicorn_serves_the_example_app_with_the_flags_deployment_md_gives(
    app: Flask, app_config: dict[str, Any], tmp_path: Path
) -> None:
    command = _documented_gunicorn_command()
    assert command[-1] == "example_app.wsgi:app"
    port = free_port()
    command[command.index("-b") + 1] = f"127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as log_file:  # a file, not a pipe that nobody drains while it runs
        server = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=flask_env(app_config),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert server.poll() is None, f"gunicorn exited: {log.read_text()[-2000:]}"
        try:
            return requests.get(url + "/", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False  # not listening yet, or listening while no worker has loaded the app

    try:
        wait_until(answers, 60, "gunicorn to answer", interval=0.1)
        with requests.Session() as http:
            login = http.put(
                url + "/data/services/auth",
                data={"username": "admin", "password": PASSWORDS["admin"]},
                timeout=10,
            )
            assert login.status_code == 200
            assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", login.text.strip())
            listed = http.get(url + "/xapi/dicom/list/all", timeout=10)
            assert listed.status_code == 200
            assert listed.json() == []
            refused = requests.get(url + "/xapi/dicom/list/all", timeout=10)
            assert refused.status_code == 401
    finally:
        server.terminate()
        server.wait(30)
