"""``make soak``: a steady cluster must stay steady.

Starts a local control plane of kwok nodes (by default 1,000: 200 each of five accelerator types, 8
accelerators per node), the operator as a process (as ``make dev-operator`` runs it), applies a seeded mix
of HeteroTrainJobs at once (1 to 3 accepted types, ``perWorker`` 1, 2, 4 or 8, ``workers: {min: 2, max:
10}``), waits until every job has settled (all planned workers in its world, nothing created or deleted
for a while), then watches a quiet period in which nothing else changes and counts, per minute:

* worker pod deletions and creations (from a watch on the API server),
* membership changes (new epochs in ``status.membership``),
* the operator's CPU time (from ``/proc``) and its log lines.

All three counts must be 0.  It also counts each job's membership changes between its admission and its
full size (one is the goal when the capacity is there from the start).  The result goes to
``benchmarks/results/soak.json``.

Test infrastructure: kwok plays the kubelets; nothing trains.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cluster import controlplane, toolchain
from .testing import wait_for

REPO = toolchain.REPO
TYPES = ("nvidia-h100", "nvidia-a100", "nvidia-h20", "huawei-ascend-910b", "amd-mi300x")
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
GROUP, VERSION, PLURAL = "heterotrain.io", "v1alpha1", "heterotrainjobs"
JOB_LABEL = f"{GROUP}/job-name"
ROLE_LABEL = f"{GROUP}/role"


def profile(nodes_per_type: int, accelerators_per_node: int = 8) -> dict[str, Any]:
    """A cluster profile of kwok pools only, ``nodes_per_type`` nodes of each type."""
    return {
        "apiVersion": "heterotrain.io/cluster-profile/v1",
        "kind": "ClusterProfile",
        "name": f"soak-{nodes_per_type * len(TYPES)}",
        "pools": [
            {
                "name": t.split("-", 1)[1].replace("ascend-910b", "ascend"),
                "type": t,
                "count": nodes_per_type,
                "acceleratorsPerNode": accelerators_per_node,
                "cpu": "192",
                "memory": "2Ti",
            }
            for t in TYPES
        ],
    }


def job_mix(count: int, seed: int, namespace: str = "default") -> list[dict[str, Any]]:
    """``count`` jobs: 1 to 3 accepted types each, perWorker 1, 2, 4 or 8, min 2, max 10 workers."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        types = rng.sample(TYPES, rng.randint(1, 3))
        per_worker = rng.choice((1, 2, 4, 8))
        out.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "HeteroTrainJob",
                "metadata": {"name": f"soak-{i:03d}", "namespace": namespace},
                "spec": {
                    "image": "example.com/train:1",
                    "command": ["python", "train.py"],
                    "workers": {"min": 2, "max": 10},
                    "accelerators": [{"type": t, "perWorker": per_worker} for t in types],
                    "globalBatchSize": 1024,
                    "tolerations": [KWOK_TOLERATION],
                },
            }
        )
    return out


def load_jobs(path: Path, namespace: str = "default") -> list[dict[str, Any]]:
    """Your own job mix: the HeteroTrainJobs of a YAML file (documents, or ``kind: List`` items), in
    ``namespace`` unless they name one; anything else in the file is refused (the soak counts these jobs)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    items = [i for d in docs for i in (d.get("items") or [] if d.get("kind") == "List" else [d])]
    jobs = []
    for i, item in enumerate(items):
        if item.get("kind") != "HeteroTrainJob" or not (item.get("metadata") or {}).get("name"):
            raise ValueError(f"{path}: item {i} is not a named HeteroTrainJob (kind {item.get('kind')!r})")
        meta = {"namespace": namespace, **item["metadata"]}
        jobs.append({**item, "metadata": meta})
    if not jobs:
        raise ValueError(f"{path}: no HeteroTrainJob in it")
    names = [(j["metadata"]["namespace"], j["metadata"]["name"]) for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a job is named twice")
    if {ns for ns, _ in names} != {namespace}:
        raise ValueError(f"{path}: every job must be in namespace {namespace!r} (the soak watches it alone)")
    return jobs


@dataclass
class Counts:
    """What the watches saw, with the time of each event (monotonic seconds)."""

    created: list[float] = field(default_factory=list)
    deleted: list[tuple[float, str, str]] = field(default_factory=list)  # (t, pod, reason)
    epochs: list[tuple[float, str, int, int]] = field(default_factory=list)  # (t, job, epoch, world size)
    admitted: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def between(self, t0: float, t1: float) -> tuple[int, int, int]:
        with self.lock:
            return (
                sum(1 for t in self.created if t0 <= t < t1),
                sum(1 for t, _, _ in self.deleted if t0 <= t < t1),
                sum(1 for t, _, _, _ in self.epochs if t0 <= t < t1),
            )

    def last_change(self) -> float:
        with self.lock:
            times = [*self.created, *(t for t, _, _ in self.deleted), *(t for t, _, _, _ in self.epochs)]
        return max(times, default=0.0)


def _watch(
    stop: threading.Event, list_fn: Callable[..., Any], on_event: Callable[[str, dict[str, Any]], None]
) -> None:
    """Run a watch until ``stop``, re-listing on expiry (events are level-deduplicated by the caller)."""
    from kubernetes import watch

    rv: str | None = None
    while not stop.is_set():
        w = watch.Watch()
        try:
            kwargs: dict[str, Any] = {"timeout_seconds": 30, "allow_watch_bookmarks": True}
            if rv:
                kwargs["resource_version"] = rv
            for ev in w.stream(list_fn, **kwargs):
                if stop.is_set():
                    break
                obj = ev["raw_object"] if "raw_object" in ev else ev["object"]
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if ev["type"] != "BOOKMARK":
                    on_event(ev["type"], obj)
        except Exception as e:  # 410 Gone or a dropped stream: start again from now
            if "410" in str(e) or "Expired" in str(e):
                rv = None
            else:
                print(f"watch failed: {e!r}; watching again", file=sys.stderr, flush=True)
            time.sleep(0.5)
        finally:
            w.stop()


class Observer:
    """Watches worker pods and jobs; records creations, deletions and membership epochs."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.counts = Counts()
        self.stop = threading.Event()
        self._pods: set[str] = set()
        self._gone: set[str] = set()
        self._epochs: dict[str, int] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target in (self._watch_pods, self._watch_jobs):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self.stop.set()

    def _watch_pods(self) -> None:
        def list_pods(**kw: Any) -> Any:
            return self.core.list_pod_for_all_namespaces(label_selector=f"{ROLE_LABEL}=worker", **kw)

        _watch(self.stop, list_pods, self._on_pod)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}/{meta['uid']}"
        now = time.monotonic()
        with self.counts.lock:
            if kind in ("ADDED", "MODIFIED") and key not in self._pods and key not in self._gone:
                self._pods.add(key)
                self.counts.created.append(now)
            if (kind == "DELETED" or meta.get("deletionTimestamp")) and key not in self._gone:
                self._gone.add(key)
                self._pods.discard(key)
                self.counts.deleted.append((now, key, "deleted"))

    def _watch_jobs(self) -> None:
        def list_jobs(**kw: Any) -> Any:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw)

        _watch(self.stop, list_jobs, self._on_job)

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        meta, st = job["metadata"], job.get("status") or {}
        key = f"{meta['namespace']}/{meta['name']}"
        mem = st.get("membership") or {}
        epoch = int(mem.get("epoch") or 0)
        now = time.monotonic()
        with self.counts.lock:
            if epoch > self._epochs.get(key, 0):
                self._epochs[key] = epoch
                self.counts.epochs.append((now, key, epoch, len(mem.get("world") or [])))
            admitted = any(
                c.get("type") == "Admitted" and c.get("status") == "True" for c in st.get("conditions") or []
            )
            if admitted and key not in self.counts.admitted:
                self.counts.admitted[key] = now


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def _jobs_settled(custom: Any, names: Sequence[str], namespace: str) -> tuple[bool, str]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    by = {j["metadata"]["name"]: j for j in items}
    waiting = []
    for n in names:
        st = by.get(n, {}).get("status") or {}
        w = st.get("workers") or {}
        admitted = any(
            c.get("type") == "Admitted" and c.get("status") == "True" for c in st.get("conditions") or []
        )
        if not admitted and st.get("waitingReason") in ("InsufficientCapacity", "WaitingForCapacity"):
            continue  # refused for capacity: settled as long as nothing changes
        if st.get("phase") != "Running" or w.get("ready") != w.get("desired"):
            waiting.append(f"{n}:{st.get('phase')}:{w.get('ready')}/{w.get('desired')}")
    return (not waiting, ", ".join(waiting[:5]) + (f" (+{len(waiting) - 5})" if len(waiting) > 5 else ""))


@dataclass(frozen=True)
class SoakConfig:
    nodes_per_type: int = 200
    jobs: int = 200
    seed: int = 1
    quiet_seconds: float = 300.0
    settle_quiet_seconds: float = 30.0  # no creation, deletion or epoch for this long = settled
    settle_timeout: float = 900.0
    jobs_file: Path | None = None  # your own job mix instead of the seeded one (``jobs`` and ``seed`` unused)


def _wait_established(kubectl: Sequence[str], crd: str, timeout: float) -> None:
    """Poll until the CRD is Established (a control plane under load may answer slowly, or not at all for
    a while); fail with what kubectl last said."""
    said = ["not yet"]
    query = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'

    def established() -> bool:
        try:
            r = subprocess.run(
                [*kubectl, "--request-timeout=30s", "get", "crd", crd, "-o", query],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            said[0] = "kubectl did not answer within 60s"
            return False
        said[0] = (r.stderr or r.stdout).strip() or said[0]
        return r.returncode == 0 and r.stdout.strip() == "True"

    try:
        wait_for(f"CRD {crd} Established", established, timeout=timeout, interval=1.0)
    except AssertionError as e:
        raise RuntimeError(f"{e}; kubectl said: {said[0]}") from None


def run(
    cfg: SoakConfig, workdir: Path, out: Path | None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the whole soak; return (and write to ``out``) the result."""
    workdir.mkdir(parents=True, exist_ok=True)
    prof = workdir / "profile.yaml"
    prof.write_text(yaml.safe_dump(profile(cfg.nodes_per_type)))
    t0 = time.monotonic()
    info = controlplane.up(workdir / "cluster", prof, process_runner=False, timeout=600)
    log(f"cluster of {cfg.nodes_per_type * len(TYPES)} nodes ready in {time.monotonic() - t0:.0f}s")
    kubectl = [str(info.dir / "bin" / "kubectl"), "--kubeconfig", str(info.kubeconfig)]
    env = dict(os.environ, KUBECONFIG=str(info.kubeconfig), PYTHONUNBUFFERED="1")
    op_log = workdir / "operator.log"
    obs: Observer | None = None
    op: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [*kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], check=True, capture_output=True
        )
        _wait_established(kubectl, f"{PLURAL}.{GROUP}", timeout=300.0)
        with open(op_log, "wb") as f:
            op = subprocess.Popen(
                [sys.executable, "-m", "heterotrain_operator", "run"],
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        obs = Observer(info.kubeconfig)
        obs.start()
        jobs = load_jobs(cfg.jobs_file) if cfg.jobs_file else job_mix(cfg.jobs, cfg.seed)
        names = [j["metadata"]["name"] for j in jobs]
        t_apply = time.monotonic()
        subprocess.run(
            [*kubectl, "apply", "-f", "-"],
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": jobs}).encode(),
            check=True,
            capture_output=True,
        )
        log(f"applied {len(jobs)} jobs")
        settled_at = _wait_settled(cfg, obs, names, op, t_apply, log)
        seconds_to_settle = settled_at - t_apply
        log(f"settled {seconds_to_settle:.0f}s after the apply; quiet period of {cfg.quiet_seconds:.0f}s")
        result = _quiet_period(cfg, obs, op, op_log, names, t_apply, seconds_to_settle, log)
    finally:
        if obs is not None:
            obs.close()
        if op is not None and op.poll() is None:
            os.killpg(op.pid, signal.SIGTERM)
            try:
                op.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(op.pid, signal.SIGKILL)
        controlplane.down(info.dir, quiet=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {out}")
    return result


def _wait_settled(
    cfg: SoakConfig,
    obs: Observer,
    names: Sequence[str],
    op: subprocess.Popen[bytes],
    t_apply: float,
    log: Callable[[str], None],
) -> float:
    deadline = t_apply + cfg.settle_timeout
    last_note = 0.0
    while True:
        now = time.monotonic()
        if op.poll() is not None:
            raise RuntimeError(f"the operator exited with {op.returncode}")
        ok, waiting = _jobs_settled(obs.custom, names, "default")
        quiet_for = now - max(obs.counts.last_change(), t_apply)
        if ok and quiet_for >= cfg.settle_quiet_seconds:
            return max(obs.counts.last_change(), t_apply)
        if now > deadline:
            raise RuntimeError(f"not settled after {cfg.settle_timeout:.0f}s: {waiting or 'changes go on'}")
        if now - last_note > 30:
            c = obs.counts
            log(
                f"  +{now - t_apply:.0f}s: {len(c.created)} created, {len(c.deleted)} deleted, "
                f"{len(c.epochs)} epochs; waiting for: {waiting or f'{quiet_for:.0f}s without a change'}"
            )
            last_note = now
        time.sleep(1.0)


def _quiet_period(
    cfg: SoakConfig,
    obs: Observer,
    op: subprocess.Popen[bytes],
    op_log: Path,
    names: Sequence[str],
    t_apply: float,
    seconds_to_settle: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    q0 = time.monotonic()
    cpu0 = cpu_seconds(op.pid)
    lines0 = _lines(op_log)
    minutes: list[dict[str, int]] = []
    t = q0
    while t < q0 + cfg.quiet_seconds:
        step = min(60.0, q0 + cfg.quiet_seconds - t)
        end = t + step
        while time.monotonic() < end:
            if op.poll() is not None:
                raise RuntimeError(f"the operator exited with {op.returncode}")
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        created, deleted, epochs = obs.counts.between(t, end)
        minutes.append({"created": created, "deleted": deleted, "membership_changes": epochs})
        log(
            f"  quiet minute {len(minutes)}: {created} created, {deleted} deleted, {epochs} membership changes"
        )
        t = end
    q1 = time.monotonic()
    cpu1 = cpu_seconds(op.pid)
    lines1 = _lines(op_log)
    span_min = (q1 - q0) / 60.0
    c = obs.counts
    created, deleted, epochs = c.between(q0, q1)
    per_job = Counter(job for t_, job, _, _ in c.epochs if t_ < q0)
    full = _full_size_changes(c, names)
    return {
        "nodes": cfg.nodes_per_type * len(TYPES),
        "jobs": len(names),
        "seed": cfg.seed,
        **({"jobs_file": str(cfg.jobs_file)} if cfg.jobs_file else {}),
        "workers": _worker_count(obs),
        "seconds_to_settle": round(seconds_to_settle, 1),
        "quiet_seconds": round(q1 - q0, 1),
        "quiet_pod_deletions_per_minute": round(deleted / span_min, 2),
        "quiet_pod_creations_per_minute": round(created / span_min, 2),
        "quiet_membership_changes_per_minute": round(epochs / span_min, 2),
        "quiet_operator_cpu_fraction": round((cpu1 - cpu0) / (q1 - q0), 4),
        "quiet_operator_log_lines_per_minute": round((lines1 - lines0) / span_min, 1),
        "quiet_minutes": minutes,
        "settle_pod_creations": sum(1 for t_ in c.created if t_ < q0),
        "settle_pod_deletions": sum(1 for t_, _, _ in c.deleted if t_ < q0),
        "settle_membership_changes": sum(per_job.values()),
        "max_membership_changes_admission_to_full_size": max(full.values(), default=0),
        "jobs_with_more_than_one_change_to_full_size": sum(1 for v in full.values() if v > 1),
    }


def _full_size_changes(c: Counts, names: Sequence[str]) -> dict[str, int]:
    """Per job: membership changes from its admission until its world first reached its final size."""
    out: dict[str, int] = {}
    with c.lock:
        for n in names:
            key = f"default/{n}"
            mine = sorted((t, size) for t, job, _, size in c.epochs if job == key)
            if not mine:
                continue
            final = mine[-1][1]
            first_full = next(i for i, (_, size) in enumerate(mine) if size == final)
            out[key] = first_full + 1
    return out


def _worker_count(obs: Observer) -> int:
    pods = obs.core.list_pod_for_all_namespaces(label_selector=f"{ROLE_LABEL}=worker").items
    return sum(1 for p in pods if p.metadata.deletion_timestamp is None)


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m heterotrain_e2e.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes-per-type", type=int, default=SoakConfig.nodes_per_type)
    ap.add_argument("--jobs", type=int, default=SoakConfig.jobs)
    ap.add_argument("--seed", type=int, default=SoakConfig.seed)
    ap.add_argument("--quiet-seconds", type=float, default=SoakConfig.quiet_seconds)
    ap.add_argument("--settle-timeout", type=float, default=SoakConfig.settle_timeout)
    ap.add_argument(
        "--jobs-file",
        type=Path,
        default=None,
        help="a YAML file of HeteroTrainJobs (namespace default; they must tolerate kwok's taint, "
        f"{KWOK_TOLERATION['key']}) to apply instead of the seeded mix",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    ap.add_argument("--workdir", type=Path, default=None, help="cluster and logs (default: a temp dir)")
    args = ap.parse_args(argv)
    cfg = SoakConfig(
        nodes_per_type=args.nodes_per_type,
        jobs=args.jobs,
        seed=args.seed,
        quiet_seconds=args.quiet_seconds,
        settle_timeout=args.settle_timeout,
        jobs_file=args.jobs_file,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="heterotrain-soak-"))
    result = run(cfg, workdir, args.out, log=lambda s: print(s, flush=True))
    print(json.dumps({k: v for k, v in result.items() if k != "quiet_minutes"}, indent=2))
    bad = (
        result["quiet_pod_deletions_per_minute"]
        or result["quiet_pod_creations_per_minute"]
        or result["quiet_membership_changes_per_minute"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
