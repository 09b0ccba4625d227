"""The local backend's node health from ``nvidia-smi`` (``backends/nvidia_health.py``), on canned answers: what
each answer makes of the node, and that ``LocalBackend.nodes()`` reads it at most every ``HEALTH_EVERY_S``."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from kfabric.backends import local, nvidia_health
from kfabric.backends.base import NodeFact
from kfabric.backends.local import LocalBackend
from kfabric.backends.nvidia_health import gpu_health

A = "00000000:18:00.0"
B = "00000000:2A:00.0"
OK2 = f"0, {A}, 0, No\n1, {B}, 0, No\n"
NO_DRIVER = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
BAD_FIELD = 'Field "retired_pages.pending" is not a valid field to query.'


class Smi:
    """A stand-in for nvidia-smi: answers per query kind (``gpu``, ``remap``, ``basic``), or raises."""

    def __init__(self, gpu: tuple[int, str] | Exception, remap: tuple[int, str] = (0, ""), basic: str = "") -> None:
        self.gpu, self.remap, self.basic = gpu, remap, basic
        self.calls: list[str] = []

    def __call__(self, args: Sequence[str]) -> tuple[int, str]:
        query = args[1]
        self.calls.append(query)
        if query.startswith("--query-remapped-rows"):
            return self.remap
        if query == f"--query-gpu={nvidia_health.BASIC_QUERY}":
            return 0, self.basic
        if isinstance(self.gpu, Exception):
            raise self.gpu
        return self.gpu


CASES = [
    ("no nvidia-smi", Smi(FileNotFoundError("nvidia-smi")), NodeFact("n", "up", "", 2, 2)),
    ("healthy", Smi((0, OK2)), NodeFact("n", "up", "", 2, 2)),
    ("no ECC on the board", Smi((0, f"0, {A}, [N/A], [N/A]\n1, {B}, [N/A], [N/A]\n")), NodeFact("n", "up", "", 2, 2)),
    ("uncorrectable ECC", Smi((0, f"0, {A}, 0, No\n1, {B}, 3, No\n")),
     NodeFact("n", "drain", "nvidia-smi: GPU 1: 3 uncorrectable ECC errors since the driver loaded", 2, 1)),
    ("retirement pending", Smi((0, f"0, {A}, 0, Yes\n1, {B}, 0, No\n")),
     NodeFact("n", "drain", "nvidia-smi: GPU 0: page retirement pending (reset the GPU)", 2, 1)),
    ("GPU lost", Smi((0, f"0, {A}, 0, No\n1, {B}, Unknown Error, Unknown Error\n")),
     NodeFact("n", "drain", "nvidia-smi: GPU 1: lost (Unknown Error)", 2, 1)),
    ("GPU missing", Smi((0, f"0, {A}, 0, No\n")),
     NodeFact("n", "drain", "nvidia-smi: nvidia-smi lists 1 of the node's 2 GPUs", 2, 1)),
    ("remap pending", Smi((0, OK2), (0, f"{B}, Yes, No\n")),
     NodeFact("n", "drain", "nvidia-smi: GPU 1: row remapping pending (reset the GPU)", 2, 1)),
    ("remap failed", Smi((0, OK2), (0, f"{A.lower()}, No, Yes\n")),
     NodeFact("n", "drain", "nvidia-smi: GPU 0: row remapping failed (replace the GPU)", 2, 1)),
    ("old driver: no remap query", Smi((0, OK2), (2, "Invalid combination of input arguments")),
     NodeFact("n", "up", "", 2, 2)),
    ("old driver: unknown field", Smi((2, BAD_FIELD), basic=f"0, {A}\n1, {B}\n"), NodeFact("n", "up", "", 2, 2)),
    ("driver unreachable", Smi((9, NO_DRIVER + "\n")), NodeFact("n", "down", f"nvidia-smi failed: {NO_DRIVER}", 2, 0)),
    ("hung", Smi(subprocess.TimeoutExpired("nvidia-smi", 10)),
     NodeFact("n", "down", "nvidia-smi failed: Command 'nvidia-smi' timed out after 10 seconds", 2, 0)),
]  # fmt: skip


@pytest.mark.parametrize(("smi", "fact"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_nvidia_smi_answers_map_to_node_facts(smi: Smi, fact: NodeFact) -> None:
    assert gpu_health("n", 2, smi) == fact


def test_local_backend_reads_nvidia_smi_at_most_every_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    reads: list[int] = []

    def health(node: str, gpus: int) -> NodeFact:
        reads.append(1)
        return NodeFact(node, "up", "", gpus, gpus)

    monkeypatch.setattr(local, "gpu_health", health)
    backend = LocalBackend(tmp_path, gpus=4, clock=lambda: now[0])
    assert backend.nodes() == [NodeFact("local", "up", "", 4, 4)]
    now[0] += nvidia_health.HEALTH_EVERY_S - 1
    backend.nodes()
    assert len(reads) == 1
    now[0] += 1
    backend.nodes()
    assert len(reads) == 2
