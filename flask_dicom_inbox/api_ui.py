"""``GET /xapi/dicom/ui``: a status page of the user's import requests, for people.

The page is served by a small blueprint nested in the inbox blueprint, so the same
authentication gate (basic auth or the ``JSESSIONID`` cookie) and URL prefix apply to it and to
its script. It is rendered once on the server (Jinja autoescape: the page works without
JavaScript) and then kept fresh by ``status.js``, which polls ``/xapi/dicom/ui/rows`` (the
same rows as JSON) about once a second while any request is unfinished and builds the DOM
with ``textContent`` only. Folder names, labels and error texts come from the inbox, i.e.
from whoever wrote files there: none of them is ever inserted as markup, and a strict
Content-Security-Policy forbids inline script as a second line of defence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, make_response, render_template, request, url_for

from .auth import current_user
from .requests import FINISHED, ImportRequest

if TYPE_CHECKING:
    from .extension import InboxState

#: The newest requests shown; older ones stay reachable through ``/xapi/dicom/list/all``.
MAX_ROWS = 100
#: Skipped files listed per request; the status JSON has them all.
MAX_ERRORS = 20
#: Milliseconds between two polls of the list while something runs.
POLL_MS = 1000

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _state() -> InboxState:
    from .extension import current_state

    return current_state()


@dataclass(frozen=True)
class SessionRow:
    label: str
    subject: str
    destination: str
    scans: int
    files: int
    href: str | None


@dataclass(frozen=True)
class RequestRow:
    """One request as the page shows it; ``status.js`` builds the same from the JSON."""

    id: int
    status: str
    finished: bool
    project: str
    handler: str
    session_path: str
    created_iso: str
    message: str
    files_found: int
    files_done: int
    href: str
    sessions: list[SessionRow] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    errors_total: int = 0


def session_href(base: str, url: object) -> str | None:
    """XNAT's REST URL of a stored session (``/data/prearchive/...``), or ``None``.

    Only the two shapes the importer writes are linked, so a record can never carry a
    ``javascript:`` or off-site link into the page.
    """
    if isinstance(url, str) and url.startswith(("/prearchive/", "/archive/")):
        return f"{base}/data{url}"
    return None


def _row(base: str, record: ImportRequest, errors_total: int) -> RequestRow:
    status = record.to_status()
    progress = status["progress"]
    created = datetime.fromtimestamp(int(status["created"] or 0) / 1000, tz=timezone.utc)
    errors = [e for e in status["errors"] if isinstance(e, dict)]
    return RequestRow(
        id=int(status["id"]),
        status=str(status["status"]),
        finished=record.status in FINISHED,
        project=str(status["project"] or ""),
        handler=str(status["handler"] or ""),
        session_path=str(status["sessionPath"] or ""),
        created_iso=created.isoformat(timespec="seconds"),
        message=str(status["message"] or ""),
        files_found=int(progress.get("filesFound", 0)),
        files_done=int(progress.get("filesDone", 0)),
        href=f"{base}/xapi/dicom/{int(status['id'])}",
        sessions=[
            SessionRow(
                label=str(s.get("label", "")),
                subject=str(s.get("subject", "")),
                destination=str(s.get("destination", "")),
                scans=int(s.get("scans", 0) or 0),
                files=int(s.get("files", 0) or 0),
                href=session_href(base, s.get("url")),
            )
            for s in status["sessions"]
            if isinstance(s, dict)
        ],
        errors=[
            {"path": str(e.get("path", "")), "reason": str(e.get("reason", ""))}
            for e in errors[:MAX_ERRORS]
        ],
        errors_total=errors_total,
    )


def add_status_page_routes(bp: Blueprint) -> None:
    """Nest the status page (``/xapi/dicom/ui``) and its static files in ``bp``."""
    ui = Blueprint(
        "ui",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/xapi/dicom/ui/static",
    )

    @ui.route("/xapi/dicom/ui", methods=["GET"])
    def status_page() -> Response:
        """The user's requests (an admin's: everyone's), newest first."""
        user = current_user()
        base = f"{request.script_root}{_state().config.url_prefix}"
        total, heads = _newest()
        rows: list[RequestRow] = [_row(base, *head) for head in heads]
        html = render_template(
            "dicom_inbox/status.html",
            rows=rows,
            total=total,
            max_rows=MAX_ROWS,
            max_errors=MAX_ERRORS,
            poll_ms=POLL_MS,
            username=user.username,
            is_admin=user.is_admin,
            base=base,
            list_url=url_for("dicom_inbox.list_all"),
            rows_url=url_for("dicom_inbox.ui.status_rows"),
        )
        response = make_response(html)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    @ui.route("/xapi/dicom/ui/rows", methods=["GET"])
    def status_rows() -> Response:
        """What ``status.js`` polls: the page's rows as JSON, ``{"total": n, "requests":
        [...]}``, each request's status with its first ``MAX_ERRORS`` errors and its
        ``errorCount``. (It polled ``/xapi/dicom/list/all``, every request ever made with
        all its errors, once a second per open page.)"""
        total, heads = _newest()
        response = jsonify(
            {
                "total": total,
                "requests": [
                    {**record.to_status(), "errorCount": count} for record, count in heads
                ],
            }
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    bp.register_blueprint(ui)


def _newest() -> tuple[int, list[tuple[ImportRequest, int]]]:
    """How many requests the user sees (an admin: all), and the newest ``MAX_ROWS`` of them
    with their first ``MAX_ERRORS`` errors and error counts; only those are read."""
    user = current_user()
    store = _state().store
    ids = store.ids(username=None if user.is_admin else user.username)
    return len(ids), store.heads(ids[:MAX_ROWS], MAX_ERRORS)
