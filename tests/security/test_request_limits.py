"""Issue 15, holes 2 and 3: request limits (kfabric.api.limits). Each attack gets the standard error body and the
server never holds more than the limit of a body, nor a slow connection past its deadline:

* an oversized body (with and without a token; announced by Content-Length or chunked) → 413 before the
  application pulled more than the limit (a counting ``receive`` measures what it pulled from the server);
* a body that stops arriving → 408 and the connection closed;
* JSON nested deeper than 64 levels, on the fast submit path and on FastAPI routes → 422 naming the limit;
* against a real ``kfabric serve``: 1,000 connections announcing a 1 MB body and sending one byte, and
  connections trickling or never sending their headers, are all answered 408 and closed.

The ASGI-level tests drive the application directly (no TestClient) so that they control every message of the
request; none asserts on how long anything took, only that it ended within a generous safety bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_world import Api, open_api
from starlette.types import ASGIApp, Message

from kfabric.api import deps
from kfabric.api.app import create_app
from kfabric.api.fast_submit import FastSubmit
from kfabric.api.limits import Limits, json_too_deep
from kfabric.cli.main import main

KIB = 1024
STALL = None  # in a body script: the client stops sending (and never sends again)
SAFETY_S = 60.0  # an ASGI exchange that has not ended by then has hung: the test fails instead of waiting forever
JOB = {"project": "vision-lab", "time_limit_s": 60, "gpus": 1, "command": "true"}
POST_JOBS = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"  # headers to go on
ISSUE_BODY = b'{"project":"p","time_limit_s":60,"env":' + b"[" * 1500 + b"]" * 1500 + b"}"  # hole 3 as reported


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """A runtime on SQLite (the limits do not depend on the store) whose operator token stays cached."""
    monkeypatch.setattr(deps, "AUTH_CACHE_S", 1e9)
    with open_api(f"sqlite:///{tmp_path}/kfabric.db") as a:
        assert a.get("/v1/jobs?limit=1", a.operator).status_code == 200  # cached: the fast path takes its posts
        yield a


# ---- an ASGI client that scripts the request body and counts what the application pulled ---------------------


@dataclass
class Exchange:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    pulled: int = 0  # body bytes the application received from the "server"

    @property
    def error(self) -> dict[str, str]:
        content: dict[str, dict[str, str]] = json.loads(self.body)
        assert set(content["error"]) == {"code", "message", "where", "fix"}, content
        return content["error"]


def _lazy_chunks(total: int, size: int) -> Iterator[bytes]:
    """``total`` bytes of body in chunks of ``size``, made only when pulled (an attacker's endless stream)."""
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


async def _exchange(app: ASGIApp, path: str, headers: dict[str, str], script: Iterator[bytes | None]) -> Exchange:
    """Send one POST whose body comes from ``script`` (each item a chunk, ``STALL``: stop sending)."""
    out = Exchange()
    chunks = iter(script)
    pending = next(chunks, b"")
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": raw_headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    finished = False

    async def receive() -> Message:
        nonlocal pending, finished
        if finished or pending is STALL:
            await asyncio.sleep(3600)  # the client sends nothing more
        chunk = pending
        assert chunk is not None
        pending = next(chunks, b"")
        finished = not chunk and pending == b""
        out.pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": not finished}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")

    await asyncio.wait_for(app(scope, receive, send), SAFETY_S)
    return out


def _run(app: ASGIApp, path: str, headers: dict[str, str], script: Iterator[bytes | None]) -> Exchange:
    return asyncio.run(_exchange(app, path, headers, script))


def _auth(api: Api, token: bool) -> dict[str, str]:
    return {"authorization": f"Bearer {api.operator}"} if token else {}


# ---- oversized bodies --------------------------------------------------------------------------------------------

LIMIT = 64 * KIB
CHUNK = 16 * KIB
HUGE = 200 * 1024 * KIB  # what the issue sent: 200 MB

# (name, path, with a token, announced Content-Length (None: chunked), most body bytes the app may pull)
OVERSIZED = [
    ("content-length, no token", "/v1/jobs", False, HUGE, 0),
    ("content-length, token", "/v1/jobs", True, HUGE, 0),
    ("content-length, route", "/v1/organizations", True, HUGE, 0),
    ("content-length one over", "/v1/jobs", True, LIMIT + 1, 0),
    ("chunked, no token", "/v1/jobs", False, None, LIMIT + CHUNK),
    ("chunked, token", "/v1/jobs", True, None, LIMIT + CHUNK),
    ("chunked, unknown path", "/nope", False, None, LIMIT + CHUNK),
]


@pytest.mark.parametrize(("path", "token", "announced", "most"), [c[1:] for c in OVERSIZED],
                         ids=[c[0] for c in OVERSIZED])  # fmt: skip
def test_oversized_body_is_refused_before_it_is_read(
    api: Api, path: str, token: bool, announced: int | None, most: int
) -> None:
    app = create_app(api.rt, limits=Limits(max_body=LIMIT))
    headers = {"content-type": "application/json", **_auth(api, token)}
    if announced is None:
        headers["transfer-encoding"] = "chunked"
    else:
        headers["content-length"] = str(announced)
    before = api.writes()
    out = _run(app, path, headers, _lazy_chunks(announced or HUGE, CHUNK))
    assert out.status == 413, out.body
    assert out.pulled <= most, f"the application pulled {out.pulled} bytes of an oversized body"
    assert out.headers.get("connection") == "close"
    error = out.error
    assert (error["code"], error["where"]) == ("too_large", "body")
    assert str(LIMIT) in error["message"] and "--max-body" in error["fix"]
    assert api.writes() == before


def test_body_at_the_limit_is_accepted(api: Api) -> None:
    """Exactly ``max_body`` bytes pass (the limit is inclusive), through the fast path."""
    body = json.dumps(JOB | {"command": ""}).encode()
    body = json.dumps(JOB | {"command": "x" * (LIMIT - len(body))}).encode()
    assert len(body) == LIMIT
    app = create_app(api.rt, limits=Limits(max_body=LIMIT))
    headers = {"content-type": "application/json", "content-length": str(LIMIT), **_auth(api, True)}
    out = _run(app, "/v1/jobs", headers, iter([body[:CHUNK], body[CHUNK:]]))
    assert out.status == 201, out.body


def test_default_limit_is_one_mebibyte(api: Api) -> None:
    headers = {"content-type": "application/json", "content-length": str((1 << 20) + 1)}
    r = api.client.post("/v1/jobs", content=b"x" * ((1 << 20) + 1), headers=headers)
    assert r.status_code == 413 and "1048576" in r.json()["error"]["message"]


# ---- slow bodies ---------------------------------------------------------------------------------------------------

# (name, path, token, body script): each stops sending before its body is complete
SLOW = [
    ("one byte of 1 MB, no token", "/v1/jobs", False, [b"{", STALL]),
    ("one byte of 1 MB, token", "/v1/jobs", True, [b"{", STALL]),
    ("nothing of 1 MB, route", "/v1/organizations", True, [STALL]),
    ("half a job, token", "/v1/jobs", True, [json.dumps(JOB).encode()[:20], STALL]),
]


@pytest.mark.parametrize(("path", "token", "script"), [c[1:] for c in SLOW], ids=[c[0] for c in SLOW])
def test_slow_body_gets_408_and_the_connection_closed(
    api: Api, path: str, token: bool, script: list[bytes | None]
) -> None:
    app = create_app(api.rt, limits=Limits(body_timeout_s=0.5))
    headers = {"content-type": "application/json", "content-length": str(1 << 20), **_auth(api, token)}
    out = _run(app, path, headers, iter(script))
    assert out.status == 408, out.body
    assert out.headers.get("connection") == "close"
    error = out.error
    assert (error["code"], error["where"]) == ("timeout", "body")
    assert "0.5 s" in error["message"] and "--body-timeout" in error["fix"]


def test_chunked_body_that_stalls_gets_408(api: Api) -> None:
    app = create_app(api.rt, limits=Limits(body_timeout_s=0.5))
    headers = {"content-type": "application/json", "transfer-encoding": "chunked"}
    out = _run(app, "/v1/jobs", headers, iter([b"{", b'"pro', STALL]))
    assert out.status == 408 and out.error["code"] == "timeout"


# ---- nested JSON -------------------------------------------------------------------------------------------------


def _nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


# (name, path, body, expected status, expected error code (None: a success))
NESTED: list[tuple[str, str, bytes, int, str | None]] = [
    ("issue body, fast path", "/v1/jobs", ISSUE_BODY, 422, "invalid"),
    ("65 arrays in env, fast path", "/v1/jobs", json.dumps(JOB).encode()[:-1] + b', "env": ' +
     _nested(64).encode() + b"}", 422, "invalid"),  # 64 arrays + the outer object: 65 levels
    ("objects 100 deep", "/v1/jobs", b'{"a":' * 100 + b"1" + b"}" * 100, 422, "invalid"),
    ("unclosed 5,000", "/v1/jobs", b"[" * 5000, 422, "invalid"),
    ("deep on a route", "/v1/organizations", b'{"name":' + _nested(2000).encode() + b"}", 422, "invalid"),
    ("deep on an unknown path", "/v1/nope", _nested(2000).encode(), 422, "invalid"),
    ("brackets inside a string are text", "/v1/jobs", json.dumps(JOB | {"command": "echo " + "[{" * 3000}).encode(),
     201, None),
    ("escaped quotes do not end a string", "/v1/jobs", json.dumps(JOB | {"command": '\\"' + "[" * 3000}).encode(),
     201, None),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "code"), [c[1:] for c in NESTED], ids=[c[0] for c in NESTED])
def test_nested_json_is_refused_with_the_standard_body(
    api: Api, path: str, body: bytes, status: int, code: str | None
) -> None:
    before = api.writes()
    r = api.client.post(path, content=body, headers={"content-type": "application/json", **_auth(api, True)})
    assert r.status_code == status, r.text
    if code is None:
        return
    error = r.json()["error"]
    assert (error["code"], error["where"]) == (code, "body")
    assert "64 levels" in error["message"] and error["fix"]
    assert api.writes() == before


def test_fast_path_without_limits_answers_recursion_with_422(api: Api) -> None:
    """FastSubmit alone (no RequestLimits in front): the issue's body gets a 422 error body, not a 500."""
    inner_called: list[bool] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        inner_called.append(True)

    headers = {"content-type": "application/json", "content-length": str(len(ISSUE_BODY)), **_auth(api, True)}
    out = _run(FastSubmit(inner, api.rt), "/v1/jobs", headers, iter([ISSUE_BODY]))
    assert (out.status, out.error["code"], inner_called) == (422, "invalid", [])


# (name, body, limit, too deep)
DEPTHS = [
    ("empty", b"", 64, False),
    ("flat array of 10,000 arrays", b"[" + b"[]," * 9999 + b"[]]", 64, False),
    ("exactly the limit", _nested(64).encode(), 64, False),
    ("one over", _nested(65).encode(), 64, True),
    ("mixed", b"[{" * 33 + b"}]" * 33, 64, True),
    ("brackets in strings", b'["' + b"[" * 100 + b'"]', 64, False),
    ("escaped quote in a string", b'["\\"' + b"[" * 100 + b'"]', 64, False),
    ("escaped backslash ends the string", b'["\\\\"' + b",[" * 100 + b"]" * 100 + b"]", 64, True),
    ("unclosed", b"{" * 65, 64, True),
    ("closers first", b"]" * 100 + b"[" * 10, 64, False),
]


@pytest.mark.parametrize(("body", "limit", "deep"), [c[1:] for c in DEPTHS], ids=[c[0] for c in DEPTHS])
def test_json_depth_scan(body: bytes, limit: int, deep: bool) -> None:
    assert json_too_deep(body, limit) is deep


# ---- a real server: many slow connections --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    host: str
    port: int
    proc: subprocess.Popen[bytes]

    def connect(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=10)
        s.setblocking(False)
        return s


def _sockets_we_may_open(wanted: int) -> int:
    """Raise this process's open-file limit toward ``wanted`` sockets (the server, started after, inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * wanted + 200  # ours and the server's, plus files
    if soft < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(50, min(wanted, (soft - 200) // 2))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``kfabric serve --fleet lab`` with 1.5 s header and body deadlines, in a process of its own."""
    _sockets_we_may_open(1300)
    state = tmp_path_factory.mktemp("limits-serve")
    port = _free_port()
    log = state / "server.log"
    cmd = [sys.executable, "-m", "kfabric.cli.main", "serve", "--fleet", "lab", "--port", str(port),
           "--state-dir", str(state), "--tick", "3600", "--body-timeout", "1.5", "--header-timeout", "1.5"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "kfabric serve did not start\n" + log.read_text()
            time.sleep(0.1)
        yield Served("127.0.0.1", port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _until_all_closed(socks: dict[socket.socket, bytearray], trickle: set[socket.socket], bound_s: float) -> None:
    """Read every socket until the server closes it (collecting what it sent), sending one more header byte to
    the ``trickle`` ones every 0.2 s (a client that keeps the connection busy). Fails after ``bound_s``."""
    selector = selectors.DefaultSelector()
    for s in socks:
        selector.register(s, selectors.EVENT_READ)
    open_ = set(socks)
    end = time.monotonic() + bound_s
    next_trickle = time.monotonic()
    while open_:
        assert time.monotonic() < end, f"{len(open_)} connections still open after {bound_s} s"
        _read_ready(selector, socks, open_)
        if time.monotonic() >= next_trickle:
            for s in trickle & open_:
                if not socks[s]:  # nothing answered yet (sending after the answer would only earn a reset)
                    with contextlib.suppress(OSError):
                        s.send(b"x")
            next_trickle = time.monotonic() + 0.2
    selector.close()


def _read_ready(
    selector: selectors.BaseSelector, socks: dict[socket.socket, bytearray], open_: set[socket.socket]
) -> None:
    for key, _ in selector.select(timeout=0.2):
        s = key.fileobj
        assert isinstance(s, socket.socket)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            data = b""
        if data:
            socks[s] += data
        else:
            selector.unregister(s)
            s.close()
            open_.discard(s)


def _answer(raw: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    error: dict[str, str] = json.loads(body)["error"]
    return status, error


def test_many_slow_connections_are_answered_and_closed(served: Served) -> None:
    """1,000 bodies that stop after one byte (fewer where the open-file limit forbids), 100 connections trickling
    their headers a byte at a time and 100 that send nothing: every one gets its 408 and is closed."""
    bodies = _sockets_we_may_open(1000)
    announce = POST_JOBS + b"Content-Length: 1000000\r\n\r\n{"
    socks: dict[socket.socket, bytearray] = {}
    kinds: dict[socket.socket, str] = {}
    for kind, n in (("body", bodies), ("headers", 100), ("silent", 100)):
        for _ in range(n):
            s = served.connect()
            if kind == "body":
                s.sendall(announce)
            elif kind == "headers":
                s.sendall(b"POST /v1/jobs HTTP/1.1\r\nX-Slow: ")
            socks[s], kinds[s] = bytearray(), kind
    _until_all_closed(socks, {s for s, k in kinds.items() if k == "headers"}, bound_s=120)
    for s, raw in socks.items():
        status, error = _answer(bytes(raw))
        assert status == 408, (kinds[s], raw)
        assert error["code"] == "timeout"
        assert error["where"] == ("body" if kinds[s] == "body" else "headers")
    assert httpx.get(f"http://{served.host}:{served.port}/healthz", timeout=10).status_code == 200


def test_oversized_announcement_gets_413_without_a_token(served: Served) -> None:
    s = served.connect()
    s.sendall(POST_JOBS + b"Content-Length: 209715200\r\n\r\n")  # 200 MB announced, none sent
    socks = {s: bytearray()}
    _until_all_closed(socks, set(), bound_s=60)
    status, error = _answer(bytes(socks[s]))
    assert (status, error["code"]) == (413, "too_large") and "1048576" in error["message"]


def test_oversized_headers_get_431(served: Served) -> None:
    s = served.connect()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * (100 * KIB) + b"\r\n\r\n")
    socks = {s: bytearray()}
    _until_all_closed(socks, set(), bound_s=60)
    status, error = _answer(bytes(socks[s]))
    assert (status, error["code"], error["where"]) == (431, "too_large", "headers")


def _read_response(s: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body) from a blocking socket."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += s.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_keep_alive_connection_serves_requests_then_times_out_the_next_headers(served: Served) -> None:
    """The header deadline is re-armed for each request on a kept-alive connection, not only for the first."""
    s = served.connect()
    s.setblocking(True)
    for _ in range(3):
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = _read_response(s)
        assert reply.startswith(b"HTTP/1.1 200"), reply
    s.setblocking(False)
    s.sendall(b"GET /healthz HTTP/1.1\r\n")  # a fourth request that never finishes its headers
    socks = {s: bytearray()}
    _until_all_closed(socks, {s}, bound_s=60)
    status, error = _answer(bytes(socks[s]))
    assert (status, error["where"]) == (408, "headers")


def test_serve_refuses_bad_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["--max-body", "0"], "--max-body: must be at least 1 byte"),
                          (["--body-timeout", "0"], "--body-timeout: must be > 0"),
                          (["--header-timeout", "-1"], "--header-timeout: must be > 0")):  # fmt: skip
        code = main(["serve", "--state-dir", str(tmp_path / "state"), "--fleet", "lab", *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
