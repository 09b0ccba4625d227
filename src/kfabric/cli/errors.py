"""Errors the command line reports as ``error: ...`` with exit code 2."""

from __future__ import annotations

from kfabric.model.errors import KfabricError


class UsageError(KfabricError):
    """A command-line argument is wrong; the message says which and how to fix it."""
