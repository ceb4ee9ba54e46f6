"""Helpers for the e2e suite: the test cluster handle, the operator process, polling with deadlines."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from heterotrain_operator.observe import pod_node

T = TypeVar("T")


@dataclass
class Cluster:
    dir: Path
    kubeconfig: Path
    server: str

    @property
    def state_dir(self) -> Path:
        return self.dir

    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def api_client(self):  # type: ignore[no-untyped-def]
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        )


class OperatorProcess:
    """The operator, run as `python -m heterotrain_operator run` against the test cluster."""

    def __init__(self, cluster: Cluster, log: Path) -> None:
        import socket

        self.cluster = cluster
        self.log = log
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import sys

        env = self.cluster.env()
        env.update(
            HETEROTRAIN_METRICS_PORT=str(self.metrics_port),
            HETEROTRAIN_RESYNC_SECONDS="3",
            PYTHONUNBUFFERED="1",
        )
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "heterotrain_operator", "run"],
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        import signal

        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        import signal

        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def reconciles(self) -> float:
        """heterotrain_reconciles_total, from the operator's metrics endpoint."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("heterotrain_reconciles_total{")
        )

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def pod_pgid(cluster: Cluster, ns: str, pod: str, container: str) -> int:
    """The process group the process runner started for a pod's container (from its pid files)."""
    for f in (cluster.state_dir / "procnode" / "pids").glob("*"):
        fields = f.read_text().split()
        if len(fields) >= 4 and fields[2] == f"{ns}/{pod}" and fields[3] == container:
            return int(f.name)
    raise AssertionError(f"no running {container} process for {ns}/{pod}")


def wait_for(what: str, fn: Callable[[], T], timeout: float = 60.0, interval: float = 0.25) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def busy_workers(cluster: Cluster, namespaces: set[str] | None = None) -> list[str]:
    """Worker pods (of any job, or of the jobs in ``namespaces``) that are not finished and sit on (or
    are pinned to, waiting for the scheduler) a process node: they hold its accelerators and its CPU."""
    pods = json.loads(
        cluster.kubectl("get", "pods", "-A", "-l", "heterotrain.io/role=worker", "-o", "json").stdout
    )["items"]
    return [
        f"{p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in pods
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        and str(pod_node(p) or "").startswith("proc-")
        and (namespaces is None or p["metadata"]["namespace"] in namespaces)
    ]


def namespace_names(cluster: Cluster) -> set[str]:
    return set(cluster.kubectl("get", "namespaces", "-o", "name").stdout.split())


def clear_jobs(cluster: Cluster, ns_names: set[str], timeout: float = 120.0) -> list[str]:
    """Delete every HeteroTrainJob in ``ns_names`` (``namespace/x`` or bare names) and wait until their
    workers have stopped, so that a failed test's job does not train on under the tests after it. The
    operator removes the finalizers; if it cannot (a test stopped it), they are removed here. Workers
    still running at the deadline are deleted at once. Returns what it had to force, for the report."""
    names = {n.split("/", 1)[-1] for n in ns_names}
    forced: list[str] = []
    for n in names:
        cluster.kubectl("delete", "-n", n, "htj", "--all", "--wait=false", check=False)
    deadline = time.monotonic() + timeout / 2
    while time.monotonic() < deadline and _jobs(cluster, names):
        time.sleep(1.0)
    for n, job in _jobs(cluster, names):
        forced.append(f"finalizers of {n}/{job}")
        cluster.kubectl(
            "patch",
            "-n",
            n,
            "htj",
            job,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
    deadline = time.monotonic() + timeout / 2
    while time.monotonic() < deadline and busy_workers(cluster, names):
        time.sleep(1.0)
    for pod in busy_workers(cluster, names):
        forced.append(f"pod {pod}")
        n, name = pod.split("/", 1)
        cluster.kubectl(
            "delete", "-n", n, "pod", name, "--grace-period=0", "--force", "--wait=false", check=False
        )
    return forced


def _jobs(cluster: Cluster, names: set[str]) -> list[tuple[str, str]]:
    items = json.loads(
        cluster.kubectl("get", "htj", "-A", "-o", "json", check=False).stdout or '{"items": []}'
    )
    return [
        (j["metadata"]["namespace"], j["metadata"]["name"])
        for j in items.get("items", [])
        if j["metadata"]["namespace"] in names
    ]
