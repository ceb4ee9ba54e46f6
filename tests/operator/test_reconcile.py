"""The pure reconcile of one job: pods, membership, status and events from observed state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from heterotrain_operator import placement as pl
from heterotrain_operator import reconcile as r
from heterotrain_operator.desired import SCHEDULING_GATE, worker_pod
from heterotrain_runtime import contract as c

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
    assert init["command"][:3] == c.INSTALL_COMMAND
    ctr = pod["spec"]["containers"][0]
    assert ctr["command"][:5] == ["python", "-m", "heterotrain_runtime", "launch", "--"]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["PYTHONPATH"]["value"] == f"{c.RUNTIME_MOUNT_PATH}:/app"
    assert env[c.ENV_ACCELERATOR]["value"] == "nvidia-h100"
    assert env[c.ENV_POD_NAME]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {v["name"] for v in pod["spec"]["volumes"]} >= {c.RUNTIME_VOLUME_NAME}


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
    assert r.current_slots([pinned]) == [], "not offered to the planner as a placed worker"
    out = r.reconcile_job(
        job, [pinned], admitted(("n2", "nvidia-a100"), ("n3", "nvidia-a100")), settings, NOW
    )
    assert ("j-worker-0", "pod-0", "Unschedulable") in out.delete
    assert any(e[1] == "Replanned" for e in out.events)
    created = {(p["metadata"]["name"], (p["spec"].get("affinity") or {}) != {}) for p in out.apply}
    assert ("j-worker-1", True) in created and ("j-worker-2", True) in created


def test_semantic_stalls_name_the_field(make_job):
    from heterotrain_operator.controller import pool_resources, semantic_stall

    nodes = [
        {
            "metadata": {"name": "n1", "labels": {c.LABEL_ACCELERATOR: "nvidia-a100"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "96"}},
        }
    ]
    types = pool_resources(nodes)
    assert types == {"nvidia-a100": {"nvidia.com/gpu"}}
    missing = semantic_stall(make_job(), types)  # the job also names nvidia-h100, which no node has
    assert missing is not None and missing.reason == "NoMatchingNodes"
    assert missing.message.startswith("spec.accelerators[1].type")
    wrong = semantic_stall(
        make_job(accelerators=[{"type": "nvidia-a100", "resourceName": "example.com/gpu"}]), types
    )
    assert wrong is not None and wrong.reason == "UnknownResourceName"
    assert wrong.message.startswith("spec.accelerators[0].resourceName")
    assert semantic_stall(make_job(accelerators=[{"type": "nvidia-a100"}]), types) is None
