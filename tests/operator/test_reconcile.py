"""The pure reconcile of one job: pods, membership, status and events from observed state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import heterotrain_contract as c
from heterotrain_operator import placement as pl
from heterotrain_operator import reconcile as r
from heterotrain_operator.desired import RUNTIME_MOUNT_PATH, RUNTIME_VOLUME_NAME, SCHEDULING_GATE, worker_pod
from heterotrain_operator.observe import current_slots

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def admitted(*slots: tuple[str, str]) -> pl.JobPlan:
    return pl.JobPlan(
        key="ns/j", admitted=True, workers=tuple(pl.WorkerSlot(node=n, type=t) for n, t in slots)
    )


def running(
    job, index: int, type_: str, node: str, ip: str, settings, phase: str = "Running"
) -> dict[str, Any]:
    pod = worker_pod(job, index, type_, settings, node=node)
    pod["metadata"]["uid"] = f"pod-{index}"
    pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": phase, "podIP": ip}
    return pod


def test_new_job_creates_gated_then_pinned_pods(settings, make_job):
    job = make_job()
    out = r.reconcile_job(job, [], admitted(("n1", "nvidia-a100"), ("n2", "nvidia-h100")), settings, NOW)
    names = [p["metadata"]["name"] for p in out.apply]
    assert names == ["j-worker-0", "j-worker-0", "j-worker-1", "j-worker-1"]
    gated, pinned = out.apply[0], out.apply[1]
    assert gated["spec"]["schedulingGates"] == [{"name": SCHEDULING_GATE}]
    assert "schedulingGates" not in pinned["spec"]
    term = pinned["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["n1"]
    assert out.status["phase"] == "Admitted"
    assert out.status["membership"]["world"] == []
    assert any(e[1] == "Admitted" for e in out.events)


def test_injected_runtime(settings, make_job):
    job = make_job(env=[{"name": "PYTHONPATH", "value": "/app"}])
    pod = worker_pod(job, 0, "nvidia-h100", settings)
    init = pod["spec"]["initContainers"][0]
    assert init["command"][:3] == list(c.INSTALL_COMMAND)
    ctr = pod["spec"]["containers"][0]
    assert ctr["command"][:5] == ["python", "-m", "heterotrain_runtime", "launch", "--"]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["PYTHONPATH"]["value"] == f"{RUNTIME_MOUNT_PATH}:/app"
    assert env[c.ENV_ACCELERATOR]["value"] == "nvidia-h100"
    assert env[c.ENV_POD_NAME]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env[c.ENV_POD_IP]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"  # metrics bind there
    assert env[c.ENV_STARTUP_TIMEOUT]["value"] == str(c.DEFAULT_STARTUP_TIMEOUT_SECONDS)
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {v["name"] for v in pod["spec"]["volumes"]} >= {RUNTIME_VOLUME_NAME}


def test_world_published_when_all_planned_workers_run(settings, make_job):
    job = make_job()
    plan = admitted(("n1", "nvidia-a100"), ("n2", "nvidia-h100"))
    pods = [
        running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings),
        running(job, 1, "nvidia-h100", "n2", "127.1.0.2", settings, phase="Pending"),
    ]
    out = r.reconcile_job(job, pods, plan, settings, NOW)
    assert out.apply == [] and out.delete == []
    assert out.status["membership"]["epoch"] == 0  # not all planned workers run yet
    pods[1]["status"]["phase"] = "Running"
    out = r.reconcile_job(job, pods, plan, settings, NOW)
    world = out.status["membership"]["world"]
    assert out.status["membership"]["epoch"] == 1
    assert [(m["pod"], m["rank"]) for m in world] == [("j-worker-0", 0), ("j-worker-1", 1)]
    assert world[1]["weight"] > world[0]["weight"]  # an h100 worker weighs more than an a100 one
    assert out.status["phase"] == "Running"
    assert out.status["mix"] == "nvidia-a100:1,nvidia-h100:1"
    # Same observation again: nothing changes (level-based, idempotent).
    again = r.reconcile_job(make_job(status=out.status), pods, plan, settings, NOW)
    assert again.status == out.status and again.apply == [] and again.delete == [] and again.events == []


def test_a_member_has_a_slot_per_accelerator_of_its_pod(settings, make_job):
    job = make_job(
        accelerators=[{"type": "nvidia-a100", "perWorker": 4}, {"type": "nvidia-h100", "perWorker": 2}]
    )
    plan = admitted(("n1", "nvidia-a100"), ("n2", "nvidia-h100"))
    pods = [
        running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings),
        running(job, 1, "nvidia-h100", "n2", "127.1.0.2", settings),
    ]
    out = r.reconcile_job(job, pods, plan, settings, NOW)
    world = out.status["membership"]["world"]
    assert [(m["pod"], m["slots"]) for m in world] == [("j-worker-0", 4), ("j-worker-1", 2)]
    m = c.Membership.from_dict(out.status["membership"])
    assert m.world_size == 6 and [p.rank for p in m.processes if p.pod == "j-worker-1"] == [4, 5]
    assert {p.weight for p in m.processes if p.type == "nvidia-a100"} == {1.0}  # a device's weight
    # the slots are the pod's own accelerators: a spec edit does not change a running pod's processes
    edited = make_job(
        accelerators=[{"type": "nvidia-a100", "perWorker": 8}, {"type": "nvidia-h100", "perWorker": 2}]
    )
    again = r.reconcile_job(edited, pods, plan, settings, NOW)
    assert [m["slots"] for m in again.status["membership"]["world"]] == [4, 2]


def test_failed_worker_is_recorded_replaced_and_world_shrinks(settings, make_job):
    job = make_job()
    plan = admitted(("n1", "nvidia-a100"), ("n2", "nvidia-h100"), ("n3", "nvidia-a100"))
    pods = [
        running(job, i, t, n, f"127.1.0.{i + 1}", settings)
        for i, (n, t) in enumerate([("n1", "nvidia-a100"), ("n2", "nvidia-h100"), ("n3", "nvidia-a100")])
    ]
    first = r.reconcile_job(job, pods, plan, settings, NOW)
    assert first.status["membership"]["epoch"] == 1
    pods[2]["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {"name": "worker", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
        ],
    }
    job2 = make_job(status=first.status)
    out = r.reconcile_job(
        job2,
        pods,
        admitted(("n1", "nvidia-a100"), ("n2", "nvidia-h100"), ("n4", "nvidia-a100")),
        settings,
        NOW,
    )
    assert out.delete == [("j-worker-2", "pod-2", "WorkerFailed")]
    assert out.status["restarts"] == 1
    assert out.status["lastFailure"]["reason"] == "OOMKilled" and out.status["lastFailure"]["exitCode"] == 137
    assert out.status["membership"]["epoch"] == 2 and len(out.status["membership"]["world"]) == 2
    assert out.status["phase"] == "Recovering"
    # The replacement takes a fresh name: the failed pod's name is taken until it is gone.
    assert {p["metadata"]["name"] for p in out.apply} == {"j-worker-3"}
    assert any(e[0] == "Warning" and e[1] == "WorkerFailed" for e in out.events)


def test_too_many_failures_fail_the_job(settings, make_job):
    job = make_job(faultTolerance={"maxRestarts": 0})
    pods = [
        running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings, phase="Failed"),
        running(job, 1, "nvidia-a100", "n2", "127.1.0.2", settings),
    ]
    out = r.reconcile_job(job, pods, admitted(("n2", "nvidia-a100"), ("n3", "nvidia-a100")), settings, NOW)
    assert out.status["phase"] == "Failed"
    assert {x[0] for x in out.delete} == {"j-worker-0", "j-worker-1"}
    conds = {x["type"]: x for x in out.status["conditions"]}
    assert conds["Failed"]["status"] == "True" and conds["Stalled"]["status"] == "True"
    assert out.apply == []


def test_waiting_job_creates_nothing_and_says_why(settings, make_job):
    job = make_job()
    plan = pl.JobPlan(
        key="ns/j",
        admitted=False,
        workers=(),
        reason="InsufficientCapacity",
        message="needs 2 workers, 1 fits",
    )
    out = r.reconcile_job(job, [], plan, settings, NOW)
    assert out.apply == [] and out.delete == []
    assert out.status["phase"] == "Pending"
    assert out.status["waitingReason"] == "InsufficientCapacity"
    conds = {x["type"]: x for x in out.status["conditions"]}
    assert conds["Admitted"]["status"] == "False" and conds["Admitted"]["reason"] == "InsufficientCapacity"
    assert ("Normal", "InsufficientCapacity", "needs 2 workers, 1 fits") in out.events
    # Seen again with the same reason: no new Event (no loop of Events).
    again = r.reconcile_job(make_job(status=out.status), [], plan, settings, NOW)
    assert again.events == []


def test_stalled_job_creates_nothing(settings, make_job):
    job = make_job()
    out = r.reconcile_job(
        job, [], None, settings, NOW, stall=r.Stall("NoMatchingNodes", "spec.accelerators[0].type: ...")
    )
    assert out.apply == [] and out.delete == []
    conds = {x["type"]: x for x in out.status["conditions"]}
    assert conds["Stalled"]["status"] == "True" and conds["Stalled"]["reason"] == "NoMatchingNodes"
    assert ("Warning", "NoMatchingNodes", "Stalled: spec.accelerators[0].type: ...") in out.events


def test_suspend_deletes_workers_and_resume_replans(settings, make_job):
    job = make_job(suspend=True)
    pods = [running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings)]
    out = r.reconcile_job(job, pods, None, settings, NOW)
    assert out.status["phase"] == "Suspended" and out.delete == [("j-worker-0", "pod-0", "Suspended")]
    resumed = r.reconcile_job(
        make_job(status=out.status), [], admitted(("n1", "nvidia-a100"), ("n2", "nvidia-a100")), settings, NOW
    )
    assert any(e[1] == "Resumed" for e in resumed.events)
    assert len(resumed.apply) == 4


def test_a_resumed_job_is_admitted_again_not_recovering_from_a_loss(settings, make_job):
    """Suspended after it ran, then resumed: nothing was lost, so it is Admitted while its workers start
    (not Recovering with a WorkerLost), and Running once they run."""
    job = make_job()
    pods = [running(job, i, "nvidia-a100", f"n{i + 1}", f"127.1.0.{i + 1}", settings) for i in (0, 1)]
    plan = admitted(("n1", "nvidia-a100"), ("n2", "nvidia-a100"))
    ran = r.reconcile_job(job, pods, plan, settings, NOW)
    assert ran.status["phase"] == "Running" and ran.status["startTime"]
    suspended = r.reconcile_job(make_job(status=ran.status, suspend=True), pods, None, settings, NOW)
    assert suspended.status["phase"] == "Suspended" and len(suspended.delete) == 2
    resumed = r.reconcile_job(make_job(status=suspended.status), [], plan, settings, NOW)
    assert any(e[1] == "Resumed" for e in resumed.events)
    assert resumed.status["phase"] == "Admitted", resumed.status["phase"]
    assert _conditions(resumed.status)["Recovering"]["status"] == "False"
    assert not any(e[1] == "WorkerLost" for e in resumed.events)
    back = r.reconcile_job(make_job(status=resumed.status), pods, plan, settings, NOW)
    assert back.status["phase"] == "Running", back.status["phase"]
    assert len(back.status["membership"]["world"]) == 2


def test_success_when_all_workers_complete(settings, make_job):
    job = make_job(ttlSecondsAfterFinished=0)
    pods = [
        running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings, phase="Succeeded"),
        running(job, 1, "nvidia-a100", "n2", "127.1.0.2", settings, phase="Succeeded"),
    ]
    out = r.reconcile_job(job, pods, admitted(), settings, NOW)
    assert out.status["phase"] == "Succeeded" and out.status["completionTime"]
    done = r.reconcile_job(make_job(status=out.status, ttlSecondsAfterFinished=0), pods, None, settings, NOW)
    assert done.delete_job


def test_pod_the_scheduler_cannot_bind_is_replanned(settings, make_job):
    job = make_job()
    pinned = worker_pod(job, 0, "nvidia-a100", settings, node="n1")
    pinned["metadata"]["uid"] = "pod-0"
    pinned["status"] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/9 nodes are available",
            }
        ],
    }
    assert current_slots([pinned]) == [], "not offered to the planner as a placed worker"
    out = r.reconcile_job(
        job, [pinned], admitted(("n2", "nvidia-a100"), ("n3", "nvidia-a100")), settings, NOW
    )
    assert ("j-worker-0", "pod-0", "Unschedulable") in out.delete
    assert any(e[1] == "Replanned" for e in out.events)
    created = {(p["metadata"]["name"], (p["spec"].get("affinity") or {}) != {}) for p in out.apply}
    assert ("j-worker-1", True) in created and ("j-worker-2", True) in created


def test_a_missing_type_is_a_warning_and_no_type_at_all_a_stall(make_job):
    from heterotrain_operator.controller import missing_accelerators, pool_resources, semantic_stall

    nodes = [
        {
            "metadata": {"name": "n1", "labels": {c.LABEL_ACCELERATOR: "nvidia-a100"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "96"}},
        }
    ]
    types = pool_resources(nodes)
    assert types == {"nvidia-a100": {"nvidia.com/gpu"}}
    job = make_job()  # nvidia-a100 and nvidia-h100, which no node has
    (missing,) = missing_accelerators(job, types)
    assert (missing.type, missing.reason) == ("nvidia-h100", "NoMatchingNodes")
    assert missing.message.startswith("spec.accelerators[1].type")
    assert semantic_stall(job, [missing]) is None  # it runs on the A100s
    only_h100 = make_job(accelerators=[{"type": "nvidia-h100"}])
    stall = semantic_stall(only_h100, missing_accelerators(only_h100, types))
    assert stall is not None and stall.reason == "NoMatchingNodes"
    assert stall.message.startswith("spec.accelerators[0].type")
    wrong = make_job(accelerators=[{"type": "nvidia-a100", "resourceName": "example.com/gpu"}])
    stall = semantic_stall(wrong, missing_accelerators(wrong, types))
    assert stall is not None and stall.reason == "UnknownResourceName"
    assert stall.message.startswith("spec.accelerators[0].resourceName")
    assert missing_accelerators(make_job(accelerators=[{"type": "nvidia-a100"}]), types) == []


def test_a_job_runs_without_a_missing_type_with_a_warning_until_it_joins(settings, make_job):
    job = make_job(workers={"min": 1, "max": 3})
    missing = [
        r.Missing("nvidia-h100", "NoMatchingNodes", "spec.accelerators[1].type: no node has label ...")
    ]
    plan = admitted(("n1", "nvidia-a100"))
    pods = [running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings)]
    out = r.reconcile_job(job, pods, plan, settings, NOW, missing=missing)
    warn = _conditions(out.status)["AcceleratorsMissing"]
    assert out.status["phase"] == "Running" and warn["status"] == "True"
    assert warn["reason"] == "NoMatchingNodes" and warn["message"].startswith(
        "nvidia-h100: spec.accelerators[1]"
    )
    assert _conditions(out.status)["Stalled"]["status"] == "False"
    (event,) = [e for e in out.events if e[1] == "NoMatchingNodes"]
    assert event[0] == "Warning" and "nvidia-h100" in event[2]
    # held while the type is missing, without a new Event
    again = r.reconcile_job(
        make_job(status=out.status, workers={"min": 1, "max": 3}), pods, plan, settings, NOW, missing=missing
    )
    assert _conditions(again.status)["AcceleratorsMissing"]["status"] == "True"
    assert not [e for e in again.events if e[1] == "NoMatchingNodes"]
    # the type's nodes joined: the warning goes
    later = r.reconcile_job(
        make_job(status=again.status, workers={"min": 1, "max": 3}), pods, plan, settings, NOW
    )
    assert _conditions(later.status)["AcceleratorsMissing"]["status"] == "False"


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["type"]: x for x in status["conditions"]}


def test_succeeded_condition_holds_on_every_later_pass(settings, make_job):
    # kubectl wait --for=condition=Succeeded must succeed whenever it is asked, not only in the
    # one pass that saw the job complete.
    job = make_job()
    pods = [
        running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings, phase="Succeeded"),
        running(job, 1, "nvidia-a100", "n2", "127.1.0.2", settings, phase="Succeeded"),
    ]
    first = r.reconcile_job(job, pods, admitted(), settings, NOW)
    assert first.status["phase"] == "Succeeded"
    status = first.status
    for later, observed in ((NOW + timedelta(minutes=1), pods), (NOW + timedelta(hours=1), [])):
        out = r.reconcile_job(make_job(status=status), observed, None, settings, later)
        conds = _conditions(out.status)
        assert conds["Succeeded"]["status"] == "True" and conds["Succeeded"]["reason"] == "Completed"
        assert conds["Succeeded"]["message"] == "2 workers completed"
        assert conds["Ready"]["status"] == "True"
        assert out.status == first.status, "nothing to write: the status holds"
        assert out.events == []
        status = out.status


def test_failed_condition_holds_and_stays_stalled(settings, make_job):
    job = make_job(faultTolerance={"maxRestarts": 0})
    pods = [running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings, phase="Failed")]
    first = r.reconcile_job(job, pods, admitted(("n1", "nvidia-a100")), settings, NOW)
    assert first.status["phase"] == "Failed"
    again = r.reconcile_job(
        make_job(status=first.status, faultTolerance={"maxRestarts": 0}),
        [],
        None,
        settings,
        NOW + timedelta(minutes=5),
    )
    conds = _conditions(again.status)
    assert conds["Failed"]["status"] == "True" and conds["Failed"]["reason"] == "MaxRestartsExceeded"
    assert conds["Stalled"]["status"] == "True" and conds["Stalled"]["message"] == conds["Failed"]["message"]
    assert again.status == first.status and again.events == []


def test_a_job_finished_before_the_fix_gets_its_terminal_condition_back(settings, make_job):
    job = make_job()
    pods = [running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings, phase="Succeeded")]
    done = r.reconcile_job(job, pods, admitted(), settings, NOW).status
    lost = {
        **done,
        "conditions": [
            {**c, "status": "False", "reason": "NotApplicable"} if c["type"] == "Succeeded" else c
            for c in done["conditions"]
        ],
    }
    out = r.reconcile_job(make_job(status=lost), pods, None, settings, NOW)
    assert _conditions(out.status)["Succeeded"]["status"] == "True"


def _phase_scenarios(settings, make_job):  # type: ignore[no-untyped-def]
    """(name, outcome) for a job in every phase, stalled and not."""
    job = make_job()
    a100 = running(job, 0, "nvidia-a100", "n1", "127.1.0.1", settings)
    h100 = running(job, 1, "nvidia-h100", "n2", "127.1.0.2", settings)
    plan = admitted(("n1", "nvidia-a100"), ("n2", "nvidia-h100"))
    waiting = pl.JobPlan(key="ns/j", admitted=False, workers=(), reason="InsufficientCapacity", message="m")
    run = r.reconcile_job(job, [a100, h100], plan, settings, NOW)
    stall = r.Stall("NoMatchingNodes", "spec.accelerators[1].type: no node has it")
    failed = running(job, 2, "nvidia-a100", "n3", "127.1.0.3", settings, phase="Failed")
    yield "pending", r.reconcile_job(job, [], waiting, settings, NOW)
    yield "admitted", r.reconcile_job(job, [], plan, settings, NOW)
    yield "running", run
    yield "recovering", r.reconcile_job(make_job(status=run.status), [a100], plan, settings, NOW)
    yield "suspended", r.reconcile_job(make_job(suspend=True), [a100], None, settings, NOW)
    yield "stalled new", r.reconcile_job(job, [], None, settings, NOW, stall)
    yield (
        "stalled running",
        r.reconcile_job(make_job(status=run.status), [a100, h100], None, settings, NOW, stall),
    )
    yield (
        "failed",
        r.reconcile_job(make_job(faultTolerance={"maxRestarts": 0}), [failed], plan, settings, NOW),
    )


def test_kstatus_reconciling_and_stalled_are_never_both_true(settings, make_job):
    seen = set()
    for name, out in _phase_scenarios(settings, make_job):
        conds = _conditions(out.status)
        seen.add(out.status["phase"])
        stalled, reconciling = conds["Stalled"]["status"] == "True", conds["Reconciling"]["status"] == "True"
        assert not (stalled and reconciling), name
        if name.startswith("stalled"):
            assert stalled and out.status["phase"] == "Pending", name
            assert conds["Reconciling"]["reason"] == "NotApplicable", name
        if stalled:
            assert conds["Ready"]["status"] == "False", name
    assert seen == {"Pending", "Admitted", "Running", "Recovering", "Suspended", "Failed"}


def test_unparseable_job_reports_one_stalled_condition():
    status = r.unparseable_status(3, r.Stall("InvalidSpec", "spec.workers: Field required"), NOW)
    assert status == {
        "observedGeneration": 3,
        "phase": "Pending",
        "conditions": [
            {
                "type": "Stalled",
                "status": "True",
                "reason": "InvalidSpec",
                "message": "spec.workers: Field required",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 3,
            }
        ],
    }
