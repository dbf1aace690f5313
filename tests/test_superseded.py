"""A run that loses its lease while its work-horse still lives stops and leaves the request to
the run that holds the lease now.

The work-horse of the first worker is frozen (SIGSTOP) in the middle of an anonymizing move, for
longer than the lease; a second worker re-queues the request and starts a new run; the frozen
horse is then let go (SIGCONT). It must stop at its next check, write nothing to the record and
delete no source, while the new run imports every file exactly once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom import dcmread

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.config import InboxConfig
from flask_dicom_inbox.fanout import run_key
from flask_dicom_inbox.recovery import is_leased
from flask_dicom_inbox.storage import TEMP_PREFIX

from .conftest import auth, child_pids, process_alive, stop_workers, submit, wait_until

SETTINGS = {
    "DICOM_INBOX_LEASE_SECONDS": 2,
    "DICOM_INBOX_CHUNK_FILES": 10,
    "DICOM_INBOX_HELPER_JOBS": 0,  # one horse does every chunk: the one that is frozen
    "DICOM_INBOX_PROGRESS_EVERY": 1,
}
WORKER = [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker"]


@pytest.mark.slow
def test_a_horse_that_lost_its_lease_stops_and_leaves_the_request_to_the_new_run(
    app: Flask,
    client: FlaskClient,
    inbox: Path,
    state: InboxState,
    app_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    app.config.update(SETTINGS)
    state.config = InboxConfig.from_app(app)
    assert client.put("/xapi/anonymize/site/enabled", data="true", headers=auth()).status_code
    session = inbox / "test_proj" / "frozen"
    generated = write_session(session, series=3, files_per_series=80, rows=256, columns=256)
    originals = tmp_path / "originals"
    originals.mkdir()
    for path in generated.files:
        shutil.copy2(path, originals / path.name)
    response = submit(
        client, PROJECT_ID="test_proj", EXPT_LABEL="frozen", path=str(session),
        cleanupAfterImport="true",
    )  # fmt: skip
    assert response.status_code == 200
    rid = int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])
    env = {
        **os.environ,
        **{f"FLASK_{k}": str(v) for k, v in {**app_config, **SETTINGS}.items() if k != "TESTING"},
    }
    log_path = tmp_path / "workers.log"
    log = log_path.open("wb")
    quiet: dict[str, Any] = {"stdout": log, "stderr": subprocess.STDOUT}
    first = subprocess.Popen(WORKER, env=env, **quiet)
    second: subprocess.Popen[bytes] | None = None
    horses: list[int] = []
    try:

        def files_done() -> int:
            record = state.store.get(rid)
            return 0 if record is None else int(record.progress.get("filesImported", 0))

        wait_until(lambda: files_done() >= 20, 60, "the store phase to start", interval=0.001)
        horses = child_pids(first.pid)
        assert horses, "the import runs in a work-horse"
        for pid in horses:
            os.kill(pid, signal.SIGSTOP)
        old_run = state.redis.get(run_key(state.config.key_prefix, rid))
        assert old_run is not None
        record = state.store.get(rid)
        assert record is not None and not record.finished, "frozen mid-import"
        # The lease lapses; a second worker's recovery pass re-queues the request and runs it.
        second = subprocess.Popen(WORKER, env=env, **quiet)
        wait_until(
            lambda: state.redis.get(run_key(state.config.key_prefix, rid)) not in (None, old_run),
            60,
            "a new run of the request",
            interval=0.001,
        )
        for pid in horses:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        # The old run's job ends (its horse then waits for its worker's next job, or exits).
        wait_until(
            lambda: "lost its lease and stopped" in log_path.read_text(),
            30,
            "the old run to stop",
        )
        stopped_after = time.monotonic() - resumed
        wait_until(lambda: (state.store.get(rid) or record).finished, 120, "the new run")
    finally:
        for pid in horses:
            if process_alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        log.close()
        stop_workers(first, second)
    assert stopped_after < 10, "the old run stopped at its next check, not at its job timeout"
    assert "lost its lease and stopped" in log_path.read_text()
    final = client.get(f"/xapi/dicom/{rid}", headers=auth()).get_json()
    assert final["status"] == "Completed", (final["message"], final["errors"][:3])
    assert [h["status"] for h in final["history"]].count("Completed") == 1
    assert "Failed" not in [h["status"] for h in final["history"]]
    assert final["progress"]["filesImported"] == 240
    written = [p for p in state.config.prearchive_path.rglob("*") if p.is_file()]
    assert not [p for p in written if p.name.startswith(TEMP_PREFIX)], "no temporary file"
    assert len(written) == 240, "every source instance exactly once"
    uids = sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in written)
    assert uids == sorted(
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in originals.iterdir()
    )
    assert not [p for p in session.rglob("*") if p.is_file()], "sources deleted once stored"
    assert not is_leased(state, rid)
