"""A pod being deleted gives its capacity back to the plan that deleted it: passes of the real controller
over its cache, with an in-memory stand-in for the API server's writes (the e2e suite runs the real one).

The case is a preemption: the victim checkpoints for its grace period while the preemptor's workers wait
for the scheduler to bind them.  Counting the victim as used while it terminates made the next pass undo
the preemption (the preemptor no longer fit, so its workers were deleted and the victim's job took the room
back), and the preemptor could wait for ever.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import heterotrain_contract as c
from heterotrain_operator import observe as o
from heterotrain_operator.cache import ClusterCache
from heterotrain_operator.controller import Controller
from heterotrain_operator.settings import Settings

T0 = 1_800_000_000.0
ASCEND = "huawei-ascend-910b"
A100 = "nvidia-a100"


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class Api:
    """What the controller writes, answered as the API server would (no scheduler, no kubelet: the test
    binds and stops pods itself)."""

    def __init__(self, cache: ClusterCache, clock: Clock, grace: int) -> None:
        self.cache, self.clock, self.grace = cache, clock, grace
        self.deleted: list[tuple[str, str]] = []  # (pod, reason as logged: taken from the pod's name)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        old = self.objects.get(key)
        new = copy.deepcopy(obj)
        new["metadata"]["uid"] = old["metadata"]["uid"] if old else f"uid-{meta['name']}"
        if old is not None and "status" in old:
            new["status"] = old["status"]
        self.objects[key] = new
        return copy.deepcopy(new)

    def apply_job_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> dict[str, Any]:
        job = copy.deepcopy(self.objects[("HeteroTrainJob", namespace, name)])
        job["status"] = copy.deepcopy(status)
        self.objects[("HeteroTrainJob", namespace, name)] = job
        return job

    def delete_pod(self, namespace: str, name: str, uid: str, grace_seconds: int | None = None) -> Any:
        pod = self.objects.get(("Pod", namespace, name))
        if pod is None or pod["metadata"]["uid"] != uid:
            return None
        self.deleted.append((namespace, name))
        grace = self.grace if grace_seconds is None else grace_seconds
        if grace == 0 or not (pod.get("spec") or {}).get("nodeName"):
            del self.objects[("Pod", namespace, name)]
            return {"kind": "Status"}
        pod["metadata"]["deletionTimestamp"] = stamp(self.clock() + grace)
        return copy.deepcopy(pod)

    def event(self, job: Any, type_: str, reason: str, message: str) -> None:
        pass

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        raise AssertionError("no job is deleted here")

    def get_lease(self, namespace: str, name: str) -> None:
        return None

    # --- what the scheduler and the kubelet would do -------------------------------------------------
    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[("Pod", namespace, name)]

    def bind(self, namespace: str, name: str) -> None:
        pod = self.pod(namespace, name)
        pod["spec"]["nodeName"] = o.pod_node(pod)
        pod["status"] = {"phase": "Running", "podIP": f"198.18.0.{len(self.objects)}"}
        self.cache.upsert("pods", copy.deepcopy(pod))

    def cannot_bind(self, namespace: str, name: str) -> None:
        pod = self.pod(namespace, name)
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        pod["status"] = {"phase": "Pending", "conditions": [cond]}
        self.cache.upsert("pods", copy.deepcopy(pod))

    def gone(self, namespace: str, name: str) -> None:
        pod = self.objects.pop(("Pod", namespace, name))
        self.cache.remove("pods", pod)

    def workers(self, job: str) -> dict[str, dict[str, Any]]:
        return {
            k[2]: v
            for k, v in self.objects.items()
            if k[0] == "Pod" and v["metadata"]["labels"].get(c.LABEL_JOB) == job
        }


def node(name: str, type_: str, resource: str, count: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": {c.LABEL_ACCELERATOR: type_}},
        "spec": {},
        "status": {
            "allocatable": {resource: str(count), "cpu": "64", "memory": "512Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def job(
    name: str, priority: int, workers: tuple[int, int], types: list[str], created: float
) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": c.KIND,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": stamp(created),
        },
        "spec": {
            "image": "img",
            "command": ["python", "train.py"],
            "priority": priority,
            "workers": {"min": workers[0], "max": workers[1]},
            "accelerators": [{"type": t} for t in types],
            "globalBatchSize": 96,
        },
    }


def setup() -> tuple[Controller, Api, Clock]:
    clock = Clock()
    cache = ClusterCache()
    api = Api(cache, clock, grace=60)
    cache.replace(
        "nodes",
        [node("asc", ASCEND, "huawei.com/Ascend910", 2), node("gpu", A100, "nvidia.com/gpu", 1)],
    )
    cache.replace("pods", [])
    low = job("low", 0, (1, 2), [A100, ASCEND], T0 - 600)
    api.objects[("HeteroTrainJob", "ns", "low")] = low
    cache.replace("jobs", [low])
    ctl = Controller(api, Settings(), cache, clock=clock)  # type: ignore[arg-type]
    ctl.reconcile_all()
    for name in api.workers("low"):
        api.bind("ns", name)
    ctl.reconcile_all()
    return ctl, api, clock


def by_node(api: Api, job_name: str) -> dict[str, str | None]:
    return {name: o.pod_node(p) for name, p in api.workers(job_name).items() if not o.is_deleting(p)}


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
