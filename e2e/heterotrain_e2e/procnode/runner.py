"""The process runner's node side: Ready nodes, renewed Leases, pod watches, pod workers (I/O).

Part of the process runner, a fake kubelet for tests (see the package docstring).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterotrain_runtime.cgroups import DEFAULT_CPU_PER_SPEED, Cgroups, cpu_per_speed

from . import lifecycle, status
from .control import stopped_nodes
from .ipam import IPAllocator
from .kube import STRATEGIC_MERGE_PATCH, ApiError, KubeREST, q
from .kubeconfig import ApiServer
from .kubeletapi import KubeletAPI
from .podcgroups import RECORD, record_owner, remove_recorded
from .podworker import PodWorker, WorkerContext
from .process import kill_leftovers
from .resources import node_emulated_capacity

JSON = dict[str, Any]
log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"


@dataclass
class RunnerConfig:
    state_dir: Path
    label_selector: str
    python: str
    node_names: list[str] = field(default_factory=list)
    lease_interval: float = 10.0
    lease_duration: int = 40
    node_status_interval: float = 30.0
    shutdown_grace: float = 5.0
    pod_cidr: str = "127.1.0.0/16"
    host_ip: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)
    lifecycle: lifecycle.Config = field(default_factory=lifecycle.Config)
    cgroups: bool = True  # enforce limits and emulated speeds (False: --no-cgroups)
    cgroup_parent: str | None = None
    cpu_per_speed: float = DEFAULT_CPU_PER_SPEED


def _arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


class Runner:
    def __init__(self, cfg: RunnerConfig, rest: KubeREST, api: ApiServer) -> None:
        self.cfg = cfg
        self.rest = rest
        self.api = api
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._nodes: dict[str, JSON] = {}
        self._watchers: dict[str, threading.Thread] = {}
        self._synced: set[str] = set()
        self._listed_uids: dict[str, set[str]] = {}
        self._workers: dict[str, PodWorker] = {}
        self._status_at: dict[str, float] = {}
        self._ipam_pruned = False
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.ipam = IPAllocator(cfg.state_dir / "ipam.json", cfg.pod_cidr)
        self.ctx = WorkerContext(
            rest=rest,
            state_dir=cfg.state_dir,
            api=api,
            python_bin_dir=os.path.dirname(os.path.abspath(cfg.python)),
            ipam=self.ipam,
            cfg=cfg.lifecycle,
            node_lookup=self.node,
            host_ip=cfg.host_ip,
            extra_env=dict(cfg.extra_env),
        )
        self._node_info: dict[str, str] = {}
        self._kubelet_api: KubeletAPI | None = None
        self.cgroups: Cgroups | None = None

    def open_cgroups(self) -> None:
        """The runner's cgroups (CgroupUnavailable, naming what is missing, where they cannot be used)."""
        if not self.cfg.cgroups or self.cgroups is not None:
            return
        gone = remove_recorded(self.cfg.state_dir)  # a previous runner on this state dir was killed
        if gone:
            log.warning("removed the cgroups a previous runner left: %s", gone)
        self.cgroups = Cgroups(
            "procnode",
            parent=self.cfg.cgroup_parent,
            hint="or start the process runner with --no-cgroups: pods' limits and emulated speeds "
            "are then not enforced",
        )
        record_owner(self.cfg.state_dir, self.cgroups)
        self.ctx.cgroups = self.cgroups
        self.ctx.cores_per_speed = self.cores_per_speed
        log.info("pods run in cgroups under %s", self.cgroups.owner.dirs)

    def cores_per_speed(self) -> float:
        """An emulated device's CPU quota per unit of speed: all the served nodes' devices fit the machine."""
        assert self.cgroups is not None
        with self._lock:
            nodes = list(self._nodes.values())
        return cpu_per_speed(
            node_emulated_capacity(nodes), self.cgroups.available_cores(), self.cfg.cpu_per_speed
        )

    # --- public -----------------------------------------------------------------

    def node(self, name: str) -> JSON | None:
        with self._lock:
            return self._nodes.get(name)

    def run(self) -> None:
        """Serve until :attr:`stop_event` is set, then stop every pod process."""
        left = kill_leftovers(self.cfg.state_dir)
        if left:
            log.warning("killed %d process(es) left by a previous runner: %s", len(left), left)
        self.open_cgroups()
        self._node_info = self._make_node_info()
        try:
            self._kubelet_api = KubeletAPI(self.cfg.state_dir, self._container_running, self.cfg.host_ip)
            self._kubelet_api.start()
        except Exception as e:  # kubectl logs is a convenience: run without it
            log.warning("no kubelet API endpoint (kubectl logs will not work): %s", e)
        loop = threading.Thread(target=self._node_loop, name="nodes", daemon=True)
        loop.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.stop_event.set()
        with self._lock:
            workers = list(self._workers.values())
        deadline = time.time() + self.cfg.shutdown_grace
        if workers:
            log.info(
                "stopping %d pod worker(s): SIGTERM, SIGKILL after %.0fs",
                len(workers),
                self.cfg.shutdown_grace,
            )
        for w in workers:
            w.shutdown(deadline)
        for w in workers:
            w.join(max(0.1, deadline - time.time()) + 6.0)
        stuck = [w.key for w in workers if w.alive]
        if stuck:
            log.error("pod workers still running at exit: %s", stuck)
        # Anything a worker could not account for (it never happens; belt and braces).
        kill_leftovers(self.cfg.state_dir)
        if self.cgroups is not None:
            self.cgroups.close()
            (self.cfg.state_dir / RECORD).unlink(missing_ok=True)
            self.cgroups = None
        if self._kubelet_api is not None:
            self._kubelet_api.stop()

    # --- nodes ----------------------------------------------------------------

    def _make_node_info(self) -> dict[str, str]:
        version = "v0.0.0-procnode"
        with contextlib.suppress(Exception):
            git = str(self.rest.get("/version").get("gitVersion") or "")
            # A control plane built with `go install` reports "v0.0.0-master+$Format:%H$".
            if re.fullmatch(r"v\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]*)?", git) and "$" not in git:
                version = git
        uname = os.uname()
        machine_id = ""
        with contextlib.suppress(OSError):
            machine_id = Path("/etc/machine-id").read_text().strip()
        boot_id = ""
        with contextlib.suppress(OSError):
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return {
            "machineID": machine_id,
            "systemUUID": machine_id,
            "bootID": boot_id,
            "kernelVersion": uname.release,
            "osImage": "HeteroTrain process runner (test infrastructure; pods run as local processes)",
            "containerRuntimeVersion": "process://0.1.0",
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _arch(),
        }

    def _default_capacity(self) -> dict[str, str]:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return {"cpu": str(os.cpu_count() or 1), "memory": f"{mem // 1024}Ki", "pods": "110"}

    def _node_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._sync_nodes()
            except Exception as e:  # keep going: the API server may be restarting
                log.warning("node sync failed: %s", e)
            self._maybe_prune_ipam()
            self.stop_event.wait(self.cfg.lease_interval)

    def _sync_nodes(self) -> None:
        items = self.rest.get("/api/v1/nodes", labelSelector=self.cfg.label_selector).get("items") or []
        if self.cfg.node_names:
            items = [n for n in items if n["metadata"]["name"] in self.cfg.node_names]
        now = time.time()
        stopped = stopped_nodes(self.cfg.state_dir)
        for node in items:
            name = node["metadata"]["name"]
            with self._lock:
                self._nodes[name] = node
            if name in stopped:
                continue  # a stopped node (see .control): no Lease, no status; its pods keep being watched
            try:
                self._renew_lease(node, now)
            except Exception as e:
                log.warning("node %s: lease renewal failed: %s", name, e)
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or []
            )
            if not ready or now - self._status_at.get(name, 0) >= self.cfg.node_status_interval:
                try:
                    node = self._patch_node_status(node, now)
                    self._status_at[name] = now
                    with self._lock:
                        self._nodes[name] = node
                except Exception as e:
                    log.warning("node %s: status update failed: %s", name, e)
            self._remove_not_ready_taint(node)
            if name not in self._watchers:
                t = threading.Thread(target=self._watch_pods, args=(name,), name=f"watch-{name}", daemon=True)
                self._watchers[name] = t
                t.start()
                log.info("serving node %s", name)

    def _renew_lease(self, node: JSON, now: float) -> None:
        name = node["metadata"]["name"]
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{q(name)}"
        existing = self.rest.get_or_none(path)
        body = status.lease_body(node, now, self.cfg.lease_duration, existing)
        if existing is None:
            self.rest.post(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body)
        else:
            self.rest.put(path, body)

    def _patch_node_status(self, node: JSON, now: float) -> JSON:
        name = node["metadata"]["name"]
        port = self._kubelet_api.port if self._kubelet_api is not None else 0
        patch = status.node_status_patch(
            node, now, self._node_info, self.cfg.host_ip, self._default_capacity(), port
        )
        return self.rest.patch(f"/api/v1/nodes/{q(name)}/status", patch, STRATEGIC_MERGE_PATCH)

    def _remove_not_ready_taint(self, node: JSON) -> None:
        kept = status.taints_without_not_ready(node)
        if kept is None:
            return
        name = node["metadata"]["name"]
        patch = {
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
            "spec": {"taints": kept},
        }
        try:
            updated = self.rest.patch(f"/api/v1/nodes/{q(name)}", patch)
            with self._lock:
                self._nodes[name] = updated
            log.info("node %s: removed the not-ready taint", name)
        except ApiError as e:
            if e.status != 409:  # 409: changed meanwhile; next round
                log.warning("node %s: removing the not-ready taint failed: %s", name, e)

    def _maybe_prune_ipam(self) -> None:
        if self._ipam_pruned:
            return
        with self._lock:
            if not self._watchers or set(self._watchers) - self._synced:
                return
            live = set().union(*self._listed_uids.values()) | set(self._workers)
        gone = self.ipam.retain_only(live)
        if gone:
            log.info("released the pod IPs of %d pod(s) that no longer exist", len(gone))
        self._ipam_pruned = True

    # --- pods -------------------------------------------------------------------

    def _watch_pods(self, node: str) -> None:
        """List then watch the pods bound to ``node``; relist on 410 Gone, back off on errors."""
        rv: str | None = None
        backoff = 0.5
        selector = f"spec.nodeName={node}"
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    lst = self.rest.get("/api/v1/pods", fieldSelector=selector)
                    rv = str(lst["metadata"]["resourceVersion"])
                    uids = set()
                    for pod in lst.get("items") or []:
                        uids.add(pod["metadata"]["uid"])
                        self._dispatch(node, "ADDED", pod)
                    self._forget_missing(node, uids)
                    with self._lock:
                        self._listed_uids[node] = uids
                        self._synced.add(node)
                for ev in self.rest.watch(
                    "/api/v1/pods",
                    fieldSelector=selector,
                    resourceVersion=rv,
                    timeout_seconds=random.randint(240, 360),
                ):
                    if self.stop_event.is_set():
                        return
                    etype, obj = ev.get("type"), ev.get("object") or {}
                    if etype == "ERROR":
                        if obj.get("code") == 410:
                            rv = None
                            break
                        raise ApiError(
                            int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message"))
                        )
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = str(new_rv)
                    if etype in ("ADDED", "MODIFIED", "DELETED"):
                        self._dispatch(node, str(etype), obj)
                backoff = 0.5
            except ApiError as e:
                if e.status == 410:
                    rv = None
                    continue
                log.warning("watch of pods on %s: %s", node, e)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as e:  # connection trouble: resume from rv
                if self.stop_event.is_set():
                    return
                log.warning("watch of pods on %s interrupted: %s", node, e)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _forget_missing(self, node: str, present: set[str]) -> None:
        with self._lock:
            missing = [w for uid, w in self._workers.items() if w.node == node and uid not in present]
        for w in missing:
            w.mark_deleted()

    def _dispatch(self, node: str, etype: str, pod: JSON) -> None:
        try:
            self._dispatch_one(node, etype, pod)
        except Exception:  # a malformed object must not stop the watch of the node
            log.exception("pod event %s on %s: cannot handle it", etype, node)

    def _dispatch_one(self, node: str, etype: str, pod: JSON) -> None:
        if (pod.get("spec") or {}).get("nodeName") != node or self.stop_event.is_set():
            return
        uid = pod["metadata"]["uid"]
        with self._lock:
            w = self._workers.get(uid)
            if etype == "DELETED":
                if w is not None:
                    w.mark_deleted(pod)
                else:
                    self.ipam.release(uid)
                return
            if w is not None:
                w.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in lifecycle.TERMINAL_PHASES and not pod["metadata"].get("deletionTimestamp"):
                return  # finished before we saw it: left as is
            if node in stopped_nodes(self.cfg.state_dir):
                return  # a stopped node starts nothing
            w = PodWorker(self.ctx, pod, self._worker_finished)
            self._workers[uid] = w
        log.info(
            "pod %s/%s bound to %s: taking it (uid %s)",
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            node,
            uid,
        )
        w.start()

    def _container_running(self, namespace: str, pod: str, container: str) -> bool:
        with self._lock:
            workers = [w for w in self._workers.values() if w.key == f"{namespace}/{pod}"]
        for w in workers:
            try:
                if w.st.container(container).state == lifecycle.RUNNING:
                    return True
            except KeyError:
                pass
        return False

    def _worker_finished(self, uid: str) -> None:
        with self._lock:
            self._workers.pop(uid, None)
