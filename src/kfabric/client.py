"""The Python client of the kfabric REST API: ``Client(url, token)``, one method per route.

Answers are the API's JSON as plain dicts and lists (the wire format is ``kfabric.api.schemas``). Every
failure raises :class:`ApiError`: an error answer carries the API's ``code``, ``message``, ``where`` and
``fix``; a server that cannot be reached is status 0. Submissions are idempotent: :meth:`Client.submit` sends
a client key (a fresh UUID unless given) and retries once, with the same key, after a connection error or a
5xx, so a retry never creates a second job.
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

import httpx

from kfabric.model.errors import KfabricError

DEFAULT_URL = "http://127.0.0.1:8470"
#: pause before the single retry of a submission
SUBMIT_RETRY_PAUSE_S = 0.5
_PAGE = 1000
#: jobs per request of :meth:`Client.jobs` (the route's largest page: fewer round trips for a long queue)
_JOB_PAGE = 10_000


class ApiError(KfabricError):
    """An error answer of the API (``status`` is the HTTP status), or status 0 when no answer came back. Its text
    is one line: ``where: message (fix: ...)``."""

    def __init__(self, status: int, code: str, message: str, where: str = "", fix: str = "") -> None:
        suffix = f" (fix: {fix})"
        if fix and message.endswith(suffix):  # some domain errors already carry their fix in the message
            message = message[: -len(suffix)]
        self.status, self.code, self.message, self.where, self.fix = status, code, message, where, fix
        # "project: project 'x' not found" says the object twice; keep the message's own naming then
        text = f"{where}: {message}" if where and not message.startswith(f"{where} ") else message
        super().__init__(text + (suffix if fix else ""))


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a long list is decoded: 20,000 jobs are ~1,000,000 new objects, and each
    allocation burst would run the collector over all that are live (a third of the decoding time, measured). The
    decoded answer holds no cycles; the collector is on again afterwards (if it was)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _unreachable(url: str, exc: Exception) -> ApiError:
    return ApiError(
        0,
        "unreachable",
        f"the kfabric server at {url} is not reachable ({type(exc).__name__}: {exc})",
        "",
        "start it with `kfabric serve`, or point KFABRIC_URL / --url at a running server",
    )


def _error_of(response: httpx.Response) -> ApiError:
    try:
        err = response.json()["error"]
        return ApiError(response.status_code, str(err["code"]), str(err["message"]), str(err["where"]), str(err["fix"]))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:300] or response.reason_phrase
        return ApiError(response.status_code, "http", f"HTTP {response.status_code}: {text}", str(response.url))


def _token_from_env() -> str | None:
    """``KFABRIC_TOKEN``, else the file named by ``KFABRIC_TOKEN_FILE``, else ``$KFABRIC_STATE_DIR/operator.token``
    (default ``./.kfabric/operator.token``) when that file exists."""
    token = os.environ.get("KFABRIC_TOKEN", "").strip()
    if token:
        return token
    named = os.environ.get("KFABRIC_TOKEN_FILE", "").strip()
    if named:
        try:
            return Path(named).read_text().strip()
        except OSError as exc:
            raise ApiError(
                0,
                "config",
                f"cannot read the token file {named!r} ({exc.strerror or exc})",
                "KFABRIC_TOKEN_FILE",
                "point it at a readable file holding one kf_... token, or set KFABRIC_TOKEN",
            ) from None
    default = Path(os.environ.get("KFABRIC_STATE_DIR", ".kfabric")) / "operator.token"
    if default.is_file():
        try:
            return default.read_text().strip() or None
        except OSError:
            return None
    return None


class Client:
    """A synchronous client of one kfabric server. Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ApiError(
                0,
                "config",
                f"server URL {url!r} has no http:// or https:// scheme",
                "KFABRIC_URL",
                f"e.g. {DEFAULT_URL}",
            )
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s, transport=transport)

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None, timeout_s: float = 30.0) -> Client:
        """A client for ``url``/``token`` when given, else ``KFABRIC_URL`` (default :data:`DEFAULT_URL`) and the
        token of ``KFABRIC_TOKEN``, ``KFABRIC_TOKEN_FILE`` or ``./.kfabric/operator.token``."""
        return cls(url or os.environ.get("KFABRIC_URL") or DEFAULT_URL, token or _token_from_env(), timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- transport ---------------------------------------------------------------------------------------

    def _send(
        self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=query)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    def _json(self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        response = self._send(method, path, body, params)
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "http", f"answer to {method} {path} is not JSON", path) from None

    def _paged(self, path: str, params: Mapping[str, Any], page: int = 0) -> list[dict[str, Any]]:
        """Every item of a list route that pages with ``after_id``/``limit`` (``page`` items a request)."""
        out: list[dict[str, Any]] = []
        after = 0
        size = page or _PAGE
        while True:
            got = cast(
                list[dict[str, Any]], self._json("GET", path, params={**params, "after_id": after, "limit": size})
            )
            out += got
            if len(got) < size:
                return out
            after = int(got[-1]["id"])

    # ---- fleet and tenancy -------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("GET", "/v1/whoami"))

    def fleet(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("GET", "/v1/fleet"))

    def fleet_live(self) -> dict[str, Any]:
        """Node states and GPUs free/allocated/out per pool, and the nodes out of service with why (``GET
        /v1/fleet/live``; operators, and providers for their owner's pools)."""
        return cast(dict[str, Any], self._json("GET", "/v1/fleet/live"))

    def organizations(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._json("GET", "/v1/organizations"))

    def create_organization(self, name: str, kind: str, region: str = "", flags: Iterable[str] = ()) -> dict[str, Any]:
        body = {"name": name, "kind": kind, "region": region, "flags": list(flags)}
        return cast(dict[str, Any], self._json("POST", "/v1/organizations", body))

    def projects(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._json("GET", "/v1/projects"))

    def create_project(self, name: str, organization: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("POST", "/v1/projects", {"name": name, "organization": organization}))

    def create_user(
        self,
        name: str,
        role: str,
        organization: str | None = None,
        projects: Iterable[str] = (),
        owner: str = "",
        posix_user: str = "",
    ) -> dict[str, Any]:
        """Create a user; the answer holds its API token, which the server never shows again. ``posix_user``: the
        POSIX account its jobs run as (without one its jobs are refused until :meth:`set_posix_user`)."""
        body = {"name": name, "role": role, "organization": organization, "projects": list(projects), "owner": owner}
        if posix_user:
            body["posix_user"] = posix_user
        return cast(dict[str, Any], self._json("POST", "/v1/users", body))

    def set_posix_user(self, name: str, posix_user: str) -> dict[str, Any]:
        """Map user ``name`` to the POSIX account its jobs run as ("" removes the mapping)."""
        path = f"/v1/users/{quote(name, safe='')}"
        return cast(dict[str, Any], self._json("PATCH", path, {"posix_user": posix_user}))

    # ---- API tokens --------------------------------------------------------------------------------------

    def create_token(
        self,
        name: str = "",
        user: str | None = None,
        expires_in_s: float | None = None,
        expires_at_s: float | None = None,
    ) -> dict[str, Any]:
        """A new token for the caller (or ``user``); the answer's ``token`` is the secret, never shown again."""
        body = {"name": name, "user": user, "expires_in_s": expires_in_s, "expires_at_s": expires_at_s}
        return cast(dict[str, Any], self._json("POST", "/v1/tokens", body))

    def tokens(self, user: str | None = None, include_inactive: bool = False) -> list[dict[str, Any]]:
        """The caller's (or ``user``'s) tokens without their secrets; revoked and expired ones too when asked."""
        return self._paged("/v1/tokens", {"user": user, "all": include_inactive or None})

    def revoke_token(self, ref: str | int) -> dict[str, Any]:
        """Revoke a token by id or prefix (``kf_`` and 7 characters)."""
        return cast(dict[str, Any], self._json("POST", f"/v1/tokens/{quote(str(ref), safe='')}/revoke"))

    def rotate_token(self, ref: str | int) -> dict[str, Any]:
        """Replace a token by a new secret with the same name and lifetime; the old one is revoked."""
        return cast(dict[str, Any], self._json("POST", f"/v1/tokens/{quote(str(ref), safe='')}/rotate"))

    # ---- programs, applications, grants ------------------------------------------------------------------

    def programs(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._json("GET", "/v1/programs"))

    def program(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("GET", f"/v1/programs/{quote(name, safe='')}"))

    def create_program(
        self,
        name: str,
        description: str = "",
        owner: str = "",
        weight: float = 1.0,
        rules: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {"name": name, "description": description, "owner": owner, "weight": weight, "rules": dict(rules or {})}
        return cast(dict[str, Any], self._json("POST", "/v1/programs", body))

    def apply(
        self, program: str, project: str, gpu_model_class: str, gpus: int, months: int, justification: str = ""
    ) -> dict[str, Any]:
        body = {"program": program, "project": project, "gpu_model_class": gpu_model_class, "gpus": gpus,
                "months": months, "justification": justification}  # fmt: skip
        return cast(dict[str, Any], self._json("POST", "/v1/applications", body))

    def applications(self, status: str | None = None) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._json("GET", "/v1/applications", params={"status": status}))

    def application(self, application_id: int) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("GET", f"/v1/applications/{application_id}"))

    def review(self, application_id: int, scores: Mapping[str, float], comment: str = "") -> dict[str, Any]:
        body = {"scores": dict(scores), "comment": comment}
        return cast(dict[str, Any], self._json("POST", f"/v1/applications/{application_id}/reviews", body))

    def decide(
        self,
        application_id: int,
        approve: bool,
        note: str = "",
        start_s: float | None = None,
        reserved: bool = True,
        credit_su_hours: float = 0.0,
    ) -> dict[str, Any]:
        body = {"approve": approve, "note": note, "start_s": start_s, "reserved": reserved,
                "credit_su_hours": credit_su_hours}  # fmt: skip
        return cast(dict[str, Any], self._json("POST", f"/v1/applications/{application_id}/decision", body))

    def grants(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._json("GET", "/v1/grants"))

    def create_grant(
        self,
        name: str,
        program: str,
        project: str,
        start_s: float,
        end_s: float,
        reserved_model: str | None = None,
        reserved_gpus: int = 0,
        credit_su_hours: float = 0.0,
        weight: float | None = None,
    ) -> dict[str, Any]:
        body = {"name": name, "program": program, "project": project, "start_s": start_s, "end_s": end_s,
                "reserved_model": reserved_model, "reserved_gpus": reserved_gpus, "credit_su_hours": credit_su_hours,
                "weight": weight}  # fmt: skip
        return cast(dict[str, Any], self._json("POST", "/v1/grants", body))

    def top_up(self, grant: str, su_hours: float, note: str) -> dict[str, Any]:
        """Add ``su_hours`` of credit to grant ``grant`` (its name; operators), saying why in ``note``."""
        body = {"su_hours": su_hours, "note": note}
        return cast(dict[str, Any], self._json("POST", f"/v1/grants/{quote(grant, safe='')}/topup", body))

    # ---- jobs --------------------------------------------------------------------------------------------

    def submit(self, project: str, client_key: str | None = None, **fields: Any) -> dict[str, Any]:
        """Submit a job (``fields`` as in ``JobCreate``: ``time_limit_s``, ``gpus``, ``command``...). Retries once
        with the same client key after a connection error or a 5xx; the server returns the first job then."""
        body = {"project": project, **fields, "client_key": client_key or str(uuid.uuid4())}
        try:
            return cast(dict[str, Any], self._json("POST", "/v1/jobs", body))
        except ApiError as exc:
            if exc.status != 0 and exc.status < 500:
                raise
        time.sleep(SUBMIT_RETRY_PAUSE_S)
        return cast(dict[str, Any], self._json("POST", "/v1/jobs", body))

    def jobs(
        self,
        state: str | Iterable[str] | None = None,
        project: str | None = None,
        user: Iterable[str] | None = None,
        pool: str | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs the caller may see, oldest first, optionally only in ``state`` (one or several), ``project``, of
        ``user`` (names) and placed on ``pool``; filtered by the server, in pages of 10,000."""
        states = [state] if isinstance(state, str) else list(state) if state is not None else None
        users = list(user) if user is not None else None
        params = {"state": states or None, "project": project, "user": users or None, "pool": pool}
        with _collector_paused():
            return self._paged("/v1/jobs", params, page=_JOB_PAGE)

    def job(self, job_id: int | str) -> dict[str, Any]:
        """A job by id, or a task of an array as ``"12_3"``."""
        return cast(dict[str, Any], self._json("GET", f"/v1/jobs/{quote(str(job_id), safe='')}"))

    def job_events(self, job_id: int | str) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._json("GET", f"/v1/jobs/{quote(str(job_id), safe='')}/events"))

    def job_log(
        self,
        job_id: int | str,
        stream: str = "out",
        offset: int = 0,
        max_bytes: int | None = None,
        tail_lines: int | None = None,
    ) -> dict[str, Any]:
        """A part of the job's output (``stream="err"``: its standard error): ``data`` from ``offset``, or its last
        ``tail_lines`` lines; ``next_offset`` is where the next part starts (``GET /v1/jobs/{id}/log``)."""
        params = {"stream": stream, "offset": offset, "max_bytes": max_bytes, "tail_lines": tail_lines}
        return cast(dict[str, Any], self._json("GET", f"/v1/jobs/{job_id}/log", params=params))

    def cancel(self, job_id: int | str) -> dict[str, Any]:
        """Cancel a job; ``"12"`` cancels every task of array 12, ``"12_3"`` one task."""
        return cast(dict[str, Any], self._json("POST", f"/v1/jobs/{quote(str(job_id), safe='')}/cancel"))

    def hold(self, job_id: int | str) -> dict[str, Any]:
        """Hold a pending job (or every pending task of an array); the answer counts what changed."""
        return cast(dict[str, Any], self._json("POST", f"/v1/jobs/{quote(str(job_id), safe='')}/hold"))

    def release(self, job_id: int | str) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("POST", f"/v1/jobs/{quote(str(job_id), safe='')}/release"))

    def requeue(self, job_id: int | str) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("POST", f"/v1/jobs/{quote(str(job_id), safe='')}/requeue"))

    def update_job(self, job_id: int | str, **changes: Any) -> dict[str, Any]:
        """Change a pending job: ``time_limit_s``, ``priority``, ``gpus``, ``name``, ``begin_s`` (0 clears),
        ``dependency`` ("" clears), ``kill_on_invalid_dep``."""
        return cast(dict[str, Any], self._json("PATCH", f"/v1/jobs/{quote(str(job_id), safe='')}", changes))

    def job_script(self, job_id: int) -> dict[str, Any]:
        """The batch script a job runs, as submitted (``script`` None for a --wrap job)."""
        return cast(dict[str, Any], self._json("GET", f"/v1/jobs/{job_id}/script"))

    # ---- accounting and audit ----------------------------------------------------------------------------

    def usage(
        self, by: str = "project", since_s: float | None = None, until_s: float | None = None, csv: bool = False
    ) -> list[dict[str, Any]] | str:
        """Usage rows grouped ``by`` over ``[since_s, until_s)``; with ``csv`` the CSV text instead."""
        params = {"by": by, "since_s": since_s, "until_s": until_s, "format": "csv" if csv else "json"}
        if csv:
            return self._send("GET", "/v1/usage", params=params).text
        return cast(list[dict[str, Any]], self._json("GET", "/v1/usage", params=params))

    def acct(
        self,
        start_s: float | None = None,
        end_s: float | None = None,
        user: Iterable[str] = (),
        project: str | None = None,
        state: Iterable[str] = (),
    ) -> list[dict[str, Any]]:
        """Per-job accounting (like sacct) of the jobs eligible or running in ``[start_s, end_s)`` (``/v1/acct``)."""
        params = {"start_s": start_s, "end_s": end_s, "user": list(user) or None, "project": project,
                  "state": list(state) or None}  # fmt: skip
        return self._paged("/v1/acct", params, page=10_000)

    def audit(self, job: int | None = None, action: str | None = None) -> list[dict[str, Any]]:
        """Every audit entry the caller may read, oldest first (only those about ``job``, or of ``action``)."""
        params: dict[str, Any] = {}
        if job is not None:
            params["job"] = job
        if action is not None:
            params["action"] = action
        return self._paged("/v1/audit", params)

    def audit_verify(self, against: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Recompute the keyed hash chain (operators), and with ``against`` (an exported head) check that the log
        still holds it; a broken chain is an :class:`ApiError` with status 409."""
        params = {"against_entries": against["entries"], "against_hash": against["hash"]} if against else None
        return cast(dict[str, Any], self._json("GET", "/v1/audit/verify", params=params))

    def audit_head(self) -> dict[str, Any]:
        """The chain head to keep outside the store (operators)."""
        return cast(dict[str, Any], self._json("GET", "/v1/audit/head"))

    def webhook_secret(self, project: str, rotate: bool = False) -> dict[str, Any]:
        """The secret that signs ``project``'s job webhooks (``rotate``: replaced first); operators and the admins
        of its organization (audited)."""
        path = f"/v1/projects/{quote(project, safe='')}/webhook-secret"
        return cast(dict[str, Any], self._json("POST", path + "/rotate") if rotate else self._json("GET", path))

    # ---- operations: several servers, one leader -------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The leader, the standbys with their heartbeats, the controller lease (epoch, expiry) and the last cycle
        (``GET /v1/status``; host, pid and URL of each server only for operators and providers)."""
        return cast(dict[str, Any], self._json("GET", "/v1/status"))

    # ---- operations: fleet changes, node drains, the live policy (operators) ------------------------------------
    def fleet_apply(self, document: str, running: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Compare a desired fleet (scenario YAML text) with the stored one and, unless ``dry_run``, apply it at the
        next cycle; ``running``: ``finish`` or ``requeue`` the work on nodes that leave. The answer holds the
        difference and what happens to the work."""
        body = {"document": document, "running": running, "dry_run": dry_run}
        return cast(dict[str, Any], self._json("POST", "/v1/fleet/apply", body))

    def nodes(self) -> list[dict[str, Any]]:
        """Nodes out of service, with why, who and the jobs still on them."""
        return cast(list[dict[str, Any]], self._json("GET", "/v1/nodes"))

    def drain_node(self, node: str, reason: str, requeue: bool = False) -> dict[str, Any]:
        body = {"reason": reason, "requeue": requeue}
        return cast(dict[str, Any], self._json("POST", f"/v1/nodes/{quote(node, safe='')}/drain", body))

    def resume_node(self, node: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("POST", f"/v1/nodes/{quote(node, safe='')}/resume"))

    def policy_apply(self, document: str, name: str = "policy") -> dict[str, Any]:
        """Make a policy document (or a preset's name) the live policy at the next cycle."""
        return cast(dict[str, Any], self._json("POST", "/v1/policy", {"document": document, "name": name}))

    def policy(self) -> dict[str, Any]:
        """The policy the controller schedules with now, and the stored one."""
        return cast(dict[str, Any], self._json("GET", "/v1/policy"))
