"""Job statuses through the kstatus library itself (sigs.k8s.io/cli-utils: Flux, helm --wait).

``kstatus-check`` is e2e/kstatus, built by the toolchain like the control plane.  The recorded
statuses of tests/testdata/job-status must read as expected.yaml says, and the chart's Argo CD health
check (Lua, run by lupa) must agree with kstatus on them and on every combination of the conditions
both read.  Live jobs on the real control plane are checked too.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from heterotrain_e2e.cluster import toolchain
from heterotrain_e2e.gitops import argocd_health
from heterotrain_e2e.testing import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

REPO = toolchain.REPO
TESTDATA = REPO / "tests" / "testdata" / "job-status"
CASES = yaml.safe_load((TESTDATA / "expected.yaml").read_text())["cases"]
ARGO_FOR_KSTATUS = {
    "InProgress": {"Progressing"},
    "Failed": {"Degraded"},
    "Current": {"Healthy", "Suspended"},
}


def kstatus(objs: list[dict[str, Any]]) -> list[dict[str, str]]:
    binary = toolchain.ensure().path("kstatus-check")
    proc = subprocess.run([binary], input=json.dumps(objs), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out: list[dict[str, str]] = json.loads(proc.stdout)
    return out


def argocd(objs: list[dict[str, Any]]) -> list[str]:
    return [argocd_health(o)["status"] for o in objs]


def test_recorded_statuses_read_as_expected():
    objs = [yaml.safe_load((TESTDATA / c["file"]).read_text()) for c in CASES]
    got = kstatus(objs)
    for case, obj, res in zip(CASES, objs, got, strict=True):
        assert obj["status"]["phase"] == case["phase"]
        assert res["status"] == case["kstatus"], (case["file"], res)
    assert argocd(objs) == [c["argocd"] for c in CASES]


def test_lua_and_kstatus_agree_on_every_combination():
    base = yaml.safe_load((TESTDATA / "running.yaml").read_text())
    types = ("Reconciling", "Stalled", "Ready", "Suspended", "Succeeded", "Failed")
    objs = []
    for values in itertools.product(("absent", "True", "False"), repeat=len(types)):
        for stale in (False, True):
            obj = json.loads(json.dumps(base))
            obj["metadata"]["generation"] = 2 if stale else 1
            conds = [
                {
                    "type": t,
                    "status": v,
                    "reason": "R",
                    "message": "m",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
                for t, v in zip(types, values, strict=True)
                if v != "absent"
            ]
            obj["status"]["conditions"] = conds
            objs.append(obj)
    for obj, res, health in zip(objs, kstatus(objs), argocd(objs), strict=True):
        assert health in ARGO_FOR_KSTATUS[res["status"]], (obj["status"]["conditions"], res, health)


def job_manifest(name: str, ns: str, accelerator: str) -> dict[str, Any]:
    return {
        "apiVersion": "heterotrain.io/v1alpha1",
        "kind": "HeteroTrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": "example.com/train:1",
            "command": ["python", "train.py"],
            "workers": {"min": 1, "max": 1},
            "accelerators": [{"type": accelerator}],
            "globalBatchSize": 8,
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"heterotrain.io/runner": "kwok"},
        },
    }


def live(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", "-n", ns, "htj", name, "-o", "json").stdout))


@pytest.fixture
def ns(cluster: Cluster) -> str:
    name = f"ks-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    return name


@pytest.mark.parametrize(
    "accelerator",
    [
        "nvidia-a10o",  # not a type the operator knows: the spec cannot be resolved
        "nvidia-l40s",  # a known type that no node of the cluster has
    ],
)
def test_live_job_stalled_on_a_missing_type_is_failed_not_in_progress(
    cluster: Cluster, operator: OperatorProcess, ns: str, accelerator: str
):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job_manifest("typo", ns, accelerator)))
    wait_for(
        "a status", lambda: (live(cluster, ns, "typo").get("status") or {}).get("conditions"), timeout=60
    )
    seen = operator.reconciles()
    wait_for("two more passes", lambda: operator.reconciles() >= seen + 2, timeout=60)
    (res,) = kstatus([live(cluster, ns, "typo")])
    assert res["status"] == "Failed", res  # Flux and helm --wait would otherwise wait for ever


def test_live_succeeded_job_stays_succeeded_for_kubectl_wait_and_kstatus(
    cluster: Cluster, operator: OperatorProcess, ns: str
):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job_manifest("done", ns, "nvidia-a100")))
    wait_for(
        "Running",
        lambda: (live(cluster, ns, "done").get("status") or {}).get("phase") == "Running",
        timeout=60,
    )
    # kwok runs nothing: the worker completes as a kubelet would report it.
    done = {"status": {"phase": "Succeeded"}}
    cluster.kubectl(
        "patch",
        "-n",
        ns,
        "pod",
        "done-worker-0",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(done),
    )
    wait_for("Succeeded", lambda: live(cluster, ns, "done")["status"]["phase"] == "Succeeded", timeout=60)
    seen = operator.reconciles()
    wait_for("three more passes", lambda: operator.reconciles() >= seen + 3, timeout=60)
    out = cluster.kubectl(
        "wait", "-n", ns, "--for=condition=Succeeded", "htj/done", "--timeout=10s", check=False
    )
    assert out.returncode == 0, out.stderr
    (res,) = kstatus([live(cluster, ns, "done")])
    assert res["status"] == "Current", res


def test_kstatus_check_is_built_not_committed():
    assert not any(p.is_file() and p.stat().st_mode & 0o111 for p in Path(REPO / "e2e" / "kstatus").iterdir())
