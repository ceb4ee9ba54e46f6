"""The demo's steps: the cluster, the chart, the job, the live view with a kill and a new node, the PNG."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterotrain_api.v1alpha1 import TERMINAL_PHASES
from heterotrain_contract import DEFAULT_MASTER_PORT, GROUP, KIND, PLURAL
from heterotrain_e2e import chart
from heterotrain_e2e.cluster import controlplane, toolchain
from heterotrain_e2e.cluster import profile as profilemod
from heterotrain_e2e.testing import Cluster

from . import chaos, job, plot, timeline

QUICKSTART = toolchain.REPO / "examples" / "quickstart.yaml"
RELEASE, RELEASE_NS = "heterotrain", "heterotrain-system"


@dataclass
class Options:
    cluster_dir: Path
    profile: Path
    steps: int
    grow_type: str
    keep: bool
    timeout: float
    interval: float = 2.0
    # Of the steps: the kill, then the node on the next tick, early, so that the new node's worker
    # (slow to start at its emulated speed) joins well before the end.
    kill_at: float = 0.25
    add_at: float = 0.25


@dataclass
class Run:
    """What the demo saw and did."""

    cluster: Cluster
    namespace: str
    name: str
    start: float
    snapshots: list[timeline.Snapshot] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    actions: list[timeline.Action] = field(default_factory=list)
    progress: chaos.ProgressTail | None = None
    profile: profilemod.Profile | None = None  # the local cluster's: kill and add only there


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {msg}", flush=True)


def bring_up(opts: Options) -> tuple[Cluster, profilemod.Profile | None, bool]:
    """The cluster handle, the local cluster's profile (None for another cluster), whether we started it."""
    kubeconfig = os.environ.get("KUBECONFIG")
    state = controlplane.read_state(opts.cluster_dir) if controlplane.is_running(opts.cluster_dir) else None
    local_kc = (opts.cluster_dir / "kubeconfig").resolve()
    if kubeconfig and (state is None or Path(kubeconfig).resolve() != local_kc):
        toolchain.link(toolchain.ensure(), opts.cluster_dir / "bin")  # helm and kubectl
        say(f"KUBECONFIG={kubeconfig}: using that cluster (no worker is killed, no node added there)")
        return Cluster(opts.cluster_dir, Path(kubeconfig), ""), None, False
    say(f"starting the local cluster in {opts.cluster_dir} ({opts.profile.name}) ...")
    info = controlplane.up(opts.cluster_dir, opts.profile)
    try:
        state = controlplane.read_state(info.dir) or {}
        prof = profilemod.load(Path(state.get("profile") or opts.profile))
    except BaseException:
        if not info.already_running:
            controlplane.down(info.dir, quiet=True)
        raise
    ready = "already running" if info.already_running else f"ready in {info.seconds_to_ready:.0f}s"
    say(f"cluster {ready}: profile {prof.name}, KUBECONFIG={info.kubeconfig}")
    return Cluster(info.dir, info.kubeconfig, info.server), prof, not info.already_running


def install_chart(cluster: Cluster) -> bool:
    """helm upgrade --install of charts/heterotrain; returns whether the release is new."""
    had = RELEASE in chart.helm(cluster, "list", "-n", RELEASE_NS, "-q", check=False).stdout.split()
    chart.adopt_crd(cluster, RELEASE, RELEASE_NS)
    say(f"helm {'upgrade' if had else 'install'} {RELEASE} charts/heterotrain -n {RELEASE_NS} --wait ...")
    t = time.monotonic()
    chart.helm(
        cluster,
        *("upgrade", "--install", RELEASE, str(chart.CHART), "-n", RELEASE_NS, "--create-namespace"),
        *("--wait", "--timeout", "3m"),
    )
    pods = chart.operator_pods(cluster, RELEASE, RELEASE_NS)
    where = ", ".join(f"{p['metadata']['name']} on {p['spec'].get('nodeName')}" for p in pods)
    say(f"the operator runs from the chart ({time.monotonic() - t:.0f}s): {where}")
    return not had


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def wait_for_rendezvous_port(timeout: float) -> float:
    """Process-runner pods share this machine's ports: a job of another cluster here that holds the
    rendezvous port would meet this one's workers (each would join the other's rounds).  Wait for it;
    returns the seconds waited."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    if port_free(DEFAULT_MASTER_PORT):
        return 0.0
    say(
        f"port {DEFAULT_MASTER_PORT} (the rendezvous) is held by another process of this machine, another "
        "cluster's job: process-runner pods share the machine's ports; waiting for it to be free ..."
    )
    while not port_free(DEFAULT_MASTER_PORT):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {DEFAULT_MASTER_PORT} still in use after {timeout:.0f}s")
        time.sleep(2)
    say(f"port {DEFAULT_MASTER_PORT} free after {time.monotonic() - t0:.0f}s")
    return time.monotonic() - t0


def apply_job(cluster: Cluster, opts: Options) -> tuple[str, list[dict[str, Any]]]:
    ns = f"demo-{uuid.uuid4().hex[:5]}"
    docs = job.demo_manifests(QUICKSTART.read_text(), ns, opts.steps, opts.grow_type)
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    name = next(d for d in docs if d["kind"] == KIND)["metadata"]["name"]
    say(f"applied examples/quickstart.yaml ({opts.steps} steps, workers 2..4): HeteroTrainJob {ns}/{name}")
    return ns, docs


def read_job(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", f"{PLURAL}.{GROUP}", "-n", ns, name, "-o", "json").stdout
    return dict(json.loads(out))


def read_events(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    sel = f"involvedObject.name={name},involvedObject.kind={KIND}"
    out = cluster.kubectl("get", "events", "-n", ns, "--field-selector", sel, "-o", "json").stdout
    return list(json.loads(out)["items"])


def midway(run: Run, opts: Options, status: dict[str, Any], step: int) -> None:
    """Kill a worker once past ``kill_at`` of the steps, then add a node once past ``add_at``."""
    if run.profile is None or status.get("phase") != "Running":
        return
    done = {a.label.split(" ", 1)[0] for a in run.actions}
    world = (status.get("membership") or {}).get("world") or []
    if "killed" not in done and step >= opts.kill_at * opts.steps and len(world) > 2:
        victim = max(world, key=lambda m: m["rank"])  # not rank 0, whose records the demo reads
        try:
            pgid = chaos.kill_worker(run.cluster, run.namespace, victim["pod"])
        except AssertionError:  # its process is not running this instant (restarting): next tick
            return
        run.actions.append(timeline.Action(time.time(), f"killed {victim['pod']} ({victim['type']})"))
        say(
            f">>> SIGKILL to {victim['pod']}'s worker process group {pgid} ({victim['type']}, rank {victim['rank']})"
        )
    elif "killed" in done and "added" not in done and step >= opts.add_at * opts.steps:
        existing = {n["metadata"]["name"] for n in chart.get(run.cluster, "nodes")["items"]}
        node = chaos.next_node(run.profile, opts.grow_type, existing)
        chaos.add_node(run.cluster, node)
        run.actions.append(timeline.Action(time.time(), f"added node {node['metadata']['name']}"))
        speed = node["metadata"]["annotations"].get("heterotrain.io/emulated-speed")
        say(f">>> added node {node['metadata']['name']} ({opts.grow_type}, emulated speed {speed})")


def watch(run: Run, opts: Options) -> dict[str, Any]:
    """Poll until the job ends (or the timeout: its last status, phase and all): a line every ``interval``
    seconds, Events and world changes as they come."""
    deadline = time.monotonic() + opts.timeout
    status: dict[str, Any] = {}
    shown_events: set[tuple[float, str, str]] = set()
    epoch = None
    while time.monotonic() < deadline:
        tick = time.monotonic()
        status = read_job(run.cluster, run.namespace, run.name).get("status") or {}
        run.snapshots.append(timeline.Snapshot(time.time(), status))
        run.events.extend(read_events(run.cluster, run.namespace, run.name))
        for occ in timeline.event_occurrences(run.events):
            if occ not in shown_events and occ[0] >= run.start - 1:
                shown_events.add(occ)
                say(f"    event {occ[1]}: {occ[2]}")
        mem = status.get("membership") or {}
        if mem.get("world") and mem.get("epoch") != epoch:
            epoch = mem["epoch"]
            say("    world: " + ", ".join(f"rank {m['rank']} {m['type']}" for m in mem.get("world") or []))
        if run.progress is not None:
            run.progress.read_new()
        last = run.progress.records[-1] if run.progress and run.progress.records else None
        say(timeline.progress_line(status, last, opts.steps))
        if status.get("phase") in TERMINAL_PHASES:
            return status
        midway(run, opts, status, int(last["step"]) if last else 0)
        time.sleep(max(0.0, opts.interval - (time.monotonic() - tick)))
    say(f"the job did not finish in {opts.timeout:.0f}s")
    return status


def write_timeline(run: Run, out_dir: Path) -> Path:
    records = run.progress.records if run.progress else []
    tl = timeline.build(run.snapshots, run.events, records, run.actions, run.start)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "timeline.json").write_text(json.dumps(dataclasses.asdict(tl), indent=1))
    title = f"HeteroTrainJob {run.namespace}/{run.name}: the quickstart GPT on three emulated pools"
    return plot.render(tl, out_dir / "timeline.png", title)
