"""One thread per pod: executes what :func:`lifecycle.plan` decides and reports status (I/O glue).

Part of the process runner, a fake kubelet for tests (see the package docstring).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterotrain_runtime.cgroups import DEFAULT_CPU_PER_SPEED, CgroupError, Cgroups

from . import lifecycle, status
from .envresolve import ConfigError, resolve_env
from .expansion import expand, mapping_for
from .ipam import IPAllocator, IPExhausted
from .kube import ApiError, KubeREST, pod_path, q
from .kubeconfig import ApiServer, service_account_kubeconfig
from .paths import PathMap, PodDirs
from .podcgroups import PodCgroups
from .process import ContainerProcess
from .volumes import (
    ROOT_CA_CONFIGMAP,
    TokenSpec,
    VolumeError,
    VolumePlan,
    container_mounts,
    materialize,
    plan_volumes,
    serviceaccount_dir,
    write_file,
)

JSON = dict[str, Any]
log = logging.getLogger(__name__)

ENV_SERVICEACCOUNT_DIR = "HETEROTRAIN_SERVICEACCOUNT_DIR"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
SA_TOKEN_SECONDS = 3607  # what the ServiceAccount admission plugin asks for
MAX_WAIT = 5.0
# PYTHONPATH passes through so that pods run the code under test (a checkout other than the installed one);
# a pod's own PYTHONPATH, when it sets one, still wins.
PASSED_ENV = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH")


@dataclass
class WorkerContext:
    """What every pod worker shares (set up by the runner)."""

    rest: KubeREST
    state_dir: Path
    api: ApiServer
    python_bin_dir: str
    ipam: IPAllocator
    cfg: lifecycle.Config
    node_lookup: Callable[[str], JSON | None]
    host_ip: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)
    component: str = "heterotrain-procnode"
    cgroups: Cgroups | None = None  # None: limits and emulated speeds are not enforced (--no-cgroups)
    cores_per_speed: Callable[[], float] = lambda: DEFAULT_CPU_PER_SPEED  # an emulated device of speed 1.0

    def base_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.update(self.extra_env)
        env["PATH"] = os.pathsep.join([self.python_bin_dir, os.environ.get("PATH") or os.defpath])
        venv = Path(self.python_bin_dir).parent
        if (venv / "pyvenv.cfg").exists():
            env["VIRTUAL_ENV"] = str(venv)
        return env


class RESTLookup:
    """:class:`envresolve.ObjectLookup` over the API."""

    def __init__(self, rest: KubeREST) -> None:
        self._rest = rest

    def config_map(self, namespace: str, name: str) -> JSON | None:
        return self._rest.get_or_none(f"/api/v1/namespaces/{q(namespace)}/configmaps/{q(name)}")

    def secret(self, namespace: str, name: str) -> JSON | None:
        return self._rest.get_or_none(f"/api/v1/namespaces/{q(namespace)}/secrets/{q(name)}")


def _rv(pod: JSON | None) -> int | None:
    try:
        return int((pod or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


def _container_spec(pod: JSON, name: str) -> JSON:
    spec = pod["spec"]
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if c["name"] == name:
            return dict(c)
    raise KeyError(name)


class PodWorker:
    def __init__(self, ctx: WorkerContext, pod: JSON, on_finished: Callable[[str], None]) -> None:
        self.ctx = ctx
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.node: str = pod["spec"].get("nodeName", "")
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.dirs = PodDirs(ctx.state_dir, meta["namespace"], meta["name"], self.uid)
        self._lookup = RESTLookup(ctx.rest)
        self._lock = threading.Lock()
        self._pod = pod
        self._deleted = False
        self._shutdown_deadline: float | None = None
        self._wake = threading.Event()
        self._exits: queue.SimpleQueue[tuple[str, int, int, float]] = queue.SimpleQueue()
        self._procs: dict[str, ContainerProcess] = {}
        self._vplan: VolumePlan | None = None
        self._own_sa_dir: Path | None = None
        self._token_refresh: list[tuple[TokenSpec, float]] = []
        self._on_finished = on_finished
        self._cgroups = (
            None if ctx.cgroups is None else PodCgroups(ctx.cgroups, self.uid, self.key, ctx.cores_per_speed)
        )
        now = time.time()
        self.st = lifecycle.new_pod_state(pod)
        lifecycle.adopt(self.st, pod, now, ctx.cfg)
        if not self.st.frozen and self.st.start_time is None:
            self.st.start_time = now
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.key}", daemon=True)

    # --- called from other threads ------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: JSON) -> None:
        with self._lock:
            old, new = _rv(self._pod), _rv(pod)
            if old is None or new is None or new >= old:
                self._pod = pod
        self._wake.set()

    def mark_deleted(self, pod: JSON | None = None) -> None:
        with self._lock:
            self._deleted = True
            if pod is not None:
                self._pod = pod
        self._wake.set()

    def shutdown(self, deadline: float) -> None:
        """Stop every process (SIGTERM now, SIGKILL at ``deadline``) without touching the API."""
        self._shutdown_deadline = deadline
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the loop -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("pod %s: worker failed", self.key)
            self._stop_processes(time.time() + 2.0)
        finally:
            if self._cgroups is not None:
                self._cgroups.close()
            self._on_finished(self.uid)

    def _loop(self) -> None:
        cfg = self.ctx.cfg
        while True:
            self._wake.clear()
            if self._shutdown_deadline is not None:
                self._stop_processes(self._shutdown_deadline)
                return
            with self._lock:
                pod = self._pod
                self.st.deleted = self._deleted
            now = time.time()
            self._drain_exits(pod)
            actions, wake = lifecycle.plan(self.st, pod, now, cfg)
            for action in actions:
                self._execute(action, pod)
            self._drain_exits(pod)
            lifecycle.settle(self.st, pod, time.time(), cfg)
            if self.st.terminal and not self._procs and self._cgroups is not None:
                self._cgroups.close()  # a terminal pod never runs again
            self._refresh_tokens(time.time())
            if not self.st.deleted and not self.st.frozen and not self.st.delete_requested:
                self._push_status()
            if self.st.finished:
                return
            timeout = MAX_WAIT if wake is None else min(MAX_WAIT, max(0.02, wake - time.time()))
            self._wake.wait(timeout)

    def _drain_exits(self, pod: JSON) -> None:
        while True:
            try:
                name, pid, rc, when = self._exits.get_nowait()
            except queue.Empty:
                return
            proc = self._procs.get(name)
            if proc is None or proc.pid != pid:
                continue
            del self._procs[name]
            message = self._termination_message(pod, name, rc)
            oom = self._cgroups.ended(name) if self._cgroups is not None else False
            lifecycle.on_exited(self.st, name, rc, when, self.ctx.cfg, message, oom_killed=oom)
            c = self.st.container(name)
            how = ("OOM-killed, " if oom else "") + (f"signal {-rc}" if rc < 0 else f"exit code {rc}")
            log.info("pod %s container %s (pid %d) ended with %s", self.key, name, pid, how)
            if c.state == lifecycle.WAITING and c.reason == "CrashLoopBackOff":
                self._event(pod, "Warning", "BackOff", f"Back-off restarting failed container {name}", name)

    def _execute(self, action: lifecycle.Action, pod: JSON) -> None:
        if isinstance(action, lifecycle.SetupSandbox):
            self._setup_sandbox(pod)
        elif isinstance(action, lifecycle.StartContainer):
            self._start(pod, action.name)
        elif isinstance(action, lifecycle.SignalContainer):
            c = self.st.container(action.name)
            proc = self._procs.get(action.name)
            if action.sig == signal.SIGKILL:
                c.kill_sent = True
            else:
                c.term_sent = True
                self._event(pod, "Normal", "Killing", f"Stopping container {action.name}", action.name)
            if proc is not None:
                log.info(
                    "pod %s container %s: sending %s to process group %d",
                    self.key,
                    action.name,
                    signal.Signals(action.sig).name,
                    proc.pid,
                )
                proc.signal(action.sig)
        elif isinstance(action, lifecycle.DeletePod):
            self._delete(pod)
        elif isinstance(action, lifecycle.Cleanup):
            self._cleanup()

    # --- sandbox ----------------------------------------------------------------

    def _pod_view(self, pod: JSON) -> JSON:
        """The pod as the downward API sees it: with the IPs this runner assigned."""
        view = dict(pod)
        st = dict(pod.get("status") or {})
        st["hostIP"] = self.ctx.host_ip
        st["hostIPs"] = [{"ip": self.ctx.host_ip}]
        if self.st.pod_ip:
            st["podIP"] = self.st.pod_ip
            st["podIPs"] = [{"ip": self.st.pod_ip}]
        view["status"] = st
        return view

    def _node_allocatable(self, pod: JSON) -> JSON:
        node = self.ctx.node_lookup(pod["spec"].get("nodeName", "")) or {}
        status_ = node.get("status") or {}
        return dict(status_.get("allocatable") or status_.get("capacity") or {})

    def _setup_sandbox(self, pod: JSON) -> None:
        st = self.st
        now = time.time()
        try:
            if (pod.get("spec") or {}).get("hostNetwork"):
                st.pod_ip = self.ctx.host_ip
            else:
                st.pod_ip = self.ctx.ipam.allocate(self.uid, preferred=st.pod_ip)
            self.dirs.root.mkdir(parents=True, exist_ok=True)
            self.dirs.work.mkdir(parents=True, exist_ok=True)
            view = self._pod_view(pod)
            plan = plan_volumes(
                view,
                self.dirs,
                self._lookup,
                node_allocatable=self._node_allocatable(pod),
                root_ca=self.ctx.api.ca_pem,
            )
            for w in plan.warnings:
                log.warning("pod %s: %s", self.key, w)
            materialize(plan)
            self._token_refresh = []
            for t in plan.tokens:
                self._write_token(pod, t)
            self._vplan = plan
            if self._needs_own_serviceaccount(pod, plan):
                self._make_own_serviceaccount(pod)
        except (VolumeError, ConfigError, ApiError, IPExhausted, OSError, ValueError) as e:
            msg = f"MountVolume.SetUp failed: {e}"
            log.warning("pod %s: %s (retrying)", self.key, msg)
            if st.sandbox_error != msg:
                self._event(pod, "Warning", "FailedMount", msg)
            st.sandbox_error = msg
            st.sandbox_retry_at = now + self.ctx.cfg.sandbox_retry
            status.sandbox_waiting(st, msg)
            return
        st.sandbox_ready = True
        st.sandbox_error = ""
        status.sandbox_waiting(st, "")
        log.info("pod %s on %s: sandbox ready, pod IP %s", self.key, self.node, st.pod_ip)

    def _needs_own_serviceaccount(self, pod: JSON, plan: VolumePlan) -> bool:
        spec = pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return False
        for c in [*(spec.get("initContainers") or []), *spec.get("containers", [])]:
            try:
                mounts = container_mounts(c, plan, {})
            except VolumeError:
                continue
            if serviceaccount_dir(mounts) is None:
                return True
        return False

    def _make_own_serviceaccount(self, pod: JSON) -> None:
        """Service-account files for a pod without the projected kube-api-access volume."""
        d = self.dirs.serviceaccount
        ns = pod["metadata"]["namespace"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        cm = self._lookup.config_map(ns, ROOT_CA_CONFIGMAP)
        ca = str((cm or {}).get("data", {}).get("ca.crt", "")).encode() or (self.ctx.api.ca_pem or b"")
        write_file(d / "ca.crt", ca, 0o644)
        write_file(d / "namespace", ns.encode(), 0o644)
        self._write_token(pod, TokenSpec(d / "token", sa, None, SA_TOKEN_SECONDS))
        self._own_sa_dir = d

    def _write_token(self, pod: JSON, t: TokenSpec) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [t.audience] if t.audience else [],
                "expirationSeconds": max(600, t.expiration_seconds),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{q(meta['namespace'])}/serviceaccounts/{q(t.service_account)}/token"
        resp = self.ctx.rest.post(path, body)
        write_file(t.path, str(resp["status"]["token"]).encode(), t.mode)
        refresh_at = time.time() + 0.8 * max(600, t.expiration_seconds)
        self._token_refresh = [x for x in self._token_refresh if x[0].path != t.path] + [(t, refresh_at)]

    def _refresh_tokens(self, now: float) -> None:
        if self.st.terminal or self.st.deleted:
            return
        for t, at in list(self._token_refresh):
            if now >= at:
                try:
                    with self._lock:
                        pod = self._pod
                    self._write_token(pod, t)
                except (ApiError, OSError) as e:
                    log.warning("pod %s: refreshing token %s: %s", self.key, t.path, e)

    # --- containers -----------------------------------------------------------

    def _start(self, pod: JSON, name: str) -> None:
        st, cfg = self.st, self.ctx.cfg
        spec = _container_spec(pod, name)
        now = time.time()
        view = self._pod_view(pod)
        assert self._vplan is not None
        try:
            env = resolve_env(
                view,
                spec,
                self._lookup,
                service_env=self._service_env(),
                node_allocatable=self._node_allocatable(pod),
            )
            mounts = container_mounts(spec, self._vplan, env)
        except (ConfigError, VolumeError) as e:
            c = st.container(name)
            if c.message != str(e):
                self._event(pod, "Warning", "Failed", f"Error: {e}", name)
            lifecycle.on_config_error(st, name, now, cfg, "CreateContainerConfigError", str(e))
            return
        except ApiError as e:
            lifecycle.on_config_error(st, name, now, cfg, "CreateContainerConfigError", str(e))
            return
        for m in mounts:
            if m.make_dir and not m.host_path.exists():
                m.host_path.mkdir(parents=True, exist_ok=True)
        term_host = self.dirs.termination_message(name)
        term_host.parent.mkdir(parents=True, exist_ok=True)
        term_host.write_bytes(b"")
        term_path = spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        pathmap = PathMap.of(
            [*((m.mount_path, str(m.host_path)) for m in mounts), (term_path, str(term_host))]
        )

        mapping = mapping_for(env)
        command = [pathmap.rewrite(expand(str(x), mapping)) for x in spec.get("command") or []]
        args = [pathmap.rewrite(expand(str(x), mapping)) for x in spec.get("args") or []]
        argv = command + args
        if not argv:
            lifecycle.on_start_error(
                st,
                name,
                now,
                cfg,
                "the container has no command: the process runner does "
                "not pull images, so an image's entrypoint is unknown; set command/args",
            )
            return
        wd = spec.get("workingDir")
        cwd = Path(pathmap.resolve(wd) or self.dirs.rootfs(wd)) if wd else self.dirs.work
        cwd.mkdir(parents=True, exist_ok=True)

        proc_env = self.ctx.base_env()
        proc_env["HOSTNAME"] = pod["spec"].get("hostname") or pod["metadata"]["name"]
        rewritten = {k: pathmap.rewrite(v) for k, v in env.items()}
        proc_env.update(rewritten)
        if "PATH" in rewritten:
            proc_env["PATH"] = os.pathsep.join([self.ctx.python_bin_dir, rewritten["PATH"]])
        sa_dir = serviceaccount_dir(mounts) or (
            self._own_sa_dir if pod["spec"].get("automountServiceAccountToken") is not False else None
        )
        if sa_dir is not None:
            kc = self.dirs.kubeconfig(name)
            sa = pod["spec"].get("serviceAccountName") or "default"
            user = f"system:serviceaccount:{pod['metadata']['namespace']}:{sa}"
            write_file(
                kc,
                service_account_kubeconfig(
                    self.ctx.api, sa_dir / "token", pod["metadata"]["namespace"], user
                ).encode(),
                0o600,
            )
            proc_env.setdefault("KUBECONFIG", str(kc))
            proc_env.setdefault(ENV_SERVICEACCOUNT_DIR, str(sa_dir))

        try:
            node = self.ctx.node_lookup(pod["spec"].get("nodeName", "")) or {}
            preexec = self._cgroups.start(pod, node, name).preexec() if self._cgroups is not None else None
        except (CgroupError, ValueError) as e:
            self._start_failed(pod, name, f"cgroup: {e}")
            return
        log_path = self.dirs.log(name)
        if log_path.exists():
            os.replace(log_path, self.dirs.previous_log(name))
        try:
            proc = ContainerProcess(
                argv,
                proc_env,
                cwd,
                log_path,
                self.ctx.state_dir,
                (self.key, name),
                on_exit=functools.partial(self._exited, name),
                preexec=preexec,
                node=self.node,
            )
        except (OSError, subprocess.SubprocessError) as e:
            if self._cgroups is not None:
                self._cgroups.ended(name)
            self._start_failed(pod, name, f"failed to start {argv[0]!r}: {getattr(e, 'strerror', None) or e}")
            return
        # Exits are drained in this thread, after this registration; they carry the pid.
        self._procs[name] = proc
        proc_started = time.time()
        lifecycle.on_started(st, name, proc.pid, proc_started)
        log.info(
            "pod %s container %s: image %s (not pulled), pid %d: %s",
            self.key,
            name,
            spec.get("image", ""),
            proc.pid,
            argv,
        )
        self._event(pod, "Normal", "Started", f"Started container {name} (process {proc.pid})", name)

    def _start_failed(self, pod: JSON, name: str, msg: str) -> None:
        log.warning("pod %s container %s: %s", self.key, name, msg)
        self._event(pod, "Warning", "Failed", f"Error: {msg}", name)
        lifecycle.on_start_error(self.st, name, time.time(), self.ctx.cfg, msg)

    def _exited(self, name: str, pid: int, rc: int) -> None:
        # Called from the reaper thread: hand over to the worker thread.
        self._exits.put((name, pid, rc, time.time()))
        self._wake.set()

    def _termination_message(self, pod: JSON, name: str, rc: int) -> str:
        try:
            data = self.dirs.termination_message(name).read_bytes()[:4096]
        except OSError:
            data = b""
        msg = data.decode("utf-8", "replace")
        try:
            policy = _container_spec(pod, name).get("terminationMessagePolicy")
        except KeyError:
            policy = None
        if not msg and rc != 0 and policy == "FallbackToLogsOnError":
            try:
                lines = self.dirs.log(name).read_bytes().splitlines()[-80:]
                msg = b"\n".join(lines)[-2048:].decode("utf-8", "replace")
            except OSError:
                pass
        return msg

    def _service_env(self) -> dict[str, str]:
        from .envresolve import service_env

        return service_env(self.ctx.api.host, self.ctx.api.port)

    # --- API ------------------------------------------------------------------

    def _push_status(self) -> None:
        """Replace ``pods/status`` when what we would report differs from the server's (409: re-read, retry)."""
        ns, name = self.st.namespace, self.st.name
        for _attempt in range(6):
            with self._lock:
                pod = self._pod
            desired = status.build_pod_status(pod, self.st, time.time(), self.ctx.host_ip)
            if _status_equivalent(desired, pod.get("status") or {}):
                return
            body = dict(pod)
            body["status"] = desired
            try:
                updated = self.ctx.rest.put(pod_path(ns, name, "status"), body)
            except ApiError as e:
                if e.status == 409:
                    fresh = self.ctx.rest.get_or_none(pod_path(ns, name))
                    if fresh is None or fresh["metadata"].get("uid") != self.uid:
                        self.mark_deleted()
                        return
                    self.update(fresh)
                    continue
                if e.status == 404:
                    self.mark_deleted()
                    return
                log.warning("pod %s: status update failed: %s", self.key, e)
                return
            except Exception as e:  # connection trouble: retried on the next pass
                log.warning("pod %s: status update failed: %s", self.key, e)
                return
            log.debug("pod %s: status pushed (phase %s)", self.key, desired.get("phase"))
            self.update(updated)
            return

    def _delete(self, pod: JSON) -> None:
        self._push_status()
        ns, name = self.st.namespace, self.st.name
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.ctx.rest.delete(pod_path(ns, name), body)
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("pod %s: delete failed: %s (retrying)", self.key, e)
                return
        except Exception as e:
            log.warning("pod %s: delete failed: %s (retrying)", self.key, e)
            return
        log.info("pod %s: deleted", self.key)
        self.st.delete_requested = True

    def _event(self, pod: JSON, etype: str, reason: str, message: str, container: str | None = None) -> None:
        meta = pod["metadata"]
        now = status.rfc3339(time.time())
        involved: JSON = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        if container:
            inits = {c.get("name") for c in pod["spec"].get("initContainers") or []}
            kind = "initContainers" if container in inits else "containers"
            involved["fieldPath"] = f"spec.{kind}{{{container}}}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {"component": self.ctx.component, "host": self.node},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.ctx.rest.post(f"/api/v1/namespaces/{q(meta['namespace'])}/events", body)
        except Exception as e:  # events are best effort
            log.debug("pod %s: event %s not recorded: %s", self.key, reason, e)

    # --- the end --------------------------------------------------------------

    def _cleanup(self) -> None:
        self.ctx.ipam.release(self.uid)
        root = self.dirs.root
        if root.is_dir():
            for entry in root.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                elif not entry.name.endswith(".log"):
                    with contextlib.suppress(OSError):
                        entry.unlink()
        log.info("pod %s: gone; cleaned up (logs kept in %s)", self.key, root)

    def _stop_processes(self, deadline: float) -> None:
        procs = list(self._procs.values())
        for p in procs:
            p.signal(signal.SIGTERM)
        while any(not p.done for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        for p in procs:
            if not p.done:
                p.signal(signal.SIGKILL)
        for p in procs:
            p.join(5.0)


def _status_equivalent(a: JSON, b: JSON) -> bool:
    """Equal once null values are dropped (the API server does not store them)."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if v is not None}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return bool(clean(a) == clean(b))
