"""The seed's request end to end: submit over HTTP, a real RQ worker, files on disk, status."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.data import get_testdata_file

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.dicom import read_header
from flask_dicom_inbox.jobs import job_id_for
from flask_dicom_inbox.naming import template_file_name

from .conftest import auth, recorded_commands, run_worker, submit, tree

STATUS_FIELDS = {
    "id",
    "enabled",
    "created",
    "timestamp",
    "username",
    "sessionPath",
    "status",
    "cleanupAfterImport",
    "clenaupAfterImport",
    "resolution",
    "parameters",
    "progress",
    "sessions",
    "errors",
}
PROGRESS_FIELDS = {"filesFound", "filesDone", "filesImported", "filesSkipped", "bytesDone"}
SESSION_FIELDS = {"label", "subject", "studyInstanceUid", "destination", "url", "scans", "files"}


def _request_id(response) -> int:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == "text/uri-list"
    body = response.get_data(as_text=True)
    match = re.fullmatch(r"/xapi/dicom/(\d+)\r\n", body)
    assert match, repr(body)
    return int(match.group(1))


def _status(client: FlaskClient, request_id: int, user: str = "admin") -> dict:  # type: ignore[type-arg]
    response = client.get(f"/xapi/dicom/{request_id}", headers=auth(user))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def _pixels(path: Path) -> bytes:
    return pydicom.dcmread(path).PixelData  # type: ignore[no-any-return]


def test_seed_request_imports_into_prearchive(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    session = inbox / "test_proj" / "b" / "c"
    generated = write_session(session, series=2, files_per_series=4)
    rid = _request_id(
        submit(
            client,
            cleanupAfterImport="false",
            PROJECT_ID="test_proj",
            SUBJECT_ID="test_subj",
            EXPT_LABEL="test_exp",
            path=str(session),
        )
    )
    queued = _status(client, rid)
    assert queued["status"] == "Queued"
    assert run_worker(app) == 1
    status = _status(client, rid)
    assert STATUS_FIELDS <= status.keys()
    assert status["status"] == "Completed", status
    assert status["username"] == "admin"
    assert status["sessionPath"] == str(session)
    assert status["cleanupAfterImport"] is False and status["clenaupAfterImport"] is False
    assert status["enabled"] is True
    assert status["created"] <= status["timestamp"]
    assert status["created"] > 1_700_000_000_000  # epoch milliseconds
    assert status["parameters"]["PROJECT_ID"] == "test_proj"
    assert status["parameters"]["cleanupAfterImport"] == "false"
    assert status["parameters"]["overrideExceptions"] == "false"
    assert status["parameters"]["allowSessionMerge"] == "false"
    assert all(isinstance(v, str) for v in status["parameters"].values())
    assert PROGRESS_FIELDS == status["progress"].keys()
    assert status["progress"]["filesFound"] == 8
    assert status["progress"]["filesDone"] == 8
    assert status["progress"]["filesImported"] == 8
    assert status["progress"]["filesSkipped"] == 0
    assert status["progress"]["bytesDone"] >= sum(p.stat().st_size for p in generated.files)
    assert [h["status"] for h in status["history"]] == [
        "Queued",
        "Accepted",
        "Importing",
        "Completed",
    ]
    assert status["errors"] == []
    [sess] = status["sessions"]
    assert SESSION_FIELDS == sess.keys()
    assert (sess["label"], sess["subject"], sess["destination"]) == (
        "test_exp",
        "test_subj",
        "prearchive",
    )
    assert sess["studyInstanceUid"] == generated.study_instance_uid
    assert (sess["scans"], sess["files"]) == (2, 8)
    match = re.fullmatch(
        r"/prearchive/projects/test_proj/(\d{8}_\d{9})/test_exp", status["resolution"]
    )
    assert match, status["resolution"]
    assert sess["url"] == status["resolution"]
    session_dir = state.config.prearchive_path / "test_proj" / match.group(1) / "test_exp"
    for source in generated.files:
        series = int(source.name[2:5])
        target = session_dir / "SCANS" / str(series) / "DICOM" / source.name
        assert target.is_file(), target
        assert _pixels(target) == _pixels(source)
        out = pydicom.dcmread(target)
        assert out.SOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID
    assert sorted(p.name for p in (session_dir / "SCANS").iterdir()) == ["1", "2"]
    assert all(p.is_file() for p in generated.files), "copy mode must keep the sources"
    assert not list(state.config.prearchive_path.rglob(".dicom-inbox-tmp-*"))


def test_the_folders_the_plan_makes_are_synced_with_their_filesystem_before_any_file_is_named(
    app: Flask,
    client: FlaskClient,
    inbox: Path,
    state: InboxState,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan's new folders are not fsync'd one by one: the store's first sync of the
    destination filesystem (syncfs) comes after every folder is made and before the first
    file is named in them, and makes the folders durable with the files."""
    import flask_dicom_inbox.importer as importer

    session = inbox / "test_proj" / "durable"
    write_session(session, series=3, files_per_series=2)
    prearchive = Path(state.config.prearchive_path)
    # (folder synced, files named under the prearchive then, scan folders made by then)
    synced: list[tuple[Path, int, int]] = []
    dir_syncs: list[Path] = []

    def recorded_sync_filesystem(path: Path) -> None:
        named = sum(1 for p in prearchive.rglob("*.dcm"))
        scans = sum(1 for p in prearchive.glob("test_proj/*/durable/SCANS/*/DICOM"))
        synced.append((Path(path), named, scans))
        importer_sync_filesystem(path)

    def recorded_fsync_dir(path: Path) -> None:
        dir_syncs.append(Path(path))
        importer_fsync_dir(path)

    importer_sync_filesystem = importer.sync_filesystem
    importer_fsync_dir = importer.fsync_dir
    monkeypatch.setattr(importer, "sync_filesystem", recorded_sync_filesystem)
    monkeypatch.setattr(importer, "fsync_dir", recorded_fsync_dir)
    rid = _request_id(
        submit(
            client, PROJECT_ID="test_proj", SUBJECT_ID="s", EXPT_LABEL="durable", path=str(session)
        )
    )
    run_worker(app)
    assert _status(client, rid)["status"] == "Completed"
    (folder,) = prearchive.glob("test_proj/*/durable")
    scans = sorted((folder / "SCANS").iterdir())
    assert len(scans) == 3 and all(len(list((s / "DICOM").iterdir())) == 2 for s in scans)
    first_path, named, made = synced[0]
    assert first_path.is_relative_to(folder), "the destination's filesystem is synced"
    assert (named, made) == (0, 3), "after every folder is made, before any file is named"
    # The folders' parents are not fsync'd by the plan; only each scan's file folder, once
    # its files are named (a chunk's last step).
    assert set(dir_syncs) == {s / "DICOM" for s in scans}


def test_progress_writes_read_the_counters_and_never_the_errors_so_far(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    """300 non-DICOM files beside a session, a progress write every file: the job's progress
    meta comes from the counters (re-reading every error at each write made the import
    quadratic in its errors: 20,000 non-DICOM files took 13 s, not 3)."""
    app.config["DICOM_INBOX_PROGRESS_EVERY"] = 1
    session = inbox / "test_proj" / "noisy"
    write_session(session, series=1, files_per_series=2)
    for i in range(300):
        (session / f"notes-{i}.txt").write_text("not DICOM")
    rid = _request_id(submit(client, PROJECT_ID="test_proj", path=str(session)))
    errors_key = f"{state.config.key_prefix}request:{rid}:errors"
    with recorded_commands(state.redis) as commands:
        run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed"
    assert status["progress"]["filesSkipped"] == 300 and len(status["errors"]) == 300
    reads = [c for c in commands if c[0] == "LRANGE" and c[1:] == (errors_key,)]
    # Only where a job reads its whole record: the coordinator twice, each helper once.
    assert len(reads) <= 5, f"the errors were read {len(reads)} times"
    job = state.job_class.fetch(job_id_for(state.config.key_prefix, rid), connection=state.redis)
    assert job.meta["progress"]["filesSkipped"] == 300


def test_auto_archive_project_imports_into_archive(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    session = inbox / "auto_proj" / "visit1"
    generated = write_session(session, series=1, files_per_series=3)
    rid = _request_id(
        submit(client, PROJECT_ID="auto_proj", SUBJECT_ID="s1", EXPT_LABEL="e1", path=str(session))
    )
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    assert status["resolution"] == "/archive/projects/auto_proj/subjects/s1/experiments/e1"
    assert status["sessions"][0]["destination"] == "archive"
    scan_dir = state.config.archive_path / "auto_proj" / "arc001" / "e1" / "SCANS" / "1" / "DICOM"
    assert sorted(p.name for p in scan_dir.iterdir()) == sorted(p.name for p in generated.files)
    assert not (state.config.prearchive_path / "auto_proj").exists()
    # The label now exists in the archive: a second import with overwrite=none is refused.
    again = submit(
        client, PROJECT_ID="auto_proj", SUBJECT_ID="s1", EXPT_LABEL="e1", path=str(session)
    )
    assert again.status_code == 409
    assert "already holds session 'e1'" in again.get_json()["message"]


def test_aa_parameter_overrides_project_setting(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    session = inbox / "test_proj" / "aa"
    write_session(session, series=1, files_per_series=2)
    rid = _request_id(
        submit(client, PROJECT_ID="test_proj", EXPT_LABEL="aa1", AA="true", path=str(session))
    )
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed"
    assert (
        state.config.archive_path / "test_proj" / "arc001" / "aa1" / "SCANS" / "1" / "DICOM"
    ).is_dir()


def test_cleanup_removes_imported_sources_and_keeps_other_files(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    session = inbox / "test_proj" / "cleanme"
    generated = write_session(session, series=2, files_per_series=3)
    (session / "series001" / "notes.txt").write_text("scanner notes, not DICOM")
    originals = {p.name: _pixels(p) for p in generated.files}
    rid = _request_id(
        submit(
            client,
            PROJECT_ID="test_proj",
            EXPT_LABEL="clean1",
            cleanupAfterImport="true",
            path=str(session),
        )
    )
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    assert status["cleanupAfterImport"] is True and status["clenaupAfterImport"] is True
    assert not any(p.exists() for p in generated.files)
    assert (session / "series001" / "notes.txt").read_text() == "scanner notes, not DICOM"
    assert not (session / "series002").exists(), "emptied folders are removed"
    assert status["errors"] == [{"path": "series001/notes.txt", "reason": "not a DICOM file"}]
    assert status["progress"]["filesSkipped"] == 1
    imported = {p.name: _pixels(p) for p in state.config.prearchive_path.rglob("*.dcm")}
    assert imported == originals


def test_several_studies_without_label_make_several_sessions(
    app: Flask, client: FlaskClient, inbox: Path
) -> None:
    folder = inbox / "test_proj" / "multi"
    a = write_session(folder / "a", series=1, files_per_series=2, seed=1, patient_id="PA")
    b = write_session(folder / "b", series=2, files_per_series=2, seed=2, patient_id="PB")
    rid = _request_id(submit(client, PROJECT_ID="test_proj", path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    by_uid = {s["studyInstanceUid"]: s for s in status["sessions"]}
    assert by_uid.keys() == {a.study_instance_uid, b.study_instance_uid}
    assert by_uid[a.study_instance_uid]["label"] == "PA"
    assert by_uid[b.study_instance_uid]["label"] == "PB"
    assert by_uid[b.study_instance_uid]["scans"] == 2


def test_several_studies_with_label_fail_and_write_nothing(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "multi2"
    write_session(folder / "a", series=1, files_per_series=2, seed=3)
    write_session(folder / "b", series=1, files_per_series=2, seed=4)
    before = tree(folder)
    rid = _request_id(
        submit(
            client,
            PROJECT_ID="test_proj",
            EXPT_LABEL="one",
            cleanupAfterImport="true",
            path=str(folder),
        )
    )
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Failed"
    assert "2 studies" in status["message"] and "EXPT_LABEL" in status["message"]
    assert tree(state.config.prearchive_path) == {}
    assert tree(state.config.archive_path) == {}
    assert tree(folder) == before


def test_series_sharing_a_number_get_distinct_scan_folders(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "samenum"
    first = write_session(folder / "x", series=1, files_per_series=2, seed=5)
    # Same study, another series that also calls itself number 1.
    second = write_session(folder / "y", series=1, files_per_series=2, seed=6)
    for path in second.files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = first.study_instance_uid
        ds.save_as(path, enforce_file_format=True)
    rid = _request_id(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="same", path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    assert status["sessions"][0]["scans"] == 2
    scans = sorted(p.name for p in state.config.prearchive_path.rglob("SCANS/*"))
    assert scans == ["1", "1-2"]


def test_duplicate_instances_are_kept_once_and_reported(
    app: Flask, client: FlaskClient, inbox: Path
) -> None:
    folder = inbox / "test_proj" / "dups"
    generated = write_session(folder, series=1, files_per_series=2, nested=False)
    shutil.copy(generated.files[0], folder / "copy_of_first.dcm")
    rid = _request_id(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="dups", path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["progress"]["filesImported"] == 2
    assert status["progress"]["filesSkipped"] == 1
    [error] = status["errors"]
    # Walk order decides which copy is "the" instance: upper case sorts before lower case.
    assert error["path"] == "copy_of_first.dcm"
    first = generated.files[0].name
    assert f"duplicate SOPInstanceUID (same instance as {first})" in error["reason"]


def test_files_of_one_series_sharing_a_name_get_template_names(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    """Two files of one series named alike (in two sub-folders) cannot both keep the name:
    both take XNAT's template name; a file whose name is its own keeps it."""
    folder = inbox / "test_proj" / "alike"
    generated = write_session(folder / "a", series=1, files_per_series=3, nested=False)
    one, two, three = generated.files
    (folder / "b").mkdir()
    two.rename(folder / "b" / one.name)
    rid = _request_id(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="alike", path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    assert status["progress"]["filesImported"] == 3
    names = sorted(p.name for p in state.config.prearchive_path.rglob("*.dcm"))
    assert three.name in names
    templated = sorted(n for n in names if n != three.name)
    uid = re.escape(generated.study_instance_uid)
    assert [re.fullmatch(uid + r"-1-([12])-[0-9a-z]+\.dcm", n) is not None for n in templated] == [
        True,
        True,
    ], names
    assert len(set(templated)) == 2


def test_rename_names_files_by_xnat_template(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "ren"
    generated = write_session(folder, series=1, files_per_series=2)
    rid = _request_id(
        submit(client, PROJECT_ID="test_proj", EXPT_LABEL="ren", rename="true", path=str(folder))
    )
    run_worker(app)
    assert _status(client, rid)["status"] == "Completed"
    names = sorted(p.name for p in state.config.prearchive_path.rglob("*.dcm"))
    uid = generated.study_instance_uid
    assert len(names) == 2
    for name in names:
        assert re.fullmatch(re.escape(uid) + r"-1-[12]-[0-9a-z]+\.dcm", name), name


def test_a_file_named_like_another_s_template_name_keeps_its_own(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    """Two files sharing a name take template names; a third file whose own name is the
    first one's template keeps it, and the first takes the next free name."""
    folder = inbox / "test_proj" / "clash"
    generated = write_session(folder / "a", series=1, files_per_series=3, nested=False)
    one, two, three = generated.files
    (folder / "b").mkdir()
    two.rename(folder / "b" / one.name)
    template = template_file_name(read_header(one, max_inflated_bytes=1 << 20))
    (folder / "c").mkdir()
    three.rename(folder / "c" / template)
    # Without anonymization the coordinator names the files (with it, each chunk's worker
    # names them from the written header, and such a clash fails that one file).
    rid = _request_id(
        submit(client, PROJECT_ID="test_proj", EXPT_LABEL="clash", prevent_anon="true",
               path=str(folder))
    )  # fmt: skip
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    assert status["errors"] == []
    assert status["progress"]["filesImported"] == 3
    names = sorted(p.name for p in state.config.prearchive_path.rglob("*.dcm"))
    assert template in names and f"2-{template}" in names, names


def test_names_that_are_not_utf8_are_reported_and_skipped(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    """os.walk gives such names as surrogates, which neither the file records nor Redis can
    hold: each is reported with its odd bytes shown, the rest of the folder is imported."""
    folder = inbox / "test_proj" / "latin1"
    generated = write_session(folder, series=1, files_per_series=3, nested=False)
    raw = os.fsencode(folder)
    os.rename(generated.files[0], raw + b"/caf\xe9.dcm")
    os.mkdir(raw + b"/s\xe9rie")
    os.rename(generated.files[1], raw + b"/s\xe9rie/IM1.dcm")
    rid = _request_id(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="latin1", path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    assert status["progress"]["filesImported"] == 1
    reasons = {e["path"]: e["reason"] for e in status["errors"]}
    assert set(reasons) == {"caf\\xe9.dcm", "s\\xe9rie"}, reasons
    assert all("not valid UTF-8" in reason for reason in reasons.values())


BUNDLED = {
    "MR_small_implicit.dcm": "implicit VR (same instance as RLE: a duplicate)",
    "MR_small_bigendian.dcm": "big endian (same instance as RLE: a duplicate)",
    "image_dfl.dcm": "deflated",
    "JPEG2000.dcm": "JPEG 2000",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG baseline",
    "MR_small_RLE.dcm": "RLE",
    "emri_small.dcm": "multi-frame",
    "ExplVR_BigEndNoMeta.dcm": "no preamble, no file meta",
    "CT_small.dcm": "explicit VR CT",
    "rtplan.dcm": "RT plan, nested sequences",
    "DICOMDIR": "DICOMDIR",
    "no_meta.dcm": "junk",
}


def test_pydicom_real_world_files_in_one_folder(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "realworld"
    folder.mkdir(parents=True)
    for name in BUNDLED:
        source = get_testdata_file(name, download=False)
        assert source, f"pydicom's bundled {name} is missing"
        shutil.copy(source, folder / name)
    (folder / "readme.txt").write_text("not DICOM\n")
    rid = _request_id(submit(client, PROJECT_ID="test_proj", SUBJECT_ID="rw", path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    reasons = {e["path"]: e["reason"] for e in status["errors"]}
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert reasons["no_meta.dcm"].startswith(("not a DICOM file", "DICOM file lacks"))
    assert reasons["readme.txt"] == "not a DICOM file"
    # Three encodings of one MR instance: the first in name order is kept, two are duplicates.
    mr_variants = ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]
    assert mr_variants[0] not in reasons
    for name in mr_variants[1:]:
        assert "duplicate SOPInstanceUID" in reasons[name]
    expected_imported = {
        "MR_small_RLE.dcm",
        "image_dfl.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "emri_small.dcm",
        "ExplVR_BigEndNoMeta.dcm",
        "CT_small.dcm",
        "rtplan.dcm",
    }
    assert reasons.keys().isdisjoint(expected_imported)
    written = {p.name: p for p in state.config.prearchive_path.rglob("*") if p.is_file()}
    assert expected_imported <= written.keys()
    for name in expected_imported:
        out = pydicom.dcmread(written[name], force=True)
        src = pydicom.dcmread(folder / name, force=True)
        assert out.SOPInstanceUID == src.SOPInstanceUID
        if "PixelData" in src:
            assert out.PixelData == src.PixelData, name
    assert status["progress"]["filesFound"] == len(BUNDLED) + 1
    assert status["progress"]["filesImported"] == len(expected_imported)
    assert status["progress"]["filesDone"] == len(BUNDLED) + 1


def test_real_forking_worker_started_by_the_flask_command(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState, app_config: dict[str, object]
) -> None:
    """``flask --app example_app dicom-inbox worker --burst`` as its own process."""
    session = inbox / "test_proj" / "forked"
    write_session(session, series=1, files_per_series=3)
    rid = _request_id(
        submit(client, PROJECT_ID="test_proj", EXPT_LABEL="forked", path=str(session))
    )
    env = {**os.environ, **{f"FLASK_{k}": str(v) for k, v in app_config.items() if k != "TESTING"}}
    proc = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    status = _status(client, rid)
    assert status["status"] == "Completed", (status, proc.stderr[-2000:])
    assert status["sessions"][0]["files"] == 3
    # The worker's log says where the import spent its time (INFO), not per chunk (DEBUG).
    assert re.search(
        rf"dicom-inbox: request {rid}, 3 files: walk [0-9]+\.[0-9] ms, headers [0-9]+\.[0-9] ms",
        proc.stderr,
    )
    assert "store" in proc.stderr and "dicom-inbox: stored 3 files" not in proc.stderr


def test_job_is_readable_in_rq_without_inbox_text(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    session = inbox / "test_proj" / "<script>alert(1)</script>"
    write_session(session, series=1, files_per_series=2, patient_name="Evil^<b>x</b>")
    rid = _request_id(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="rq1", path=str(session)))
    [job] = state.queue.get_jobs()
    assert job.description == f"DICOM inbox import request {rid}"
    run_worker(app)
    job.refresh()
    assert job.meta["request_id"] == rid
    assert job.meta["progress"]["filesImported"] == 2
    text = repr(job.description) + repr(job.meta) + repr(job.args) + repr(job.kwargs)
    assert "script" not in text and "Evil" not in text and "<" not in text


def test_status_moves_through_importing_with_progress(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    """Watched from a second connection while the worker runs, the counts rise."""
    session = inbox / "test_proj" / "watch"
    write_session(session, series=4, files_per_series=60, rows=128, columns=128)
    rid = _request_id(submit(client, PROJECT_ID="test_proj", EXPT_LABEL="watch", path=str(session)))
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def poll() -> None:  # a second connection, as a status client would be
        while not stop.is_set():
            record = state.store.get(rid)
            assert record is not None
            seen.append((record.status, record.progress["filesDone"]))
            time.sleep(0.002)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        run_worker(app)  # RQ's worker needs the main thread (signals)
    finally:
        stop.set()
        poller.join(10)
    final = _status(client, rid)
    assert final["status"] == "Completed"
    assert final["progress"]["filesDone"] == 240
    partial = [done for status, done in seen if status == "Importing" and 0 < done < 240]
    assert partial, f"no intermediate progress observed in {len(seen)} polls"
    assert partial == sorted(partial)
