"""GPU model catalog entries."""

from __future__ import annotations

from dataclasses import dataclass

from kfabric.model.errors import require, require_name


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One GPU model.

    ``nvlink_domain_gpus`` is how many GPUs share one NVLink domain in the model's usual system (8 for HGX,
    72 for NVL72); 1 means PCIe only. ``su_weight`` is how many service units one GPU-hour of this model is
    worth relative to the reference GPU (H100 = 1.0).
    """

    name: str
    memory_gb: float
    board_power_w: float
    nvlink_domain_gpus: int
    su_weight: float

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

    @property
    def interconnect(self) -> str:
        return "pcie" if self.nvlink_domain_gpus == 1 else f"nvlink-{self.nvlink_domain_gpus}"
