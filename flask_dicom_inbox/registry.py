"""The import-handler registry: ``import-handler=<name>`` picks a handler from it.

A handler validates a submission inside the HTTP request (cheap checks, nothing written) and, in
the job, hands the import engine the folder to walk. ``inbox`` is registered through
:meth:`HandlerRegistry.register`, the same call a host uses for its own handlers; a package can
also declare handlers in the entry-point group ``flask_dicom_inbox.handlers``
(:meth:`HandlerRegistry.load_entry_points`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rq.timeouts import JobTimeoutException

from .errors import BadRequest

if TYPE_CHECKING:
    from .config import InboxConfig
    from .protocols import InboxUser, ProjectDirectory
    from .requests import ImportRequest
    from .schemas import ImportParameters
    from .uploads import Upload

log = logging.getLogger("flask_dicom_inbox")

#: The entry-point group packages declare import handlers in (name = ``import-handler``).
ENTRY_POINT_GROUP = "flask_dicom_inbox.handlers"


@dataclass(frozen=True)
class Submission:
    """What a handler sees when a client submits: the user, the parsed parameters, the host."""

    user: InboxUser
    params: ImportParameters
    config: InboxConfig
    projects: ProjectDirectory
    #: The request body, unread (``None`` without one); see :class:`~.uploads.Upload`.
    upload: Upload | None = None


@dataclass(frozen=True)
class PreparedImport:
    """A handler's answer to a valid submission."""

    #: The absolute, resolved path recorded as the request's ``sessionPath``.
    session_path: str
    #: Files and bytes counted at submit time (``None`` when the handler did not count).
    file_count: int | None = None
    byte_count: int | None = None


@runtime_checkable
class ImportHandler(Protocol):
    """An import handler: validate at submit time, provide the folder at job time."""

    def prepare(self, submission: Submission) -> PreparedImport:
        """Validate; raise a :class:`~.errors.DicomInboxError` to refuse. Writes nothing."""
        ...

    def open_source(
        self, request: ImportRequest, config: InboxConfig
    ) -> contextlib.AbstractContextManager[Path]:
        """Inside the job: a context giving the folder whose files are imported."""
        ...


@runtime_checkable
class FinishingHandler(Protocol):
    """Optional: a handler with ``finish`` is told once the request's outcome is recorded.

    Called after the request is ``Completed`` (``succeeded=True``) or ``Failed``; the place
    to delete what may only go after success (an archive with ``cleanupAfterImport=true``)
    or a temporary upload. Not called when the worker dies: the retry needs the source.
    """

    def finish(self, request: ImportRequest, config: InboxConfig, succeeded: bool) -> None: ...


def finish_source(
    registry: HandlerRegistry, request: ImportRequest, config: InboxConfig, outcome: str
) -> str:
    """Call the request's handler's ``finish`` (if it has one) and return ``outcome``."""
    from .requests import COMPLETED, FAILED

    if outcome not in (COMPLETED, FAILED) or request.handler not in registry:
        return outcome
    handler = registry.get(request.handler)
    if isinstance(handler, FinishingHandler):
        try:
            handler.finish(request, config, outcome == COMPLETED)
        except JobTimeoutException:
            raise
        except Exception:
            log.exception("dicom-inbox: finishing request %s failed", request.id)
    return outcome


class HandlerRegistry:
    """Named import handlers; unknown names fail loudly with the list of known ones."""

    def __init__(self) -> None:
        self._handlers: dict[str, ImportHandler] = {}
        self._sources: dict[str, str] = {}
        #: Entry points that could not be loaded: name -> why (listed by ``handlers``).
        self.broken: dict[str, str] = {}

    def register(
        self,
        name: str,
        handler: ImportHandler,
        *,
        replace: bool = False,
        source: str | None = None,
    ) -> None:
        """Register ``handler`` under ``name``; a second registration needs ``replace=True``.

        ``source`` says where it came from (default: ``built-in`` for this package's own
        handler classes, else ``host``; entry points say ``entry point <module:attr>``).
        """
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"invalid handler name {name!r}")
        if not isinstance(handler, ImportHandler):
            raise TypeError(f"{handler!r} lacks prepare()/open_source()")
        if name in self._handlers and not replace:
            raise ValueError(f"an import handler named {name!r} is already registered")
        self._handlers[name] = handler
        builtin = type(handler).__module__.startswith(f"{__package__}.handlers.")
        self._sources[name] = source or ("built-in" if builtin else "host")

    def source_of(self, name: str) -> str:
        """Where the handler called ``name`` came from (see :meth:`register`)."""
        return self._sources.get(name, "host")

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register every handler packages declare in ``group``; return the names added.

        The entry point's name is the ``import-handler`` name; it points to a handler object
        or to a class or factory called without arguments. A broken entry point (import
        error, not a handler, a name already taken) is logged and skipped, never fatal: one
        faulty plugin must not take the app down. It is kept in :attr:`broken`, and
        ``flask dicom-inbox handlers`` lists it with the reason.
        """
        added: list[str] = []
        for ep in entry_points(group=group):
            source = f"entry point {ep.value}"
            if self._sources.get(ep.name) == source:
                continue  # the same extension initialised on a second app
            try:
                target = ep.load()
                is_ready = _is_handler(target) and not isinstance(target, type)
                handler = target if is_ready else target()
                self.register(ep.name, handler, source=source)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self.broken[ep.name] = f"{source}: {reason}"
                log.error("dicom-inbox: import handler entry point %r skipped: %s", ep.name, reason)
            else:
                self.broken.pop(ep.name, None)
                added.append(ep.name)
        return added

    def get(self, name: str | None) -> ImportHandler:
        """The handler called ``name``, or a 400 naming every registered handler."""
        if not name:
            raise BadRequest(
                f"the import-handler parameter is required; registered handlers: {self.names_text}",
                errors={"import-handler": ["Missing data for required field."]},
            )
        try:
            return self._handlers[name]
        except KeyError:
            raise BadRequest(
                f"unknown import-handler {name!r}; registered handlers: {self.names_text}",
                errors={"import-handler": [f"Must be one of: {self.names_text}."]},
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._handlers))

    def items(self) -> list[tuple[str, ImportHandler]]:
        return sorted(self._handlers.items())

    @property
    def names_text(self) -> str:
        return ", ".join(sorted(self._handlers)) or "(none)"


def _is_handler(obj: object) -> bool:
    return isinstance(obj, ImportHandler)
