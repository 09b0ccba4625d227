"""Attack tests (issue 15): the API fixtures of tests/api (``api``: a runtime and TestClient on the ``db_url``
store; ``world``: users of every role and two tenants' objects) are available here too."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "api"))  # `from api_world import ...`

from api_world import Api, World, build_world, open_api


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with open_api(db_url) as a:
        yield a


@pytest.fixture
def world(api: Api) -> World:
    return build_world(api)
