"""GPU model catalog entries."""

from __future__ import annotations

from dataclasses import dataclass

from kfabric.model.errors import require, require_name

#: the GPU that ``su_weight`` and ``speed`` are measured against (1.0 for both)
REFERENCE_MODEL = "H100"


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One GPU model.

    ``nvlink_domain_gpus`` is how many GPUs share one NVLink domain in the model's usual system (8 for HGX,
    72 for NVL72); 1 means PCIe only. ``su_weight`` is how many service units one GPU-hour of this model is
    worth relative to the reference GPU (H100 = 1.0).

    ``speed`` is the model's training throughput per GPU relative to the reference GPU (H100 SXM = 1.0): a job
    whose run time is ``t`` on a model of speed ``a`` runs ``t * a / b`` on one of speed ``b`` (docs/gpu-speeds.md;
    the packaged catalog gives each value with ``speed_source``). ``None`` (not stated) counts as ``su_weight``:
    the same work per service unit as the reference, so a catalog without speeds keeps its old behaviour.
    """

    name: str
    memory_gb: float
    board_power_w: float
    nvlink_domain_gpus: int
    su_weight: float
    speed: float | None = None
    #: where ``speed`` comes from: document or URL, and what was compared ("estimate: ..." when not measured)
    speed_source: str = ""

    def __post_init__(self) -> None:
        where = f"gpu model {self.name!r}"
        require_name(self.name, f"{where}.name")
        require(self.memory_gb > 0, f"{where}.memory_gb", f"must be > 0, got {self.memory_gb}")
        require(self.board_power_w > 0, f"{where}.board_power_w", f"must be > 0, got {self.board_power_w}")
        require(
            self.nvlink_domain_gpus >= 1,
            f"{where}.nvlink_domain_gpus",
            f"must be >= 1 (1 = PCIe only), got {self.nvlink_domain_gpus}",
        )
        require(self.su_weight > 0, f"{where}.su_weight", f"must be > 0, got {self.su_weight}")
        if self.speed is not None:
            require(
                self.speed > 0,
                f"{where}.speed",
                f"must be > 0, got {self.speed}",
                "give the training throughput per GPU relative to H100 (H100 = 1.0), or leave it out",
            )

    @property
    def interconnect(self) -> str:
        return "pcie" if self.nvlink_domain_gpus == 1 else f"nvlink-{self.nvlink_domain_gpus}"

    @property
    def relative_speed(self) -> float:
        """``speed``, or ``su_weight`` when the catalog states none (work per service unit as the reference's)."""
        return self.speed if self.speed is not None else self.su_weight

    @property
    def work_per_su(self) -> float:
        """Training work one service unit buys on this model, relative to the reference GPU."""
        return self.relative_speed / self.su_weight
