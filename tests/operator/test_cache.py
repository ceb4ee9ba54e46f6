"""The watch-fed cache: never goes back in time, tells a change that matters from a heartbeat."""

from __future__ import annotations

from typing import Any

import heterotrain_contract as c
from heterotrain_operator.cache import ClusterCache, slim_pod


def node(
    name: str, rv: int, *, ready: str = "True", heartbeat: str = "t0", taints: Any = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "resourceVersion": str(rv),
            "labels": {c.LABEL_ACCELERATOR: "nvidia-a100"},
        },
        "spec": {"taints": taints or []},
        "status": {
            "allocatable": {"nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat}],
        },
    }


def worker(name: str, rv: int, phase: str = "Pending", uid: str = "u1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": str(rv),
            "labels": {c.LABEL_ROLE: "worker", c.LABEL_JOB: "j"},
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "worker"}]},
        "status": {"phase": phase},
    }


def synced_cache() -> ClusterCache:
    cache = ClusterCache()
    assert not cache.synced()
    for kind in ("jobs", "nodes", "pods"):
        cache.replace(kind, [])
    assert cache.synced()
    return cache


def test_a_heartbeat_is_not_a_change_but_readiness_and_taints_are():
    cache = synced_cache()
    assert cache.upsert("nodes", node("n1", 10))
    v = cache.version
    assert not cache.upsert("nodes", node("n1", 11, heartbeat="t1"))
    assert cache.version == v
    assert cache.snapshot().nodes[0]["metadata"]["resourceVersion"] == "11"  # kept current all the same
    assert cache.upsert("nodes", node("n1", 12, ready="Unknown"))
    assert cache.upsert("nodes", node("n1", 13, taints=[{"key": "k", "effect": "NoSchedule"}]))
    assert cache.version > v


def test_an_older_event_never_overwrites_a_newer_write():
    cache = synced_cache()
    cache.upsert("pods", worker("w0", 20, phase="Running"))  # the response of our own write
    assert not cache.upsert("pods", worker("w0", 15, phase="Pending"))  # the watch catching up
    assert cache.snapshot().pods[0]["status"]["phase"] == "Running"


def test_a_deleted_pod_goes_and_a_recreated_one_of_the_same_name_stays():
    cache = synced_cache()
    cache.upsert("pods", worker("w0", 20, uid="old"))
    cache.upsert("pods", worker("w0", 30, uid="new"))  # recreated before the old DELETED event arrived
    assert not cache.remove("pods", worker("w0", 25, uid="old"))
    assert [p["metadata"]["uid"] for p in cache.snapshot().pods] == ["new"]
    assert cache.remove("pods", worker("w0", 31, uid="new"))
    assert cache.snapshot().pods == ()


def test_a_late_answer_to_a_delete_does_not_bring_the_pod_back():
    """A pod deleted at once (grace 0) or never bound: the watch's DELETED event can come before the answer
    of the delete, which the controller stores as the pod, terminating."""
    cache = synced_cache()
    cache.upsert("pods", worker("w0", 20, uid="hung"))
    assert cache.remove("pods", worker("w0", 21, uid="hung"))  # the watch
    assert not cache.upsert("pods", worker("w0", 21, uid="hung"))  # the delete's answer, late
    assert cache.snapshot().pods == ()
    assert cache.upsert("pods", worker("w0", 30, uid="replacement"))  # the same name, a new pod
    assert [p["metadata"]["uid"] for p in cache.snapshot().pods] == ["replacement"]


def test_a_relist_replaces_everything_and_reports_whether_anything_changed():
    cache = synced_cache()
    cache.upsert("nodes", node("n1", 10))
    cache.upsert("nodes", node("ghost", 11))
    assert cache.replace("nodes", [node("n1", 12, heartbeat="t2")])  # the ghost is gone
    assert [n["metadata"]["name"] for n in cache.snapshot().nodes] == ["n1"]
    assert not cache.replace("nodes", [node("n1", 13, heartbeat="t3")])


def test_other_pods_are_kept_slim_with_what_holds_capacity():
    pod = {
        "metadata": {
            "name": "web",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": "5",
            "annotations": {"a": "b"},
        },
        "spec": {
            "nodeName": "n1",
            "containers": [
                {"name": "c", "image": "x", "env": [{"name": "A"}], "resources": {"requests": {"cpu": "1"}}}
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"memory": "1Gi"}}}],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }
    slim = slim_pod(pod)
    assert slim["spec"] == {
        "nodeName": "n1",
        "containers": [{"resources": {"requests": {"cpu": "1"}}}],
        "initContainers": [{"resources": {"requests": {"memory": "1Gi"}}}],
    }
    assert "annotations" not in slim["metadata"] and slim["status"] == {"phase": "Running"}
    assert slim_pod(worker("w0", 1)) == worker("w0", 1)  # workers are kept whole


def job_with_progress(
    rv: int, step: int, stale: list[str] | None = None, restarts: int = 0
) -> dict[str, Any]:
    progress: dict[str, Any] = {
        "time": f"2026-01-01T00:00:{step % 60:02d}Z",
        "reporter": "j-worker-0",
        "epoch": 3,
        "step": step,
        "samplesPerSecond": 100.0 + step,
        "staleRanks": [{"rank": 1, "pod": p, "reason": "Silent", "seconds": 12.0} for p in stale or []],
    }
    if restarts:
        progress["processRestarts"] = [{"pod": "j-worker-2", "count": restarts, "exitCode": 137}]
    return {
        "metadata": {"name": "j", "namespace": "ns", "resourceVersion": str(rv), "generation": 1},
        "spec": {"workers": {"min": 1, "max": 2}},
        "status": {"phase": "Running", "progress": progress},
    }


def test_a_progress_report_matters_only_when_a_rank_goes_stale_or_a_process_restarts():
    cache = synced_cache()
    assert cache.upsert("jobs", job_with_progress(10, step=1))
    v = cache.version
    for rv, step in ((11, 2), (12, 3), (13, 40)):  # steps, speed and time move: no pass
        assert not cache.upsert("jobs", job_with_progress(rv, step))
    assert cache.version == v
    assert cache.snapshot().jobs[0]["status"]["progress"]["step"] == 40  # kept current all the same
    assert cache.upsert("jobs", job_with_progress(14, 41, stale=["j-worker-1"]))
    assert not cache.upsert("jobs", job_with_progress(15, 41, stale=["j-worker-1"]))  # still the same
    assert cache.upsert("jobs", job_with_progress(16, 42, stale=["j-worker-1"], restarts=1))
    assert cache.upsert("jobs", job_with_progress(17, 42))
