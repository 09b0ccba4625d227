"""Fixtures of the portal's tests: the browser tests' real server and Chromium (``browsing.py``), and the
TestClient tests' runtime on a settable clock (``tests/api/api_world.py``). Screenshots go to
``$KFABRIC_WEB_ARTIFACTS/<test>`` when set, else to the test's ``tmp_path`` (never into the repository)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "api"))  # api_world: a runtime + TestClient on a store

from browsing import Browsing, Server, open_page, require_browser, serve_lab


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve_lab() as s:
        yield s


@pytest.fixture(scope="module")
def users(server: Server) -> dict[str, str]:
    """Tokens: a member and an org-admin of each lab tenant."""
    with server.client() as op:
        return {
            "snu": op.create_user("web-snu", "member", "snu-vision", ["vision-lab"])["token"],
            "snu-admin": op.create_user("web-snu-admin", "org-admin", "snu-vision")["token"],
            "tiny": op.create_user("web-tiny", "member", "tinyml", ["tinyml-llm"])["token"],
            "tiny-admin": op.create_user("web-tiny-admin", "org-admin", "tinyml")["token"],
        }


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = require_browser()
    from browsing import LAUNCH_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    root = os.environ.get("KFABRIC_WEB_ARTIFACTS")
    where = Path(root) / request.node.name if root else tmp_path / "screenshots"
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def web(browser: Any, server: Server, artifacts: Path) -> Iterator[Browsing]:
    """A fresh browser context on a laptop-sized screen."""
    yield from open_page(browser, server, artifacts, viewport={"width": 1366, "height": 900})
