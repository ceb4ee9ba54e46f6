"""Which of a job's workers failed in this pass, and what that asks for: pure.

Four signals, each turned into failure records (reason, pod, node, exit code, time, how it was handled):

* a worker pod that **failed** (its container exited): the kubelet's termination reason and exit code;
* a worker whose **node is lost** (NotReady, deleted, or its Lease no longer renewed while the runtime
  finds the worker silent): ``NodeLost``, the node named;
* a worker the runtime's heartbeats name **stale** in ``status.progress`` (silent: a stopped process, a
  partition; stuck: it holds the world up): ``Hung``;
* a worker whose training process the launcher **restarted in place** (the count in ``status.progress``
  grew): the process's exit code, handled ``RestartedInPlace`` (nothing to delete).

Every failure counts against ``maxRestarts``.  Lost and hung workers are deleted at once (grace 0: their
process cannot checkpoint, and their node may never confirm), failed ones normally.  The last failures are
kept in ``status.failures``; a node where ``badNodeFailures`` failures happened within
``failureWindowSeconds`` (or that was lost) is avoided for new workers of the job until the window has
passed; and while failures come in quick succession, new workers wait (exponential backoff).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from heterotrain_api import (
    ACTION_REPLACED,
    ACTION_RESTARTED_IN_PLACE,
    FAILURE_HISTORY,
    REASON_HUNG,
    REASON_NODE_LOST,
    STALE_SILENT,
    ProgressStatus,
    read_progress,
)
from heterotrain_contract import parse_restart_message, processes_condition, restart_backoff

from . import desired as d
from . import observe as o

Pod = Mapping[str, Any]
Delete = tuple[str, str, str]  # (pod, uid, reason)
Event = tuple[str, str, str]  # (Normal|Warning, reason, message)

#: Deletions for these reasons use grace 0: the process cannot stop by itself, the node may never answer.
FORCE_DELETE_REASONS = frozenset({REASON_HUNG, REASON_NODE_LOST})
AVOID_REPEATED = "RepeatedFailures"
#: Without a report for this many heartbeat timeouts, the reporter itself is taken as silent.
REPORTER_SILENT_TIMEOUTS = 3


def fmt_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NodeHealth:
    """What the operator knows of a node a worker runs on."""

    ready: bool = True
    gone: bool = False  # deleted, or being deleted
    lease_age: float | None = None  # seconds since its Lease was renewed; None: not looked at
    lease_interval: float = 10.0  # how often its kubelet renews the Lease (a quarter of its duration)


@dataclass(frozen=True)
class Facts:
    """What the controller observed beyond the job's pods (None where it did not look)."""

    nodes: Mapping[str, NodeHealth] | None = None  # every node; a worker's node missing here is gone
    progress_age: float | None = None  # seconds since the operator saw status.progress change
    # Nodes a pod being deleted is still bound to (observe.releasing_nodes): a worker planned there that the
    # scheduler cannot bind yet waits for that pod to go, it is not placed again.
    releasing: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Faults:
    """The failures of this pass and the job's failure state after them."""

    restarts: int
    last_failure: Mapping[str, Any] | None
    history: tuple[Mapping[str, Any], ...] = ()
    new: tuple[Mapping[str, Any], ...] = ()
    in_place: int = 0
    pod_restarts: int = 0
    counted: Mapping[str, int] = field(default_factory=dict)  # in-place restarts counted per pod
    delete: tuple[Delete, ...] = ()
    avoided: tuple[Mapping[str, Any], ...] = ()
    hold_until: float | None = None  # no new workers before this time (restart backoff)
    events: tuple[Event, ...] = ()

    @property
    def gone(self) -> frozenset[str]:
        """Pods that leave the world in this pass."""
        return frozenset(name for name, _, _ in self.delete)

    @property
    def lost(self) -> tuple[str, ...]:
        """Pods whose worker was lost in this pass (failed, hung, node lost, or process restarted)."""
        return tuple(str(f["pod"]) for f in self.new)

    def avoid_nodes(self) -> frozenset[str]:
        return frozenset(str(a["node"]) for a in self.avoided)


def _epoch_seconds(value: Any) -> float:
    return o.parse_time(value) if isinstance(value, str) else 0.0


def unchanged(job: d.JobView) -> Faults:
    """The failure state as the old status has it (a finished, stalled or suspended job)."""
    st = job.status
    return Faults(
        restarts=int(st.get("restarts") or 0),
        last_failure=st.get("lastFailure"),
        history=tuple(st.get("failures") or ()),
        in_place=int(st.get("inPlaceRestarts") or 0),
        pod_restarts=int(st.get("podRestarts") or 0),
        counted=dict(st.get("countedProcessRestarts") or {}),
        avoided=tuple(st.get("avoidedNodes") or ()),
    )


# =============================================================================
# the signals
# =============================================================================


def pod_failure(pod: Pod, now: datetime) -> dict[str, Any]:
    """The record of a failed pod: the worker container's termination reason and code."""
    status = pod.get("status", {})
    out: dict[str, Any] = {
        "pod": pod["metadata"]["name"],
        "node": o.pod_node(pod),
        "time": fmt_time(now),
        "reason": status.get("reason") or "Error",
        "action": ACTION_REPLACED,
    }
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if cs.get("name") == d.WORKER_CONTAINER and term:
            out["reason"] = term.get("reason") or "Error"
            if term.get("exitCode") is not None:
                out["exitCode"] = int(term["exitCode"])
            if term.get("message"):
                out["message"] = str(term["message"])[-1024:]
    if "message" not in out and status.get("message"):
        out["message"] = str(status["message"])[-1024:]
    return {k: v for k, v in out.items() if v is not None}


def _node_lost(node: str | None, facts: Facts) -> str | None:
    """Why the node is lost, or None (also when the operator does not know the nodes)."""
    if node is None or facts.nodes is None:
        return None
    health = facts.nodes.get(node)
    if health is None or health.gone:
        return f"node {node} is gone"
    if not health.ready:
        return f"node {node} is not ready"
    return None


def _lease_stopped(node: str | None, facts: Facts, silent_for: float) -> bool:
    """The node's kubelet stopped renewing its Lease when the worker went silent: the node died with it.

    No renewal since the worker's last beat (within a second), and a renewal was due since: a node whose
    kubelet still renews while one of its workers is silent has a hung worker, not a lost node.
    """
    health = facts.nodes.get(node) if node is not None and facts.nodes is not None else None
    if health is None or health.lease_age is None:
        return False
    return health.lease_age >= silent_for - 1.0 and health.lease_age > health.lease_interval + 1.0


def _world(job: d.JobView) -> tuple[int, dict[str, int]]:
    m = job.status.get("membership") or {}
    return int(m.get("epoch") or 0), {
        str(x.get("pod")): int(x.get("rank") or 0) for x in m.get("world") or []
    }


@dataclass(frozen=True)
class Stale:
    reason: str  # Silent, Stuck, or why the reporter is taken as silent
    seconds: float  # for how long, as of now (the report's age included)
    silent: bool  # no beat (as opposed to stuck)


def stale_pods(job: d.JobView, progress: ProgressStatus | None, facts: Facts) -> dict[str, Stale]:
    """Pod -> what the runtime says of it, for the pods of the current world it reports silent or stuck.

    A report about another epoch is not acted on (its pods may have left, their names been reused).
    When the reports themselves stopped for long, the reporter is taken as silent.
    """
    if progress is None:
        return {}
    epoch, world = _world(job)
    if progress.epoch != epoch:
        return {}
    age = facts.progress_age or 0.0
    out = {
        s.pod: Stale(s.reason, s.seconds + age, s.reason == STALE_SILENT)
        for s in progress.stale_ranks
        if s.pod in world
    }
    limit = REPORTER_SILENT_TIMEOUTS * job.spec.fault_tolerance.heartbeat_timeout_seconds
    if age > limit and progress.reporter in world:
        out.setdefault(progress.reporter, Stale(f"without a progress report for {age:.0f}s", age, True))
    return out


def _ran_through(pod: Pod, stale: Stale, now: datetime) -> bool:
    """The pod already ran when the silence began: the report is about it, not about an earlier pod of the
    same name (names are reused once a pod is gone)."""
    since = o.running_since(pod)
    return since is None or since <= now.timestamp() - stale.seconds + 1.0


def _stale_record(pod: Pod, stale: Stale, facts: Facts, now: datetime) -> dict[str, Any]:
    node = o.pod_node(pod)
    lost = stale.silent and _lease_stopped(node, facts, stale.seconds)
    reason = REASON_NODE_LOST if lost else REASON_HUNG
    detail = f"its node {node} stopped renewing its Lease with it" if lost else "it holds the world up"
    record = {
        "pod": pod["metadata"]["name"],
        "node": node,
        "time": fmt_time(now),
        "reason": reason,
        "action": ACTION_REPLACED,
        "message": f"the runtime reports it {stale.reason} for {stale.seconds:.0f}s: {detail}",
    }
    return {k: v for k, v in record.items() if v is not None}


def _launcher_counts(
    progress: ProgressStatus | None, alive: Mapping[str, Pod], world: Mapping[str, int], epoch: int
) -> dict[str, tuple[int, int | None]]:
    """Pod -> (in-place restarts, last exit code) as its launcher says: in the pod's ProcessesReady
    condition (set the moment a process fails, in any epoch), or in the runtime's report of this epoch."""
    out: dict[str, tuple[int, int | None]] = {}
    if progress is not None and progress.epoch == epoch:
        for pod, rep in progress.restarts_by_pod().items():
            if pod in alive and pod in world:
                out[pod] = (rep.count, rep.exit_code)
    for pod, p in alive.items():
        cond = processes_condition(p)
        said = parse_restart_message(str(cond.get("message") or "")) if cond is not None else None
        if said is not None and said[0] > out.get(pod, (0, None))[0]:
            out[pod] = said  # the same counter: the larger is the newer
    return out


def in_place_restarts(
    job: d.JobView, progress: ProgressStatus | None, alive: Sequence[Pod], now: datetime
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Failures of processes the launcher restarted in place since last counted, and the new tally."""
    old = {str(k): int(v) for k, v in (job.status.get("countedProcessRestarts") or {}).items()}
    names = {p["metadata"]["name"]: p for p in alive}
    counted = {pod: n for pod, n in old.items() if pod in names}
    epoch, world = _world(job)
    records = []
    for pod, (count, exit_code) in sorted(_launcher_counts(progress, names, world, epoch).items()):
        before = counted.get(pod, 0)
        for _ in range(max(0, count - before)):
            rec = {
                "pod": pod,
                "node": o.pod_node(names[pod]),
                "time": fmt_time(now),
                "reason": "Error",
                "action": ACTION_RESTARTED_IN_PLACE,
                "exitCode": exit_code,
                "message": "the training process exited; the launcher restarted it in its pod",
            }
            records.append({k: v for k, v in rec.items() if v is not None})
        counted[pod] = max(before, count)
    return records, counted


# =============================================================================
# the decision
# =============================================================================


@dataclass(frozen=True)
class _Found:
    records: list[dict[str, Any]]
    delete: list[Delete]


def _replaced(
    job: d.JobView, failed: Sequence[Pod], alive: Sequence[Pod], facts: Facts, now: datetime
) -> _Found:
    """Failed pods, and live ones lost with their node or reported stale: each replaced by a new pod."""
    stale = stale_pods(job, read_progress(job.status), facts)
    records: list[dict[str, Any]] = []
    deletes: list[Delete] = []
    for p in failed:
        rec = pod_failure(p, now)
        records.append(rec)
        deletes.append((p["metadata"]["name"], p["metadata"]["uid"], "WorkerFailed"))
    for p in alive:
        name = p["metadata"]["name"]
        lost = _node_lost(o.pod_node(p) if p.get("spec", {}).get("nodeName") else None, facts)
        if lost is not None:
            rec = {"pod": name, "node": o.pod_node(p), "time": fmt_time(now), "reason": REASON_NODE_LOST}
            records.append({**rec, "action": ACTION_REPLACED, "message": lost})
            deletes.append((name, p["metadata"]["uid"], REASON_NODE_LOST))
        elif name in stale and o.is_running(p) and _ran_through(p, stale[name], now):
            rec = _stale_record(p, stale[name], facts, now)
            records.append(rec)
            deletes.append((name, p["metadata"]["uid"], str(rec["reason"])))
    return _Found(records, deletes)


def _avoided(
    job: d.JobView, history: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], now: float
) -> tuple[list[dict[str, Any]], list[Event]]:
    ft = job.spec.fault_tolerance
    window = float(ft.failure_window_seconds)
    kept = {
        str(a["node"]): dict(a)
        for a in job.status.get("avoidedNodes") or ()
        if _epoch_seconds(a.get("until")) > now
    }
    events: list[Event] = []
    until = fmt_time(datetime.fromtimestamp(now + window, tz=UTC))
    for rec in new:
        node = rec.get("node")
        if not node:
            continue
        node = str(node)
        count = sum(
            1 for f in history if f.get("node") == node and _epoch_seconds(f.get("time")) > now - window
        )
        reason = REASON_NODE_LOST if rec.get("reason") == REASON_NODE_LOST else AVOID_REPEATED
        if reason == AVOID_REPEATED and count < ft.bad_node_failures:
            continue
        if node not in kept:
            why = "it was lost" if reason == REASON_NODE_LOST else f"{count} failures within {window:.0f}s"
            events.append(("Warning", "NodeAvoided", f"no new workers on {node} until {until}: {why}"))
        kept[node] = {"node": node, "reason": reason, "failures": count, "until": until}
    return [kept[k] for k in sorted(kept)], events


def _event(rec: Mapping[str, Any], restarts: int, max_restarts: int) -> Event:
    code = rec.get("exitCode")
    how = "restarted in place" if rec.get("action") == ACTION_RESTARTED_IN_PLACE else "replaced"
    where = f" on {rec['node']}" if rec.get("node") else ""
    reason = "WorkerRestarted" if rec.get("action") == ACTION_RESTARTED_IN_PLACE else "WorkerFailed"
    return (
        "Warning",
        reason,
        f"worker {rec['pod']}{where} failed: {rec['reason']}"
        + (f" (exit code {code})" if code is not None else "")
        + f"; {how}; restart {restarts} of {max_restarts}",
    )


def detect(
    job: d.JobView,
    failed: Sequence[Pod],
    alive: Sequence[Pod],
    facts: Facts | None,
    now: datetime,
) -> Faults:
    """This pass's failures of an active job and the failure state after them (see the module docstring)."""
    facts = facts or Facts()
    t = now.timestamp()
    ft = job.spec.fault_tolerance
    found = _replaced(job, failed, alive, facts, now)
    gone = {name for name, _, _ in found.delete}
    in_place, counted = in_place_restarts(
        job, read_progress(job.status), [p for p in alive if p["metadata"]["name"] not in gone], now
    )
    new = [*found.records, *in_place]
    old = unchanged(job)
    history = (*old.history, *new)[-FAILURE_HISTORY:]
    restarts = old.restarts + len(new)
    events = []
    for i, rec in enumerate(new):
        events.append(_event(rec, old.restarts + i + 1, ft.max_restarts))
    avoided, avoid_events = _avoided(job, history, new, t)
    window = float(ft.failure_window_seconds)
    recent = [f for f in history if _epoch_seconds(f.get("time")) > t - window]
    delay = restart_backoff(  # the contract's rule: the launcher's in-place restarts follow it too
        len(recent), float(ft.restart_backoff_seconds), float(ft.restart_backoff_limit_seconds)
    )
    newest = max((_epoch_seconds(f.get("time")) for f in recent), default=0.0)
    hold = newest + delay if delay > 0 and newest + delay > t else None
    return Faults(
        restarts=restarts,
        last_failure=new[-1] if new else old.last_failure,
        history=tuple(history),
        new=tuple(new),
        in_place=old.in_place + len(in_place),
        pod_restarts=old.pod_restarts + len(found.records),
        counted=counted,
        delete=tuple(found.delete),
        avoided=tuple(avoided),
        hold_until=hold,
        events=(*events, *avoid_events),
    )


# =============================================================================
# facts the controller gathers
# =============================================================================


def node_health(nodes: Sequence[Mapping[str, Any]]) -> dict[str, NodeHealth]:
    """Every node's readiness, as the snapshot has it (Lease ages are looked up only where needed)."""
    return {
        str(n["metadata"]["name"]): NodeHealth(ready=o.node_ready(n), gone=o.is_deleting(n)) for n in nodes
    }


def lease_age(lease: Mapping[str, Any] | None, now: float) -> float | None:
    """Seconds since a node Lease was renewed (None: no Lease, or never renewed)."""
    renew = ((lease or {}).get("spec") or {}).get("renewTime")
    return max(0.0, now - o.parse_time(renew)) if renew else None


def lease_interval(lease: Mapping[str, Any] | None) -> float:
    """How often a kubelet renews its node Lease: a quarter of the Lease's duration (kubelet's rule)."""
    duration = ((lease or {}).get("spec") or {}).get("leaseDurationSeconds") or 40
    return float(duration) / 4


def progress_marker(status: Mapping[str, Any]) -> str | None:
    """What changes with every progress report (None: no report)."""
    p = status.get("progress")
    if not isinstance(p, Mapping):
        return None
    return f"{p.get('time')}/{p.get('reporter')}/{p.get('step')}/{p.get('epoch')}"


class ProgressWatch:
    """When the operator last saw each job's progress report change (in memory: a restart starts afresh)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def age(self, uid: str, status: Mapping[str, Any], now: float) -> float | None:
        marker = progress_marker(status)
        if marker is None:
            self._seen.pop(uid, None)
            return None
        seen = self._seen.get(uid)
        if seen is None or seen[0] != marker:
            self._seen[uid] = (marker, now)
            return 0.0
        return now - seen[1]

    def forget_except(self, uids: set[str]) -> None:
        for uid in set(self._seen) - uids:
            del self._seen[uid]
