"""Property-based fuzzing of every API operation from its OpenAPI schema (schemathesis), as the operator, on
SQLite: whatever the input, the service never answers with a server error (5xx)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import schemathesis
from api_world import Api, as_, build_world, open_api
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

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
    case.validate_response(response, checks=[not_a_server_error])
