"""A world grows in one membership change; Recovering and WorkerLost only when a worker was really lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from heterotrain_operator import placement as pl
from heterotrain_operator import reconcile as r
from heterotrain_operator.desired import worker_pod
from heterotrain_operator.settings import Settings

from .conftest import make_job

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = Settings(growth_wait_seconds=60.0)
SLOTS = [("n1", "nvidia-a100"), ("n2", "nvidia-a100"), ("n3", "nvidia-h100"), ("n4", "nvidia-h100")]


def plan(n: int) -> pl.JobPlan:
    return pl.JobPlan(
        key="ns/j", admitted=True, workers=tuple(pl.WorkerSlot(node=a, type=t) for a, t in SLOTS[:n])
    )


def pod(i: int, phase: str = "Running", started: datetime = T0) -> dict[str, Any]:
    node, type_ = SLOTS[i]
    p = worker_pod(make_job(workers={"min": 2, "max": 4}), i, type_, SETTINGS, node=node)
    p["metadata"]["uid"] = f"uid-{i}"
    p["spec"]["nodeName"] = node
    p["status"] = {"phase": phase, "podIP": f"198.18.0.{i + 1}"}
    if phase == "Running":
        p["status"]["containerStatuses"] = [
            {"name": "worker", "state": {"running": {"startedAt": started.strftime("%Y-%m-%dT%H:%M:%SZ")}}}
        ]
    if phase == "Failed":
        p["status"]["containerStatuses"] = [{"name": "worker", "state": {"terminated": {"exitCode": 1}}}]
    return p


class Job:
    """Passes of the pure reconcile, each from the status the previous one wrote."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []

    def run(self, pods: list[dict[str, Any]], job_plan: pl.JobPlan, now: datetime) -> r.Outcome:
        job = make_job(status=self.status, workers={"min": 2, "max": 4})
        out = r.reconcile_job(job, pods, job_plan, SETTINGS, now)
        self.status = out.status
        self.events += out.events
        return out

    def epoch(self) -> int:
        return int(self.status["membership"]["epoch"])

    def condition(self, type_: str) -> tuple[str, str]:
        c = next(c for c in self.status["conditions"] if c["type"] == type_)
        return c["status"], c["reason"]

    def reasons(self) -> list[str]:
        return [e[1] for e in self.events]


def started_at_two() -> Job:
    job = Job()
    job.run([pod(0), pod(1)], plan(2), T0)
    assert job.epoch() == 1 and job.status["phase"] == "Running"
    job.events.clear()
    return job


def test_a_world_grows_to_its_planned_size_in_one_membership_change():
    job = started_at_two()
    t = T0 + timedelta(seconds=5)
    job.run([pod(0), pod(1), pod(2, started=t), pod(3, phase="Pending")], plan(4), t)
    assert job.epoch() == 1, "one joiner is running, one is still starting: the world waits for both"
    assert job.status["phase"] == "Running"
    assert job.condition("Ready") == ("True", "Running")
    assert job.condition("Reconciling") == ("True", "Scaling")
    assert job.condition("Recovering")[0] == "False"
    t2 = t + timedelta(seconds=3)
    out = job.run([pod(0), pod(1), pod(2, started=t), pod(3, started=t2)], plan(4), t2)
    assert job.epoch() == 2 and len(out.status["membership"]["world"]) == 4
    assert job.status["phase"] == "Running"
    assert job.condition("Reconciling")[0] == "False"
    assert "Scaled" in job.reasons() and "WorkerLost" not in job.reasons()
    assert job.reasons().count("MembershipChanged") == 1


def test_growth_does_not_wait_for_ever_on_a_pod_that_never_starts():
    job = started_at_two()
    t = T0 + timedelta(seconds=5)
    pods = [pod(0), pod(1), pod(2, started=t), pod(3, phase="Pending")]
    job.run(pods, plan(4), t + timedelta(seconds=59))
    assert job.epoch() == 1
    job.run(pods, plan(4), t + timedelta(seconds=60))
    assert job.epoch() == 2 and len(job.status["membership"]["world"]) == 3
    assert job.status["phase"] == "Running" and "WorkerLost" not in job.reasons()


def test_a_lost_worker_re_forms_at_once_and_the_job_recovers_until_whole():
    job = Job()
    job.run([pod(0), pod(1), pod(2)], plan(3), T0)
    assert job.epoch() == 1
    t = T0 + timedelta(seconds=30)
    job.run([pod(0), pod(1), pod(2, phase="Failed")], plan(3), t)
    assert job.epoch() == 2 and len(job.status["membership"]["world"]) == 2  # trains on without it
    assert job.status["phase"] == "Recovering"
    assert job.condition("Recovering") == ("True", "WorkerLost")
    assert job.condition("Ready")[0] == "False"
    assert ("Warning", "WorkerLost") in [(e[0], e[1]) for e in job.events]
    # the replacement runs: the world is whole again, Running
    t2 = t + timedelta(seconds=10)
    job.run(
        [pod(0), pod(1), pod(3, started=t2)],
        pl.JobPlan("ns/j", True, tuple(pl.WorkerSlot(n, ty) for n, ty in (SLOTS[0], SLOTS[1], SLOTS[3]))),
        t2,
    )
    assert job.epoch() == 3 and job.status["phase"] == "Running"
    assert job.condition("Recovering")[0] == "False"


def test_a_world_the_plan_shrinks_is_scaled_not_recovering():
    job = Job()
    job.run([pod(0), pod(1), pod(2)], plan(3), T0)
    out = job.run([pod(0), pod(1), pod(2)], plan(2), T0 + timedelta(seconds=30))  # the plan drops worker 2
    assert [d[2] for d in out.delete] == ["NotInPlan"]
    assert job.epoch() == 2 and job.status["phase"] == "Running"
    assert "Scaled" in job.reasons() and "WorkerLost" not in job.reasons()


def test_the_first_world_waits_for_every_planned_worker_within_the_growth_wait():
    job = Job()
    job.run([pod(0), pod(1), pod(2, phase="Pending")], plan(3), T0 + timedelta(seconds=10))
    assert job.epoch() == 0 and job.status["phase"] == "Admitted"
    job.run([pod(0), pod(1), pod(2, phase="Pending")], plan(3), T0 + timedelta(seconds=61))
    assert job.epoch() == 1 and job.status["phase"] == "Running"  # started on 2 of 3; the 3rd joins later
