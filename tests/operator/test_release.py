"""A pod being deleted gives its capacity back to the plan that deleted it: passes of the real controller
over its cache, with an in-memory stand-in for the API server's writes (the e2e suite runs the real one).

The case is a preemption: the victim checkpoints for its grace period while the preemptor's workers wait
for the scheduler to bind them.  Counting the victim as used while it terminates made the next pass undo
the preemption (the preemptor no longer fit, so its workers were deleted and the victim's job took the room
back), and the preemptor could wait for ever.
"""

from __future__ import annotations

from controller_helpers import A100, ASCEND, T0, Api, Clock, by_node, cluster, job

from heterotrain_operator import observe as o
from heterotrain_operator.controller import Controller
from heterotrain_operator.settings import Settings


def setup() -> tuple[Controller, Api, Clock]:
    cache, api, clock = cluster()
    low = job("low", 0, (1, 2), [A100, ASCEND], T0 - 600)
    api.objects[("HeteroTrainJob", "ns", "low")] = low
    cache.replace("jobs", [low])
    ctl = Controller(api, Settings(), cache, clock=clock)  # type: ignore[arg-type]
    ctl.reconcile_all()
    for name in api.workers("low"):
        api.bind("ns", name)
    ctl.reconcile_all()
    return ctl, api, clock


def preempt(ctl: Controller, api: Api, clock: Clock) -> tuple[str, str, str]:
    """A higher-priority job that needs both Ascend accelerators arrives: the low job's Ascend worker is
    deleted (it checkpoints for its grace period); of the two new workers the scheduler binds the one with
    room and cannot bind the other yet.  Returns the victim, the bound worker and the waiting one."""
    urgent = job("urgent", 100, (2, 2), [ASCEND], T0)
    api.objects[("HeteroTrainJob", "ns", "urgent")] = urgent
    ctl.cache.upsert("jobs", urgent)
    clock.t += 1
    ctl.reconcile_all()
    victim = next(n for n, p in api.workers("low").items() if o.is_deleting(p))
    assert o.pod_node(api.pod("ns", victim)) == "asc"
    assert sorted(by_node(api, "urgent").values()) == ["asc", "asc"]
    first, second = sorted(by_node(api, "urgent"))
    api.bind("ns", first)  # the one free accelerator
    api.cannot_bind("ns", second)  # the victim still holds the other while it checkpoints
    return victim, first, second


def test_a_preemption_holds_while_its_victim_terminates_and_the_preemptor_then_binds() -> None:
    ctl, api, clock = setup()
    assert sorted(by_node(api, "low").values()) == ["asc", "gpu"]
    victim, first, second = preempt(ctl, api, clock)
    deleted = len(api.deleted)

    for _ in range(5):  # the victim checkpoints for a while: every pass keeps the preemption as it was
        clock.t += 5
        ctl.reconcile_all()
        assert len(api.deleted) == deleted, f"deleted: {api.deleted[deleted:]}"
        assert by_node(api, "urgent") == {first: "asc", second: "asc"}
        assert list(by_node(api, "low").values()) == ["gpu"], "the victim's job does not take the room back"

    api.gone("ns", victim)
    clock.t += 1
    ctl.reconcile_all()  # the victim's DELETED event wakes a pass before the scheduler retries the worker
    assert len(api.deleted) == deleted, f"deleted: {api.deleted[deleted:]}"
    api.bind("ns", second)
    clock.t += 1
    ctl.reconcile_all()
    assert len(api.deleted) == deleted
    assert by_node(api, "urgent") == {first: "asc", second: "asc"}
    world = api.objects[("HeteroTrainJob", "ns", "urgent")]["status"]["membership"]["world"]
    assert sorted(m["pod"] for m in world) == [first, second]


def test_a_pod_stuck_terminating_past_its_grace_holds_its_capacity_again() -> None:
    ctl, api, clock = setup()
    _, first, second = preempt(ctl, api, clock)
    deleted = len(api.deleted)

    clock.t += 5
    ctl.reconcile_all()  # the victim checkpoints
    assert api.deleted[deleted:] == []
    clock.t += 60 + o.RELEASE_SLACK_SECONDS  # the victim never goes (a finalizer, a silent kubelet)
    ctl.reconcile_all()
    assert ("ns", second) in api.deleted[deleted:], "the worker that cannot be bound is placed again"
    assert set(by_node(api, "urgent")) <= {first}


def test_a_worker_the_scheduler_still_cannot_bind_after_the_victim_went_is_placed_again() -> None:
    ctl, api, clock = setup()
    victim, _, second = preempt(ctl, api, clock)
    deleted = len(api.deleted)
    clock.t += 5
    ctl.reconcile_all()  # the victim checkpoints
    api.gone("ns", victim)
    clock.t += 5
    ctl.reconcile_all()
    assert api.deleted[deleted:] == [], "the scheduler's retry may still bind it"
    clock.t += o.SCHEDULER_RETRY_SECONDS  # no retry bound it (something else holds the node)
    ctl.reconcile_all()
    assert ("ns", second) in api.deleted[deleted:]
