"""Per-accelerator-type pod settings: merged over the job's, in the pods of that type only, seen by the planner."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import heterotrain_contract as c
from heterotrain_operator import observe as o
from heterotrain_operator import placement as pl
from heterotrain_operator import reconcile as r
from heterotrain_operator.desired import worker_pod

NOW = datetime(2026, 1, 1, tzinfo=UTC)

SPEC: dict[str, Any] = {
    "image": "train:1",
    "env": [{"name": "A", "value": "job"}, {"name": "B", "value": "job"}],
    "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "128Gi"}},
    "nodeSelector": {"zone": "a", "rack": "r1"},
    "tolerations": [{"key": "gpu", "operator": "Exists"}],
    "precision": "bf16",
    "accelerators": [
        {
            "type": "huawei-ascend-910b",
            "perWorker": 8,
            "image": "train:1-cann8",
            "env": [{"name": "B", "value": "ascend"}, {"name": "HCCL_CONNECT_TIMEOUT", "value": "1200"}],
            "resources": {"requests": {"memory": "96Gi"}, "limits": {"memory": "96Gi"}},
            "nodeSelector": {"zone": "b"},
            "tolerations": [{"key": "npu", "operator": "Exists", "effect": "NoSchedule"}],
            "precision": "fp16",
        },
        {"type": "nvidia-h100", "perWorker": 8},
    ],
}


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    ctr: dict[str, Any] = pod["spec"]["containers"][0]
    return ctr


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in _container(pod)["env"]}


def test_a_types_settings_merge_over_the_jobs_in_its_pods_only(settings, make_job):
    job = make_job(**SPEC)
    ascend = worker_pod(job, 0, "huawei-ascend-910b", settings)
    h100 = worker_pod(job, 1, "nvidia-h100", settings)
    # image: replaced for the type that sets one
    assert _container(ascend)["image"] == "train:1-cann8" and _container(h100)["image"] == "train:1"
    # env: merged by name (the type's value wins, its new names come after the job's)
    names = [e["name"] for e in _container(ascend)["env"]]
    assert names.index("A") < names.index("B") < names.index("HCCL_CONNECT_TIMEOUT")
    assert (_env(ascend)["A"], _env(ascend)["B"], _env(ascend)["HCCL_CONNECT_TIMEOUT"]) == (
        "job",
        "ascend",
        "1200",
    )
    assert (_env(h100)["B"], "HCCL_CONNECT_TIMEOUT" in _env(h100)) == ("job", False)
    # precision: the type's, else the job's
    assert _env(ascend)[c.ENV_PRECISION] == "fp16" and _env(h100)[c.ENV_PRECISION] == "bf16"
    # resources: key by key, plus the accelerators
    res = _container(ascend)["resources"]
    assert res["requests"] == {"cpu": "8", "memory": "96Gi", "huawei.com/Ascend910": "8"}
    assert res["limits"] == {"memory": "96Gi", "huawei.com/Ascend910": "8"}
    assert _container(h100)["resources"]["requests"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "8"}
    # nodeSelector: key by key, the type label from the type; tolerations: added
    assert ascend["spec"]["nodeSelector"] == {
        "zone": "b",
        "rack": "r1",
        c.LABEL_ACCELERATOR: "huawei-ascend-910b",
    }
    assert h100["spec"]["nodeSelector"] == {"zone": "a", "rack": "r1", c.LABEL_ACCELERATOR: "nvidia-h100"}
    assert [t["key"] for t in ascend["spec"]["tolerations"]] == ["gpu", "npu"]
    assert [t["key"] for t in h100["spec"]["tolerations"]] == ["gpu"]


def test_the_planner_sees_each_types_settings(make_job):
    job = make_job(**SPEC)
    req = o.job_request(job, [])
    ascend, h100 = req.accelerators
    assert dict(req.node_selector_of(ascend)) == {"zone": "b", "rack": "r1"}
    assert [t.key for t in req.tolerations_of(ascend)] == ["gpu", "npu"]
    assert req.memory_of(ascend) == 96 * 1024**3 and req.cpu_milli_of(ascend) == 8000
    # a type without settings of its own takes the job's
    assert (h100.node_selector, h100.tolerations, h100.memory_per_worker) == (None, None, None)
    assert req.memory_of(h100) == 64 * 1024**3 and dict(req.node_selector_of(h100)) == {
        "zone": "a",
        "rack": "r1",
    }
    snap = pl.ClusterSnapshot(
        tuple(
            pl.Node(
                name=f"{t}-{z}",
                accelerator=t,
                resource_name=res,
                accelerators_allocatable=8,
                accelerators_used=0,
                cpu_milli_allocatable=64_000,
                cpu_milli_used=0,
                memory_allocatable=512 * 1024**3,
                memory_used=0,
                taints=(pl.Taint("npu", "", "NoSchedule"),) if t.startswith("huawei") else (),
                labels=(("zone", z), ("rack", "r1")),
            )
            for t, res in (("huawei-ascend-910b", "huawei.com/Ascend910"), ("nvidia-h100", "nvidia.com/gpu"))
            for z in "ab"
        )
    )
    result = pl.plan(snap, [req], now=0.0)["ns/j"]
    assert sorted(w.node for w in result.workers) == ["huawei-ascend-910b-b", "nvidia-h100-a"]


def test_the_status_shows_each_pools_precision(settings, make_job):
    job = make_job(**{**SPEC, "workers": {"min": 2, "max": 2}})
    plan = pl.JobPlan(
        key="ns/j",
        admitted=True,
        workers=(pl.WorkerSlot("n1", "huawei-ascend-910b"), pl.WorkerSlot("n2", "nvidia-h100")),
    )
    out = r.reconcile_job(job, [], plan, settings, NOW)
    by_type = out.status["workers"]["byType"]
    assert by_type["huawei-ascend-910b"]["precision"] == "fp16"
    assert by_type["nvidia-h100"]["precision"] == "bf16"
