"""Load a scheduling policy by preset name or from a YAML file (optionally ``base: PRESET`` plus overrides)."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from kfabric.model.errors import ValidationError
from kfabric.model.suggest import did_you_mean
from kfabric.scenarios.errors import ScenarioError
from kfabric.scenarios.yamldoc import read_doc
from kfabric.sched.policy import Policy
from kfabric.sched.presets import PRESETS


def load_policy(name_or_path: str) -> Policy:
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        found = "neither" + did_you_mean(name_or_path, PRESETS)
        raise ScenarioError(name_or_path, "", None, f"a policy preset ({', '.join(PRESETS)}) or a YAML file", found)
    doc = read_doc(path)
    if not isinstance(doc.data, dict):
        raise doc.error("", "a mapping of policy settings", doc.data)
    data: dict[str, Any] = dict(doc.data)
    base_name = data.pop("base", "kfabric")
    if base_name not in PRESETS:
        found = f"{base_name}{did_you_mean(str(base_name), PRESETS)}"
        raise doc.error("base", "a preset name: " + ", ".join(PRESETS), found)
    try:
        overrides = Policy.from_mapping(data, where="policy")
    except ValidationError as exc:
        key = exc.where.removeprefix("policy.").split(".")[0]
        raise ScenarioError(doc.file, key, doc.line(key), exc.fix or "a valid value", exc.problem) from None
    base = PRESETS[base_name]
    changed = {f.name: getattr(overrides, f.name) for f in fields(Policy) if f.name in data}
    if "name" not in data:
        changed["name"] = path.stem
    return replace(base, **changed)
