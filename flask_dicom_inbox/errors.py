"""The exception hierarchy; the blueprint turns each into the contract's JSON error shape."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class DicomInboxError(Exception):
    """Base error: carries the HTTP status a view should answer with."""

    status_code: int = 500

    def __init__(self, message: str, *, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body: ``{code, status, message, errors}``."""
        return {
            "code": self.status_code,
            "status": HTTPStatus(self.status_code).phrase,
            "message": self.message,
            "errors": self.errors,
        }


class BadRequest(DicomInboxError):
    status_code = 400


class Unauthorized(DicomInboxError):
    status_code = 401


class Forbidden(DicomInboxError):
    status_code = 403


class NotFound(DicomInboxError):
    status_code = 404


class Conflict(DicomInboxError):
    status_code = 409


class PayloadTooLarge(DicomInboxError):
    status_code = 413


class ImportFailed(DicomInboxError):
    """Raised inside a job: the request as a whole cannot be imported (it ends ``Failed``)."""

    status_code = 500


class ServiceUnavailable(DicomInboxError):
    """Redis (the queue and the records) cannot be reached."""

    status_code = 503
