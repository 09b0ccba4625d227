"""Issue 15, hole 10a: ``/metrics`` (fleet-wide counts) needs an operator's or a provider's token, unless the
operator starts the server with ``--metrics-open``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_world import Api, open_api
from fastapi.testclient import TestClient

from kfabric.api.app import create_app
from kfabric.cli.main import main


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A runtime on SQLite (who may read /metrics does not depend on the store)."""
    path = tmp_path_factory.mktemp("metrics")
    with open_api(f"sqlite:///{path}/kfabric.db") as a:
        yield a


@pytest.fixture(scope="module")
def tokens(api: Api) -> dict[str, str]:
    """A token per role (tenants of the lab fleet's snu-vision)."""
    users = {
        "reviewer": {"role": "reviewer"},
        "provider": {"role": "provider", "owner": "acme"},
        "org-admin": {"role": "org-admin", "organization": "snu-vision"},
        "member": {"role": "member", "organization": "snu-vision", "projects": ["vision-lab"]},
    }
    out = {"operator": api.operator}
    for role, fields in users.items():
        r = api.post("/v1/users", api.operator, {"name": f"metrics-{role}", **fields})
        assert r.status_code == 201, r.text
        out[role] = r.json()["token"]
    return out


# (name, token: a role, None for no header, or a literal token, expected status, error code)
CASES: list[tuple[str, str | None, int, str | None]] = [
    ("no token", None, 401, "unauthenticated"),
    ("unknown token", "kf_not-a-token", 401, "unauthenticated"),
    ("operator", "operator", 200, None),
    ("provider", "provider", 200, None),
    ("reviewer", "reviewer", 403, "forbidden"),
    ("org-admin", "org-admin", 403, "forbidden"),
    ("member", "member", 403, "forbidden"),
]


@pytest.mark.parametrize(("who", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_metrics_needs_an_operator_or_provider_token(
    api: Api, tokens: dict[str, str], who: str | None, status: int, code: str | None
) -> None:
    token = tokens.get(who, who) if who is not None else None
    r = api.get("/metrics", token)
    assert r.status_code == status, r.text
    if code is None:
        assert "kfabric_jobs" in r.text and r.headers["content-type"].startswith("text/plain")
        return
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["fix"]
    assert "kfabric_" not in r.text
    if status == 403:
        assert "operator or provider" in error["message"] and "--metrics-open" in error["fix"]


def test_metrics_open_serves_without_a_token(api: Api) -> None:
    with TestClient(create_app(api.rt, metrics_open=True), raise_server_exceptions=False) as client:
        r = client.get("/metrics")
        assert r.status_code == 200 and "kfabric_jobs" in r.text
        operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert "security" not in operation and "401" not in operation["responses"]


def test_openapi_documents_the_metrics_token(api: Api) -> None:
    operation = api.client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert {"401", "403"} <= set(operation["responses"])


def test_serve_help_documents_metrics_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--metrics-open serve /metrics without a token" in help_text
    for flag in ("--max-body BYTES", "--body-timeout SECONDS", "--header-timeout SECONDS"):
        assert flag in help_text
