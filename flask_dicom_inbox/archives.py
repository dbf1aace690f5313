"""Safe extraction of zip and tar (``.tar``, ``.tgz``, ``.tar.gz``) archives.

An archive comes from a client, so every member is treated as hostile: absolute names, ``..``,
symlink, hardlink, device and FIFO members are skipped and reported, never written; nested
archives are reported, not expanded; a zip bomb (too many members, too many bytes, too high an
expansion ratio) or a truncated/corrupt archive fails the whole request. Sizes are checked from
the headers first AND counted while the bytes stream, so a header that lies gains nothing.

Nothing is ever written outside the destination folder: it is created empty by us, we never
create a link in it, each file is opened ``O_EXCL | O_NOFOLLOW`` and each resolved target is
compared with the folder by path components.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .errors import ImportFailed

if TYPE_CHECKING:
    from .config import InboxConfig
    from .requests import ImportRequest

log = logging.getLogger("flask_dicom_inbox")

#: File names taken as archives (compared case-insensitively).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz")
#: Members with these names are nested archives: reported, never expanded.
_NESTED_SUFFIXES = (*ARCHIVE_SUFFIXES, ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tbz2")
#: The expansion ratio is judged only past this many bytes (small archives are mostly headers).
RATIO_FLOOR = 1024 * 1024
_CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveRefused(ImportFailed):
    """The archive as a whole cannot be imported (a bomb, truncated, corrupt, not an archive)."""


def is_archive_name(name: str) -> bool:
    """Whether ``name`` ends with one of :data:`ARCHIVE_SUFFIXES`, in any case."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _kind_of(head: bytes) -> str | None:
    """``zip`` or ``tar`` (plain or gzip-compressed) from an archive's first 512 bytes."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        return "tar"
    return None


def _looks_like_archive(head: bytes) -> bool:
    """A nested archive by content; a DICOM file (``DICM`` at 128) never counts."""
    return head[128:132] != b"DICM" and _kind_of(head) is not None


def sniff_archive(path: Path) -> str | None:
    """``zip``, ``tar`` or ``None`` for the regular file ``path`` (symlinks not followed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return _kind_of(fh.read(512))


@dataclass(frozen=True)
class ArchiveLimits:
    """Bomb limits; 0 means no limit for bytes and members."""

    max_bytes: int = 0
    max_members: int = 0
    max_ratio: float = 0.0

    @classmethod
    def from_config(cls, config: InboxConfig) -> ArchiveLimits:
        return cls(
            max_bytes=config.archive_max_bytes,
            max_members=config.archive_max_members,
            max_ratio=config.archive_max_ratio,
        )


@dataclass
class ExtractionReport:
    """What an extraction wrote and what it refused (``{"path", "reason"}`` per member)."""

    files: int = 0
    bytes: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of the archive as it was read.
    source: tuple[int, int, int, int] = (0, 0, 0, 0)


def member_parts(name: str) -> tuple[str, ...] | str:
    """The path components of a member name, or the reason it is refused.

    Backslashes count as separators (Windows zip tools write them).
    """
    if "\x00" in name:
        return "NUL byte in the member name"
    cleaned = name.replace("\\", "/")
    if cleaned.startswith("/") or _DRIVE.match(cleaned):
        return "absolute member name"
    parts = tuple(p for p in cleaned.split("/") if p not in ("", "."))
    if ".." in parts:
        return "'..' in the member name"
    if not parts:
        return "empty member name"
    return parts


class _CountingReader:
    """Counts the compressed bytes read, so the expansion ratio can be watched while streaming."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


class _Extractor:
    """Writes members into ``dest`` under the limits; one instance per archive."""

    def __init__(self, dest: Path, limits: ArchiveLimits, archive_size: int) -> None:
        self.dest = dest
        self.root = os.path.realpath(dest)
        self.limits = limits
        self.archive_size = max(1, archive_size)
        self.report = ExtractionReport()
        self.members = 0

    # -- limits ---------------------------------------------------------------------------
    def count_member(self) -> None:
        self.members += 1
        if self.limits.max_members and self.members > self.limits.max_members:
            raise ArchiveRefused(
                f"the archive holds more than the limit of {self.limits.max_members} members"
            )

    def check_total(self, total: int, what: str) -> None:
        if self.limits.max_bytes and total > self.limits.max_bytes:
            raise ArchiveRefused(
                f"the archive {what} more than the limit of {self.limits.max_bytes} bytes "
                "(zip bomb?)"
            )

    def check_ratio(self, expanded: int, compressed: int, what: str = "the archive") -> None:
        ratio = self.limits.max_ratio
        if ratio > 0 and expanded > RATIO_FLOOR and expanded > ratio * max(1, compressed):
            raise ArchiveRefused(
                f"{what} expands more than {ratio:g} times (zip bomb?): "
                f"{expanded} bytes from {compressed}"
            )

    # -- writing --------------------------------------------------------------------------
    def skip(self, name: str, reason: str) -> None:
        self.report.skipped.append({"path": name, "reason": reason})

    def target(self, name: str, *, directory: bool) -> Path | None:
        """The checked target path for a member (its parents created), or None if skipped."""
        parts = member_parts(name)
        if isinstance(parts, str):
            self.skip(name, parts)
            return None
        target = self.dest.joinpath(*parts)
        if os.path.commonpath([self.root, os.path.normpath(target)]) != self.root:
            self.skip(name, "resolves outside the working folder")  # pragma: no cover
            return None
        folders = parts if directory else parts[:-1]
        current = self.dest
        try:
            for part in folders:
                current = current / part
                try:
                    os.mkdir(current, 0o700)
                except FileExistsError:
                    if not stat.S_ISDIR(os.lstat(current).st_mode):
                        self.skip(name, f"'{part}' is also the name of a file member")
                        return None
        except OSError as exc:
            self.skip(name, f"cannot create its folder: {exc.strerror}")
            return None
        return target

    def write(
        self,
        name: str,
        source: IO[bytes],
        size: int,
        compressed: _CountingReader | None = None,
        offset: int = 0,
    ) -> None:
        """Stream one regular member of declared ``size`` into place, or skip it.

        ``compressed`` counts the archive's bytes read so far and ``offset`` is where the
        member's data starts in the expanded stream: together they give the running ratio.
        """
        if name.lower().endswith(_NESTED_SUFFIXES):
            self.skip(name, "nested archive, not expanded")
            return
        self.check_total(self.report.bytes + size, "declares")
        head = source.read(_CHUNK)
        if _looks_like_archive(head):
            self.skip(name, "nested archive, not expanded")
            return
        target = self.target(name, directory=False)
        if target is None:
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(target, flags, 0o600)
        except FileExistsError:
            self.skip(name, "a member of the same name was already extracted")
            return
        except OSError as exc:
            self.skip(name, f"cannot be written: {exc.strerror}")
            return
        written = 0
        with os.fdopen(fd, "wb") as out:
            chunk = head
            while chunk:
                written += len(chunk)
                if written > size:
                    raise ArchiveRefused(
                        f"member {name!r} holds more bytes than its header declares ({size})"
                    )
                self.check_total(self.report.bytes + written, "expands to")
                if compressed is not None:
                    self.check_ratio(offset + written, compressed.count)
                out.write(chunk)
                chunk = source.read(_CHUNK)
        if written != size:
            raise ArchiveRefused(
                f"the archive is truncated: member {name!r} has {written} of its {size} bytes"
            )
        self.report.files += 1
        self.report.bytes += written


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> ExtractionReport:
    """Extract ``archive`` into the existing, empty folder ``dest``.

    Skipped members are listed in the report; a bomb, a truncated or corrupt archive, or a file
    that is no archive raises :class:`ArchiveRefused` (``dest`` may then hold a partial
    extraction: the caller removes it).
    """
    fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveRefused(f"{archive.name!r} is not a regular file")
        kind = _kind_of(fh.read(512))
        fh.seek(0)
        extractor = _Extractor(dest, limits, st.st_size)
        extractor.report.source = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if kind == "zip":
            _extract_zip(fh, extractor)
        elif kind == "tar":
            _extract_tar(fh, extractor)
        else:
            raise ArchiveRefused(f"{archive.name!r} is neither a zip nor a tar archive")
    return extractor.report


def _zip_mode_kind(info: zipfile.ZipInfo) -> str | None:
    """The refusal reason for a zip member's Unix file type, if it is not a file or folder."""
    mode = info.external_attr >> 16
    if info.create_system != 3 or not mode:
        return None
    if stat.S_ISLNK(mode):
        return "symlink member"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device member"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "FIFO or socket member"
    return None


def _extract_zip(fh: IO[bytes], ex: _Extractor) -> None:
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            # Header checks first: nothing is written for a bomb the headers already show.
            if ex.limits.max_members and len(infos) > ex.limits.max_members:
                raise ArchiveRefused(
                    f"the archive holds {len(infos)} members, more than the limit of "
                    f"{ex.limits.max_members}"
                )
            declared = sum(i.file_size for i in infos)
            ex.check_total(declared, "declares")
            ex.check_ratio(declared, ex.archive_size)
            for info in infos:
                ex.check_ratio(info.file_size, info.compress_size, f"member {info.filename!r}")
            for info in infos:
                ex.count_member()
                reason = _zip_mode_kind(info)
                if reason:
                    ex.skip(info.filename, reason)
                elif info.flag_bits & 0x1:
                    ex.skip(info.filename, "encrypted member")
                elif info.is_dir():
                    ex.target(info.filename, directory=True)
                else:
                    try:
                        with zf.open(info) as source:
                            ex.write(info.filename, source, info.file_size)
                    except NotImplementedError as exc:
                        ex.skip(info.filename, f"unsupported compression: {exc}")
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ArchiveRefused(f"the zip archive is truncated or corrupt: {exc}") from None


def _tar_kind_reason(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return "symlink member"
    if member.islnk():
        return "hardlink member"
    if member.ischr() or member.isblk():
        return "device member"
    if member.isfifo():
        return "FIFO member"
    if not (member.isreg() or member.isdir()):
        return "unsupported member type"
    return None


def _extract_tar(fh: IO[bytes], ex: _Extractor) -> None:
    counting = _CountingReader(fh)
    try:
        # Stream mode: one pass, no seeking, so the compressed bytes read are known throughout.
        with tarfile.open(fileobj=counting, mode="r|*") as tar:  # type: ignore[call-overload]
            for member in tar:
                # A stream still keeps every member's TarInfo (about 450-500 B each: 200,000
                # members would hold 90-100 MB); nothing here looks back at earlier members.
                tar.members = []
                ex.count_member()
                ex.check_ratio(member.offset, counting.count)
                reason = _tar_kind_reason(member)
                if reason:
                    ex.skip(member.name, reason)
                elif member.isdir():
                    ex.target(member.name, directory=True)
                else:
                    source = tar.extractfile(member)
                    if source is None:  # pragma: no cover - isreg() members always have data
                        ex.skip(member.name, "no data")
                        continue
                    ex.write(member.name, source, member.size, counting, member.offset_data)
    except (tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveRefused(f"the tar archive is truncated or corrupt: {exc}") from None


def extraction_folder(config: InboxConfig, request_id: int) -> Path:
    """The private folder a request's archive is extracted into (one per request)."""
    return config.work_path / "extract" / str(int(request_id))


def _fresh_folder(folder: Path) -> None:
    """An empty private folder: what a dead earlier attempt left is removed first."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.mkdir(mode=0o700)


@contextlib.contextmanager
def archive_source(
    request: ImportRequest, config: InboxConfig, archive: Path
) -> Iterator[tuple[Path, ExtractionReport]]:
    """Extract ``archive`` into the request's working folder; remove the folder afterwards.

    Skipped members are added to the request's errors (and counted as found and skipped) when
    the import is over, since the engine starts the error list afresh when it starts.
    """
    folder = extraction_folder(config, request.id)
    _fresh_folder(folder)
    report: ExtractionReport | None = None
    try:
        report = extract_archive(archive, folder, ArchiveLimits.from_config(config))
        yield folder, report
    finally:
        try:
            if report is not None and report.skipped:
                _record_skipped(request.id, report.skipped)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _record_skipped(request_id: int, skipped: list[dict[str, str]]) -> None:
    from .extension import current_state

    store = current_state().store
    store.add_errors(request_id, skipped)
    store.add_progress(request_id, filesFound=len(skipped), filesSkipped=len(skipped))


def note_error(request_id: int, path: str, reason: str) -> None:
    """Add one ``{path, reason}`` to the request's errors (and the log)."""
    from .extension import current_state

    log.warning("dicom-inbox: request %s: %s: %s", request_id, path, reason)
    current_state().store.add_errors(request_id, [{"path": path, "reason": reason}])
