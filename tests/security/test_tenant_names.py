"""Names are one namespace across the fleet (issue 15, hole 10b): an org-admin's new project or user is named
``NAME@ORG``, so a conflict can only be with its own organization's names and never reveals another tenant's."""

from __future__ import annotations

import pytest
from api_world import World


@pytest.mark.parametrize("kind", ["projects", "users"])
def test_a_tenant_cannot_probe_another_tenant_s_names(world: World, kind: str) -> None:
    api = world.api
    theirs = world.token("org-admin", "tinyml")
    mine = world.token("org-admin", "snu-vision")
    body = {"name": "secret-model", "organization": "tinyml"}
    if kind == "users":
        body |= {"role": "member", "projects": []}
    first = api.post(f"/v1/{kind}", theirs, body)
    assert first.status_code == 201, first.text
    assert first.json()["name"] == "secret-model@tinyml"
    # the same short name in my organization is another object: no conflict, nothing learned
    again = api.post(f"/v1/{kind}", mine, body | {"organization": "snu-vision"})
    assert again.status_code == 201, again.text
    assert again.json()["name"] == "secret-model@snu-vision"
    # naming the other tenant's qualified name is refused without saying whether it exists
    probe = api.post(f"/v1/{kind}", mine, body | {"name": "secret-model@tinyml", "organization": "snu-vision"})
    assert probe.status_code == 422, probe.text
    assert "exists" not in probe.text
    # a conflict inside my own organization is still a plain 409
    dup = api.post(f"/v1/{kind}", mine, body | {"organization": "snu-vision"})
    assert dup.status_code == 409


def test_operators_keep_plain_names_but_not_other_organizations_suffixes(world: World) -> None:
    api = world.api
    ok = api.post("/v1/projects", api.operator, {"name": "national-llm", "organization": "snu-vision"})
    assert (ok.status_code, ok.json()["name"]) == (201, "national-llm")
    bad = api.post("/v1/projects", api.operator, {"name": "x@tinyml", "organization": "snu-vision"})
    assert bad.status_code == 422 and "x@snu-vision" in bad.json()["error"]["fix"]


def test_a_member_created_with_a_short_project_name_joins_the_qualified_project(world: World) -> None:
    api = world.api
    admin = world.token("org-admin", "snu-vision")
    assert api.post("/v1/projects", admin, {"name": "agents", "organization": "snu-vision"}).status_code == 201
    r = api.post("/v1/users", admin, {"name": "kim", "role": "member", "organization": "snu-vision",
                                      "projects": ["agents"]})  # fmt: skip
    assert r.status_code == 201, r.text
    who = api.get("/v1/whoami", r.json()["token"]).json()
    assert who["name"] == "kim@snu-vision" and who["projects"] == ["agents@snu-vision"]
