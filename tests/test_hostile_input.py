"""Hostile and bad input (issue 4): paths, labels, header values and DICOM files built to hurt.

Each test asserts the status code or the recorded error, and that nothing was written to the
prearchive or archive and nothing deleted from the inbox (trees compared before and after).
Cases already covered elsewhere are listed in ``docs/guarantees.md`` and not repeated here.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID as UID_
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian

from example_app.demo import make_dataset, write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.storage import TEMP_PREFIX

from .conftest import auth, run_worker, submit, tree

UID = "1.2.826.0.1.3680043.10.1457.77"
SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_.-]+$")


# -- helpers ----------------------------------------------------------------------------------
def _snapshot(state: InboxState) -> dict[str, Any]:
    cfg = state.config
    return {
        "inbox": tree(cfg.inbox_path),
        "prearchive": tree(cfg.prearchive_path),
        "archive": tree(cfg.archive_path),
    }


def _refused(
    client: FlaskClient, state: InboxState, code: int, *, url: str | None = None, **params: Any
) -> dict[str, Any]:
    """Submit (``params`` or a raw ``url``); assert ``code``, the JSON shape and no change."""
    before = {**_snapshot(state), "records": state.store.ids(), "queued": len(state.queue)}
    if url is not None:
        response = client.post(url, headers=auth(params.pop("user", "admin")))
    else:
        response = submit(client, **params)
    assert response.status_code == code, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code and body["message"]
    after = {**_snapshot(state), "records": state.store.ids(), "queued": len(state.queue)}
    assert after == before, "a refused call must change nothing"
    return body  # type: ignore[no-any-return]


def _rid(response: Any) -> int:
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_data(as_text=True).strip().rsplit("/", 1)[1])


def _status(client: FlaskClient, rid: int) -> dict[str, Any]:
    response = client.get(f"/xapi/dicom/{rid}", headers=auth())
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def _files(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {k: {p: b for p, b in v.items() if not p.endswith("/")} for k, v in snapshot.items()}


def _import_and_expect_nothing_written(
    app: Flask, client: FlaskClient, state: InboxState, folder: Path, **params: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Import ``folder`` with cleanup on; assert it failed and no file changed anywhere.

    Returns the status and the snapshot from before, for :func:`_assert_no_new_folders`.
    """
    before = _snapshot(state)
    rid = _rid(
        submit(
            client, PROJECT_ID="test_proj", cleanupAfterImport="true", path=str(folder), **params
        )
    )
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Failed", status
    assert status["progress"]["filesImported"] == 0
    assert _files(_snapshot(state)) == _files(before), "no file written, none deleted"
    return status, before


def _assert_no_new_folders(state: InboxState, before: dict[str, Any]) -> None:
    assert _snapshot(state) == before, "a failed request leaves no (empty) folders behind"


def _dataset(**changes: Any) -> Dataset:
    ds = make_dataset(
        study_uid=UID + ".1", series_uid=UID + ".2", sop_uid=UID + ".3", series_number=1,
        instance_number=1,
    )  # fmt: skip
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- paths ------------------------------------------------------------------------------------
@pytest.fixture
def session(inbox: Path) -> Path:
    folder = inbox / "test_proj" / "b" / "c"
    write_session(folder, series=1, files_per_series=2)
    return folder


def _raw_url(path: str, project: str = "test_proj") -> str:
    """A submit URL whose ``path`` is put in the query string as given (already encoded)."""
    return f"/data/services/import?import-handler=inbox&PROJECT_ID={project}&path={path}"


def test_percent_encoded_dot_dot_is_decoded_then_refused(
    client: FlaskClient, state: InboxState, inbox: Path, session: Path
) -> None:
    escape = quote(str(inbox / "test_proj"), safe="/") + "/%2e%2e/%2E%2E/%2e%2e/etc"
    body = _refused(client, state, 400, url=_raw_url(escape))
    assert "is not inside a project folder" in body["message"]
    # Double-encoded: arrives as the literal name '%2e%2e', which is no folder.
    literal = quote(str(inbox / "test_proj"), safe="/") + "/%252e%252e/%252e%252e"
    body = _refused(client, state, 400, url=_raw_url(literal))
    assert "does not exist" in body["message"]


def test_dot_dot_into_another_projects_folder_is_403(
    client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    write_session(inbox / "other_proj" / "x", series=1, files_per_series=1)
    sneaky = f"{inbox}/test_proj/%2e%2e/other_proj/x"
    body = _refused(client, state, 403, url=_raw_url(sneaky), user="member")
    assert "cannot edit project 'other_proj'" in body["message"]


def test_double_slashes_are_normalised_and_cannot_dodge_the_overlap_check(
    client: FlaskClient, state: InboxState, inbox: Path, session: Path
) -> None:
    doubled = "/" + str(session).replace("/", "//")
    rid = _rid(submit(client, PROJECT_ID="test_proj", path=doubled))
    assert _status(client, rid)["sessionPath"] == str(session), "stored normalised"
    body = _refused(client, state, 409, PROJECT_ID="test_proj", path=str(session))
    assert f"request {rid}" in body["message"]
    body = _refused(client, state, 400, PROJECT_ID="test_proj", path=f"{inbox}//..//etc")
    assert "is not inside a project folder" in body["message"]


def test_symlink_into_another_projects_folder_is_403(
    client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    write_session(inbox / "other_proj" / "x", series=1, files_per_series=1)
    os.symlink(inbox / "other_proj" / "x", inbox / "test_proj" / "looks_mine")
    body = _refused(
        client, state, 403, user="member", PROJECT_ID="test_proj",
        path=str(inbox / "test_proj" / "looks_mine"),
    )  # fmt: skip
    assert "cannot edit project 'other_proj'" in body["message"]


@pytest.mark.parametrize(
    ("make_path", "fragment"),
    [
        (lambda s: str(s) + "/" + "a" * 300, "File name too long"),  # over NAME_MAX
        (lambda s: str(s) + "/x" * 2100, "longer than 4096"),
        (lambda s: str(s) + "/" + "/".join(["d" * 250] * 17), "longer than 4096"),
    ],
    ids=["component-300", "path-4200", "path-17x250"],
)
def test_over_long_paths_are_400(
    client: FlaskClient, state: InboxState, session: Path, make_path: Any, fragment: str
) -> None:
    body = _refused(client, state, 400, PROJECT_ID="test_proj", path=make_path(session))
    assert fragment in body["message"]
    assert "path" in body["errors"]


def test_folder_swapped_for_an_outside_symlink_after_submit_fails_at_job_time(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, tmp_path: Path
) -> None:
    folder = inbox / "test_proj" / "swap"
    write_session(folder, series=1, files_per_series=2)
    outside = tmp_path / "secret"
    write_session(outside, series=1, files_per_series=2, seed=9)
    outside_before = tree(outside)
    rid = _rid(submit(client, PROJECT_ID="test_proj", cleanupAfterImport="true", path=str(folder)))
    folder.rename(inbox / "test_proj" / "swapped_away")
    os.symlink(outside, folder)
    before = _snapshot(state)
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Failed"
    assert "not inside a project folder" in status["message"] or "changed" in status["message"]
    assert _snapshot(state) == before
    assert tree(outside) == outside_before


def test_symlinks_devices_and_fifos_inside_the_folder_are_skipped_and_listed(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, tmp_path: Path
) -> None:
    folder = inbox / "test_proj" / "specials"
    folder.mkdir()
    (folder / "notes.txt").write_text("not DICOM")
    outside = tmp_path / "outside"
    generated = write_session(outside, series=1, files_per_series=2, seed=3)
    os.symlink(outside, folder / "dir_link")
    os.symlink(generated.files[0], folder / "file_link.dcm")
    os.mkfifo(folder / "pipe.dcm")
    os.mknod(folder / "null.dcm", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    outside_before = tree(outside)
    status, before = _import_and_expect_nothing_written(app, client, state, folder)
    _assert_no_new_folders(state, before)
    reasons = {e["path"]: e["reason"] for e in status["errors"]}
    assert "symbolic link" in reasons["dir_link"]
    assert "symbolic link" in reasons["file_link.dcm"]
    assert "not a regular file" in reasons["pipe.dcm"]
    assert "not a regular file" in reasons["null.dcm"]
    assert reasons["notes.txt"] == "not a DICOM file"
    assert tree(outside) == outside_before
    assert stat.S_ISFIFO(os.lstat(folder / "pipe.dcm").st_mode)
    assert stat.S_ISCHR(os.lstat(folder / "null.dcm").st_mode)


# -- labels -----------------------------------------------------------------------------------
# test_submit.py covers SUBJECT_ID 'bad/label', EXPT_LABEL of 65 characters and 'has space'.
_BAD_LABELS = [
    "..", ".", "../x", "a/b", "/etc", "a b", "caf\u00e9", "\u0445\u0435\u043b\u043b\u043e",
    "x" * 65, "a\\b", "a\tb",
]  # fmt: skip
_COVERED = {("SUBJECT_ID", "a/b"), ("EXPT_LABEL", "x" * 65), ("EXPT_LABEL", "a b")}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (f, v)
        for f in ("EXPT_LABEL", "SUBJECT_ID", "VISIT", "session", "PROJECT_ID")
        for v in _BAD_LABELS
        if (f, v) not in _COVERED
    ],
)
def test_bad_labels_are_400(
    client: FlaskClient, state: InboxState, session: Path, field: str, value: str
) -> None:
    params = {"PROJECT_ID": "test_proj", "path": str(session), field: value}
    body = _refused(client, state, 400, **params)
    named = "EXPT_LABEL" if field == "session" else field
    assert named in body["errors"], body


# -- header values near paths -----------------------------------------------------------------
@pytest.mark.parametrize("rename", ["false", "true"])
def test_hostile_header_values_never_reach_a_path(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, tmp_path: Path, rename: str
) -> None:
    folder = inbox / "test_proj" / "evil_headers"
    folder.mkdir()
    with pydicom.config.disable_value_validation():
        for n, (sop, series, patient) in enumerate(
            [
                ("/etc/x", "../../x", "../../evil"),
                ("../../../y", "/tmp/z", "/etc"),
                ("..", "..", ".."),
            ]
        ):
            ds = _dataset(SOPInstanceUID=sop, StudyInstanceUID="../../study", PatientID=patient)
            ds.file_meta.MediaStorageSOPInstanceUID = UID_(sop)
            ds.SeriesInstanceUID = f"{UID}.{n}"
            del ds.SeriesNumber
            ds.add_new(0x00200011, "LO", series)  # SeriesNumber, as text an IS cannot hold
            (folder / f"f{n}.dcm").write_bytes(_bytes(ds))
    around = sorted(p.name for p in tmp_path.iterdir())
    inbox_before = tree(inbox)
    rid = _rid(submit(client, PROJECT_ID="test_proj", rename=rename, path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", (status["message"], status["errors"])
    assert status["progress"]["filesImported"] == 3
    assert tree(inbox) == inbox_before
    assert sorted(p.name for p in tmp_path.iterdir()) == around, "nothing written beside"
    assert not Path("/etc/x").exists() and not Path("/tmp/z").exists()
    written = [p for p in state.config.prearchive_path.rglob("*") if p.is_file()]
    assert len(written) == 3
    for path in written:
        parts = path.relative_to(state.config.prearchive_path).parts
        assert len(parts) == 7 and parts[0] == "test_proj" and parts[3:6:2] == ("SCANS", "DICOM")
        for part in parts:
            assert SAFE_COMPONENT.match(part) and part.strip("."), parts
    assert state.config.archive_path.exists() and tree(state.config.archive_path) == {}


# -- DICOM files ------------------------------------------------------------------------------
def _lying_private_element() -> bytes:
    """A valid file whose private element claims ~4 GiB but holds 16 bytes."""
    ds = _dataset()
    ds.add_new(0x00091010, "LO", "PRIVATE_CREATOR")  # (0009,0010) creator would be 0x0010
    data = bytearray(_bytes(ds))
    marker = struct.pack("<HH", 0x0009, 0x1010) + b"LO"
    at = bytes(data).index(marker)
    # Replace the element with an OB one (4-byte length) declaring 0xFFFFFFF0 bytes.
    old_len = struct.unpack("<H", data[at + 6 : at + 8])[0]
    new = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 0xFFFFFFF0) + b"\xab" * 16
    data[at : at + 8 + old_len] = new
    return bytes(data)


def _garbage_with_dicm() -> bytes:
    rng = random.Random(4)
    return rng.randbytes(128) + b"DICM" + rng.randbytes(8192)


HOSTILE_FILES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "zero-byte": (lambda: b"", ("empty file",)),
    "truncated-header": (lambda: _bytes(_dataset())[:300], ("not a DICOM", "unreadable", "lacks")),
    "truncated-pixels": (lambda: _bytes(_dataset())[:-2000], ("pixel data is truncated",)),
    "garbage-dicm": (_garbage_with_dicm, ("not a DICOM", "unreadable")),
    "no-sop-instance-uid": (lambda: _bytes(_dataset(SOPInstanceUID=None)), ("lacks",)),
    "no-sop-class-uid": (lambda: _bytes(_dataset(SOPClassUID=None)), ("lacks",)),
    "lying-private-length": (_lying_private_element, ("truncated: element (0009,1010)",)),
}


@pytest.mark.parametrize(
    "case",
    [c for c in HOSTILE_FILES],
)
def test_hostile_dicom_file_is_skipped_with_its_reason(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path, case: str
) -> None:
    make, fragments = HOSTILE_FILES[case]
    folder = inbox / "test_proj" / case
    folder.mkdir()
    (folder / "hostile.dcm").write_bytes(make())
    status, before = _import_and_expect_nothing_written(app, client, state, folder)
    [error] = status["errors"]
    assert error["path"] == "hostile.dcm"
    assert any(f in error["reason"] for f in fragments), error
    assert "no file could be imported" in status["message"]
    _assert_no_new_folders(state, before)


def test_missing_study_and_series_uids_import_without_a_crash(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    folder = inbox / "test_proj" / "no_study"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(_bytes(_dataset(StudyInstanceUID=None, SeriesInstanceUID=None)))
    rid = _rid(submit(client, PROJECT_ID="test_proj", path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    assert status["progress"]["filesImported"] == 1
    [written] = [p for p in state.config.prearchive_path.rglob("*") if p.is_file()]
    assert pydicom.dcmread(written).SOPInstanceUID == UID + ".3"


def test_huge_private_element_is_imported_intact(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    folder = inbox / "test_proj" / "big_private"
    folder.mkdir()
    ds = _dataset()
    ds.add_new(0x00090010, "LO", "HOSTILE")
    blob = random.Random(1).randbytes(24 * 2**20)
    ds.add_new(0x00091001, "OB", blob)
    (folder / "big.dcm").write_bytes(_bytes(ds))
    rid = _rid(submit(client, PROJECT_ID="test_proj", path=str(folder)))
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    [written] = [p for p in state.config.prearchive_path.rglob("*") if p.is_file()]
    assert pydicom.dcmread(written)[0x00091001].value == blob


def _deflate_bomb(path: Path, *, inflated_mb: int) -> Path:
    """A Part 10 file, deflated transfer syntax, whose body inflates to ``inflated_mb`` MiB."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID_(UID + ".9")
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = UID + ".9"
    ds.StudyInstanceUID = UID + ".1"
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = False
    write_dataset(body, ds)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_mb * 2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(2**20)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + head.getvalue())
        out.write(compressor.compress(body.getvalue() + pixel_header))
        for _ in range(inflated_mb):
            out.write(compressor.compress(zeros))
        out.write(compressor.flush())
    return path


def test_small_deflate_bomb_is_skipped_with_its_reason(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    app.config["DICOM_INBOX_MAX_INFLATED_BYTES"] = 2**20
    from flask_dicom_inbox.config import InboxConfig

    state.config = InboxConfig.from_app(app)
    folder = inbox / "test_proj" / "bomb"
    folder.mkdir()
    _deflate_bomb(folder / "bomb.dcm", inflated_mb=8)
    status, before = _import_and_expect_nothing_written(app, client, state, folder)
    [error] = status["errors"]
    assert "deflate bomb" in error["reason"] and str(2**20) in error["reason"]
    _assert_no_new_folders(state, before)


# A fresh parent whose only child is the real forking worker: RUSAGE_CHILDREN's ru_maxrss is
# then the peak RSS of the worker and its work-horse, and of nothing else.
_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "stderr": done.stderr[-3000:],
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


@pytest.mark.slow
def test_deflate_bomb_is_refused_by_a_real_worker_with_bounded_memory(
    client: FlaskClient, state: InboxState, inbox: Path, app_config: dict[str, Any]
) -> None:
    inflated_mb = 600
    folder = inbox / "test_proj" / "bigbomb"
    folder.mkdir()
    bomb = _deflate_bomb(folder / "bomb.dcm", inflated_mb=inflated_mb)
    assert bomb.stat().st_size < 2 * 2**20, "a small file..."
    (folder / "ok.dcm").write_bytes(_bytes(_dataset()))
    inbox_before, pre_before = tree(inbox), tree(state.config.prearchive_path)
    rid = _rid(submit(client, PROJECT_ID="test_proj", cleanupAfterImport="true", path=str(folder)))
    env = {**os.environ, **{f"FLASK_{k}": str(v) for k, v in app_config.items() if k != "TESTING"}}
    worker = [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker"]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *worker, "--burst"],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["rc"] == 0, outcome["stderr"]
    status = _status(client, rid)
    assert status["status"] == "Completed", status
    reasons = {e["path"]: e["reason"] for e in status["errors"]}
    assert "deflate bomb" in reasons["bomb.dcm"], reasons
    assert status["progress"]["filesImported"] == 1
    peak_mib = outcome["maxrss_kib"] / 1024
    assert peak_mib < 300, f"worker peaked at {peak_mib:.0f} MiB for a {inflated_mb} MiB bomb"
    assert bomb.exists(), "a refused file is never deleted by cleanup"
    assert tree(inbox) != inbox_before  # ok.dcm was imported and cleaned up...
    assert set(inbox_before) - set(tree(inbox)) == {"test_proj/bigbomb/ok.dcm"}  # ...alone
    written = tree(state.config.prearchive_path)
    assert [k for k in written if not k.endswith("/")] and pre_before == {}
    assert not [k for k in written if TEMP_PREFIX in k]


@pytest.mark.slow
def test_ten_thousand_files_in_one_folder_level(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    count = 10_000
    folder = inbox / "test_proj" / "flat"
    folder.mkdir()
    ds = make_dataset(
        study_uid=UID + ".1", series_uid=UID + ".2", sop_uid=UID + ".3", series_number=1,
        instance_number=1, rows=4, columns=4,
    )  # fmt: skip
    for i in range(count):
        ds.SOPInstanceUID = f"{UID}.5.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = UID_(ds.SOPInstanceUID)
        ds.InstanceNumber = i
        (folder / f"i{i:05d}.dcm").write_bytes(_bytes(ds))
    inbox_before = tree(inbox)
    # The owner imports without anonymization: the copies must be the sources' bytes.
    rid = _rid(
        submit(client, user="owner", PROJECT_ID="test_proj", prevent_anon="true", path=str(folder))
    )
    run_worker(app)
    response = client.get(f"/xapi/dicom/{rid}", headers=auth("owner"))
    status = response.get_json()
    assert status["status"] == "Completed", status["message"]
    assert status["progress"]["filesImported"] == count
    assert status["errors"] == []
    assert tree(inbox) == inbox_before
    written = {p.name: p for p in state.config.prearchive_path.rglob("*.dcm")}
    assert len(written) == count, "every file exactly once"
    for name in ("i00000.dcm", "i04999.dcm", "i09999.dcm"):
        assert written[name].read_bytes() == (folder / name).read_bytes()


def test_overwrite_delete_keeps_the_archived_session_when_nothing_replaces_it(
    app: Flask, client: FlaskClient, state: InboxState, inbox: Path
) -> None:
    """overwrite=delete sets the old session aside; a request that stores nothing puts it back."""
    first = inbox / "auto_proj" / "first"
    first.mkdir()
    (first / "good.dcm").write_bytes(_bytes(_dataset()))
    ok = _rid(submit(client, PROJECT_ID="auto_proj", EXPT_LABEL="s01", path=str(first)))
    run_worker(app)
    assert _status(client, ok)["status"] == "Completed"
    archived = tree(state.config.archive_path)
    assert any(name.endswith(".dcm") for name in archived)
    second = inbox / "auto_proj" / "second"
    second.mkdir()
    (second / "broken.dcm").write_bytes(_bytes(_dataset())[:-2000])  # fails the full read
    rid = _rid(
        submit(
            client, PROJECT_ID="auto_proj", EXPT_LABEL="s01", overwrite="delete", path=str(second)
        )
    )
    run_worker(app)
    status = _status(client, rid)
    assert status["status"] == "Failed"
    assert "pixel data is truncated" in status["errors"][0]["reason"]
    assert tree(state.config.archive_path) == archived, "the archived session is back, untouched"


@pytest.mark.parametrize("pixels_needed", [False, True])
def test_a_tiny_file_declaring_gigabytes_is_never_allocated_for(
    tmp_path: Path, pixels_needed: bool
) -> None:
    """A 100-byte file whose first element claims 4 GiB: pydicom asks for the whole length in
    one read, which CPython allocated up front (578 MB for a 123-byte JSON file in a
    benchmark folder). Reads are bounded by the file's size, so none comes near that."""
    import tracemalloc

    from flask_dicom_inbox.dicom import NotImportable, open_for_rewrite, read_header

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(struct.pack("<HH2sHI", 0x0010, 0x0010, b"OB", 0, 0xFFFFFFF0) + b"x" * 100)
    tracemalloc.start()
    try:
        with pytest.raises(NotImportable) as refused:
            read_header(junk, max_inflated_bytes=2**26)  # no meta: pydicom's read, bounded
        assert "MemoryError" not in str(refused.value)  # refused as junk, not for its size
        # (the header read refuses it first; the rewrite's reads are bounded all the same)
        try:
            with open_for_rewrite(junk, pixels_needed=pixels_needed):
                pass
        except MemoryError:
            pytest.fail("the rewrite tried to allocate the declared 4 GiB")
        except Exception:  # noqa: S110 - pydicom's own complaint about junk is fine here
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, (
        f"{peak / 2**20:.0f} MiB allocated for a {junk.stat().st_size}-byte file"
    )
