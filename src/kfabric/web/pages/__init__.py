"""The portal's pages, one module each. To add a page: write ``pages/NAME.py`` with a ``router`` (made with
``route_class=PageRoute``) and its ``nav.add(...)`` entries, its templates under ``web/templates``, its strings in
``web/i18n.py`` (both languages), and list its router here. Routers listed first win where paths overlap."""

from __future__ import annotations

from fastapi import APIRouter

from kfabric.web.pages import applications, jobs, operations, programs_admin, review, signin, submit, usage

ROUTERS: tuple[APIRouter, ...] = (
    signin.router,
    submit.router,
    jobs.router,
    usage.router,
    applications.router,
    review.router,
    programs_admin.router,
    operations.router,
)
