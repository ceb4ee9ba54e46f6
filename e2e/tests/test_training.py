"""Real training through the operator: workers run as processes on process-runner nodes.

The operator places the workers, the runtime it injects forms the world from the job's
status, trains with the batch split by the pools' (emulated) speeds, checkpoints onto a
shared volume and reports each checkpoint into the job's status.  A worker is killed
mid-run (SIGKILL, as an OOM kill would): the operator records the failure, replaces the
worker, the world re-forms, training resumes from where it was, and every sample of each
data-epoch is consumed exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from heterotrain_e2e.testing import Cluster, OperatorProcess, wait_for
from heterotrain_runtime.samplelog import check_exactly_once, read_records

pytestmark = pytest.mark.e2e

STEPS = 240
DATASET = 7680  # 80 global batches of 96: three data-epochs in 240 steps


def job_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "-n", ns, "htj", name, "-o", "json").stdout
    return json.loads(out).get("status") or {}


def kill_worker_process(cluster: Cluster, ns: str, pod: str) -> int:
    """SIGKILL the worker container's process group, found in the process runner's pid files."""
    for f in (cluster.state_dir / "procnode" / "pids").glob("*"):
        fields = f.read_text().split()
        if len(fields) >= 4 and fields[2] == f"{ns}/{pod}" and fields[3] == "worker":
            os.killpg(int(f.name), signal.SIGKILL)
            return int(f.name)
    raise AssertionError(f"no running worker process for {ns}/{pod}")


def test_training_survives_a_killed_worker_exactly_once(cluster: Cluster, operator: OperatorProcess):
    ns = f"train-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    manifest = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "ckpt", "namespace": ns},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
        {
            "apiVersion": "heterotrain.io/v1alpha1",
            "kind": "HeteroTrainJob",
            "metadata": {"name": "mlp", "namespace": ns},
            "spec": {
                "image": "python:3.11",
                "command": ["python", "-m", "heterotrain_runtime.examples.train"],
                "args": ["--steps", str(STEPS), "--dataset-size", str(DATASET), "--log-every", "20"],
                "env": [{"name": "HETEROTRAIN_SAMPLE_LOG_DIR", "value": "/checkpoints/samples"}],
                "workers": {"min": 2, "max": 3},
                "accelerators": [{"type": "nvidia-h100"}, {"type": "nvidia-a100"}],
                "globalBatchSize": 96,
                "checkpoint": {
                    "volume": {"persistentVolumeClaim": {"claimName": "ckpt"}},
                    "intervalSteps": 20,
                },
                "faultTolerance": {"onWorkerFailure": "Replace", "maxRestarts": 3},
            },
        },
    ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifest})
    )
    st = wait_for(
        "Running with a checkpoint",
        lambda: (
            (s := job_status(cluster, ns, "mlp")).get("phase") == "Running"
            and (s.get("lastCheckpoint") or {}).get("step", 0) >= 40
            and s
        ),
        timeout=180,
    )
    assert st["workers"]["ready"] == 3
    weights = {m["type"]: m["weight"] for m in st["membership"]["world"]}
    assert weights["nvidia-h100"] > weights["nvidia-a100"]
    epoch = st["membership"]["epoch"]
    victim = next(m["pod"] for m in st["membership"]["world"] if m["rank"] == 1)
    kill_worker_process(cluster, ns, victim)

    st = wait_for(
        "the failure recorded",
        lambda: (s := job_status(cluster, ns, "mlp")).get("restarts") == 1 and s,
        timeout=60,
    )
    assert st["lastFailure"]["pod"] == victim and st["lastFailure"]["exitCode"] == 137
    final = wait_for(
        "Succeeded",
        lambda: (s := job_status(cluster, ns, "mlp")).get("phase") == "Succeeded" and s,
        timeout=300,
    )
    assert final["restarts"] == 1
    assert final["membership"]["epoch"] >= epoch + 2, "the world shrank, then took the replacement in"
    assert final["lastCheckpoint"]["step"] == STEPS

    # Exactly once: every sample of each finished data-epoch consumed once, across the failure.
    pvc = cluster.state_dir / "procnode" / "pvc" / ns / "ckpt"
    records = read_records(str(Path(pvc) / "samples"))
    report = check_exactly_once(records, DATASET, STEPS)
    assert report.ok, report.problems[:5]
    assert report.steps == STEPS
    assert sorted(report.consumed) == [0, 1, 2]
    for counts in report.consumed.values():
        assert sorted(counts) == list(range(DATASET)) and set(counts.values()) == {1}
