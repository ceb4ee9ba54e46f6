"""The level-based reconcile of one HeteroTrainJob: a pure function.

Input: the job (spec, old status), its worker pods as observed, the planner's
decision for it, and the time.  Output: the status it should have, the pods to
apply and delete, and the Events to post.  Nothing here talks to Kubernetes;
:mod:`heterotrain_operator.controller` gathers the inputs and carries out the
outcome, every pass, whatever happened before (no event replay).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from heterotrain_runtime import contract as c

from . import desired as d
from . import observe as o
from . import placement as pl
from .settings import Settings

TERMINAL = ("Succeeded", "Failed")
CONDITIONS = (
    "Ready",
    "Reconciling",
    "Stalled",
    "Admitted",
    "Running",
    "Recovering",
    "Suspended",
    "Succeeded",
    "Failed",
)
WARNING_CONDITIONS = {"Stalled", "Failed", "Recovering"}


@dataclass(frozen=True)
class Stall:
    """A semantic error the schema cannot catch: the job waits for the user, nothing is created."""

    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any]
    apply: list[dict[str, Any]] = field(default_factory=list)  # pods to server-side apply, in order
    delete: list[tuple[str, str, str]] = field(default_factory=list)  # (pod, uid, reason)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)
    delete_job: bool = False


def fmt_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def owned_pods(job: d.JobView, pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Worker pods controlled by this job (same uid: a recreated job never adopts old pods)."""
    out = []
    for p in pods:
        refs = p.get("metadata", {}).get("ownerReferences") or []
        if any(r.get("uid") == job.uid and r.get("controller") for r in refs):
            out.append(p)
    return sorted(out, key=o.worker_index)


def live(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if not o.is_terminal(p) and not o.is_deleting(p)]


def current_slots(pods: Sequence[Mapping[str, Any]]) -> list[pl.WorkerSlot]:
    """The workers a job already has, for the planner: live pods with a node."""
    out = []
    for p in live(pods):
        node = o.pod_node(p)
        if node is not None and not o.unschedulable(p):
            out.append(pl.WorkerSlot(node=node, type=o.worker_type(p)))
    return out


def planner_max_workers(job: d.JobView, pods: Sequence[Mapping[str, Any]]) -> int:
    """With onWorkerFailure=Shrink, a started job does not replace lost workers."""
    spec = job.spec
    started = bool((job.status.get("membership") or {}).get("world")) or job.status.get("startTime")
    if spec.fault_tolerance.on_worker_failure == "Shrink" and started:
        return max(spec.workers.min, min(spec.workers.max, len(current_slots(pods))))
    return spec.workers.max


def failure_of(pod: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The lastFailure record of a failed pod: the worker container's termination reason and code."""
    status = pod.get("status", {})
    out: dict[str, Any] = {
        "pod": pod["metadata"]["name"],
        "time": fmt_time(now),
        "reason": status.get("reason") or "Error",
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
    return out


def _is_running(pod: Mapping[str, Any]) -> bool:
    st = pod.get("status", {})
    return st.get("phase") == "Running" and bool(st.get("podIP"))


def _conditions(
    old: Sequence[Mapping[str, Any]],
    values: Mapping[str, tuple[bool, str, str]],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    prev = {cnd.get("type"): cnd for cnd in old}
    out = []
    for t in CONDITIONS:
        ok, reason, message = values.get(t, (False, "NotApplicable", ""))
        st = "True" if ok else "False"
        p = prev.get(t)
        since = p.get("lastTransitionTime") if p and p.get("status") == st else fmt_time(now)
        out.append(
            {
                "type": t,
                "status": st,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return out


def _mix(counts: Mapping[str, int]) -> str:
    return ",".join(f"{t}:{n}" for t, n in sorted(counts.items()) if n > 0)


def reconcile_job(
    job: d.JobView,
    pods: Sequence[Mapping[str, Any]],
    job_plan: pl.JobPlan | None,
    settings: Settings,
    now: datetime,
    stall: Stall | None = None,
) -> Outcome:
    old = job.status
    spec = job.spec
    pods = owned_pods(job, pods)
    alive = live(pods)
    failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed" and not o.is_deleting(p)]
    succeeded = [p for p in pods if p.get("status", {}).get("phase") == "Succeeded"]

    out = Outcome(status={})
    restarts = int(old.get("restarts") or 0)
    last_failure = old.get("lastFailure")
    phase = old.get("phase") or "Pending"
    completion = old.get("completionTime")
    start_time = old.get("startTime")
    waiting: tuple[str, str] | None = None
    admitted = False
    desired_slots: list[pl.WorkerSlot] = []
    values: dict[str, tuple[bool, str, str]] = {}

    def delete_all(reason: str) -> None:
        for p in alive:
            out.delete.append((p["metadata"]["name"], p["metadata"]["uid"], reason))

    if phase in TERMINAL:
        delete_all("JobFinished")
        ttl = spec.ttl_seconds_after_finished
        if ttl is not None and completion and now.timestamp() - o.parse_time(completion) >= ttl:
            out.delete_job = True
    elif stall is not None:
        phase = "Pending"
        values["Stalled"] = (True, stall.reason, stall.message)
    elif spec.suspend:
        delete_all("Suspended")
        if phase != "Suspended":
            out.events.append(("Normal", "Suspended", f"suspended: stopping {len(alive)} workers"))
        phase = "Suspended"
        values["Suspended"] = (True, "Suspended", "spec.suspend is true; checkpoints are kept")
    else:
        if phase == "Suspended":
            out.events.append(
                ("Normal", "Resumed", "spec.suspend is false: resuming from the latest checkpoint")
            )
            phase = "Pending"
        for p in failed:
            restarts += 1
            last_failure = failure_of(p, now)
            out.delete.append((p["metadata"]["name"], p["metadata"]["uid"], "WorkerFailed"))
            code = last_failure.get("exitCode")
            out.events.append(
                (
                    "Warning",
                    "WorkerFailed",
                    f"worker {last_failure['pod']} failed: {last_failure['reason']}"
                    + (f" (exit code {code})" if code is not None else "")
                    + f"; restart {restarts} of {spec.fault_tolerance.max_restarts}",
                )
            )
        if restarts > spec.fault_tolerance.max_restarts:
            phase = "Failed"
            completion = fmt_time(now)
            delete_all("JobFailed")
            values["Failed"] = (
                True,
                "MaxRestartsExceeded",
                f"{restarts} worker failures exceed spec.faultTolerance.maxRestarts="
                f"{spec.fault_tolerance.max_restarts}",
            )
        elif succeeded and not failed:
            if not alive:
                phase = "Succeeded"
                completion = fmt_time(now)
                values["Succeeded"] = (True, "Completed", f"{len(succeeded)} workers completed")
            else:
                desired_slots = current_slots(alive)  # finishing: no new workers, no moves
                admitted = True
        else:
            _place(job, alive, pods, job_plan, settings, out)
            admitted = bool(job_plan and job_plan.admitted)
            desired_slots = list(job_plan.workers) if admitted and job_plan else []
            if job_plan is not None and not job_plan.admitted:
                waiting = (
                    job_plan.reason or "WaitingForCapacity",
                    job_plan.message or "waiting for capacity",
                )
            elif job_plan is not None and job_plan.reason and len(desired_slots) < spec.workers.max:
                waiting = (job_plan.reason, job_plan.message or "")
            if job_plan is not None and job_plan.preempted:
                out.events.append(
                    (
                        "Warning",
                        "Preempted",
                        f"{len(job_plan.preempted)} workers removed for a higher-priority job",
                    )
                )

    # --- membership: the world of running workers -----------------------------------------
    deleting = {name for name, _, _ in out.delete}
    kept = [p for p in alive if p["metadata"]["name"] not in deleting]
    running = [p for p in kept if _is_running(p)]
    old_mem = old.get("membership") or {}
    old_world = old_mem.get("world") or []
    epoch = int(old_mem.get("epoch") or 0)
    members = []
    for p in running:
        t = o.worker_type(p)
        try:
            weight = job.accelerator(t).worker_weight
        except KeyError:
            continue
        members.append(
            {"pod": p["metadata"]["name"], "type": t, "address": p["status"]["podIP"], "weight": weight}
        )
    same = [(m["pod"], m["address"]) for m in members] == [
        (m.get("pod"), m.get("address")) for m in old_world
    ]
    world = old_world
    if phase in TERMINAL or phase == "Suspended" or stall is not None:
        new_world: list[dict[str, Any]] | None = [] if old_world else None
    elif same or succeeded:
        # Unchanged, or finishing: workers that completed leave no new epoch behind them.
        new_world = None
    elif len(members) >= spec.workers.min and (old_world or start_time or len(members) >= len(desired_slots)):
        new_world = members
    elif old_world and len(members) < spec.workers.min:
        new_world = []  # below the gang minimum: the survivors pause until the world is whole again
    else:
        new_world = None
    if new_world is not None:
        epoch += 1
        world = [{**m, "rank": r} for r, m in enumerate(new_world)]
        out.events.append(
            (
                "Normal",
                "MembershipChanged",
                f"epoch {epoch}: {len(world)} workers ({_mix(Counter(m['type'] for m in world))})",
            )
        )

    if phase not in TERMINAL and phase != "Suspended" and stall is None:
        complete = bool(world) and len(world) == len(desired_slots) and len(world) >= spec.workers.min
        if complete and not succeeded:
            phase = "Running"
            start_time = start_time or fmt_time(now)
        elif start_time:
            phase = "Recovering" if not succeeded else "Running"
        elif admitted:
            phase = "Admitted"
        else:
            phase = "Pending"

    # --- conditions ----------------------------------------------------------------------
    by_type_desired = Counter(s.type for s in desired_slots)
    by_type_ready = Counter(m["type"] for m in world)
    if phase not in TERMINAL and stall is None and phase != "Suspended":
        if admitted:
            values["Admitted"] = (
                True,
                "Admitted",
                f"placed {len(desired_slots)} workers: {_mix(by_type_desired)}",
            )
        else:
            reason, message = waiting or ("WaitingForCapacity", "waiting for capacity")
            values["Admitted"] = (False, reason, message)
    if phase == "Running":
        values["Running"] = (True, "Running", f"{len(world)} workers training ({_mix(by_type_ready)})")
        values["Ready"] = (True, "Running", "all planned workers are in the world")
    if phase == "Succeeded":
        values["Ready"] = (True, "Succeeded", "the job completed")
    if phase == "Recovering":
        values["Recovering"] = (
            True,
            "WorkerLost",
            f"{len(world)} of {len(desired_slots)} workers in the world; waiting for the rest",
        )
    if phase in ("Pending", "Admitted", "Recovering"):
        values["Reconciling"] = (
            True,
            waiting[0] if waiting and phase == "Pending" else phase,
            waiting[1] if waiting and phase == "Pending" else f"job is {phase}",
        )
    if phase == "Failed":
        values["Stalled"] = values.get(
            "Stalled", (True, "Failed", values.get("Failed", (True, "Failed", ""))[2])
        )
    status: dict[str, Any] = {
        "observedGeneration": job.generation,
        "phase": phase,
        "conditions": _conditions(old.get("conditions") or [], values, job.generation, now),
        "workers": {"desired": len(desired_slots), "ready": len(world)},
        "mix": _mix(by_type_ready),
        "membership": {"epoch": epoch, "masterPort": c.DEFAULT_MASTER_PORT, "world": world},
        "placement": _placement_of(kept, out.apply),
        "restarts": restarts,
    }
    by_type = {
        t: {"desired": by_type_desired.get(t, 0), "ready": by_type_ready.get(t, 0)}
        for t in sorted(set(by_type_desired) | set(by_type_ready))
    }
    if by_type:  # an empty map would reach the API server as null through server-side apply
        status["workers"]["byType"] = by_type
    if waiting and phase not in TERMINAL:
        status["waitingReason"], status["waitingMessage"] = waiting
    # lastCheckpoint is not the operator's: the runtime reports it.
    for key, value in (
        ("lastFailure", last_failure),
        ("startTime", start_time),
        ("completionTime", completion),
    ):
        if value:
            status[key] = value
    out.status = status

    # --- events on condition transitions ---------------------------------------------------
    prev = {cnd.get("type"): cnd for cnd in old.get("conditions") or []}
    for cnd in status["conditions"]:
        before = prev.get(cnd["type"])
        turned_on = cnd["status"] == "True" and (
            before is None or before.get("status") != "True" or before.get("reason") != cnd["reason"]
        )
        if turned_on and cnd["type"] not in ("Ready", "Reconciling"):
            kind = "Warning" if cnd["type"] in WARNING_CONDITIONS else "Normal"
            out.events.append((kind, cnd["reason"], f"{cnd['type']}: {cnd['message']}"))
    if waiting and phase == "Pending" and (old.get("waitingReason"), old.get("waitingMessage")) != waiting:
        out.events.append(("Normal", waiting[0], waiting[1]))
    return out


def _placement_of(
    kept: Sequence[Mapping[str, Any]], applied: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for p in [*kept, *applied]:
        node = o.pod_node(p)
        row: dict[str, Any] = {"pod": p["metadata"]["name"], "type": o.worker_type(p)}
        if node:
            row["node"] = node
        rows[row["pod"]] = row
    return [rows[k] for k in sorted(rows, key=lambda n: (len(n), n))]


def _place(
    job: d.JobView,
    alive: Sequence[Mapping[str, Any]],
    all_pods: Sequence[Mapping[str, Any]],
    job_plan: pl.JobPlan | None,
    settings: Settings,
    out: Outcome,
) -> None:
    """Match the plan's slots to existing pods; create, pin or delete pods for the rest."""
    slots = (
        Counter(job_plan.workers) if job_plan is not None and job_plan.admitted else Counter[pl.WorkerSlot]()
    )
    unplaced = []
    for p in alive:
        node = o.pod_node(p)
        if o.unschedulable(p):
            # The scheduler could not bind it where it was planned: re-plan it instead of leaving it Pending.
            out.delete.append((p["metadata"]["name"], p["metadata"]["uid"], "Unschedulable"))
            out.events.append(
                (
                    "Normal",
                    "Replanned",
                    f"{p['metadata']['name']} could not be bound to {node}; placing it again",
                )
            )
            continue
        if node is None:
            unplaced.append(p)
            continue
        slot = pl.WorkerSlot(node=node, type=o.worker_type(p))
        if slots[slot] > 0:
            slots[slot] -= 1
        else:
            out.delete.append((p["metadata"]["name"], p["metadata"]["uid"], "NotInPlan"))
    free = sorted(slots.elements())
    for p in unplaced:
        t = o.worker_type(p)
        match = next((s for s in free if s.type == t), None)
        if match is None:
            out.delete.append((p["metadata"]["name"], p["metadata"]["uid"], "NotInPlan"))
            continue
        free.remove(match)
        out.apply.append(d.worker_pod(job, o.worker_index(p), t, settings, node=match.node))
    used = {o.worker_index(p) for p in all_pods}  # a name is taken until its pod is gone
    index = 0
    for slot in free:
        while index in used:
            index += 1
        used.add(index)
        # Created gated, then pinned to the planned node: the real kube-scheduler binds it.
        out.apply.append(d.worker_pod(job, index, slot.type, settings, node=None))
        out.apply.append(d.worker_pod(job, index, slot.type, settings, node=slot.node))
