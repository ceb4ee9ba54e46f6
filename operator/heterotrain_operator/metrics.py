"""Prometheus metrics of the operator: its own work, and per job (phase, workers, restarts, placement)."""

from __future__ import annotations

from collections import Counter as Count
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from heterotrain_api.v1alpha1 import PHASES

RECONCILES = Counter("heterotrain_reconciles_total", "Job reconciles, by result", ["result"])
POD_WRITES = Counter("heterotrain_pod_writes_total", "Worker pod applies and deletes", ["op"])
JOBS = Gauge("heterotrain_jobs", "HeteroTrainJobs by phase", ["phase"])
PASS_SECONDS = Histogram("heterotrain_reconcile_pass_seconds", "Duration of one reconcile pass over all jobs")
PLAN_SECONDS = Histogram("heterotrain_plan_seconds", "Observe + placement planning time of one pass")
ERRORS = Counter("heterotrain_errors_total", "Errors of the reconcile loop, by kind", ["kind"])
LEADER = Gauge("heterotrain_leader", "1 while this replica holds the leader Lease (with leader election)")

# "heterotrainjob", not "job": Prometheus keeps "job" for the scrape job (the ServiceMonitor honors the
# exported "namespace", the job's, over the operator pod's).
JOB = ("namespace", "heterotrainjob")
JOB_PHASE = Gauge("heterotrain_job_phase", "1 for the phase the job is in, 0 for the others", [*JOB, "phase"])
JOB_WORKERS = Gauge(
    "heterotrain_job_workers",
    "Workers of the job per accelerator type: state=desired (planned) or ready (in the world)",
    [*JOB, "accelerator", "state"],
)
JOB_RESTARTS = Gauge("heterotrain_job_restarts", "Worker failures the job has restarted from", JOB)
JOB_PLACED = Gauge(
    "heterotrain_job_placed_workers",
    "Worker pods of the job bound to a node, per accelerator type",
    [*JOB, "accelerator"],
)
JOB_EPOCH = Gauge("heterotrain_job_membership_epoch", "The job's membership epoch (world changes)", JOB)

Samples = dict[tuple[str, ...], float]


def job_samples(jobs: Iterable[Mapping[str, Any]]) -> dict[Gauge, Samples]:
    """The per-job series for a list of HeteroTrainJob objects, read from their status (pure)."""
    out: dict[Gauge, Samples] = {g: {} for g in (JOB_PHASE, JOB_WORKERS, JOB_RESTARTS, JOB_PLACED, JOB_EPOCH)}
    for obj in jobs:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        st = obj.get("status") or {}
        phase = st.get("phase") or "Pending"
        for p in PHASES:
            out[JOB_PHASE][(*key, p)] = 1.0 if p == phase else 0.0
        for t, w in ((st.get("workers") or {}).get("byType") or {}).items():
            for state in ("desired", "ready"):
                out[JOB_WORKERS][(*key, t, state)] = float(w.get(state) or 0)
        out[JOB_RESTARTS][key] = float(st.get("restarts") or 0)
        placed = Count(p.get("type", "") for p in st.get("placement") or [] if p.get("node"))
        for t, n in placed.items():
            out[JOB_PLACED][(*key, t)] = float(n)
        out[JOB_EPOCH][key] = float((st.get("membership") or {}).get("epoch") or 0)
    return out


_exported: dict[Gauge, set[tuple[str, ...]]] = {}


def record_jobs(jobs: Iterable[Mapping[str, Any]]) -> None:
    """Export the per-job series; those of jobs (or types) that are gone are removed."""
    for gauge, samples in job_samples(jobs).items():
        for labels, value in samples.items():
            gauge.labels(*labels).set(value)
        for labels in _exported.get(gauge, set()) - set(samples):
            gauge.remove(*labels)
        _exported[gauge] = set(samples)
