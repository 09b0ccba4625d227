"""Guessing tokens through the portal's sign-in form is throttled per client address (web/throttle.py): after
10 failures in 5 minutes the form answers 429 with Retry-After, even for a good token, until the window passes;
a success clears the count."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from api_world import Api, open_api
from fastapi.testclient import TestClient

from kfabric.web.throttle import MAX_FAILURES, WINDOW_S, SignInThrottle

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with open_api(db_url) as api:
        yield api


def attempt(client: TestClient, token: str) -> int:
    page = client.get("/signin")
    found = CSRF.search(page.text)
    assert found is not None
    r = client.post("/signin", data={"csrf": found.group(1), "token": token, "next": "/"}, follow_redirects=False)
    if r.status_code == 429:
        assert int(r.headers["Retry-After"]) >= 1 and "Too many failed sign-ins" in r.text
    return r.status_code


def test_token_guessing_is_locked_out_then_let_in_after_the_window(api: Api) -> None:
    client = api.client
    for _ in range(MAX_FAILURES):
        assert attempt(client, "kf_guess") == 401
    assert attempt(client, "kf_guess") == 429
    assert attempt(client, api.operator) == 429  # even the right token waits: no oracle while locked
    api.clock.now += WINDOW_S + 1
    assert attempt(client, api.operator) == 303


@pytest.mark.parametrize(
    ("events", "locked"),
    [
        (["fail"] * (MAX_FAILURES - 1), False),
        (["fail"] * MAX_FAILURES, True),
        (["fail"] * (MAX_FAILURES - 1) + ["ok"] + ["fail"] * (MAX_FAILURES - 1), False),
        (["fail"] * MAX_FAILURES + ["wait"], False),
    ],
    ids=["under", "at-limit", "success-clears", "window-passes"],
)
def test_the_window_rule(events: list[str], locked: bool) -> None:
    throttle, now = SignInThrottle(), 1000.0
    for e in events:
        if e == "fail":
            throttle.failed("10.0.0.1", now)
        elif e == "ok":
            throttle.succeeded("10.0.0.1")
        else:
            now += WINDOW_S
        now += 0.5
    assert (throttle.retry_after_s("10.0.0.1", now) > 0) is locked
    assert throttle.retry_after_s("10.0.0.2", now) == 0  # another address is not affected
