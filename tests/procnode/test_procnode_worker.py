"""Process runner (fake kubelet for tests): a pod worker against an in-memory API (real local processes)."""

from __future__ import annotations

import copy
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from heterotrain_e2e.procnode import lifecycle
from heterotrain_e2e.procnode.ipam import IPAllocator
from heterotrain_e2e.procnode.kube import ApiError
from heterotrain_e2e.procnode.kubeconfig import ApiServer
from heterotrain_e2e.procnode.podworker import PodWorker, WorkerContext
from heterotrain_runtime.cgroups import Cgroups

JSON = dict[str, Any]


class FakeAPI:
    """Just enough of KubeREST for a pod worker: one pod, configmaps, tokens, events."""

    def __init__(self, pod: JSON) -> None:
        self.lock = threading.Lock()
        self.pod: JSON | None = pod
        self.rv = 1
        self.pod["metadata"]["resourceVersion"] = "1"
        self.conflicts = 0  # how many status PUTs to refuse with 409
        self.status_puts = 0
        self.deletes: list[Any] = []
        self.events: list[JSON] = []
        self.configmaps: dict[str, JSON] = {"kube-root-ca.crt": {"data": {"ca.crt": "ROOT-CA"}}}

    def _bump(self) -> None:
        assert self.pod is not None
        self.rv += 1
        self.pod["metadata"]["resourceVersion"] = str(self.rv)

    def get(self, path: str, **_: Any) -> JSON:
        got = self.get_or_none(path)
        if got is None:
            raise ApiError(404, "NotFound")
        return got

    def get_or_none(self, path: str, **_: Any) -> JSON | None:
        with self.lock:
            if "/configmaps/" in path:
                return copy.deepcopy(self.configmaps.get(path.rsplit("/", 1)[1]))
            if "/secrets/" in path:
                return None
            if "/pods/" in path:
                return copy.deepcopy(self.pod)
        raise AssertionError(path)

    def post(self, path: str, body: Any, **_: Any) -> JSON:
        if path.endswith("/token"):
            assert body["spec"]["boundObjectRef"]["kind"] == "Pod"
            return {"status": {"token": "TOKEN-" + path.split("/")[-2]}}
        if path.endswith("/events"):
            self.events.append(body)
            return body
        raise AssertionError(path)

    def put(self, path: str, body: Any, **_: Any) -> JSON:
        assert path.endswith("/status")
        with self.lock:
            self.status_puts += 1
            if self.pod is None:
                raise ApiError(404, "NotFound")
            if self.conflicts:
                self.conflicts -= 1
                self._bump()
                raise ApiError(409, "Conflict")
            if body["metadata"]["resourceVersion"] != self.pod["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict")
            self.pod["status"] = copy.deepcopy(body["status"])
            self._bump()
            return copy.deepcopy(self.pod)

    def delete(self, path: str, body: Any = None, **_: Any) -> JSON:
        with self.lock:
            self.deletes.append(body)
            assert self.pod is not None
            assert body["preconditions"]["uid"] == self.pod["metadata"]["uid"]
            assert body["gracePeriodSeconds"] == 0
            self.pod = None
        return {}

    def set_deletion(self, grace: int) -> JSON:
        with self.lock:
            assert self.pod is not None
            self.pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
            self.pod["metadata"]["deletionGracePeriodSeconds"] = grace
            self._bump()
            return copy.deepcopy(self.pod)

    def status(self) -> JSON:
        with self.lock:
            assert self.pod is not None
            return copy.deepcopy(self.pod.get("status") or {})


NODE = {
    "metadata": {"name": "node-a", "annotations": {"heterotrain.io/emulated-speed": "2.0"}},
    "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}},
}
CORES_PER_SPEED = 0.1


def make_pod(code: str, policy: str = "Never", grace: int = 30, **container: Any) -> JSON:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "uid-1", "labels": {"app": "x"}},
        "spec": {
            "nodeName": "node-a",
            "restartPolicy": policy,
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {"name": "main", "image": "python:3.11", "command": ["python", "-c", code], **container}
            ],
        },
        "status": {"phase": "Pending"},
    }


def wait_for(pred: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


class Harness:
    def __init__(self, tmp_path: Path, pod: JSON, cgroups: Cgroups | None = None) -> None:
        self.api = FakeAPI(pod)
        self.ipam = IPAllocator(tmp_path / "ipam.json")
        self.finished = threading.Event()
        self.ctx = WorkerContext(
            rest=self.api,  # type: ignore[arg-type]
            state_dir=tmp_path,
            api=ApiServer("https://127.0.0.1:6443", "127.0.0.1", 6443, b"RUNNER-CA"),
            python_bin_dir=os.path.dirname(sys.executable),
            ipam=self.ipam,
            cfg=lifecycle.Config(backoff_base=0.2, backoff_max=1.0),
            node_lookup=lambda name: NODE if name == "node-a" else None,
            cgroups=cgroups,
            cores_per_speed=lambda: CORES_PER_SPEED,
        )
        self.worker = PodWorker(self.ctx, copy.deepcopy(self.api.pod), lambda uid: self.finished.set())  # type: ignore[arg-type]
        self.worker.start()
        self.root = tmp_path / "pods" / "ns_p_uid-1"

    def phase(self) -> str | None:
        return self.api.status().get("phase") if self.api.pod else None

    def stop(self) -> None:
        self.worker.shutdown(time.time() + 1)
        self.worker.join(10)


@pytest.fixture
def harness_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Harness] = []

    def make(pod: JSON, cgroups: Cgroups | None = None) -> Harness:
        h = Harness(tmp_path, pod, cgroups)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    """Real cgroups (root, cgroup v1), as the runner opens them."""
    cg = Cgroups("procnode-test")
    yield cg
    cg.close()


def test_runs_to_success_and_reports_status(harness_factory) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import os; print(os.environ.get('HETEROTRAIN_EMULATED_SPEED'), os.environ['HOSTNAME'], "
        "os.environ['POD_IP'], os.environ['KUBECONFIG'].endswith('main.yaml'))"
    )
    h = harness_factory(
        make_pod(code, env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}])
    )
    h.api.conflicts = 1  # the first status update meets a conflict and is retried
    wait_for(lambda: h.phase() == "Succeeded")
    st = h.api.status()
    assert st["podIP"] == "127.1.0.1" == h.ipam.get("uid-1")
    cs = st["containerStatuses"][0]
    assert cs["state"]["terminated"]["exitCode"] == 0
    assert (
        h.root / "main.log"
    ).read_text() == "None p 127.1.0.1 True\n"  # the speed is not told, but enforced
    sa = h.root / "serviceaccount"  # no kube-api-access volume: the runner made the files
    assert (sa / "token").read_text() == "TOKEN-default"
    assert (sa / "ca.crt").read_text() == "ROOT-CA"
    assert {e["reason"] for e in h.api.events} == {"Started"}
    puts = h.api.status_puts
    time.sleep(0.3)
    assert h.api.status_puts == puts  # steady state: no more updates


def test_deletion_sigterm_then_delete_with_uid_precondition(harness_factory) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('TERM', flush=True), sys.exit(0)))\n"
        "print('up', flush=True); time.sleep(60)"
    )
    h = harness_factory(make_pod(code))
    wait_for(lambda: h.phase() == "Running" and "up" in (h.root / "main.log").read_text())
    pid = int(h.api.status()["containerStatuses"][0]["containerID"].removeprefix("process://"))
    h.worker.update(h.api.set_deletion(grace=30))
    wait_for(lambda: h.api.pod is None)
    assert h.api.deletes[0]["preconditions"] == {"uid": "uid-1"}
    h.worker.mark_deleted()
    assert h.finished.wait(10)
    assert (h.root / "main.log").read_text() == "up\nTERM\n"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert h.ipam.get("uid-1") is None
    assert sorted(p.name for p in h.root.iterdir()) == ["main.log"]  # volumes etc. removed, logs kept


def test_sigkill_after_grace_and_exit_code_137(harness_factory) -> None:  # type: ignore[no-untyped-def]
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    h = harness_factory(make_pod(code, grace=1))
    wait_for(lambda: h.phase() == "Running" and "up" in (h.root / "main.log").read_text())
    t0 = time.monotonic()
    h.worker.update(h.api.set_deletion(grace=1))
    statuses: list[JSON] = []
    orig_delete = h.api.delete

    def delete(path: str, body: Any = None, **kw: Any) -> JSON:
        statuses.append(h.api.status())
        return orig_delete(path, body, **kw)

    h.api.delete = delete  # type: ignore[method-assign]
    wait_for(lambda: h.api.pod is None)
    took = time.monotonic() - t0
    assert took >= lifecycle.Config().min_grace - 0.2  # the grace period has a 2 s floor
    final = statuses[0]
    assert final["phase"] == "Failed"
    term = final["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["signal"]) == (137, signal.SIGKILL)


def test_restart_on_failure_with_backoff(harness_factory) -> None:  # type: ignore[no-untyped-def]
    code = "import os, sys; n = len(os.listdir('/w')); open(f'/w/{n}', 'w'); sys.exit(0 if n >= 2 else 1)"
    pod = make_pod(code, policy="OnFailure", volumeMounts=[{"name": "w", "mountPath": "/w"}])
    pod["spec"]["volumes"] = [{"name": "w", "emptyDir": {}}]
    h = harness_factory(pod)
    wait_for(lambda: h.phase() == "Succeeded")
    cs = h.api.status()["containerStatuses"][0]
    assert cs["restartCount"] == 2
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert (h.root / "main.previous.log").exists()


def test_missing_configmap_waits_then_starts(harness_factory) -> None:  # type: ignore[no-untyped-def]
    pod = make_pod(
        "print('ok')", env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "k"}}}]
    )
    h = harness_factory(pod)
    wait_for(
        lambda: (
            (h.api.status().get("containerStatuses") or [{}])[0]
            .get("state", {})
            .get("waiting", {})
            .get("reason")
            == "CreateContainerConfigError"
        )
    )
    assert h.phase() == "Pending"
    h.api.configmaps["late"] = {"data": {"k": "v"}}
    wait_for(lambda: h.phase() == "Succeeded")


def test_shutdown_kills_everything(harness_factory) -> None:  # type: ignore[no-untyped-def]
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    h = harness_factory(make_pod(code))
    wait_for(lambda: h.phase() == "Running" and "up" in (h.root / "main.log").read_text())
    pid = int(h.api.status()["containerStatuses"][0]["containerID"].removeprefix("process://"))
    h.worker.shutdown(time.time() + 0.5)
    assert h.worker.join(10)
    assert not (h.root.parent.parent / "pids" / str(pid)).exists()
    assert h.phase() == "Running"  # a runner that stops does not touch the API


# --- cgroups (real: root, cgroup v1) ------------------------------------------------

ALLOCATE = "import time; x = bytearray(256 << 20); print('survived', flush=True)"


def test_past_its_memory_limit_a_container_is_oom_killed(harness_factory, cgroups) -> None:  # type: ignore[no-untyped-def]
    h = harness_factory(make_pod(ALLOCATE, resources={"limits": {"memory": "64Mi"}}), cgroups)
    wait_for(lambda: h.phase() == "Failed", timeout=30)  # restartPolicy Never
    term = h.api.status()["containerStatuses"][0]["state"]["terminated"]
    assert (term["reason"], term["exitCode"], term["signal"]) == ("OOMKilled", 137, signal.SIGKILL)
    assert "survived" not in (h.root / "main.log").read_text()
    assert {e["reason"] for e in h.api.events} == {"Started"}
    wait_for(
        lambda: not (cgroups.owner.dirs["memory"] / "pod-uid-1").exists()
    )  # the pod ended: its groups go
    assert not (cgroups.owner.dirs["cpu"] / "pod-uid-1").exists()


def test_an_oom_killed_container_restarts_under_on_failure(harness_factory, cgroups) -> None:  # type: ignore[no-untyped-def]
    h = harness_factory(
        make_pod(ALLOCATE, policy="OnFailure", resources={"limits": {"memory": "64Mi"}}), cgroups
    )
    wait_for(lambda: (h.api.status().get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1, 30)
    cs = h.api.status()["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["reason"] == "OOMKilled"
    assert h.phase() in ("Pending", "Running")  # not terminal: the kubelet restarts it


def test_a_killed_container_within_its_limit_is_not_oom_killed(harness_factory, cgroups) -> None:  # type: ignore[no-untyped-def]
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    h = harness_factory(make_pod(code, resources={"limits": {"memory": "256Mi"}}), cgroups)
    wait_for(lambda: h.phase() == "Failed", timeout=30)
    term = h.api.status()["containerStatuses"][0]["state"]["terminated"]
    assert (term["reason"], term["exitCode"]) == ("Error", 137)


def _group_file(cgroups: Cgroups, ctrl: str, *path: str) -> str:
    return cgroups.owner.dirs[ctrl].joinpath(*path).read_text().strip()


def _cores(cgroups: Cgroups, *path: str) -> float:
    return int(_group_file(cgroups, "cpu", *path, "cpu.cfs_quota_us")) / int(
        _group_file(cgroups, "cpu", *path, "cpu.cfs_period_us")
    )


SLEEPER = "import time; print('up', flush=True); time.sleep(60)"


@pytest.mark.parametrize(
    ("gpus", "cpu_limit", "want_pod", "want_container"),
    [
        ("1", None, 2.0 * CORES_PER_SPEED, None),  # one emulated device of speed 2.0
        ("2", None, 2 * 2.0 * CORES_PER_SPEED, None),  # each device its share
        ("2", "150m", 0.15, 0.15),  # the lower of the limit and the emulated quota wins
        (None, "300m", 0.3, 0.3),  # no accelerator: only the limit
    ],
)
def test_the_pod_group_has_the_emulated_devices_quota(  # type: ignore[no-untyped-def]
    harness_factory, cgroups, gpus, cpu_limit, want_pod, want_container
) -> None:
    limits = {k: v for k, v in (("nvidia.com/gpu", gpus), ("cpu", cpu_limit)) if v is not None}
    h = harness_factory(make_pod(SLEEPER, resources={"limits": limits}), cgroups)
    wait_for(lambda: h.phase() == "Running" and "up" in (h.root / "main.log").read_text())
    pid = int(h.api.status()["containerStatuses"][0]["containerID"].removeprefix("process://"))
    assert _cores(cgroups, "pod-uid-1") == pytest.approx(want_pod, rel=1e-3)
    if want_container is None:
        assert _group_file(cgroups, "cpu", "pod-uid-1", "main", "cpu.cfs_quota_us") == "-1"
    else:
        assert _cores(cgroups, "pod-uid-1", "main") == pytest.approx(want_container, rel=1e-3)
    own = {
        line.split(":")[1]: line.split(":")[2]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    }
    assert own["cpu"].endswith(f"/{cgroups.owner.name}/pod-uid-1/main")
    assert own["memory"].endswith(f"/{cgroups.owner.name}/pod-uid-1/main")
    h.stop()
    assert not (cgroups.owner.dirs["cpu"] / "pod-uid-1").exists()
    assert not (cgroups.owner.dirs["memory"] / "pod-uid-1").exists()


def test_groups_are_removed_when_the_pod_is_deleted(harness_factory, cgroups) -> None:  # type: ignore[no-untyped-def]
    h = harness_factory(make_pod(SLEEPER, grace=1, resources={"limits": {"memory": "128Mi"}}), cgroups)
    wait_for(lambda: h.phase() == "Running" and "up" in (h.root / "main.log").read_text())
    assert _group_file(cgroups, "memory", "pod-uid-1", "memory.limit_in_bytes") == str(128 << 20)
    assert _group_file(cgroups, "memory", "pod-uid-1", "main", "memory.limit_in_bytes") == str(128 << 20)
    h.worker.update(h.api.set_deletion(grace=1))
    wait_for(lambda: h.api.pod is None)
    h.worker.mark_deleted()
    assert h.finished.wait(10)
    for ctrl in ("cpu", "memory"):
        assert not any(p.is_dir() for p in cgroups.owner.dirs[ctrl].iterdir())
