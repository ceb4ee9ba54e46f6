"""The real controller over its cache, with an in-memory stand-in for the API server's writes (no scheduler,
no kubelet: a test binds and stops pods itself; the e2e suite runs the real ones)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import heterotrain_contract as c
from heterotrain_operator import observe as o
from heterotrain_operator.cache import ClusterCache

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


def by_node(api: Api, job_name: str) -> dict[str, str | None]:
    return {name: o.pod_node(p) for name, p in api.workers(job_name).items() if not o.is_deleting(p)}


def cluster() -> tuple[ClusterCache, Api, Clock]:
    """An Ascend node of 2 accelerators and an A100 node of 1, no pods, no jobs yet."""
    clock = Clock()
    cache = ClusterCache()
    api = Api(cache, clock, grace=60)
    cache.replace(
        "nodes",
        [node("asc", ASCEND, "huawei.com/Ascend910", 2), node("gpu", A100, "nvidia.com/gpu", 1)],
    )
    cache.replace("pods", [])
    cache.replace("jobs", [])
    return cache, api, clock
