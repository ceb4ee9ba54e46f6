"""Prometheus metrics of the operator."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("heterotrain_reconciles_total", "Job reconciles, by result", ["result"])
POD_WRITES = Counter("heterotrain_pod_writes_total", "Worker pod applies and deletes", ["op"])
JOBS = Gauge("heterotrain_jobs", "HeteroTrainJobs by phase", ["phase"])
PASS_SECONDS = Histogram("heterotrain_reconcile_pass_seconds", "Duration of one reconcile pass over all jobs")
PLAN_SECONDS = Histogram("heterotrain_plan_seconds", "Observe + placement planning time of one pass")
ERRORS = Counter("heterotrain_errors_total", "Errors of the reconcile loop, by kind", ["kind"])
