"""rq-dashboard at ``/rq``, for the example app's admins only.

rq-dashboard ships no authentication (it leaves that to the host), so every request to its
blueprint, static files included, passes an admin check first: HTTP basic auth against the
example app's users; no or bad credentials 401, a valid non-admin 403. It reads the same Redis
as the inbox's queue. Import jobs show there with a fixed description ("DICOM inbox import
request 17") and ``meta`` holding only the request id and the progress counters: rq-dashboard
renders both unescaped, so no inbox-derived text (folder or patient names) is ever put there.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request

from flask_dicom_inbox import DicomInbox
from flask_dicom_inbox.origin import cross_origin_refusal

from .host import SqliteUsers

#: Where the dashboard is mounted.
DASHBOARD_PREFIX = "/rq"
_BLUEPRINT = "rq_dashboard"
_REALM = 'Basic realm="RQ dashboard", charset="UTF-8"'


def _refusal(status: int, message: str) -> Response:
    response = jsonify({"code": status, "message": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = _REALM
    return response


def init_dashboard(app: Flask, url_prefix: str = DASHBOARD_PREFIX) -> bool:
    """Mount rq-dashboard on ``app`` behind the admin check; ``False`` if it is not installed.

    It is an optional dependency (the ``example`` extra): without it the app runs without
    ``/rq``.
    """
    try:
        import rq_dashboard  # type: ignore[import-untyped]
        from rq_dashboard.web import setup_rq_connection  # type: ignore[import-untyped]
    except ImportError:
        app.logger.info("rq-dashboard is not installed: %s is not served", url_prefix)
        return False
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", DicomInbox.state(app).config.redis_url)
    setup_rq_connection(app)
    users = SqliteUsers(app)

    @app.before_request
    def _dashboard_admins_only() -> Any:
        # The blueprint object is shared by every app in the process: gate it here, per app.
        if request.blueprint != _BLUEPRINT:
            return None
        # Its delete and requeue buttons POST: refused from another site's page (CSRF).
        reason = cross_origin_refusal(request, DicomInbox.state(app).config.trusted_origins)
        if reason is not None:
            return _refusal(403, reason)
        creds = request.authorization
        if creds is None or creds.type != "basic":
            return _refusal(401, "authentication required: send HTTP basic auth credentials")
        username, password = creds.username or "", creds.password or ""
        if not username or not password or "\x00" in username + password:
            return _refusal(401, "invalid username or password")
        user = users.authenticate(username, password)
        if user is None:
            return _refusal(401, "invalid username or password")
        if not user.is_admin:
            return _refusal(403, "the RQ dashboard is for admins only")
        return None

    app.register_blueprint(rq_dashboard.blueprint, url_prefix=url_prefix)
    return True
