"""Import handlers from a third-party package.

``EntryHandler`` is declared in the ``flask_dicom_inbox.handlers`` entry-point group;
``HostHandler`` is registered by a host calling :func:`register`. Both import a folder under
the project's inbox (they delegate to the built-in ``inbox`` handler) and record each call, so
the tests see that the registry really used them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from flask_dicom_inbox import DicomInbox
from flask_dicom_inbox.handlers.inbox import InboxHandler
from flask_dicom_inbox.registry import PreparedImport, Submission

#: (handler tag, method, detail) for every call, in order.
CALLS: list[tuple[str, str, object]] = []


class _Recording:
    tag = ""

    def __init__(self) -> None:
        self._inbox = InboxHandler()

    def prepare(self, submission: Submission) -> PreparedImport:
        CALLS.append((self.tag, "prepare", submission.params.path))
        return self._inbox.prepare(submission)

    def open_source(self, request: Any, config: Any) -> contextlib.AbstractContextManager[Path]:
        CALLS.append((self.tag, "open_source", request.id))
        return self._inbox.open_source(request, config)

    def finish(self, request: Any, config: Any, succeeded: bool) -> None:
        CALLS.append((self.tag, "finish", succeeded))


class EntryHandler(_Recording):
    """Declared as the ``test-entry`` entry point."""

    tag = "entry"


class HostHandler(_Recording):
    """Registered by :func:`register` through the public ``register_handler`` call."""

    tag = "host"


def register(inbox: DicomInbox) -> None:
    """What a host does: ``inbox.register_handler(name, handler)``."""
    inbox.register_handler("test-host", HostHandler())


def not_a_handler() -> object:
    """An entry point whose factory returns no handler: refused and reported."""
    return object()
