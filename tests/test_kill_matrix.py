"""The SIGKILL matrix of issue 4: the worker process, and separately its work-horse, killed at a
seeded random moment of an import (walk, header reads, mid-copy, mid-move, during cleanup), 20
runs each. A new worker then finishes every request with nobody touching Redis: every source
instance is in the destination exactly once, byte-identical (or identically anonymized), no
temporary file is left, and with cleanup no source is deleted that is not stored."""

from __future__ import annotations

import os
import random
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

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.config import InboxConfig
from flask_dicom_inbox.dicom import encode_dataset, read_full
from flask_dicom_inbox.importer import FileStorer, ImportOptions, ProgressReporter
from flask_dicom_inbox.recovery import is_leased
from flask_dicom_inbox.storage import TEMP_PREFIX

from .conftest import auth, child_pids, process_alive, stop_workers, submit, wait_until

MODES = ("copy", "move", "anonymize+cleanup")
SETTINGS = {
    "DICOM_INBOX_LEASE_SECONDS": 2,
    "DICOM_INBOX_CHUNK_FILES": 20,
    "DICOM_INBOX_HELPER_JOBS": 1,
    "DICOM_INBOX_PROGRESS_EVERY": 5,
}
WORKER = [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker"]


def _expected_anonymized(state: InboxState, rid: int, originals: Path) -> list[bytes]:
    """What the engine must have written: each original through the request's own scripts."""
    record = state.store.get(rid)
    assert record is not None and record.sessions
    session = record.sessions[0]
    options = ImportOptions(
        project_id=record.project_id, subject_id=None, expt_label=session["label"],
        destination="prearchive", overwrite="none", rename=False, cleanup=True,
        keep_root=False, max_inflated_bytes=state.config.max_inflated_bytes, progress_every=10,
    )  # fmt: skip
    storer = FileStorer(
        options=options,
        anonymization=state.anonymization_steps(record),
        report=ProgressReporter(state.store, -1, 10**9),
    )
    item = {"label": session["label"], "subject": session["subject"]}
    expected = []
    for path in sorted(originals.iterdir()):  # a full pydicom read and write, never spliced
        ds = read_full(path)
        storer._anonymize(ds, storer.variables(item))
        expected.append(encode_dataset(ds))
    return sorted(expected)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["worker", "horse"])
@pytest.mark.parametrize("seed", range(20))
def test_sigkill_at_a_random_moment_loses_nothing(
    app: Flask,
    client: FlaskClient,
    inbox: Path,
    state: InboxState,
    app_config: dict[str, Any],
    tmp_path: Path,
    seed: int,
    target: str,
) -> None:
    rng = random.Random(f"{target}-{seed}")
    mode = MODES[seed % len(MODES)]
    app.config.update(SETTINGS)
    state.config = InboxConfig.from_app(app)
    anonymize = mode.startswith("anonymize")
    enabled = "true" if anonymize else "false"
    assert client.put("/xapi/anonymize/site/enabled", data=enabled, headers=auth()).status_code
    session = inbox / "test_proj" / f"kill-{target}-{seed}"
    generated = write_session(
        session, series=3, files_per_series=80, rows=256, columns=256, seed=seed, nested=True
    )
    originals = tmp_path / "originals"
    originals.mkdir()
    for path in generated.files:
        shutil.copy2(path, originals / path.name)
    cleanup = mode != "copy"
    response = submit(
        client, PROJECT_ID="test_proj", EXPT_LABEL=f"kill{seed}", path=str(session),
        cleanupAfterImport=str(cleanup).lower(),
    )  # fmt: skip
    assert response.status_code == 200
    rid = int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])
    env = {
        **os.environ,
        **{f"FLASK_{k}": str(v) for k, v in {**app_config, **SETTINGS}.items() if k != "TESTING"},
    }
    log = (tmp_path / "workers.log").open("wb")
    quiet = {"stdout": log, "stderr": subprocess.STDOUT}
    first = subprocess.Popen(WORKER, env=env, **quiet)  # type: ignore[call-overload]
    second = None
    orphans: list[int] = []
    try:
        _wait_until(
            lambda: is_leased(state, rid) or _finished(state, rid) or first.poll() is not None,
            60,
            "the import to start",
        )
        assert first.poll() is None, (tmp_path / "workers.log").read_text()[-2000:]
        point = rng.choice(["walk", "store", "store", "end"])
        if point == "store":  # mid-copy, mid-move or mid-anonymization, by the mode
            threshold = rng.randint(1, 120)
            _wait_until(lambda: _done(state, rid) >= threshold, 60, f"{threshold} files done")
        elif point == "end":  # all stored: cleanup, results, status
            _wait_until(lambda: _done(state, rid) >= 240 or _finished(state, rid), 60, "the end")
        time.sleep(rng.uniform(0.0, 0.02))
        finished_before_kill = _finished(state, rid)
        horses = child_pids(first.pid)
        if target == "horse":
            for pid in horses:
                os.kill(pid, signal.SIGKILL)
        else:
            orphans = horses  # the work-horse outlives its worker (RQ calls setpgrp)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        if point != "end":
            assert not finished_before_kill, f"killed during {point}, before the end"
        # A new worker, as an operator would start one: it recovers the request by itself.
        second = subprocess.Popen(WORKER, env=env, **quiet)  # type: ignore[call-overload]
        _wait_until(lambda: _finished(state, rid), 120, "the request to finish")
    finally:
        try:
            stop_workers(first, second)
        finally:
            for pid in orphans:
                _wait_until(lambda pid=pid: not process_alive(pid), 30, "the orphaned horse to end")
            log.close()
    final = client.get(f"/xapi/dicom/{rid}", headers=auth()).get_json()
    assert final["status"] == "Completed", (final["message"], final["errors"][:3], point)
    assert not final["errors"], final["errors"][:3]
    written = [p for p in state.config.prearchive_path.rglob("*") if p.is_file()]
    assert not [p for p in written if p.name.startswith(TEMP_PREFIX)], "no temporary file"
    assert not [p for p in session.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert len(written) == 240, "every source instance exactly once"
    if anonymize:
        assert sorted(p.read_bytes() for p in written) == _expected_anonymized(
            state, rid, originals
        ), "identically anonymized"
    else:
        assert sorted(p.name for p in written) == sorted(p.name for p in originals.iterdir())
        for path in written:
            assert path.read_bytes() == (originals / path.name).read_bytes(), path.name
    if cleanup:
        assert not [p for p in session.rglob("*") if p.is_file()], "sources deleted once stored"
    else:
        for path in generated.files:
            assert path.read_bytes() == (originals / path.name).read_bytes()


def _done(state: InboxState, rid: int) -> int:
    record = state.store.get(rid)
    return 0 if record is None else int(record.progress.get("filesDone", 0))


def _finished(state: InboxState, rid: int) -> bool:
    record = state.store.get(rid)
    return record is not None and record.finished


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    wait_until(predicate, timeout, what, interval=0.001)
