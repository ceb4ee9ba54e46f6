"""Helpers for the e2e suite: the test cluster handle, the operator process, polling with deadlines."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
