"""The submit form. A posted form becomes the API's request body (``JobCreate``) and goes the API's way:
``jobs.prepare`` (the same checks and feasibility) then ``jobs.enqueue``, so a form gets the API's messages."""

from __future__ import annotations

import secrets
from typing import Any

import pydantic
from fastapi import APIRouter, Response

from kfabric.api.schemas import JobCreate
from kfabric.model.errors import KfabricError, ValidationError
from kfabric.model.job import MinTopology, PriorityClass
from kfabric.model.sovereignty import Classification
from kfabric.service import feasibility, jobs, portal_jobs
from kfabric.service.actors import Role
from kfabric.web import nav
from kfabric.web.view import Form, PageRoute, Posted, View, Viewer, describe

router = APIRouter(route_class=PageRoute, include_in_schema=False)
nav.add("nav.submit", "/submit", frozenset({Role.OPERATOR, Role.ORG_ADMIN, Role.MEMBER}), order=20)

INTEGERS = ("gpus", "gpu_milli", "nodes", "gpus_per_node", "cpu_milli", "memory_mib")
NUMBERS = ("time_limit_s", "runtime_estimate_s", "checkpoint_interval_s", "restart_cost_s")
TEXTS = ("project", "name", "min_topology", "priority", "classification", "command", "image", "workdir")
DEFAULTS = {"gpus": "1", "time_limit_s": "3600", "priority": "normal", "min_topology": "any",
            "classification": "public", "preemptible": "on"}  # fmt: skip


def _number(raw: str, kind: type[int] | type[float]) -> Any:
    """The form's text as a number; text that is no number stays text, so the schema names the field (as the
    API does for a JSON string where a number belongs)."""
    try:
        return kind(raw)
    except ValueError:
        return raw


def body_of(form: Form) -> dict[str, Any]:
    """The API request body that the form's fields stand for (empty fields: the API's defaults)."""
    body: dict[str, Any] = {}
    for name in TEXTS:
        if form.get(name).strip() != "":
            body[name] = form.get(name).strip() if name != "command" else form.get(name)
    for name in INTEGERS:
        if form.get(name).strip():
            body[name] = _number(form.get(name).strip(), int)
    for name in NUMBERS:
        if form.get(name).strip():
            body[name] = _number(form.get(name).strip(), float)
    models = [m.strip() for m in form.get("gpu_models").replace(",", " ").split() if m.strip()]
    if models:
        body["gpu_models"] = models
    body["preemptible"] = form.get("preemptible") == "on"
    env: dict[str, str] = {}
    for n, line in enumerate(form.get("env").splitlines(), 1):
        if not line.strip():
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            raise ValidationError(f"env (line {n})", f"{line.strip()!r} is not KEY=VALUE", "write one KEY=VALUE a line")
        env[key.strip()] = value
    if env:
        body["env"] = env
    if form.get("client_key"):
        body["client_key"] = form.get("client_key")
    return body


def schema_error(exc: pydantic.ValidationError) -> ValidationError:
    """The schema's complaint as the API words it (api/errors.py: ``field: message; ...``)."""
    errors = exc.errors()
    where = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else "form"
    message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:5])
    return ValidationError(where, message, "see the request schema at /openapi.json")


def _form(view: View, values: dict[str, str], problem: tuple[int, str, str, str] | None = None) -> Response:
    projects = portal_jobs.visible_projects(view.rt.sessions, view.actor)
    models = sorted({p.gpu_model for p in view.rt.scenario.fleet.pools if p.gpus > 0})
    return view.render(
        "submit.html",
        status=problem[0] if problem else 200,
        values={**values, "client_key": values.get("client_key") or secrets.token_urlsafe(16)},
        projects=projects,
        models=models,
        priorities=[p.name.lower() for p in PriorityClass],
        topologies=[m.name.lower() for m in MinTopology],
        classifications=[c.label for c in Classification],
        problem=problem,
    )


@router.get("/submit")
def submit_page(view: Viewer, project: str = "") -> Response:
    return _form(view, {**DEFAULTS, "project": project[:200]})


@router.post("/submit")
def submit(view: Viewer, form: Posted) -> Response:
    values = {k: form.get(k) for k in form.values if k != "csrf"}
    values.setdefault("preemptible", "")
    try:
        raw = body_of(form)
        try:
            body = JobCreate.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise schema_error(exc) from None
        admission = feasibility.for_service(view.rt.scenario.fleet, view.rt.sessions)
        sub = jobs.prepare(view.actor, body.project, body.spec(), view.now, body.client_key, admission)
        row, _created = jobs.enqueue(view.rt.sessions, sub).result()
    except KfabricError as exc:
        return _form(view, values, describe(view, exc, in_form=True))
    return view.redirect(f"/jobs/{row.id}")
