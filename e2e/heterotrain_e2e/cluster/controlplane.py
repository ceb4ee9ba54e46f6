"""Start and stop a real local Kubernetes control plane (no Docker, no kubelet).

``up`` starts etcd, kube-apiserver (RBAC, service-account tokens, certificates
generated at start), kube-controller-manager and kube-scheduler on free
loopback ports, registers the nodes of a cluster profile, starts kwok for the
simulated pools and the process runner (test infrastructure: a fake kubelet
whose pods run as local processes) for the others, and waits until every node
is Ready.  ``down`` stops everything it started.  All state lives in one
directory (``.cluster/`` by default), so several clusters can run side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import pki as pkimod
from . import podnet, toolchain
from . import profile as profilemod

STATE_FILE = "state.json"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "procnode")
SERVICE_CIDR = "10.96.0.0/16"


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class ClusterInfo:
    dir: Path
    kubeconfig: Path
    server: str
    already_running: bool
    seconds_to_ready: float


def _log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise ClusterError(
                f"port {port} for {what} is already in use on 127.0.0.1 ({e.strerror}); "
                f"stop what holds it or choose another port"
            ) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def read_state(d: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((d / STATE_FILE).read_text()))
    except (OSError, ValueError):
        return None


def _write_state(d: Path, state: dict[str, Any]) -> None:
    tmp = d / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, d / STATE_FILE)


def is_running(d: Path) -> bool:
    state = read_state(d)
    if not state:
        return False
    pid = state.get("pids", {}).get("kube-apiserver")
    return bool(pid) and _pid_alive(int(pid))


class _Starter:
    def __init__(self, d: Path, state: dict[str, Any]) -> None:
        self.d = d
        self.state = state
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        (d / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.d / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.d,
            start_new_session=True,
            env=env,
        )
        log.close()
        self.procs[name] = proc
        self.state.setdefault("pids", {})[name] = proc.pid
        _write_state(self.d, self.state)

    def log_tail(self, name: str, n: int = 25) -> str:
        try:
            lines = (self.d / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait(self, name: str, what: str, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs.get(name)
        while True:
            if proc is not None and proc.poll() is not None:
                tail = self.log_tail(name)
                hint = ""
                if "address already in use" in tail:
                    hint = " (a port it needs is already in use)"
                raise ClusterError(
                    f"{name} exited with code {proc.returncode} before {what}{hint}; "
                    f"last lines of {self.d / 'logs' / (name + '.log')}:\n{tail}"
                )
            try:
                if probe():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out after {timeout:.0f}s waiting for {what}; see {self.d}/logs/{name}.log"
                )
            time.sleep(0.2)


def _https_get(url: str, ctx: ssl.SSLContext, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def _kubectl(
    tc: toolchain.Toolchain, kubeconfig: Path, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [tc.path("kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=input,
        text=True,
        capture_output=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def up(
    d: Path,
    profile_path: Path,
    *,
    apiserver_port: int = 0,
    process_runner: bool = True,
    timeout: float = 120.0,
) -> ClusterInfo:
    d = d.resolve()
    t0 = time.monotonic()
    prof = profilemod.load(profile_path)  # refuse a bad profile before starting anything
    if is_running(d):
        state = read_state(d) or {}
        return ClusterInfo(d, d / "kubeconfig", str(state.get("server")), True, 0.0)
    if read_state(d):
        down(d, quiet=True)  # stale state from a cluster that died: clean it up first

    if apiserver_port:
        _check_port_free(apiserver_port, "kube-apiserver")
    tc = toolchain.ensure()
    toolchain.link(tc, d / "bin")
    t_built = time.monotonic()

    d.mkdir(parents=True, exist_ok=True)
    for sub in ("etcd", "procnode", "kwok"):
        shutil.rmtree(d / sub, ignore_errors=True)
    ports = {
        "etcd": _free_port(),
        "etcd-peer": _free_port(),
        "apiserver": apiserver_port or _free_port(),
        "controller-manager": _free_port(),
        "scheduler": _free_port(),
        "kwok": _free_port(),
    }
    server = f"https://127.0.0.1:{ports['apiserver']}"
    state: dict[str, Any] = {
        "ports": ports,
        "server": server,
        "profile": str(profile_path.resolve()),
        "pids": {},
        "started": time.time(),
    }
    _write_state(d, state)
    p = pkimod.generate(d / "pki")
    kubeconfig = d / "kubeconfig"
    kubeconfig.write_text(pkimod.kubeconfig(p, server, "admin"))
    for comp in ("scheduler", "controller-manager"):
        (d / f"{comp}.kubeconfig").write_text(pkimod.kubeconfig(p, server, comp))

    s = _Starter(d, state)
    nodes = profilemod.node_manifests(prof)
    procnodes = [n for n in nodes if n["metadata"]["labels"][profilemod.RUNNER_LABEL] == "process"]
    try:
        pod_cidr = ""
        if procnodes and process_runner:
            # Before anything starts: a machine that cannot give pods addresses fails at once.
            try:
                net = podnet.create(d)
            except podnet.PodNetworkError as e:
                raise ClusterError(str(e)) from None
            state["podNetwork"] = {"interface": net.interface, "cidr": net.cidr}
            _write_state(d, state)
            pod_cidr = net.cidr
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        s.start(
            "etcd",
            [
                tc.path("etcd"),
                "--name=default",
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
                "--listen-metrics-urls=",
            ],
        )
        s.wait(
            "etcd",
            "etcd to be healthy",
            lambda: b'"health":"true"' in urllib.request.urlopen(etcd_url + "/health", timeout=1).read(),
            timeout,
        )

        s.start(
            "kube-apiserver",
            [
                tc.path("kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={p.serving_crt}",
                f"--tls-private-key-file={p.serving_key}",
                f"--client-ca-file={p.ca_crt}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={d / 'pki'}",
                "--enable-priority-and-fairness=false",
                "--event-ttl=1h",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(p.ca_crt))
        ctx.load_cert_chain(*map(str, p.client("admin")))
        s.wait(
            "kube-apiserver",
            "kube-apiserver /readyz",
            lambda: _https_get(server + "/readyz", ctx) == (200, b"ok"),
            timeout,
        )

        s.start(
            "kube-controller-manager",
            [
                tc.path("kube-controller-manager"),
                f"--kubeconfig={d / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={d / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={d / 'controller-manager.kubeconfig'}",
                f"--service-account-private-key-file={p.sa_key}",
                f"--root-ca-file={p.ca_crt}",
                f"--cluster-signing-cert-file={p.ca_crt}",
                f"--cluster-signing-key-file={p.ca_key}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller-manager']}",
                "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle-controller",
                "--concurrent-gc-syncs=5",
                "--profiling=false",
                # The simulated kubelets (kwok, the process runner) renew node leases from one loaded
                # 2-core machine; under heavy test load a renewal can be late, and the default 50s grace
                # then flaps nodes NotReady.  Real node failure is still detected, 40s later.
                "--node-monitor-grace-period=90s",
            ],
        )
        s.start(
            "kube-scheduler",
            [
                tc.path("kube-scheduler"),
                f"--kubeconfig={d / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={d / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={d / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                "--profiling=false",
            ],
        )

        items = {"apiVersion": "v1", "kind": "List", "items": [*nodes, *shared_volumes(d)]}
        _kubectl(
            tc,
            kubeconfig,
            "apply",
            "--server-side",
            "--field-manager=heterotrain-cluster",
            "-f",
            "-",
            input=json.dumps(items),
        )
        if any(n["metadata"]["annotations"].get(profilemod.KWOK_ANNOTATION) for n in nodes):
            s.start(
                "kwok",
                [
                    tc.path("kwok"),
                    f"--kubeconfig={kubeconfig}",
                    f"--manage-nodes-with-annotation-selector={profilemod.KWOK_ANNOTATION}=fake",
                    f"--node-port={ports['kwok']}",
                    "--server-address=127.0.0.1:" + str(_free_port()),
                    "--node-ip=127.0.0.1",
                    # Heartbeats through node Leases (renewed every 10 s, as a kubelet does), not through
                    # full node status updates every 20-45 s: cheap at 1,000 nodes, and no simulated node
                    # goes Unknown (and gets the unreachable taint) because one status write came late.
                    "--node-lease-duration-seconds=40",
                    "--node-name=kwok-controller",
                    "--cidr=10.244.0.1/16",
                ],
            )
        if procnodes and process_runner:
            s.start(
                "procnode",
                [
                    sys.executable,
                    "-m",
                    "heterotrain_e2e.procnode",
                    f"--kubeconfig={kubeconfig}",
                    f"--state-dir={d / 'procnode'}",
                    f"--label-selector={profilemod.RUNNER_LABEL}=process",
                    f"--python={sys.executable}",
                    f"--pod-cidr={pod_cidr}",
                ],
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

        expect_ready = len(nodes) if process_runner else len(nodes) - len(procnodes)

        def ready_nodes() -> bool:
            """Ready, and schedulable: the node lifecycle controller has lifted the not-ready taint it puts
            on every new node (it lags the Ready condition by seconds at hundreds of nodes; a job applied
            before that would find only part of the capacity)."""
            out = _kubectl(
                tc,
                kubeconfig,
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}"
                " {.spec.taints[*].key}{'\\n'}{end}",
                check=False,
            ).stdout
            rows = [line.split() for line in out.splitlines() if line.strip()]
            return (
                sum(
                    1
                    for r in rows
                    if r[0] == "True" and not any(k.startswith("node.kubernetes.io/") for k in r[1:])
                )
                >= expect_ready
            )

        s.wait(
            "kwok" if "kwok" in s.procs else "kube-controller-manager",
            f"{expect_ready} nodes to be Ready",
            ready_nodes,
            timeout,
        )
        s.wait(
            "kube-controller-manager",
            "the default service account",
            lambda: _kubectl(tc, kubeconfig, "get", "serviceaccount", "default", check=False).returncode == 0,
            timeout,
        )
        for name in ("kube-scheduler", "procnode"):
            proc = s.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode}:\n{s.log_tail(name)}")
    except BaseException:
        down(d, quiet=True)
        raise
    t_ready = time.monotonic()
    state["secondsToReady"] = round(t_ready - t_built, 2)
    _write_state(d, state)
    return ClusterInfo(d, kubeconfig, server, False, t_ready - t0)


def shared_volumes(d: Path, count: int = 16) -> list[dict[str, Any]]:
    """PersistentVolumes (ReadWriteMany, no storage class) that PVCs of jobs bind to.

    The process runner maps a claim to a directory shared by all process nodes,
    whatever the volume says; these PVs only let the real PV controller bind claims,
    which the scheduler requires before it places a pod that uses one.
    """
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"shared-{i}", "labels": {"heterotrain.io/local-volume": "true"}},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(d / "pv" / str(i)), "type": "DirectoryOrCreate"},
            },
        }
        for i in range(count)
    ]


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _pod_pids(d: Path) -> list[int]:
    out = []
    for f in sorted((d / "procnode" / "pids").glob("*")):
        with contextlib.suppress(ValueError, OSError):
            out.append(int(f.read_text().split()[0]))
    return out


def down(d: Path, *, quiet: bool = False, grace: float = 10.0) -> list[str]:
    """Stop every process this cluster started; return the names of those that were running."""
    d = d.resolve()
    state = read_state(d)
    if not state:
        return []
    pids: dict[str, int] = {k: int(v) for k, v in state.get("pids", {}).items()}
    stopped = []
    # Stop in reverse order: runners first (they stop their pods), etcd last.
    for name in reversed(COMPONENTS):
        pid = pids.get(name)
        if pid and _pid_alive(pid):
            _kill_group(pid, signal.SIGTERM)
            stopped.append(name)
            deadline = time.monotonic() + grace
            while _pid_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
            if _pid_alive(pid):
                _kill_group(pid, signal.SIGKILL)
            _reap(pid)
    # Pod processes (and their cgroups) left behind by a process runner that was killed.
    from heterotrain_e2e.procnode.podcgroups import remove_recorded
    from heterotrain_e2e.procnode.process import kill_leftovers

    pod_pids = _pod_pids(d)
    kill_leftovers(d / "procnode")
    remove_recorded(d / "procnode")
    for pid in pod_pids:
        if _pid_alive(pid):
            _kill_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    left = [p for p in [*pids.values(), *pod_pids] if _pid_alive(p)]
    while left and time.monotonic() < deadline:
        for p in left:
            _reap(p)
        time.sleep(0.05)
        left = [p for p in left if _pid_alive(p)]
    if left:
        raise ClusterError(f"processes still running after cluster-down: {left}")
    net = state.get("podNetwork") or {}
    if net.get("interface"):
        podnet.delete(str(net["interface"]))
    with contextlib.suppress(FileNotFoundError):
        (d / STATE_FILE).unlink()
    if not quiet:
        _log(f"stopped {', '.join(stopped) if stopped else 'nothing (no process was running)'}")
    return stopped
