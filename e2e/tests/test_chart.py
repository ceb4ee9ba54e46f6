"""The Helm chart: lints, renders, and what it renders is accepted by the real API server."""

from __future__ import annotations

import subprocess

import pytest

from heterotrain_e2e.cluster import toolchain
from heterotrain_e2e.testing import Cluster

pytestmark = pytest.mark.e2e

CHART = toolchain.REPO / "charts" / "heterotrain"


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(cluster.bin / "helm"), *args], capture_output=True, text=True, timeout=120, env=cluster.env()
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_chart_lints_and_renders_objects_the_api_server_accepts(cluster: Cluster):
    helm(cluster, "lint", "--strict", str(CHART))
    rendered = helm(
        cluster,
        "template",
        "ht",
        str(CHART),
        "--namespace",
        "heterotrain-system",
        "--set",
        "watchNamespace=team-a",
    ).stdout
    assert "kind: Deployment" in rendered and "HETEROTRAIN_NAMESPACE_SCOPE" in rendered
    cluster.kubectl("create", "namespace", "heterotrain-system", check=False)
    out = cluster.kubectl(
        "apply", "--dry-run=server", "-n", "heterotrain-system", "-f", "-", input=rendered
    ).stdout
    for kind in (
        "serviceaccount",
        "clusterrole.rbac",
        "clusterrolebinding.rbac",
        "deployment.apps",
        "service",
    ):
        assert f"{kind}" in out, out
    assert out.count("(server dry run)") == 5
    # The chart ships the same CRD as crds/ (make verify keeps them identical).
    assert (CHART / "crds" / "heterotrain.io_heterotrainjobs.yaml").read_bytes() == (
        toolchain.REPO / "crds" / "heterotrain.io_heterotrainjobs.yaml"
    ).read_bytes()
