"""The OpenAPI description matches the code, and Swagger UI is served from a package, offline."""

from __future__ import annotations

import copy
import importlib.resources
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import Schema
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

from example_app import create_app
from example_app.demo import write_session
from flask_dicom_inbox import DicomInbox, schemas
from flask_dicom_inbox.openapi import undocumented_routes

from .conftest import auth, run_worker, serve_http, submit

IGNORED_METHODS = {"HEAD", "OPTIONS"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COMPONENTS: dict[str, type[Schema]] = {
    "ImportRequest": schemas.ImportRequestSchema,
    "Progress": schemas.ProgressSchema,
    "Session": schemas.SessionSchema,
    "FileError": schemas.FileErrorSchema,
    "HistoryEntry": schemas.HistoryEntrySchema,
    "Error": schemas.ErrorSchema,
}


def _document(client: FlaskClient, url: str = "/xapi/openapi.json") -> dict[str, Any]:
    response = client.get(url)  # no credentials: the description is public
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    return response.get_json()  # type: ignore[no-any-return]


def _app_operations(app: Flask, prefix: str = "") -> set[tuple[str, str]]:
    """(METHOD, OpenAPI path) of every rule of the blueprint, read from Flask's URL map."""
    out = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("dicom_inbox."):
            continue
        assert rule.rule.startswith(prefix)
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule[len(prefix) :])
        out |= {(m, path) for m in (rule.methods or set()) - IGNORED_METHODS}
    return out


def _spec_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}


def _validator(doc: dict[str, Any], name: str) -> OAS30Validator:
    """A validator of component ``name`` that refuses properties the spec does not list."""
    components = copy.deepcopy(doc["components"])
    for schema in components["schemas"].values():
        assert schema.get("additionalProperties") is False, schema
    return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": components})


def _response_schema(doc: dict[str, Any], method: str, path: str, code: str) -> Any:
    return doc["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]


def test_document_is_valid_openapi_3(client: FlaskClient) -> None:
    doc = _document(client)
    validate_spec(doc)  # raises on any fault
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": "/"}]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["basicAuth"] == {"type": "http", "scheme": "basic"}
    assert schemes["sessionCookie"] == {"type": "apiKey", "in": "cookie", "name": "JSESSIONID"}
    assert {"basicAuth": []} in doc["security"] and {"sessionCookie": []} in doc["security"]


def test_every_route_is_described_and_every_described_path_exists(
    app: Flask, client: FlaskClient
) -> None:
    assert undocumented_routes(app) == [], (
        "routes without an OpenAPI description: add them to _OPERATIONS in "
        "flask_dicom_inbox/openapi.py"
    )
    in_app = _app_operations(app)
    in_spec = _spec_operations(_document(client))
    assert in_app - in_spec == set(), "in the app but not in the OpenAPI description"
    assert in_spec - in_app == set(), "in the OpenAPI description but not in the app"
    # the routes the issue names, spelled as it spells them
    for expected in [
        ("POST", "/data/services/import"),
        ("POST", "/REST/services/import"),
        ("GET", "/xapi/dicom/{request_id}"),
        ("GET", "/xapi/dicom/list/active"),
        ("GET", "/xapi/dicom/list/all"),
        ("PUT", "/data/services/auth"),
        ("GET", "/data/auth"),
        ("GET", "/data/JSESSION"),
        ("DELETE", "/data/JSESSION"),
        ("PUT", "/xapi/anonymize/site"),
        ("GET", "/xapi/anonymize/projects/{project_id}/enabled"),
        ("GET", "/xapi/openapi.json"),
        ("GET", "/xapi/swagger-ui.html"),
    ]:
        assert expected in in_spec


def test_a_route_without_description_is_reported(app: Flask, client: FlaskClient) -> None:
    """A route someone adds to the blueprint without describing it fails the check above."""
    app.add_url_rule(
        "/xapi/dicom/not-described", endpoint="dicom_inbox.not_described", view_func=lambda: "x"
    )
    assert undocumented_routes(app) == ["GET /xapi/dicom/not-described (not_described)"]
    assert ("GET", "/xapi/dicom/not-described") in _app_operations(app) - _spec_operations(
        _document(client)
    )


def test_url_prefix_is_the_server_and_paths_stay_unprefixed(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "DICOM_INBOX_URL_PREFIX": "/xnat"})
    client = app.test_client()
    assert client.get("/xapi/openapi.json").status_code == 404
    doc = _document(client, "/xnat/xapi/openapi.json")
    validate_spec(doc)
    assert doc["servers"] == [{"url": "/xnat"}]
    assert _spec_operations(doc) == _app_operations(app, prefix="/xnat")
    page = client.get("/xnat/xapi/swagger-ui.html").get_data(as_text=True)
    assert 'data-spec-url="/xnat/xapi/openapi.json"' in page
    with client.get("/xnat/xapi/swagger-ui/swagger-ui-bundle.js") as bundle:
        assert bundle.status_code == 200
    DicomInbox.state(app).redis.close()


def test_component_properties_are_the_marshmallow_fields(client: FlaskClient) -> None:
    doc = _document(client)
    for name, schema_class in COMPONENTS.items():
        fields = {f.data_key or key for key, f in schema_class().dump_fields.items()}
        assert set(doc["components"]["schemas"][name]["properties"]) == fields, name


def test_submit_parameters_are_the_marshmallow_fields(client: FlaskClient) -> None:
    doc = _document(client)
    for path in ("/data/services/import", "/REST/services/import"):
        params = {p["name"]: p for p in doc["paths"][path]["post"]["parameters"]}
        loaded = {f.data_key or key for key, f in schemas.ImportParametersSchema().fields.items()}
        assert set(params) == loaded | {"project", "subject", "session", "auto-archive"}
        assert all(p["in"] == "query" and p["description"] for p in params.values())
        assert params["import-handler"]["required"] is True
        assert params["import-handler"]["schema"]["enum"] == ["DICOM-zip", "inbox"]
        assert params["overwrite"]["schema"]["enum"] == ["none", "append", "delete"]
        assert params["EXPT_LABEL"]["schema"]["pattern"] == schemas.LABEL_PATTERN
        assert params["cleanupAfterImport"]["schema"]["type"] == "boolean"
        body = doc["paths"][path]["post"]["requestBody"]["content"]
        assert body["application/zip"]["schema"]["format"] == "binary"
        assert "file" in body["multipart/form-data"]["schema"]["properties"]


def test_documented_error_codes(client: FlaskClient) -> None:
    doc = _document(client)
    submit_codes = set(doc["paths"]["/data/services/import"]["post"]["responses"])
    assert {"200", "400", "401", "403", "409", "413", "503"} <= submit_codes
    assert "404" in doc["paths"]["/xapi/dicom/{request_id}"]["get"]["responses"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)


def test_real_status_json_conforms_to_the_description(
    client: FlaskClient, app: Flask, inbox: Path
) -> None:
    """A request recorded by a real import, dumped by the real view, validates exactly."""
    doc = _document(client)
    folder = inbox / "test_proj" / "s01"
    write_session(folder, series=1, files_per_series=2, rows=8, columns=8)
    (folder / "notes.txt").write_text("not DICOM")
    queued = submit(
        client,
        PROJECT_ID="test_proj",
        SUBJECT_ID="s01",
        EXPT_LABEL="e01",
        path=folder,
        format="json",
    )
    assert queued.status_code == 200, queued.get_data(as_text=True)
    _validator(doc, "ImportRequest").validate(queued.get_json())
    assert run_worker(app) >= 1

    status = client.get(f"/xapi/dicom/{queued.get_json()['id']}", headers=auth())
    body = status.get_json()
    assert body["status"] == "Completed", body
    assert body["sessions"] and body["errors"] and body["history"]  # nested items are checked
    schema = _response_schema(doc, "get", "/xapi/dicom/{request_id}", "200")
    assert schema == {"$ref": "#/components/schemas/ImportRequest"}
    _validator(doc, "ImportRequest").validate(body)
    assert schemas.ImportRequestSchema().dump(body) == body  # served as the schema dumps it
    properties = doc["components"]["schemas"]["ImportRequest"]["properties"]
    assert set(body) == set(properties)  # every documented field is sent, nothing else
    assert set(body["progress"]) == set(doc["components"]["schemas"]["Progress"]["properties"])
    assert set(body["sessions"][0]) == set(doc["components"]["schemas"]["Session"]["properties"])

    listing = client.get("/xapi/dicom/list/all", headers=auth()).get_json()
    list_schema = _response_schema(doc, "get", "/xapi/dicom/list/all", "200")
    assert list_schema["type"] == "array"
    for item in listing:
        _validator(doc, "ImportRequest").validate(item)

    missing = client.get("/xapi/dicom/999999", headers=auth())
    assert missing.status_code == 404
    _validator(doc, "Error").validate(missing.get_json())


def test_validator_refuses_a_field_the_description_lacks(client: FlaskClient) -> None:
    """The check above can fail: an undocumented or mistyped field is refused."""
    doc = _document(client)
    error = {"code": 400, "status": "Bad Request", "message": "m", "errors": {}}
    _validator(doc, "Error").validate(error)
    with pytest.raises(Exception, match="Additional properties"):
        _validator(doc, "Error").validate({**error, "extra": 1})
    with pytest.raises(Exception, match="is not of type"):
        _validator(doc, "Error").validate({**error, "code": "400"})


def test_description_and_ui_are_public_everything_else_is_not(client: FlaskClient) -> None:
    doc = _document(client)
    public = {
        (m.upper(), path)
        for path, ops in doc["paths"].items()
        for m, op in ops.items()
        if op.get("security") == []
    }
    assert public == {
        ("GET", "/xapi/openapi.json"),
        ("GET", "/xapi/swagger-ui.html"),
        ("GET", "/xapi/swagger-ui/{filename}"),
        ("PUT", "/data/services/auth"),
        ("PUT", "/REST/services/auth"),
    }
    assert client.get("/xapi/swagger-ui.html").status_code == 200
    assert client.get("/xapi/dicom/list/all").status_code == 401
    assert client.get("/xapi/anonymize/site").status_code == 401


def test_swagger_ui_is_served_from_the_package_without_external_urls(client: FlaskClient) -> None:
    page = client.get("/xapi/swagger-ui.html")
    assert page.status_code == 200
    assert page.content_type == "text/html; charset=utf-8"
    html = page.get_data(as_text=True)
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]", html), "an external URL"
    assert 'data-spec-url="/xapi/openapi.json"' in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/xapi/swagger-ui/swagger-ui-bundle.js" in assets
    dist = Path(str(importlib.resources.files("flask_swagger_ui") / "dist"))
    for url in assets:
        with client.get(url) as response:
            assert response.status_code == 200, url
            name = url.rsplit("/", 1)[1]
            if (dist / name).is_file():
                assert response.data == (dist / name).read_bytes(), url
            else:
                script = response.get_data(as_text=True)
                assert "validatorUrl: null" in script  # no call to Swagger's online validator
                assert "http" not in script
    with client.get("/xapi/swagger-ui/swagger-ui-bundle.js") as bundle:
        assert bundle.content_type.startswith("text/javascript")
        assert b"SwaggerUIBundle" in bundle.data


@pytest.mark.parametrize("name", ["LICENSE", "VERSION", "oauth2-redirect.html", "nothing.js"])
def test_only_the_ui_files_are_served(client: FlaskClient, name: str) -> None:
    response = client.get(f"/xapi/swagger-ui/{name}")
    assert response.status_code == 404
    assert response.get_json()["code"] == 404


def test_no_file_outside_the_ui_folder(client: FlaskClient) -> None:
    for url in ("/xapi/swagger-ui/..%2F__init__.py", "/xapi/swagger-ui/../__init__.py"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"get_swaggerui_blueprint" not in response.data


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The example app on a real HTTP server (127.0.0.1, a free port) in a thread."""
    with serve_http(app) as url:
        yield url


@pytest.mark.slow
def test_swagger_ui_renders_every_operation_offline_in_chromium(
    client: FlaskClient, live_server: str, tmp_path: Path
) -> None:
    """A real browser, cut off from everything but the app, shows every described operation."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import Route, sync_playwright

    operations = len(_spec_operations(_document(client)))
    outside: list[str] = []
    errors: list[str] = []

    def only_the_app(route: Route) -> None:
        if route.request.url.startswith(live_server + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            context.route("**/*", only_the_app)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{live_server}/xapi/swagger-ui.html")
            page.wait_for_selector(".opblock", timeout=30000)
            assert page.locator(".opblock").count() == operations
            assert "flask-dicom-inbox" in (page.locator(".info .title").text_content() or "")
            assert page.locator(".btn.authorize").count() == 1  # the security schemes
            assert page.locator(".opblock-tag").count() >= 5
        finally:
            context.close()
    assert outside == [], "Swagger UI tried to reach beyond the app"
    assert errors == []
