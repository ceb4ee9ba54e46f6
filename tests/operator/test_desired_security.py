"""Worker pods pass Pod Security "restricted" by default and declare their metrics port.

The real admission check runs in e2e/tests/test_helm.py (a namespace labelled
pod-security.kubernetes.io/enforce=restricted on the real API server).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from heterotrain_operator.desired import worker_pod
from heterotrain_operator.settings import Settings


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]


def test_default_worker_pod_is_restricted(make_job):
    pod = worker_pod(make_job(), 0, "nvidia-a100", Settings(), node="n1")
    sc = pod["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsUser"] == sc["runAsGroup"] == sc["fsGroup"] == 65532
    for ctr in containers(pod):
        assert ctr["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    gated = worker_pod(make_job(), 0, "nvidia-a100", Settings(), node=None)
    assert gated["spec"]["securityContext"] == sc  # the same whether gated or placed


def test_image_user_and_opt_out(make_job):
    pod = worker_pod(make_job(), 0, "nvidia-a100", replace(Settings(), worker_run_as_user=None))
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    none = worker_pod(make_job(), 0, "nvidia-a100", replace(Settings(), worker_pod_security="none"))
    assert "securityContext" not in none["spec"]
    assert all("securityContext" not in ctr for ctr in containers(none))


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("HETEROTRAIN_WORKER_RUN_AS_USER", "")
    monkeypatch.setenv("HETEROTRAIN_WORKER_POD_SECURITY", "none")
    monkeypatch.delenv("HETEROTRAIN_POD_IP", raising=False)
    s = Settings.from_env()
    assert s.worker_run_as_user is None and s.worker_pod_security == "none"
    assert s.metrics_address == "0.0.0.0"
    monkeypatch.setenv("HETEROTRAIN_POD_IP", "10.1.2.3")  # the chart's downward API: replicas never clash
    assert Settings.from_env().metrics_address == "10.1.2.3"
    monkeypatch.setenv("HETEROTRAIN_WORKER_POD_SECURITY", "baseline")
    with pytest.raises(ValueError, match="HETEROTRAIN_WORKER_POD_SECURITY='baseline'"):
        Settings.from_env()


def test_metrics_on_by_default_on_a_declared_port(make_job):
    pod = worker_pod(make_job(), 0, "nvidia-a100", Settings())
    ctr = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["HETEROTRAIN_METRICS_PORT"] == "9400"
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in ctr["ports"]
    off = worker_pod(make_job(), 0, "nvidia-a100", replace(Settings(), worker_metrics_port=0))
    assert all(p["name"] != "metrics" for p in off["spec"]["containers"][0]["ports"])
    own = make_job(env=[{"name": "HETEROTRAIN_METRICS_PORT", "value": "8000"}])
    ctr = worker_pod(own, 0, "nvidia-a100", Settings())["spec"]["containers"][0]
    assert [e["value"] for e in ctr["env"] if e["name"] == "HETEROTRAIN_METRICS_PORT"] == ["8000"]
    # one endpoint per training process: local rank i serves on 9400 + i (the launcher says so)
    pairs = make_job(accelerators=[{"type": "nvidia-a100", "perWorker": 3}])
    ports = worker_pod(pairs, 0, "nvidia-a100", Settings())["spec"]["containers"][0]["ports"]
    assert [(p["name"], p["containerPort"]) for p in ports if p["name"].startswith("metrics")] == [
        ("metrics", 9400),
        ("metrics-1", 9401),
        ("metrics-2", 9402),
    ]


def test_checkpoints_go_to_the_jobs_volume_or_else_to_an_emptydir_of_the_pod(settings, make_job):
    """Without spec.checkpoint.volume the checkpoint path is an emptyDir: the pod's own scratch (kept
    across processes restarted in place, writable under a read-only root filesystem), never a directory
    some other pod or the node's filesystem shares."""
    from heterotrain_operator.desired import CHECKPOINT_VOLUME

    def mounted(pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
        vol = next(v for v in pod["spec"]["volumes"] if v["name"] == CHECKPOINT_VOLUME)
        mount = next(
            m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == CHECKPOINT_VOLUME
        )
        return {k: v for k, v in vol.items() if k != "name"}, mount["mountPath"]

    bare = worker_pod(make_job(accelerators=[{"type": "nvidia-h100"}]), 0, "nvidia-h100", settings)
    assert mounted(bare) == ({"emptyDir": {}}, "/checkpoints")
    shared = make_job(
        accelerators=[{"type": "nvidia-h100"}],
        checkpoint={"path": "/ckpt", "volume": {"persistentVolumeClaim": {"claimName": "c"}}},
    )
    assert mounted(worker_pod(shared, 0, "nvidia-h100", settings)) == (
        {"persistentVolumeClaim": {"claimName": "c"}},
        "/ckpt",
    )
