"""Table sections drawn from ``summary.json`` (docs/metrics.md): who waited and who never started, where the
GPU-hours went, reserved capacity, and demand-aware fairness. One column per run; a section says so when the
runs predate the metric (an older ``summary.json``)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from kfabric.report.palette import run_color
from kfabric.report.runs import SIZE_CLASSES, Run
from kfabric.report.tables import fmt_duration, fmt_number, num

Cell = Callable[[Run], str]


def _get(run: Run, *path: str) -> Any:
    value: Any = run.summary
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _mapping(run: Run, key: str) -> dict[str, Any]:
    value = run.summary.get(key)
    return value if isinstance(value, dict) else {}


def _hours(value: Any) -> str:
    v = num(value)
    return "–" if v != v else f"{fmt_number(v)} GPU-h"


def _count(value: Any) -> str:
    v = num(value)
    return "–" if v != v else fmt_number(v)


def _duration(value: Any) -> str:
    v = num(value)
    return "–" if v != v else fmt_duration(v)


def _table(runs: Sequence[Run], rows: Sequence[tuple[str, Cell]], first: str = "") -> str:
    head = "".join(
        f'<th scope="col"><span class="swatch" style="background:{run_color(i)}"></span>{html.escape(r.name)}</th>'
        for i, r in enumerate(runs)
    )
    lines = [f'<table class="cmp"><thead><tr><th scope="col">{html.escape(first)}</th>{head}</tr></thead><tbody>']
    for label, cell in rows:
        if not label:
            lines.append(f'<tr class="group"><th colspan="{len(runs) + 1}">{html.escape(cell(runs[0]))}</th></tr>')
            continue
        tds = "".join(f"<td>{html.escape(cell(r))}</td>" for r in runs)
        lines.append(f'<tr><th scope="row">{html.escape(label)}</th>{tds}</tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _entry(key: str, name: str, fmt: Callable[[Any], str]) -> Cell:
    """A cell showing ``summary[key][name]`` (0 when the run has none)."""
    return lambda r: fmt(_mapping(r, key).get(name, 0))


def _nested(key: str, name: str, field: str, fmt: Callable[[Any], str]) -> Cell:
    """A cell showing ``summary[key][name][field]`` ("–" when the run has none)."""

    def cell(r: Run) -> str:
        value = _mapping(r, key).get(name)
        return fmt(value.get(field)) if isinstance(value, dict) else "–"

    return cell


def _group(title: str) -> tuple[str, Cell]:
    return "", lambda _r: title


def _keys(runs: Sequence[Run], key: str) -> list[str]:
    names: set[str] = set()
    for r in runs:
        names.update(str(k) for k in _mapping(r, key))
    return sorted(names)


def _missing(runs: Sequence[Run], key: str) -> bool:
    return all(key not in r.summary for r in runs)


def _old_note(what: str) -> str:
    return (
        f'<p class="note">No data: these runs\' summary.json has no {html.escape(what)} (written by an older '
        "kfabric; re-run `kfabric simulate`).</p>"
    )


# ---- who waited ----------------------------------------------------------------------------------------------
def starvation_section(runs: Sequence[Run]) -> str:
    """Jobs never started, waits by size class, the largest jobs one by one, rejections with their reasons."""
    if _missing(runs, "jobs_never_started"):
        return _old_note("jobs_never_started")
    rows: list[tuple[str, Cell]] = [
        ("jobs submitted (admitted to the queue)", lambda r: _count(r.summary.get("jobs_submitted"))),
        ("jobs never started (censored)", lambda r: _count(r.summary.get("jobs_never_started"))),
        ("maximum wait", lambda r: _duration(r.summary.get("max_wait_s"))),
        ("p99.9 wait", lambda r: _duration(r.summary.get("p999_wait_s"))),
        ("jobs rejected at admission", lambda r: _count(r.summary.get("jobs_rejected"))),
    ]
    for reason in _keys(runs, "rejected_by_reason"):
        rows.append((f"  rejected: {reason}", _entry("rejected_by_reason", reason, _count)))
    for reason in _keys(runs, "never_started_by_reason"):
        rows.append((f"  never started: {reason}", _entry("never_started_by_reason", reason, _count)))
    sizes = [c for c in SIZE_CLASSES if any(c in _mapping(r, "wait_by_size") for r in runs)]
    if sizes:
        rows.append(_group("waits by job size (GPUs): max wait · never started / jobs"))
    for cls in sizes:

        def by_size(r: Run, c: str = cls) -> str:
            st = _mapping(r, "wait_by_size").get(c)
            if not isinstance(st, dict):
                return "–"
            return f"{_duration(st.get('max_wait_s'))} · {_count(st.get('never_started'))} / {_count(st.get('jobs'))}"

        rows.append((f"{cls} GPUs", by_size))
    out = [
        '<p class="note">Waits count every job admitted to the queue: a job not started by the window\'s end '
        "counts with wait = window end − submit (censored), so a policy cannot look better by starving work. "
        "Rejected jobs were refused at submission (e.g. their grant had expired) and are counted apart.</p>",
        _table(runs, rows, "metric"),
    ]
    out.append(_hero_table(runs))
    return "\n".join(out)


def _hero_table(runs: Sequence[Run]) -> str:
    heroes: dict[str, dict[str, Any]] = {}
    for r in runs:
        for h in r.summary.get("hero_jobs") or []:
            if isinstance(h, dict) and "job_id" in h:
                heroes.setdefault(str(h["job_id"]), h)
    if not heroes:
        return '<p class="note">No job of more than 512 GPUs was submitted.</p>'
    order = sorted(heroes.values(), key=lambda h: (-num(h.get("gpus")), str(h.get("job_id"))))
    rows: list[tuple[str, Cell]] = []
    for h in order:
        job_id = str(h["job_id"])

        def cell(r: Run, j: str = job_id) -> str:
            for x in r.summary.get("hero_jobs") or []:
                if isinstance(x, dict) and str(x.get("job_id")) == j:
                    wait = _duration(x.get("wait_s"))
                    if x.get("censored"):
                        return f"never started (≥ {wait}; {x.get('reason') or 'pending'})"
                    return f"waited {wait} ({x.get('state')})"
            return "–"

        rows.append((f"{job_id} · {h.get('project')} · {_count(h.get('gpus'))} GPUs", cell))
    return (
        '<h3>The largest jobs (more than 512 GPUs)</h3><p class="note">Each job\'s wait under each policy.</p>'
        + _table(runs, rows, "job · project · size")
    )


# ---- where the GPU-hours went --------------------------------------------------------------------------------
def delivered_section(runs: Sequence[Run]) -> str:
    if _missing(runs, "gpu_hours_by_owner"):
        return _old_note("gpu_hours_by_owner")
    rows: list[tuple[str, Cell]] = [
        ("GPU-hours delivered", lambda r: _hours(r.summary.get("gpu_hours_delivered"))),
        ("  on borrowed capacity", lambda r: _hours(r.summary.get("borrowed_gpu_hours"))),
        ("  of it on lendable pools (lent)", lambda r: _hours(r.summary.get("lent_gpu_hours"))),
        ("GPU time lost to preemption", lambda r: _hours(r.summary.get("lost_gpu_hours"))),
        ("preemptions", lambda r: _count(r.summary.get("preemptions"))),
    ]
    for key, title in (
        ("gpu_hours_by_owner", "by owner of the GPUs"),
        ("gpu_hours_by_program", "by program of the tenant"),
        ("lent_gpu_hours_by_owner", "lent capacity used, by owner of the lendable pool"),
    ):
        names = _keys(runs, key)
        if names:
            rows.append(_group(title))
        for name in names:
            rows.append((name, _entry(key, name, _hours)))
    sizes = [c for c in SIZE_CLASSES if any(c in _mapping(r, "gpu_hours_by_size") for r in runs)]
    if sizes:
        rows.append(_group("by job size (GPUs)"))
    for cls in sizes:
        rows.append((f"{cls} GPUs", _entry("gpu_hours_by_size", cls, _hours)))
    note = (
        '<p class="note">GPU-hours held by jobs inside the window (running jobs up to its end). Borrowed: run on '
        "capacity the job's project is not entitled to (idle reservations, other owners' lendable pools); lent: the "
        "borrowed part on lendable pools. Lost: work since the last checkpoint of preempted or failed runs.</p>"
    )
    return note + _table(runs, rows, "GPU-hours")


# ---- reserved capacity ---------------------------------------------------------------------------------------
def reservations_section(runs: Sequence[Run]) -> str:
    if _missing(runs, "reservations"):
        return _old_note("reservations")
    projects = _keys(runs, "reservations")
    if not projects:
        return '<p class="note">No project held reserved GPUs in the window.</p>'
    rows: list[tuple[str, Cell]] = []
    for p in projects:

        def field(r: Run, project: str = p) -> dict[str, Any]:
            value = _mapping(r, "reservations").get(project)
            return value if isinstance(value, dict) else {}

        def reserved(r: Run, f: Callable[[Run], dict[str, Any]] = field) -> str:
            gpus = f(r).get("reserved_gpus")
            if not isinstance(gpus, dict):
                return "–"
            return ", ".join(f"{_count(n)} {m}" for m, n in sorted(gpus.items()))

        def fitting(r: Run, f: Callable[[Run], dict[str, Any]] = field) -> str:
            d = f(r)
            if not d:
                return "–"
            if not num(d.get("jobs_fitting")):
                return "no job fits inside it"
            never = num(d.get("never_started_fitting"))
            tail = f", {_count(never)} never started" if never else ""
            return f"{_duration(d.get('max_wait_fitting_s'))} ({_count(d.get('jobs_fitting'))} jobs{tail})"

        rows.append(_group(p))
        rows.append(("reserved GPUs", reserved))
        rows.append(("demand (GPU-h asked inside the window)", _nested("reservations", p, "demand_gpu_hours", _hours)))
        rows.append(("delivered GPU-h", _nested("reservations", p, "delivered_gpu_hours", _hours)))
        rows.append(("longest wait of a job that fits inside the reservation", fitting))
    note = (
        '<p class="note">Every project holding reserved GPUs in the window. A job fits inside its reservation when, '
        "at its submission, the grant was in force, the job accepts the reserved model and asks for no more GPUs "
        "than the reservation had left beside the project's own running jobs; such a job should start within one "
        "scheduling cycle plus the preemption grace period. Demand: each job's GPUs × its run time, cut at the "
        "window's end.</p>"
    )
    return note + _table(runs, rows, "project")


# ---- fairness --------------------------------------------------------------------------------------------------
def fairness_section(runs: Sequence[Run]) -> str:
    if _missing(runs, "jain_demand"):
        return _old_note("jain_demand")
    rows: list[tuple[str, Cell]] = [
        (
            "Jain index, delivered / demand-capped fair share ↑",
            lambda r: fmt_number(num(r.summary.get("jain_demand")), 3),
        ),
        (
            "Jain index, service-unit share / entitlement ↑",
            lambda r: fmt_number(num(r.summary.get("jain_entitlement", r.summary.get("jain_index"))), 3),
        ),
    ]
    tenants: dict[str, float] = {}
    for r in runs:
        for name, t in _mapping(r, "tenants").items():
            if isinstance(t, dict) and "fair_gpu_hours" in t:
                tenants[str(name)] = max(tenants.get(str(name), 0.0), num(t.get("demand_gpu_hours")))
    worst = sorted(tenants, key=lambda n: (-tenants[n], n))[:15]
    if worst:
        rows.append(_group("delivered / fair GPU-hours, the 15 tenants asking most"))
    for name in worst:

        def ratio(r: Run, n: str = name) -> str:
            t = _mapping(r, "tenants").get(n)
            if not isinstance(t, dict) or not num(t.get("fair_gpu_hours")):
                return "–"
            return f"{num(t.get('delivered_gpu_hours')) / num(t.get('fair_gpu_hours')):.2f}"

        rows.append((name, ratio))
    note = (
        "<p class=\"note\">Demand-aware fairness: each tenant's fair GPU-hours are the window's online GPU-hours "
        "shared max-min by entitlement with the tenant's demand as its cap (a tenant asking less than its share "
        "gets what it asks, the rest goes to those who want more); 1.00 is a tenant served as fairly as possible. "
        "The entitlement index punishes a policy when tenants simply ask for less than they are entitled to.</p>"
    )
    return note + _table(runs, rows, "fairness")
