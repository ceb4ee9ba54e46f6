"""Per-job operator metrics: read from the jobs' status; series of jobs that are gone disappear."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, generate_latest

from heterotrain_operator import metrics


def job(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name}, "status": status}


RUNNING = job(
    "llm",
    phase="Running",
    restarts=2,
    workers={
        "desired": 3,
        "ready": 2,
        "byType": {"nvidia-a100": {"desired": 2, "ready": 2}, "nvidia-h100": {"desired": 1}},
    },
    placement=[
        {"pod": "llm-worker-0", "type": "nvidia-a100", "node": "a"},
        {"pod": "llm-worker-1", "type": "nvidia-a100", "node": "b"},
        {"pod": "llm-worker-2", "type": "nvidia-h100"},  # not bound yet
    ],
    membership={"epoch": 5},
)


def test_job_samples():
    s = metrics.job_samples([RUNNING, job("new")])
    assert s[metrics.JOB_PHASE][("ns", "llm", "Running")] == 1.0
    assert s[metrics.JOB_PHASE][("ns", "llm", "Pending")] == 0.0
    assert s[metrics.JOB_PHASE][("ns", "new", "Pending")] == 1.0  # no status yet
    assert sum(v for (_, j, _), v in s[metrics.JOB_PHASE].items() if j == "llm") == 1.0
    assert s[metrics.JOB_WORKERS][("ns", "llm", "nvidia-h100", "ready")] == 0.0
    assert s[metrics.JOB_WORKERS][("ns", "llm", "nvidia-a100", "desired")] == 2.0
    assert s[metrics.JOB_PLACED] == {("ns", "llm", "nvidia-a100"): 2.0}
    assert s[metrics.JOB_RESTARTS][("ns", "llm")] == 2.0
    assert s[metrics.JOB_EPOCH][("ns", "llm")] == 5.0


def exposition() -> str:
    return generate_latest(REGISTRY).decode()


def test_record_jobs_exports_and_forgets():
    metrics.record_jobs([RUNNING])
    text = exposition()
    assert 'heterotrain_job_phase{heterotrainjob="llm",namespace="ns",phase="Running"} 1.0' in text
    assert (
        'heterotrain_job_placed_workers{accelerator="nvidia-a100",heterotrainjob="llm",namespace="ns"} 2.0'
        in text
    )
    metrics.record_jobs([])
    assert 'heterotrainjob="llm"' not in exposition()
