"""The Helm chart: lints, renders, what it renders is accepted by the real API server, no wildcards.

Installing it for real (the operator as the chart's Deployment) is e2e/tests/test_helm.py.
"""

from __future__ import annotations

import json

import pytest
import yaml

from heterotrain_e2e.chart import CHART, helm
from heterotrain_e2e.cluster import toolchain
from heterotrain_e2e.testing import Cluster

pytestmark = pytest.mark.e2e


def render(cluster: Cluster, *sets: str) -> list[dict]:
    args = [a for s in sets for a in ("--set", s)]
    out = helm(cluster, "template", "ht", str(CHART), "--namespace", "heterotrain-system", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_chart_lints_and_renders_objects_the_api_server_accepts(cluster: Cluster):
    helm(cluster, "lint", "--strict", str(CHART))
    docs = render(cluster, "watchNamespace=team-a")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Lease",
            "PodDisruptionBudget",
            "Role",
            "Role",
            "Role",  # reading the nodes' Leases in kube-node-lease (a silent worker on a dead node: NodeLost)
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    )
    cluster.kubectl("create", "namespace", "heterotrain-system", check=False)
    cluster.kubectl("create", "namespace", "team-a", check=False)
    out = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
    ).stdout
    assert out.count("(server dry run)") == len(docs), out


def test_no_wildcards_and_optional_monitoring_objects(cluster: Cluster):
    for sets in ((), ("watchNamespace=team-a",)):
        rules = [r for d in render(cluster, *sets) for r in d.get("rules") or []]
        assert rules and all("*" not in v for r in rules for v in r.values()), rules
    docs = render(
        cluster,
        "metrics.serviceMonitor.enabled=true",
        "workers.podMonitor.enabled=true",
        "dashboards.enabled=true",
    )
    by_kind = {d["kind"]: d for d in docs}
    sm, pm = by_kind["ServiceMonitor"], by_kind["PodMonitor"]
    assert (
        sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["honorLabels"] is True
    )
    assert pm["spec"]["selector"]["matchLabels"]["heterotrain.io/role"] == "worker"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    dash = json.loads(by_kind["ConfigMap"]["data"]["heterotrain.json"])
    assert dash["uid"] == "heterotrain" and dash["panels"]
    assert "PodMonitor" not in {d["kind"] for d in render(cluster)}  # optional: off by default


def test_restricted_security_of_the_operator_pod(cluster: Cluster):
    dep = next(d for d in render(cluster) if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctr = pod["containers"][0]
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ctr["command"][:4] == ["python", "-m", "heterotrain_operator", "run"]


def test_the_chart_renders_the_same_crd_as_crds(cluster: Cluster):
    (crd,) = [d for d in render(cluster) if d["kind"] == "CustomResourceDefinition"]
    repo = yaml.safe_load((toolchain.REPO / "crds" / "heterotrain.io_heterotrainjobs.yaml").read_text())
    assert crd["spec"] == repo["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not any(d["kind"] == "CustomResourceDefinition" for d in render(cluster, "crds.install=false"))
