"""The HeteroTrainJob CRD against the real API server.

* every manifest of the invalid corpus (tests/api/invalid/*.yaml) is refused by
  ``kubectl apply --dry-run=server`` with an error containing each of its
  ``# expect:`` lines (which name the offending field);
* every example (examples/*.yaml) is accepted, and the API server fills in
  the schema defaults;
* ``kubectl explain`` shows the field descriptions.

The ``cluster`` fixture (e2e/tests/conftest.py) has applied the CRDs from crds/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((REPO / "tests" / "api" / "invalid").glob("*.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
NAMESPACE = "default"


def expectations(path: Path) -> list[str]:
    """The ``# expect:`` lines of a corpus file's leading comment block."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line.lstrip("#").strip().partition(":")
        if key == "expect":
            out.append(value.strip())
    return out


def test_corpus_is_there() -> None:
    assert len(INVALID) >= 30
    assert all(expectations(p) for p in INVALID)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_refused(cluster: Any, path: Path) -> None:
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", NAMESPACE, "-f", str(path), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{path.name} was accepted:\n{output}"
    missing = [e for e in expectations(path) if e not in output]
    assert not missing, f"{path.name}: {missing} not in the API server's answer:\n{output}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_and_defaulted(cluster: Any, path: Path) -> None:
    proc = cluster.kubectl(
        "apply", "--dry-run=server", "-n", NAMESPACE, "-o", "json", "-f", str(path), check=False
    )
    assert proc.returncode == 0, f"{path.name} was refused:\n{proc.stderr}"
    obj = json.loads(proc.stdout)
    items = obj["items"] if obj.get("kind") == "List" else [obj]
    jobs = [item for item in items if item["kind"] == "HeteroTrainJob"]
    assert jobs
    for item in jobs:
        spec = item["spec"]
        # the API server applied the schema defaults, nested ones included
        assert spec["checkpoint"]["path"].startswith("/")
        assert 1 <= spec["checkpoint"]["keep"] <= 100
        assert "async" in spec["checkpoint"]
        assert {"maxRestarts", "heartbeatTimeoutSeconds", "onWorkerFailure"} <= set(spec["faultTolerance"])
        assert {"policy", "minIntervalSeconds"} <= set(spec["rebalance"])
        assert spec["placement"] in ("Pack", "Spread")
        assert "priority" in spec and "suspend" in spec
        assert all("perWorker" in a for a in spec["accelerators"])


def test_minimal_job_gets_every_default(cluster: Any) -> None:
    manifest = {
        "apiVersion": "heterotrain.io/v1alpha1",
        "kind": "HeteroTrainJob",
        "metadata": {"name": "defaults-probe", "namespace": NAMESPACE},
        "spec": {
            "image": "img:1",
            "command": ["python", "train.py"],
            "workers": {"min": 1, "max": 2},
            "accelerators": [{"type": "nvidia-a100"}],
            "globalBatchSize": 8,
        },
    }
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(manifest)
    )
    spec = json.loads(proc.stdout)["spec"]
    assert spec["checkpoint"] == {"path": "/checkpoints", "keep": 3, "async": True}
    assert spec["faultTolerance"] == {
        "maxRestarts": 10,
        "heartbeatTimeoutSeconds": 15,
        "startupTimeoutSeconds": 900,
        "onWorkerFailure": "Replace",
        "restartBackoffSeconds": 1,
        "restartBackoffLimitSeconds": 60,
        "failureWindowSeconds": 600,
        "badNodeFailures": 3,
    }
    assert spec["rebalance"] == {"policy": "Throughput", "minIntervalSeconds": 30}
    assert spec["accelerators"] == [{"type": "nvidia-a100", "perWorker": 1}]
    assert (spec["placement"], spec["priority"], spec["suspend"]) == ("Pack", 0, False)


def test_name_of_50_characters_is_accepted(cluster: Any) -> None:
    docs = yaml.safe_load_all((REPO / "examples" / "quickstart.yaml").read_text(encoding="utf-8"))
    manifest = next(d for d in docs if d and d["kind"] == "HeteroTrainJob")
    manifest["metadata"]["name"] = "n" * 50
    cluster.kubectl("create", "--dry-run=server", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(manifest))


def explain(cluster: Any, resource: str) -> str:
    """``kubectl explain`` (whitespace collapsed), retried while the CRD's OpenAPI is being published."""
    deadline = time.monotonic() + 60
    while True:
        proc = cluster.kubectl("explain", resource, check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            assert proc.returncode == 0, proc.stderr
            return " ".join(str(proc.stdout).split())  # kubectl wraps long descriptions
        time.sleep(2)


def test_kubectl_explain_shows_descriptions(cluster: Any) -> None:
    out = explain(cluster, "htj.spec.workers")
    assert "The elastic range of the world size" in out
    assert "min" in out and "Fewest workers the job trains with" in out
    assert "max" in out and "Most workers the job scales up to" in out
    out = explain(cluster, "htj.spec.accelerators.relativeThroughput")
    assert "relative to one NVIDIA A100" in out


def test_status_subresource_and_printer_columns(cluster: Any) -> None:
    crd = json.loads(cluster.kubectl("get", "crd", "heterotrainjobs.heterotrain.io", "-o", "json").stdout)
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Phase", "Ready", "Desired", "Mix", "Restarts", "Checkpoint", "Step", "Samples/s", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["htj"]


def test_operator_dev_installs_the_crd_generated_in_process(cluster: Any) -> None:
    """``heterotrain-operator dev`` applies the CRD built from the API types, not a file; the API server
    takes it as it takes crds/ (the same object), and serves it."""
    from heterotrain_api import crdgen

    code = "from heterotrain_operator.main import install_crd; install_crd(timeout=60)"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=cluster.env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    got = cluster.kubectl(
        "get", "crd", "heterotrainjobs.heterotrain.io", "-o", "json", "--show-managed-fields"
    )
    crd = json.loads(got.stdout)
    managers = {m["manager"] for m in crd["metadata"]["managedFields"]}
    assert "heterotrain-operator" in managers, managers
    assert crd["spec"]["versions"][0]["schema"] == crdgen.crd()["spec"]["versions"][0]["schema"]
    assert yaml.safe_load((REPO / "crds" / crdgen.CRD_FILENAME).read_text()) == crdgen.crd()
