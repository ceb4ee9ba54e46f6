"""The level-based reconcile of one HeteroTrainJob: a pure function.

Input: the job (spec, old status), its worker pods as observed, the planner's
decision for it, and the time.  Output: the status it should have, the pods to
apply and delete, and the Events to post.  Nothing here talks to Kubernetes;
:mod:`heterotrain_operator.controller` gathers the inputs and carries out the
outcome, every pass, whatever happened before (no event replay).

:func:`reconcile_job` runs named steps over plain, frozen data:

1. :func:`~.lifecycle.classify_pods` — the job's own pods: alive, failed, succeeded;
2. :func:`~.lifecycle.decide_lifecycle` — finished, stalled, suspended, or active; on an
   active job the failures counted, then failed, succeeded, finishing, or the plan matched
   onto the pods (:mod:`.lifecycle`);
3. :func:`next_world` — the membership: the world of running workers and its epoch;
4. :func:`derive_phase` — the phase from the lifecycle and the world;
5. :func:`condition_values` and :func:`build_conditions` — every condition, each held as
   long as its state holds;
6. :func:`transition_events` — Events for conditions that turned on.

The status is built from the API's models (:class:`heterotrain_api.HeteroTrainJobStatus`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from heterotrain_api import (
    AvoidedNode,
    Condition,
    FailureStatus,
    HeteroTrainJobStatus,
    MembershipStatus,
    MemberStatus,
    Phase,
    PodPlacement,
    TypeWorkers,
    WorkersStatus,
    format_mix,
)
from heterotrain_api import v1alpha1 as api
from heterotrain_contract import DEFAULT_MASTER_PORT, processes_ready

from . import desired as d
from . import memory
from . import observe as o
from . import placement as pl
from .faults import Facts
from .lifecycle import (
    Delete,
    Event,
    JobPods,
    Lifecycle,
    Pod,
    classify_pods,
    decide_lifecycle,
    fmt_time,
)
from .lifecycle import Missing as Missing  # re-exported: r.Missing
from .lifecycle import Stall as Stall  # re-exported: r.Stall
from .settings import Settings

#: A condition's value: (True?, reason, message).
Value = tuple[bool, str, str]

#: Conditions whose turning True is posted as a Warning Event.
WARNING_CONDITIONS = frozenset(
    {
        api.CONDITION_STALLED,
        api.CONDITION_FAILED,
        api.CONDITION_RECOVERING,
        api.CONDITION_ACCELERATORS_MISSING,
    }
)
#: Conditions that turn True without an Event of their own (they restate the phase).
SILENT_CONDITIONS = frozenset({api.CONDITION_READY, api.CONDITION_RECONCILING})


@dataclass
class Outcome:
    status: dict[str, Any]
    apply: list[dict[str, Any]] = field(default_factory=list)  # pods to server-side apply, in order
    delete: list[Delete] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    wake_at: float | None = None  # reconcile again by then at the latest (a restart backoff ends)


# =============================================================================
# membership
# =============================================================================


#: Why a world changed: first formed, grown or shrunk by the plan, a member lost, paused below the gang
#: minimum (or finished).
Cause = Literal["formed", "scaled", "lost", "paused"]

#: Deletions the operator makes on purpose (the plan moved or dropped the worker): a smaller world is a
#: scale-down, not a loss.
PLANNED_DELETIONS = frozenset({"NotInPlan", "Unschedulable"})


@dataclass(frozen=True)
class World:
    """Step 3: the membership to publish."""

    epoch: int
    members: tuple[dict[str, Any], ...]  # MemberStatus dicts (pod, rank, type, address, weight)
    changed: bool  # a new epoch
    cause: Cause | None = None  # why it changed
    lost: tuple[str, ...] = ()  # members of the old world that were lost (not removed by the plan)
    waiting_for: int = 0  # planned workers not in the world yet, while the growth waits for them


def _candidates(job: d.JobView, pods: JobPods, life: Lifecycle) -> list[dict[str, Any]]:
    """The running workers that may be in the world, in pod order: not being deleted, and no process of
    theirs restarting in place (their launcher's ProcessesReady condition is not False: the others go on
    without them, and take them back once they are ready)."""
    deleting = {name for name, _, _ in life.deletes}
    members = []
    for p in pods.alive:
        if p["metadata"]["name"] in deleting or not o.is_running(p) or not processes_ready(p):
            continue
        t = o.worker_type(p)
        try:
            weight = job.accelerator(t).worker_weight
        except KeyError:
            continue
        members.append(
            {"pod": p["metadata"]["name"], "type": t, "address": p["status"]["podIP"], "weight": weight}
        )
    return members


def _lost(
    old_world: Sequence[Mapping[str, Any]], members: Sequence[Mapping[str, Any]], life: Lifecycle
) -> list[str]:
    """Old members that are gone from the world and were not removed by the plan on purpose."""
    now = {(m["pod"], m["address"]) for m in members}
    planned = {name for name, _, reason in life.deletes if reason in PLANNED_DELETIONS}
    return [
        str(m.get("pod"))
        for m in old_world
        if (m.get("pod"), m.get("address")) not in now and m.get("pod") not in planned
    ]


def _growth_due(pods: JobPods, joiners: Sequence[Mapping[str, Any]], now: datetime, wait: float) -> bool:
    """The first joiner has waited ``wait`` seconds for the rest of the planned workers."""
    names = {m["pod"] for m in joiners}
    since = [o.running_since(p) for p in pods.alive if p["metadata"]["name"] in names]
    known = [t for t in since if t is not None]
    return not known or now.timestamp() - min(known) >= wait


def next_world(job: d.JobView, pods: JobPods, life: Lifecycle, now: datetime, growth_wait: float) -> World:
    """The world of running workers; a new epoch when it must change.

    A member lost (its pod failed, went away or changed address) re-forms the world at once with the
    workers that run, or pauses it below the gang minimum.  A world grows in ONE step: workers that joined
    wait until every planned worker runs, or until the first of them has waited ``growth_wait`` seconds
    (a pod that never starts does not hold the others back for ever).  The first world forms the same way.
    """
    old = job.status.get("membership") or {}
    old_world = old.get("world") or []
    epoch = int(old.get("epoch") or 0)
    unchanged = World(epoch, tuple(old_world), changed=False)
    if not life.active:
        return World(epoch + 1, (), True, "paused") if old_world else unchanged
    members = _candidates(job, pods, life)
    if pods.succeeded or [(m["pod"], m["address"]) for m in members] == [
        (m.get("pod"), m.get("address")) for m in old_world
    ]:
        return unchanged  # unchanged, or finishing: workers that completed leave no new epoch behind
    minimum = job.spec.workers.min
    lost = _lost(old_world, members, life)
    shrunk = len(members) < len(old_world) or any(
        (m.get("pod"), m.get("address")) not in {(x["pod"], x["address"]) for x in members} for m in old_world
    )
    if old_world and len(members) < minimum:
        return World(epoch + 1, (), True, "paused", tuple(lost))  # the survivors wait for the world
    if len(members) < minimum:
        return unchanged
    missing = max(0, len(life.desired) - len(members))
    if not shrunk and missing:
        joiners = [m for m in members if m["pod"] not in {x.get("pod") for x in old_world}]
        restarting = not old_world and bool(job.status.get("startTime"))  # recovering from a pause
        if not restarting and not _growth_due(pods, joiners, now, growth_wait):
            return World(epoch, tuple(old_world), False, waiting_for=missing)
    cause: Cause = "lost" if lost else ("scaled" if old_world else "formed")
    ranked = tuple({**m, "rank": r} for r, m in enumerate(members))
    return World(epoch + 1, ranked, True, cause, tuple(lost))


def world_events(job: d.JobView, world: World) -> list[Event]:
    """A new epoch's Events: always MembershipChanged; Scaled when the plan grew or shrank the world (a lost
    worker is told by the Recovering condition's WorkerLost Event instead)."""
    if not world.changed:
        return []
    mix = format_mix(Counter(m["type"] for m in world.members))
    n = len(world.members)
    events: list[Event] = [("Normal", "MembershipChanged", f"epoch {world.epoch}: {n} workers ({mix})")]
    before = len((job.status.get("membership") or {}).get("world") or [])
    if world.cause == "scaled" and n != before:
        how = "grew" if n > before else "shrank"
        events.append(("Normal", "Scaled", f"{how} from {before} to {n} workers in one step ({mix})"))
    return events


# =============================================================================
# phase, conditions, events
# =============================================================================


@dataclass(frozen=True)
class PhaseState:
    """Step 4: the phase and the times that go with it."""

    phase: Phase
    start_time: str | None
    completion: str | None


def derive_phase(job: d.JobView, pods: JobPods, life: Lifecycle, world: World, now: datetime) -> PhaseState:
    """Running while the world trains at or above its minimum; Recovering from a lost worker until the
    world is whole again (a world that grows or shrinks by the plan is still Running); Admitted again
    while a world emptied on purpose (a resumed suspension) forms anew."""
    start = job.status.get("startTime")
    if not life.active:
        return PhaseState(life.phase, start, life.completion)
    n = len(world.members)
    complete = n > 0 and n == len(life.desired) and n >= job.spec.workers.min
    if (complete or (not start and n >= job.spec.workers.min)) and not pods.succeeded:
        return PhaseState(api.PHASE_RUNNING, start or fmt_time(now), life.completion)
    if not start:
        phase: Phase = api.PHASE_ADMITTED if life.admitted else api.PHASE_PENDING
        return PhaseState(phase, start, life.completion)
    lost = world.cause in ("lost", "paused") or (
        not world.changed and job.status.get("phase") == api.PHASE_RECOVERING
    )
    if pods.succeeded or (n >= job.spec.workers.min and not lost):
        return PhaseState(api.PHASE_RUNNING, start, life.completion)
    if n == 0 and not lost:  # emptied on purpose (resumed from a suspension): it forms again, nothing lost
        return PhaseState(api.PHASE_ADMITTED if life.admitted else api.PHASE_PENDING, start, life.completion)
    return PhaseState(api.PHASE_RECOVERING, start, life.completion)


def _held(job: d.JobView, type_: str, fallback: Value) -> Value:
    """A terminal condition as it stands in the old status (True), else ``fallback``: it holds."""
    for c in job.status.get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return (True, str(c.get("reason") or fallback[1]), str(c.get("message") or ""))
    return fallback


def _terminal_values(job: d.JobView, pods: JobPods, life: Lifecycle, phase: Phase) -> dict[str, Value]:
    if phase == api.PHASE_SUCCEEDED:
        done = (True, "Completed", f"{len(pods.succeeded)} workers completed")
        succeeded = done if life.kind == "succeeded" else _held(job, api.CONDITION_SUCCEEDED, done)
        return {
            api.CONDITION_SUCCEEDED: succeeded,
            api.CONDITION_READY: (True, "Succeeded", "the job completed"),
        }
    max_restarts = job.spec.fault_tolerance.max_restarts
    failed_now = (
        True,
        "MaxRestartsExceeded",
        f"{life.failures.restarts} worker failures exceed spec.faultTolerance.maxRestarts={max_restarts}",
    )
    failed = failed_now if life.kind == "failed" else _held(job, api.CONDITION_FAILED, failed_now)
    return {api.CONDITION_FAILED: failed, api.CONDITION_STALLED: (True, "Failed", failed[2])}


def condition_values(
    job: d.JobView, pods: JobPods, life: Lifecycle, world: World, phase: Phase, stall: Stall | None
) -> dict[str, Value]:
    """Step 5: the value of every condition that applies; the others are False, NotApplicable."""
    if phase in api.TERMINAL_PHASES:
        return _terminal_values(job, pods, life, phase)
    if stall is not None:
        return {api.CONDITION_STALLED: (True, stall.reason, stall.message)}
    if phase == api.PHASE_SUSPENDED:
        # Ready: the job is as its spec asks (kstatus reads Ready=False as InProgress; Flux would wait).
        return {
            api.CONDITION_SUSPENDED: (True, "Suspended", "spec.suspend is true; checkpoints are kept"),
            api.CONDITION_READY: (True, "Suspended", "spec.suspend is true: no workers run, as asked"),
        }
    values: dict[str, Value] = {}
    n = len(world.members)
    if life.admitted:
        placed = f"placed {len(life.desired)} workers: {format_mix(Counter(s.type for s in life.desired))}"
        values[api.CONDITION_ADMITTED] = (True, "Admitted", placed)
    else:
        reason, message = life.waiting or ("WaitingForCapacity", "waiting for capacity")
        values[api.CONDITION_ADMITTED] = (False, reason, message)
    if phase == api.PHASE_RUNNING:
        ready = format_mix(Counter(m["type"] for m in world.members))
        values[api.CONDITION_RUNNING] = (True, "Running", f"{n} workers training ({ready})")
        values[api.CONDITION_READY] = (True, "Running", "the job is training")
        if n != len(life.desired) and not pods.succeeded:
            # Growing (or shrinking) to the plan: one membership change once every planned worker runs.
            values[api.CONDITION_RECONCILING] = (
                True,
                "Scaling",
                f"{n} of {len(life.desired)} planned workers in the world; the others join together",
            )
    if phase == api.PHASE_RECOVERING:
        values[api.CONDITION_RECOVERING] = (
            True,
            "WorkerLost",
            f"{n} of {len(life.desired)} workers in the world; waiting for the rest",
        )
    if phase in api.PROGRESSING_PHASES:  # never with Stalled (kstatus): a stalled job returned above
        if phase == api.PHASE_PENDING and life.waiting:
            values[api.CONDITION_RECONCILING] = (True, *life.waiting)
        else:
            values[api.CONDITION_RECONCILING] = (True, phase, f"job is {phase}")
    return values


def build_conditions(
    old: Sequence[Mapping[str, Any]], values: Mapping[str, Value], generation: int, now: datetime
) -> list[Condition]:
    """Every condition type, in the API's order; a condition keeps its transition time while its status holds."""
    prev = {c.get("type"): c for c in old}
    out = []
    for t in api.CONDITION_TYPES:
        ok, reason, message = values.get(t, (False, api.REASON_NOT_APPLICABLE, ""))
        status: Literal["True", "False"] = "True" if ok else "False"
        p = prev.get(t)
        since = p.get("lastTransitionTime") if p and p.get("status") == status else fmt_time(now)
        out.append(
            Condition.model_validate(
                {
                    "type": t,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": since,
                    "observedGeneration": generation,
                }
            )
        )
    return out


def transition_events(
    old: Mapping[str, Any], conditions: Sequence[Condition], phase: Phase, waiting: tuple[str, str] | None
) -> list[Event]:
    """Step 6: an Event for every condition that turned True (or changed reason), and a new wait."""
    prev = {c.get("type"): c for c in old.get("conditions") or []}
    events: list[Event] = []
    for c in conditions:
        before = prev.get(c.type)
        turned_on = c.status == "True" and (
            before is None or before.get("status") != "True" or before.get("reason") != c.reason
        )
        if turned_on and c.type not in SILENT_CONDITIONS:
            kind = "Warning" if c.type in WARNING_CONDITIONS else "Normal"
            events.append((kind, c.reason, f"{c.type}: {c.message}"))
    if (
        waiting
        and phase == api.PHASE_PENDING
        and (old.get("waitingReason"), old.get("waitingMessage")) != waiting
    ):
        events.append(("Normal", waiting[0], waiting[1]))
    return events


# =============================================================================
# the status, and the whole reconcile
# =============================================================================


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _placement_rows(kept: Sequence[Pod], applied: Sequence[Pod]) -> list[PodPlacement]:
    rows: dict[str, PodPlacement] = {}
    for p in [*kept, *applied]:
        name = p["metadata"]["name"]
        rows[name] = PodPlacement(pod=name, node=o.pod_node(p) or None, type=o.worker_type(p))
    return [rows[k] for k in sorted(rows, key=lambda n: (len(n), n))]


def _pool_settings(job: d.JobView, type_: str, caps: Mapping[str, int]) -> dict[str, Any]:
    """What a pool's workers are asked to do, as status.workers.byType shows it."""
    try:
        precision = job.accelerator(type_).pod.precision
    except KeyError:
        precision = None
    return {"precision": precision, "max_micro_batch": caps.get(type_)}


def _workers(
    job: d.JobView, desired: Sequence[pl.WorkerSlot], world: World, caps: Mapping[str, int]
) -> WorkersStatus:
    """Counts per type, for every type with workers or a micro-batch cap in force (which it keeps)."""
    want = Counter(s.type for s in desired)
    have = Counter(m["type"] for m in world.members)
    by_type = {
        t: TypeWorkers(desired=want.get(t, 0), ready=have.get(t, 0), **_pool_settings(job, t, caps))
        for t in sorted(set(want) | set(have) | set(caps))
    }
    return WorkersStatus(desired=len(desired), ready=len(world.members), by_type=by_type or None)


def member_statuses(
    job: d.JobView, pods: JobPods, world: World, caps: Mapping[str, int]
) -> list[MemberStatus]:
    """The world's members as the status lists them, each with its ``slots`` (the training processes its
    pod runs, one per accelerator the pod requested) and, in a new epoch, its type's micro-batch cap in
    force (a member of an unchanged world keeps what its processes formed with)."""
    by_name = {p["metadata"]["name"]: p for p in pods.owned}
    out = []
    for m in world.members:
        extra: dict[str, Any] = {}
        if m.get("slots") is None:
            pod = by_name.get(str(m["pod"]))
            try:
                acc = job.accelerator(str(m["type"]))
            except KeyError:
                extra["slots"] = 1
            else:
                extra["slots"] = (
                    o.pod_accelerators(pod, acc.resource_name) if pod is not None else acc.per_worker
                )
        if world.changed and str(m["type"]) in caps:
            extra["maxMicroBatch"] = caps[str(m["type"])]
        out.append(MemberStatus.model_validate({**m, **extra}))
    return out


def build_status(
    job: d.JobView,
    pods: JobPods,
    life: Lifecycle,
    world: World,
    state: PhaseState,
    conditions: list[Condition],
) -> HeteroTrainJobStatus:
    kept = [p for p in pods.alive if p["metadata"]["name"] not in {n for n, _, _ in life.deletes}]
    waiting = life.waiting if life.waiting and state.phase not in api.TERMINAL_PHASES else (None, None)
    last_failure = life.failures.last_failure
    caps = memory.caps_in_force(job, pods.failed)
    faults = life.failures
    # lastCheckpoint and progress are not the operator's: the runtime reports them.
    return HeteroTrainJobStatus(
        observed_generation=job.generation,
        phase=state.phase,
        conditions=conditions,
        workers=_workers(job, life.desired, world, caps),
        mix=format_mix(Counter(m["type"] for m in world.members)),
        membership=MembershipStatus(
            epoch=world.epoch,
            master_port=DEFAULT_MASTER_PORT,
            world=member_statuses(job, pods, world, caps),
        ),
        placement=_placement_rows(kept, life.match.apply),
        waiting_reason=waiting[0],
        waiting_message=waiting[1],
        restarts=life.failures.restarts,
        in_place_restarts=faults.in_place or None,
        pod_restarts=faults.pod_restarts or None,
        counted_process_restarts=dict(faults.counted) or None,
        last_failure=FailureStatus.model_validate(last_failure) if last_failure else None,
        failures=[FailureStatus.model_validate(x) for x in faults.history] or None,
        avoided_nodes=[AvoidedNode.model_validate(x) for x in faults.avoided] or None,
        start_time=_time(state.start_time),
        completion_time=_time(state.completion),
    )


def unparseable_status(generation: int | None, stall: Stall, now: datetime) -> dict[str, Any]:
    """The status of a job whose spec the operator cannot parse: Pending, and one Stalled condition."""
    stalled = Condition(
        type=api.CONDITION_STALLED,
        status="True",
        reason=stall.reason,
        message=stall.message,
        last_transition_time=now.replace(microsecond=0),
        observed_generation=generation,
    )
    status = HeteroTrainJobStatus(
        observed_generation=generation, phase=api.PHASE_PENDING, conditions=[stalled]
    )
    return status.to_apply()


def missing_values(missing: Sequence[Missing], phase: Phase, stall: Stall | None) -> dict[str, Value]:
    """The AcceleratorsMissing warning of a job that runs without some of its types (held while they
    are missing; not for a stalled, suspended or finished job, whose other conditions say it all)."""
    if not missing or stall is not None or phase in api.TERMINAL_PHASES or phase == api.PHASE_SUSPENDED:
        return {}
    types = ", ".join(m.type for m in missing)
    message = "; ".join(m.message for m in missing)
    return {
        api.CONDITION_ACCELERATORS_MISSING: (
            True,
            missing[0].reason,
            f"{types}: {message}; the job runs on its other types and takes nodes of these when they join",
        )
    }


def reconcile_job(
    job: d.JobView,
    pods: Sequence[Pod],
    job_plan: pl.JobPlan | None,
    settings: Settings,
    now: datetime,
    stall: Stall | None = None,
    missing: Sequence[Missing] = (),
    facts: Facts | None = None,
) -> Outcome:
    mine = classify_pods(job, pods)
    life = decide_lifecycle(job, mine, job_plan, settings, now, stall, facts)
    world = next_world(job, mine, life, now, settings.growth_wait_seconds)
    state = derive_phase(job, mine, life, world, now)
    values = {
        **condition_values(job, mine, life, world, state.phase, stall),
        **missing_values(missing, state.phase, stall),
    }
    conditions = build_conditions(job.status.get("conditions") or [], values, job.generation, now)
    status = build_status(job, mine, life, world, state, conditions)
    events = [*life.events, *world_events(job, world)]
    events += transition_events(job.status, conditions, state.phase, life.waiting)
    return Outcome(
        status=status.to_apply(),
        apply=list(life.match.apply),
        delete=list(life.deletes),
        events=events,
        delete_job=life.delete_job,
        wake_at=min((t for t in (life.failures.hold_until, life.wake_at) if t is not None), default=None),
    )
