"""Value types of the placement planner: inputs (cluster snapshot, job requests) and the output plan.

Everything here is frozen and hashable so that a plan is a pure function of its inputs.  Mappings (node
labels, node selectors) are stored as sorted tuples of ``(key, value)`` pairs; a ``Mapping`` passed at
construction time is normalised to that form.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

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
]

Labels = tuple[tuple[str, str], ...]

EFFECT_NO_SCHEDULE = "NoSchedule"
EFFECT_PREFER_NO_SCHEDULE = "PreferNoSchedule"
EFFECT_NO_EXECUTE = "NoExecute"

PLACEMENT_PACK = "Pack"
PLACEMENT_SPREAD = "Spread"

REASON_SUSPENDED = "Suspended"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_NO_MATCHING_NODES = "NoMatchingNodes"
REASON_INSUFFICIENT_CAPACITY = "InsufficientCapacity"
REASON_CAPACITY_LIMITED = "CapacityLimited"
REASON_TYPE_CAPS_REACHED = "TypeCapsReached"


def _labels(value: Any) -> Labels:
    """Normalise a mapping or an iterable of pairs into a sorted tuple of ``(str, str)`` pairs."""
    items = value.items() if isinstance(value, Mapping) else value
    pairs = tuple(sorted((str(k), str(v)) for k, v in items))
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate label keys in {pairs!r}")
    return pairs


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = EFFECT_NO_SCHEDULE


@dataclass(frozen=True)
class Toleration:
    """A pod toleration with Kubernetes semantics.

    ``operator`` is ``Equal`` (key and value must match) or ``Exists`` (key must match, any value);
    an empty/None key with ``Exists`` tolerates every taint; an empty/None effect matches every effect.
    """

    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator == "Equal" and (self.value or "") == taint.value


@dataclass(frozen=True)
class Node:
    name: str
    accelerator: str | None  # value of the node label heterotrain.io/accelerator
    resource_name: str | None  # e.g. nvidia.com/gpu, huawei.com/Ascend910, amd.com/gpu
    accelerators_allocatable: int
    accelerators_used: int  # by pods that are NOT workers of the jobs passed to plan()
    cpu_milli_allocatable: int
    cpu_milli_used: int
    memory_allocatable: int  # bytes
    memory_used: int  # bytes
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    unschedulable: bool = False
    labels: Labels = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _labels(self.labels))
        object.__setattr__(self, "taints", tuple(self.taints))

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))


@dataclass(frozen=True)
class AcceleratorOption:
    type: str  # matches Node.accelerator
    resource_name: str  # matches Node.resource_name
    per_worker: int = 1  # accelerators one worker of this type takes, on one node
    worker_throughput: float = 1.0  # throughput of one worker of this type (all its accelerators), normalised
    max_workers: int | None = None  # cap on workers of this type for the job
    # The pod settings of this type's workers where they differ from the job's (None: the job's).
    cpu_milli_per_worker: int | None = None
    memory_per_worker: int | None = None
    tolerations: tuple[Toleration, ...] | None = None
    node_selector: Labels | None = None

    def __post_init__(self) -> None:
        if self.node_selector is not None:
            object.__setattr__(self, "node_selector", _labels(self.node_selector))
        if self.tolerations is not None:
            object.__setattr__(self, "tolerations", tuple(self.tolerations))


@dataclass(frozen=True, order=True)
class WorkerSlot:
    node: str
    type: str


@dataclass(frozen=True)
class JobRequest:
    key: str  # "namespace/name", unique
    priority: int
    created: float  # FCFS tie-break by (created, key)
    min_workers: int
    max_workers: int
    accelerators: tuple[AcceleratorOption, ...]  # accepted types, in the user's preference order
    cpu_milli_per_worker: int = 0
    memory_per_worker: int = 0
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Labels = ()
    placement: str = PLACEMENT_PACK  # Pack | Spread
    current: tuple[WorkerSlot, ...] = ()  # running workers; empty for a pending job
    suspended: bool = False
    avoid: frozenset[str] = frozenset()  # nodes that get no new worker of this job (running ones stay)

    def __post_init__(self) -> None:
        object.__setattr__(self, "avoid", frozenset(self.avoid))
        object.__setattr__(self, "node_selector", _labels(self.node_selector))
        object.__setattr__(self, "accelerators", tuple(self.accelerators))
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        object.__setattr__(self, "current", tuple(self.current))

    # --- the settings of one option's workers: its own, else the job's ---------------------------
    def tolerations_of(self, option: AcceleratorOption) -> tuple[Toleration, ...]:
        return self.tolerations if option.tolerations is None else option.tolerations

    def node_selector_of(self, option: AcceleratorOption) -> Labels:
        return self.node_selector if option.node_selector is None else option.node_selector

    def cpu_milli_of(self, option: AcceleratorOption) -> int:
        c = option.cpu_milli_per_worker
        return self.cpu_milli_per_worker if c is None else c

    def memory_of(self, option: AcceleratorOption) -> int:
        m = option.memory_per_worker
        return self.memory_per_worker if m is None else m


@dataclass(frozen=True)
class JobPlan:
    key: str
    admitted: bool
    workers: tuple[WorkerSlot, ...]  # the full desired set: kept current workers + new ones, sorted
    reason: str | None = None  # CamelCase machine reason when not admitted or not at max
    message: str | None = None  # human sentence saying why
    preempted: tuple[WorkerSlot, ...] = ()  # current workers removed to make room for a higher priority job
    throughput: float = 0.0  # sum of worker_throughput over workers

    def count_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.workers:
            out[w.type] = out.get(w.type, 0) + 1
        return dict(sorted(out.items()))


@dataclass(frozen=True)
class Plan:
    jobs: tuple[JobPlan, ...]  # sorted by key
    _by_key: dict[str, JobPlan] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        jobs = tuple(sorted(self.jobs, key=lambda p: p.key))
        object.__setattr__(self, "jobs", jobs)
        object.__setattr__(self, "_by_key", {p.key: p for p in jobs})

    def get(self, key: str) -> JobPlan | None:
        return self._by_key.get(key)

    def __getitem__(self, key: str) -> JobPlan:
        return self._by_key[key]

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[JobPlan]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def total_throughput(self) -> float:
        return sum(p.throughput for p in self.jobs)
