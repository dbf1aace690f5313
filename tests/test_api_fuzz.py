"""Fuzz every operation of the REST API from its own OpenAPI description (schemathesis).

The example app answers as an admin and as a plain member, with valid basic auth, data that
fits the description and data that does not. No answer may be a 5xx, and each must have a
documented status, content type and body shape. Invented inbox paths cannot write anywhere:
the app's inbox, prearchive, archive and working folder are all under pytest's tmp folder, and
no worker runs, so nothing is imported.

schemathesis's own pytest integration (``schemathesis.pytest.from_fixture``) fails on pytest 9
(it reads ``node._nodeid``), so each operation runs as a Hypothesis test of its own strategy,
reported as a pytest subtest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .conftest import auth

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Examples per operation (each call checks a scrypt password hash: ~0.1 s here).
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """A DICOM-zip call answers at once: no worker runs, so waiting for its import is moot."""
    return {**app_config, "DICOM_INBOX_UPLOAD_WAIT": 0}


@pytest.fixture
def outside_tmp(app: Flask, tmp_path: Path) -> dict[str, Any]:
    """Where the app could write if a path escaped: its instance folder, which is not in tmp."""
    instance = Path(app.instance_path)
    assert not instance.is_relative_to(tmp_path)
    return {"instance": instance, "before": sorted(instance.rglob("*"))}


def _routes_nowhere(app: Flask, url: str, method: str) -> bool:
    """True when no rule matches ``url``: the host's own 404 page answers, not the blueprint.

    Negative data may put a value in the path that the URL converter refuses (``-5`` for an
    ``int``, a ``/`` in a name); Flask then answers with the host app's 404, which the API
    description does not cover.
    """
    adapter = app.url_map.bind("localhost")
    try:
        adapter.match(unquote(urlsplit(url).path), method=method)
    except MethodNotAllowed:
        return False
    except NotFound:
        return True
    return False


def _takes_input(operation: schemathesis.APIOperation) -> bool:
    raw = operation.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("user", ["admin", "member"])
def test_every_operation_conforms_and_never_answers_5xx(
    app: Flask,
    user: str,
    mode: GenerationMode,
    outside_tmp: dict[str, Any],
    subtests: pytest.Subtests,
) -> None:
    """Each operation, as an admin (the deepest paths) and as a member (the refusals), with
    data that fits the description and data that does not (which must be refused with a 4xx)."""
    api = schemathesis.openapi.from_wsgi("/xapi/openapi.json", app)
    operations = [result.ok() for result in api.get_all_operations()]
    described = app.test_client().get("/xapi/openapi.json").get_json()["paths"]
    labels = {f"{method.upper()} {path}" for path, ops in described.items() for method in ops}
    # schemathesis leaves out the description's own URL (it has just fetched it)
    assert {op.label for op in operations} == labels - {"GET /xapi/openapi.json"}
    calls = 0

    for operation in operations:
        with subtests.test(msg=f"{user} {mode} {operation.label}"):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES[mode],
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                derandomize=True,
            )
            def fuzz(case: schemathesis.Case) -> None:
                nonlocal calls
                response = case.call(headers=auth(user))
                calls += 1
                assert response.status_code < 500, case.as_curl_command()
                if mode is GenerationMode.NEGATIVE and _routes_nowhere(
                    app, response.request.url or "", case.method
                ):
                    assert response.status_code == 404
                    return
                case.validate_response(response, checks=CHECKS)

            try:
                fuzz()
            except Unsatisfiable:
                # nothing to make invalid: no parameter and no body
                if mode is GenerationMode.POSITIVE or _takes_input(operation):
                    raise

    assert calls >= len(operations) * 3
    assert sorted(outside_tmp["instance"].rglob("*")) == outside_tmp["before"]
