"""The operator writes the statuses that GitOps tools were checked against (tests/testdata/job-status/).

Each recorded status is how a job of that phase must look to kstatus (Flux, helm --wait) and to the
chart's Argo CD health check (e2e/tests/test_kstatus.py and tests/test_argocd_health.py check those).
Here the pure reconcile drives a job into each phase, passes once more a long time later (a terminal
condition must still hold then), and its phase and conditions (type -> status) must be the recorded ones.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from heterotrain_operator import placement as pl
from heterotrain_operator import reconcile as r
from heterotrain_operator.desired import worker_pod
from heterotrain_operator.settings import Settings

from .conftest import make_job

TESTDATA = Path(__file__).resolve().parents[1] / "testdata" / "job-status"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(hours=6)
SLOTS = (("n1", "nvidia-a100"), ("n2", "nvidia-h100"))

Status = dict[str, Any]


def plan(admitted: bool = True) -> pl.JobPlan:
    if not admitted:
        return pl.JobPlan(
            key="ns/j", admitted=False, workers=(), reason="InsufficientCapacity", message="needs 2 workers"
        )
    return pl.JobPlan(
        key="ns/j", admitted=True, workers=tuple(pl.WorkerSlot(node=n, type=t) for n, t in SLOTS)
    )


def pods(phases: tuple[str, ...], **spec: Any) -> list[dict[str, Any]]:
    out = []
    for i, ((node, type_), phase) in enumerate(zip(SLOTS, phases, strict=True)):
        pod = worker_pod(make_job(**spec), i, type_, Settings(), node=node)
        pod["metadata"]["uid"] = f"pod-{i}"
        pod["spec"]["nodeName"] = node
        pod["status"] = {"phase": phase, "podIP": f"198.18.0.{i + 1}"}
        if phase == "Failed":
            term = {"exitCode": 137, "reason": "OOMKilled"}
            pod["status"]["containerStatuses"] = [{"name": "worker", "state": {"terminated": term}}]
        out.append(pod)
    return out


def passes(
    steps: list[tuple[list[dict[str, Any]], pl.JobPlan | None, datetime]],
    stall: r.Stall | None = None,
    **spec: Any,
) -> Status:
    """Reconcile passes in order, each starting from the status the previous one wrote."""
    status: Status = {}
    for observed, job_plan, now in steps:
        status = r.reconcile_job(
            make_job(status=status, **spec), observed, job_plan, Settings(), now, stall
        ).status
    return status


def running(now: datetime = T0) -> tuple[list[dict[str, Any]], pl.JobPlan, datetime]:
    return pods(("Running", "Running")), plan(), now


SCENARIOS: dict[str, Callable[[], Status]] = {
    "pending-waiting": lambda: passes([([], plan(admitted=False), T0), ([], plan(admitted=False), LATER)]),
    "pending-stalled": lambda: passes(
        [([], None, T0), ([], None, LATER)],
        stall=r.Stall("NoMatchingNodes", "spec.accelerators[0].type: no node has label ..."),
    ),
    "admitted": lambda: passes([([], plan(), T0)]),
    "running": lambda: passes([running(), running(LATER)]),
    "recovering": lambda: passes([running(), (pods(("Running", "Failed")), plan(), LATER)]),
    "suspended": lambda: passes([running(), (pods(("Running", "Running")), None, LATER)], suspend=True),
    "succeeded": lambda: passes(
        [
            running(),
            (pods(("Succeeded", "Succeeded")), None, T0),
            (pods(("Succeeded", "Succeeded")), None, LATER),
        ]
    ),
    "failed": lambda: passes(
        [running(), (pods(("Running", "Failed")), plan(), T0), ([], None, LATER)],
        faultTolerance={"maxRestarts": 0},
    ),
}


def recorded(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((TESTDATA / f"{name}.yaml").read_text()))


def conditions(status: Status) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions") or []}


def test_every_phase_is_recorded():
    cases = yaml.safe_load((TESTDATA / "expected.yaml").read_text())["cases"]
    phases = {c["phase"] for c in cases}
    assert phases == {"Pending", "Admitted", "Running", "Recovering", "Suspended", "Succeeded", "Failed"}
    assert {Path(c["file"]).stem for c in cases} >= set(SCENARIOS)


def test_recordings_hold_the_kstatus_rules():
    for name in SCENARIOS:
        conds = conditions(recorded(name)["status"])
        assert not (conds.get("Reconciling") == "True" and conds.get("Stalled") == "True"), name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_reconcile_writes_the_recorded_status(name: str):
    want = recorded(name)["status"]
    got = SCENARIOS[name]()
    assert got["phase"] == want["phase"]
    assert conditions(got) == conditions(want)
