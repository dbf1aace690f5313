"""One request's per-file records (path, stat, header fields, target, outcome), off the heap.

A session of 50,000 files held as Python objects cost the coordinator about 1.5 KB a file (75 MB),
and an archive of a million files would not fit at all. The records live instead in a private
temporary SQLite database (an empty file name): SQLite keeps at most :data:`CACHE_KIB` of it in
the process, spills the rest to a file it has already unlinked (so nothing is left behind, even
by a killed work-horse), and does the grouping (duplicates, sessions, series) in SQL.

Rows are numbered in walk order (``files.id``) and in plan order (``plan.seq``); the whole table
is one transaction that is never committed: it is thrown away when the request's run ends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import fields
from typing import Any

from .dicom import DicomHeader

#: The most of the database SQLite keeps in memory (its page cache), in KiB.
CACHE_KIB = 4096

#: Header columns, named and ordered as :class:`~.dicom.DicomHeader`'s fields.
HEADER_FIELDS = tuple(f.name for f in fields(DicomHeader))

_HEADER_COLUMNS = ", ".join(HEADER_FIELDS)

_SCHEMA = f"""
CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL,
                    mtime INTEGER NOT NULL, ino INTEGER NOT NULL);
CREATE TABLE headers (id INTEGER PRIMARY KEY, {_HEADER_COLUMNS},
                      label TEXT NOT NULL, subject TEXT NOT NULL, name TEXT NOT NULL);
CREATE TABLE plan (seq INTEGER PRIMARY KEY, id INTEGER NOT NULL, scan INTEGER NOT NULL,
                   name TEXT);
CREATE TABLE stored (seq INTEGER PRIMARY KEY, how TEXT NOT NULL, name TEXT NOT NULL);
CREATE TABLE ledger (src TEXT PRIMARY KEY, label TEXT NOT NULL, subject TEXT NOT NULL,
                     study TEXT NOT NULL, dir TEXT NOT NULL, name TEXT NOT NULL,
                     size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE names (scan INTEGER NOT NULL, name TEXT NOT NULL, PRIMARY KEY (scan, name))
    WITHOUT ROWID;
"""

# The statements below are composed of these constant column names only, never of values.
_INSERT_HEADER = (
    f"INSERT INTO headers (id, {_HEADER_COLUMNS}, label, subject, name) "  # noqa: S608
    f"VALUES ({', '.join('?' * (len(HEADER_FIELDS) + 4))})"
)
_SERIES_FILES = (
    f"SELECT id, name, {_HEADER_COLUMNS} FROM headers WHERE study_instance_uid = ? "  # noqa: S608
    "AND label = ? AND series_instance_uid = ? ORDER BY id"
)
#: Each file whose SOPInstanceUID an earlier file (smaller id) has, with that first file's id.
_LATER_COPIES = """SELECT id, first FROM (SELECT id, MIN(id) OVER
    (PARTITION BY sop_instance_uid) AS first FROM headers) WHERE id != first"""
_DROP_LATER_COPIES = f"DELETE FROM headers WHERE id IN (SELECT id FROM ({_LATER_COPIES}))"  # noqa: S608


class FileTable:
    """The records of one run of one request; use as a context manager."""

    def __init__(self) -> None:
        # "": SQLite's private temporary database, deleted when closed or when the process dies.
        self._db = sqlite3.connect("", isolation_level=None)
        try:
            for pragma in (
                f"cache_size = -{CACHE_KIB}",
                "temp_store = FILE",
                "journal_mode = OFF",
                "synchronous = OFF",
            ):
                self._db.execute(f"PRAGMA {pragma}")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> FileTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scalar(self, sql: str, args: Iterable[Any] = ()) -> Any:
        row = self._db.execute(sql, tuple(args)).fetchone()
        return None if row is None else row[0]

    # -- walk ------------------------------------------------------------------------------
    def add_files(self, rows: Iterable[tuple[str, int, int, int]]) -> None:
        """``(path, size, mtime_ns, ino)`` of each regular file, in walk order."""
        self._db.executemany("INSERT INTO files (path, size, mtime, ino) VALUES (?, ?, ?, ?)", rows)

    def file_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM files"))

    def paths(self) -> Iterator[tuple[int, str]]:
        """``(id, path)`` of every file, in walk order."""
        return iter(self._db.execute("SELECT id, path FROM files ORDER BY id"))

    # -- files an earlier, killed run of the request stored --------------------------------
    def add_ledger(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """The request's ledger (source path -> stored file); returns how many entries it has."""
        self._db.executemany(
            "INSERT OR REPLACE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (src, str(e["label"]), str(e["subject"]), str(e["study"]), str(e["dir"]),
                 str(e["name"]), int(e["size"]))
                for src, e in entries
            ),
        )  # fmt: skip
        return int(self._scalar("SELECT COUNT(*) FROM ledger"))

    def keep_carried(self, exists: Callable[[str, str], bool]) -> None:
        """Keep in the ledger only the files this run must count without seeing them: those
        whose source the walk did not find and whose stored file ``exists(dir, name)``."""
        if self._scalar("SELECT 1 FROM ledger LIMIT 1") is None:
            return  # a first run: nothing to compare with the walk
        self._db.execute("DELETE FROM ledger WHERE src IN (SELECT path FROM files)")
        gone = [
            (src,)
            for src, folder, name in self._db.execute("SELECT src, dir, name FROM ledger")
            if not exists(folder, name)
        ]
        self._db.executemany("DELETE FROM ledger WHERE src = ?", gone)

    def carried(self) -> Iterator[tuple[str, str, str, str]]:
        """``(label, subject, study, scan folder)`` of each file :meth:`keep_carried` kept."""
        return iter(self._db.execute("SELECT label, subject, study, dir FROM ledger"))

    def carried_totals(self) -> tuple[int, int]:
        """How many files were carried, and their bytes."""
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM ledger"
        ).fetchone()
        return int(count), int(size)

    # -- headers and grouping --------------------------------------------------------------
    def add_headers(self, rows: Iterable[tuple[int, DicomHeader, str, str, str]]) -> None:
        """``(id, header, session label, subject label, safe file name)`` of readable files."""
        self._db.executemany(
            _INSERT_HEADER,
            (
                (fid, *(getattr(h, n) for n in HEADER_FIELDS), label, subject, name)
                for fid, h, label, subject, name in rows
            ),
        )

    def study_count(self) -> int:
        return int(self._scalar("SELECT COUNT(DISTINCT study_instance_uid) FROM headers"))

    def duplicates(self) -> Iterator[tuple[str, str]]:
        """``(path, path of the first file with its SOPInstanceUID)`` of each later file with
        that SOPInstanceUID, in walk order."""
        return iter(
            self._db.execute(
                f"SELECT f.path, ff.path FROM ({_LATER_COPIES}) d JOIN files f "  # noqa: S608
                "ON f.id = d.id JOIN files ff ON ff.id = d.first ORDER BY d.id"
            )
        )

    def drop_duplicates(self) -> None:
        """Forget the files :meth:`duplicates` names: only the first of each instance stays."""
        self._db.execute(_DROP_LATER_COPIES)

    def sessions(self) -> list[tuple[str, str, str]]:
        """``(study, label, subject of its first file)`` of each session, first seen first."""
        return [
            (study, label, subject)
            for study, label, subject, _first in self._db.execute(
                "SELECT study_instance_uid, label, subject, MIN(id) FROM headers "
                "GROUP BY study_instance_uid, label ORDER BY MIN(id)"
            )
        ]

    def series(self) -> list[tuple[str, str, str, str]]:
        """``(study, label, series UID, SeriesNumber of its first file)`` of each series."""
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS headers_series ON headers "
            "(study_instance_uid, label, series_instance_uid, id)"
        )
        return [
            (study, label, series, number)
            for study, label, series, number, _first in self._db.execute(
                "SELECT study_instance_uid, label, series_instance_uid, series_number, "
                "MIN(id) FROM headers GROUP BY study_instance_uid, label, series_instance_uid "
                "ORDER BY MIN(id)"
            )
        ]

    def series_files(self, study: str, label: str, series: str) -> Iterator[tuple[Any, ...]]:
        """``(id, safe name, *header fields)`` of each file of one series, in walk order."""
        return iter(self._db.execute(_SERIES_FILES, (study, label, series)))

    def shared_names(self, study: str, label: str, series: str) -> set[str]:
        """The safe file names that two or more files of one series have."""
        return {
            name
            for (name,) in self._db.execute(
                "SELECT name FROM headers WHERE study_instance_uid = ? AND label = ? AND "
                "series_instance_uid = ? GROUP BY name HAVING COUNT(*) > 1",
                (study, label, series),
            )
        }

    def claim_unique_names(self, scan: int, study: str, label: str, series: str) -> None:
        """Note as taken in ``scan`` every name only one file of the series has (those files
        keep their names, so no template name may take one)."""
        self._db.execute(
            "INSERT OR IGNORE INTO names (scan, name) SELECT ?, name FROM headers WHERE "
            "study_instance_uid = ? AND label = ? AND series_instance_uid = ? "
            "GROUP BY name HAVING COUNT(*) = 1",
            (scan, study, label, series),
        )

    def claim_name(self, scan: int, name: str) -> bool:
        """Note ``name`` as taken in ``scan``; false when it was taken already."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO names (scan, name) VALUES (?, ?)", (scan, name)
        )
        return cursor.rowcount == 1

    # -- plan and outcome ------------------------------------------------------------------
    def add_plan(self, rows: Iterable[tuple[int, int, str | None]]) -> None:
        """``(file id, scan number, target name or None)``, in the order chunks are made."""
        self._db.executemany("INSERT INTO plan (id, scan, name) VALUES (?, ?, ?)", rows)

    def plan_count(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM plan"))

    def planned(self) -> Iterator[tuple[int, str, int, int, int, int, str | None]]:
        """``(seq, path, size, mtime, ino, scan, name)`` of each planned file, in plan order."""
        return iter(
            self._db.execute(
                "SELECT p.seq, f.path, f.size, f.mtime, f.ino, p.scan, p.name "
                "FROM plan p JOIN files f ON f.id = p.id ORDER BY p.seq"
            )
        )

    def add_stored(self, rows: Iterable[tuple[int, str, str]]) -> None:
        """``(seq, how, stored name)`` of each file stored."""
        self._db.executemany("INSERT INTO stored (seq, how, name) VALUES (?, ?, ?)", rows)

    def stored(self) -> Iterator[tuple[str, int, int, int, str, int, str]]:
        """``(path, size, mtime, ino, how, scan, stored name)`` of each stored file."""
        return iter(
            self._db.execute(
                "SELECT f.path, f.size, f.mtime, f.ino, s.how, p.scan, s.name FROM stored s "
                "JOIN plan p ON p.seq = s.seq JOIN files f ON f.id = p.id ORDER BY s.seq"
            )
        )

    def stored_totals(self) -> tuple[int, int]:
        """How many files were stored, and their sources' bytes."""
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(f.size), 0) FROM stored s "
            "JOIN plan p ON p.seq = s.seq JOIN files f ON f.id = p.id"
        ).fetchone()
        return int(count), int(size)
