"""``/xapi/anonymize/...``: read, set and switch the site and project scripts, as XNAT does.

Site script: admins. Project script: users who can manage the project (example app: owners).
A script that does not parse is refused with 400 and the line and column of the fault; the old
script stays in force.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, request

from .anon_scripts import compile_script, site_script_text
from .auth import current_user
from .errors import BadRequest, Forbidden, NotFound

if TYPE_CHECKING:
    from .extension import InboxState

MAX_SCRIPT_BYTES = 1024 * 1024


def _state() -> InboxState:
    from .extension import current_state

    return current_state()


def _text(body: str) -> Response:
    return Response(body, status=200, content_type="text/plain; charset=utf-8")


def _script_body() -> str:
    """The script from a text body (XNAT sends text/plain) or a form field ``script``."""
    if request.content_length and request.content_length > MAX_SCRIPT_BYTES:
        raise BadRequest(f"the script is larger than {MAX_SCRIPT_BYTES} bytes")
    text = request.form.get("script") if request.form else None
    if text is None:
        text = request.get_data(as_text=True)
    return text


def _enabled_value() -> bool:
    """``true``/``false`` from the body (text or JSON) or the ``enable``/``enabled`` query."""
    raw = request.args.get("enable", request.args.get("enabled"))
    if raw is None:
        raw = request.get_data(as_text=True).strip()
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw
        raw = str(decoded).lower() if decoded is not None else ""
    value = raw.strip().lower()
    if value in {"true", "1", "yes", "on"}:
        return True
    if value in {"false", "0", "no", "off"}:
        return False
    raise BadRequest(
        "send true or false (as the body, or as ?enable=true)",
        errors={"enabled": ["must be true or false"]},
    )


def _require_admin() -> None:
    user = current_user()
    if not user.is_admin:
        raise Forbidden(f"only site administrators may change site anonymization ({user.username})")


def _require_manager(project_id: str) -> None:
    state = _state()
    user = current_user()
    if state.projects.get_project(project_id) is None:
        raise NotFound(f"no project with the ID {project_id!r}")
    if not (user.is_admin or state.projects.can_manage(user, project_id)):
        raise Forbidden(
            f"user {user.username!r} may not manage project {project_id!r}'s anonymization"
        )


def add_anonymization_routes(bp: Blueprint) -> None:
    @bp.route("/xapi/anonymize/site", methods=["GET"])
    def get_site_script() -> Response:
        _require_admin()
        return _text(site_script_text(_state().anonymization))

    @bp.route("/xapi/anonymize/site", methods=["PUT"])
    def put_site_script() -> Response:
        _require_admin()
        text = _script_body()
        compile_script(text)
        _state().anonymization.set_site_script(text)
        return _text(text)

    @bp.route("/xapi/anonymize/site/enabled", methods=["GET"])
    def get_site_enabled() -> Response:
        _require_admin()
        return jsonify(_state().anonymization.site_script().enabled)

    @bp.route("/xapi/anonymize/site/enabled", methods=["PUT"])
    def put_site_enabled() -> Response:
        _require_admin()
        enabled = _enabled_value()
        _state().anonymization.set_site_enabled(enabled)
        return jsonify(enabled)

    @bp.route("/xapi/anonymize/projects/<project_id>", methods=["GET"])
    def get_project_script(project_id: str) -> Response:
        _require_manager(project_id)
        return _text(_state().anonymization.project_script(project_id).text or "")

    @bp.route("/xapi/anonymize/projects/<project_id>", methods=["PUT"])
    def put_project_script(project_id: str) -> Response:
        _require_manager(project_id)
        text = _script_body()
        compile_script(text)
        _state().anonymization.set_project_script(project_id, text)
        return _text(text)

    @bp.route("/xapi/anonymize/projects/<project_id>/enabled", methods=["GET"])
    def get_project_enabled(project_id: str) -> Response:
        _require_manager(project_id)
        return jsonify(_state().anonymization.project_script(project_id).enabled)

    @bp.route("/xapi/anonymize/projects/<project_id>/enabled", methods=["PUT"])
    def put_project_enabled(project_id: str) -> Response:
        _require_manager(project_id)
        enabled = _enabled_value()
        _state().anonymization.set_project_enabled(project_id, enabled)
        return jsonify(enabled)
