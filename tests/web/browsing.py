"""Browser-test helpers: a real ``kfabric serve`` (lab fleet, sim backend) and Debian's Chromium driven by
Playwright (``executable_path``: the system browser; no browser is ever downloaded).

Without Chromium or the ``playwright`` package the browser tests are skipped, saying what to install, unless
``KFABRIC_REQUIRE_BROWSER=1`` (CI) turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from kfabric.client import Client
from serve_process import kfabric_serve

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
MISSING = "Chromium not installed: apt-get install -y chromium (and pip install playwright; never `playwright install`)"
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium_path() -> str | None:
    for candidate in (os.environ.get("KFABRIC_CHROMIUM", ""), *CHROMIUM_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_browser() -> str:
    """The system Chromium's path; skips (fails with KFABRIC_REQUIRE_BROWSER=1) when it or Playwright is missing."""
    path = chromium_path()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("KFABRIC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{MISSING} (required: KFABRIC_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(MISSING)
    return path


@dataclass
class Server:
    url: str
    state: Path
    proc: subprocess.Popen[bytes]

    @property
    def operator_token(self) -> str:
        return (self.state / "operator.token").read_text().strip()

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.operator_token)


@contextlib.contextmanager
def serve_lab() -> Iterator[Server]:
    """``kfabric serve --fleet lab`` on a free port (sim backend on the wall clock, a cycle every 0.2 s); stopped
    (its process group, by pid) and its folder removed at the end."""
    top = Path(tempfile.mkdtemp(prefix="kfabric-web-"))
    state = top / "state"
    args = ("--fleet", "lab", "--tick", "0.2", "--state-dir", str(state), "--log-level", "warning",
            "--account-interval", "5")  # fmt: skip
    try:
        with kfabric_serve(top, *args) as (url, proc):
            yield Server(url, state, proc)
    finally:
        shutil.rmtree(top, ignore_errors=True)


@dataclass
class Requests:
    """Every request a page made (URL), to check that none left the server. ``blocked``: those the browser refused
    to send because the page's Content-Security-Policy forbids their host (Playwright reports them as failed with
    ``"csp"``; they never reach the network)."""

    urls: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def foreign(self, server_url: str) -> list[str]:
        ours = urlsplit(server_url).netloc
        return [
            u for u in self.urls
            if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != ours and u not in self.blocked
        ]  # fmt: skip


@dataclass
class Browsing:
    page: Any
    requests: Requests
    shots: Path
    server: Server

    def shot(self, name: str, full_page: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def sign_in(self, token: str) -> None:
        self.page.goto(f"{self.server.url}/signin")
        self.page.get_by_label("API token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(f"{self.server.url}/")


def open_page(
    browser: Any, server: Server, artifacts: Path, locale: str = "en-US", **context: Any
) -> Iterator[Browsing]:
    """A fresh browser context (no cookies) in Seoul's time zone, recording every request its pages make."""
    ctx = browser.new_context(locale=locale, timezone_id="Asia/Seoul", **context)
    page = ctx.new_page()
    page.set_default_timeout(20_000)
    requests = Requests()
    page.on("request", lambda r: requests.urls.append(r.url))
    page.on("requestfailed", lambda r: requests.blocked.append(r.url) if r.failure == "csp" else None)
    try:
        yield Browsing(page, requests, artifacts, server)
    finally:
        ctx.close()
