"""Observed Kubernetes objects (plain JSON dicts) to the planner's inputs: pure functions.

The reconciler lists nodes, pods and jobs once per pass; these functions turn
that snapshot into :mod:`heterotrain_operator.placement` values.  A quantity
parser lives here too, since usage is summed from pod requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from heterotrain_runtime import contract as c

from . import placement as pl
from .desired import JobView

_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{k: Decimal(10) ** (3 * i) for i, k in enumerate(("k", "M", "G", "T", "P", "E"), start=1)},
    **{k: Decimal(2) ** (10 * i) for i, k in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity ("500m", "64Gi", 2) as a Decimal."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _QUANTITY.match(str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return Decimal(m.group(1)) * _SUFFIX[m.group(2)]


def milli(value: Any) -> int:
    return int(parse_quantity(value) * 1000)


def whole(value: Any) -> int:
    return int(parse_quantity(value))


def parse_time(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- pods --------------------------------------------------------------------


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def pod_node(pod: Mapping[str, Any]) -> str | None:
    """The node a pod is on or pinned to (nodeName, else the planner's required affinity)."""
    spec = pod.get("spec", {})
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    if spec.get("schedulingGates"):
        return None
    terms = (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    for term in terms:
        for f in term.get("matchFields", []):
            if (
                f.get("key") == "metadata.name"
                and f.get("operator") == "In"
                and len(f.get("values", [])) == 1
            ):
                return str(f["values"][0])
    return None


def unschedulable(pod: Mapping[str, Any]) -> bool:
    """Pinned to a node by the planner, but the scheduler could not bind it there (capacity raced away)."""
    spec = pod.get("spec", {})
    if spec.get("nodeName") or spec.get("schedulingGates"):
        return False
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return bool(cond.get("reason") == "Unschedulable")
    return False


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """Effective requests of a pod: sum over containers, max with each init container."""
    total: dict[str, Decimal] = {}
    spec = pod.get("spec", {})
    for ctr in spec.get("containers", []):
        for k, v in (ctr.get("resources", {}).get("requests") or {}).items():
            total[k] = total.get(k, Decimal(0)) + parse_quantity(v)
    for ctr in spec.get("initContainers", []):
        for k, v in (ctr.get("resources", {}).get("requests") or {}).items():
            total[k] = max(total.get(k, Decimal(0)), parse_quantity(v))
    return total


def worker_index(pod: Mapping[str, Any]) -> int:
    try:
        return int(pod["metadata"]["labels"][c.LABEL_WORKER_INDEX])
    except (KeyError, ValueError):
        return -1


def worker_type(pod: Mapping[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("labels", {}).get(c.LABEL_ACCELERATOR, ""))


# --- nodes -------------------------------------------------------------------

_STANDARD = {"cpu", "memory", "pods", "ephemeral-storage"}


def node_resource_name(node: Mapping[str, Any]) -> str | None:
    alloc = node.get("status", {}).get("allocatable", {}) or {}
    extended = sorted(
        str(k) for k in alloc if "/" in k and not k.startswith("hugepages-") and k not in _STANDARD
    )
    for k in extended:
        if whole(alloc[k]) > 0:
            return k
    return extended[0] if extended else None


def node_ready(node: Mapping[str, Any]) -> bool:
    for cond in node.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def snapshot(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    planned_pods: set[tuple[str, str]],
) -> pl.ClusterSnapshot:
    """The cluster as the planner sees it.

    ``planned_pods`` are (namespace, name) of the worker pods passed to the
    planner as some job's ``current`` workers: their usage is the planner's to
    count, so it is left out of ``*_used`` here.  Every other live pod bound to
    (or pinned to) a node counts as used capacity.
    """
    used: dict[str, dict[str, Decimal]] = {}
    for pod in pods:
        meta = pod.get("metadata", {})
        if is_terminal(pod) or (meta.get("namespace"), meta.get("name")) in planned_pods:
            continue
        node = pod_node(pod)
        if node is None:
            continue
        acc = used.setdefault(node, {})
        for k, v in pod_requests(pod).items():
            acc[k] = acc.get(k, Decimal(0)) + v
    out = []
    for n in nodes:
        meta = n.get("metadata", {})
        name = str(meta["name"])
        status = n.get("status", {})
        alloc = status.get("allocatable", {}) or {}
        rn = node_resource_name(n)
        u = used.get(name, {})
        out.append(
            pl.Node(
                name=name,
                accelerator=(meta.get("labels") or {}).get(c.LABEL_ACCELERATOR),
                resource_name=rn,
                accelerators_allocatable=whole(alloc.get(rn, 0)) if rn else 0,
                accelerators_used=int(u.get(rn, 0)) if rn else 0,
                cpu_milli_allocatable=milli(alloc.get("cpu", 0)),
                cpu_milli_used=int(u.get("cpu", 0) * 1000),
                memory_allocatable=whole(alloc.get("memory", 0)),
                memory_used=int(u.get("memory", 0)),
                taints=tuple(
                    pl.Taint(
                        key=t.get("key", ""),
                        value=t.get("value", "") or "",
                        effect=t.get("effect", "NoSchedule"),
                    )
                    for t in n.get("spec", {}).get("taints", []) or []
                ),
                ready=node_ready(n),
                unschedulable=bool(n.get("spec", {}).get("unschedulable")),
                labels=tuple(sorted((meta.get("labels") or {}).items())),
            )
        )
    out.sort(key=lambda n: n.name)
    return pl.ClusterSnapshot(nodes=tuple(out))


def job_request(
    job: JobView, current: Iterable[pl.WorkerSlot], max_workers: int | None = None
) -> pl.JobRequest:
    spec = job.spec
    req = spec.resources.requests if spec.resources is not None and spec.resources.requests else {}
    return pl.JobRequest(
        key=job.key,
        priority=spec.priority,
        created=job.created,
        min_workers=spec.workers.min,
        max_workers=max(spec.workers.min, max_workers if max_workers is not None else spec.workers.max),
        accelerators=tuple(
            pl.AcceleratorOption(
                type=a.type,
                resource_name=a.resource_name,
                per_worker=a.per_worker,
                relative_throughput=a.worker_weight,
                max_workers=a.max_workers,
            )
            for a in job.accelerators
        ),
        cpu_milli_per_worker=milli(req["cpu"]) if "cpu" in req else 0,
        memory_per_worker=whole(req["memory"]) if "memory" in req else 0,
        tolerations=tuple(
            pl.Toleration(key=t.key, operator=t.operator or "Equal", value=t.value, effect=t.effect)
            for t in spec.tolerations
        ),
        node_selector=tuple(sorted(spec.node_selector.items())),
        placement=spec.placement,
        current=tuple(sorted(current)),
        suspended=spec.suspend,
    )
