"""Property-based fuzzing of every API operation from its OpenAPI schema (schemathesis), as the operator, on
SQLite: whatever the input, the service never answers with a server error (5xx), every status code it answers
is documented for that operation, and every error answer has the documented error body."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import schemathesis
from api_world import Api, as_, build_world, open_api
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from kfabric.api.app import create_app
from kfabric.service.runtime import Runtime


def _openapi() -> dict[str, Any]:
    """The API's OpenAPI document. It does not depend on the runtime, so none is opened at collection; the
    requests go to a real app (``fuzzed``). (``schemathesis.pytest.from_fixture`` would load it from a fixture,
    but its lazy runner does not work with pytest 9.)"""
    return create_app(cast(Runtime, None)).openapi()


schema = schemathesis.openapi.from_dict(_openapi())


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A populated world (so ids and names in generated requests sometimes hit real objects) on SQLite."""
    path = tmp_path_factory.mktemp("fuzz")
    with open_api(f"sqlite:///{path}/kfabric.db") as api:
        build_world(api)
        yield api


@schema.parametrize()
@settings(max_examples=15, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, fuzzed: Api) -> None:
    response = case.call(app=fuzzed.client.app, headers=as_(fuzzed.operator))
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
    if response.status_code >= 400:  # the error body (ErrorBody) as documented; success bodies are not all typed
        case.validate_response(response, checks=[response_schema_conformance])


ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# (which operations, status codes each must document with the error body)
DOCUMENTED: list[tuple[str, set[str]]] = [
    ("every operation", {"408", "413", "422"}),
    ("operations with a token", {"401", "403", "404", "409"}),
    ("operations with a body", {"400"}),
]


@pytest.mark.parametrize(("which", "codes"), DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
def test_error_answers_are_documented(which: str, codes: set[str]) -> None:
    """Every status code the API answers is in the OpenAPI document, with the error body's schema (issue 15)."""
    document = _openapi()
    assert set(document["components"]["schemas"]["ErrorBody"]["properties"]["error"]["required"]) == {
        "code", "message", "where", "fix",
    }  # fmt: skip
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if which == "operations with a token" and not operation.get("security"):
                continue
            if which == "operations with a body" and "requestBody" not in operation:
                continue
            checked += 1
            for code in codes:
                answer = operation["responses"].get(code)
                assert answer is not None, f"{method.upper()} {path} does not document {code}"
                assert answer["content"]["application/json"]["schema"] == ERROR_REF, (method, path, code)
    assert checked >= 5, which
