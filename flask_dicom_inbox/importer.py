"""The import engine: walk, read headers, group into sessions and scans, store, clean up.

It keeps one small record per file (path, stat, a few header fields), never datasets, so memory
stays flat with the session's size. Each stored file goes through a temporary name and fsync
(see :mod:`.storage`); sources are deleted only after every imported file is durable, and only
when unchanged since the scan.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .dicom import (
    DicomHeader,
    NotImportable,
    encode_dataset,
    header_of,
    read_full,
    read_header,
)
from .errors import ImportFailed
from .naming import scan_folder_name, session_label, subject_label, template_file_name
from .protocols import Destination, SessionStorage
from .requests import ImportRequest, RequestStore
from .storage import (
    TEMP_PREFIX,
    copy_atomically,
    fsync_dir,
    make_dirs,
    move_atomically,
    remove_temp_files,
    safe_file_name,
    write_atomically,
)


class AnonymizationStep(Protocol):
    """One script run over every file: the site script, then the project script."""

    @property
    def script_id(self) -> str:
        """Recorded as CodeValue in (0012,0064)."""
        ...

    def apply(self, ds: Any, variables: Mapping[str, str]) -> Any:
        """Edit ``ds`` in place (a full read) and record the de-identification."""
        ...


@dataclass(slots=True)
class ScannedFile:
    """One regular file found in the walk, with the stat taken then."""

    path: Path
    rel: str
    size: int
    mtime_ns: int
    ino: int
    header: DicomHeader | None = None


@dataclass
class ScanGroup:
    folder: str
    series_instance_uid: str
    files: list[ScannedFile] = field(default_factory=list)


@dataclass
class SessionGroup:
    """The files of one session (one StudyInstanceUID and label) in one request."""

    label: str
    subject: str
    study_instance_uid: str
    scans: dict[str, ScanGroup] = field(default_factory=dict)

    @property
    def file_count(self) -> int:
        return sum(len(s.files) for s in self.scans.values())


@dataclass(frozen=True)
class ImportOptions:
    """Everything about one request the engine needs, decided at submit time."""

    project_id: str
    subject_id: str | None
    expt_label: str | None
    destination: Destination
    overwrite: str
    rename: bool
    cleanup: bool
    keep_root: bool
    max_inflated_bytes: int
    progress_every: int


class ProgressReporter:
    """Batches counter updates to Redis (and the RQ job's meta) to keep writes cheap."""

    def __init__(
        self,
        store: RequestStore,
        request_id: int,
        every: int,
        on_flush: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self._store = store
        self._id = request_id
        self._every = every
        self._on_flush = on_flush
        self._pending: dict[str, int] = defaultdict(int)
        self._pending_errors: list[dict[str, str]] = []
        self._count = 0
        self._last = time.monotonic()
        self.totals: dict[str, int] = defaultdict(int)

    def add(self, **deltas: int) -> None:
        for name, value in deltas.items():
            self._pending[name] += value
            self.totals[name] += value
        self._count += 1
        if self._count >= self._every or time.monotonic() - self._last > 0.5:
            self.flush()

    def error(self, rel: str, reason: str) -> None:
        self._pending_errors.append({"path": rel, "reason": reason})
        if len(self._pending_errors) >= self._every:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._store.add_progress(self._id, **self._pending)
            self._pending.clear()
        if self._pending_errors:
            self._store.add_errors(self._id, self._pending_errors)
            self._pending_errors = []
        self._count = 0
        self._last = time.monotonic()
        if self._on_flush is not None:
            self._on_flush(dict(self.totals))


def walk_files(root: Path, report: ProgressReporter) -> list[ScannedFile]:
    """Every regular file under ``root``, sorted; symlinks and special files are reported.

    Symlinks are never followed (neither to folders nor to files).
    """
    found: list[ScannedFile] = []

    def on_error(exc: OSError) -> None:
        report.error(_rel(root, Path(exc.filename or root)), f"cannot read folder: {exc.strerror}")

    for dirpath, dirs, names in os.walk(root, followlinks=False, onerror=on_error):
        here = Path(dirpath)
        for name in list(dirs):
            if (here / name).is_symlink():
                report.error(_rel(root, here / name), "symbolic link skipped (not followed)")
        dirs.sort()
        for name in sorted(names):
            path = here / name
            try:
                st = os.lstat(path)
            except OSError as exc:
                report.error(_rel(root, path), f"cannot stat: {exc.strerror}")
                continue
            if stat.S_ISLNK(st.st_mode):
                report.error(_rel(root, path), "symbolic link skipped (not followed)")
            elif not stat.S_ISREG(st.st_mode):
                report.error(_rel(root, path), "not a regular file (device, FIFO or socket)")
            elif name.startswith(TEMP_PREFIX):
                continue
            else:
                found.append(
                    ScannedFile(path, _rel(root, path), st.st_size, st.st_mtime_ns, st.st_ino)
                )
    return found


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def read_headers(
    files: Sequence[ScannedFile], options: ImportOptions, report: ProgressReporter
) -> list[ScannedFile]:
    """Read each file's header; non-DICOM files are reported and counted as skipped."""
    readable: list[ScannedFile] = []
    for sf in files:
        try:
            sf.header = read_header(sf.path, max_inflated_bytes=options.max_inflated_bytes)
        except NotImportable as exc:
            report.error(sf.rel, str(exc))
            report.add(filesDone=1, filesSkipped=1)
            continue
        except OSError as exc:
            report.error(sf.rel, f"cannot read: {exc.strerror or exc}")
            report.add(filesDone=1, filesSkipped=1)
            continue
        readable.append(sf)
    return readable


def group_sessions(
    files: Sequence[ScannedFile], options: ImportOptions, report: ProgressReporter
) -> list[SessionGroup]:
    """Group by (StudyInstanceUID, label) and by series; drop duplicate SOPInstanceUIDs.

    Two series sharing a SeriesNumber get distinct scan folders (``4``, ``4-2``).
    """
    studies = {sf.header.study_instance_uid for sf in files if sf.header}
    if options.expt_label and len(studies) > 1:
        raise ImportFailed(
            f"EXPT_LABEL {options.expt_label!r} names one session, but the folder holds "
            f"{len(studies)} studies (StudyInstanceUIDs); import without EXPT_LABEL to get "
            "one session per study, or split the folder. Nothing was written."
        )
    seen: dict[str, str] = {}
    sessions: dict[tuple[str, str], SessionGroup] = {}
    series: dict[tuple[str, str], list[ScannedFile]] = defaultdict(list)
    series_numbers: dict[tuple[str, str], str] = {}
    for sf in files:
        h = sf.header
        assert h is not None
        first = seen.get(h.sop_instance_uid)
        if first is not None:
            report.error(sf.rel, f"duplicate SOPInstanceUID (same instance as {first}); skipped")
            report.add(filesDone=1, filesSkipped=1)
            continue
        seen[h.sop_instance_uid] = sf.rel
        label = session_label(options.expt_label, h)
        key = (h.study_instance_uid, label)
        if key not in sessions:
            sessions[key] = SessionGroup(
                label=label,
                subject=subject_label(options.subject_id, h),
                study_instance_uid=h.study_instance_uid,
            )
        series_key = (f"{h.study_instance_uid}\x00{label}", h.series_instance_uid)
        series[series_key].append(sf)
        series_numbers.setdefault(series_key, h.series_number)
    for (study_and_label, series_uid), members in sorted(series.items(), key=_series_order):
        study, label = study_and_label.split("\x00", 1)
        session = sessions[(study, label)]
        base = scan_folder_name(series_numbers[(study_and_label, series_uid)])
        name, n = base, 1
        while name in session.scans:
            n += 1
            name = f"{base}-{n}"
        session.scans[name] = ScanGroup(folder=name, series_instance_uid=series_uid, files=members)
    return list(sessions.values())


def _series_order(item: tuple[tuple[str, str], list[ScannedFile]]) -> tuple[str, int, str]:
    (study_and_label, series_uid), members = item
    number = members[0].header.series_number if members[0].header else ""
    try:
        numeric = int(number)
    except ValueError:
        numeric = -1
    return (study_and_label, numeric, series_uid)


class ImportEngine:
    """Runs one request's import; the RQ job wraps it with status changes and locking."""

    def __init__(
        self,
        *,
        request: ImportRequest,
        store: RequestStore,
        storage: SessionStorage,
        options: ImportOptions,
        anonymization: Sequence[AnonymizationStep] = (),
        on_progress: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.request = request
        self.store = store
        self.storage = storage
        self.options = options
        self.anonymization = list(anonymization)
        self.report = ProgressReporter(store, request.id, options.progress_every, on_progress)
        self.sessions_out: list[dict[str, Any]] = []

    def run(self, root: Path) -> list[dict[str, Any]]:
        """Import every file under ``root``; return the sessions written (for the status)."""
        self.store.reset_progress(self.request.id)
        files = walk_files(root, self.report)
        self.store.set_progress(self.request.id, filesFound=len(files))
        self.report.flush()
        readable = read_headers(files, self.options, self.report)
        sessions = group_sessions(readable, self.options, self.report)
        self.report.flush()
        timestamp = self._prearchive_timestamp()
        stored: list[ScannedFile] = []
        self._check_destinations(sessions)
        for session in sessions:
            stored.extend(self._store_session(session, timestamp))
        self.report.flush()
        if self.options.cleanup:
            self._cleanup(root, stored)
        self.report.flush()
        if not stored:
            raise ImportFailed("no file could be imported; see errors for each file's reason")
        return self.sessions_out

    # -- destination ------------------------------------------------------------------------
    def _prearchive_timestamp(self) -> str:
        """One timestamp per request, kept in the record so a retried job reuses the folder."""
        existing = self.request.options.get("prearchiveTimestamp")
        if existing:
            return str(existing)
        now = datetime.now()
        value = now.strftime("%Y%m%d_%H%M%S") + f"{now.microsecond // 1000:03d}"
        self.store.set_option(self.request.id, "prearchiveTimestamp", value)
        self.request.options["prearchiveTimestamp"] = value
        return value

    def _check_destinations(self, sessions: Sequence[SessionGroup]) -> None:
        opts = self.options
        if opts.destination != "archive" or opts.overwrite != "none":
            return
        claimed = set(self.request.options.get("claimedSessions", []))
        taken = [
            s.label
            for s in sessions
            if s.label not in claimed
            and self.storage.session_exists("archive", opts.project_id, s.label)
        ]
        if taken:
            raise ImportFailed(
                f"the archive of project {opts.project_id!r} already holds session(s) "
                f"{', '.join(sorted(taken))} and overwrite=none; nothing was written"
            )

    def _claim(self, label: str) -> None:
        claimed = list(self.request.options.get("claimedSessions", []))
        if label not in claimed:
            claimed.append(label)
            self.store.set_option(self.request.id, "claimedSessions", claimed)
            self.request.options["claimedSessions"] = claimed

    # -- storing ----------------------------------------------------------------------------
    def _store_session(self, session: SessionGroup, timestamp: str) -> list[ScannedFile]:
        opts = self.options
        folder = self.storage.session_folder(
            opts.destination, opts.project_id, session.label, timestamp
        )
        self._claim(session.label)
        if opts.overwrite == "delete" and folder.exists():
            self._set_aside(folder)
        remove_temp_files(folder)  # a killed earlier attempt of this request left them
        stored: list[ScannedFile] = []
        for scan in session.scans.values():
            scan_dir = folder / "SCANS" / scan.folder / "DICOM"
            created = make_dirs(scan_dir)
            for made in created:
                fsync_dir(made.parent)
            used: set[str] = set()
            for sf in scan.files:
                size = self._store_file(session, sf, scan_dir, used)
                if size is None:
                    continue
                stored.append(sf)
        self._drop_set_aside(folder)
        count = len(stored)
        self.sessions_out.append(
            {
                "label": session.label,
                "subject": session.subject,
                "studyInstanceUid": session.study_instance_uid,
                "destination": opts.destination,
                "url": self.storage.session_url(
                    opts.destination, opts.project_id, session.subject, session.label, timestamp
                ),
                "scans": len(session.scans),
                "files": count,
            }
        )
        return stored

    def _file_name(self, sf: ScannedFile, header: DicomHeader, used: set[str]) -> str:
        """The original name, sanitised, or XNAT's template (``rename=true`` or a clash).

        ``header`` is the written file's: after anonymization, so no original UID leaks
        into a name through the template.
        """
        name = template_file_name(header) if self.options.rename else safe_file_name(sf.path.name)
        if name in used:
            name = template_file_name(header)
        n = 1
        base = name
        while name in used:
            n += 1
            name = f"{n}-{base}"
        used.add(name)
        return name

    def _store_file(
        self, session: SessionGroup, sf: ScannedFile, scan_dir: Path, used: set[str]
    ) -> int | None:
        """Store one file; record and skip it on any per-file fault. Returns bytes written."""
        assert sf.header is not None
        try:
            if not _unchanged(sf):
                raise _FileProblem("changed or removed since the folder was scanned")
            if self.anonymization:
                data, header = self._anonymized_bytes(session, sf)
                target = scan_dir / self._file_name(sf, header, used)
                if target.exists():
                    size = self._already_stored(sf, target, data)
                else:
                    size = write_atomically(target, functools.partial(_write_all, data))
            else:
                target = scan_dir / self._file_name(sf, sf.header, used)
                if target.exists():
                    size = self._already_stored(sf, target, None)
                elif self.options.cleanup and move_atomically(sf.path, target):
                    size = sf.size
                else:
                    size = copy_atomically(sf.path, target)
        except _FileProblem as exc:
            self._fail_file(sf, str(exc))
            return None
        except OSError as exc:
            self._fail_file(sf, f"cannot store: {exc.strerror or exc}")
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT: every next file would fail the same way
                raise ImportFailed(f"destination is full: {exc.strerror}") from exc
            return None
        except Exception as exc:  # a script or pydicom fault on one file must not stop the rest
            self._fail_file(sf, f"cannot process: {type(exc).__name__}: {exc}")
            return None
        self.report.add(filesDone=1, filesImported=1, bytesDone=size)
        return size

    def _already_stored(self, sf: ScannedFile, target: Path, data: bytes | None) -> int:
        """A retried job meets its own earlier output: accept it when it is this file.

        Anonymization is deterministic, so a re-run gives the same bytes; a plain copy is the
        source's bytes (or, after a rename-move, its very inode).
        """
        st = os.lstat(target)
        if data is not None:
            if st.st_size == len(data) and target.read_bytes() == data:
                return st.st_size
        elif st.st_ino == sf.ino or _same_bytes(sf.path, target):
            return st.st_size
        raise _FileProblem(f"a different file already exists at {target.name}")

    def _anonymized_bytes(
        self, session: SessionGroup, sf: ScannedFile
    ) -> tuple[bytes, DicomHeader]:
        """Full read, every script in order, then the bytes to write and their header."""
        ds = read_full(sf.path)
        variables = {
            "project": self.options.project_id,
            "subject": session.subject,
            "session": session.label,
        }
        for step in self.anonymization:
            step.apply(ds, variables)
        return encode_dataset(ds), header_of(ds)

    def _fail_file(self, sf: ScannedFile, reason: str) -> None:
        self.report.error(sf.rel, reason)
        self.report.add(filesDone=1, filesSkipped=1)

    def _set_aside(self, folder: Path) -> None:
        aside = folder.with_name(f"{TEMP_PREFIX}old-{self.request.id}-{folder.name}")
        if not aside.exists():
            os.rename(folder, aside)
            fsync_dir(folder.parent)

    def _drop_set_aside(self, folder: Path) -> None:
        aside = folder.with_name(f"{TEMP_PREFIX}old-{self.request.id}-{folder.name}")
        if aside.exists():
            shutil.rmtree(aside)

    # -- cleanup ----------------------------------------------------------------------------
    def _cleanup(self, root: Path, stored: Sequence[ScannedFile]) -> None:
        """Delete imported sources (all already durable), then emptied folders."""
        for sf in stored:
            if not sf.path.exists() and not sf.path.is_symlink():
                continue  # moved by rename
            if not _unchanged(sf):
                self.report.error(sf.rel, "changed since the scan; imported copy kept, source kept")
                continue
            try:
                os.unlink(sf.path)
            except OSError as exc:
                self.report.error(sf.rel, f"imported, but the source could not be deleted: {exc}")
        for folder in _folders_bottom_up(root):
            if folder == root and self.options.keep_root:
                continue
            with contextlib.suppress(OSError):
                folder.rmdir()


class _FileProblem(Exception):
    pass


def _write_all(data: bytes, out: BinaryIO) -> None:
    out.write(data)


def _unchanged(sf: ScannedFile) -> bool:
    try:
        st = os.lstat(sf.path)
    except FileNotFoundError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ino) == (sf.size, sf.mtime_ns, sf.ino) and (
        stat.S_ISREG(st.st_mode)
    )


def _same_bytes(a: Path, b: Path) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def _folders_bottom_up(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, _files in os.walk(root, topdown=False, followlinks=False):
        yield Path(dirpath)
