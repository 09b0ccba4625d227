"""One machine's GPU health from ``nvidia-smi``, as a :class:`~kfabric.backends.base.NodeFact` (the ``local``
backend's ``nodes()``).

Two queries (CSV, no header, no units):

* ``--query-gpu=index,pci.bus_id,ecc.errors.uncorrected.volatile.total,retired_pages.pending`` — one line per
  GPU the driver can see; a value of ``[N/A]``/``[Not Supported]`` (no ECC on the board, no page retirement on
  Ampere and later) counts as healthy, ``Unknown Error`` or ``[GPU requires reset]`` as a lost GPU;
* ``--query-remapped-rows=gpu_bus_id,remapped_rows.pending,remapped_rows.failure`` (Ampere and later; an older
  driver that does not know it is ignored).

A driver that does not know a field of the first query is asked for ``index,pci.bus_id`` only (GPU count).

=====================================================  =======  ====================================================
nvidia-smi says                                        state    why
=====================================================  =======  ====================================================
nothing wrong (or there is no nvidia-smi at all)       up       —
a GPU fewer than the node declares, a GPU lost         drain    work on the other GPUs goes on; nothing new starts
uncorrectable ECC errors since the driver loaded       drain    the GPU needs a reset (its work may have died)
a page retirement or row remapping pending             drain    takes effect at the next GPU reset
row remapping failed                                   drain    the GPU needs replacing
cannot talk to the driver, fails or hangs              down     no GPU can be used
=====================================================  =======  ====================================================

XID errors are not read: ``nvidia-smi`` does not report them (they are in the kernel log, or DCGM).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kfabric.backends.base import NodeFact

#: seconds the local backend keeps what nvidia-smi said (nodes() runs inside the controller's transaction)
HEALTH_EVERY_S = 30.0
#: seconds nvidia-smi may take (it hangs on a GPU that fell off the bus)
TIMEOUT_S = 10.0
GPU_QUERY = "index,pci.bus_id,ecc.errors.uncorrected.volatile.total,retired_pages.pending"
BASIC_QUERY = "index,pci.bus_id"
REMAP_QUERY = "gpu_bus_id,remapped_rows.pending,remapped_rows.failure"
_LOST = ("unknown error", "gpu requires reset", "gpu is lost")
_UNKNOWN = ("[n/a]", "n/a", "[not supported]", "not supported", "")

#: runs a command; its exit code and output (FileNotFoundError: no such program)
Runner = Callable[[Sequence[str]], tuple[int, str]]


def run_command(args: Sequence[str]) -> tuple[int, str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    return done.returncode, (done.stdout if done.returncode == 0 else (done.stderr or done.stdout))


@dataclass(frozen=True, slots=True)
class _Gpu:
    index: str
    bus_id: str
    problems: tuple[str, ...]


def gpu_health(node: str, expected_gpus: int, run: Runner = run_command) -> NodeFact:
    """The node's fact from nvidia-smi (see the module docstring); ``expected_gpus``: what the node declares."""
    try:
        code, out = run(["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"])
        if code != 0 and "not a valid field" in out.lower():  # an old driver: the GPUs it lists, no more
            code, out = run(["nvidia-smi", f"--query-gpu={BASIC_QUERY}", "--format=csv,noheader"])
    except FileNotFoundError:
        return NodeFact(node, "up", "", expected_gpus or None, expected_gpus or None)
    except (OSError, subprocess.SubprocessError) as exc:
        return NodeFact(node, "down", f"nvidia-smi failed: {exc}", expected_gpus or None, 0)
    if code != 0:
        first = (out.strip().splitlines() or [f"exit code {code}"])[0]
        return NodeFact(node, "down", f"nvidia-smi failed: {first}", expected_gpus or None, 0)
    gpus = [_gpu_of(line) for line in out.splitlines() if line.strip()]
    _add_remap_problems(gpus, run)
    return judge(node, expected_gpus, gpus)


def _gpu_of(line: str) -> _Gpu:
    cells = [c.strip() for c in line.split(",")]
    cells += [""] * (4 - len(cells))
    index, bus_id, ecc, retire = cells[:4]
    problems: list[str] = []
    if any(lost in c.lower() for c in cells for lost in _LOST):
        problems.append("lost (" + next(c for c in cells if any(x in c.lower() for x in _LOST)) + ")")
    elif ecc.isdigit() and int(ecc) > 0:
        problems.append(f"{ecc} uncorrectable ECC errors since the driver loaded")
    if retire.lower() == "yes":
        problems.append("page retirement pending (reset the GPU)")
    return _Gpu(index, bus_id.lower(), tuple(problems))


def _add_remap_problems(gpus: list[_Gpu], run: Runner) -> None:
    try:
        code, out = run(["nvidia-smi", f"--query-remapped-rows={REMAP_QUERY}", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return
    if code != 0:
        return  # a driver without row remapping
    by_bus = {g.bus_id: i for i, g in enumerate(gpus)}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 3 or cells[0].lower() not in by_bus:
            continue
        i = by_bus[cells[0].lower()]
        extra = []
        if cells[2].lower() == "yes":
            extra.append("row remapping failed (replace the GPU)")
        elif cells[1].lower() == "yes":
            extra.append("row remapping pending (reset the GPU)")
        gpus[i] = _Gpu(gpus[i].index, gpus[i].bus_id, gpus[i].problems + tuple(extra))


def judge(node: str, expected_gpus: int, gpus: list[_Gpu]) -> NodeFact:
    """The node's state from its GPUs: drained when any GPU is missing or unhealthy, with every problem named."""
    total = max(expected_gpus, len(gpus))
    bad = [g for g in gpus if g.problems]
    why = [f"GPU {g.index}: {'; '.join(g.problems)}" for g in bad]
    if len(gpus) < expected_gpus:
        why.insert(0, f"nvidia-smi lists {len(gpus)} of the node's {expected_gpus} GPUs")
    healthy = len(gpus) - len(bad)
    if not why:
        return NodeFact(node, "up", "", total, healthy)
    return NodeFact(node, "drain", "nvidia-smi: " + "; ".join(why), total, healthy)
