"""XNAT's login calls, so that the public ``xnat`` client (and scripts written for XNAT) can log in.

``xnat.connect(url, user=..., password=...)`` sends ``PUT /data/services/auth`` with the
credentials as a form, keeps the token it gets back as the ``JSESSIONID`` cookie, checks it with
``GET /data/auth``, sends ``GET /data/JSESSION`` as a heartbeat and ends with
``DELETE /data/JSESSION``. Tokens are server-side sessions (:mod:`.sessions`), never the password.
Each call is also answered under ``/REST``, as the import call is.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, request

from .auth import (
    SESSION_COOKIE,
    current_session_token,
    current_user,
    expire_session_cookie,
    public_view,
    set_session_cookie,
)
from .errors import BadRequest, Unauthorized
from .sessions import session_store

if TYPE_CHECKING:
    from .extension import InboxState

#: XNAT's cookie telling clients when the session was last used and how long it lives
#: (``"<epoch ms>,<ttl ms>"``); the ``xnat`` client sizes its heartbeat from it.
EXPIRATION_COOKIE = "SESSION_EXPIRATION_TIME"


def _state() -> InboxState:
    from .extension import current_state

    return current_state()


def _text(body: str) -> Response:
    response = Response(body, status=200, content_type="text/plain; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _with_session(response: Response, token: str) -> Response:
    set_session_cookie(response, token)
    ttl_ms = int(session_store().ttl_seconds * 1000)
    # Written by hand: Werkzeug would escape the comma, and the client parses XNAT's exact form.
    response.headers.add(
        "Set-Cookie",
        f'{EXPIRATION_COOKIE}="{int(time.time() * 1000)},{ttl_ms}"; Path=/; SameSite=Lax',
    )
    return response


def add_xnat_routes(bp: Blueprint) -> None:
    """Register XNAT's login, session check, heartbeat and logout calls on ``bp``."""

    @bp.route("/data/services/auth", methods=["PUT"])
    @bp.route("/REST/services/auth", methods=["PUT"])
    @public_view
    def xnat_login() -> Response:
        """Form ``username`` and ``password`` -> a new session token (text, and the cookie)."""
        username = request.form.get("username", "")
        password = request.form.get("password", "")
        missing = {
            name: ["Missing data for required field."]
            for name, value in (("username", username), ("password", password))
            if not value
        }
        if missing:
            raise BadRequest("send username and password as a form", errors=missing)
        user = _state().users.authenticate(username, password)
        if user is None:
            response = jsonify(Unauthorized("invalid username or password").to_dict())
            response.status_code = 401
            response.headers["WWW-Authenticate"] = _state().auth.authenticate_header()
            return response
        token = session_store().create(user.username)
        return _with_session(_text(token), token)

    @bp.route("/data/auth", methods=["GET"])
    @bp.route("/REST/auth", methods=["GET"])
    def xnat_auth_check() -> Response:
        return _text(f"User '{current_user().username}' is logged in.")

    @bp.route("/data/JSESSION", methods=["GET"])
    @bp.route("/REST/JSESSION", methods=["GET"])
    def xnat_session_id() -> Response:
        """The session id; a basic-auth request gets a new session (the client's heartbeat)."""
        token = current_session_token()
        if token is None:
            token = session_store().create(current_user().username)
        return _with_session(_text(token), token)

    @bp.route("/data/JSESSION", methods=["DELETE"])
    @bp.route("/REST/JSESSION", methods=["DELETE"])
    @public_view
    def xnat_logout() -> Response:
        """End the cookie's session. Always exactly 200: logging out twice, or after the
        session expired, is not an error (the client raises on anything else)."""
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            session_store().revoke(token)
        response = _text("")
        expire_session_cookie(response)
        response.delete_cookie(EXPIRATION_COOKIE, path="/")
        return response
