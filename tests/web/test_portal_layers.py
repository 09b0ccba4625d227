"""The portal is thin: no module of ``kfabric.web`` imports the store's tables or builds SQL (the pages call
``kfabric.service`` functions that return plain records); the check itself is shown to catch such an import."""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

import pytest

WEB = Path(str(resources.files("kfabric.web")))
#: what a page may not import: the store, and the SQL toolkit that would query it directly
FORBIDDEN = ("kfabric.store", "sqlalchemy")


def forbidden_imports(source: str) -> list[str]:
    """The modules ``source`` imports (at any depth of the file) that fall under :data:`FORBIDDEN`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found += [n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    return sorted(set(found))


def test_no_portal_module_reaches_the_store() -> None:
    modules = sorted(WEB.rglob("*.py"))
    assert len(modules) > 10  # the pages are there to check
    bad = {str(p.relative_to(WEB)): forbidden_imports(p.read_text()) for p in modules}
    assert {p: names for p, names in bad.items() if names} == {}


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from kfabric.store import tables as t\n", ["kfabric.store", "kfabric.store.tables"]),
        ("import kfabric.store.tables\n", ["kfabric.store.tables"]),
        ("def f():\n    from sqlalchemy import select\n", ["sqlalchemy", "sqlalchemy.select"]),
        ("from kfabric.service import portal_jobs\nimport kfabric.storefront\n", []),
    ],
    ids=["from-import", "plain-import", "inside-a-function", "look-alikes-pass"],
)
def test_the_check_catches_a_planted_import(source: str, caught: list[str]) -> None:
    assert forbidden_imports(source) == caught
