"""Authentication: HTTP basic auth or an XNAT session cookie, through Flask-HTTPAuth.

The blueprint's ``before_request`` gate calls :func:`build_basic_auth`'s one callback. A request
is let in with a valid basic-auth header (checked against the host's :class:`UserDirectory`) or,
without one, with a live ``JSESSIONID`` cookie (see :mod:`.sessions`). A bad header is refused even
when a cookie is present. Views marked :func:`public_view` (the login and logout calls) pass the
gate without credentials and must do their own checking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeVar

from flask import Response, current_app, g, jsonify, request
from flask_httpauth import HTTPBasicAuth

from .errors import Unauthorized
from .protocols import InboxUser

if TYPE_CHECKING:
    from .extension import InboxState

#: The cookie XNAT (and the ``xnat`` client) use for the session token.
SESSION_COOKIE = "JSESSIONID"

_PUBLIC_ATTR = "_dicom_inbox_public"
_F = TypeVar("_F", bound=Callable[..., object])


def _state() -> InboxState:
    from .extension import current_state

    return current_state()


def public_view(view: _F) -> _F:
    """Let ``view`` through the blueprint's authentication gate (it checks credentials itself)."""
    setattr(view, _PUBLIC_ATTR, True)
    return view


def _is_public_request() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, _PUBLIC_ATTR, False))


def _user_from_session_cookie() -> InboxUser | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    from .sessions import session_store

    username = session_store().lookup(token)
    user = _state().users.get_user(username) if username is not None else None
    if user is not None:
        g.dicom_inbox_session_token = token
    return user


def build_basic_auth(realm: str = "XNAT") -> HTTPBasicAuth:
    """One HTTPBasicAuth per extension instance; its callbacks read the current app's host."""
    auth = HTTPBasicAuth(realm=realm)

    @auth.verify_password  # type: ignore[untyped-decorator]
    def verify_password(username: str, password: str) -> InboxUser | Literal[True] | None:
        if _is_public_request():
            # Flask-HTTPAuth's way to admit an anonymous request; current_user() stays unset.
            return True
        if "Authorization" in request.headers:
            # Flask-HTTPAuth passes empty strings for a header it cannot parse: reject those.
            if not username or not password:
                return None
            # HMAC pads short keys with NUL bytes, so 'pw\x00' would pass a PBKDF2/scrypt
            # check of 'pw': refuse NUL anywhere in the credentials.
            if "\x00" in username or "\x00" in password:
                return None
            state = _state()
            if state.credential_cache.verified(username, password):
                return state.users.get_user(username)  # a removed user is refused at once
            user = state.users.authenticate(username, password)
            if user is not None:
                state.credential_cache.remember(username, password)
            return user
        return _user_from_session_cookie()

    @auth.error_handler  # type: ignore[untyped-decorator]
    def auth_error(status: int) -> Response:
        has_header = "Authorization" in request.headers
        stale_cookie = not has_header and bool(request.cookies.get(SESSION_COOKIE))
        if stale_cookie:
            err = Unauthorized("the session has expired or was ended: log in again")
        elif not has_header:
            err = Unauthorized("authentication required: send HTTP basic auth credentials")
        else:
            err = Unauthorized("invalid username or password")
        response = jsonify(err.to_dict())
        response.status_code = status if status in (401, 403) else 401
        if stale_cookie:
            expire_session_cookie(response)
        return response

    return auth


def current_user() -> InboxUser:
    """The user of the current request (the blueprint's gate has authenticated them)."""
    user = _state().auth.current_user()
    if not isinstance(user, InboxUser):
        current_app.logger.error("dicom-inbox: no authenticated user in a protected view")
        raise Unauthorized("authentication required")
    return user


def current_session_token() -> str | None:
    """The session token the current request was authenticated with (``None``: basic auth)."""
    token = g.get("dicom_inbox_session_token")
    return token if isinstance(token, str) else None


def set_session_cookie(response: Response, token: str) -> None:
    """Hand ``token`` to the client as XNAT does: ``JSESSIONID``, HttpOnly, SameSite=Lax.

    SameSite=Lax keeps browsers from sending it on cross-site POST/PUT/DELETE, so a cookie
    alone cannot be used to submit imports from another site.
    """
    response.set_cookie(
        SESSION_COOKIE,
        token,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )


def expire_session_cookie(response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="Lax", secure=request.is_secure
    )
