"""What the host application supplies: its users, its projects and where sessions are stored.

Host models never subclass ours: the host passes objects that have these methods (structural
typing), and returns the small frozen dataclasses below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

Destination = Literal["prearchive", "archive"]


@dataclass(frozen=True)
class InboxUser:
    """An authenticated user as the extension needs to know them."""

    username: str
    is_admin: bool = False


@dataclass(frozen=True)
class ProjectSettings:
    """A project's settings that change how an import runs."""

    id: str
    #: Send imported sessions straight to the archive instead of the prearchive.
    auto_archive: bool = False


@runtime_checkable
class UserDirectory(Protocol):
    """The host's user accounts."""

    def authenticate(self, username: str, password: str) -> InboxUser | None:
        """Return the user when the password is right, else ``None``.

        Called for every basic-auth request; the host should take the same time for unknown
        users as for known ones (hash against a dummy) so timing does not reveal who exists.
        """
        ...

    def get_user(self, username: str) -> InboxUser | None:
        """Look a user up by name (for session tokens); ``None`` if unknown or disabled."""
        ...


@runtime_checkable
class ProjectDirectory(Protocol):
    """The host's projects and who may do what in them."""

    def get_project(self, project_id: str) -> ProjectSettings | None:
        """The project's settings, or ``None`` when no such project exists."""
        ...

    def can_edit(self, user: InboxUser, project_id: str) -> bool:
        """May ``user`` add data to ``project_id``? Required for the inbox folder and the target."""
        ...

    def can_prevent_anon(self, user: InboxUser, project_id: str) -> bool:
        """May ``user`` import into ``project_id`` without anonymization (``prevent_anon``)?"""
        ...

    def can_manage(self, user: InboxUser, project_id: str) -> bool:
        """May ``user`` change the project's settings (its anonymization script)? Owners."""
        ...


@dataclass(frozen=True)
class ScriptSetting:
    """An anonymization script as stored by the host: its text and whether it is on."""

    text: str | None
    enabled: bool


@runtime_checkable
class AnonymizationSettings(Protocol):
    """Where the host keeps the site-wide and per-project DicomEdit scripts.

    ``site_script()`` returning ``ScriptSetting(None, True)`` means "never set": the default
    site script (XNAT's) is then in force.
    """

    def site_script(self) -> ScriptSetting: ...

    def set_site_script(self, text: str) -> None: ...

    def set_site_enabled(self, enabled: bool) -> None: ...

    def project_script(self, project_id: str) -> ScriptSetting: ...

    def set_project_script(self, project_id: str, text: str) -> None: ...

    def set_project_enabled(self, project_id: str, enabled: bool) -> None: ...


@runtime_checkable
class SessionStorage(Protocol):
    """Where imported sessions go. The default is :class:`~.storage.FilesystemStorage`."""

    def session_folder(
        self, destination: Destination, project_id: str, label: str, timestamp: str
    ) -> Path:
        """The folder that will hold ``<label>/SCANS/...`` for one session."""
        ...

    def session_url(
        self, destination: Destination, project_id: str, subject: str, label: str, timestamp: str
    ) -> str:
        """The XNAT-style URL reported in the request's ``resolution`` and ``sessions``."""
        ...

    def session_exists(self, destination: Destination, project_id: str, label: str) -> bool:
        """Does ``destination`` already hold a session called ``label`` in the project?"""
        ...
