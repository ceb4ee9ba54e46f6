"""Observed Kubernetes objects (plain JSON dicts) to the planner's inputs: pure functions.

The reconciler reads one snapshot of nodes, pods and jobs per pass from the
watch-fed cache (:mod:`heterotrain_operator.cache`); these functions turn it
into :mod:`heterotrain_operator.placement` values (usage is summed from pod
requests, read with the one quantity parser of :mod:`heterotrain_contract`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import heterotrain_contract as c
from heterotrain_api import ResolvedAccelerator
from heterotrain_contract import parse_quantity

from . import placement as pl
from .jobview import JobView


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


def is_running(pod: Mapping[str, Any]) -> bool:
    """Running with an address: a worker that can be in the world."""
    st = pod.get("status", {})
    return st.get("phase") == "Running" and bool(st.get("podIP"))


def running_since(pod: Mapping[str, Any]) -> float | None:
    """When a running pod's worker container started (else its Ready condition's transition, else its start)."""
    st = pod.get("status", {})
    for cs in st.get("containerStatuses") or []:
        started = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
        if started:
            return parse_time(started)
    for cond in st.get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True" and cond.get("lastTransitionTime"):
            return parse_time(cond["lastTransitionTime"])
    return parse_time(st["startTime"]) if st.get("startTime") else None


def finished_at(pod: Mapping[str, Any]) -> float | None:
    """When a pod's worker container ended (its terminated state's finishedAt; None: not known)."""
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        done = ((cs.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if done:
            return parse_time(done)
    return None


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


#: How long past its deletion deadline a pod being deleted is still taken to be on its way out. After that
#: it is stuck (a finalizer, a kubelet that never confirms) and what it holds counts as used again.
RELEASE_SLACK_SECONDS = 30.0


def releasing(pod: Mapping[str, Any], now: float) -> bool:
    """Being deleted, and not more than :data:`RELEASE_SLACK_SECONDS` past its deadline (the
    ``deletionTimestamp``: when it was deleted plus its grace period).  What it holds on its node is on the
    way back: the planner may give it to another worker, which the scheduler binds once the pod is gone
    (kube-scheduler's preemption works so too: the victims terminate while the preemptor waits)."""
    ts = pod.get("metadata", {}).get("deletionTimestamp")
    return bool(ts) and now <= parse_time(ts) + RELEASE_SLACK_SECONDS


def releasing_nodes(pods: Iterable[Mapping[str, Any]], now: float) -> frozenset[str]:
    """Nodes that a pod being deleted (see :func:`releasing`) is still bound to."""
    return frozenset(
        str(p["spec"]["nodeName"])
        for p in pods
        if (p.get("spec") or {}).get("nodeName") and not is_terminal(p) and releasing(p, now)
    )


#: How long a worker pinned to a node, which the scheduler could not bind while a pod there was being
#: deleted, still waits once that pod is gone: kube-scheduler retries it then, after its backoff (at most
#: 10 s by default).
SCHEDULER_RETRY_SECONDS = 15.0


class Releases:
    """The nodes where a worker the scheduler could not bind yet waits instead of being placed again: a
    pod being deleted is bound there, or was within :data:`SCHEDULER_RETRY_SECONDS` (kept across passes)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}  # node -> the last pass that found a pod being deleted there

    def nodes(self, pods: Iterable[Mapping[str, Any]], now: float) -> frozenset[str]:
        for n in releasing_nodes(pods, now):
            self._seen[n] = now
        self._seen = {n: t for n, t in self._seen.items() if now - t <= SCHEDULER_RETRY_SECONDS}
        return frozenset(self._seen)


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


def pod_accelerators(pod: Mapping[str, Any], resource_name: str) -> int:
    """Accelerators (units of ``resource_name``) a worker pod's containers requested; at least 1.

    A worker runs one training process per accelerator: this is its membership record's ``slots``.
    """
    n = pod_requests(pod).get(resource_name)
    if n is None:  # limits alone (extended resources: requests default to limits)
        n = Decimal(0)
        for ctr in pod.get("spec", {}).get("containers", []):
            n += parse_quantity((ctr.get("resources", {}).get("limits") or {}).get(resource_name, 0))
    return max(1, int(n))


Pod = Mapping[str, Any]


def owned_pods(job: JobView, pods: Sequence[Pod]) -> list[Pod]:
    """Worker pods controlled by this job (same uid: a recreated job never adopts old pods)."""
    out = []
    for p in pods:
        refs = p.get("metadata", {}).get("ownerReferences") or []
        if any(r.get("uid") == job.uid and r.get("controller") for r in refs):
            out.append(p)
    return sorted(out, key=worker_index)


def live(pods: Sequence[Pod]) -> list[Pod]:
    return [p for p in pods if not is_terminal(p) and not is_deleting(p)]


def current_slots(pods: Sequence[Pod], releasing: frozenset[str] = frozenset()) -> list[pl.WorkerSlot]:
    """The workers a job already has, for the planner: live pods with a node.  A pod the scheduler could
    not bind is not one, unless its node is ``releasing`` (:func:`releasing_nodes`): it waits for that."""
    out = []
    for p in live(pods):
        node = pod_node(p)
        if node is not None and (node in releasing or not unschedulable(p)):
            out.append(pl.WorkerSlot(node=node, type=worker_type(p)))
    return out


def planner_max_workers(job: JobView, pods: Sequence[Pod]) -> int:
    """With onWorkerFailure=Shrink, a started job does not replace lost workers."""
    spec = job.spec
    started = bool((job.status.get("membership") or {}).get("world")) or job.status.get("startTime")
    if spec.fault_tolerance.on_worker_failure == "Shrink" and started:
        return max(spec.workers.min, min(spec.workers.max, len(current_slots(pods))))
    return spec.workers.max


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
    now: float,
) -> pl.ClusterSnapshot:
    """The cluster as the planner sees it.

    ``planned_pods`` are (namespace, name) of the worker pods passed to the
    planner as some job's ``current`` workers: their usage is the planner's to
    count, so it is left out of ``*_used`` here.  Every other live pod bound to
    (or pinned to) a node counts as used capacity, except a pod being deleted
    (:func:`releasing`): a plan that deleted a pod to make room (a preemption, a
    move) is the plan of the next pass too, while that pod terminates.
    """
    used: dict[str, dict[str, Decimal]] = {}
    for pod in pods:
        meta = pod.get("metadata", {})
        if (
            is_terminal(pod)
            or releasing(pod, now)
            or (meta.get("namespace"), meta.get("name")) in planned_pods
        ):
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


def _tolerations(ts: Iterable[Any]) -> tuple[pl.Toleration, ...]:
    return tuple(
        pl.Toleration(key=t.key, operator=t.operator or "Equal", value=t.value, effect=t.effect) for t in ts
    )


def _option(job: JobView, a: ResolvedAccelerator) -> pl.AcceleratorOption:
    """One type as the planner sees it: with its workers' own pod settings where they differ from the job's
    (its nodeSelector, tolerations, cpu and memory requests: the merge of :class:`heterotrain_api.PodSettings`)."""
    spec = job.spec
    job_req = spec.resources.requests if spec.resources is not None and spec.resources.requests else {}
    req = dict(a.pod.requests)
    cpu, mem = req.get("cpu"), req.get("memory")
    return pl.AcceleratorOption(
        type=a.type,
        resource_name=a.resource_name,
        per_worker=a.per_worker,
        worker_throughput=a.worker_weight,
        max_workers=a.max_workers,
        cpu_milli_per_worker=None if cpu == job_req.get("cpu") else (milli(cpu) if cpu is not None else 0),
        memory_per_worker=None if mem == job_req.get("memory") else (whole(mem) if mem is not None else 0),
        tolerations=None if a.pod.tolerations == tuple(spec.tolerations) else _tolerations(a.pod.tolerations),
        node_selector=None if dict(a.pod.node_selector) == spec.node_selector else a.pod.node_selector,
    )


def job_request(
    job: JobView,
    current: Iterable[pl.WorkerSlot],
    max_workers: int | None = None,
    avoid: Iterable[str] = (),
) -> pl.JobRequest:
    spec = job.spec
    req = spec.resources.requests if spec.resources is not None and spec.resources.requests else {}
    return pl.JobRequest(
        key=job.key,
        priority=spec.priority,
        created=job.created,
        min_workers=spec.workers.min,
        max_workers=max(spec.workers.min, max_workers if max_workers is not None else spec.workers.max),
        accelerators=tuple(_option(job, a) for a in job.accelerators),
        cpu_milli_per_worker=milli(req["cpu"]) if "cpu" in req else 0,
        memory_per_worker=whole(req["memory"]) if "memory" in req else 0,
        tolerations=_tolerations(spec.tolerations),
        node_selector=tuple(sorted(spec.node_selector.items())),
        placement=spec.placement,
        current=tuple(sorted(current)),
        suspended=spec.suspend,
        avoid=frozenset(avoid),
    )
