"""API tokens (issue 15, hole 8): create, list, revoke, rotate and expire through the API on both stores; a
token revoked elsewhere stops within ``AUTH_CACHE_S``, one revoked here or expired stops at once; tenants cannot
see, make or revoke other users' tokens (404); secrets are shown once and never listed or audited; the CLI
round trip against a real server."""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from api_world import DAY, Api, World, build_world, open_api, unique
from sqlalchemy import event, select

from kfabric.api import deps
from kfabric.api.app import create_app
from kfabric.backends.sim import SimBackend
from kfabric.cli.main import main
from kfabric.scenarios.policies import load_policy
from kfabric.service import tokens
from kfabric.service.auth import LAST_USED_RESOLUTION_S, authenticate, hash_token
from kfabric.service.runtime import open_runtime
from kfabric.store import tables as t

PUBLIC_FIELDS = {"id", "user", "name", "prefix", "created_at_s", "expires_at_s", "last_used_s", "revoked",
                 "revoked_at_s", "state"}  # fmt: skip


class FakeMonotonic:
    """Replaces the authentication cache's monotonic clock: the cache window passes without sleeping."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # entries cached before the test keep their real deadlines

    def __call__(self) -> float:
        return self.now

    def pass_window(self) -> None:
        self.now += deps.AUTH_CACHE_S + 0.001


@pytest.fixture
def mono(monkeypatch: pytest.MonkeyPatch) -> FakeMonotonic:
    fake = FakeMonotonic()
    monkeypatch.setattr(deps._cache, "monotonic", fake)
    return fake


@dataclass(frozen=True)
class People:
    """Three tenants' users, made by the operator: tokens of snu-vision's member (``snu-vision-member``) and
    admin (``snu-vision-admin``), and of tinyml's member (``tinyml-member``)."""

    api: Api
    member: str
    admin: str
    other: str


def _user(api: Api, name: str, role: str, org: str, projects: tuple[str, ...]) -> str:
    body = {"name": name, "role": role, "organization": org, "projects": list(projects)}
    r = api.post("/v1/users", api.operator, body)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@pytest.fixture
def people(api: Api) -> People:
    return People(
        api,
        _user(api, "snu-vision-member", "member", "snu-vision", ("vision-lab",)),
        _user(api, "snu-vision-admin", "org-admin", "snu-vision", ()),
        _user(api, "tinyml-member", "member", "tinyml", ("tinyml-llm",)),
    )


def create(api: Api, by: str, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/tokens", by, body)
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


def listed(api: Api, by: str, **params: Any) -> list[dict[str, Any]]:
    r = api.get("/v1/tokens", by, params=params)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def works(api: Api, token: str) -> int:
    """The status of ``GET /v1/whoami`` with ``token``."""
    return api.get("/v1/whoami", token).status_code


def assert_401_with_hint(api: Api, token: str, problem: str) -> None:
    r = api.get("/v1/whoami", token)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert problem in err["message"], err
    assert "kfabric token create" in err["fix"], err


def store_token(api: Api, token_id: int) -> t.Token:
    with api.rt.sessions() as s:
        row = s.get(t.Token, token_id)
        assert row is not None
        return row


# ---- create, list: the secret once ---------------------------------------------------------------------------


def test_create_shows_the_secret_once_and_lists_never_do(people: People) -> None:
    api, member = people.api, people.member
    tok = create(api, member, name="laptop", expires_in_s=30 * DAY)
    assert tok["token"].startswith("kf_") and tok["prefix"] == tok["token"][:10]
    assert (tok["user"], tok["name"], tok["state"]) == ("snu-vision-member", "laptop", "active")
    assert tok["expires_at_s"] == pytest.approx(api.clock.now + 30 * DAY)
    assert works(api, tok["token"]) == 200
    for params in ({}, {"all": True}):
        r = api.get("/v1/tokens", member, params=params)
        assert tok["token"] not in r.text and hash_token(tok["token"]) not in r.text
        rows = r.json()
        assert all(set(row) == PUBLIC_FIELDS for row in rows), rows
        assert tok["id"] in [row["id"] for row in rows]
    mine = {row["id"]: row for row in listed(api, member)}[tok["id"]]
    assert mine["last_used_s"] == api.clock.now  # the whoami above
    r = api.get(f"/v1/tokens/{tok['id']}", member)
    assert r.status_code in (404, 405)  # no route shows one token (and so no secret) again


def test_the_audit_log_records_token_changes_without_secrets(people: People) -> None:
    api, admin = people.api, people.admin
    tok = create(api, admin, name="ci", user="snu-vision-member")
    rotated = api.post(f"/v1/tokens/{tok['id']}/rotate", admin).json()
    assert api.post(f"/v1/tokens/{rotated['id']}/revoke", admin).status_code == 200
    with api.rt.sessions() as s:
        entries = s.scalars(select(t.AuditEntry).where(t.AuditEntry.action.like("token.%"))).all()
        actions = sorted(e.action for e in entries)
        text = json.dumps([e.detail for e in entries])
    assert actions == ["token.create", "token.revoke", "token.revoke", "token.rotate"]
    for secret in (tok["token"], rotated["token"]):
        assert secret not in text and hash_token(secret) not in text


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"expires_at_s": 1.0}, "token.expires"),  # in the past
        ({"expires_at_s": 1e10}, "token.expires"),  # more than 10 years away
        ({"expires_in_s": 60.0, "expires_at_s": 2e9}, "expires_at_s"),
        ({"name": "x" * 201}, "name"),
        ({"token": "kf_chosen-by-the-caller"}, "token"),  # secrets are never chosen by the caller
        ({"user": "no such user!"}, "user"),
    ],
)
def test_bad_create_requests_are_422_and_write_nothing(api: Api, body: dict[str, Any], where: str) -> None:
    before = api.writes()
    r = api.post("/v1/tokens", api.operator, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["where"] == where
    assert api.writes() == before


def test_a_user_holds_a_bounded_number_of_live_tokens(people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    api, member = people.api, people.other
    monkeypatch.setattr(tokens, "MAX_ACTIVE_TOKENS", 3)
    made = [create(api, member) for _ in range(2)]  # plus the one `user create` printed
    r = api.post("/v1/tokens", member, {})
    assert r.status_code == 409 and "kfabric token revoke" in r.json()["error"]["fix"], r.text
    assert api.post(f"/v1/tokens/{made[0]['id']}/revoke", member).status_code == 200
    create(api, member)


# ---- revoke, rotate ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["delete-id", "revoke-id", "revoke-prefix"])
def test_a_revoked_token_stops_at_once_on_this_server(people: People, how: str) -> None:
    api, member = people.api, people.member
    tok = create(api, member, name=how)
    assert works(api, tok["token"]) == 200  # now in the authentication cache
    ref = tok["prefix"] if how.endswith("prefix") else tok["id"]
    call = api.client.delete if how.startswith("delete") else None
    if call is not None:
        r = call(f"/v1/tokens/{ref}", headers={"Authorization": f"Bearer {member}"})
    else:
        r = api.post(f"/v1/tokens/{ref}/revoke", member)
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["revoked_at_s"]) == ("revoked", api.clock.now)
    assert_401_with_hint(api, tok["token"], "was revoked")
    assert works(api, member) == 200  # the caller's other token is untouched
    assert tok["id"] not in [row["id"] for row in listed(api, member)]
    assert tok["id"] in [row["id"] for row in listed(api, member, all=True)]
    audited = api.writes()
    again = api.post(f"/v1/tokens/{tok['id']}/revoke", member)
    assert again.status_code == 200 and again.json()["revoked_at_s"] == r.json()["revoked_at_s"]
    assert api.writes() == audited  # revoking twice changes nothing and audits nothing


def test_a_token_can_revoke_itself(people: People) -> None:
    api = people.api
    tok = create(api, people.other)
    assert api.post(f"/v1/tokens/{tok['id']}/revoke", tok["token"]).status_code == 200
    assert_401_with_hint(api, tok["token"], "was revoked")


def test_a_token_revoked_by_another_process_stops_within_the_cache_window(people: People, mono: FakeMonotonic) -> None:
    api = people.api
    tok = create(api, people.member)
    assert works(api, tok["token"]) == 200  # cached for AUTH_CACHE_S
    with api.rt.sessions() as s:
        operator = authenticate(s, api.operator, api.clock.now)
    tokens.revoke(api.rt.sessions, operator, str(tok["id"]), api.clock.now)  # as another server process would
    mono.now += deps.AUTH_CACHE_S / 2
    assert works(api, tok["token"]) == 200  # inside the documented window the cached answer stands
    mono.pass_window()
    assert_401_with_hint(api, tok["token"], "was revoked")


def test_rotate_gives_a_new_secret_with_the_same_name_and_lifetime(people: People) -> None:
    api, admin = people.api, people.admin
    old = create(api, admin, name="ci", user="snu-vision-member", expires_in_s=7 * DAY)
    assert works(api, old["token"]) == 200
    api.clock.now += DAY
    r = api.post(f"/v1/tokens/{old['prefix']}/rotate", admin)
    assert r.status_code == 201, r.text
    new = r.json()
    assert (new["name"], new["user"], new["replaces"], new["state"]) == ("ci", "snu-vision-member", old["id"], "active")
    assert new["token"] != old["token"] and new["id"] != old["id"]
    assert new["expires_at_s"] == pytest.approx(api.clock.now + 7 * DAY)  # the same lifetime, from now
    assert works(api, new["token"]) == 200
    assert_401_with_hint(api, old["token"], "was revoked")
    assert store_token(api, old["id"]).revoked_at_s == api.clock.now
    again = api.post(f"/v1/tokens/{old['id']}/rotate", admin)
    assert again.status_code == 409 and "kfabric token create" in again.json()["error"]["fix"], again.text


def test_rotating_a_token_without_expiry_keeps_it_without_expiry(people: People) -> None:
    api, member = people.api, people.other
    old = create(api, member)
    new = api.post(f"/v1/tokens/{old['id']}/rotate", old["token"]).json()
    assert new["expires_at_s"] is None
    assert works(api, new["token"]) == 200 and works(api, old["token"]) == 401


# ---- expiry ------------------------------------------------------------------------------------------------


def test_an_expired_token_stops_at_once_even_when_cached(people: People, mono: FakeMonotonic) -> None:
    api = people.api
    tok = create(api, people.member, expires_in_s=60.0)
    assert works(api, tok["token"]) == 200  # cached now
    api.clock.now += 60.0  # the fake monotonic clock has not moved: the cache entry is fresh
    assert_401_with_hint(api, tok["token"], "expired at")
    job = api.post("/v1/jobs", tok["token"], {"project": "vision-lab", "time_limit_s": 60.0})  # the fast path too
    assert job.status_code == 401, job.text
    assert [r["state"] for r in listed(api, people.member, all=True) if r["id"] == tok["id"]] == ["expired"]


def test_an_expired_token_is_refused_by_the_fast_submit_path(people: People, mono: FakeMonotonic) -> None:
    api = people.api
    tok = create(api, people.other, expires_in_s=120.0)
    body = {"project": "tinyml-llm", "time_limit_s": 60.0, "name": unique("fast")}
    assert api.post("/v1/jobs", tok["token"], body).status_code == 201  # authenticates, then cached
    assert api.post("/v1/jobs", tok["token"], {**body, "name": unique("fast")}).status_code == 201
    api.clock.now += 121.0
    before = api.writes()
    r = api.post("/v1/jobs", tok["token"], {**body, "name": unique("fast")})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"], r.text
    assert api.writes() == before


# ---- last use, without a write per request -----------------------------------------------------------------


def test_last_use_is_written_at_most_once_a_minute(people: People, mono: FakeMonotonic) -> None:
    api = people.api
    tok = create(api, people.member)
    updates: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE TOKENS"):
            updates.append(statement)

    event.listen(api.rt.engine, "before_cursor_execute", count)
    try:
        start = api.clock.now
        for _ in range(40):  # 40 requests over 40 s, each past the cache window: 40 store look-ups
            mono.pass_window()
            assert works(api, tok["token"]) == 200
            api.clock.now += 1.0
        assert len(updates) == 1
        assert store_token(api, tok["id"]).last_used_s == start
        api.clock.now = start + LAST_USED_RESOLUTION_S
        mono.pass_window()
        assert works(api, tok["token"]) == 200
        assert len(updates) == 2 and store_token(api, tok["id"]).last_used_s == api.clock.now
    finally:
        event.remove(api.rt.engine, "before_cursor_execute", count)


# ---- who may: own tokens; operators anyone's; org-admins their organization's; others 404 --------------------

ACCESS = [  # (caller, target user, allowed); members an org-admin created are named NAME@ORG
    ("snu-vision/member", "snu-vision-member@snu-vision", True),
    ("snu-vision/member", "snu-vision-member2", False),  # a colleague in the same project
    ("snu-vision/member", "tinyml-member@tinyml", False),
    ("snu-vision/member", "admin", False),
    ("snu-vision/org-admin", "snu-vision-member@snu-vision", True),
    ("snu-vision/org-admin", "snu-vision-member2", True),
    ("snu-vision/org-admin", "tinyml-member@tinyml", False),
    ("snu-vision/org-admin", "tinyml-admin", False),
    ("snu-vision/org-admin", "admin", False),
    ("snu-vision/org-admin", "snu-vision-operator", False),  # an operator placed in the organization
    ("tinyml/org-admin", "snu-vision-member@snu-vision", False),
    ("reviewer", "snu-vision-member@snu-vision", False),
    ("provider", "tinyml-member@tinyml", False),
    ("operator", "snu-vision-member@snu-vision", True),
    ("operator", "tinyml-admin", True),
    ("operator", "rev", True),
]


_access_dbs = itertools.count(1)


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
    ids=["sqlite", "postgresql"],
)
def access_world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world per store for the whole matrix (each case makes its own target token), plus an operator
    placed in snu-vision."""
    server = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    name = f"t_tokens_{next(_access_dbs):04d}"
    url = server.create_database(name) if server else f"sqlite:///{tmp_path_factory.mktemp('tokens')}/kfabric.db"
    with open_api(url) as api:
        world = build_world(api)
        world.create_user("snu-vision-operator", "operator", "snu-vision")
        yield world
    if server:
        server.drop_database(name)


@pytest.mark.parametrize(("caller", "target", "allowed"), ACCESS, ids=[f"{c}->{u}" for c, u, _ in ACCESS])
def test_who_may_manage_whose_tokens(access_world: World, caller: str, target: str, allowed: bool) -> None:
    api, by = access_world.api, access_world.tokens[caller]
    victim = create(api, api.operator, user=target, name=unique("target"))
    before = api.writes()
    answers = {
        "list": api.get("/v1/tokens", by, params={"user": target, "all": True}),
        "create": api.post("/v1/tokens", by, {"user": target}),
        "revoke-prefix": api.post(f"/v1/tokens/{victim['prefix']}/revoke", by),
        "rotate": api.post(f"/v1/tokens/{victim['id']}/rotate", by),
        "revoke": api.post(f"/v1/tokens/{victim['id']}/revoke", by),
    }
    if allowed:
        assert {k: r.status_code for k, r in answers.items()} == {
            "list": 200, "create": 201, "revoke-prefix": 200, "rotate": 409, "revoke": 200,
        }  # fmt: skip
        assert victim["id"] in [row["id"] for row in answers["list"].json()]
        assert works(api, victim["token"]) == 401
        return
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 404), answers
    for r in answers.values():
        assert r.json()["error"]["code"] == "not_found"
        assert victim["token"] not in r.text and victim["prefix"] not in r.json()["error"]["fix"]
    assert api.writes() == before
    assert works(api, victim["token"]) == 200


def test_an_unknown_user_and_an_invisible_one_answer_alike(people: People) -> None:
    api, member = people.api, people.member
    real = api.get("/v1/tokens", member, params={"user": "tinyml-member"})
    made_up = api.get("/v1/tokens", member, params={"user": "no-such-user"})
    assert real.status_code == made_up.status_code == 404
    assert real.json()["error"]["fix"] == made_up.json()["error"]["fix"]


@pytest.mark.parametrize(
    ("ref", "status"),
    [
        ("kf_" + "A" * 43, 422),  # a whole secret never goes in a path
        ("not-a-ref", 422),
        ("kf_nothere", 404),
        ("999999", 404),
        ("0" * 19, 422),
    ],
)
def test_bad_token_refs(api: Api, ref: str, status: int) -> None:
    r = api.post(f"/v1/tokens/{ref}/revoke", api.operator)
    assert r.status_code == status, r.text
    assert "token list" in r.json()["error"]["fix"] or status == 422


# ---- the command line against a real server ------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    token: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("kfabric-tokens")
    rt = open_runtime(f"sqlite:///{tmp}/kfabric.db", load_policy("kfabric"), {"sim": SimBackend(time.time)}, "lab")
    assert rt.bootstrap_token
    port = _free_port()
    web = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, name="kfabric-token-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started:
        assert time.monotonic() < deadline, "the API server did not start within 10 s"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", rt.bootstrap_token)
    finally:
        web.should_exit = True
        thread.join(10)
        rt.close()


@pytest.fixture
def env(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Server:
    monkeypatch.setenv("KFABRIC_URL", server.url)
    monkeypatch.setenv("KFABRIC_TOKEN", server.token)
    monkeypatch.delenv("KFABRIC_TOKEN_FILE", raising=False)
    monkeypatch.delenv("KFABRIC_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return server


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def secret_of(out: str) -> str:
    found = re.findall(r"^kf_[A-Za-z0-9_-]{40,}$", out, re.MULTILINE)
    assert len(found) == 1, out
    return str(found[0])


def test_cli_round_trip(env: Server, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("cli-user")
    code, out, err = cli(capsys, "user", "create", name, "--role", "member", "--organization", "snu-vision",
                         "--project", "vision-lab")  # fmt: skip
    assert code == 0, err
    first = secret_of(out)  # `user create` still prints the first token
    code, out, err = cli(capsys, "token", "create", "--name", "laptop", "--expires", "30d", "--token", first)
    assert code == 0, err
    assert "shown only now" in out and "laptop" in out
    laptop = secret_of(out)
    code, out, err = cli(capsys, "token", "list", "--token", laptop, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["", "laptop"]
    assert first not in out and laptop not in out and "token_hash" not in out
    laptop_row = rows[1]
    assert laptop_row["expires_at_s"] == pytest.approx(time.time() + 30 * 86_400, abs=120)
    code, out, err = cli(capsys, "token", "list", "--token", laptop)
    assert code == 0 and laptop_row["prefix"] in out and "laptop" in out, err

    code, out, err = cli(capsys, "token", "rotate", str(laptop_row["id"]), "--token", first)
    assert code == 0, err
    rotated = secret_of(out)
    assert f"Revoked token {laptop_row['id']}" in out
    code, _out, err = cli(capsys, "whoami", "--token", laptop)
    assert code == 2 and "was revoked" in err and "kfabric token create" in err, err
    assert cli(capsys, "whoami", "--token", rotated)[0] == 0

    code, out, err = cli(capsys, "token", "revoke", rotated[:10], "--token", first)
    assert code == 0 and "Revoked token" in out, err
    assert cli(capsys, "whoami", "--token", rotated)[0] == 2
    code, out, err = cli(capsys, "token", "list", "--all", "--user", name, "--json")  # the operator looks
    assert code == 0, err
    assert [r["state"] for r in json.loads(out)] == ["active", "revoked", "revoked"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("token", "create", "--expires", "soon"), "expected a duration such as 30d"),
        (("token", "create", "--expires", "2001-01-01"), "not in the future"),
        (("token", "create", "--user", "nobody-at-all"), "'nobody-at-all' not found"),
        (("token", "revoke", "kf_" + "x" * 43), "whole token secret"),
        (("token", "revoke", "kf_absent"), "kfabric token list"),
        (("token", "rotate", "12345678"), "not found"),
    ],
)
def test_cli_errors_say_what_to_do(
    env: Server, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2 and message in err, (out, err)
    assert "Traceback" not in err


def test_cli_without_a_working_token_names_a_real_command(env: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = cli(capsys, "token", "list", "--token", "kf_" + "z" * 43)
    assert code == 2 and "unknown API token" in err and "kfabric token create" in err, err
    with httpx.Client() as http:
        r = http.get(f"{env.url}/v1/tokens")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
