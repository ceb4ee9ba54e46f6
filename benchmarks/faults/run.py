#!/usr/bin/env python
"""``make bench-faults`` -> ``benchmarks/results/faults.json``: failures through the operator, and torchrun.

On a local cluster (a real control plane, the operator as a process, workers as processes on process
nodes of three emulated types), one job trains while five faults hit it in turn: its training process is
SIGKILLed (``process_kill``), its pod SIGSTOPped (``hang``), its pod deleted (``pod_delete``), its node
drained (``drain``), its node dies (``node_notready``: Lease, status and processes stop).  For each kind:

* ``detection_seconds``: fault -> HeteroTrain acts on it: the launcher restarts the process
  (process_kill), the failure is in the job's status (hang, node_notready), the membership leaves the
  stopped worker out (pod_delete, drain);
* ``recovery_seconds``: fault -> the next step committed by a world that no longer waits on the fault
  (the restarted process in it; or a new membership epoch);
* ``steps_lost``: committed steps done again after the recovery (0 when the survivors kept the state);
* ``rejoin_seconds``: fault -> the first step of the whole world again (the process restarted in place,
  or the replacement, joined once ready; the others trained on meanwhile), and ``rejoin_pause_seconds``
  (that step's time: the second re-formation).

Each kind records its ``victim`` (pod, rank, type): rank 1 for a process kill, a hang and a pod deletion (a
worker as most are; rank 0 also hosts the rendezvous store), the A100 worker for a drain and a lost node (its
pool has a spare node).  The run waits until no other local cluster listens on the rendezvous port.

In the same run, torchrun (``benchmarks/faults/torchrun.py``) takes the faults it can handle, configured as
its documentation says.  ``ettr`` and ``torchrun_ettr`` follow from the measured costs at Llama 3's
failure rate (``benchmarks/faults/ettr.py``; the model is written under ``ettr_model``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for sub in ("operator", "runtime", "e2e", "benchmarks/faults"):
    sys.path.insert(0, str(REPO / sub))

import ettr as ettr_model  # noqa: E402
import torchrun_baseline as torchrun  # noqa: E402

import heterotrain_contract as hc  # noqa: E402
from heterotrain_e2e import chaos  # noqa: E402
from heterotrain_e2e.cluster import controlplane  # noqa: E402
from heterotrain_e2e.procnode.resources import emulated_speed, node_emulated_capacity  # noqa: E402
from heterotrain_e2e.testing import Cluster, OperatorProcess  # noqa: E402
from heterotrain_runtime import cgroups  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "faults.json"
KINDS = ("process_kill", "hang", "pod_delete", "drain", "node_notready")
ACCELERATORS = [
    {"type": "nvidia-h100", "maxWorkers": 1},
    {"type": "nvidia-a100", "maxWorkers": 1},
    {"type": "huawei-ascend-910b", "maxWorkers": 1},
]
BATCH, DATASET, CHECKPOINT_STEPS = 96, 7680, 20
TARGETS = {
    "detection_seconds": "<= 15 for every kind",
    "process_kill_recovery_seconds": "<= 3, and below torchrun's in the same run",
    "ettr": ">= 0.98",
}


def log(msg: str) -> None:
    print(msg, flush=True)


def _rendezvous_port_free() -> bool:
    """Whether nothing on this machine listens on the rendezvous port: process nodes share the host's
    network, so a worker of another local cluster listening there (on every address) keeps this job's
    rank 0 from listening on its own, and its store would answer this job's workers."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", hc.DEFAULT_MASTER_PORT))
        except OSError:
            return False
    return True


def wait_for_rendezvous_port(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    if not _rendezvous_port_free():
        log(f"port {hc.DEFAULT_MASTER_PORT} is in use on this machine (another local cluster?): waiting")
    while not _rendezvous_port_free():
        if time.monotonic() > deadline:
            raise SystemExit(
                f"port {hc.DEFAULT_MASTER_PORT} stayed in use for {timeout:g} s: the figures would measure "
                "another cluster's rendezvous; run the benchmark when no other local cluster trains"
            )
        time.sleep(5)


@contextlib.contextmanager
def local_cluster(work: Path) -> Iterator[tuple[Cluster, OperatorProcess]]:
    """The default profile's cluster with the CRD and the operator (as the e2e suite starts them)."""
    info = controlplane.up(work / "cluster", REPO / "e2e" / "profiles" / "default.yaml")
    cluster = Cluster(dir=info.dir, kubeconfig=info.kubeconfig, server=info.server)
    op = OperatorProcess(cluster, work / "operator.log")
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        op.start()
        yield cluster, op
    finally:
        op.stop()
        controlplane.down(info.dir, quiet=True)


def emulated_cores(cluster: Cluster) -> float:
    """The CPU quota the process runner gives one worker of each of ACCELERATORS (one device each),
    together: speed x cores per unit of speed, computed as the runner computes it."""
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    per_speed = cgroups.cpu_per_speed(node_emulated_capacity(nodes), float(len(os.sched_getaffinity(0))))
    speeds: dict[str, float] = {}
    for n in nodes:
        speed = emulated_speed(n)
        if speed is not None:
            speeds[str(n["metadata"]["labels"].get(hc.LABEL_ACCELERATOR))] = speed
    return float(sum(speeds[str(a["type"])] for a in ACCELERATORS) * per_speed)


def _launcher_restart_time(cluster: Cluster, ns: str, pod: str, after: float) -> float | None:
    """When the pod's launcher saw its process fail (its log's timestamp, local time)."""
    for path in (chaos.procnode_dir(cluster) / "pods").glob(f"{ns}_{pod}_*/worker.log"):
        for line in path.read_text(errors="replace").splitlines():
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*user process failed", line)
            if m:
                t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                if t >= after - 1:
                    return t
    return None


def _failure_keys(status: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (str(f.get("pod")), str(f.get("time")), str(f.get("reason"))) for f in status.get("failures") or []
    }


def _detected(
    kind: str, fault: chaos.Injected, pod: str, tl: chaos.Timeline, cluster: Cluster, ns: str
) -> float | None:
    if kind == "process_kill":
        return _launcher_restart_time(cluster, ns, pod, fault.t)
    earlier = fault.info["failures_before"]
    for s in tl.since(fault.t):
        if kind in ("hang", "node_notready"):
            new = _failure_keys(s.status) - earlier  # (an in-place restart may be recorded late: not this)
            if any(k[0] == pod and k[2] in ("Hung", "NodeLost") for k in new):
                return float(s.t)
        elif pod not in s.world:
            return float(s.t)
    return None


def _steady(tl: chaos.Timeline, progress: chaos.Progress, workers: int) -> chaos.Sample:
    s = tl.wait(
        "the whole world training",
        lambda s: (
            s.phase == "Running"
            and len(s.world) == workers
            and all(not v["deleting"] for v in s.pods.values())
        ),
        timeout=300,
    )
    tl.wait(
        "steps in this epoch",
        lambda _: sum(r["epoch"] == s.epoch for r in progress.lines()) >= 20,
        timeout=120,
    )
    return tl.last()


def _victim(kind: str, s: chaos.Sample) -> tuple[str, dict[str, Any]]:
    """The worker a fault hits: for a node fault, the A100 worker (its pool has a spare node for the
    replacement); else rank 1, a worker as most are (not rank 0, which also hosts the rendezvous store)."""
    world = s.status["membership"]["world"]
    if kind in ("drain", "node_notready"):
        m = next(m for m in world if m["type"] == "nvidia-a100")
    else:
        m = next(m for m in world if m["rank"] == 1)
    return str(m["pod"]), {"pod": m["pod"], "rank": m["rank"], "type": m["type"]}


def _inject(kind: str, cluster: Cluster, ns: str, sample: chaos.Sample, pod: str) -> chaos.Injected:
    if kind == "drain":
        return chaos.drain(cluster, chaos.node_of(sample, pod))
    if kind == "node_notready":
        return chaos.node_notready(cluster, chaos.node_of(sample, pod))
    return {"process_kill": chaos.process_kill, "hang": chaos.hang, "pod_delete": chaos.pod_delete}[kind](
        cluster, ns, pod
    )


def measure_heterotrain(cluster: Cluster, heartbeat: int, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """One job, the faults in turn (each on the worker ``_victim`` names)."""
    ns, name = f"bench-{uuid.uuid4().hex[:6]}", "bench"
    cluster.kubectl("create", "namespace", ns)
    chaos.apply(
        cluster,
        chaos.training_job(
            ns, name, steps=10**6, dataset=DATASET, batch=BATCH, workers=(2, 3), accelerators=ACCELERATORS,
            checkpoint_steps=CHECKPOINT_STEPS, fault_tolerance={"heartbeatTimeoutSeconds": heartbeat},
        ),
    )  # fmt: skip
    progress = chaos.job_progress(cluster, ns, name)
    out: dict[str, Any] = {}
    injected: list[chaos.Injected] = []
    try:
        with chaos.Timeline(cluster, ns, name, interval=0.1) as tl:
            for kind in kinds:
                s = _steady(tl, progress, workers=3)
                pod, victim = _victim(kind, s)
                before = max(r["step"] for r in progress.lines())
                failures_before = _failure_keys(tl.last().status)
                fault = _inject(kind, cluster, ns, s, pod)
                fault.info["failures_before"] = failures_before
                injected.append(fault)
                out[kind] = _outcome(kind, fault, pod, s, before, tl, progress, cluster, ns)
                out[kind]["victim"] = victim
                log(f"  heterotrain {kind}: {out[kind]}")
    finally:
        chaos.restore(cluster, injected)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return out


def _outcome(
    kind: str,
    fault: chaos.Injected,
    pod: str,
    s: chaos.Sample,
    before: int,
    tl: chaos.Timeline,
    progress: chaos.Progress,
    cluster: Cluster,
    ns: str,
) -> dict[str, Any]:
    in_place = kind == "process_kill"

    def recovered() -> dict[str, Any] | None:
        # Restarted in place, the world is the same: a step after the launcher restarted the process needs
        # it; replaced, the world re-forms: a step of a newer epoch.
        since = (_detected(kind, fault, pod, tl, cluster, ns) or fault.t) if in_place else fault.t
        for r in progress.lines():
            if r["time"] > since and (r["epoch"] > s.epoch or (in_place and r["epoch"] == s.epoch)):
                return dict(r)
        return None

    tl.wait(f"{kind}: training again", lambda _: recovered(), timeout=240)
    first = recovered()
    assert first is not None
    detected = _detected(kind, fault, pod, tl, cluster, ns)
    out = {
        "detection_seconds": None if detected is None else round(detected - fault.t, 3),
        "recovery_seconds": round(first["time"] - fault.t, 3),
        "steps_lost": max(0, before - (first["step"] - 1)),
        "how": _recorded(kind, fault, pod, tl),
    }
    # The world whole again: the process restarted in place, or the replacement, joined (after its cold
    # start: the others trained on without it); its first step pauses for a second re-formation.
    out.update(_rejoined(fault, first, s, tl, progress))
    return out


def _rejoined(
    fault: chaos.Injected,
    without: dict[str, Any],
    s: chaos.Sample,
    tl: chaos.Timeline,
    progress: chaos.Progress,
) -> dict[str, Any]:
    """When the world trained whole again (the worker restarted in place or its replacement back in: a
    full-size step after the first step without it, as one the victim finished as the signal came may be
    written just after it), and the pause of that second re-formation (the step time of that step)."""
    size = len(s.world)

    def back() -> dict[str, Any] | None:
        return next(
            (dict(r) for r in progress.lines() if r["time"] > without["time"] and r["world"] == size), None
        )

    def no_room(s: chaos.Sample) -> bool:  # a lost node's pool may have no node left for the replacement
        return len(s.world) < size and s.status.get("waitingReason") == "CapacityLimited"

    tl.wait("the world whole again, or no room for it", lambda s: back() or no_room(s), timeout=240)
    first = back()
    if first is None:
        return {"rejoin_seconds": None, "rejoin_pause_seconds": None, "rejoin": "no room (CapacityLimited)"}
    return {
        "rejoin_seconds": round(first["time"] - fault.t, 3),
        "rejoin_pause_seconds": round(float(first["step_seconds"]), 3),
    }


def _recorded(kind: str, fault: chaos.Injected, pod: str, tl: chaos.Timeline) -> str:
    """How the job's status records the failure (reason/action), once it does (a process restarted in
    place is recorded when the runtime's report reaches the operator)."""
    if kind not in ("process_kill", "hang", "node_notready"):
        return "stopped with a checkpoint"
    earlier = fault.info["failures_before"]

    def record() -> dict[str, Any] | None:
        for f in tl.last().status.get("failures") or []:
            key = (str(f.get("pod")), str(f.get("time")), str(f.get("reason")))
            if key not in earlier and f.get("pod") == pod:
                return dict(f)
        return None

    with contextlib.suppress(AssertionError):
        tl.wait(f"{kind}: the failure in the status", lambda _: record(), timeout=60)
    f = record()
    return "not recorded within 60 s" if f is None else f"{f.get('reason')}/{f.get('action')}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--heartbeat", type=int, default=15, help="heartbeatTimeoutSeconds (default: the API's)")
    p.add_argument("--port-wait", type=float, default=900, help="seconds to wait for the rendezvous port")
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="comma-separated faults to measure; fewer than all measures no baseline and writes nothing",
    )
    args = p.parse_args(argv)
    only = tuple(k for k in args.kinds.split(",") if k)
    if unknown := set(only) - set(KINDS):
        p.error(f"--kinds: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    wait_for_rendezvous_port(args.port_wait)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="heterotrain-bench-faults-"))
    log(f"fault benchmark in {work}: heartbeatTimeoutSeconds {args.heartbeat}")
    with local_cluster(work) as (cluster, _op):
        cores = emulated_cores(cluster)
        kinds = measure_heterotrain(cluster, args.heartbeat, only)
    if set(only) != set(KINDS):
        log(f"measured {', '.join(only)} only (work directory {work}): no baseline, nothing written")
        return 0
    # the same emulated compute (the three workers' CPU quotas together), spread over three equal workers
    baseline = torchrun.measure(
        work / "torchrun", heartbeat=args.heartbeat, checkpoint_steps=CHECKPOINT_STEPS, cores=cores,
        batch=BATCH, dataset=DATASET, log=log,
    )  # fmt: skip
    model = ettr_model.Model()
    ours = ettr_model.ettr(kinds, model)
    theirs = ettr_model.ettr(
        {k: v for k, v in baseline.items() if k != "config"},
        model,
        fallback={"node_notready": "hang", "drain": "pod_delete"},
    )
    import torch

    result = {
        "kinds": kinds,
        "torchrun": baseline,
        "ettr": ours["ettr"],
        "torchrun_ettr": theirs["ettr"],
        "ettr_model": {
            **model.describe(ours["costs"]),
            "closed_form": {"heterotrain": ours.get("closed_form"), "torchrun": theirs.get("closed_form")},
            "torchrun_cost_seconds_by_kind": theirs["costs"],
            "torchrun_stand_ins": "a lost node is a hang to torchrun's other workers; a drain is their SIGTERM",
        },
        "definitions": {
            "detection_seconds": "fault -> HeteroTrain acts: the launcher restarts the process (process_kill); "
            "the failure is in the job's status (hang, node_notready); the membership leaves the worker out "
            "(pod_delete, drain). torchrun: fault -> its agent starts a new worker group",
            "recovery_seconds": "fault -> the next step committed by a world that no longer waits on the fault",
            "steps_lost": "committed steps done again after the recovery",
            "rejoin_seconds": "fault -> the first step of the whole world again (the worker restarted in "
            "place, or its replacement, joined once ready)",
            "rejoin_pause_seconds": "the step time of that step: the pause of the second re-formation",
        },
        "targets": TARGETS,
        "setup": {
            "heartbeat_timeout_seconds": args.heartbeat,
            "workers": ACCELERATORS,
            "emulated_cpu_quota_cores": round(cores, 4),
            "global_batch_size": BATCH,
            "checkpoint_interval_steps": CHECKPOINT_STEPS,
            "cluster": "local control plane, process nodes of e2e/profiles/default.yaml",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "elapsed_seconds": round(time.monotonic() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _summary(result, log)
    log(f"wrote {out} in {result['elapsed_seconds']} s")
    return 0


def _summary(result: dict[str, Any], say: Callable[[str], None]) -> None:
    say("")
    say(f"{'kind':15} {'detection':>10} {'recovery':>10} {'lost':>5} | torchrun {'recovery':>9} {'lost':>5}")
    for kind, m in result["kinds"].items():
        t = result["torchrun"].get(kind) or {}
        say(
            f"{kind:15} {m['detection_seconds']!s:>10} {m['recovery_seconds']!s:>10} {m['steps_lost']!s:>5} | "
            f"         {t.get('recovery_seconds', '-')!s:>9} {t.get('steps_lost', '-')!s:>5}"
        )
    say(f"ETTR at Llama 3's failure rate: {result['ettr']} (torchrun {result['torchrun_ettr']})")


if __name__ == "__main__":
    sys.exit(main())
