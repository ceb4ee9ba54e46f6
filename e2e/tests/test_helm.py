"""The chart installed for real: the operator runs as the chart's Deployment, on process nodes.

kube-scheduler places the Deployment's two replicas on process nodes; the process runner runs
``python -m heterotrain_operator run`` with the pod's service-account token (the image is never
pulled: this machine has no container engine).  The release namespace and the jobs' namespace
enforce Pod Security "restricted".  In order: install with default values; a quickstart-like job
reaches Succeeded under the chart's operator, its metrics cover the dashboard; the leader is killed
while it creates a large job and the standby takes over; RBAC is checked with ``kubectl auth can-i``;
a wrong-typed value is refused; an upgrade that changes the CRD's schema takes effect; uninstall
leaves nothing of the release (the CRD stays, as documented).

The session's operator process is stopped for this module: only the chart's operator reconciles.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from heterotrain_e2e import chart as chartlib
from heterotrain_e2e.chart import CHART, CRD, get, helm
from heterotrain_e2e.cluster import toolchain
from heterotrain_e2e.testing import Cluster, OperatorProcess, pod_pgid, wait_for

pytestmark = pytest.mark.e2e

RELEASE, RELEASE_NS = "ht", "heterotrain-system"
FULLNAME = f"{RELEASE}-operator"
SA = f"system:serviceaccount:{RELEASE_NS}:{FULLNAME}"
CRD_FILE = toolchain.REPO / "crds" / "heterotrain.io_heterotrainjobs.yaml"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def apply(cluster: Cluster, *objs: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
    )


def namespace(cluster: Cluster, name: str, restricted: bool = True) -> str:
    labels = RESTRICTED if restricted else {}
    apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    return name


def operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return chartlib.operator_pods(cluster, RELEASE, RELEASE_NS)


def running_operators(cluster: Cluster, n: int = 2) -> list[dict[str, Any]]:
    return chartlib.running_operators(cluster, RELEASE, RELEASE_NS, n)


def lease_holder(cluster: Cluster) -> str:
    lease = get(cluster, "-n", RELEASE_NS, "lease", FULLNAME)
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def leader_pod(cluster: Cluster) -> str:
    return wait_for("a leader", lambda: lease_holder(cluster).rsplit("_", 1)[0], timeout=60)


def scrape(ip: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def job_pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return get(cluster, "-n", ns, "pods", "-l", f"heterotrain.io/job-name={name}")["items"]


def job_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return get(cluster, "-n", ns, "htj", name).get("status") or {}


def restore_crd(cluster: Cluster) -> None:
    """The repository's CRD, as the session started with it (later tests need it whatever happened here)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))


@pytest.fixture(scope="module")
def release(
    cluster: Cluster, _operator_process: OperatorProcess
) -> Iterator[subprocess.CompletedProcess[str]]:
    _operator_process.stop()  # the chart's operator alone reconciles in this module
    namespace(cluster, RELEASE_NS)
    # The session applied crds/ with kubectl before: the documented adoption of an existing CRD by a release.
    assert chartlib.adopt_crd(cluster, RELEASE, RELEASE_NS)
    try:
        out = helm(cluster, "install", RELEASE, str(CHART), "-n", RELEASE_NS, "--wait", "--timeout", "4m")
        yield out
    finally:
        if RELEASE in helm(cluster, "list", "-n", RELEASE_NS, "-q", check=False).stdout.split():
            helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=False)
        restore_crd(cluster)


def test_install_runs_two_replicas_on_process_nodes_with_one_leader(cluster: Cluster, release: Any):
    assert f"lease/{FULLNAME}" in release.stdout, release.stdout  # NOTES.txt says how to find the leader
    pods = running_operators(cluster)
    state = json.loads((cluster.state_dir / "state.json").read_text())
    net = ipaddress.ip_network(state["podNetwork"]["cidr"])
    for p in pods:
        node = get(cluster, "node", p["spec"]["nodeName"])
        assert node["metadata"]["labels"]["heterotrain.io/runner"] == "process"  # scheduled by kube-scheduler
        ctr = p["spec"]["containers"][0]
        assert ctr["command"][:4] == ["python", "-m", "heterotrain_operator", "run"]
        assert ipaddress.ip_address(p["status"]["podIP"]) in net  # an address Endpoints accept
    assert leader_pod(cluster) in {p["metadata"]["name"] for p in pods}
    # The metrics Service holds both replicas as endpoints; exactly one says it leads.
    sel = f"kubernetes.io/service-name={FULLNAME}-metrics"
    addrs = wait_for(
        "two endpoints",
        lambda: (
            (
                a := {
                    x
                    for s in get(cluster, "-n", RELEASE_NS, "endpointslices", "-l", sel)["items"]
                    for ep in s.get("endpoints") or []
                    for x in ep["addresses"]
                }
            )
            and len(a) == 2
            and a
        ),
        timeout=60,
    )
    assert addrs == {p["status"]["podIP"] for p in pods}
    leaders = wait_for(
        "metrics of both replicas",
        lambda: [
            float(re.search(r"^heterotrain_leader (\S+)$", scrape(ip, 9090), re.M).group(1)) for ip in addrs
        ],  # type: ignore[union-attr]
        timeout=60,
    )
    assert sorted(leaders) == [0.0, 1.0]


#: The quickstart's GPT at test size (the job, not the model, is under test here).
TINY_GPT = ["--n-embd", "32", "--n-layer", "2", "--n-head", "2", "--block", "32", "--corpus-bytes", "400000"]


def quickstart_like(ns: str, steps: int) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((toolchain.REPO / "examples" / "quickstart.yaml").read_text()) if d]
    for d in docs:
        d["metadata"]["namespace"] = ns
        if d["kind"] == "HeteroTrainJob":
            d["spec"]["args"] = ["--steps", str(steps), "--log-every", "20", *TINY_GPT]
            d["spec"]["checkpoint"]["intervalSteps"] = 20
    return docs


def dashboard_metrics() -> set[str]:
    text = json.dumps(json.loads((CHART / "dashboards" / "heterotrain.json").read_text()))
    return set(re.findall(r"\bheterotrain_[a-z0-9_]+", text))


def exposed(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^(heterotrain_[a-z0-9_]+)[{ ]", text, re.M)}


def test_quickstart_job_succeeds_and_its_metrics_cover_the_dashboard(cluster: Cluster, release: Any):
    ns = namespace(cluster, f"qs-{uuid.uuid4().hex[:6]}")  # restricted: the workers must be admitted
    apply(cluster, *quickstart_like(ns, steps=200))
    want = dashboard_metrics()
    assert len(want) >= 12
    seen: set[str] = set()

    def scrape_all() -> bool:
        st = job_status(cluster, ns, "quickstart")
        assert st.get("phase") != "Succeeded" or want <= seen, f"finished before {want - seen} were seen"
        if st.get("phase") != "Running":
            return False
        for p in job_pods(cluster, ns, "quickstart"):
            if p["status"].get("podIP"):
                ports = {x["name"]: x["containerPort"] for x in p["spec"]["containers"][0].get("ports") or []}
                with contextlib.suppress(OSError):  # not serving yet
                    seen.update(exposed(scrape(p["status"]["podIP"], ports["metrics"])))
        leader = next(p for p in operator_pods(cluster) if p["metadata"]["name"] == leader_pod(cluster))
        text = scrape(leader["status"]["podIP"], 9090)
        if f'heterotrainjob="quickstart",namespace="{ns}"' in text:
            seen.update(exposed(text))
        return want <= seen

    wait_for(
        f"every dashboard metric scraped from the running job: {sorted(want)}",
        scrape_all,
        timeout=240,
        interval=1,
    )
    final = wait_for(
        "Succeeded",
        lambda: (s := job_status(cluster, ns, "quickstart")).get("phase") == "Succeeded" and s,
        timeout=300,
        interval=1,
    )
    assert final["lastCheckpoint"]["step"] == 200
    for p in job_pods(cluster, ns, "quickstart"):
        assert p["spec"]["securityContext"]["runAsNonRoot"] is True
    # The namespace really enforces "restricted": a pod without the securityContext is refused.
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "x", "command": ["true"]}]},
    }
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(bare), check=False)
    assert refused.returncode != 0 and "restricted" in refused.stderr, refused.stderr
    cluster.kubectl("delete", "-n", ns, "htj", "quickstart", "--wait=true", "--timeout=60s")


def test_leader_killed_mid_creation_standby_takes_over_without_duplicates(cluster: Cluster, release: Any):
    ns = namespace(cluster, f"lk-{uuid.uuid4().hex[:6]}", restricted=False)
    n = 60
    job = {
        "apiVersion": "heterotrain.io/v1alpha1",
        "kind": "HeteroTrainJob",
        "metadata": {"name": "big", "namespace": ns},
        "spec": {
            "image": "example.com/train:1",
            "command": ["python", "train.py"],
            "workers": {"min": n, "max": n},
            "accelerators": [{"type": "nvidia-a100"}],
            "globalBatchSize": 4 * n,
            "tolerations": [KWOK_TOLERATION],
            "nodeSelector": {"heterotrain.io/runner": "kwok"},
        },
    }
    running_operators(cluster)
    old_holder = lease_holder(cluster)
    leader = old_holder.rsplit("_", 1)[0]
    standby = next(p["metadata"]["name"] for p in operator_pods(cluster) if p["metadata"]["name"] != leader)
    pgid = pod_pgid(cluster, RELEASE_NS, leader, "operator")
    apply(cluster, job)
    wait_for(
        "the leader creating pods", lambda: len(job_pods(cluster, ns, "big")) >= 3, timeout=60, interval=0.05
    )
    os.killpg(pgid, signal.SIGKILL)
    killed_at = time.monotonic()
    created = len(job_pods(cluster, ns, "big"))
    assert created < n, "the leader had created every pod before the kill: not mid-creation"
    wait_for(
        "the standby to take the Lease",
        lambda: lease_holder(cluster).startswith(standby + "_"),
        timeout=30,
        interval=0.2,
    )
    took = time.monotonic() - killed_at
    print(f"\nleader killed with {created} of {n} pods created; the standby took the Lease {took:.1f}s later")
    assert took <= 15, f"takeover after {took:.1f}s"
    final = wait_for(
        "Running with every worker",
        lambda: (s := job_status(cluster, ns, "big")).get("phase") == "Running" and s,
        timeout=180,
        interval=0.5,
    )
    pods = job_pods(cluster, ns, "big")
    names = sorted(p["metadata"]["name"] for p in pods)
    assert names == sorted(f"big-worker-{i}" for i in range(n)), f"had {created} pods at the kill"
    uid = get(cluster, "-n", ns, "htj", "big")["metadata"]["uid"]
    assert all(any(r["uid"] == uid for r in p["metadata"]["ownerReferences"]) for p in pods)  # no orphans
    assert final["workers"] == {
        "desired": n,
        "ready": n,
        "byType": {"nvidia-a100": {"desired": n, "ready": n}},
    }
    assert {x["pod"]: x["node"] for x in final["placement"]} == {
        p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods
    }
    # The killed replica is restarted as a standby: still one leader.
    pods_ = running_operators(cluster)
    wait_for(
        "one leader among two live replicas",
        lambda: (
            sorted(
                float(
                    re.search(r"^heterotrain_leader (\S+)$", scrape(p["status"]["podIP"], 9090), re.M).group(
                        1
                    )
                )
                for p in pods_
            )
            == [0.0, 1.0]
        ),  # type: ignore[union-attr]
        timeout=90,
        interval=1,
    )
    cluster.kubectl("delete", "-n", ns, "htj", "big", "--wait=true", "--timeout=120s")
    assert not job_pods(cluster, ns, "big")


def can_i(cluster: Cluster, who: str, verb: str, resource: str, ns: str | None) -> bool:
    where = (
        ["-n", ns]
        if ns
        else (
            ["--all-namespaces"]
            if resource not in ("nodes", "clusterroles", "customresourcedefinitions", "namespaces")
            else []
        )
    )
    out = cluster.kubectl("auth", "can-i", verb, resource, f"--as={who}", *where, check=False)
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def test_rbac_table_cluster_wide_and_namespace_scoped(cluster: Cluster, release: Any):
    lease = f"leases.coordination.k8s.io/{FULLNAME}"
    cluster_wide = [
        ("list", "nodes", None, True),
        ("create", "nodes", None, False),
        ("create", "pods", "any-team", True),
        ("delete", "pods", "any-team", True),
        ("patch", "heterotrainjobs.heterotrain.io/status", "any-team", True),
        ("create", "roles.rbac.authorization.k8s.io", "any-team", True),
        ("get", "secrets", "any-team", False),
        ("create", "deployments.apps", "any-team", False),
        ("create", "clusterroles.rbac.authorization.k8s.io", None, False),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, False),
        ("update", lease, RELEASE_NS, True),
        ("update", "leases.coordination.k8s.io/someone-elses", RELEASE_NS, False),
        ("update", lease, "any-team", False),
        ("get", "leases.coordination.k8s.io/proc-a100-0", "kube-node-lease", True),
        ("update", "leases.coordination.k8s.io/proc-a100-0", "kube-node-lease", False),
        ("*", "*", "any-team", False),
    ]
    got = [(v, r, n, can_i(cluster, SA, v, r, n)) for v, r, n, _ in cluster_wide]
    assert got == cluster_wide

    # Namespace-scoped: Roles in the watched namespace; only reading Nodes is cluster-wide.
    scoped_ns, team = namespace(cluster, "ht-scoped"), namespace(cluster, "team-x")
    rbac = helm(
        cluster,
        "template",
        "scoped",
        str(CHART),
        "-n",
        scoped_ns,
        "--set",
        f"watchNamespace={team}",
        "--show-only",
        "templates/rbac.yaml",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rbac) if d]
    assert "*" not in json.dumps([d.get("rules") for d in docs])  # no wildcards anywhere
    (cr,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert cr["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    cluster.kubectl("apply", "-f", "-", input=rbac)
    who = f"system:serviceaccount:{scoped_ns}:scoped-operator"
    scoped = [
        ("list", "nodes", None, True),
        ("create", "pods", team, True),
        ("list", "heterotrainjobs.heterotrain.io", team, True),
        ("create", "roles.rbac.authorization.k8s.io", team, True),
        ("create", "pods", "default", False),
        ("list", "heterotrainjobs.heterotrain.io", "default", False),
        ("list", "pods", None, False),  # --all-namespaces
        ("create", "clusterroles.rbac.authorization.k8s.io", None, False),
        ("update", "leases.coordination.k8s.io/scoped-operator", scoped_ns, True),
    ]
    try:
        assert [(v, r, n, can_i(cluster, who, v, r, n)) for v, r, n, _ in scoped] == scoped
    finally:
        cluster.kubectl("delete", "-f", "-", input=rbac, check=False)


def test_wrong_typed_value_is_refused_naming_it(cluster: Cluster, release: Any):
    for flag, name in (
        ("replicaCount=two", "replicaCount"),
        ("workers.runAsUser=root", "runAsUser"),
        ("metrics.port=99999", "port"),
    ):
        out = helm(cluster, "install", "bad", str(CHART), "-n", RELEASE_NS, "--set", flag, check=False)
        assert out.returncode != 0
        assert name in out.stderr and "schema" in out.stderr, out.stderr
    assert "bad" not in helm(cluster, "list", "-n", RELEASE_NS, "-q").stdout.split()


def test_upgrade_applies_a_changed_crd_schema_and_new_values(cluster: Cluster, release: Any, tmp_path: Path):
    chart = tmp_path / "heterotrain"
    shutil.copytree(CHART, chart)
    crd_file = next((chart / "files" / "crds").glob("*.yaml"))
    crd = yaml.safe_load(crd_file.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["upgradeProbe"] = {"type": "string", "description": "added by an upgrade"}
    crd_file.write_text(yaml.safe_dump(crd))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1-upgrade"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))

    helm(
        cluster,
        "upgrade",
        RELEASE,
        str(chart),
        "-n",
        RELEASE_NS,
        "--set",
        "resyncSeconds=5",
        "--wait",
        "--timeout",
        "4m",
    )
    live = get(cluster, "crd", CRD)
    props = live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert "upgradeProbe" in props
    # The new field is kept (not pruned): the schema took effect.
    ns = namespace(cluster, f"up-{uuid.uuid4().hex[:6]}", restricted=False)
    job = {
        "apiVersion": "heterotrain.io/v1alpha1",
        "kind": "HeteroTrainJob",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {
            "image": "x",
            "command": ["python"],
            "workers": {"min": 1, "max": 1},
            "accelerators": [{"type": "nvidia-a100"}],
            "globalBatchSize": 8,
            "suspend": True,
            "upgradeProbe": "kept",
        },
    }
    apply(cluster, job)
    assert get(cluster, "-n", ns, "htj", "probe")["spec"]["upgradeProbe"] == "kept"
    dep = get(cluster, "-n", RELEASE_NS, "deployment", FULLNAME)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HETEROTRAIN_RESYNC_SECONDS"] == "5"
    running_operators(cluster)
    leader_pod(cluster)
    cluster.kubectl("delete", "-n", ns, "htj", "probe", "--wait=true", "--timeout=60s")

    helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--wait", "--timeout", "4m")  # and back
    live = get(cluster, "crd", CRD)
    assert (
        "upgradeProbe"
        not in live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    )


def test_uninstall_leaves_nothing_of_the_release_and_keeps_the_crd(cluster: Cluster, release: Any):
    assert not get(cluster, "htj", "--all-namespaces")["items"], "the tests above delete their jobs"
    helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "3m")
    sel = f"app.kubernetes.io/instance={RELEASE}"
    kinds = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,leases,configmaps"
    wait_for(
        "no object of the release",
        lambda: not get(cluster, "-n", RELEASE_NS, kinds, "-l", sel)["items"],
        timeout=120,
    )
    assert not get(cluster, "clusterroles,clusterrolebindings", "-l", sel)["items"]
    assert cluster.kubectl("get", "-n", RELEASE_NS, "lease", FULLNAME, check=False).returncode != 0
    # Documented: the CRD stays (helm.sh/resource-policy: keep), so no HeteroTrainJob is lost by uninstalling.
    crd = get(cluster, "crd", CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not get(cluster, "htj", "--all-namespaces")["items"]
