"""The ``inbox`` handler: a folder already on the server, under ``<inbox>/<PROJECT_ID>/``."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..archives import archive_source, is_archive_name, note_error, sniff_archive
from ..errors import BadRequest, Forbidden, PayloadTooLarge
from ..registry import PreparedImport, Submission

if TYPE_CHECKING:
    from ..config import InboxConfig
    from ..requests import ImportRequest

MAX_PATH_LENGTH = 4096


@dataclass(frozen=True)
class InboxPath:
    """A resolved session path and the project whose inbox folder holds it."""

    real_path: Path
    inbox_project: str


def resolve_inbox_path(path: str | None, inbox_root: Path) -> InboxPath:
    """Resolve ``path`` (symlinks included) and check it lies inside ``<inbox_root>/<P>/``.

    Uses ``realpath`` and a path-component comparison, never a string prefix, so
    ``/inbox2/...``, ``..`` segments and symlinks pointing out are all refused.
    """
    if not path:
        raise BadRequest(
            "the path parameter is required: the absolute path of the session folder",
            errors={"path": ["Missing data for required field."]},
        )
    if "\x00" in path:
        raise BadRequest("path contains a NUL byte", errors={"path": ["NUL byte"]})
    if len(path) > MAX_PATH_LENGTH:
        raise BadRequest(
            f"path is longer than {MAX_PATH_LENGTH} characters", errors={"path": ["too long"]}
        )
    if not os.path.isabs(path):
        raise BadRequest(f"path must be absolute, got {path!r}", errors={"path": ["not absolute"]})
    root = Path(os.path.realpath(inbox_root))
    real = Path(os.path.realpath(path))
    if os.path.commonpath([root, real]) != str(root) or real == root:
        raise BadRequest(
            f"path {path!r} is not inside a project folder of the inbox {str(root)!r}",
            errors={"path": ["outside the inbox"]},
        )
    project_folder = real.relative_to(root).parts[0]
    return InboxPath(real_path=real, inbox_project=project_folder)


def count_files(folder: Path, *, max_files: int, max_bytes: int) -> tuple[int, int | None]:
    """Count the regular files under ``folder`` without following symlinks, and their bytes
    when ``max_bytes`` limits them (else ``None``).

    The count comes from the directory entries' types, with no system call per file (a stat
    of each one cost the POST 0.4 s at 50,000 files); only a byte limit needs their sizes.
    Unreadable folders and files gone meanwhile are passed over, as the walk of the import
    reports them. Stops early with a 413 once a non-zero limit is passed.
    """
    files = 0
    total = 0
    pending = [os.fspath(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        if max_bytes:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
                    files += 1
                    if max_files and files > max_files:
                        raise PayloadTooLarge(
                            f"the folder holds more than the limit of {max_files} files",
                            errors={"path": [f"more than {max_files} files"]},
                        )
                    if max_bytes and total > max_bytes:
                        raise PayloadTooLarge(
                            f"the folder holds more than the limit of {max_bytes} bytes",
                            errors={"path": [f"more than {max_bytes} bytes"]},
                        )
        except OSError:
            continue
    return files, (total if max_bytes else None)


class InboxHandler:
    """XNAT's DICOM Inbox: import a folder under ``<inbox>/<P>/`` where the user can edit P.

    The path may also name a ``.zip``, ``.tar``, ``.tgz`` or ``.tar.gz`` file there: it is
    extracted in the job into a private working folder (see :mod:`..archives`).
    """

    def __init__(self) -> None:
        #: request id -> the archive's (dev, inode, size, mtime) as extracted, for finish().
        self._extracted: dict[int, tuple[int, int, int, int]] = {}

    def prepare(self, submission: Submission) -> PreparedImport:
        params = submission.params
        located = resolve_inbox_path(params.path, submission.config.inbox_path)
        project = located.inbox_project
        if submission.projects.get_project(project) is None:
            raise BadRequest(
                f"the inbox folder {project!r} does not belong to any project",
                errors={"path": ["not under a project's inbox folder"]},
            )
        if not submission.projects.can_edit(submission.user, project):
            raise Forbidden(
                f"user {submission.user.username!r} cannot edit project {project!r}, "
                "whose inbox folder holds the path",
                errors={"path": [f"no edit right on project {project}"]},
            )
        real = located.real_path
        try:
            exists, is_dir = real.exists(), real.is_dir()
        except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES: a refusal, never a 500
            raise BadRequest(
                f"path {params.path!r} cannot be used: {exc.strerror}",
                errors={"path": [str(exc.strerror)]},
            ) from None
        if not exists:
            raise BadRequest(
                f"path {params.path!r} does not exist", errors={"path": ["does not exist"]}
            )
        if not is_dir and is_archive_name(real.name):
            return _prepare_archive(real, params.path, submission.config)
        if not is_dir:
            raise BadRequest(
                f"path {params.path!r} is neither a folder nor a supported archive file",
                errors={"path": ["not a folder"]},
            )
        cfg = submission.config
        # Always counted (no file is read): the job timeout and the helpers follow the count.
        files, size = count_files(real, max_files=cfg.max_files, max_bytes=cfg.max_bytes)
        if files == 0:
            raise _empty(params.path)
        return PreparedImport(session_path=str(real), file_count=files, byte_count=size)

    @contextlib.contextmanager
    def open_source(self, request: ImportRequest, config: InboxConfig) -> Iterator[Path]:
        """Re-check the path at job time: a symlink swapped in since submit must not escape."""
        located = resolve_inbox_path(request.session_path, config.inbox_path)
        if str(located.real_path) != request.session_path:
            raise BadRequest("the session path changed since it was submitted (symlink?)")
        if is_archive_name(located.real_path.name) and not located.real_path.is_dir():
            with archive_source(request, config, located.real_path) as (folder, report):
                self._extracted[request.id] = report.source
                yield folder
            return
        yield located.real_path

    def finish(self, request: ImportRequest, config: InboxConfig, succeeded: bool) -> None:
        """With ``cleanupAfterImport=true`` an archive is deleted now, after success only,
        and only if it is still the file that was extracted."""
        source = self._extracted.pop(request.id, None)
        if not (succeeded and request.cleanup_after_import and source):
            return
        archive = Path(request.session_path)
        from ..extension import current_state

        current = current_state().store.get(request.id)
        if current is not None and (current.errors or current.progress.get("filesSkipped")):
            # Skipped or refused members (not DICOM, nested archives, links) live only in it.
            note_error(request.id, archive.name, "archive kept: some of its files were skipped")
            return
        try:
            st = os.lstat(archive)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != source:
            note_error(request.id, archive.name, "archive changed after it was extracted: kept")
            return
        os.unlink(archive)


def _empty(path: str | None) -> BadRequest:
    return BadRequest(f"path {path!r} holds no files to import", errors={"path": ["empty folder"]})


def _prepare_archive(real: Path, path: str | None, cfg: InboxConfig) -> PreparedImport:
    """Cheap checks of an archive path: a regular, non-empty zip or tar file; no extraction."""
    st = os.lstat(real)
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest(
            f"path {path!r} is not a regular file", errors={"path": ["not a regular file"]}
        )
    if st.st_size == 0:
        raise BadRequest(f"path {path!r} is an empty file", errors={"path": ["empty file"]})
    if cfg.max_bytes and st.st_size > cfg.max_bytes:
        raise PayloadTooLarge(
            f"the archive holds more than the limit of {cfg.max_bytes} bytes",
            errors={"path": [f"more than {cfg.max_bytes} bytes"]},
        )
    try:
        kind = sniff_archive(real)
    except OSError as exc:
        raise BadRequest(
            f"path {path!r} cannot be read: {exc.strerror or exc}",
            errors={"path": ["unreadable"]},
        ) from exc
    if kind is None:
        raise BadRequest(
            f"path {path!r} is named as an archive but is neither a zip nor a tar archive",
            errors={"path": ["not a zip or tar archive"]},
        )
    return PreparedImport(session_path=str(real), byte_count=st.st_size)
