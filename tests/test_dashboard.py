"""The example app's rq-dashboard at ``/rq``: admins only, import jobs readable there, and no
inbox-derived text in what it renders unescaped (job description and meta)."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.jobs import job_id_for

from .conftest import auth, run_worker, submit

HOSTILE_FOLDER = "<img src=x onerror=alert(1)>"
HOSTILE_PATIENT = '<script>alert("pn")</script>'
HOSTILE_FILE = "<svg onload=alert(2)>.txt"
# Pieces of each hostile string that survive any escaping (HTML entities, \\u003c in JSON).
MARKERS = ("onerror", "alert(", "onload", "img src", "<b>pid")


def _read(client: FlaskClient, url: str, user: str = "admin") -> tuple[int, str]:
    with client.get(url, headers=auth(user)) as response:
        return response.status_code, response.get_data(as_text=True)


def test_dashboard_is_for_admins_only(client: FlaskClient, state: InboxState) -> None:
    job_json = f"/rq/0/data/job/{job_id_for(state.config.key_prefix, 1)}.json"
    urls = ["/rq/", "/rq/0/data/queues.json", job_json, "/rq/static/favicon.ico"]
    for url in urls:
        with client.get(url) as anonymous:
            assert anonymous.status_code == 401, url
            assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        assert _read(client, url, "member")[0] == 403, url
        assert _read(client, url, "owner")[0] == 403, url
        with client.get(url, headers=auth("admin", "not-the-password")) as wrong:
            assert wrong.status_code == 401, url
    with client.post("/rq/queue/any/queued/empty", headers=auth("member")) as post:
        assert post.status_code == 403  # nor can a non-admin change anything
    status, html = _read(client, "/rq/")
    assert status == 200 and "RQ" in html


def test_admin_reads_the_queue_and_an_import_job(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "s01"
    write_session(folder, series=1, files_per_series=3, rows=8, columns=8)
    assert submit(client, "member", PROJECT_ID="test_proj", path=folder).status_code == 200
    job_id = job_id_for(state.config.key_prefix, 1)

    status, body = _read(client, "/rq/0/data/queues.json")
    assert status == 200
    queues = {q["name"]: q for q in json.loads(body)["queues"]}
    assert queues[state.config.queue]["count"] == 1

    run_worker(app)
    status, body = _read(client, f"/rq/0/data/job/{job_id}.json")
    assert status == 200
    job = json.loads(body)
    assert job["description"] == "DICOM inbox import request 1"
    assert job["status"] == "finished" and job["result"] == "Completed"
    meta = json.loads(job["metadata"])
    assert meta["request_id"] == 1
    assert meta["progress"]["filesFound"] == 3
    assert 0 < meta["progress"]["filesDone"] <= 3
    status, page = _read(client, f"/rq/0/view/job/{job_id}")
    assert status == 200 and job_id in page


def test_no_inbox_text_reaches_job_description_or_meta(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / HOSTILE_FOLDER
    write_session(
        folder,
        series=2,
        files_per_series=2,
        rows=8,
        columns=8,
        patient_name=HOSTILE_PATIENT,
        patient_id="<b>pid</b>",
    )
    (folder / HOSTILE_FILE).write_text("not DICOM")
    assert submit(client, "owner", PROJECT_ID="test_proj", path=folder).status_code == 200
    run_worker(app)

    # The hostile text is really in the request (so the checks below could find it) ...
    status, record = _read(client, "/xapi/dicom/1", "owner")
    assert status == 200 and json.loads(record)["status"] == "Completed"
    assert HOSTILE_FOLDER in record and HOSTILE_FILE in record
    # ... and in no job of the queue: the import job and any helper jobs it started.
    job_ids = set(FinishedJobRegistry(state.config.queue, connection=state.redis).get_job_ids())
    job_ids |= set(FailedJobRegistry(state.config.queue, connection=state.redis).get_job_ids())
    job_ids |= set(state.queue.get_job_ids())
    assert job_id_for(state.config.key_prefix, 1) in job_ids
    for job_id in sorted(job_ids):
        job = Job.fetch(job_id, connection=state.redis)
        stored = f"{job.description}\n{job.meta!r}\n{json.dumps(job.meta)}\n{job.return_value()!r}"
        for marker in MARKERS:
            assert marker not in stored, (job_id, marker, stored)
        for url in (f"/rq/0/data/job/{job_id}.json", f"/rq/0/view/job/{job_id}"):
            status, shown = _read(client, url)
            assert status == 200
            for marker in MARKERS:
                assert marker not in shown, (url, marker)
    status, listing = _read(client, f"/rq/0/data/jobs/{state.config.queue}/finished/50/asc/1.json")
    assert status == 200 and job_id_for(state.config.key_prefix, 1) in listing
    for marker in MARKERS:
        assert marker not in listing, marker
