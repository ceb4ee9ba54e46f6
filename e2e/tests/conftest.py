"""Session fixtures for the e2e suite: one real local control plane per test session.

The cluster is started in a private directory on free ports (so it never
collides with a developer's ``make cluster-up``), with the default profile, and
the CRDs from ``crds/`` applied.  If the control plane cannot be built or
started, every e2e test FAILS with the reason: the suite is never skipped
silently.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from heterotrain_e2e.cluster import controlplane, toolchain

REPO = toolchain.REPO


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

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, text=True, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def api_client(self):  # type: ignore[no-untyped-def]
        from kubernetes import client, config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig),
                    PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")


_START_ERROR: list[str] = []


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if _START_ERROR:
        pytest.fail(_START_ERROR[0], pytrace=False)
    d = tmp_path_factory.mktemp("cluster")
    profile = Path(os.environ.get("HETEROTRAIN_E2E_PROFILE", REPO / "e2e" / "profiles" / "default.yaml"))
    try:
        info = controlplane.up(d, profile)
    except (controlplane.ClusterError, toolchain.ToolchainError) as e:
        _START_ERROR.append(f"the e2e control plane could not be started: {e}")
        pytest.fail(_START_ERROR[0], pytrace=False)
    c = Cluster(dir=info.dir, kubeconfig=info.kubeconfig, server=info.server)
    try:
        crds = sorted((REPO / "crds").glob("*.yaml"))
        if crds:
            for f in crds:
                c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
            c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        yield c
    finally:
        controlplane.down(d, quiet=True)
