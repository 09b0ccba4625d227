"""Read a simulation run directory (``jobs.csv``, ``timeline.csv``, ``summary.json``; see ``kfabric.sim.run``).

Errors are ``ValueError`` naming the file and what to do about it. ``jobs.csv`` can hold a million rows, so only
the columns the report needs are kept, as numpy arrays.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Job-size classes in display order (``kfabric.sim.metrics.size_class``); unknown labels sort after these.
SIZE_CLASSES = ("fraction", "1", "2-8", "9-64", "65-512", "513+")

_JOB_COLUMNS = ("size_class", "wait_s", "jct_s")
_TIMELINE_COLUMNS = ("t_s", "queue", "running", "online_gpus", "allocated_gpus")
_HOW_TO_FIX = "re-run `kfabric simulate ... --out DIR` to write the run directory again"


@dataclass(frozen=True)
class Jobs:
    """Per-job columns of ``jobs.csv`` the report uses; ``size_code`` indexes ``size_labels``."""

    size_labels: tuple[str, ...]
    size_code: npt.NDArray[np.int16]
    wait_s: FloatArray
    jct_s: FloatArray

    def __len__(self) -> int:
        return int(self.wait_s.size)


@dataclass(frozen=True)
class Timeline:
    """``timeline.csv`` as arrays; ``owners``/``sites``/``power_mw`` map a name to its column."""

    t_s: FloatArray
    queue: FloatArray
    running: FloatArray
    online_gpus: FloatArray
    allocated_gpus: FloatArray
    fragmentation: FloatArray
    owners: dict[str, FloatArray] = field(default_factory=dict)
    sites: dict[str, FloatArray] = field(default_factory=dict)
    power_mw: dict[str, FloatArray] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    path: Path
    name: str
    summary: dict[str, Any]
    timeline: Timeline
    jobs: Jobs

    @property
    def info(self) -> dict[str, Any]:
        run = self.summary.get("run")
        return run if isinstance(run, dict) else {}

    @property
    def policy(self) -> str:
        return str(self.info.get("policy") or self.path.name)


def read_runs(paths: list[Path]) -> list[Run]:
    """Read every run; runs with the same policy name get their directory name appended to stay distinct."""
    runs = [read_run(p) for p in paths]
    names = [r.policy for r in runs]
    out: list[Run] = []
    for run, name in zip(runs, names, strict=True):
        if names.count(name) > 1:
            name = f"{name} ({run.path.name})"
            if sum(1 for r in runs if f"{r.policy} ({r.path.name})" == name) > 1:
                name = f"{run.policy} ({run.path})"
        out.append(Run(run.path, name, run.summary, run.timeline, run.jobs))
    return out


def read_run(path: Path) -> Run:
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"run directory {path} does not exist; give a run directory written by `kfabric simulate --out DIR` "
            "(one sub-directory per policy)"
        )
    if not path.is_dir():
        raise ValueError(
            f"{path} is not a directory; give a run directory holding jobs.csv, timeline.csv, summary.json"
        )
    summary = read_summary(path / "summary.json")
    timeline = read_timeline(path / "timeline.csv")
    jobs = read_jobs(path / "jobs.csv")
    return Run(path, str((summary.get("run") or {}).get("policy") or path.name), summary, timeline, jobs)


def _require(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"{path} is missing; {path.parent} is not a complete run directory ({_HOW_TO_FIX})")


def read_summary(path: Path) -> dict[str, Any]:
    _require(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); {_HOW_TO_FIX}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of summary metrics; {_HOW_TO_FIX}")
    if "run" in data and not isinstance(data["run"], dict):
        raise ValueError(f"{path}: 'run' must be an object (policy, scenario, ...); {_HOW_TO_FIX}")
    return data


@contextmanager
def _open_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[list[str], Any]]:
    """The checked header and a ``csv.reader`` over the rest; csv and decoding errors become ValueError."""
    _require(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: unreadable header ({exc}); {_HOW_TO_FIX}") from None
        if not header:
            raise ValueError(f"{path} is empty; it needs a header row with {', '.join(required)} ({_HOW_TO_FIX})")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} in the header; {_HOW_TO_FIX}")
        try:
            yield header, reader
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: line {reader.line_num}: {exc}; {_HOW_TO_FIX}") from None


def _to_float(values: list[str], path: Path, column: str) -> FloatArray:
    """Strings to floats; empty cells become NaN; a bad cell is reported with its line number."""
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v) if v.strip() else np.nan
        except ValueError:
            raise ValueError(f"{path}: line {i + 2}, column {column}: {v!r} is not a number; {_HOW_TO_FIX}") from None
    return out


def _short_row(path: Path, line: int, got: int, want: int) -> ValueError:
    return ValueError(f"{path}: line {line} has {got} fields, the header has {want}; {_HOW_TO_FIX}")


def _loadtxt(path: Path, usecols: tuple[int, ...] | None, dtype: str = "f8") -> npt.NDArray[Any] | None:
    """numpy's C parser: the fast path for well-formed files; None when it cannot read them (then csv explains)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.loadtxt(
                path,
                delimiter=",",
                skiprows=1,
                usecols=usecols,
                dtype=dtype,
                comments=None,
                quotechar='"',
                ndmin=2,
                encoding="utf-8",
            )
    except (ValueError, UnicodeDecodeError):
        return None
    return data if data.shape[0] else None


def read_timeline(path: Path) -> Timeline:
    with _open_csv(path, _TIMELINE_COLUMNS) as (header, _):
        pass
    data = _loadtxt(path, None)
    if data is not None and data.shape[1] == len(header):
        return _timeline(dict(zip(header, (np.ascontiguousarray(c) for c in data.T), strict=True)))
    with _open_csv(path, _TIMELINE_COLUMNS) as (header, reader):
        width = len(header)
        cols: list[list[str]] = [[] for _ in header]
        for row in reader:
            if not row:
                continue
            if len(row) != width:
                raise _short_row(path, reader.line_num, len(row), width)
            for col, value in zip(cols, row, strict=True):
                col.append(value)
        return _timeline({name: _to_float(col, path, name) for name, col in zip(header, cols, strict=True)})


def _timeline(arrays: dict[str, FloatArray]) -> Timeline:
    def group(prefix: str) -> dict[str, FloatArray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    t_s = arrays["t_s"]
    return Timeline(
        t_s=t_s,
        queue=arrays["queue"],
        running=arrays["running"],
        online_gpus=arrays["online_gpus"],
        allocated_gpus=arrays["allocated_gpus"],
        fragmentation=arrays.get("fragmentation", np.zeros(t_s.size, dtype=np.float64)),
        owners=group("owner:"),
        sites=group("site:"),
        power_mw=group("power_mw:"),
    )


def _encode(values: npt.NDArray[np.str_]) -> tuple[tuple[str, ...], npt.NDArray[np.int16]]:
    """Labels to small integer codes; the known size classes by comparison (np.unique on strings is slow)."""
    codes = np.full(values.size, -1, dtype=np.int16)
    labels = list(SIZE_CLASSES)
    for i, label in enumerate(SIZE_CLASSES):
        codes[values == label] = i
    rest = codes < 0
    if rest.any():
        other, inverse = np.unique(values[rest], return_inverse=True)
        codes[rest] = inverse.reshape(-1) + len(labels)
        labels += [str(x) for x in other]
    return tuple(labels), codes


def read_jobs(path: Path) -> Jobs:
    with _open_csv(path, _JOB_COLUMNS) as (header, _):
        pass
    i_size, i_wait, i_jct = (header.index(c) for c in _JOB_COLUMNS)
    times = _loadtxt(path, (i_wait, i_jct))
    sizes = _loadtxt(path, (i_size,), dtype="U32") if times is not None else None
    if times is not None and sizes is not None and sizes.shape[0] == times.shape[0]:
        labels, codes = _encode(sizes[:, 0])
        return Jobs(
            size_labels=labels,
            size_code=codes,
            wait_s=np.ascontiguousarray(times[:, 0]),
            jct_s=np.ascontiguousarray(times[:, 1]),
        )
    with _open_csv(path, _JOB_COLUMNS) as (header, reader):
        width = len(header)
        index: dict[str, int] = {label: i for i, label in enumerate(SIZE_CLASSES)}
        size: list[int] = []
        wait: list[str] = []
        jct: list[str] = []
        for row in reader:
            if len(row) != width:
                if not row:
                    continue
                raise _short_row(path, reader.line_num, len(row), width)
            label = row[i_size]
            code = index.get(label)
            if code is None:
                code = index[label] = len(index)
            size.append(code)
            wait.append(row[i_wait])
            jct.append(row[i_jct])
        labels = tuple(sorted(index, key=lambda k: index[k]))
        return Jobs(
            size_labels=labels,
            size_code=np.asarray(size, dtype=np.int16),
            wait_s=_to_float(wait, path, "wait_s"),
            jct_s=_to_float(jct, path, "jct_s"),
        )
