"""The domain: GPU models, fleet, topology, tenancy, jobs. Frozen, validated types; no I/O."""

from kfabric.model.errors import KfabricError, TransitionError, ValidationError
from kfabric.model.fleet import Cluster, Fleet, NodePool, Owner, OwnerKind, Sharing, Site
from kfabric.model.gpu import GpuModel
from kfabric.model.job import Job, JobState, MinTopology, PriorityClass, check_transition
from kfabric.model.reasons import PendingReason, ReasonCode
from kfabric.model.sovereignty import Classification
from kfabric.model.tenancy import (
    Application,
    Grant,
    OnExhausted,
    Organization,
    OrgKind,
    Program,
    ProgramRules,
    Project,
    Review,
)
from kfabric.model.topology import Node, fleet_nodes, nvlink_domains, pool_nodes

__all__ = [
    "Application",
    "Classification",
    "Cluster",
    "Fleet",
    "GpuModel",
    "Grant",
    "Job",
    "JobState",
    "KfabricError",
    "MinTopology",
    "Node",
    "NodePool",
    "OnExhausted",
    "OrgKind",
    "Organization",
    "Owner",
    "OwnerKind",
    "PendingReason",
    "PriorityClass",
    "Program",
    "ProgramRules",
    "Project",
    "ReasonCode",
    "Review",
    "Sharing",
    "Site",
    "TransitionError",
    "ValidationError",
    "check_transition",
    "fleet_nodes",
    "nvlink_domains",
    "pool_nodes",
]
