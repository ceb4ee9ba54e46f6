"""Pure placement planner for HeteroTrain: which workers of which jobs go on which nodes.

Imports only the standard library.  Entry point: :func:`plan`.
"""

from .eligibility import node_keeps, node_usable_for, tolerates_all
from .planner import plan
from .types import (
    EFFECT_NO_EXECUTE,
    EFFECT_NO_SCHEDULE,
    EFFECT_PREFER_NO_SCHEDULE,
    PLACEMENT_PACK,
    PLACEMENT_SPREAD,
    REASON_CAPACITY_LIMITED,
    REASON_INSUFFICIENT_CAPACITY,
    REASON_INVALID_SPEC,
    REASON_NO_MATCHING_NODES,
    REASON_SUSPENDED,
    REASON_TYPE_CAPS_REACHED,
    AcceleratorOption,
    ClusterSnapshot,
    JobPlan,
    JobRequest,
    Labels,
    Node,
    Plan,
    Taint,
    Toleration,
    WorkerSlot,
)

__all__ = [
    "EFFECT_NO_EXECUTE",
    "EFFECT_NO_SCHEDULE",
    "EFFECT_PREFER_NO_SCHEDULE",
    "PLACEMENT_PACK",
    "PLACEMENT_SPREAD",
    "REASON_CAPACITY_LIMITED",
    "REASON_INSUFFICIENT_CAPACITY",
    "REASON_INVALID_SPEC",
    "REASON_NO_MATCHING_NODES",
    "REASON_SUSPENDED",
    "REASON_TYPE_CAPS_REACHED",
    "AcceleratorOption",
    "ClusterSnapshot",
    "JobPlan",
    "JobRequest",
    "Labels",
    "Node",
    "Plan",
    "Taint",
    "Toleration",
    "WorkerSlot",
    "node_keeps",
    "node_usable_for",
    "plan",
    "tolerates_all",
]
