"""The fast path of ``POST /v1/jobs``, the one request a busy service answers most.

FastAPI's generic machinery (route matching over every route, dependency solving, request and response model
handling) costs more CPU than the submission itself once submissions are group-committed. This ASGI middleware
answers a well-formed submission directly: a JSON body that :class:`JobCreate` accepts, from a bearer token that
is in the authentication cache, and that :func:`kfabric.service.jobs.prepare` accepts. The answer is built by
the same code as the FastAPI route's (:func:`kfabric.api.routers.jobs.submission_answer`).

Anything else (no or unknown token, another content type, invalid JSON or fields, a refused spec) is handed,
with its body replayed, to the FastAPI application unchanged: errors are exactly the route's, and the route
stays in the OpenAPI document. Once the batch is queued the fast path answers domain errors (an unknown project,
a client-key conflict) with the application's error body; other exceptions go to its 500 handler.

Size, deadline and JSON nesting depth of the body are enforced before this middleware, by
:class:`kfabric.api.limits.RequestLimits` (the outermost one): what reaches the parser here is at most
``--max-body`` bytes nested at most 64 levels; a ``RecursionError`` (no limits in front) still gets a 422.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kfabric.api.deps import cached_actor
from kfabric.api.errors import domain_response
from kfabric.api.limits import Limits, send_error, too_deep
from kfabric.api.routers.jobs import admission, submission_answer
from kfabric.api.schemas import JobCreate
from kfabric.model.errors import KfabricError
from kfabric.service import jobs
from kfabric.service.runtime import Runtime

PATH = "/v1/jobs"
#: larger bodies take the FastAPI route (a job's command and environment are at most a few hundred KiB)
MAX_FAST_BODY = 1 << 20


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _is_json(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: ``application/json`` or ``application/*+json`` (parameters allowed)."""
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class FastSubmit:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.rt = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        answered = False
        if body is not None:
            answered = await self._try(scope, body, send)
        if not answered:
            await self.app(scope, _replay(messages, receive), send)

    async def _try(self, scope: Scope, body: bytes, send: Send) -> bool:
        """Answer the submission and return True, or return False (nothing sent) for the FastAPI route."""
        actor = cached_actor(_header(scope, b"authorization"))
        if actor is None or not body or not _is_json(_header(scope, b"content-type")):
            return False
        try:
            data: Any = json.loads(body)
            request = JobCreate.model_validate(data)  # python mode, as FastAPI validates a JSON body
            sub = jobs.prepare(
                actor,
                request.project,
                request.spec(),
                self.rt.clock(),
                request.client_key,
                admission(self.rt),
                request.script,
            )
        except (ValueError, pydantic.ValidationError, KfabricError):
            return False  # the route answers it, with its own error
        except RecursionError:  # nested too deep for the parser; RequestLimits refuses such bodies before us
            await send_error(send, too_deep(Limits().max_json_depth), close=False)
            return True
        try:
            response = await submission_answer(self.rt, actor, request.project, sub)
        except KfabricError as exc:
            response = domain_response(exc)
        await response(scope, _no_receive, send)
        return True


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message of the request body, and the body (None if it is too large for the fast path or the client
    went away: the FastAPI route then sees the same messages)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > MAX_FAST_BODY:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
