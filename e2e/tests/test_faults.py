"""Failures as they come, on the real control plane with real training on process nodes.

A SIGSTOPped worker (alive for Kubernetes, silent for its peers) is found by the runtime's heartbeats and
replaced within heartbeatTimeoutSeconds + 10 s while the job is Recovering; a node that dies has its
workers replaced (NodeLost) and is avoided; a worker stopped by pod deletion, a drain or a preemption
checkpoints before it exits and the job goes on with no step lost.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from heterotrain_e2e import chaos
from heterotrain_e2e.testing import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

HEARTBEAT = 15  # the default heartbeatTimeoutSeconds
# One worker of each of three emulated types (the default profile's process pools), and room to replace.
THREE_TYPES = [
    {"type": "nvidia-h100", "maxWorkers": 1},
    {"type": "nvidia-a100", "maxWorkers": 1},
    {"type": "huawei-ascend-910b", "maxWorkers": 1},
]


@pytest.fixture
def ns(cluster: Cluster, idle_process_nodes: None) -> str:
    """A namespace of its own, on process nodes that the tests before left idle."""
    name = f"f-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    return name


def progress_lines(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    path = chaos.procnode_dir(cluster) / "pvc" / ns / f"{name}-ckpt" / "progress.jsonl"
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip().endswith("}")]
    except FileNotFoundError:
        return []


def pod_log(cluster: Cluster, ns: str, pod: str) -> str:
    return "\n".join(
        p.read_text(errors="replace")
        for p in (chaos.procnode_dir(cluster) / "pods").glob(f"{ns}_{pod}_*/worker*.log")
    )


def test_a_sigstopped_worker_is_found_and_replaced_while_the_job_recovers(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    chaos.apply(
        cluster,
        chaos.training_job(
            ns, "hang", steps=100000, dataset=7680, batch=96, workers=(2, 3), accelerators=THREE_TYPES
        ),
    )
    injected: list[chaos.Injected] = []
    with chaos.Timeline(cluster, ns, "hang") as tl:
        ready = tl.wait(
            "Running and reporting progress",
            lambda s: (
                s.phase == "Running"
                and len(s.world) == 3
                and (s.status.get("progress") or {}).get("step", 0) >= 20
            ),
            timeout=240,
        )
        prog = ready.status["progress"]
        assert {p["type"] for p in prog["pools"]} == {t["type"] for t in THREE_TYPES}
        assert prog["totalSteps"] == 100000 and prog["samplesPerSecond"] > 0
        victim = ready.world[1]
        try:
            fault = chaos.hang(cluster, ns, victim)
            injected.append(fault)
            # By uid: a replacement may take the name of the pod it replaces once that one is gone.
            uids = {q: ready.pods[q]["uid"] for q in ready.world}
            found = tl.wait(
                "the hung worker recorded and its pod gone",
                lambda s: (
                    (s.status.get("lastFailure") or {}).get("pod") == victim
                    and all(v["uid"] != uids[victim] for v in s.pods.values())
                ),
                timeout=HEARTBEAT + 30,
            )
            replaced = tl.wait(
                "a replacement pod",
                lambda s: any(v["uid"] not in uids.values() and not v["deleting"] for v in s.pods.values()),
                timeout=30,
            )
        finally:
            chaos.restore(cluster, injected)
        failure = found.status["lastFailure"]
        assert failure["reason"] == "Hung" and failure["action"] == "Replaced", failure
        assert failure["node"] == chaos.node_of(ready, victim)
        took = replaced.t - fault.t
        print(f"hung worker found after {found.t - fault.t:.1f}s, replaced after {took:.1f}s")
        assert took <= HEARTBEAT + 10, f"found and replaced after {took:.1f}s"
        # While it happened the job said so: Recovering (not Running) from the detection until the world is
        # whole again, and never Running with the hung worker gone from a smaller world.
        after = tl.since(found.t)
        assert after[0].phase == "Recovering", [s.phase for s in after[:5]]
        back = tl.wait("whole again", lambda s: s.phase == "Running" and len(s.world) == 3, timeout=180)
        assert all(s.phase == "Recovering" for s in tl.since(found.t) if s.t < back.t and len(s.world) < 3)
        assert all(back.pods[q]["uid"] != uids[victim] for q in back.world), "the hung worker is out"
        assert back.status["podRestarts"] == 1 and back.status["restarts"] == 1
        lines = progress_lines(cluster, ns, "hang")
        steps = [r["step"] for r in lines]
        assert steps == sorted(steps) and len(set(steps)) == len(steps), "no step repeated"
        # The others trained on without it through the replacement's cold start (it started its processes
        # before it was a member, and joined once they were ready).
        (new,) = [q for q in back.world if back.pods[q]["uid"] not in uids.values()]
        pod = json.loads(cluster.kubectl("get", "-n", ns, "pod", new, "-o", "json").stdout)
        assert pod["metadata"]["annotations"].get("heterotrain.io/start-before-member") == "true"
        without = [r for r in lines if r["world"] == 2 and found.t <= r["time"] <= back.t]
        assert without, "the others trained on while the replacement started"
        print(
            f"next step {without[0]['time'] - fault.t:.1f}s after the hang, {len(without)} without the new one"
        )
    cluster.kubectl("delete", "-n", ns, "htj", "hang", "--wait=false")


def _lost_node_job(cluster: Cluster, ns: str) -> None:
    accs = [{"type": "nvidia-a100", "maxWorkers": 2}, {"type": "nvidia-h100", "maxWorkers": 1}]
    chaos.apply(
        cluster,
        chaos.training_job(
            ns, "lost", steps=100000, dataset=7680, batch=96, workers=(2, 3), accelerators=accs
        ),
    )


def test_a_node_that_dies_has_its_workers_replaced_and_is_avoided(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    _lost_node_job(cluster, ns)
    injected: list[chaos.Injected] = []
    with chaos.Timeline(cluster, ns, "lost") as tl:
        ready = tl.wait(
            "Running",
            lambda s: (
                s.phase == "Running"
                and len(s.world) == 3
                and (s.status.get("progress") or {}).get("step", 0) >= 10
            ),
            timeout=240,
        )
        nodes = {p: chaos.node_of(ready, p) for p in ready.world}
        rank0_node = nodes[ready.world[0]]
        victims = [p for p, n in nodes.items() if n != rank0_node and p != ready.world[0]]
        assert victims, nodes
        dead = nodes[victims[0]]
        on_dead = sorted(p for p, n in nodes.items() if n == dead)
        try:
            fault = chaos.node_notready(cluster, dead)
            injected.append(fault)
            found = tl.wait(
                "NodeLost recorded",
                lambda s: (
                    {f.get("pod") for f in s.status.get("failures") or [] if f.get("reason") == "NodeLost"}
                    >= set(on_dead)
                ),
                timeout=HEARTBEAT + 30,
            )
            assert found.t - fault.t <= HEARTBEAT + 5, f"detected after {found.t - fault.t:.1f}s"
            assert {f["node"] for f in found.status["failures"]} == {dead}
            (avoided,) = found.status["avoidedNodes"]
            assert avoided["node"] == dead and avoided["reason"] == "NodeLost"
            back = tl.wait(
                "training again without the dead node",
                lambda s: (
                    s.phase == "Running" and all(v["node"] != dead for v in s.pods.values()) and s.world
                ),
                timeout=120,
            )
            assert all(chaos.node_of(back, p) != dead for p in back.world)
        finally:
            chaos.restore(cluster, injected)
    cluster.kubectl("delete", "-n", ns, "htj", "lost", "--wait=false")


def test_a_killed_training_process_is_restarted_in_its_pod(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    """The process dies, its pod and node are healthy: the launcher restarts it in place, nothing is
    rescheduled; the others train on without it meanwhile (its pod's ProcessesReady condition is False)
    and take it back once it is ready; the status counts an in-place restart."""
    chaos.apply(
        cluster,
        chaos.training_job(
            ns, "crash", steps=100000, dataset=7680, batch=96, workers=(2, 3), accelerators=THREE_TYPES
        ),
    )
    with chaos.Timeline(cluster, ns, "crash") as tl:
        ready = tl.wait(
            "Running",
            lambda s: (
                s.phase == "Running"
                and len(s.world) == 3
                and (s.status.get("progress") or {}).get("step", 0) >= 10
            ),
            timeout=240,
        )
        victim = ready.world[1]
        uids = {p: v["uid"] for p, v in ready.pods.items()}
        fault = chaos.process_kill(cluster, ns, victim)
        without = tl.wait(
            "the others go on without the restarting worker",
            lambda s: victim not in s.world and len(s.world) == 2,
            timeout=30,
        )
        assert without.phase == "Recovering", without.phase
        nxt = wait_for(
            "training goes on without it",
            lambda: [
                r for r in progress_lines(cluster, ns, "crash") if r["time"] > fault.t and r["world"] == 2
            ],
            timeout=60,
        )
        lines = progress_lines(cluster, ns, "crash")
        # A step the victim had finished when the signal came may be written just after it (one at most).
        in_flight = [r for r in lines if r["time"] > fault.t and r["time"] < nxt[0]["time"]]
        assert len(in_flight) <= 1 and all(r["world"] == 3 for r in in_flight), in_flight
        step_before = max((r["step"] for r in lines if r["time"] < nxt[0]["time"]), default=0)
        print(f"process kill: next step {nxt[0]['time'] - fault.t:.2f}s after the kill, without {victim}")
        assert nxt[0]["step"] == step_before + 1, "no step lost or repeated"
        back = tl.wait(
            "the restarted worker back in the world, the restart counted",
            lambda s: s.status.get("inPlaceRestarts") == 1 and sorted(s.world) == sorted(ready.world),
            timeout=HEARTBEAT + 120,
        )
        failure = back.status["lastFailure"]
        assert failure["pod"] == victim and failure["action"] == "RestartedInPlace", failure
        assert failure["exitCode"] == 137
        assert back.status["restarts"] == 1 and "podRestarts" not in back.status
        assert {p: v["uid"] for p, v in back.pods.items()} == uids, "no pod was recreated"
        pod = json.loads(cluster.kubectl("get", "-n", ns, "pod", victim, "-o", "json").stdout)
        cond = [c for c in pod["status"]["conditions"] if c["type"] == "heterotrain.io/ProcessesReady"]
        assert cond and cond[0]["status"] == "True" and "restart 1 after exit code 137" in cond[0]["message"]
        wait_for(
            "steps with the restarted worker",
            lambda: [
                r for r in progress_lines(cluster, ns, "crash") if r["world"] == 3 and r["time"] > fault.t
            ],
            timeout=60,
        )
    cluster.kubectl("delete", "-n", ns, "htj", "crash", "--wait=false")


def checkpoints(cluster: Cluster, ns: str, name: str) -> set[int]:
    """The steps of the complete checkpoints on the job's volume."""
    root = chaos.procnode_dir(cluster) / "pvc" / ns / f"{name}-ckpt"
    return {
        int(d.name.split("-")[1])
        for d in root.glob("step-*")
        if (d / "COMMITTED.json").exists() and (d / ".metadata").exists()
    }


def assert_stopped_with_a_checkpoint(
    cluster: Cluster, ns: str, name: str, pod: str, epoch: int, before: set[int]
) -> int:
    """The stopped worker exited on its SIGTERM (143, not killed at the end of the grace period) after
    the world checkpointed the last step it trained with it."""
    assert "user process exited with 143" in pod_log(cluster, ns, pod), pod_log(cluster, ns, pod)[-2000:]
    with_it = [r["step"] for r in progress_lines(cluster, ns, name) if r["epoch"] == epoch]
    new = checkpoints(cluster, ns, name) - before
    assert max(with_it) in new, f"no checkpoint of step {max(with_it)} (new ones: {sorted(new)})"
    return max(with_it)


def test_stopped_workers_checkpoint_within_the_grace_period_and_nothing_is_lost(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    """Pod deletion, a preemption by a higher-priority job, a node drain (eviction), and a suspension of
    the whole job: every stopped worker checkpoints with the world before it exits (SIGTERM, exit 143,
    inside terminationGracePeriodSeconds), and training goes on (or resumes) with no step lost or repeated."""
    name = "stops"
    chaos.apply(
        cluster,
        chaos.training_job(
            ns,
            name,
            steps=100000,
            dataset=7680,
            batch=96,
            workers=(2, 3),
            accelerators=THREE_TYPES,
            checkpoint_steps=500,
        ),
    )
    injected: list[chaos.Injected] = []
    try:
        with chaos.Timeline(cluster, ns, name) as tl:

            def whole(what: str) -> chaos.Sample:
                """Three workers in the world, which trained a few steps together."""
                s = tl.wait(
                    what,
                    lambda s: (
                        s.phase == "Running"
                        and len(s.world) == 3
                        and all(not v["deleting"] for v in s.pods.values())
                    ),
                    timeout=180,
                )
                tl.wait(
                    f"{what}: steps in epoch {s.epoch}",
                    lambda _: sum(r["epoch"] == s.epoch for r in progress_lines(cluster, ns, name)) >= 5,
                    timeout=180,  # a world that grew within a minute of its start may wait for cold starts
                )
                return tl.last()

            ready = whole("Running")
            by_type = {ready.status["membership"]["world"][i]["type"]: p for i, p in enumerate(ready.world)}

            # 1. A pod deleted (kubectl delete pod): SIGTERM, a checkpoint with the world, exit 143.
            victim = by_type["nvidia-h100"]
            before = checkpoints(cluster, ns, name)
            injected.append(chaos.pod_delete(cluster, ns, victim))
            tl.wait("the deleted pod gone", lambda s: victim not in s.pods, timeout=90)
            assert_stopped_with_a_checkpoint(cluster, ns, name, victim, ready.epoch, before)
            ready = whole("whole again after the deletion")

            # 2. A preemption: a job of higher priority needs both Ascend accelerators.
            asc = next(
                p
                for i, p in enumerate(ready.world)
                if ready.status["membership"]["world"][i]["type"] == "huawei-ascend-910b"
            )
            high = chaos.training_job(
                ns, "urgent", steps=100000, dataset=960, batch=96, workers=(2, 2),
                accelerators=[{"type": "huawei-ascend-910b"}], priority=10,
            )  # fmt: skip
            before = checkpoints(cluster, ns, name)
            chaos.apply(cluster, high)
            asc_uid = ready.pods[asc]["uid"]
            tl.wait(
                "the preempted worker gone",
                lambda s: all(v["uid"] != asc_uid for v in s.pods.values()),
                timeout=120,
            )
            assert_stopped_with_a_checkpoint(cluster, ns, name, asc, ready.epoch, before)
            tl.wait("training on two", lambda s: s.phase == "Running" and len(s.world) == 2, timeout=120)

            def urgent_status() -> dict[str, Any]:
                return dict(chaos.get_json(cluster, "-n", ns, "htj", "urgent").get("status") or {})

            wait_for(  # its two workers waited for the victim's checkpoint; they bind once it is gone
                "the higher-priority job running on both Ascend accelerators",
                lambda: (
                    (st := urgent_status()).get("phase") == "Running"
                    and len((st.get("membership") or {}).get("world") or []) == 2
                ),
                timeout=180,
                interval=1.0,
            )
            assert urgent_status()["mix"] == "huawei-ascend-910b:2"
            cluster.kubectl("delete", "-n", ns, "htj", "urgent", "--wait=false")
            ready = whole("whole again after the preemption")

            # 3. A node drain (cordon, then the Eviction API).
            a100 = next(
                p
                for i, p in enumerate(ready.world)
                if ready.status["membership"]["world"][i]["type"] == "nvidia-a100"
            )
            node = chaos.node_of(ready, a100)
            before = checkpoints(cluster, ns, name)
            injected.append(chaos.drain(cluster, node))
            tl.wait("the evicted worker gone", lambda s: a100 not in s.pods, timeout=120)
            assert_stopped_with_a_checkpoint(cluster, ns, name, a100, ready.epoch, before)
            ready = whole("whole again after the drain")
            assert all(chaos.node_of(ready, p) != node for p in ready.world)

            # 4. The whole job suspended, then resumed: it restarts from the stop checkpoint.
            cluster.kubectl("patch", "-n", ns, "htj", name, "--type=merge", "-p", '{"spec":{"suspend":true}}')
            stopped = tl.wait(
                "Suspended, no pods", lambda s: s.phase == "Suspended" and not s.pods, timeout=120
            )
            last = max(r["step"] for r in progress_lines(cluster, ns, name))
            assert stopped.status["lastCheckpoint"]["step"] == last, "the stop checkpoint reached the status"
            cluster.kubectl(
                "patch", "-n", ns, "htj", name, "--type=merge", "-p", '{"spec":{"suspend":false}}'
            )
            tl.wait(
                "training again",
                lambda s: (s.status.get("progress") or {}).get("step", 0) > last,
                timeout=180,
            )
        assert tl.last().status["restarts"] == 0, "a stop is not a failure"
        steps = [r["step"] for r in progress_lines(cluster, ns, name)]
        assert steps == list(range(1, len(steps) + 1)), "every step once, none lost or repeated"
    finally:
        chaos.restore(cluster, injected)
        cluster.kubectl("delete", "-n", ns, "htj", "--all", "--wait=false", check=False)
