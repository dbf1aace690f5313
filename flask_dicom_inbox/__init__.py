"""flask-dicom-inbox: XNAT's DICOM Inbox for Flask applications."""

from .errors import (
    BadRequest,
    Conflict,
    DicomInboxError,
    Forbidden,
    ImportFailed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
)
from .extension import DicomInbox, InboxState
from .protocols import (
    AnonymizationSettings,
    Destination,
    InboxUser,
    ProjectDirectory,
    ProjectSettings,
    ScriptSetting,
    SessionStorage,
    UserDirectory,
)
from .registry import HandlerRegistry, ImportHandler, PreparedImport, Submission
from .requests import ImportRequest, RequestStore
from .signals import import_finished, import_queued, import_started
from .storage import FilesystemStorage

__all__ = [
    "AnonymizationSettings",
    "BadRequest",
    "Conflict",
    "Destination",
    "DicomInbox",
    "DicomInboxError",
    "FilesystemStorage",
    "Forbidden",
    "HandlerRegistry",
    "ImportFailed",
    "ImportHandler",
    "ImportRequest",
    "InboxState",
    "InboxUser",
    "NotFound",
    "PayloadTooLarge",
    "PreparedImport",
    "ProjectDirectory",
    "ProjectSettings",
    "RequestStore",
    "ScriptSetting",
    "ServiceUnavailable",
    "SessionStorage",
    "Submission",
    "Unauthorized",
    "UserDirectory",
    "import_finished",
    "import_queued",
    "import_started",
]
