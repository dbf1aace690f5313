"""The import engine: walk, read headers, group into sessions and scans, store, clean up.

Its record of each file (path, stat, a few header fields, target, outcome) lives in a
:class:`~.filetable.FileTable` (SQLite's temporary database, at most 4 MB of it in memory), not
in Python objects, and datasets are never kept, so memory stays flat with the session's size.
The two heavy phases, reading headers and storing files, run in chunks through a *phase
runner* (:mod:`.fanout`): any worker sharing the Redis may take a chunk, so one large request
uses every worker. Each stored file goes through a temporary name; a chunk's files are made
durable with one filesystem sync, then published under their names (see :mod:`.storage`).
Sources are deleted only after every imported file is durable, and only when unchanged since
the scan.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import sqlite3
import stat
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from . import deadline
from .dicom import (
    DicomHeader,
    NotImportable,
    Rewrite,
    header_of,
    open_for_rewrite,
    read_header,
)
from .errors import ImportFailed
from .fanout import RunSuperseded
from .filetable import HEADER_FIELDS, FileTable
from .naming import scan_folder_name, session_label, subject_label, template_file_name
from .protocols import Destination, SessionStorage
from .requests import ImportRequest, RequestStore
from .splice_edit import SplicedEdit, SplicePlan, open_spliced_edit
from .storage import (
    TEMP_PREFIX,
    copy_to_temp,
    fsync_dir,
    make_dirs,
    publish,
    remove_temp_files,
    safe_file_name,
    sync_filesystem,
    write_temp,
)

#: ``(phase, payloads, meta) -> results``, one result per payload, in order.
PhaseRunner = Callable[[str, Iterable[Any], Mapping[str, Any]], Iterable[Any]]

log = logging.getLogger(__name__)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

#: The phases whose chunks any worker can take, in the order a run posts them.
HEADERS, STORE = "headers", "store"
PHASES = (HEADERS, STORE)


class AnonymizationStep(Protocol):
    """One script run over every file: the site script, then the project script."""

    @property
    def script_id(self) -> str:
        """Recorded as CodeValue in (0012,0064)."""
        ...

    def apply(self, ds: Any, variables: Mapping[str, str]) -> Any:
        """Edit ``ds`` in place and record the de-identification.

        ``ds`` is a full read unless every step has a ``needs_pixel_data`` attribute that is
        false: then it is a header read, and the pixel data is stored as it came.
        """
        ...


@dataclass(slots=True)
class ScannedFile:
    """One regular file found in the walk, with the stat taken then."""

    path: str
    size: int
    mtime_ns: int
    ino: int


@dataclass
class ScanGroup:
    """One series of one session and its scan folder name."""

    folder: str
    series_instance_uid: str


@dataclass
class SessionGroup:
    """The files of one session (one StudyInstanceUID and label) in one request."""

    label: str
    subject: str
    study_instance_uid: str
    scans: dict[str, ScanGroup] = field(default_factory=dict)


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
    chunk_files: int = 256


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


def walk_files(root: Path, report: ProgressReporter) -> Iterator[ScannedFile]:
    """Every regular file under ``root``, sorted; symlinks and special files are reported.

    Symlinks are never followed (neither to folders nor to files). A name that is not valid
    UTF-8 is reported and skipped (a folder with all it holds): neither the file records nor
    Redis can hold it.
    """

    def on_error(exc: OSError) -> None:
        report.error(_rel(root, Path(exc.filename or root)), f"cannot read folder: {exc.strerror}")

    top = os.fspath(root)
    for dirpath, dirs, names in os.walk(top, followlinks=False, onerror=on_error):
        under = os.path.relpath(dirpath, top)
        prefix = "" if under == "." else under + os.sep
        for name in list(dirs):
            if os.path.islink(os.path.join(dirpath, name)):
                report.error(_shown(prefix + name), "symbolic link skipped (not followed)")
            elif not _utf8(name):
                report.error(_shown(prefix + name), _NOT_UTF8_FOLDER)
                dirs.remove(name)
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                report.error(_shown(prefix + name), f"cannot stat: {exc.strerror}")
                continue
            if stat.S_ISLNK(st.st_mode):
                report.error(_shown(prefix + name), "symbolic link skipped (not followed)")
            elif not stat.S_ISREG(st.st_mode):
                report.error(_shown(prefix + name), "not a regular file (device, FIFO or socket)")
            elif not _utf8(name):
                report.error(_shown(prefix + name), _NOT_UTF8_FILE)
            elif name.startswith(TEMP_PREFIX):
                continue
            else:
                yield ScannedFile(path, st.st_size, st.st_mtime_ns, st.st_ino)


_NOT_UTF8_FILE = "file name is not valid UTF-8: skipped; rename it to import it"
_NOT_UTF8_FOLDER = "folder name is not valid UTF-8: skipped with all it holds; rename it"


def _utf8(name: str) -> bool:
    """Whether ``name`` (as ``os.walk`` gives it) was valid UTF-8 on disk."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogates for bytes that are not UTF-8
        return False
    return True


def _shown(name: str) -> str:
    """``name`` for a report: bytes that are not UTF-8 shown as ``\\xNN``."""
    return name if _utf8(name) else os.fsencode(name).decode("utf-8", "backslashreplace")


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


# -- chunk work: runs in the coordinator or in any helper job ---------------------------------
def read_header_chunk(
    payload: Sequence[str],
    heartbeat: Callable[[], None],
    *,
    max_inflated_bytes: int,
    report: ProgressReporter,
) -> list[dict[str, Any]]:
    """Paths -> per file ``{"h": [the header's fields, in DicomHeader's order]}`` or
    ``{"e": reason}``: fields by position, as the coordinator decodes every file's result."""
    out: list[dict[str, Any]] = []
    for path in payload:
        heartbeat()
        try:
            header = read_header(path, max_inflated_bytes=max_inflated_bytes)
        except NotImportable as exc:
            out.append({"e": str(exc)})
            report.add(filesDone=1, filesSkipped=1)
            continue
        except OSError as exc:
            out.append({"e": f"cannot read: {exc.strerror or exc}"})
            report.add(filesDone=1, filesSkipped=1)
            continue
        out.append({"h": [getattr(header, name) for name in HEADER_FIELDS]})
    report.flush()
    return out


def header_of_result(fields: Sequence[str] | Mapping[str, str]) -> DicomHeader:
    """The header from a header chunk's result: fields by position, or by name as helpers of
    earlier versions sent them (a rolling upgrade: by position, a mapping's keys would be
    taken for its values)."""
    if isinstance(fields, Mapping):
        return DicomHeader(**fields)
    return DicomHeader(*fields)


class FileStorer:
    """Stores one chunk of planned files: every file written first, one sync, then named.

    A planned file is a dict: ``src``, ``size``, ``mtime``, ``ino`` (the scan's stat),
    ``dir`` (the scan folder), ``name`` (``None``: XNAT's template name from the written
    header), ``label`` and ``subject`` (script variables), ``study`` (for the ledger). Each
    result is ``{"n": bytes, "how": "write"|"copy"|"move"|"existing", "name": ...}`` or
    ``{"e": reason}`` (with ``"full": true`` when the destination filled up).
    """

    def __init__(
        self,
        *,
        options: ImportOptions,
        anonymization: Sequence[AnonymizationStep],
        report: ProgressReporter,
        ledger: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> None:
        self.options = options
        self.anonymization = list(anonymization)
        self.report = report
        self.ledger = ledger
        #: Header reads suffice unless a step reads or edits pixel data (or may: a host's).
        self.pixels_needed = any(getattr(s, "needs_pixel_data", True) for s in anonymization)
        #: Scripts that only set top-level text elements are run by splicing, not parsing.
        self.splice_plan = SplicePlan.of(anonymization)

    def __call__(
        self, payload: Sequence[Mapping[str, Any]], heartbeat: Callable[[], None]
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(payload)
        staged: list[tuple[int, Path, Path, int, str]] = []
        linked: list[tuple[int, Path, Path]] = []
        full = False
        started = time.monotonic()
        try:
            for idx, item in enumerate(payload):
                heartbeat()
                try:
                    self._stage(idx, item, results, staged, linked)
                except _FileProblem as exc:
                    results[idx] = {"e": str(exc)}
                except OSError as exc:
                    results[idx] = {"e": f"cannot store: {exc.strerror or exc}"}
                    if exc.errno in _DISK_FULL:
                        results[idx]["full"] = True  # type: ignore[index]
                        full = True
                        break
                except Exception as exc:  # a script or pydicom fault on one file only
                    deadline.reraise_timeout(exc)  # ... unless it is the job's timeout
                    results[idx] = {"e": f"cannot process: {type(exc).__name__}: {exc}"}
            if full:
                for _idx, _src, target in linked:  # the sources still hold these files
                    with contextlib.suppress(OSError):
                        os.unlink(target)
            else:
                staging = time.monotonic() - started
                self._publish(payload, results, staged, linked)
                log.debug(
                    "dicom-inbox: stored %d files: %.2f s staging, %.2f s syncing and naming",
                    len(payload), staging, time.monotonic() - started - staging,
                )  # fmt: skip
        finally:
            for _idx, tmp, _target, _size, _how in staged:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        final: list[dict[str, Any]] = []
        stored: dict[str, dict[str, Any]] = {}
        for item, result in zip(payload, results, strict=True):
            if result is None:
                result = {"e": "not stored: the destination is full"}
            final.append(result)
            if "n" in result:
                self.report.add(filesDone=1, filesImported=1, bytesDone=int(result["n"]))
                stored[str(item["src"])] = {
                    **{k: item[k] for k in ("label", "subject", "study", "dir", "size")},
                    "name": result["name"],
                }
            else:
                self.report.add(filesDone=1, filesSkipped=1)
        if self.ledger is not None and stored:
            self.ledger(stored)
        self.report.flush()
        return final

    def _stage(
        self,
        idx: int,
        item: Mapping[str, Any],
        results: list[dict[str, Any] | None],
        staged: list[tuple[int, Path, Path, int, str]],
        linked: list[tuple[int, Path, Path]],
    ) -> None:
        src = Path(item["src"])
        if not _unchanged(src, item):
            raise _FileProblem("changed or removed since the folder was scanned")
        folder = Path(item["dir"])
        if self.anonymization:
            with self._anonymized(src, item) as (header, edited):
                target = folder / (item["name"] or template_file_name(header))
                if os.path.lexists(target):
                    results[idx] = _existing(src, item, target, edited.to_bytes)
                    return
                tmp, size = write_temp(folder, edited.write)
            staged.append((idx, tmp, target, size, "write"))
            return
        target = folder / item["name"]
        if os.path.lexists(target):
            results[idx] = _existing(src, item, target, None)
            return
        if self.options.cleanup:
            try:
                os.link(src, target, follow_symlinks=False)
                linked.append((idx, src, target))
                return
            except FileExistsError:
                results[idx] = _existing(src, item, target, None)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
        tmp, size = copy_to_temp(src, folder)
        staged.append((idx, tmp, target, size, "copy"))

    def _publish(
        self,
        payload: Sequence[Mapping[str, Any]],
        results: list[dict[str, Any] | None],
        staged: list[tuple[int, Path, Path, int, str]],
        linked: list[tuple[int, Path, Path]],
    ) -> None:
        """Durable first (one sync per filesystem), then named, then folders fsync'd; moved
        files too are synced before their sources are unlinked. The sync also makes the
        plan's new folders durable (they are not fsync'd on their own), before a written file
        is named in them and before a moved file's source is unlinked."""
        try:
            # A moved file's data may still be in the page cache (just copied into the inbox,
            # or just extracted): it is flushed too, before its source name goes.
            devices: dict[int, Path] = {}
            for folder in [tmp.parent for _i, tmp, _t, _s, _h in staged] + [
                target.parent for _i, _s, target in linked
            ]:
                devices.setdefault(os.stat(folder).st_dev, folder)
            for folder in devices.values():
                sync_filesystem(folder)
            folders = {target.parent for _i, _t, target, _s, _h in staged}
            for idx, tmp, target, size, how in staged:
                try:
                    publish(tmp, target)
                    results[idx] = {"n": size, "how": how, "name": target.name}
                except FileExistsError:  # stored meanwhile by a retried chunk: the same file?
                    if _same_bytes(tmp, target):
                        results[idx] = {"n": size, "how": "existing", "name": target.name}
                    else:
                        results[idx] = {"e": f"a different file already exists at {target.name}"}
            folders.update(target.parent for _i, _s, target in linked)
            for folder in folders:
                fsync_dir(folder)
        except OSError as exc:
            reason = {"e": f"cannot store: {exc.strerror or exc}"}
            if exc.errno in _DISK_FULL:
                reason["full"] = True  # type: ignore[assignment]
            for idx, *_rest in staged:
                if results[idx] is None:
                    results[idx] = dict(reason)
            for idx, _src, target in linked:
                with contextlib.suppress(OSError):
                    os.unlink(target)
                results[idx] = dict(reason)
            return
        # Moves: the new names are durable, so the old ones may go. Their removal is not
        # fsync'd: a crash that brings a source back finds its target with the same inode,
        # which the retry accepts and whose source its cleanup deletes.
        for idx, src, target in linked:
            results[idx] = {"n": int(payload[idx]["size"]), "how": "move", "name": target.name}
            with contextlib.suppress(OSError):  # else the cleanup pass deletes or reports it
                os.unlink(src)

    @contextlib.contextmanager
    def _anonymized(
        self, src: Path, item: Mapping[str, Any]
    ) -> Iterator[tuple[DicomHeader, SplicedEdit | Rewrite]]:
        """``src`` with every script run over it, and its new header: spliced when the
        scripts and the file allow (see :mod:`.splice_edit`), else through pydicom."""
        variables = self.variables(item)
        if self.splice_plan is not None:
            with open_spliced_edit(src, self.splice_plan, variables) as spliced:
                if spliced is not None:
                    yield spliced.header, spliced
                    return
        with open_for_rewrite(src, pixels_needed=self.pixels_needed) as rewrite:
            yield self._anonymize(rewrite.dataset, variables), rewrite

    def variables(self, item: Mapping[str, Any]) -> dict[str, str]:
        """The scripts' variables for one payload item (its session's label and subject)."""
        return {
            "project": self.options.project_id,
            "subject": str(item["subject"]),
            "session": str(item["label"]),
        }

    def _anonymize(self, ds: Any, variables: Mapping[str, str]) -> DicomHeader:
        """Every script in order over ``ds``; the header of the result."""
        with warnings.catch_warnings():  # pydicom warns as it converts invalid values
            warnings.simplefilter("ignore")
            for step in self.anonymization:
                step.apply(ds, variables)
        return header_of(ds)


def _existing(
    src: Path, item: Mapping[str, Any], target: Path, data: Callable[[], bytes] | None
) -> dict[str, Any]:
    """A retried chunk meets its own earlier output: accept it when it is this file.

    Anonymization is deterministic, so a re-run gives the same bytes; a plain copy is the
    source's bytes (or, after a rename-move, its very inode).
    """
    st = os.lstat(target)
    if stat.S_ISREG(st.st_mode):
        if data is not None:
            expected = data()
            if st.st_size == len(expected) and target.read_bytes() == expected:
                return {"n": st.st_size, "how": "existing", "name": target.name}
        elif st.st_ino == int(item["ino"]) or _same_bytes(src, target):
            return {"n": st.st_size, "how": "existing", "name": target.name}
    raise _FileProblem(f"a different file already exists at {target.name}")


def group_sessions(
    table: FileTable, options: ImportOptions, report: ProgressReporter, rel: Callable[[str], str]
) -> list[SessionGroup]:
    """Group by (StudyInstanceUID, label) and by series; drop duplicate SOPInstanceUIDs.

    Two series sharing a SeriesNumber get distinct scan folders (``4``, ``4-2``).
    """
    studies = table.study_count()
    if options.expt_label and studies > 1:
        raise ImportFailed(
            f"EXPT_LABEL {options.expt_label!r} names one session, but the folder holds "
            f"{studies} studies (StudyInstanceUIDs); import without EXPT_LABEL to get "
            "one session per study, or split the folder. Nothing was written."
        )
    for path, first in table.duplicates():
        report.error(
            rel(path), f"duplicate SOPInstanceUID (same instance as {rel(first)}); skipped"
        )
        report.add(filesDone=1, filesSkipped=1)
    table.drop_duplicates()
    sessions = {
        (study, label): SessionGroup(label=label, subject=subject, study_instance_uid=study)
        for study, label, subject in table.sessions()
    }
    for study, label, series_uid, number in sorted(table.series(), key=_series_order):
        session = sessions[(study, label)]
        base = scan_folder_name(number)
        name, n = base, 1
        while name in session.scans:
            n += 1
            name = f"{base}-{n}"
        session.scans[name] = ScanGroup(folder=name, series_instance_uid=series_uid)
    return list(sessions.values())


def _series_order(series: tuple[str, str, str, str]) -> tuple[str, str, int, str]:
    study, label, series_uid, number = series
    try:
        numeric = int(number)
    except ValueError:
        numeric = -1
    return (study, label, numeric, series_uid)


class ImportEngine:
    """The coordinator of one request's import; the RQ job wraps it with status and lease.

    ``runner`` executes a phase's chunks (see :mod:`.fanout`); ``script_texts`` are the
    anonymization scripts as ``[script_id, text]`` pairs, handed to every chunk's worker so
    all of them apply the very same scripts. ``keep_going`` says whether this run still holds
    the request; asked between phases and during the cleanup, a no stops the run with
    :class:`~.fanout.RunSuperseded` before it plans, tallies or deletes a source.
    """

    def __init__(
        self,
        *,
        request: ImportRequest,
        store: RequestStore,
        storage: SessionStorage,
        options: ImportOptions,
        runner: PhaseRunner,
        script_texts: Sequence[Sequence[str]] = (),
        on_progress: Callable[[dict[str, int]], None] | None = None,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> None:
        self.request = request
        self.keep_going = keep_going
        self.store = store
        self.storage = storage
        self.options = options
        self.runner = runner
        self.script_texts = [list(pair) for pair in script_texts]
        self.report = ProgressReporter(store, request.id, options.progress_every, on_progress)
        self.sessions_out: list[dict[str, Any]] = []
        self._made: list[Path] = []  # folders this run created, outermost first
        self._scans: list[tuple[str, SessionGroup]] = []  # (scan folder, its session)
        self._cut = 0  # len of the request folder's path with its separator

    def run(self, root: Path) -> list[dict[str, Any]]:
        """Import every file under ``root``; return the sessions written (for the status)."""
        self.store.reset_progress(self.request.id)
        clock = _PhaseClock()
        self._cut = len(os.path.join(os.fspath(root), ""))
        try:
            with FileTable() as table:
                counts = self._import(table, root, clock)
        except sqlite3.Error as exc:  # the records' temporary file could not grow, say
            raise ImportFailed(
                "the worker could not keep this request's file records "
                f"({type(exc).__name__}: {exc}); is its temporary folder (SQLITE_TMPDIR, else "
                "TMPDIR) full?"
            ) from exc
        walked, carried, carried_bytes, stored, stored_bytes = counts
        self.report.flush()
        log.info("dicom-inbox: request %s, %d files: %s", self.request.id, walked, clock)
        found = walked + carried
        imported = stored + carried
        self.store.set_progress(
            self.request.id,
            filesFound=found,
            filesDone=found,
            filesImported=imported,
            filesSkipped=found - imported,
            bytesDone=stored_bytes + carried_bytes,
        )
        if not imported:
            raise ImportFailed("no file could be imported; see errors for each file's reason")
        return self.sessions_out

    def _import(
        self, table: FileTable, root: Path, clock: _PhaseClock
    ) -> tuple[int, int, int, int, int]:
        """The phases; returns the files walked, carried (and their bytes), stored (and the
        bytes of their sources)."""
        earlier = table.add_ledger(self.store.iter_stored(self.request.id))  # a killed run's
        if not (earlier and self.options.cleanup and not os.path.lexists(root)):
            # (else a killed earlier run stored every file and removed the folder too)
            table.add_files(
                (sf.path, sf.size, sf.mtime_ns, sf.ino) for sf in walk_files(root, self.report)
            )
        clock.lap("walk")
        walked = table.file_count()
        table.keep_carried(lambda folder, name: os.path.isfile(os.path.join(folder, name)))
        carried, carried_bytes = table.carried_totals()
        self.store.set_progress(self.request.id, filesFound=walked + carried)
        self.report.flush()
        self._read_headers(table)
        clock.lap("headers")
        self._still_running()
        sessions = group_sessions(table, self.options, self.report, self._relative)
        self.report.flush()
        timestamp = self._prearchive_timestamp()
        self._check_destinations(sessions)
        folders: list[Path] = []
        try:
            self._plan(table, sessions, timestamp, folders)
            clock.lap("plan")
            results = self._run_chunks(
                STORE,
                self._planned_items(table),
                table.plan_count(),
                {"scripts": self.script_texts},
            )
            clock.lap("store")
            self._still_running()
            self._tally(table, sessions, results, folders, timestamp)
            clock.lap("tally")
        except RunSuperseded:
            raise  # the folders may be the new run's by now: left as they are
        except BaseException:
            # A set-aside archive session comes back when its replacement never happened.
            self._remove_empty_folders(folders)
            for folder in folders:
                self._restore_set_aside(folder)
            raise
        if self.options.cleanup:
            self._cleanup(table, root)
            clock.lap("cleanup")
        return (walked, carried, carried_bytes, *table.stored_totals())

    def _still_running(self) -> None:
        deadline.check()
        if not self.keep_going():
            raise RunSuperseded()

    def _relative(self, path: str) -> str:
        """``path`` relative to the request's folder, as errors name it."""
        return path[self._cut :]

    def _run_chunks(
        self, phase: str, items: Iterable[Any], count: int, meta: Mapping[str, Any]
    ) -> Iterator[Any]:
        """Do the phase's work now; then each item's result, in order, a chunk's results
        decoded only when reached. Items are made as their chunk is posted."""
        sizes = chunk_sizes(count, max(1, self.options.chunk_files))
        payloads = (list(chunk) for chunk in _batched(items, sizes))
        return itertools.chain.from_iterable(self.runner(phase, payloads, meta))

    # -- headers ----------------------------------------------------------------------------
    def _read_headers(self, table: FileTable) -> None:
        """Read each file's header (in chunks) into the table; non-DICOM files are reported."""
        items = (path for _id, path in table.paths())
        results = self._run_chunks(HEADERS, items, table.file_count(), {})
        opts = self.options

        def readable() -> Iterator[tuple[int, DicomHeader, str, str, str]]:
            for (fid, path), result in zip(table.paths(), results, strict=True):
                if "h" in result:
                    header = header_of_result(result["h"])
                    yield (
                        fid,
                        header,
                        session_label(opts.expt_label, header),
                        subject_label(opts.subject_id, header),
                        safe_file_name(os.path.basename(path)),
                    )
                else:
                    self.report.error(self._relative(path), str(result["e"]))

        table.add_headers(readable())

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

    # -- planning ---------------------------------------------------------------------------
    def _plan(
        self,
        table: FileTable,
        sessions: Sequence[SessionGroup],
        timestamp: str,
        folders: list[Path],
    ) -> None:
        """Create the scan folders and decide each file's target; nothing is written yet.

        ``folders`` receives each session folder as soon as it is decided, so a failure
        midway can still put set-aside sessions back.
        """
        opts = self.options
        anonymizing = bool(self.script_texts)
        # The new folders are not fsync'd here: each store chunk syncs the whole destination
        # filesystem (syncfs, else sync) before it names a written file or unlinks a moved
        # file's source, which makes these mkdirs durable too. An fsync of each folder a new
        # one was made in cost a 10-file import 3-4 ms of its 35 (ext4 without a journal) and
        # a 1,000-file one 0.7-2.7 ms (journalled ext4).
        for session in sessions:
            folder = self.storage.session_folder(
                opts.destination, opts.project_id, session.label, timestamp
            )
            folders.append(folder)
            self._claim(session.label)
            if opts.overwrite == "delete" and folder.exists():
                self._set_aside(folder)
            remove_temp_files(folder)  # a killed earlier attempt of this request left them
            for scan in session.scans.values():
                scan_dir = folder / "SCANS" / scan.folder / "DICOM"
                self._made.extend(make_dirs(scan_dir))
                number = len(self._scans)
                self._scans.append((str(scan_dir), session))
                key = (session.study_instance_uid, session.label, scan.series_instance_uid)
                table.add_plan(
                    (fid, number, name)
                    for fid, name in _names(table, key, number, anonymizing, opts.rename)
                )

    def _planned_items(self, table: FileTable) -> Iterator[dict[str, Any]]:
        """The store phase's payload items (see :class:`FileStorer`), in plan order."""
        for _seq, path, size, mtime, ino, scan, name in table.planned():
            scan_dir, session = self._scans[scan]
            yield {
                "src": path,
                "size": size,
                "mtime": mtime,
                "ino": ino,
                "dir": scan_dir,
                "name": name,
                "label": session.label,
                "subject": session.subject,
                "study": session.study_instance_uid,
            }

    def _tally(
        self,
        table: FileTable,
        sessions: Sequence[SessionGroup],
        results: Iterable[Mapping[str, Any]],
        folders: Sequence[Path],
        timestamp: str,
    ) -> None:
        """Record each file's outcome; on a full destination undo this request's copies.

        Files an earlier, killed run of this request stored and moved away (the table's
        carried files) count in their sessions as if stored now.
        """
        full: str | None = None
        tallies: dict[str, dict[str, Any]] = {}
        for session in sessions:
            tallies[session.label] = {
                "subject": session.subject,
                "study": session.study_instance_uid,
                "dirs": set(),
                "files": 0,
            }

        def stored() -> Iterator[tuple[int, str, str]]:
            nonlocal full
            for (seq, path, *_stat, scan, _name), result in zip(
                table.planned(), results, strict=True
            ):
                if "n" in result:  # results are read chunk by chunk: none is kept past here
                    scan_dir, session = self._scans[scan]
                    tally = tallies[session.label]
                    tally["files"] += 1
                    tally["dirs"].add(scan_dir)
                    yield seq, str(result["how"]), str(result["name"])
                else:
                    self.report.error(self._relative(path), str(result["e"]))
                    if result.get("full") and full is None:
                        full = str(result["e"])

        try:
            table.add_stored(stored())
        except sqlite3.Error as exc:  # e.g. the temporary folder is on the full filesystem
            # The request fails, so its copies go: found from the ledger in Redis instead.
            kept = self._roll_back(
                (
                    (src, os.path.join(e["dir"], e["name"]))
                    for src, e in self.store.iter_stored(self.request.id)
                ),
                folders,
            )
            raise ImportFailed(
                f"the worker could not record the stored files ({type(exc).__name__}: {exc}); "
                "the copies this request had written were removed"
                f"{f', {kept} moved file(s) kept there' if kept else ''} and the sources "
                "are untouched"
            ) from exc
        if full is not None:
            kept = self._roll_back(
                (
                    (path, os.path.join(self._scans[scan][0], name))
                    for path, *_stat, _how, scan, name in table.stored()
                ),
                folders,
            )
            raise ImportFailed(
                f"the destination is full ({full}); the copies this request had written were "
                f"removed{f', {kept} moved file(s) kept there' if kept else ''} and the "
                "sources are untouched"
            )
        for label, subject, study, scan_dir in table.carried():
            tally = tallies.setdefault(
                label, {"subject": subject, "study": study, "dirs": set(), "files": 0}
            )
            tally["files"] += 1
            tally["dirs"].add(scan_dir)
        opts = self.options
        self._remove_empty_folders(folders)  # scans whose every file failed
        for session, folder in zip(sessions, folders, strict=True):
            if tallies[session.label]["files"]:
                self._drop_set_aside(folder)  # overwrite=delete: the new session replaced it
            else:
                self._restore_set_aside(folder)  # nothing new: the old session stays
        for label, tally in tallies.items():
            if not tally["files"]:
                continue
            self.sessions_out.append(
                {
                    "label": label,
                    "subject": tally["subject"],
                    "studyInstanceUid": tally["study"],
                    "destination": opts.destination,
                    "url": self.storage.session_url(
                        opts.destination, opts.project_id, tally["subject"], label, timestamp
                    ),
                    "scans": len(tally["dirs"]),
                    "files": tally["files"],
                }
            )

    def _roll_back(self, stored: Iterable[tuple[str, str]], folders: Sequence[Path]) -> int:
        """Remove each stored file (``(source, stored path)``) whose source still exists;
        return how many were kept (moved: the stored file is the only copy)."""
        kept = 0
        for source, target in stored:
            if not os.path.lexists(source):
                kept += 1
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
        self._remove_empty_folders(folders)
        for folder in folders:
            self._restore_set_aside(folder)
        return kept

    def _restore_set_aside(self, folder: Path) -> None:
        """Put a session set aside for ``overwrite=delete`` back, if nothing took its place."""
        aside = self._aside(folder)
        if aside.exists() and not folder.exists():
            os.rename(aside, folder)
            fsync_dir(folder.parent)

    def _remove_empty_folders(self, folders: Sequence[Path]) -> None:
        """Remove the empty folders of these sessions and every folder this run made that
        stayed empty (another request creating its session in one of them meanwhile is
        safe: :func:`~.storage.make_dirs` starts again when a parent vanishes)."""
        for folder in folders:
            for emptied in _folders_bottom_up(folder):
                with contextlib.suppress(OSError):
                    emptied.rmdir()
        for made in reversed(self._made):
            with contextlib.suppress(OSError):
                made.rmdir()

    def _aside(self, folder: Path) -> Path:
        return folder.with_name(f"{TEMP_PREFIX}old-{self.request.id}-{folder.name}")

    def _set_aside(self, folder: Path) -> None:
        aside = self._aside(folder)
        if not aside.exists():
            os.rename(folder, aside)
            fsync_dir(folder.parent)

    def _drop_set_aside(self, folder: Path) -> None:
        aside = self._aside(folder)
        if aside.exists():
            shutil.rmtree(aside)

    # -- cleanup ----------------------------------------------------------------------------
    def _cleanup(self, table: FileTable, root: Path) -> None:
        """Delete imported sources (all already durable), then emptied folders."""
        every = max(1, self.options.chunk_files)
        for n, (path, size, mtime, ino, how, _scan, _name) in enumerate(table.stored()):
            if n % every == 0:
                self._still_running()  # a run that lost its lease deletes nothing more
            if not os.path.lexists(path):
                if how != "move":  # our own moves leave nothing; anything else is news
                    self.report.error(
                        self._relative(path),
                        "removed by someone else after it was imported; the copy is kept",
                    )
                continue
            if not _unchanged(path, {"size": size, "mtime": mtime, "ino": ino}):
                self.report.error(
                    self._relative(path), "changed since the scan; imported copy kept, source kept"
                )
                continue
            try:
                os.unlink(path)
            except OSError as exc:
                self.report.error(
                    self._relative(path), f"imported, but the source could not be deleted: {exc}"
                )
        for folder in _folders_bottom_up(root):
            if folder == root and self.options.keep_root:
                continue
            with contextlib.suppress(OSError):
                folder.rmdir()


def _names(
    table: FileTable,
    series: tuple[str, str, str],
    scan: int,
    anonymizing: bool,
    rename: bool,
) -> Iterator[tuple[int, str | None]]:
    """Each file's name in its scan folder: the original name, sanitised, or XNAT's template.

    The template (``rename=true``, or a name two files share) is taken from the written
    header: after anonymization it is left to the chunk's worker (``None``), so no original
    UID leaks into a name. Names taken are noted in the table, not in memory.
    """
    shared = table.shared_names(*series)
    if shared and not rename:  # the names that stay are taken before any template is made
        table.claim_unique_names(scan, *series)
    for fid, original, *fields in table.series_files(*series):
        if not rename and original not in shared:
            yield fid, original
        elif anonymizing:
            yield fid, None
        else:
            base = template_file_name(DicomHeader(*fields))
            name, n = base, 1
            while not table.claim_name(scan, name):
                n += 1
                name = f"{n}-{base}"
            yield fid, name


def chunk_sizes(count: int, size: int) -> Iterator[int]:
    """The sizes of a phase's chunks for ``count`` items: ``size`` each, except that the last
    two chunks' worth is cut into (up to) four, so the workers finish a phase together.

    With whole chunks to the end, the last one kept one worker busy for up to a chunk's time
    while the others waited (a 1,000-file import: 256, 256, 256, 232 on two workers). A
    request of one chunk stays one chunk: it needs no helper.
    """
    left = max(0, count)
    if left <= size:
        if left:
            yield left
        return
    while left > 2 * size:
        yield size
        left -= size
    parts = max(1, min(4, left // max(1, size // 4)))
    base, extra = divmod(left, parts)
    for part in range(parts):
        yield base + (1 if part < extra else 0)


def _batched(items: Iterable[Any], sizes: Iterable[int]) -> Iterator[tuple[Any, ...]]:
    """``items`` in batches of the given sizes; what is left after them, in one more."""
    iterator = iter(items)
    for size in sizes:
        batch = tuple(itertools.islice(iterator, size))
        if not batch:
            return
        yield batch
    if rest := tuple(iterator):
        yield rest


class _PhaseClock:
    """Milliseconds per phase of one run, for the worker's log (where an import spends its
    time): at 1,000 files a phase takes 5-50 ms, which seconds showed as 0.00 or 0.01."""

    def __init__(self) -> None:
        self.laps: list[tuple[str, float]] = []
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.laps.append((phase, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{phase} {seconds * 1000:.1f} ms" for phase, seconds in self.laps)


class _FileProblem(Exception):
    pass


def _unchanged(path: str | Path, seen: Mapping[str, Any]) -> bool:
    """Still the regular file the scan saw (size, mtime and inode)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns, st.st_ino) == (
        int(seen["size"]),
        int(seen["mtime"]),
        int(seen["ino"]),
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
