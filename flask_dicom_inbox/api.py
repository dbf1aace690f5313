"""The blueprint: thin views (load -> service -> dump) and JSON errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from flask import Blueprint, Response, jsonify, request
from flask_httpauth import HTTPBasicAuth
from werkzeug.exceptions import HTTPException

from .api_anonymize import add_anonymization_routes
from .api_ui import add_status_page_routes
from .api_xnat import add_xnat_routes
from .auth import current_user
from .errors import DicomInboxError, Forbidden, NotFound, ServiceUnavailable
from .handlers.dicom_zip import wait_for_answer
from .openapi import add_openapi_routes
from .origin import cross_origin_refusal
from .requests import ImportRequest
from .uploads import read_submission

if TYPE_CHECKING:
    from .extension import InboxState


def _state() -> InboxState:
    from .extension import current_state

    return current_state()


def build_blueprint(auth: HTTPBasicAuth) -> Blueprint:
    """A blueprint whose every route needs a valid user (a ``before_request`` gate)."""
    bp = Blueprint("dicom_inbox", __name__)

    @bp.before_request
    def _no_cross_site_writes() -> None:  # before the credentials are even looked at
        reason = cross_origin_refusal(request, _state().config.trusted_origins)
        if reason is not None:
            raise Forbidden(reason)

    @bp.before_request
    @auth.login_required  # type: ignore[untyped-decorator]
    def _gate() -> None:
        return None

    @bp.errorhandler(DicomInboxError)
    def _inbox_error(exc: DicomInboxError) -> Response:
        response = jsonify(exc.to_dict())
        response.status_code = exc.status_code
        return response

    @bp.errorhandler(redis.exceptions.ConnectionError)
    def _redis_down(exc: Exception) -> Response:
        return _inbox_error(ServiceUnavailable(f"the queue (Redis) cannot be reached: {exc}"))

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        err = DicomInboxError(exc.description or exc.name)
        err.status_code = exc.code or 500
        return _inbox_error(err)

    @bp.route("/data/services/import", methods=["POST"])
    @bp.route("/REST/services/import", methods=["POST"])
    def submit_import() -> Response:
        """Validate, record and queue an import; answer with the status URL."""
        from .service import submit_import as submit

        registry = _state().registry
        name = request.args.get("import-handler")
        handler = registry.get(name) if name in registry else None
        raw, upload = read_submission(
            request,
            takes_upload=getattr(handler, "takes_upload", False),
            max_upload_bytes=_state().config.upload_max_bytes,
            handler_known=name is not None,
        )
        try:
            record = submit(_state(), current_user(), raw, upload=upload)
        except BaseException:
            if upload is not None:
                upload.discard()  # a refused call leaves no file behind
            raise
        url = f"{request.script_root}{_state().config.url_prefix}/xapi/dicom/{record.id}"
        if getattr(registry.get(record.handler), "answers_when_done", False):
            if _state().config.upload_wait > 0:
                url = wait_for_answer(_state(), record, url)
                record = _state().store.get(record.id) or record
        fmt = raw.get("format")
        if fmt == "json":
            return jsonify(_dump(record))
        body = url if fmt == "txt" else f"{url}\r\n"
        return Response(body, status=200, content_type="text/uri-list")

    @bp.route("/xapi/dicom/<int:request_id>", methods=["GET"])
    def get_request(request_id: int) -> Response:
        return jsonify(_dump(_visible(request_id)))

    @bp.route("/xapi/dicom/list/active", methods=["GET"])
    def list_active() -> Response:
        return jsonify([_dump(r) for r in _visible_list(active_only=True)])

    @bp.route("/xapi/dicom/list/all", methods=["GET"])
    def list_all() -> Response:
        return jsonify([_dump(r) for r in _visible_list(active_only=False)])

    add_anonymization_routes(bp)
    add_xnat_routes(bp)
    add_openapi_routes(bp)
    add_status_page_routes(bp)
    return bp


def _dump(record: ImportRequest) -> dict[str, Any]:
    """The status JSON. ``to_status`` builds it in the shape of ``ImportRequestSchema``
    already (tests/test_openapi.py holds it to the schema and the description); a marshmallow
    dump on every poll was a tenth of a status GET's CPU."""
    return record.to_status()


def _visible(request_id: int) -> ImportRequest:
    """The request if the user may see it (theirs, or any for an admin); else 404."""
    user = current_user()
    record = _state().store.get(request_id)
    if record is None or (record.username != user.username and not user.is_admin):
        raise NotFound(f"no import request {request_id}")
    return record


def _visible_list(*, active_only: bool) -> list[ImportRequest]:
    user = current_user()
    username = None if user.is_admin else user.username
    return _state().store.list_requests(username=username, active_only=active_only)
