"""The Helm chart on the local cluster, for the e2e tests and ``make demo``: helm with the cluster's
kubeconfig, adopting a CRD applied before the release, and the chart's operator pods.

helm is the toolchain's (``<cluster dir>/bin/helm``); the operator pods run on process nodes, where the
process runner runs ``python -m heterotrain_operator run`` (the image is never pulled).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from heterotrain_e2e.cluster import toolchain
from heterotrain_e2e.testing import Cluster, wait_for

CHART = toolchain.REPO / "charts" / "heterotrain"
CRD = "heterotrainjobs.heterotrain.io"


class HelmError(AssertionError):
    """helm exited non-zero (an AssertionError: a test that hits it fails with helm's output)."""


def helm(
    cluster: Cluster, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(cluster.bin / "helm"), *args], capture_output=True, text=True, timeout=timeout, env=cluster.env()
    )
    if check and proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def adopt_crd(cluster: Cluster, release: str, namespace: str) -> bool:
    """Mark a CRD applied before (with kubectl) as the release's, Helm's documented adoption.

    Returns whether there was one to adopt."""
    if cluster.kubectl("get", "crd", CRD, check=False).returncode != 0:
        return False
    cluster.kubectl("label", "crd", CRD, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl(
        "annotate",
        "crd",
        CRD,
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
        "--overwrite",
    )
    return True


def get(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def operator_pods(cluster: Cluster, release: str, namespace: str) -> list[dict[str, Any]]:
    sel = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    pods = get(cluster, "-n", namespace, "pods", "-l", sel)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def running_operators(cluster: Cluster, release: str, namespace: str, n: int = 2) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        pods = [
            p
            for p in operator_pods(cluster, release, namespace)
            if p["status"].get("phase") == "Running" and p["status"].get("podIP")
        ]
        return pods if len(pods) == n else None

    return wait_for(f"{n} operator pods Running", ready, timeout=120)
