"""Faults on the local cluster, for tests and ``make bench-faults`` (TEST INFRASTRUCTURE).

A training job on the process nodes (:func:`training_job`), a recorder of its status over time
(:class:`Timeline`), the faults (:func:`inject`: a killed training process, a hung pod, a deleted pod, a
drained node, a dead node, a node that joins) and a schedule of them (:mod:`heterotrain_e2e.schedule`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import heterotrain_contract as hc
from heterotrain_e2e.cluster import profile as profilemod
from heterotrain_e2e.procnode import control
from heterotrain_e2e.testing import Cluster
from heterotrain_runtime import standby

KINDS = ("process_kill", "hang", "pod_delete", "drain", "node_notready", "node_join")
TRAIN_MODULE = "heterotrain_runtime.examples.train"


def training_job(
    ns: str,
    name: str,
    *,
    steps: int,
    dataset: int,
    batch: int,
    workers: tuple[int, int],
    accelerators: Sequence[dict[str, Any]],
    checkpoint_steps: int = 20,
    fault_tolerance: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    priority: int = 0,
) -> list[dict[str, Any]]:
    """A PVC for checkpoints, sample logs and the progress file, and a job that trains the example MLP."""
    extra = {
        "HETEROTRAIN_SAMPLE_LOG_DIR": "/checkpoints/samples",
        "HETEROTRAIN_PROGRESS_FILE": "/checkpoints/progress.jsonl",
        **(env or {}),
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{name}-ckpt", "namespace": ns},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
        {
            "apiVersion": "heterotrain.io/v1alpha1",
            "kind": "HeteroTrainJob",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "image": "python:3.11",
                "command": ["python", "-m", TRAIN_MODULE],
                "args": ["--steps", str(steps), "--dataset-size", str(dataset), "--log-every", "20"],
                "env": [{"name": k, "value": v} for k, v in extra.items()],
                "workers": {"min": workers[0], "max": workers[1]},
                "accelerators": list(accelerators),
                "globalBatchSize": batch,
                "priority": priority,
                "checkpoint": {
                    "volume": {"persistentVolumeClaim": {"claimName": f"{name}-ckpt"}},
                    "intervalSteps": checkpoint_steps,
                },
                "faultTolerance": {
                    "onWorkerFailure": "Replace",
                    "maxRestarts": 50,
                    **(fault_tolerance or {}),
                },
            },
        },
    ]


def apply(cluster: Cluster, objs: Sequence[dict[str, Any]]) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
    )


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


@dataclass
class Sample:
    t: float  # time.time() when read
    status: dict[str, Any]
    pods: dict[str, dict[str, Any]]  # live worker pods: name -> {node, phase, deleting, uid}

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "")

    @property
    def world(self) -> list[str]:
        return [m["pod"] for m in (self.status.get("membership") or {}).get("world") or []]

    @property
    def epoch(self) -> int:
        return int((self.status.get("membership") or {}).get("epoch") or 0)

    def summary(self) -> str:
        """What a failed wait needs first (a long message is cut in the middle by CI), then the status."""
        st = self.status
        conditions = [
            f"{c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"
            for c in st.get("conditions") or []
            if c.get("status") == "True" or c.get("type") == "Ready"
        ]
        pods = {
            n: f"{v['node']} {v['phase']}{' deleting' if v['deleting'] else ''}" for n, v in self.pods.items()
        }
        return (
            f"phase {self.phase}, epoch {self.epoch}, world {self.world}; pods {pods}; "
            f"waiting {st.get('waitingReason')}: {st.get('waitingMessage')}; restarts {st.get('restarts')}; "
            f"avoided {st.get('avoidedNodes')}; conditions {conditions}; the whole status: {st}"
        )


class Timeline:
    """The job's status and worker pods, read every ``interval`` seconds by a thread of its own."""

    def __init__(self, cluster: Cluster, ns: str, name: str, interval: float = 0.25) -> None:
        from kubernetes import client

        self.ns, self.name, self.interval = ns, name, interval
        api = cluster.api_client()
        self._crd = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"timeline-{name}", daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def read(self) -> Sample:
        job = self._crd.get_namespaced_custom_object(hc.GROUP, hc.VERSION, self.ns, hc.PLURAL, self.name)
        pods = self._core.list_namespaced_pod(self.ns, label_selector=f"{hc.LABEL_JOB}={self.name}")
        live = {
            p.metadata.name: {
                "node": p.spec.node_name,
                "phase": p.status.phase,
                "deleting": p.metadata.deletion_timestamp is not None,
                "uid": p.metadata.uid,
            }
            for p in pods.items
        }
        return Sample(time.time(), dict(job.get("status") or {}), live)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                s = self.read()
                with self._lock:
                    self.samples.append(s)
            self._stop.wait(self.interval)

    def last(self) -> Sample:
        with self._lock:
            if self.samples:
                return self.samples[-1]
        return self.read()

    def since(self, t: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.t >= t]

    def wait(self, what: str, pred: Callable[[Sample], Any], timeout: float) -> Sample:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.last()
            if pred(s):
                return s
            time.sleep(self.interval / 2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; {self.last().summary()}")


# =============================================================================
# the faults
# =============================================================================


def procnode_dir(cluster: Cluster) -> Path:
    return cluster.state_dir / "procnode"


def container_pid(cluster: Cluster, ns: str, pod: str) -> int:
    for p in control.container_pids(procnode_dir(cluster)):
        if p.pod == f"{ns}/{pod}" and p.container == "worker":
            return p.pgid
    raise AssertionError(f"no running worker container for {ns}/{pod}")


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
    return out


def _local_rank(pid: int) -> int | None:
    """The local rank a launcher's child trains as; None for a waiting warm interpreter (or a gone pid).

    A cold-started process has LOCAL_RANK in its environment; a warm-started one (see
    heterotrain_runtime.standby) kept the launcher's environment and is named after its local rank."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        if name in (standby.LOADING_NAME, standby.WAITING_NAME):
            return None
        if name.startswith(standby.WARM_PREFIX):
            return int(name[len(standby.WARM_PREFIX) :])
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    env = dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)
    return int(env["LOCAL_RANK"]) if "LOCAL_RANK" in env else None


def training_processes(cluster: Cluster, ns: str, pod: str) -> dict[int, int]:
    """LOCAL_RANK -> pid of the training processes a worker's launcher runs (not its warm interpreter)."""
    out = {}
    for pid in children(container_pid(cluster, ns, pod)):
        rank = _local_rank(pid)
        if rank is not None:
            out[rank] = pid
    return out


def training_process(cluster: Cluster, ns: str, pod: str, timeout: float = 30.0) -> int:
    """The pid of a worker's (first) training process, a child of the launcher (the container's process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = training_processes(cluster, ns, pod)
        if procs:
            return procs[min(procs)]
        time.sleep(0.1)
    raise AssertionError(f"the launcher of {ns}/{pod} has no training process")


@dataclass
class Injected:
    kind: str
    t: float  # time.time() of the fault
    pod: str | None = None
    node: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def node_of(sample: Sample, pod: str) -> str:
    return str(sample.pods[pod]["node"])


def process_kill(cluster: Cluster, ns: str, pod: str) -> Injected:
    """SIGKILL the training process (an OOM kill, a crash): the pod and its node stay healthy."""
    pid = training_process(cluster, ns, pod)
    os.kill(pid, signal.SIGKILL)
    return Injected("process_kill", time.time(), pod, info={"pid": pid})


def hang(cluster: Cluster, ns: str, pod: str) -> Injected:
    """SIGSTOP every process of the pod: alive for Kubernetes, silent for its peers."""
    groups = control.freeze_pod(procnode_dir(cluster), ns, pod)
    assert groups, f"nothing of {ns}/{pod} to stop"
    return Injected("hang", time.time(), pod, info={"groups": groups})


def pod_delete(cluster: Cluster, ns: str, pod: str) -> Injected:
    t = time.time()
    cluster.kubectl("delete", "pod", "-n", ns, pod, "--wait=false")
    return Injected("pod_delete", t, pod)


def drain(cluster: Cluster, node: str) -> Injected:
    """Cordon the node and evict its pods (the Eviction API, as `kubectl drain`)."""
    t = time.time()
    cluster.kubectl(
        "drain",
        node,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=120s",
        timeout=180,
    )
    return Injected("drain", t, node=node)


def node_notready(cluster: Cluster, node: str) -> Injected:
    """The node dies: its Lease and status stop, its pods' processes stop (it goes NotReady later)."""
    t = time.time()
    control.stop_node(procnode_dir(cluster), node, freeze=True)
    return Injected("node_notready", t, node=node)


def node_join(cluster: Cluster, name: str, type_: str, accelerators: int = 2, speed: float = 1.0) -> Injected:
    """A new process node of ``type_`` joins the cluster."""
    pool = profilemod.Pool.model_validate(
        {
            "name": name,
            "type": type_,
            "runner": "process",
            "count": 1,
            "acceleratorsPerNode": accelerators,
            "cpu": "8",
            "memory": "32Gi",
            "emulatedSpeed": speed,
        }
    )
    prof = profilemod.Profile.model_validate(
        {
            "apiVersion": "heterotrain.io/cluster-profile/v1",
            "kind": "ClusterProfile",
            "name": "join",
            "pools": [pool.model_dump(by_alias=True)],
        }
    )
    (node,) = profilemod.node_manifests(prof)
    t = time.time()
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=heterotrain-cluster", "-f", "-", input=json.dumps(node)
    )
    return Injected("node_join", t, node=node["metadata"]["name"])


def restore(cluster: Cluster, injected: Sequence[Injected], timeout: float = 120.0) -> None:
    """Undo what the faults left behind in the cluster: stopped nodes (back once Ready: the tests that
    follow find the cluster as it was), cordons, joined nodes."""
    state = procnode_dir(cluster)
    restarted = []
    for f in injected:
        if f.kind == "node_notready" and f.node:
            control.start_node(state, f.node)
            restarted.append(f.node)
        elif f.kind == "drain" and f.node:
            cluster.kubectl("uncordon", f.node, check=False)
        elif f.kind == "node_join" and f.node:
            cluster.kubectl("delete", "node", f.node, "--wait=false", check=False)
        elif f.kind == "hang" and f.pod:
            for pgid in f.info.get("groups") or []:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGCONT)
    for node in restarted:
        cluster.kubectl(
            "wait",
            "--for=condition=Ready",
            f"--timeout={timeout:.0f}s",
            "node",
            node,
            check=False,
            timeout=timeout + 10,
        )


# =============================================================================
# running a schedule
# =============================================================================


def _pick(sample: Sample, target: str, rng: Any) -> str:
    """The worker an event hits."""
    world = sample.world
    types = [m["type"] for m in (sample.status.get("membership") or {}).get("world") or []]
    if target.startswith("rank:") and int(target[5:]) < len(world):
        return world[int(target[5:])]
    if target.startswith("type:"):
        of_type = [p for p, t in zip(world, types, strict=True) if t == target[5:]]
        if of_type:
            return str(rng.choice(of_type))
    return str(rng.choice(world))


def fire(cluster: Cluster, ns: str, sample: Sample, event: Any, rng: Any, joined: int) -> Injected:
    """Inject one scheduled fault (a :class:`heterotrain_e2e.schedule.Event`) into the job's world."""
    if event.kind == "node_join":
        return node_join(
            cluster, f"proc-join-{ns}-{joined}", event.type, speed=hc.relative_throughput(event.type)
        )
    if event.target.startswith("node:"):
        node = event.target[5:]
    else:
        pod = _pick(sample, event.target, rng)
        node = node_of(sample, pod)
    if event.kind == "drain":
        return drain(cluster, node)
    if event.kind == "node_notready":
        return node_notready(cluster, node)
    injector = {"process_kill": process_kill, "hang": hang, "pod_delete": pod_delete}[event.kind]
    return injector(cluster, ns, pod)


class Progress:
    """The job's progress file (rank 0 appends one JSON line per committed step, on the checkpoint volume)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [json.loads(x) for x in text.splitlines() if x.strip().endswith("}")]

    def last(self) -> tuple[int, float]:
        """The last committed step and when (0, 0.0 before the first)."""
        rec = self.last_record()
        return (0, 0.0) if rec is None else (int(rec["step"]), float(rec["time"]))

    def last_record(self) -> dict[str, Any] | None:
        """The last committed step's line (step, time, epoch, world, ...), None before the first."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                tail = [x for x in f.read().decode(errors="replace").splitlines() if x.strip().endswith("}")]
        except FileNotFoundError:
            return None
        return dict(json.loads(tail[-1])) if tail else None


def _absorbed(fault: Injected, progress: Progress) -> bool:
    """The job committed a step after ``fault`` in a world re-formed since (a step the victim finished as
    the fault came is written just after it, in the old epoch)."""
    rec = progress.last_record()
    if rec is None or float(rec["time"]) <= fault.t:
        return False
    return fault.kind == "node_join" or int(rec["epoch"]) > int(fault.info.get("epoch", 0))


def job_progress(cluster: Cluster, ns: str, name: str) -> Progress:
    return Progress(procnode_dir(cluster) / "pvc" / ns / f"{name}-ckpt" / "progress.jsonl")


def run_schedule(
    cluster: Cluster,
    ns: str,
    tl: Timeline,
    schedule: Any,
    progress: Progress,
    log: Callable[[str], None] = print,
    absorb_timeout: float = 240.0,
) -> list[Injected]:
    """Fire the schedule's events in order: each once the job has committed its step and trains again
    after the previous fault: a step committed since by a world that no longer waits on it (a newer
    epoch; after a node joins, any step). The world need not be whole again: a worker restarted in place
    or a replacement joins once ready, and the others train on meanwhile (a job that waited for every
    rejoin would run out of steps before the schedule does), so faults may hit a job still recovering.
    Returns what was injected (to undo)."""
    import random

    rng = random.Random(schedule.seed)
    done: list[Injected] = []
    try:
        for event in schedule.events:
            deadline = time.monotonic() + absorb_timeout
            while True:
                s = tl.last()
                step, _ = progress.last()
                if step >= event.at_step and s.world and (not done or _absorbed(done[-1], progress)):
                    break
                if s.phase in ("Succeeded", "Failed"):
                    raise AssertionError(f"the job ended ({s.phase}) before {event.describe()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{event.describe()}: the job did not recover in time: {s.status}")
                time.sleep(0.2)
            before = progress.last_record() or {}
            f = fire(cluster, ns, tl.last(), event, rng, sum(x.kind == "node_join" for x in done))
            f.info["epoch"] = int(before.get("epoch", 0))
            log(f"[chaos] {event.describe()} -> pod {f.pod} node {f.node} at step {progress.last()[0]}")
            done.append(f)
    except BaseException:
        restore(cluster, done)
        raise
    return done
