"""The local control plane itself: heterogeneous pools, real scheduling onto process nodes, up/down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heterotrain_e2e.cluster import controlplane
from heterotrain_e2e.testing import Cluster, wait_for

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "heterotrain_e2e.cluster"]


def test_nodes_show_five_accelerator_types_with_vendor_resources(cluster: Cluster):
    out = cluster.kubectl("get", "nodes", "-L", "heterotrain.io/accelerator").stdout
    assert "ACCELERATOR" in out
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    types: dict[str, set[str]] = {}
    for n in nodes:
        t = n["metadata"]["labels"].get("heterotrain.io/accelerator")
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}.get("Ready")
        assert ready == "True", n["metadata"]["name"]
        types.setdefault(t, set()).update(k for k in n["status"]["allocatable"] if "/" in k)
    assert {"nvidia-h100", "nvidia-a100", "nvidia-h20", "huawei-ascend-910b", "amd-mi300x"} <= set(types)
    assert "huawei.com/Ascend910" in types["huawei-ascend-910b"]
    assert "amd.com/gpu" in types["amd-mi300x"]
    assert "nvidia.com/gpu" in types["nvidia-h20"]


def test_pod_without_node_is_scheduled_onto_a_process_node_and_runs(cluster: Cluster):
    cluster.kubectl(
        "run",
        "hello",
        "--image=python:3.11",
        "--restart=Never",
        "--command",
        "--",
        "python",
        "-c",
        "import sys; print('hello from a process node'); sys.exit(0)",
    )
    pod = wait_for(
        "Succeeded",
        lambda: (
            (p := json.loads(cluster.kubectl("get", "pod", "hello", "-o", "json").stdout))["status"].get(
                "phase"
            )
            == "Succeeded"
            and p
        ),
        timeout=60,
    )
    assert pod["spec"]["nodeName"].startswith("proc-"), "bound by kube-scheduler to an untainted process node"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    cluster.kubectl("delete", "pod", "hello", "--wait=false")


def _cluster_pids(d: Path) -> list[int]:
    state = controlplane.read_state(d) or {}
    return [int(p) for p in state.get("pids", {}).values()]


def test_second_up_says_running_and_down_leaves_nothing(tmp_path: Path, cluster: Cluster):
    d = tmp_path / "c2"
    first = subprocess.run([*CLI, "up", "--dir", str(d)], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "Cluster ready in" in first.stdout
    pids = _cluster_pids(d)
    assert len(pids) == 6 and all(controlplane._pid_alive(p) for p in pids)
    second = subprocess.run([*CLI, "up", "--dir", str(d)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0
    assert "already running" in second.stdout
    assert _cluster_pids(d) == pids, "no second set of processes"
    down = subprocess.run([*CLI, "down", "--dir", str(d)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(controlplane._pid_alive(p) for p in pids)
    leftovers = subprocess.run(["pgrep", "-f", str(d)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left: {leftovers.stdout}"


def test_taken_port_is_reported_not_hung_on(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        proc = subprocess.run(
            [*CLI, "up", "--dir", str(tmp_path / "c3"), "--apiserver-port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1
    assert f"port {port} for kube-apiserver is already in use" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "c3" / "state.json").exists()


def test_broken_profile_is_refused_with_its_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: heterotrain.io/cluster-profile/v1\nkind: ClusterProfile\nname: b\npools:\n"
        "  - name: x\n    count: -1\n"
    )
    proc = subprocess.run(
        [*CLI, "up", "--dir", str(tmp_path / "c4"), "--profile", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"{bad}:5: pools[0].type: Field required" in proc.stderr
    assert f"{bad}:6: pools[0].count" in proc.stderr


def test_warm_build_runs_no_go(tmp_path: Path):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no Go on PATH: a warm build must not need it
    proc = subprocess.run([*CLI, "build"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "go build" not in proc.stderr and "go install" not in proc.stderr
    assert "kube-apiserver" in proc.stdout
