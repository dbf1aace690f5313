"""The ``DICOM-zip`` handler: XNAT's Compressed Uploader, a zip or tar archive as the body.

``POST /data/services/import?import-handler=DICOM-zip&PROJECT_ID=..`` (the ``xnat`` client's
``services.import_(path, project=.., import_handler='DICOM-zip')`` sends the file as the raw
body, ``Content-Type: application/zip`` or ``application/x-tar``). The body is streamed to a
private file in the working folder at submit time, then imported by the same job, with the same
anonymization and status records as ``inbox``. As XNAT does, the call answers once the import
is over, with the session's URL (``DICOM_INBOX_UPLOAD_WAIT`` bounds the wait; past it the
answer is the request's status URL).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..archives import archive_source, sniff_archive
from ..errors import BadRequest, ImportFailed
from ..registry import PreparedImport, Submission
from ..requests import COMPLETED, FINISHED

if TYPE_CHECKING:
    from ..config import InboxConfig
    from ..extension import InboxState
    from ..requests import ImportRequest

_POLL_SECONDS = 0.2


def uploads_folder(config: InboxConfig) -> Path:
    """Where upload bodies are kept until their import is over."""
    return config.work_path / "uploads"


class DicomZipHandler:
    """``import-handler=DICOM-zip``: the request body is a zip, tar, tgz or tar.gz archive."""

    #: The submit view hands this handler the request body as a stream.
    takes_upload = True
    #: The submit view waits for the import and answers the session's URL (XNAT's contract).
    answers_when_done = True

    def prepare(self, submission: Submission) -> PreparedImport:
        if submission.params.path:
            raise BadRequest(
                "DICOM-zip takes the archive as the request body, not a path; use "
                "import-handler=inbox for an archive already on the server",
                errors={"path": ["not used by DICOM-zip"]},
            )
        upload = submission.upload
        if upload is None:
            raise BadRequest(
                "DICOM-zip needs a zip or tar archive as the request body",
                errors={"body": ["Missing data for required field."]},
            )
        config = submission.config
        saved = upload.save(uploads_folder(config), max_bytes=config.upload_max_bytes)
        size = saved.stat().st_size
        if size == 0:
            upload.discard()
            raise BadRequest("the request body is empty", errors={"body": ["empty"]})
        if sniff_archive(saved) is None:
            upload.discard()
            raise BadRequest(
                "the request body is neither a zip nor a tar (.tar, .tgz, .tar.gz) archive",
                errors={"body": ["not a zip or tar archive"]},
            )
        return PreparedImport(session_path=str(saved), byte_count=size)

    @contextlib.contextmanager
    def open_source(self, request: ImportRequest, config: InboxConfig) -> Iterator[Path]:
        archive = Path(request.session_path)
        if archive.parent != uploads_folder(config):
            raise ImportFailed("the uploaded archive is not in the working folder")
        if not archive.is_file():
            raise ImportFailed("the uploaded archive is gone from the working folder")
        with archive_source(request, config, archive) as (folder, _report):
            yield folder

    def finish(self, request: ImportRequest, config: InboxConfig, succeeded: bool) -> None:
        """The upload is our own copy: remove it once the request is over, either way."""
        archive = Path(request.session_path)
        if archive.parent == uploads_folder(config):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(archive)


def wait_for_answer(state: InboxState, record: ImportRequest, status_url: str) -> str:
    """Wait (at most ``DICOM_INBOX_UPLOAD_WAIT`` s) for the import; the URL to answer.

    Completed: XNAT's session URL (``/data/prearchive/projects/P/<timestamp>/<label>`` or
    ``/data/archive/projects/P/subjects/S/experiments/E``). Failed: a 400 with the reason.
    Still running at the deadline: the status URL, as ``inbox`` answers.
    """
    deadline = time.monotonic() + state.config.upload_wait
    status: str | None = record.status
    # The status alone while waiting: a whole read decodes the request's errors every time.
    while status is not None and status not in FINISHED and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
        status = state.store.status_of(record.id)
    current = state.store.get(record.id) if status in FINISHED else None
    if current is None or not current.finished:
        return status_url
    if current.status == COMPLETED and current.resolution:
        return f"/data{current.resolution}"
    raise BadRequest(
        f"import request {record.id} failed: {current.message}",
        errors={"request": [status_url]},
    )
