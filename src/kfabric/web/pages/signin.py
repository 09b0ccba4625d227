"""Sign-in with an API token, sign-out, the home page and the language and time-zone preferences."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import APIRouter, Response

from kfabric.model.errors import Unauthenticated
from kfabric.service.actors import Role
from kfabric.web import i18n, nav, sessions, timefmt
from kfabric.web.throttle import SignInThrottle
from kfabric.web.view import (
    LANG_COOKIE,
    SESSION_COOKIE,
    TZ_COOKIE,
    PageRoute,
    Posted,
    Viewer,
    Visitor,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)
nav.add("nav.home", "/", frozenset(Role), order=0)


def safe_next(target: str) -> str:
    """Where to go after sign-in: a path of this server only (never another host: no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target and len(target) < 2000:
        return target
    return "/"


@router.get("/")
def home(view: Viewer) -> Response:
    return view.render("home.html", items=nav.for_actor(view.actor))


@router.get("/signin")
def signin_page(view: Visitor, next: str = "/") -> Response:
    if view.web is not None:
        return view.redirect(safe_next(next))
    return view.render("signin.html", next=safe_next(next), problem=None)


def _throttle(view: Visitor) -> SignInThrottle:
    """Failed sign-ins per client address (web/throttle.py), one table per application."""
    state = view.request.app.state
    if not hasattr(state, "signin_throttle"):
        state.signin_throttle = SignInThrottle()
    throttle: SignInThrottle = state.signin_throttle
    return throttle


@dataclass(frozen=True)
class _Problem:
    problem: str
    fix: str


@router.post("/signin")
def signin(view: Visitor, form: Posted) -> Response:
    token = form.get("token").strip()
    target = safe_next(form.get("next", "/"))
    address = view.request.client.host if view.request.client is not None else ""
    throttle = _throttle(view)
    wait_s = throttle.retry_after_s(address, view.now)
    if wait_s > 0:
        problem = _Problem(view.t("signin.throttled"), view.t("signin.throttled.fix", seconds=math.ceil(wait_s)))
        page = view.render("signin.html", status=429, next=target, problem=problem)
        page.headers["Retry-After"] = str(math.ceil(wait_s))
        return page
    try:
        session_id, _web = sessions.begin(view.rt.sessions, token, view.now, view.lang, "")
    except Unauthenticated as exc:
        throttle.failed(address, view.now)
        return view.render("signin.html", status=401, next=target, problem=exc)
    throttle.succeeded(address)
    view.cookies[SESSION_COOKIE] = session_id
    return view.redirect(target)


@router.post("/signout")
def signout(view: Viewer, form: Posted) -> Response:
    assert view.web is not None
    sessions.end(view.rt.sessions, view.web, view.now)
    view.web = None
    view.cookies[SESSION_COOKIE] = ""
    return view.redirect("/signin")


@router.get("/preferences")
def preferences_page(view: Viewer) -> Response:
    return view.render("preferences.html", zones=timefmt.zone_names())


@router.post("/preferences")
def preferences(view: Visitor, form: Posted) -> Response:
    """Language and time zone: kept in the session when signed in, and in cookies for the sign-in page."""
    lang = form.get("lang") if form.get("lang") in i18n.LANGUAGES else None
    tz = form.get("tz") if timefmt.zone(form.get("tz")) is not None else None
    if view.web is not None:
        sessions.set_preferences(view.rt.sessions, view.web, lang, tz)
    if lang:
        view.cookies[LANG_COOKIE] = lang
    if tz:
        view.cookies[TZ_COOKIE] = tz
    return view.redirect(safe_next(form.get("next", "/")))
