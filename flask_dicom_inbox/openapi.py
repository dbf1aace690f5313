"""The OpenAPI 3 description of the blueprint, and Swagger UI to read and try it.

``GET /xapi/openapi.json`` is built from the app's URL map and the marshmallow schemas (apispec),
so it cannot drift from the code unnoticed: every rule and method of the blueprint must have an
entry in :data:`_OPERATIONS`, and :func:`undocumented_routes` (checked by the tests) names any
that has none. ``GET /xapi/swagger-ui.html`` serves Swagger UI from the ``flask-swagger-ui``
package's copy of its files: no CDN, so it works on an offline machine.

Both are public (no credentials): they describe the API, hold no data, and tools such as
schemathesis or a client generator must be able to read the description before they log in.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from markupsafe import escape

from .auth import public_view
from .errors import NotFound
from .origin import SAFE_METHODS
from .schemas import (
    LABEL_PATTERN,
    ErrorSchema,
    FileErrorSchema,
    HistoryEntrySchema,
    ImportParametersSchema,
    ImportRequestSchema,
    ProgressSchema,
    SessionSchema,
)

OPENAPI_VERSION = "3.0.3"
BASIC_AUTH = "basicAuth"
SESSION_COOKIE_AUTH = "sessionCookie"
_METHODS_IGNORED = frozenset({"HEAD", "OPTIONS"})
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_REQUEST_REF = {"$ref": "#/components/schemas/ImportRequest"}

_ERROR_TEXT = {
    400: "Bad Request: a missing or invalid parameter or body; the message names the cause.",
    401: "Unauthorized: no, bad or expired credentials (basic auth or the JSESSIONID cookie).",
    403: "Forbidden: the user lacks the right this call needs.",
    404: "Not Found: no such request or project, or not one the user may see.",
    409: "Conflict: the archive already holds the label (overwrite=none), or an unfinished "
    "request already covers the folder.",
    413: "Payload Too Large: over DICOM_INBOX_MAX_FILES / DICOM_INBOX_MAX_BYTES, or an upload "
    "over DICOM_INBOX_UPLOAD_MAX_BYTES.",
    503: "Service Unavailable: Redis (the queue and the records) cannot be reached.",
}

#: Descriptions of the submit parameters; their names, types and checks come from
#: :class:`~.schemas.ImportParametersSchema`.
_PARAMETER_TEXT = {
    "import-handler": "`inbox` (a folder or archive file already on the server), `DICOM-zip` "
    "(an archive as the request body), or a handler the host registered.",
    "path": "inbox: absolute path of the session folder, or of a .zip/.tar/.tgz/.tar.gz file, "
    "inside `<inbox>/<P>/` where the user can edit project P.",
    "PROJECT_ID": "Destination project (alias `project`); the user needs edit rights on it.",
    "SUBJECT_ID": "Subject label (alias `subject`); else `Subject:` in the comment tags, else "
    "PatientName.",
    "EXPT_LABEL": "Session label (alias `session`); only when the source holds one study.",
    "cleanupAfterImport": "Delete the imported originals once they are durably stored.",
    "overwrite": "What to do when the archive already holds the label.",
    "rename": "Name files `${StudyInstanceUID}-${SeriesNumber}-${InstanceNumber}-${hash}.dcm`.",
    "prevent_anon": "Skip anonymization (only users the host allows).",
    "AA": "Override the project's auto-archive setting (alias `auto-archive`).",
    "dest": "`/prearchive` or `/archive` (or `/prearchive/projects/P`, `/archive/projects/P`).",
    "SOURCE": "Stored with the request.",
    "VISIT": "Stored with the request.",
    "SUBTYPE": "Stored with the request.",
    "format": "`txt`: the URL without CRLF; `json`: the request's status JSON.",
}
#: XNAT's and the ``xnat`` client's other names for submit parameters (``pre_load`` aliases).
_PARAMETER_ALIASES = {
    "project": "PROJECT_ID",
    "subject": "SUBJECT_ID",
    "session": "EXPT_LABEL",
    "auto-archive": "AA",
}

#: Swagger UI's files a page needs, with the type each is served as (nothing else is served).
_UI_ASSETS = {
    "swagger-ui.css": "text/css",
    "index.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_UI_INITIALIZER = "dicom-inbox-initializer.js"
#: Starts Swagger UI on the description named by the page; ``validatorUrl: null`` keeps it
#: from asking the public validator service (the page must work offline).
_UI_INITIALIZER_JS = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  });
});
"""
_UI_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>flask-dicom-inbox API</title>
  <link rel="stylesheet" type="text/css" href="{assets}/swagger-ui.css">
  <link rel="stylesheet" type="text/css" href="{assets}/index.css">
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="{assets}/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec_url}"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script src="{assets}/swagger-ui-standalone-preset.js"></script>
  <script src="{assets}/{initializer}"></script>
</body>
</html>
"""


# -- what each route does ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Operation:
    """One documented method of one blueprint endpoint (every rule of the endpoint shares it)."""

    summary: str
    tag: str
    responses: dict[str, Any]
    errors: tuple[int, ...] = ()
    description: str = ""
    #: ``"public"``: no credentials; ``"optional"``: the session cookie if there is one.
    access: str = "user"
    parameters: Callable[[MarshmallowPlugin], list[dict[str, Any]]] | None = None
    #: The request body, or a function building it from the marshmallow schemas.
    request_body: dict[str, Any] | Callable[[MarshmallowPlugin], dict[str, Any]] | None = None
    #: Schemas of path parameters, by name, where the URL converter's type says too little.
    path_schemas: dict[str, dict[str, Any]] = field(default_factory=dict)


def _text(description: str, media_type: str = "text/plain") -> dict[str, Any]:
    return {
        "200": {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _submit_parameters(plugin: MarshmallowPlugin) -> list[dict[str, Any]]:
    """The query parameters, generated from :class:`ImportParametersSchema`, plus the aliases."""
    generated = plugin.converter.schema2parameters(ImportParametersSchema, location="query")  # type: ignore[union-attr]
    by_name: dict[str, dict[str, Any]] = {}
    for param in generated:
        schema = dict(param["schema"])
        # A query parameter is absent or text: marshmallow's ``None`` default means "absent".
        schema.pop("nullable", None)
        if schema.get("default", 0) is None:
            schema.pop("default")
        param = {**param, "schema": schema, "description": _PARAMETER_TEXT.get(param["name"], "")}
        by_name[param["name"]] = param
    handler = by_name["import-handler"]
    handler["required"] = True
    names = _handler_names()
    if names:
        handler["schema"] = {**handler["schema"], "enum": names}
    # PROJECT_ID may come as its alias ``project``; the view reports which is missing.
    by_name["PROJECT_ID"]["required"] = False
    params = list(by_name.values())
    for alias, target in _PARAMETER_ALIASES.items():
        schema = {k: v for k, v in by_name[target]["schema"].items() if k != "default"}
        params.append(
            {
                "in": "query",
                "name": alias,
                "required": False,
                "schema": schema,
                "description": f"Alias of `{target}` (used when `{target}` is absent).",
            }
        )
    return params


def _handler_names() -> list[str]:
    """The import handlers registered on the current app (the ``import-handler`` values)."""
    from .extension import current_state

    return sorted(current_state().registry)


def _submit_body(plugin: MarshmallowPlugin) -> dict[str, Any]:
    form = plugin.converter.schema2jsonschema(ImportParametersSchema)  # type: ignore[union-attr]
    form_props = {
        name: {k: v for k, v in prop.items() if k not in ("default", "nullable")}
        for name, prop in form["properties"].items()
    }
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "required": False,
        "description": "inbox: the parameters may come as a form instead of the query string. "
        "DICOM-zip: the zip or tar archive, as the raw body or the file part of a "
        "multipart form (parameters stay in the query string).",
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": form_props}
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}, **form_props},
                }
            },
            "application/zip": binary,
            "application/x-tar": binary,
            "application/gzip": binary,
            "application/octet-stream": binary,
        },
    }


_SUBMIT = _Operation(
    summary="Import a DICOM session: validate, record and queue it",
    tag="import",
    description="Answers at once with the status URL `/xapi/dicom/<id>` (CRLF-terminated, "
    "`text/uri-list`). DICOM-zip answers when the import is over, with the session's URL "
    "(`DICOM_INBOX_UPLOAD_WAIT` bounds the wait). A refused call changes nothing.",
    responses={
        "200": {
            "description": "The status URL (or, for DICOM-zip, the session's URL); with "
            "`format=json`, the request's status JSON.",
            "content": {
                "text/uri-list": {"schema": {"type": "string"}},
                "application/json": {"schema": _REQUEST_REF},
            },
        }
    },
    errors=(400, 403, 409, 413),
    parameters=_submit_parameters,
    request_body=_submit_body,
)

_SCRIPT_TEXT = {"schema": {"type": "string"}}
_SCRIPT_BODY = {
    "required": True,
    "description": "The DicomEdit 6 script, as text or as the form field `script`.",
    "content": {
        "text/plain": _SCRIPT_TEXT,
        "application/x-www-form-urlencoded": {
            "schema": {"type": "object", "properties": {"script": {"type": "string"}}}
        },
    },
}
_ENABLED_BODY = {
    "required": False,
    "description": "`true` or `false`, as text or JSON (or use the `enable` query parameter).",
    "content": {
        "text/plain": {"schema": {"type": "string", "enum": ["true", "false"]}},
        "application/json": {"schema": {"type": "boolean"}},
    },
}


def _enable_parameters(_: MarshmallowPlugin) -> list[dict[str, Any]]:
    return [
        {
            "in": "query",
            "name": name,
            "required": False,
            "schema": {"type": "string", "enum": ["true", "false"]},
            "description": "Instead of the body: switch the script on (`true`) or off.",
        }
        for name in ("enable", "enabled")
    ]


_PROJECT_PATH = {"project_id": {"type": "string", "pattern": LABEL_PATTERN}}
_BOOL_JSON = _json("Whether the script is in force.", {"type": "boolean"})

#: (endpoint without the blueprint's name, method) -> its description. A route missing here is
#: reported by :func:`undocumented_routes` and fails ``tests/test_openapi.py``.
_OPERATIONS: dict[tuple[str, str], _Operation] = {
    ("submit_import", "POST"): _SUBMIT,
    ("get_request", "GET"): _Operation(
        summary="One import request's status",
        tag="status",
        description="Only the requesting user and admins see a request; others get 404.",
        responses=_json("The request's status JSON.", _REQUEST_REF),
        errors=(404,),
    ),
    ("list_active", "GET"): _Operation(
        summary="The user's unfinished requests (an admin's: everyone's), newest first",
        tag="status",
        responses=_json(
            "Requests not yet Completed or Failed.", {"type": "array", "items": _REQUEST_REF}
        ),
    ),
    ("list_all", "GET"): _Operation(
        summary="All the user's requests (an admin's: everyone's), newest first",
        tag="status",
        responses=_json("Every request.", {"type": "array", "items": _REQUEST_REF}),
    ),
    ("ui.status_page", "GET"): _Operation(
        summary="A status page of the user's requests, for people (kept fresh by its script)",
        tag="status",
        responses=_text("The page.", "text/html"),
    ),
    ("ui.status_rows", "GET"): _Operation(
        summary="The status page's rows as JSON (what its script polls)",
        tag="status",
        description="The newest 100 of the user's requests (an admin's: everyone's), each "
        "with its first 20 errors only and `errorCount`, and `total`: how many requests the "
        "user has. Reads only those rows, however many requests were ever made.",
        responses=_json(
            "The rows.",
            {
                "type": "object",
                "required": ["total", "requests"],
                "properties": {
                    "total": {"type": "integer", "minimum": 0},
                    "requests": {
                        "type": "array",
                        "items": {
                            "allOf": [
                                _REQUEST_REF,
                                {
                                    "type": "object",
                                    "required": ["errorCount"],
                                    "properties": {"errorCount": {"type": "integer", "minimum": 0}},
                                },
                            ]
                        },
                    },
                },
            },
        ),
    ),
    ("ui.static", "GET"): _Operation(
        summary="The status page's script and style",
        tag="status",
        responses={
            "200": {
                "description": "The file.",
                "content": {
                    m: {"schema": {"type": "string"}} for m in ("text/javascript", "text/css")
                },
            }
        },
        errors=(404,),
        path_schemas={
            "filename": {
                "type": "string",
                "description": "A file of the package's static folder, e.g. "
                "`dicom_inbox/status.js`.",
            }
        },
    ),
    ("get_site_script", "GET"): _Operation(
        summary="The site anonymization script (admins)",
        tag="anonymization",
        responses=_text("The script."),
        errors=(403,),
    ),
    ("put_site_script", "PUT"): _Operation(
        summary="Set the site anonymization script (admins)",
        tag="anonymization",
        description="A script that does not parse is refused (400, with line and column); "
        "the old script stays in force.",
        responses=_text("The script now in force."),
        errors=(400, 403),
        request_body=_SCRIPT_BODY,
    ),
    ("get_site_enabled", "GET"): _Operation(
        summary="Whether the site script is on (admins)",
        tag="anonymization",
        responses=_BOOL_JSON,
        errors=(403,),
    ),
    ("put_site_enabled", "PUT"): _Operation(
        summary="Switch the site script on or off (admins)",
        tag="anonymization",
        responses=_BOOL_JSON,
        errors=(400, 403),
        parameters=_enable_parameters,
        request_body=_ENABLED_BODY,
    ),
    ("get_project_script", "GET"): _Operation(
        summary="A project's anonymization script (project owners, admins)",
        tag="anonymization",
        responses=_text("The script (empty: none)."),
        errors=(403, 404),
        path_schemas=_PROJECT_PATH,
    ),
    ("put_project_script", "PUT"): _Operation(
        summary="Set a project's anonymization script (project owners, admins)",
        tag="anonymization",
        responses=_text("The script now in force."),
        errors=(400, 403, 404),
        request_body=_SCRIPT_BODY,
        path_schemas=_PROJECT_PATH,
    ),
    ("get_project_enabled", "GET"): _Operation(
        summary="Whether a project's script is on (project owners, admins)",
        tag="anonymization",
        responses=_BOOL_JSON,
        errors=(403, 404),
        path_schemas=_PROJECT_PATH,
    ),
    ("put_project_enabled", "PUT"): _Operation(
        summary="Switch a project's script on or off (project owners, admins)",
        tag="anonymization",
        responses=_BOOL_JSON,
        errors=(400, 403, 404),
        parameters=_enable_parameters,
        request_body=_ENABLED_BODY,
        path_schemas=_PROJECT_PATH,
    ),
    ("xnat_login", "PUT"): _Operation(
        summary="Log in as XNAT does: a session token (also set as the JSESSIONID cookie)",
        tag="xnat-login",
        access="public",
        responses={
            "200": {
                "description": "The session token.",
                "headers": {"Set-Cookie": {"schema": {"type": "string"}}},
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        errors=(400, 401, 503),
        request_body={
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "username": {"type": "string"},
                            "password": {"type": "string", "format": "password"},
                        },
                        "required": ["username", "password"],
                    }
                }
            },
        },
    ),
    ("xnat_auth_check", "GET"): _Operation(
        summary="Who is logged in (`User '<name>' is logged in.`)",
        tag="xnat-login",
        responses=_text("The user's name, in XNAT's sentence."),
    ),
    ("xnat_session_id", "GET"): _Operation(
        summary="The session token; with basic auth, a new session (the client's heartbeat)",
        tag="xnat-login",
        responses=_text("The session token."),
    ),
    ("xnat_logout", "DELETE"): _Operation(
        summary="Log out: end the cookie's session (always 200)",
        tag="xnat-login",
        access="optional",
        responses=_text("Empty."),
        errors=(503,),
    ),
    ("openapi_json", "GET"): _Operation(
        summary="This OpenAPI description",
        tag="openapi",
        access="public",
        responses=_json("The OpenAPI 3 document.", {"type": "object"}),
    ),
    ("swagger_ui", "GET"): _Operation(
        summary="Swagger UI on this description (served from a Python package, no CDN)",
        tag="openapi",
        access="public",
        responses=_text("The page.", "text/html"),
    ),
    ("swagger_ui_asset", "GET"): _Operation(
        summary="Swagger UI's script, style and icon files",
        tag="openapi",
        access="public",
        responses={
            "200": {
                "description": "The file.",
                "content": {
                    media: {"schema": {"type": "string"}}
                    for media in sorted({*_UI_ASSETS.values(), "text/javascript"})
                },
            }
        },
        errors=(404,),
        path_schemas={
            "filename": {"type": "string", "enum": sorted({*_UI_ASSETS, _UI_INITIALIZER})}
        },
    ),
}


# -- building the document -----------------------------------------------------------------------

_CONVERTER = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


@dataclass(frozen=True)
class _Route:
    path: str  # OpenAPI form, relative to the server URL
    method: str
    endpoint: str  # without the blueprint's name
    params: tuple[tuple[str, str], ...]  # (name, converter)


def _routes(app: Flask, blueprint: str) -> Iterator[_Route]:
    """Every (rule, method) of ``blueprint``, in the order they were registered."""
    prefix = str(app.config.get("DICOM_INBOX_URL_PREFIX") or "").rstrip("/")
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith(f"{blueprint}."):
            continue
        text = rule.rule[len(prefix) :] if prefix and rule.rule.startswith(prefix) else rule.rule
        params = tuple((m["name"], m["converter"] or "default") for m in _CONVERTER.finditer(text))
        path = _CONVERTER.sub(lambda m: "{" + m["name"] + "}", text)
        for method in sorted((rule.methods or set()) - _METHODS_IGNORED):
            yield _Route(path, method, rule.endpoint.split(".", 1)[1], params)


def undocumented_routes(app: Flask, blueprint: str = "dicom_inbox") -> list[str]:
    """``"METHOD /path (endpoint)"`` for every route of the blueprint :data:`_OPERATIONS` lacks."""
    return [
        f"{r.method} {r.path} ({r.endpoint})"
        for r in _routes(app, blueprint)
        if (r.endpoint, r.method) not in _OPERATIONS
    ]


def _path_parameter(name: str, converter: str, op: _Operation) -> dict[str, Any]:
    if name in op.path_schemas:
        schema = op.path_schemas[name]
    elif converter == "int":
        schema = {"type": "integer", "minimum": 0}
    else:
        schema = {"type": "string", "pattern": "^[^/]+$"}
    return {"in": "path", "name": name, "required": True, "schema": schema}


#: What a 403 also means on a method that changes something (flask_dicom_inbox/origin.py).
_CROSS_SITE_403 = (
    "a browser sent this call from another site's page (Sec-Fetch-Site, else Origin); "
    "DICOM_INBOX_TRUSTED_ORIGINS admits such a site."
)


def _responses(op: _Operation, method: str) -> dict[str, Any]:
    out = dict(op.responses)
    codes = set(op.errors)
    if op.access == "user":
        codes |= {401, 503}
    writes = method.upper() not in SAFE_METHODS
    if writes:
        codes.add(403)
    for code in sorted(codes):
        text = _ERROR_TEXT[code]
        if code == 403 and writes:
            text = (
                f"{text[:-1]}, or {_CROSS_SITE_403}"
                if 403 in op.errors
                else f"Forbidden: {_CROSS_SITE_403}"
            )
        response: dict[str, Any] = {
            "description": text,
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
        if code == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        out[str(code)] = response
    return out


def _operation_dict(route: _Route, op: _Operation, plugin: MarshmallowPlugin) -> dict[str, Any]:
    params = [_path_parameter(name, conv, op) for name, conv in route.params]
    if op.parameters is not None:
        params += op.parameters(plugin)
    out: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": route.endpoint + ("_rest" if route.path.startswith("/REST/") else ""),
        "responses": _responses(op, route.method),
    }
    if op.description:
        out["description"] = op.description
    if params:
        out["parameters"] = params
    if callable(op.request_body):
        out["requestBody"] = op.request_body(plugin)
    elif op.request_body is not None:
        out["requestBody"] = op.request_body
    if op.access == "public":
        out["security"] = []
    elif op.access == "optional":
        out["security"] = [{SESSION_COOKIE_AUTH: []}, {}]
    return out


def _version() -> str:
    try:
        return importlib.metadata.version("flask-dicom-inbox")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"


def build_openapi(
    app: Flask, *, blueprint: str = "dicom_inbox", server_url: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3 document of ``blueprint``'s routes on ``app`` (needs an app context).

    Paths are relative to the one server, ``server_url`` (the script root) followed by
    ``DICOM_INBOX_URL_PREFIX``. Undocumented routes are left out; see :func:`undocumented_routes`.
    """
    prefix = str(app.config.get("DICOM_INBOX_URL_PREFIX") or "").rstrip("/")
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="flask-dicom-inbox",
        version=_version(),
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "XNAT's DICOM Inbox: import DICOM sessions already on the server's "
            "disk (or uploaded as an archive) through an RQ queue. Every call needs HTTP basic "
            "auth or the JSESSIONID cookie of `PUT /data/services/auth`, except where marked."
        },
        servers=[{"url": f"{server_url}{prefix}" or "/"}],
        security=[{BASIC_AUTH: []}, {SESSION_COOKIE_AUTH: []}],
    )
    spec.components.security_scheme(BASIC_AUTH, {"type": "http", "scheme": "basic"})
    spec.components.security_scheme(
        SESSION_COOKIE_AUTH, {"type": "apiKey", "in": "cookie", "name": "JSESSIONID"}
    )
    for name, schema in (
        ("Progress", ProgressSchema),
        ("Session", SessionSchema),
        ("FileError", FileErrorSchema),
        ("HistoryEntry", HistoryEntrySchema),
        ("ImportRequest", ImportRequestSchema),
        ("Error", ErrorSchema),
    ):
        spec.components.schema(name, schema=schema)
    paths: dict[str, dict[str, Any]] = {}
    for route in _routes(app, blueprint):
        op = _OPERATIONS.get((route.endpoint, route.method))
        if op is not None:
            paths.setdefault(route.path, {})[route.method.lower()] = _operation_dict(
                route, op, plugin
            )
    for path in sorted(paths):
        spec.path(path=path, operations=paths[path])
    return spec.to_dict()


# -- the views -----------------------------------------------------------------------------------


@functools.cache
def _ui_file(name: str) -> bytes:
    """One of Swagger UI's files, from ``flask-swagger-ui``'s copy of its distribution.

    Read once and kept (about 2.5 MB in all): answering from memory holds no open file, even
    for a WSGI client that never closes its response.
    """
    return (importlib.resources.files("flask_swagger_ui") / "dist" / name).read_bytes()


def add_openapi_routes(bp: Blueprint) -> None:
    """Register ``/xapi/openapi.json``, ``/xapi/swagger-ui.html`` and its files on ``bp``."""

    @bp.route("/xapi/openapi.json", methods=["GET"])
    @public_view
    def openapi_json() -> Response:
        document = build_openapi(current_app, blueprint=bp.name, server_url=request.script_root)
        return jsonify(document)

    @bp.route("/xapi/swagger-ui.html", methods=["GET"])
    @public_view
    def swagger_ui() -> Response:
        prefix = f"{request.script_root}{current_app.config.get('DICOM_INBOX_URL_PREFIX') or ''}"
        prefix = prefix.rstrip("/")
        page = _UI_PAGE.format(
            assets=escape(f"{prefix}/xapi/swagger-ui"),
            spec_url=escape(f"{prefix}/xapi/openapi.json"),
            initializer=_UI_INITIALIZER,
        )
        response = Response(page, status=200, content_type="text/html; charset=utf-8")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @bp.route("/xapi/swagger-ui/<filename>", methods=["GET"])
    @public_view
    def swagger_ui_asset(filename: str) -> Response:
        if filename == _UI_INITIALIZER:
            return Response(_UI_INITIALIZER_JS, content_type="text/javascript; charset=utf-8")
        mimetype = _UI_ASSETS.get(filename)
        if mimetype is None:
            raise NotFound(f"no Swagger UI file {filename!r}")
        response = Response(_ui_file(filename), mimetype=mimetype)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.cache_control.public = True
        response.cache_control.max_age = 3600
        response.add_etag()
        response.make_conditional(request)  # 304 for a matching If-None-Match; in place
        return response
