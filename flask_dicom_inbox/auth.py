"""HTTP basic auth through Flask-HTTPAuth, checked against the host's :class:`UserDirectory`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response, current_app, jsonify, request
from flask_httpauth import HTTPBasicAuth

from .errors import Unauthorized
from .protocols import InboxUser

if TYPE_CHECKING:
    from .extension import InboxState


def _state() -> InboxState:
    from .extension import current_state

    return current_state()


def build_basic_auth(realm: str = "XNAT") -> HTTPBasicAuth:
    """One HTTPBasicAuth per extension instance; its callbacks read the current app's host."""
    auth = HTTPBasicAuth(realm=realm)

    @auth.verify_password  # type: ignore[untyped-decorator]
    def verify_password(username: str, password: str) -> InboxUser | None:
        # Flask-HTTPAuth calls this with empty strings when no header was sent.
        if not username or not password:
            return None
        return _state().users.authenticate(username, password)

    @auth.error_handler  # type: ignore[untyped-decorator]
    def auth_error(status: int) -> Response:
        if request.authorization is None:
            err = Unauthorized("authentication required: send HTTP basic auth credentials")
        else:
            err = Unauthorized("invalid username or password")
        response = jsonify(err.to_dict())
        response.status_code = status if status in (401, 403) else 401
        return response

    return auth


def current_user() -> InboxUser:
    """The user of the current request (the blueprint's gate has authenticated them)."""
    user = _state().auth.current_user()
    if not isinstance(user, InboxUser):
        current_app.logger.error("dicom-inbox: no authenticated user in a protected view")
        raise Unauthorized("authentication required")
    return user
