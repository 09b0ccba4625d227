"""Request limits: what one request may cost the server before anyone knows who sent it.

Two layers, both answering with the standard error body (``{"error": {code, message, where, fix}}``) and
closing the connection:

* :class:`RequestLimits`, the outermost ASGI middleware, reads every request body itself before the application
  sees it: a ``Content-Length`` over :attr:`Limits.max_body` is refused with 413 before one byte of the body is
  read, a chunked body is counted as it streams and refused at the limit, a body that does not arrive within
  :attr:`Limits.body_timeout_s` of the headers gets 408, and a body nested deeper than
  :attr:`Limits.max_json_depth` (arrays and objects) gets 422 before any JSON parser sees it.
* :func:`http_protocol` wraps uvicorn's HTTP protocol so that the request line and headers must arrive within
  :attr:`Limits.header_timeout_s` of the connection (or of the first byte of the next request on a kept-alive
  connection) and within :attr:`Limits.max_header_bytes`: 408 or 431, then the connection is closed. Uvicorn
  itself only times out idle kept-alive connections, and its default (httptools) parser bounds neither the time
  nor the size of headers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kfabric.api")
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may cost (``kfabric serve --max-body``, ``--body-timeout``, ``--header-timeout``)."""

    max_body: int = MiB
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        checks = (
            (self.max_body >= 1, "--max-body", f"must be at least 1 byte, got {self.max_body}"),
            (self.body_timeout_s > 0, "--body-timeout", f"must be > 0 seconds, got {self.body_timeout_s}"),
            (self.header_timeout_s > 0, "--header-timeout", f"must be > 0 seconds, got {self.header_timeout_s}"),
            (self.max_header_bytes >= 1024, "max_header_bytes", f"must be >= 1024, got {self.max_header_bytes}"),
            (self.max_json_depth >= 2, "max_json_depth", f"must be >= 2, got {self.max_json_depth}"),
        )
        for ok, where, problem in checks:
            if not ok:
                raise ValueError(f"{where}: {problem}")


# ---- JSON nesting depth ----------------------------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string, escapes included
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_too_deep(body: bytes, limit: int) -> bool:
    """Whether ``body`` opens more than ``limit`` arrays/objects inside each other (brackets in strings do not
    count). Invalid JSON is judged by its unclosed brackets, as a recursive parser would meet them. A body with
    at most ``limit`` opening brackets (nearly every request) costs two ``bytes.count``."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    structure = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if structure.count(b"[") + structure.count(b"{") <= limit:
        return False
    codes = np.frombuffer(structure, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return bool(np.cumsum(steps).max() > limit)


# ---- the answers -----------------------------------------------------------------------------------------------


def error_body(code: str, message: str, where: str = "", fix: str = "") -> dict[str, dict[str, str]]:
    """The standard error body (``kfabric.api.errors.body`` is this function; it lives here because ``kfabric
    serve``'s option defaults come from this module, which must not import FastAPI for every CLI command)."""
    return {"error": {"code": code, "message": message, "where": where, "fix": fix}}


def too_large(limit: int) -> tuple[int, dict[str, dict[str, str]]]:
    return 413, error_body(
        "too_large",
        f"the request body is larger than the server's limit of {limit} bytes",
        "body",
        f"send at most {limit} bytes (the operator sets the limit: kfabric serve --max-body BYTES)",
    )


def body_timeout(seconds: float) -> tuple[int, dict[str, dict[str, str]]]:
    return 408, error_body(
        "timeout",
        f"the request body did not arrive within {seconds:g} s of the headers",
        "body",
        f"send the whole body within {seconds:g} s (the operator sets it: kfabric serve --body-timeout SECONDS)",
    )


def header_timeout(seconds: float) -> tuple[int, dict[str, dict[str, str]]]:
    return 408, error_body(
        "timeout",
        f"the request line and headers did not arrive within {seconds:g} s",
        "headers",
        f"send the headers within {seconds:g} s (the operator sets it: kfabric serve --header-timeout SECONDS)",
    )


def headers_too_large(limit: int) -> tuple[int, dict[str, dict[str, str]]]:
    return 431, error_body(
        "too_large",
        f"the request line and headers are larger than the server's limit of {limit} bytes",
        "headers",
        f"send at most {limit} bytes of headers",
    )


def too_deep(limit: int) -> tuple[int, dict[str, dict[str, str]]]:
    return 422, error_body(
        "invalid",
        f"the JSON body nests arrays/objects deeper than the limit of {limit} levels",
        "body",
        f"send a document nested at most {limit} levels deep",
    )


async def send_error(send: Send, answer: tuple[int, dict[str, dict[str, str]]], close: bool = True) -> None:
    """Send ``answer`` as the response; ``close`` asks the server to close the connection after it."""
    status, content = answer
    payload = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def raw_response(answer: tuple[int, dict[str, dict[str, str]]]) -> bytes:
    """``answer`` as the bytes of an HTTP/1.1 response that closes the connection (no ASGI cycle to send it)."""
    status, content = answer
    reason = {408: "Request Timeout", 431: "Request Header Fields Too Large"}.get(status, "Error")
    payload = json.dumps(content).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload


# ---- deadlines: one sweep per event loop, not a timer per request ---------------------------------------------


class Deadlines:
    """Deadlines that one periodic sweep per event loop checks, instead of a timer each: arming and cancelling
    an event-loop timer costs several microseconds per request, an entry here a dict insert and delete. A
    deadline fires late by at most the sweep interval."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self._due: dict[int, tuple[float, Callable[[], None]]] = {}
        self._keys = itertools.count()
        self._sweeping = False

    def add(self, seconds: float, on_expiry: Callable[[], None]) -> int:
        """Call ``on_expiry`` (on the loop) once ``seconds`` have passed, unless :meth:`discard` comes first."""
        key = next(self._keys)
        self._due[key] = (self.loop.time() + seconds, on_expiry)
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(self.interval_s, self._sweep)
        return key

    def discard(self, key: int) -> None:
        self._due.pop(key, None)

    def _sweep(self) -> None:
        now = self.loop.time()
        for key in [k for k, (due, _) in self._due.items() if due <= now]:
            _, on_expiry = self._due.pop(key)
            try:
                on_expiry()
            except Exception:  # one failing expiry must not stop the others
                log.exception("request deadline")
        self._sweeping = bool(self._due)
        if self._sweeping:
            self.loop.call_later(self.interval_s, self._sweep)


_deadlines: dict[int, Deadlines] = {}


def deadlines(loop: asyncio.AbstractEventLoop, limits: Limits) -> Deadlines:
    """The sweeper of ``loop``, sweeping at least as often as a quarter of the shortest timeout of ``limits``."""
    interval = min(1.0, max(0.05, min(limits.body_timeout_s, limits.header_timeout_s) / 4))
    found = _deadlines.get(id(loop))
    if found is None or found.loop is not loop:  # a new loop (possibly reusing a closed one's id)
        if len(_deadlines) > 64:
            _deadlines.clear()
        found = _deadlines[id(loop)] = Deadlines(loop, interval)
    found.interval_s = min(found.interval_s, interval)
    return found


# ---- the body: size, deadline, depth ---------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, answer: tuple[int, dict[str, dict[str, str]]]) -> None:
        self.answer = answer


class _Gone(Exception):
    """The client went away while sending the body."""


def _announced_length(scope: Scope) -> int | None:
    """``Content-Length`` as a number, -1 for a body without one (chunked), None for a request without a body."""
    chunked = False
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else -1  # the server refuses a malformed one before us
        if key == b"transfer-encoding":
            chunked = True
    return -1 if chunked else None


class RequestLimits:
    """ASGI middleware enforcing :class:`Limits` on every HTTP request body (see the module's description).

    The application receives the whole body as one ``http.request`` message; later ``receive`` calls go to the
    server (so a disconnect is still seen)."""

    def __init__(self, app: ASGIApp, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or Limits()
        self._sweeper: Deadlines | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = _announced_length(scope)
        if announced is None or announced == 0:  # nothing to read: no cost
            await self.app(scope, receive, send)
            return
        limits = self.limits
        try:
            if announced > limits.max_body:
                raise _Refused(too_large(limits.max_body))
            body = await self._read(receive)
            if json_too_deep(body, limits.max_json_depth):
                raise _Refused(too_deep(limits.max_json_depth))
        except _Refused as refused:
            await send_error(send, refused.answer)
            return
        except _Gone:
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        """The whole body, within the size limit and the deadline (on expiry the sweep cancels this task's wait
        for the next chunk; the cancellation is taken back and answered 408)."""
        limits = self.limits
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        sweeper = self._sweeper
        if sweeper is None or sweeper.loop is not task.get_loop():
            sweeper = self._sweeper = deadlines(task.get_loop(), limits)
        key = sweeper.add(limits.body_timeout_s, expire)
        try:
            return await _chunks(receive, limits.max_body)
        except asyncio.CancelledError:
            if not expired:
                raise  # cancelled by someone else (shutdown)
            task.uncancel()
            raise _Refused(body_timeout(limits.body_timeout_s)) from None
        finally:
            sweeper.discard(key)


async def _chunks(receive: Receive, max_body: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Gone()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise _Refused(too_large(max_body))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


# ---- the headers: uvicorn's protocol with a deadline and a size limit ------------------------------------------


class _HeaderLimits(asyncio.Protocol):
    """Mixed in before uvicorn's HTTP protocol (httptools or h11): a deadline and a byte budget for the request
    line and headers, from the connection (or the first byte of a later request) until uvicorn has parsed them
    (it then starts a new request cycle: ``self.cycle`` changes)."""

    kf_limits: Limits = Limits()
    cycle: Any
    _kf_timer: int | None = None  # the key of the header deadline (in the loop's Deadlines)
    _kf_deadlines: Deadlines | None = None
    _kf_cycle: Any = None
    _kf_bytes: int = 0
    _kf_tail: bytes = b""  # the last bytes seen, to find a blank line split between two reads
    _kf_transport: Any = None  # asyncio's or uvloop's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._kf_transport = transport
        self._kf_arm()

    def data_received(self, data: bytes) -> None:
        if self._kf_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._kf_arm()  # the first bytes of the next request on a kept-alive connection
        if self._kf_timer is not None and self._kf_count(data) > self.kf_limits.max_header_bytes:
            self._kf_refuse(headers_too_large(self.kf_limits.max_header_bytes))
            return  # never parsed
        super().data_received(data)
        if self._kf_timer is not None and self.cycle is not self._kf_cycle:
            self._kf_disarm()  # the headers are complete

    def _kf_count(self, data: bytes) -> int:
        """Bytes of request line and headers so far: ``data`` up to the blank line that ends the headers."""
        window = self._kf_tail + data
        ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := window.find(mark)) >= 0]
        self._kf_bytes += min(ends) - len(self._kf_tail) if ends else len(data)
        self._kf_tail = window[-3:]
        return self._kf_bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self._kf_disarm()
        super().connection_lost(exc)

    def _kf_arm(self) -> None:
        self._kf_cycle = self.cycle
        self._kf_bytes = 0
        self._kf_tail = b""
        if self._kf_deadlines is None:
            self._kf_deadlines = deadlines(asyncio.get_running_loop(), self.kf_limits)
        self._kf_timer = self._kf_deadlines.add(self.kf_limits.header_timeout_s, self._kf_expired)

    def _kf_disarm(self) -> None:
        if self._kf_timer is not None and self._kf_deadlines is not None:
            self._kf_deadlines.discard(self._kf_timer)
            self._kf_timer = None

    def _kf_expired(self) -> None:
        self._kf_timer = None
        if self.cycle is self._kf_cycle:  # still waiting for the headers (not a pipelined request being served)
            self._kf_refuse(header_timeout(self.kf_limits.header_timeout_s))

    def _kf_refuse(self, answer: tuple[int, dict[str, dict[str, str]]]) -> None:
        self._kf_disarm()
        transport = self._kf_transport  # uvloop's transports are not asyncio.WriteTransport subclasses
        if transport is not None and not transport.is_closing():
            transport.write(raw_response(answer))
            transport.close()


def http_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """Uvicorn's HTTP protocol class (httptools when installed, else h11, as uvicorn's ``auto``) with the header
    deadline and size limit of ``limits``; pass it as ``uvicorn.Config(http=...)``."""
    base: type[asyncio.Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is installed with uvicorn[standard]
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    return type("KfabricHTTPProtocol", (_HeaderLimits, base), {"kf_limits": limits})


def uvicorn_options(limits: Limits) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.Config``/``uvicorn.run`` that apply ``limits``."""
    return {"http": http_protocol(limits), "h11_max_incomplete_event_size": limits.max_header_bytes}
