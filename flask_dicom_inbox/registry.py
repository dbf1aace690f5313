"""The import-handler registry: ``import-handler=<name>`` picks a handler from it.

A handler validates a submission inside the HTTP request (cheap checks, nothing written) and, in
the job, hands the import engine the folder to walk. ``inbox`` is registered through
:meth:`HandlerRegistry.register`, the same call a host uses for its own handlers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .errors import BadRequest

if TYPE_CHECKING:
    from .config import InboxConfig
    from .protocols import InboxUser, ProjectDirectory
    from .requests import ImportRequest
    from .schemas import ImportParameters


@dataclass(frozen=True)
class Submission:
    """What a handler sees when a client submits: the user, the parsed parameters, the host."""

    user: InboxUser
    params: ImportParameters
    config: InboxConfig
    projects: ProjectDirectory


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


class HandlerRegistry:
    """Named import handlers; unknown names fail loudly with the list of known ones."""

    def __init__(self) -> None:
        self._handlers: dict[str, ImportHandler] = {}

    def register(self, name: str, handler: ImportHandler, *, replace: bool = False) -> None:
        """Register ``handler`` under ``name``; a second registration needs ``replace=True``."""
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"invalid handler name {name!r}")
        if not isinstance(handler, ImportHandler):
            raise TypeError(f"{handler!r} lacks prepare()/open_source()")
        if name in self._handlers and not replace:
            raise ValueError(f"an import handler named {name!r} is already registered")
        self._handlers[name] = handler

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
