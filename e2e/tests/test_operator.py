"""The operator's lifecycle on the real control plane (kwok nodes: pods are bound, nothing runs).

Jobs here tolerate the kwok taint, so their workers land on simulated pools,
where kwok moves them to Running with a pod IP: fast, and enough to check what
the operator creates, its status and its Events.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from heterotrain_e2e.testing import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def job_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "image": "example.com/train:1",
        "command": ["python", "train.py"],
        "workers": {"min": 2, "max": 2},
        "accelerators": [{"type": "nvidia-a100"}],
        "globalBatchSize": 64,
        "tolerations": [KWOK_TOLERATION],
        "nodeSelector": {"heterotrain.io/runner": "kwok"},
    }
    base.update(spec)
    return {
        "apiVersion": "heterotrain.io/v1alpha1",
        "kind": "HeteroTrainJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


@pytest.fixture
def ns(cluster: Cluster) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def job(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return get_json(cluster, "-n", ns, "htj", name)


def pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return get_json(cluster, "-n", ns, "pods", "-l", f"heterotrain.io/job-name={name}")["items"]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def events(cluster: Cluster, ns: str, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    items = get_json(cluster, "-n", ns, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if reason is None or e["reason"] == reason]


def test_job_yields_planned_pods_with_the_runtime_injected(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    apply(cluster, job_manifest("inject", ns, workers={"min": 3, "max": 3}))
    wait_for(
        "phase Running",
        lambda: (job(cluster, ns, "inject").get("status") or {}).get("phase") == "Running",
        timeout=60,
    )
    items = pods(cluster, ns, "inject")
    assert sorted(p["metadata"]["name"] for p in items) == [
        "inject-worker-0",
        "inject-worker-1",
        "inject-worker-2",
    ]
    for p in items:
        spec = p["spec"]
        assert "schedulingGates" not in spec, "placed pods are ungated"
        assert spec["nodeName"].startswith("a100"), spec[
            "nodeName"
        ]  # bound by kube-scheduler to the planned pool
        init = spec["initContainers"][0]
        assert init["command"][:3] == ["python", "-m", "heterotrain_runtime.install"]
        ctr = spec["containers"][0]
        env = {e["name"]: e for e in ctr["env"]}
        assert env["PYTHONPATH"]["value"].startswith("/opt/heterotrain")
        assert env["HETEROTRAIN_JOB_NAME"]["value"] == "inject"
        assert env["HETEROTRAIN_ACCELERATOR"]["value"] == "nvidia-a100"
        assert ctr["command"][:4] == ["python", "-m", "heterotrain_runtime", "launch"]
        assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert any(v["name"] == "heterotrain-runtime" and "emptyDir" in v for v in spec["volumes"])
    st = job(cluster, ns, "inject")["status"]
    assert st["workers"] == {"desired": 3, "ready": 3, "byType": {"nvidia-a100": {"desired": 3, "ready": 3}}}
    assert [m["rank"] for m in st["membership"]["world"]] == [0, 1, 2]
    assert st["observedGeneration"] == job(cluster, ns, "inject")["metadata"]["generation"]
    assert condition(job(cluster, ns, "inject"), "Ready")["status"] == "True"
    for kind in ("serviceaccount", "role", "rolebinding", "service"):
        got = get_json(cluster, "-n", ns, kind, "-l", "heterotrain.io/job-name=inject")["items"]
        assert len(got) == 1, kind
    # The printer columns show the job's state.
    row = cluster.kubectl("get", "-n", ns, "htj", "inject").stdout
    assert "Running" in row and "nvidia-a100:3" in row

    # Deleting the job removes everything it owned.
    cluster.kubectl("delete", "-n", ns, "htj", "inject", "--wait=false")
    wait_for("pods gone", lambda: not pods(cluster, ns, "inject"), timeout=60)
    for kind in ("serviceaccount", "role", "rolebinding", "service"):
        wait_for(
            f"{kind} gone",
            lambda kind=kind: (
                not get_json(cluster, "-n", ns, kind, "-l", "heterotrain.io/job-name=inject")["items"]
            ),
            timeout=60,
        )
    wait_for(
        "job gone", lambda: cluster.kubectl("get", "-n", ns, "htj", "inject", check=False).returncode != 0
    )


def test_operator_killed_mid_creation_converges_without_duplicates(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    n = 40
    operator.kill()
    apply(cluster, job_manifest("crash", ns, workers={"min": n, "max": n}, globalBatchSize=4 * n))
    operator.start()
    wait_for("some pods created", lambda: len(pods(cluster, ns, "crash")) >= 3, timeout=60, interval=0.05)
    operator.kill()  # SIGKILL in the middle of creating the pods
    created = len(pods(cluster, ns, "crash"))
    operator.start()
    wait_for(
        "phase Running",
        lambda: (job(cluster, ns, "crash").get("status") or {}).get("phase") == "Running",
        timeout=120,
    )
    items = pods(cluster, ns, "crash")
    names = sorted(p["metadata"]["name"] for p in items)
    assert names == sorted(f"crash-worker-{i}" for i in range(n)), f"had {created} pods at the kill"
    st = job(cluster, ns, "crash")["status"]
    assert st["workers"]["desired"] == n and st["workers"]["ready"] == n
    assert len(st["membership"]["world"]) == n
    assert sorted(x["pod"] for x in st["placement"]) == names
    assert {x["pod"]: x["node"] for x in st["placement"]} == {
        p["metadata"]["name"]: p["spec"]["nodeName"] for p in items
    }


def test_semantic_error_stalls_with_event_and_creates_nothing(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    apply(
        cluster,
        job_manifest("typo", ns, accelerators=[{"type": "nvidia-a10o", "resourceName": "nvidia.com/gpu"}]),
    )
    wait_for(
        "Stalled", lambda: condition(job(cluster, ns, "typo"), "Stalled").get("status") == "True", timeout=60
    )
    st = job(cluster, ns, "typo")
    assert condition(st, "Stalled")["reason"] == "NoMatchingNodes"
    assert "spec.accelerators[0].type" in condition(st, "Stalled")["message"]
    wait_for("a Warning event", lambda: events(cluster, ns, "typo", "NoMatchingNodes"), timeout=30)
    # Not retried in a loop: several more reconcile passes post no more Events and create nothing.
    seen = operator.reconciles()
    wait_for("more reconcile passes", lambda: operator.reconciles() >= seen + 3, timeout=60)
    (ev,) = events(cluster, ns, "typo", "NoMatchingNodes")
    assert ev.get("count", 1) == 1, "Events are aggregated: a repeat would bump the count"
    assert pods(cluster, ns, "typo") == []
    assert get_json(cluster, "-n", ns, "serviceaccount", "-l", "heterotrain.io/job-name=typo")["items"] == []


def test_per_type_image_env_and_precision_reach_that_types_pods_only(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    apply(
        cluster,
        job_manifest(
            "pertype",
            ns,
            env=[{"name": "SHARED", "value": "job"}, {"name": "OVERRIDDEN", "value": "job"}],
            precision="bf16",
            accelerators=[
                {
                    "type": "huawei-ascend-910b",
                    "maxWorkers": 1,
                    "image": "example.com/train:1-cann8",
                    "env": [
                        {"name": "OVERRIDDEN", "value": "ascend"},
                        {"name": "HCCL_BUFFSIZE", "value": "200"},
                    ],
                    "precision": "fp16",
                },
                {"type": "nvidia-a100", "maxWorkers": 1},
            ],
        ),
    )
    wait_for("two pods", lambda: len(pods(cluster, ns, "pertype")) == 2, timeout=60)
    by_type = {p["metadata"]["labels"]["heterotrain.io/accelerator"]: p for p in pods(cluster, ns, "pertype")}
    ctr = {t: p["spec"]["containers"][0] for t, p in by_type.items()}
    env = {t: {e["name"]: e.get("value") for e in c["env"]} for t, c in ctr.items()}
    assert ctr["huawei-ascend-910b"]["image"] == "example.com/train:1-cann8"
    assert ctr["nvidia-a100"]["image"] == "example.com/train:1"
    assert env["huawei-ascend-910b"]["HCCL_BUFFSIZE"] == "200" and "HCCL_BUFFSIZE" not in env["nvidia-a100"]
    assert (env["huawei-ascend-910b"]["OVERRIDDEN"], env["nvidia-a100"]["OVERRIDDEN"]) == ("ascend", "job")
    assert env["huawei-ascend-910b"]["SHARED"] == env["nvidia-a100"]["SHARED"] == "job"
    assert (
        env["huawei-ascend-910b"]["HETEROTRAIN_PRECISION"],
        env["nvidia-a100"]["HETEROTRAIN_PRECISION"],
    ) == (
        "fp16",
        "bf16",
    )
    st = wait_for(
        "the pools in the status",
        lambda: ((job(cluster, ns, "pertype").get("status") or {}).get("workers") or {}).get("byType"),
        timeout=60,
    )
    assert st["huawei-ascend-910b"]["precision"] == "fp16" and st["nvidia-a100"]["precision"] == "bf16"
    # an invalid override is refused by the API server, naming the field
    bad = job_manifest(
        "pertype-bad", ns, accelerators=[{"type": "nvidia-a100", "env": [{"name": "HETEROTRAIN_PRECISION"}]}]
    )
    out = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and "spec.accelerators[0].env" in out.stderr, out.stderr


def kwok_node(name: str, type_: str, resource: str, count: int = 8) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "heterotrain.io/accelerator": type_,
                "heterotrain.io/runner": "kwok",
                "kubernetes.io/os": "linux",
            },
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "192", "memory": "2Ti", "pods": "110", resource: str(count)},
            "capacity": {"cpu": "192", "memory": "2Ti", "pods": "110", resource: str(count)},
        },
    }


def test_a_type_no_node_has_warns_the_job_runs_on_the_others_and_takes_it_when_it_joins(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    # nvidia-l40s: a known type no node of the default profile has
    apply(
        cluster,
        job_manifest(
            "partial",
            ns,
            workers={"min": 1, "max": 2},
            accelerators=[{"type": "nvidia-l40s", "maxWorkers": 1}, {"type": "nvidia-a100", "maxWorkers": 1}],
        ),
    )
    st = wait_for(
        "Running on the A100s",
        lambda: (s := job(cluster, ns, "partial")).get("status", {}).get("phase") == "Running" and s,
        timeout=60,
    )
    warn = condition(st, "AcceleratorsMissing")
    assert warn["status"] == "True" and warn["reason"] == "NoMatchingNodes", warn
    assert "nvidia-l40s" in warn["message"] and "spec.accelerators[0].type" in warn["message"]
    assert condition(st, "Stalled")["status"] == "False"
    assert {p["metadata"]["labels"]["heterotrain.io/accelerator"] for p in pods(cluster, ns, "partial")} == {
        "nvidia-a100"
    }
    (ev,) = wait_for("a Warning Event", lambda: events(cluster, ns, "partial", "NoMatchingNodes"), timeout=30)
    assert ev["type"] == "Warning" and "nvidia-l40s" in ev["message"]
    node = kwok_node(f"l40s-{ns}", "nvidia-l40s", "nvidia.com/gpu")
    try:
        apply(cluster, node)
        wait_for(
            "an L40S worker once its node joined",
            lambda: (
                "nvidia-l40s"
                in {
                    p["metadata"]["labels"]["heterotrain.io/accelerator"]
                    for p in pods(cluster, ns, "partial")
                }
            ),
            timeout=90,
        )
        wait_for(
            "the warning cleared",
            lambda: condition(job(cluster, ns, "partial"), "AcceleratorsMissing").get("status") == "False",
            timeout=60,
        )
    finally:
        cluster.kubectl("delete", "-n", ns, "htj", "partial", "--wait=false", check=False)
        wait_for("partial pods gone", lambda: not pods(cluster, ns, "partial"), timeout=60)
        cluster.kubectl("delete", "node", node["metadata"]["name"], check=False)


def test_gang_waits_with_reason_then_is_admitted_when_capacity_frees(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    # 8 whole MI300X nodes are needed; the default profile has 6.
    apply(
        cluster,
        job_manifest(
            "gang", ns, workers={"min": 8, "max": 8}, accelerators=[{"type": "amd-mi300x", "perWorker": 8}]
        ),
    )
    wait_for(
        "waiting reason",
        lambda: (job(cluster, ns, "gang").get("status") or {}).get("waitingReason"),
        timeout=60,
    )
    st = job(cluster, ns, "gang")
    assert st["status"]["phase"] == "Pending"
    assert condition(st, "Admitted")["status"] == "False"
    assert pods(cluster, ns, "gang") == [], "nothing is placed before the minimum fits"
    wait_for(
        "an Event with the reason",
        lambda: events(cluster, ns, "gang", st["status"]["waitingReason"]),
        timeout=30,
    )
    # Capacity frees up: two more MI300X nodes join.
    nodes = []
    for i in range(2):
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"mi300x-extra-{ns}-{i}",
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "heterotrain.io/accelerator": "amd-mi300x",
                        "heterotrain.io/runner": "kwok",
                        "kubernetes.io/os": "linux",
                    },
                },
                "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
                "status": {
                    "allocatable": {"cpu": "192", "memory": "2Ti", "pods": "110", "amd.com/gpu": "8"},
                    "capacity": {"cpu": "192", "memory": "2Ti", "pods": "110", "amd.com/gpu": "8"},
                },
            }
        )
    try:
        apply(cluster, {"apiVersion": "v1", "kind": "List", "items": nodes})
        wait_for(
            "admitted and running",
            lambda: (job(cluster, ns, "gang").get("status") or {}).get("phase") == "Running",
            timeout=90,
        )
        assert len(pods(cluster, ns, "gang")) == 8
        assert condition(job(cluster, ns, "gang"), "Admitted")["status"] == "True"
    finally:
        cluster.kubectl("delete", "-n", ns, "htj", "gang", "--wait=false", check=False)
        wait_for("gang pods gone", lambda: not pods(cluster, ns, "gang"), timeout=60)
        for nd in nodes:
            cluster.kubectl("delete", "node", nd["metadata"]["name"], check=False)


def test_three_pools_and_suspend_resume(cluster: Cluster, operator: OperatorProcess, ns: str):
    accs = [{"type": t, "maxWorkers": 2} for t in ("nvidia-h100", "nvidia-h20", "huawei-ascend-910b")]
    apply(cluster, job_manifest("mix", ns, workers={"min": 6, "max": 6}, accelerators=accs))
    wait_for(
        "Running", lambda: (job(cluster, ns, "mix").get("status") or {}).get("phase") == "Running", timeout=60
    )
    items = pods(cluster, ns, "mix")
    by_type: dict[str, int] = {}
    for p in items:
        node = get_json(cluster, "node", p["spec"]["nodeName"])
        assert (
            node["metadata"]["labels"]["heterotrain.io/accelerator"]
            == p["metadata"]["labels"]["heterotrain.io/accelerator"]
        )
        t = p["metadata"]["labels"]["heterotrain.io/accelerator"]
        by_type[t] = by_type.get(t, 0) + 1
    assert by_type == {"nvidia-h100": 2, "nvidia-h20": 2, "huawei-ascend-910b": 2}
    assert job(cluster, ns, "mix")["status"]["mix"] == "huawei-ascend-910b:2,nvidia-h100:2,nvidia-h20:2"

    cluster.kubectl("patch", "-n", ns, "htj", "mix", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for(
        "Suspended and no pods",
        lambda: job(cluster, ns, "mix")["status"]["phase"] == "Suspended" and not pods(cluster, ns, "mix"),
        timeout=60,
    )
    assert condition(job(cluster, ns, "mix"), "Suspended")["status"] == "True"
    cluster.kubectl("patch", "-n", ns, "htj", "mix", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for("Running again", lambda: job(cluster, ns, "mix")["status"]["phase"] == "Running", timeout=60)
    assert len(pods(cluster, ns, "mix")) == 6
    assert events(cluster, ns, "mix", "Resumed")


def fail_pod(cluster: Cluster, ns: str, pod: str, reason: str = "OOMKilled", code: int = 137) -> None:
    """Mark a worker as failed, as a kubelet would after its container died (kwok runs no process)."""
    status = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "worker",
                    "image": "x",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": reason,
                            "startedAt": "2026-01-01T00:00:00Z",
                            "finishedAt": "2026-01-01T00:00:01Z",
                        }
                    },
                }
            ],
        }
    }
    cluster.kubectl(
        "patch", "-n", ns, "pod", pod, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )


@pytest.mark.parametrize("policy", ["Replace", "Shrink"])
def test_worker_failure_is_recorded_and_handled(
    cluster: Cluster, operator: OperatorProcess, ns: str, policy: str
):
    name = f"ft-{policy.lower()}"
    apply(
        cluster,
        job_manifest(
            name,
            ns,
            workers={"min": 1, "max": 2},
            faultTolerance={"onWorkerFailure": policy, "maxRestarts": 3},
        ),
    )
    wait_for(
        "Running", lambda: (job(cluster, ns, name).get("status") or {}).get("phase") == "Running", timeout=60
    )
    epoch = job(cluster, ns, name)["status"]["membership"]["epoch"]
    fail_pod(cluster, ns, f"{name}-worker-0")
    st = wait_for(
        "the failure in status",
        lambda: (s := job(cluster, ns, name)["status"]).get("restarts") == 1 and s,
        timeout=60,
    )
    assert st["lastFailure"]["pod"] == f"{name}-worker-0"
    assert st["lastFailure"]["reason"] == "OOMKilled" and st["lastFailure"]["exitCode"] == 137
    assert events(cluster, ns, name, "WorkerFailed")
    if policy == "Replace":
        final = wait_for(
            "two workers again",
            lambda: (
                (s := job(cluster, ns, name)["status"])["phase"] == "Running"
                and s["workers"]["ready"] == 2
                and s
            ),
            timeout=60,
        )
        assert sorted(p["metadata"]["name"] for p in pods(cluster, ns, name)) == [
            f"{name}-worker-1",
            f"{name}-worker-2",
        ]
        assert final["membership"]["epoch"] >= epoch + 2  # shrank, then grew back
    else:
        final = wait_for(
            "running on the survivor",
            lambda: (
                (s := job(cluster, ns, name)["status"])["phase"] == "Running"
                and not any(p["metadata"]["name"] == f"{name}-worker-0" for p in pods(cluster, ns, name))
                and s
            ),
            timeout=60,
        )
        assert final["workers"]["ready"] == 1 and final["workers"]["desired"] == 1
        assert [p["metadata"]["name"] for p in pods(cluster, ns, name)] == [f"{name}-worker-1"]
        assert final["membership"]["epoch"] == epoch + 1
    # Aggregated: every world change so far is one Event object whose count grew (not one object each).
    (changed,) = events(cluster, ns, name, "MembershipChanged")
    assert changed["count"] >= 2 and f"epoch {final['membership']['epoch']}:" in changed["message"]
