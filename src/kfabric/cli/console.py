"""Where the command line prints tables: the terminal's width, or 160 columns when piped (CI logs, files)."""

from __future__ import annotations

import sys

from rich.console import Console


def stdout_console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160)
