"""The lifecycle of one HeteroTrainJob in a reconcile pass, before its world is looked at: pure.

The first steps of :func:`heterotrain_operator.reconcile.reconcile_job`, over plain frozen data:
:func:`classify_pods` sorts the job's own pods; :func:`decide_lifecycle` says whether the job is
finished, stalled, suspended or active, and for an active job :func:`heterotrain_operator.faults.detect`
finds the new worker failures (failed pods, lost nodes, hung workers, processes restarted in place),
counted against maxRestarts, and :func:`match_placement` matches the planner's slots to the pods
(which to create, pin or delete).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from heterotrain_api import Phase
from heterotrain_api import v1alpha1 as api

from . import desired as d
from . import faults as f
from . import observe as o
from . import placement as pl
from .settings import Settings

Pod = Mapping[str, Any]
Delete = tuple[str, str, str]  # (pod, uid, reason)
Event = tuple[str, str, str]  # (Normal|Warning, reason, message)


@dataclass(frozen=True)
class Stall:
    """A semantic error the schema cannot catch: the job waits for the user, nothing is created."""

    reason: str
    message: str


@dataclass(frozen=True)
class Missing:
    """A listed accelerator type the job cannot use now: no node has it, or none offers its resource.

    While other listed types exist the job runs on them (with the AcceleratorsMissing warning), and
    takes nodes of this type when they join; when every type is missing the job is Stalled.
    """

    type: str
    reason: str  # NoMatchingNodes | UnknownResourceName
    message: str  # names the field, e.g. spec.accelerators[1].type: no node has label ...


fmt_time = f.fmt_time


# =============================================================================
# pods
# =============================================================================


def _delete(pod: Pod, reason: str) -> Delete:
    return (pod["metadata"]["name"], pod["metadata"]["uid"], reason)


@dataclass(frozen=True)
class JobPods:
    """Step 1: the job's own worker pods, classified."""

    owned: tuple[Pod, ...]
    alive: tuple[Pod, ...]
    failed: tuple[Pod, ...]  # failed and not yet being deleted: each one is a new failure
    succeeded: tuple[Pod, ...]


def classify_pods(job: d.JobView, pods: Sequence[Pod]) -> JobPods:
    owned = o.owned_pods(job, pods)
    return JobPods(
        owned=tuple(owned),
        alive=tuple(o.live(owned)),
        failed=tuple(
            p for p in owned if p.get("status", {}).get("phase") == "Failed" and not o.is_deleting(p)
        ),
        succeeded=tuple(p for p in owned if p.get("status", {}).get("phase") == "Succeeded"),
    )


# =============================================================================
# lifecycle: failures, placement match
# =============================================================================


@dataclass(frozen=True)
class PlacementMatch:
    """Step 2b: the plan's slots matched to the pods; pods to create, pin or delete for the rest."""

    apply: tuple[dict[str, Any], ...] = ()
    delete: tuple[Delete, ...] = ()
    events: tuple[Event, ...] = ()


def match_placement(
    job: d.JobView,
    pods: JobPods,
    job_plan: pl.JobPlan | None,
    settings: Settings,
    hold: bool = False,
    releasing: frozenset[str] = frozenset(),
) -> PlacementMatch:
    """``hold``: create no new pods yet (restart backoff); the pods there are are placed as planned.
    ``releasing``: nodes where a pod being deleted still holds what a pod planned there waits for."""
    slots = (
        Counter(job_plan.workers) if job_plan is not None and job_plan.admitted else Counter[pl.WorkerSlot]()
    )
    unplaced, deletes, events, apply = [], [], [], []
    for p in pods.alive:
        node = o.pod_node(p)
        if o.unschedulable(p) and node not in releasing:
            # The scheduler could not bind it where it was planned: re-plan it instead of leaving it Pending.
            deletes.append(_delete(p, "Unschedulable"))
            name = p["metadata"]["name"]
            events.append(("Normal", "Replanned", f"{name} could not be bound to {node}; placing it again"))
        elif node is None:
            unplaced.append(p)
        elif slots[slot := pl.WorkerSlot(node=node, type=o.worker_type(p))] > 0:
            slots[slot] -= 1
        else:
            deletes.append(_delete(p, "NotInPlan"))
    free = sorted(slots.elements())
    for p in unplaced:
        t = o.worker_type(p)
        match = next((s for s in free if s.type == t), None)
        if match is None:
            deletes.append(_delete(p, "NotInPlan"))
            continue
        free.remove(match)
        apply.append(d.worker_pod(job, o.worker_index(p), t, settings, node=match.node))
    used = {o.worker_index(p) for p in pods.owned}  # a name is taken until its pod is gone
    index = 0
    for slot in [] if hold else free:
        while index in used:
            index += 1
        used.add(index)
        # Created gated, then pinned to the planned node: the real kube-scheduler binds it.
        apply.append(d.worker_pod(job, index, slot.type, settings, node=None))
        apply.append(d.worker_pod(job, index, slot.type, settings, node=slot.node))
    return PlacementMatch(tuple(apply), tuple(deletes), tuple(events))


LifecycleKind = Literal["finished", "stalled", "suspended", "failed", "succeeded", "finishing", "placing"]


@dataclass(frozen=True)
class Lifecycle:
    """Step 2: where the job stands before its world is looked at, and what that asks for."""

    kind: LifecycleKind
    phase: Phase  # the phase so far; derive_phase() settles it for an active job
    failures: f.Faults
    match: PlacementMatch = PlacementMatch()
    delete: tuple[Delete, ...] = ()  # besides the failures' and the match's
    events: tuple[Event, ...] = ()  # every Event of this step, the failures' included, in order
    completion: str | None = None
    delete_job: bool = False
    admitted: bool = False
    desired: tuple[pl.WorkerSlot, ...] = ()
    waiting: tuple[str, str] | None = None  # (reason, message) of a job waiting for capacity
    wake_at: float | None = None  # look again by then (the finishing grace ends)

    @property
    def active(self) -> bool:
        """Neither finished, stalled nor suspended: the phase follows the world."""
        return self.kind in ("finishing", "placing")

    @property
    def deletes(self) -> tuple[Delete, ...]:
        return (*self.failures.delete, *self.match.delete, *self.delete)

    @property
    def lost(self) -> tuple[str, ...]:
        """Workers really lost in this pass (failed, hung, lost with their node, or their process restarted):
        an input of the phase (Recovering) besides the world's size."""
        return self.failures.lost


def _old_phase(job: d.JobView) -> Phase:
    phase: Phase = job.status.get("phase") or api.PHASE_PENDING
    return phase


def decide_lifecycle(
    job: d.JobView,
    pods: JobPods,
    job_plan: pl.JobPlan | None,
    settings: Settings,
    now: datetime,
    stall: Stall | None,
    facts: f.Facts | None = None,
) -> Lifecycle:
    old_phase = _old_phase(job)
    completion = job.status.get("completionTime")
    unchanged = f.unchanged(job)
    if old_phase in api.TERMINAL_PHASES:
        ttl = job.spec.ttl_seconds_after_finished
        expired = ttl is not None and bool(completion) and now.timestamp() - o.parse_time(completion) >= ttl
        return Lifecycle(
            "finished",
            old_phase,
            unchanged,
            delete=tuple(_delete(p, "JobFinished") for p in pods.alive),
            completion=completion,
            delete_job=expired,
        )
    if stall is not None:
        return Lifecycle("stalled", api.PHASE_PENDING, unchanged, completion=completion)
    if job.spec.suspend:
        events: tuple[Event, ...] = ()
        if old_phase != api.PHASE_SUSPENDED:
            events = (("Normal", "Suspended", f"suspended: stopping {len(pods.alive)} workers"),)
        deletes = tuple(_delete(p, "Suspended") for p in pods.alive)
        return Lifecycle(
            "suspended", api.PHASE_SUSPENDED, unchanged, delete=deletes, events=events, completion=completion
        )
    return _decide_active(job, pods, job_plan, settings, now, old_phase, facts)


def _decide_active(
    job: d.JobView,
    pods: JobPods,
    job_plan: pl.JobPlan | None,
    settings: Settings,
    now: datetime,
    old_phase: Phase,
    facts: f.Facts | None,
) -> Lifecycle:
    resumed: tuple[Event, ...] = ()
    phase = old_phase
    if old_phase == api.PHASE_SUSPENDED:
        resumed = (("Normal", "Resumed", "spec.suspend is false: resuming from the latest checkpoint"),)
        phase = api.PHASE_PENDING
    failures = f.detect(job, pods.failed, pods.alive, facts, now)
    completion = job.status.get("completionTime")
    events = (*resumed, *failures.events)
    if failures.restarts > job.spec.fault_tolerance.max_restarts:
        deletes = tuple(_delete(p, "JobFailed") for p in pods.alive)
        return Lifecycle(
            "failed", api.PHASE_FAILED, failures, delete=deletes, events=events, completion=fmt_time(now)
        )
    if pods.succeeded and not pods.failed:
        if not pods.alive:
            return Lifecycle(
                "succeeded", api.PHASE_SUCCEEDED, failures, events=events, completion=fmt_time(now)
            )
        # Finishing: no new workers, no moves.  The world's last members end together, each given the time a
        # stopping worker has to checkpoint and exit (its grace period: a slow node writes the last checkpoint
        # and leaves its interpreter for a while); a worker still alive that long after the first one
        # completed was not in that world (it was joining as the training ended: its world can never form)
        # and is stopped, so that the job completes.
        desired = tuple(o.current_slots(pods.alive))
        ended = [t for t in (o.finished_at(p) for p in pods.succeeded) if t is not None]
        window = max(job.spec.fault_tolerance.heartbeat_timeout_seconds, settings.worker_grace_seconds)
        due = min(ended) + float(window) if ended else None
        late = due is not None and now.timestamp() >= due
        return Lifecycle(
            "finishing",
            phase,
            failures,
            delete=tuple(_delete(p, "Finished") for p in pods.alive) if late else (),
            events=events,
            completion=completion,
            admitted=True,
            desired=desired,
            wake_at=None if late else due,
        )
    releasing = facts.releasing if facts is not None else frozenset()
    return _placing(job, pods, job_plan, settings, phase, failures, events, completion, now, releasing)


def _placing(
    job: d.JobView,
    pods: JobPods,
    job_plan: pl.JobPlan | None,
    settings: Settings,
    phase: Phase,
    failures: f.Faults,
    events: tuple[Event, ...],
    completion: str | None,
    now: datetime,
    releasing: frozenset[str],
) -> Lifecycle:
    # Lost and hung workers leave now: their slots are planned anew (the planner did not keep them).
    staying = JobPods(
        owned=pods.owned,
        alive=tuple(p for p in pods.alive if p["metadata"]["name"] not in failures.gone),
        failed=pods.failed,
        succeeded=pods.succeeded,
    )
    hold = failures.hold_until is not None and failures.hold_until > now.timestamp()
    match = match_placement(job, staying, job_plan, settings, hold=hold, releasing=releasing)
    admitted = bool(job_plan and job_plan.admitted)
    desired = tuple(job_plan.workers) if admitted and job_plan else ()
    waiting = None
    if job_plan is not None and not job_plan.admitted:
        waiting = (job_plan.reason or "WaitingForCapacity", job_plan.message or "waiting for capacity")
    elif job_plan is not None and job_plan.reason and len(desired) < job.spec.workers.max:
        waiting = (job_plan.reason, job_plan.message or "")
    if hold and failures.hold_until is not None and waiting is None:
        until = fmt_time(datetime.fromtimestamp(failures.hold_until, tz=now.tzinfo))
        waiting = ("RestartBackoff", f"failures in quick succession: new workers wait until {until}")
    preempted: tuple[Event, ...] = ()
    if job_plan is not None and job_plan.preempted:
        n = len(job_plan.preempted)
        preempted = (("Warning", "Preempted", f"{n} workers removed for a higher-priority job"),)
    return Lifecycle(
        "placing",
        phase,
        failures,
        match=match,
        events=(*events, *match.events, *preempted),
        completion=completion,
        admitted=admitted,
        desired=desired,
        waiting=waiting,
    )
