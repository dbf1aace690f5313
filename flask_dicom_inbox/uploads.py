"""A request body handed to an import handler as a stream, saved to disk in chunks.

The submit view never reads an upload into memory: it wraps the WSGI input (or a multipart
file part, which Werkzeug spools to disk) in an :class:`Upload`; a handler that wants the body
calls :meth:`Upload.save`. If the submission is refused after that, the view calls
:meth:`Upload.discard`, so a refused call leaves no file behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO

from flask import Request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from .errors import BadRequest, PayloadTooLarge

_CHUNK = 1024 * 1024


class Upload:
    """A request body not yet read; :meth:`save` streams it to a private file."""

    def __init__(
        self, stream: IO[bytes], *, content_length: int | None, content_type: str | None
    ) -> None:
        self.stream = stream
        self.content_length = content_length
        self.content_type = content_type
        self.saved: Path | None = None

    def save(self, folder: Path, *, max_bytes: int, suffix: str = ".upload") -> Path:
        """Stream the body into a new file under ``folder``; 413 past ``max_bytes`` (0: none).

        The file is fsync'd: a worker on another machine sharing the folder reads it later.
        """
        if max_bytes and self.content_length is not None and self.content_length > max_bytes:
            raise PayloadTooLarge(
                f"the upload of {self.content_length} bytes is over the limit of {max_bytes}",
                errors={"body": [f"more than {max_bytes} bytes"]},
            )
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = folder / f"{uuid.uuid4().hex}{suffix}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        self.saved = target
        total = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := self.stream.read(_CHUNK):
                    total += len(chunk)
                    if max_bytes and total > max_bytes:
                        raise PayloadTooLarge(
                            f"the upload is over the limit of {max_bytes} bytes",
                            errors={"body": [f"more than {max_bytes} bytes"]},
                        )
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except ClientDisconnected:
            self.discard()
            raise BadRequest(
                f"the upload ended after {total} bytes, before the body was complete",
                errors={"body": ["incomplete"]},
            ) from None
        except BaseException:
            self.discard()
            raise
        if self.content_length is not None and total != self.content_length:
            self.discard()
            raise BadRequest(
                f"the upload has {total} bytes, not the {self.content_length} announced",
                errors={"body": ["incomplete"]},
            )
        return target

    def discard(self) -> None:
        """Remove the saved file, if any (a refused submission leaves nothing behind)."""
        if self.saved is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.saved)
            self.saved = None


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

#: The largest form body of a handler that takes no upload: its parameters only.
FORM_MAX_BYTES = 1024 * 1024


def read_submission(
    req: Request, *, takes_upload: bool, max_upload_bytes: int = 0, handler_known: bool = True
) -> tuple[dict[str, str], Upload | None]:
    """The submit parameters (query string, plus a form body) and the body as an upload.

    A form body is parsed only when it is a form: an archive posted as the raw body (any
    other content type, or ``curl --data-binary``'s default form type for a handler that
    ``takes_upload``) is left unread for the handler. In a multipart form, the first file
    part is the upload.

    Werkzeug spools a multipart file part to disk while it parses the form, before any check
    of ours: the form may hold ``max_upload_bytes`` (0: no limit) and ``FORM_MAX_BYTES`` of
    fields for a handler that takes an upload, or that the query string does not name
    (``handler_known`` false: a form field may name one that does), ``FORM_MAX_BYTES`` for
    one that does not (413 past it, from ``Content-Length`` before reading, else while
    reading).
    """
    args = req.args.to_dict(flat=True)
    mimetype = req.mimetype
    if mimetype == "multipart/form-data" or (mimetype in _FORM_TYPES and not takes_upload):
        may_upload = takes_upload or not handler_known
        ours: int | None = FORM_MAX_BYTES
        if may_upload:
            ours = max_upload_bytes + FORM_MAX_BYTES if max_upload_bytes else None
        limits = [n for n in (req.max_content_length, ours) if n is not None]
        limit = req.max_content_length = min(limits) if limits else None  # a host's may be less
        try:
            raw = {**args, **req.form.to_dict(flat=True)}
        except RequestEntityTooLarge:
            reason = _form_refusal(req, limit, may_upload)
            raise PayloadTooLarge(reason, errors={"body": [reason]}) from None
        part = next(iter(req.files.values()), None)
        if part is None:
            return raw, None
        return raw, Upload(part.stream, content_length=None, content_type=part.mimetype)
    if req.content_length == 0:
        return args, None
    return args, Upload(
        req.stream, content_length=req.content_length, content_type=mimetype or None
    )


def _form_refusal(req: Request, limit: int | None, may_upload: bool) -> str:
    """Why Werkzeug refused the form: its size, or (also 413) a field or a count of parts
    over Werkzeug's own form limits."""
    what = (
        "form with its upload"
        if may_upload
        else "form (parameters only: this handler takes no upload)"
    )
    werkzeug = (
        f"a field over {req.max_form_memory_size} bytes (MAX_FORM_MEMORY_SIZE) or more than "
        f"{req.max_form_parts} parts (MAX_FORM_PARTS)"
    )
    if limit is None or (req.content_length is not None and req.content_length <= limit):
        return f"the form has {werkzeug}"
    if req.content_length is not None:
        return f"the {what} is over the limit of {limit} bytes"
    return f"the {what} is over the limit of {limit} bytes, or it has {werkzeug}"
