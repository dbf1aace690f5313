"""The per-request file table: SQL grouping in walk order, the retry ledger, and a database
that lives in a file SQLite has already unlinked."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from flask_dicom_inbox.dicom import DicomHeader
from flask_dicom_inbox.filetable import CACHE_KIB, FileTable

BASE = DicomHeader(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    sop_instance_uid="",
    study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.1",
    series_number="1",
    instance_number="1",
    patient_id="P1",
    patient_name="Doe^Jane",
    subject_hint="",
    session_hint="",
)


def _table_of(headers: list[tuple[str, DicomHeader, str, str]]) -> FileTable:
    """A table of ``(path, header, label, subject)``, ids in list order."""
    table = FileTable()
    table.add_files((path, 10, 1, n) for n, (path, *_rest) in enumerate(headers))
    table.add_headers(
        (n + 1, header, label, subject, os.path.basename(path))
        for n, (path, header, label, subject) in enumerate(headers)
    )
    return table


def test_later_copies_of_an_instance_are_named_with_the_first_and_dropped() -> None:
    a, b, c = (replace(BASE, sop_instance_uid=uid) for uid in ("9.1", "9.2", "9.3"))
    with _table_of(
        [
            ("/in/x/1.dcm", a, "s", "j"),
            ("/in/x/2.dcm", b, "s", "j"),
            ("/in/y/1.dcm", a, "s", "j"),
            ("/in/y/3.dcm", c, "s", "j"),
            ("/in/z/2.dcm", b, "s", "j"),
            ("/in/z/9.dcm", a, "s", "j"),
        ]
    ) as table:
        assert list(table.duplicates()) == [
            ("/in/y/1.dcm", "/in/x/1.dcm"),
            ("/in/z/2.dcm", "/in/x/2.dcm"),
            ("/in/z/9.dcm", "/in/x/1.dcm"),
        ]
        table.drop_duplicates()
        assert list(table.duplicates()) == []
        [(study, label, series, _number)] = table.series()
        assert [row[0] for row in table.series_files(study, label, series)] == [1, 2, 4]


def test_sessions_and_series_take_their_first_file_s_values_in_walk_order() -> None:
    rows = [
        ("/in/a.dcm", replace(BASE, sop_instance_uid="1", series_number="7"), "later", "s1"),
        ("/in/b.dcm", replace(BASE, sop_instance_uid="2", series_number="8"), "later", "s2"),
        (
            "/in/c.dcm",
            replace(BASE, sop_instance_uid="3", study_instance_uid="4.5", series_number="2"),
            "other",
            "s3",
        ),
    ]
    with _table_of(rows) as table:
        assert table.study_count() == 2
        assert table.sessions() == [("1.2.3", "later", "s1"), ("4.5", "other", "s3")]
        # One series UID whose files disagree on SeriesNumber: the first file's number counts.
        assert table.series() == [
            ("1.2.3", "later", "1.2.3.1", "7"),
            ("4.5", "other", "1.2.3.1", "2"),
        ]
        assert [row[0] for row in table.series_files("1.2.3", "later", "1.2.3.1")] == [1, 2]
        assert [row[0] for row in table.series_files("4.5", "other", "1.2.3.1")] == [3]


def test_names_two_files_of_a_series_share_and_claims_per_scan() -> None:
    rows = [
        (f"/in/{folder}/{name}", replace(BASE, sop_instance_uid=str(n)), "s", "j")
        for n, (folder, name) in enumerate([("a", "1.dcm"), ("b", "1.dcm"), ("a", "2.dcm")])
    ]
    with _table_of(rows) as table:
        assert table.shared_names("1.2.3", "s", "1.2.3.1") == {"1.dcm"}
        assert table.claim_name(0, "x.dcm")
        assert not table.claim_name(0, "x.dcm")
        assert table.claim_name(1, "x.dcm")  # another scan folder


def test_the_ledger_keeps_only_files_the_walk_missed_and_that_are_still_stored(
    tmp_path: Path,
) -> None:
    (tmp_path / "kept.dcm").write_bytes(b"x")

    def entry(name: str, size: int) -> dict[str, object]:
        return {"label": "s", "subject": "j", "study": "1", "dir": str(tmp_path), "name": name,
                "size": size}  # fmt: skip

    with FileTable() as table:
        table.add_files([("/in/walked.dcm", 1, 1, 1)])
        added = table.add_ledger(
            [
                ("/in/walked.dcm", entry("walked.dcm", 1)),  # seen again: stored now, not carried
                ("/in/moved.dcm", entry("kept.dcm", 5)),
                ("/in/lost.dcm", entry("lost.dcm", 7)),  # its stored file is gone
            ]
        )
        assert added == 3
        table.keep_carried(lambda folder, name: os.path.isfile(os.path.join(folder, name)))
        assert list(table.carried()) == [("s", "j", "1", str(tmp_path))]
        assert table.carried_totals() == (1, 5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_records_beyond_the_cache_spill_to_a_file_already_unlinked() -> None:
    """What a killed work-horse leaves behind: nothing (the file has no name while open)."""

    def sqlite_files() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if "etilqs_" in target:  # SQLite's temporary file prefix
                found.append(target)
        return found

    before = sqlite_files()
    with FileTable() as table:
        path = "/inbox/project/session/series/part/" + "x" * 60
        count = 4 * CACHE_KIB * 1024 // 100  # about 4x the cache
        table.add_files((f"{path}{n:08d}.dcm", n, n, n) for n in range(count))
        spilled = [f for f in sqlite_files() if f not in before]
        assert spilled, "the table never left SQLite's page cache"
        assert all(f.endswith(" (deleted)") for f in spilled), spilled
        assert table.file_count() == count
