"""The GPU speed table: every catalog model has a speed with its source, the docs agree, Gavel-derived values
follow from the trace file, and bad speeds are refused with a clear error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kfabric.model.errors import ValidationError
from kfabric.model.gpu import REFERENCE_MODEL, GpuModel
from kfabric.scenarios.errors import ScenarioError
from kfabric.scenarios.loader import load_gpu_catalog, load_scenario
from kfabric.sim.speed import geometric_mean_ratio
from kfabric.traces.philly import DEFAULT_THROUGHPUTS, load_throughputs

CATALOG = load_gpu_catalog()
DOC = Path(__file__).resolve().parents[2] / "docs" / "gpu-speeds.md"


def doc_rows() -> dict[str, tuple[float, str]]:
    """``| model | speed | su_weight | work/SU | kind | source |`` rows of docs/gpu-speeds.md."""
    rows: dict[str, tuple[float, str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| ([\w-]+) \| ([\d.]+) \| [\d.]+ \| [\d.]+ \| (\w+) \|", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), m.group(3))
    return rows


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_catalog_model_has_a_speed_and_its_source(name: str) -> None:
    model = CATALOG[name]
    assert model.speed is not None and model.speed > 0
    assert len(model.speed_source) > 20, "say which document and what was compared"
    speed, kind = doc_rows()[name]  # the docs table lists it with the same value
    assert speed == model.speed
    assert kind in ("reference", "measured", "derived", "estimate")
    if kind == "estimate":
        assert any(w in model.speed_source.lower() for w in ("estimate", "placeholder", "as v100"))


def test_the_reference_model_is_the_unit() -> None:
    assert CATALOG[REFERENCE_MODEL].speed == 1.0 and CATALOG[REFERENCE_MODEL].su_weight == 1.0


def test_the_docs_list_no_model_the_catalog_lacks() -> None:
    assert set(doc_rows()) == set(CATALOG)


@pytest.mark.skipif(not DEFAULT_THROUGHPUTS.exists(), reason=f"not present: {DEFAULT_THROUGHPUTS}")
@pytest.mark.parametrize(("model", "ratio"), [("P100", 0.738), ("K80", 0.226)])
def test_gavel_derived_speeds_follow_from_the_measured_table(model: str, ratio: float) -> None:
    table = load_throughputs(DEFAULT_THROUGHPUTS)
    measured = geometric_mean_ratio(table, model, "V100")
    assert measured == pytest.approx(ratio, abs=5e-4)
    # the catalog keeps two significant digits of V100 speed x the measured ratio
    assert CATALOG[model].speed == float(f"{CATALOG['V100'].relative_speed * measured:.2g}")


@pytest.mark.parametrize(
    ("speed", "expected"),
    [(None, 1.7), (2.0, 2.0), (0.5, 0.5)],
    ids=["unstated-counts-as-su-weight", "faster", "slower"],
)
def test_relative_speed(speed: float | None, expected: float) -> None:
    m = GpuModel("X", 80, 700, 8, 1.7, speed=speed)
    assert m.relative_speed == expected
    assert m.work_per_su == pytest.approx(expected / 1.7)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_a_speed_must_be_positive(bad: float) -> None:
    with pytest.raises(ValidationError, match=r"speed.*must be > 0.*relative to H100"):
        GpuModel("X", 80, 700, 8, 1.0, speed=bad)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("speed: -2", "speed"),
        ('speed: "fast"', "a number"),
        ('speed_source: ""', "non-empty text"),
    ],
)
def test_a_scenario_with_a_bad_speed_is_refused_with_where_and_what(tmp_path: Path, line: str, message: str) -> None:
    lab = (Path(__file__).resolve().parents[2] / "src/kfabric/scenarios/data/lab.yaml").read_text()
    model = "{name: Z9, memory_gb: 80, board_power_w: 700, nvlink_domain_gpus: 8, su_weight: 1.0, " + line + "}"
    extra = f"gpu_models:\n  - {model}\n"
    path = tmp_path / "bad.yaml"
    path.write_text(lab + "\n" + extra)
    with pytest.raises((ScenarioError, ValidationError), match=message) as info:
        load_scenario(str(path))
    assert "gpu_models[0]" in str(info.value)


def test_a_scenario_may_override_a_speed(tmp_path: Path) -> None:
    lab = (Path(__file__).resolve().parents[2] / "src/kfabric/scenarios/data/lab.yaml").read_text()
    extra = (
        "gpu_models:\n  - {name: H100, memory_gb: 80, board_power_w: 700, nvlink_domain_gpus: 8, su_weight: 1.0,"
        ' speed: 1.1, speed_source: "site benchmark"}\n'
    )
    path = tmp_path / "override.yaml"
    path.write_text(lab + "\n" + extra)
    model = load_scenario(str(path)).fleet.model("H100")
    assert (model.speed, model.speed_source) == (1.1, "site benchmark")
