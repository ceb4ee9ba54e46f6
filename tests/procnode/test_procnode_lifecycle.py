"""Process runner (fake kubelet for tests): the pure pod state machine and status building."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from heterotrain_e2e.procnode import lifecycle as lc
from heterotrain_e2e.procnode import status as stmod
from heterotrain_e2e.procnode.lifecycle import (
    Cleanup,
    Config,
    DeletePod,
    SetupSandbox,
    SignalContainer,
    StartContainer,
)

JSON = dict[str, Any]
CFG = Config(backoff_base=10.0, backoff_max=40.0)


def make_pod(
    containers: list[str] = ("main",),
    init: list[str] = (),
    policy: str = "Never",  # type: ignore[assignment]
    **spec: Any,
) -> JSON:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "resourceVersion": "1"},
        "spec": {
            "nodeName": "n",
            "restartPolicy": policy,
            "initContainers": [{"name": n, "image": "img"} for n in init],
            "containers": [{"name": n, "image": "img"} for n in containers],
            **spec,
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}
            ],
        },
    }


class Sim:
    """Drives the state machine the way the pod worker does, with fake processes."""

    def __init__(self, pod: JSON, cfg: Config = CFG) -> None:
        self.pod = pod
        self.cfg = cfg
        self.st = lc.new_pod_state(pod)
        self.now = 1000.0
        self.pids = iter(range(100, 10_000))
        self.signals: list[tuple[str, int]] = []
        self.deleted_api = False
        self.cleaned = False

    def step(self) -> tuple[list[lc.Action], float | None]:
        actions, wake = lc.plan(self.st, self.pod, self.now, self.cfg)
        for a in actions:
            if isinstance(a, SetupSandbox):
                self.st.sandbox_ready = True
                self.st.pod_ip = "127.1.0.1"
            elif isinstance(a, StartContainer):
                lc.on_started(self.st, a.name, next(self.pids), self.now)
            elif isinstance(a, SignalContainer):
                self.signals.append((a.name, a.sig))
                c = self.st.container(a.name)
                if a.sig == signal.SIGKILL:
                    c.kill_sent = True
                else:
                    c.term_sent = True
            elif isinstance(a, DeletePod):
                self.deleted_api = True
                self.st.delete_requested = True
            elif isinstance(a, Cleanup):
                self.cleaned = True
        lc.settle(self.st, self.pod, self.now, self.cfg)
        return actions, wake

    def run_until_quiet(self) -> None:
        for _ in range(10):
            actions, _ = self.step()
            if not actions:
                return

    def exit(self, name: str, rc: int, after: float = 1.0) -> None:
        self.now += after
        lc.on_exited(self.st, name, rc, self.now, self.cfg)

    def state(self, name: str) -> str:
        return self.st.container(name).state


def test_simple_success() -> None:
    s = Sim(make_pod())
    actions, _ = s.step()
    assert actions == [SetupSandbox()]
    assert s.st.phase == "Pending"
    actions, _ = s.step()
    assert actions == [StartContainer("main")]
    assert s.st.phase == "Running"
    s.exit("main", 0)
    s.step()
    assert (s.st.phase, s.st.terminal) == ("Succeeded", True)
    c = s.st.container("main")
    assert c.current is not None and (c.current.exit_code, c.current.reason) == (0, "Completed")
    assert s.step() == ([], None)  # terminal: nothing ever again


def test_failure_never_and_signal_exit_code() -> None:
    s = Sim(make_pod())
    s.run_until_quiet()
    s.exit("main", -signal.SIGKILL)
    s.step()
    c = s.st.container("main")
    assert s.st.phase == "Failed"
    assert c.current is not None
    assert (c.current.exit_code, c.current.signal, c.current.reason) == (137, 9, "Error")


def test_restart_always_with_exponential_backoff() -> None:
    s = Sim(make_pod(policy="Always"))
    s.run_until_quiet()
    c = s.st.container("main")
    delays = []
    for i in range(5):
        s.exit("main", 1)
        _, wake = s.step()
        assert s.st.phase == "Running"
        assert c.last is not None and c.last.exit_code == 1
        if wake is None:  # the first restart is immediate
            assert c.state == "running"
            delays.append(0.0)
        else:
            assert c.state == "waiting" and c.reason == "CrashLoopBackOff"
            assert c.restart_count == i
            delays.append(wake - s.now)
            s.now = wake
            s.step()
            assert c.state == "running"
        assert c.restart_count == i + 1
    assert delays == [0.0, 10.0, 20.0, 40.0, 40.0]


def test_backoff_resets_after_a_long_run() -> None:
    s = Sim(make_pod(policy="Always"))
    s.run_until_quiet()
    for _ in range(3):
        s.exit("main", 1)
        _, wake = s.step()
        if wake:
            s.now = wake
            s.step()
    s.exit("main", 1, after=2 * CFG.backoff_max + 1)
    s.step()
    assert s.state("main") == "running"  # immediate again


def test_on_failure_restarts_failures_only() -> None:
    s = Sim(make_pod(["a", "b"], policy="OnFailure"))
    s.run_until_quiet()
    s.exit("a", 0)
    s.exit("b", 2)
    s.step()
    assert s.state("a") == "terminated"
    assert s.state("b") == "running"  # restarted at once (first restart)
    assert s.st.phase == "Running"
    s.exit("b", 0)
    s.step()
    assert s.st.phase == "Succeeded"
    assert s.st.container("b").restart_count == 1


def test_never_with_one_failed_container_waits_for_the_others() -> None:
    s = Sim(make_pod(["a", "b"]))
    s.run_until_quiet()
    s.exit("a", 1)
    s.step()
    assert s.st.phase == "Running"
    s.exit("b", 0)
    s.step()
    assert s.st.phase == "Failed"


def test_init_containers_run_in_order_before_containers() -> None:
    s = Sim(make_pod(["main"], init=["i1", "i2"]))
    s.step()  # sandbox
    actions, _ = s.step()
    assert actions == [StartContainer("i1")]
    assert s.st.phase == "Pending"
    assert s.step()[0] == []
    s.exit("i1", 0)
    assert s.step()[0] == [StartContainer("i2")]
    s.exit("i2", 0)
    assert s.step()[0] == [StartContainer("main")]
    assert s.st.phase == "Running"
    conds = {c["type"]: c for c in stmod.pod_conditions(s.pod, s.st)}
    assert conds["Initialized"]["status"] == "True"


def test_failing_init_container_fails_pod_under_never() -> None:
    s = Sim(make_pod(["main"], init=["i1"]))
    s.run_until_quiet()
    s.exit("i1", 3)
    s.step()
    assert (s.st.phase, s.st.terminal) == ("Failed", True)
    assert s.state("main") == "waiting"
    st = stmod.build_pod_status(s.pod, s.st, s.now, "127.0.0.1")
    assert st["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}


def test_failing_init_container_is_retried_with_backoff_under_on_failure() -> None:
    s = Sim(make_pod(["main"], init=["i1"], policy="OnFailure"))
    s.run_until_quiet()
    s.exit("i1", 1)
    s.step()
    assert s.state("i1") == "running"  # immediate first retry
    s.exit("i1", 1)
    _, wake = s.step()
    assert s.state("i1") == "waiting" and wake == s.now + 10
    assert s.st.phase == "Pending"
    s.now = wake
    s.step()
    s.exit("i1", 0)
    s.step()
    assert s.state("main") == "running"
    assert s.st.container("i1").restart_count == 2


def test_deletion_sigterm_then_sigkill_then_delete_then_cleanup() -> None:
    s = Sim(make_pod(terminationGracePeriodSeconds=30))
    s.run_until_quiet()
    s.pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    s.pod["metadata"]["deletionGracePeriodSeconds"] = 5
    actions, wake = s.step()
    assert actions == [SignalContainer("main", signal.SIGTERM)]
    assert wake == s.now + 5
    assert s.step()[0] == []  # not again
    s.now += 5
    actions, _ = s.step()
    assert actions == [SignalContainer("main", signal.SIGKILL)]
    s.exit("main", -signal.SIGKILL, after=0.01)
    actions, _ = s.step()
    assert actions == [DeletePod()]
    assert (s.st.phase, s.st.terminal) == ("Failed", True)
    s.st.deleted = True
    actions, _ = s.step()
    assert actions == [Cleanup()]
    assert s.st.finished


def test_deletion_when_the_process_obeys_sigterm_and_restart_policy_always() -> None:
    s = Sim(make_pod(policy="Always"))
    s.run_until_quiet()
    s.pod["metadata"]["deletionTimestamp"] = "x"
    s.pod["metadata"]["deletionGracePeriodSeconds"] = 30
    s.step()
    s.exit("main", -signal.SIGTERM, after=0.1)
    actions, _ = s.step()
    assert actions == [DeletePod()]  # not restarted
    assert s.st.container("main").current.exit_code == 143  # type: ignore[union-attr]


def test_grace_has_a_floor_and_force_deletion() -> None:
    s = Sim(make_pod())
    s.run_until_quiet()
    s.st.deleted = True  # force-deleted: gone from the API
    s.pod["metadata"]["deletionGracePeriodSeconds"] = 0
    _, wake = s.step()
    assert wake == s.now + CFG.min_grace
    s.now += CFG.min_grace
    assert s.step()[0] == [SignalContainer("main", signal.SIGKILL)]
    s.exit("main", -9, after=0)
    assert s.step()[0] == [Cleanup()]  # no API delete: it is gone already


def test_deleting_a_finished_pod_just_deletes_it() -> None:
    s = Sim(make_pod())
    s.run_until_quiet()
    s.exit("main", 0)
    s.step()
    s.pod["metadata"]["deletionTimestamp"] = "x"
    assert s.step()[0] == [DeletePod()]
    assert s.st.phase == "Succeeded"


def test_active_deadline() -> None:
    s = Sim(make_pod(activeDeadlineSeconds=60))
    s.st.start_time = s.now
    _, _ = s.step()
    _, wake = s.step()
    assert wake == s.now + 60
    s.now += 60
    assert s.step()[0] == [SignalContainer("main", signal.SIGTERM)]
    s.exit("main", -15, after=0.1)
    s.step()
    assert (s.st.phase, s.st.reason) == ("Failed", "DeadlineExceeded")


def test_sidecar_runs_alongside_and_is_stopped_at_the_end() -> None:
    pod = make_pod(["main"], init=["side"])
    pod["spec"]["initContainers"][0]["restartPolicy"] = "Always"
    s = Sim(pod)
    s.step()
    assert s.step()[0] == [StartContainer("side")]
    assert s.step()[0] == [StartContainer("main")]
    s.exit("side", 1)  # a sidecar always restarts
    s.step()
    assert s.state("side") == "running"
    s.exit("main", 0)
    actions, _ = s.step()
    assert s.st.phase == "Running" and s.st.stop_reason == lc.STOP_COMPLETED
    actions, _ = s.step()
    assert actions == [SignalContainer("side", signal.SIGTERM)]
    s.exit("side", -15, after=0.1)
    s.step()
    assert (s.st.phase, s.st.terminal) == ("Succeeded", True)


def test_start_and_config_errors() -> None:
    s = Sim(make_pod())
    s.step()
    lc.on_config_error(s.st, "main", s.now, CFG, "CreateContainerConfigError", 'configmap "x" not found')
    st = stmod.build_pod_status(s.pod, s.st, s.now, "127.0.0.1")
    assert st["containerStatuses"][0]["state"]["waiting"] == {
        "reason": "CreateContainerConfigError",
        "message": 'configmap "x" not found',
    }
    _, wake = lc.plan(s.st, s.pod, s.now, CFG)
    assert wake == s.now + CFG.config_retry
    lc.on_start_error(s.st, "main", s.now, CFG, "no such file")
    lc.settle(s.st, s.pod, s.now, CFG)
    c = s.st.container("main")
    assert s.st.phase == "Failed"
    assert c.current is not None and (c.current.exit_code, c.current.reason) == (128, "StartError")


def test_adopt_a_pod_whose_runner_restarted() -> None:
    pod = make_pod(["main"], init=["i1"], policy="Always")
    pod["status"] = {
        "phase": "Running",
        "podIP": "127.1.0.9",
        "startTime": "2024-01-01T00:00:00Z",
        "initContainerStatuses": [
            {
                "name": "i1",
                "restartCount": 0,
                "state": {
                    "terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": "2024-01-01T00:00:01Z"}
                },
            }
        ],
        "containerStatuses": [
            {
                "name": "main",
                "restartCount": 2,
                "state": {"running": {"startedAt": "2024-01-01T00:00:02Z"}},
                "containerID": "process://42",
            }
        ],
    }
    st = lc.new_pod_state(pod)
    lc.adopt(st, pod, 5000.0, CFG)
    assert st.pod_ip == "127.1.0.9"
    assert st.container("i1").succeeded
    main = st.container("main")
    assert main.state == "waiting" and main.last is not None
    assert (main.last.exit_code, main.last.reason) == (137, "ContainerStatusUnknown")
    st.sandbox_ready = True
    actions, _ = lc.plan(st, pod, 5000.0, CFG)
    assert actions == [StartContainer("main")]
    lc.on_started(st, "main", 7, 5000.0)
    assert main.restart_count == 3


def test_adopt_terminal_pod_is_frozen() -> None:
    pod = make_pod()
    pod["status"]["phase"] = "Succeeded"
    st = lc.new_pod_state(pod)
    lc.adopt(st, pod, 0.0, CFG)
    assert st.frozen and st.terminal
    assert lc.plan(st, pod, 0.0, CFG) == ([], None)


# --- status -------------------------------------------------------------------


def test_status_of_a_running_then_finished_pod() -> None:
    s = Sim(make_pod())
    s.run_until_quiet()
    st = stmod.build_pod_status(s.pod, s.st, s.now, "127.0.0.1")
    assert st["phase"] == "Running"
    assert (st["podIP"], st["podIPs"], st["hostIP"]) == ("127.1.0.1", [{"ip": "127.1.0.1"}], "127.0.0.1")
    cs = st["containerStatuses"][0]
    assert cs["containerID"] == "process://100"
    assert cs["ready"] and cs["started"]
    assert cs["state"] == {"running": {"startedAt": stmod.rfc3339(s.now)}}
    conds = {c["type"]: c for c in st["conditions"]}
    assert {k: v["status"] for k, v in conds.items()} == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    assert conds["PodScheduled"]["lastTransitionTime"] == "2024-01-01T00:00:00Z"  # kept
    s.pod["status"] = st
    later = s.now + 100
    again = stmod.build_pod_status(s.pod, s.st, later, "127.0.0.1")
    assert again == st  # nothing changed: transition times kept, so no update is needed
    s.exit("main", 0)
    s.step()
    done = stmod.build_pod_status(s.pod, s.st, s.now, "127.0.0.1")
    conds = {c["type"]: c for c in done["conditions"]}
    assert conds["Ready"] == {
        "type": "Ready",
        "status": "False",
        "reason": "PodCompleted",
        "lastTransitionTime": stmod.rfc3339(s.now),
    }
    term = done["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed" and term["containerID"] == "process://100"
    assert done["containerStatuses"][0]["ready"] is False


def test_status_keeps_others_conditions_and_readiness_gates() -> None:
    pod = make_pod(readinessGates=[{"conditionType": "example.com/ready"}])
    s = Sim(pod)
    s.run_until_quiet()
    st = stmod.build_pod_status(s.pod, s.st, s.now, "127.0.0.1")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ReadinessGatesNotReady"
    s.pod["status"]["conditions"].append({"type": "example.com/ready", "status": "True"})
    st = stmod.build_pod_status(s.pod, s.st, s.now, "127.0.0.1")
    assert next(c for c in st["conditions"] if c["type"] == "Ready")["status"] == "True"
    assert any(c["type"] == "example.com/ready" for c in st["conditions"])


def test_crashloop_status_has_last_state() -> None:
    s = Sim(make_pod(policy="Always"))
    s.run_until_quiet()
    s.exit("main", 1)
    s.step()
    s.exit("main", 2)
    s.step()
    cs = stmod.container_status(s.st.container("main"))
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["state"]["waiting"]["message"] == "back-off 10s restarting failed container=main pod=p_ns(u-1)"
    assert cs["lastState"]["terminated"]["exitCode"] == 2
    assert cs["restartCount"] == 1


@pytest.mark.parametrize(
    "existing", [None, {"metadata": {"name": "n1", "resourceVersion": "5"}, "spec": {"holderIdentity": "n1"}}]
)
def test_lease_body(existing: JSON | None) -> None:
    node = {"metadata": {"name": "n1", "uid": "node-uid"}}
    body = stmod.lease_body(node, 1700000000.25, 40, existing)
    assert body["spec"]["holderIdentity"] == "n1"
    assert body["spec"]["leaseDurationSeconds"] == 40
    assert body["spec"]["renewTime"] == "2023-11-14T22:13:20.250000Z"
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "node-uid"}
    ]
    if existing:
        assert body["metadata"]["resourceVersion"] == "5"


def test_node_status_patch_keeps_capacity_and_transition_times() -> None:
    node = {
        "metadata": {"name": "n1"},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "2"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "2"},
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}],
        },
    }
    patch = stmod.node_status_patch(
        node, 1e9, {"kubeletVersion": "v1.34.4"}, "127.0.0.1", {"cpu": "64", "memory": "1Ki", "pods": "110"}
    )["status"]
    assert "capacity" not in patch and "allocatable" not in patch  # nothing dropped, nothing overridden
    conds = {c["type"]: c for c in patch["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert conds["Ready"]["lastTransitionTime"] == "2024-01-01T00:00:00Z"
    assert conds["Ready"]["lastHeartbeatTime"] == stmod.rfc3339(1e9)
    assert conds["MemoryPressure"]["status"] == "False"
    assert {"type": "InternalIP", "address": "127.0.0.1"} in patch["addresses"]
    bare = stmod.node_status_patch({"metadata": {"name": "n2"}}, 1e9, {}, "127.0.0.1", {"cpu": "64"})[
        "status"
    ]
    assert bare["capacity"] == {"cpu": "64"} and bare["allocatable"] == {"cpu": "64"}


def test_not_ready_taint_removal() -> None:
    node = {
        "spec": {
            "taints": [
                {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
                {"key": "other", "effect": "NoSchedule"},
            ]
        }
    }
    assert stmod.taints_without_not_ready(node) == [{"key": "other", "effect": "NoSchedule"}]
    assert stmod.taints_without_not_ready({"spec": {"taints": [{"key": "other"}]}}) is None
    assert stmod.taints_without_not_ready({}) is None
