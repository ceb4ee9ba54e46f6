"""``spec.faultTolerance``: how worker failures are detected and handled (heartbeat, restarts and their
backoff, bad nodes).  The backoff's defaults are the contract's (``heterotrain_contract.backoff``), the
rule the operator and the launcher share."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from heterotrain_contract import (
    DEFAULT_FAILURE_WINDOW_SECONDS,
    DEFAULT_RESTART_BACKOFF_LIMIT_SECONDS,
    DEFAULT_RESTART_BACKOFF_SECONDS,
    DEFAULT_STARTUP_TIMEOUT_SECONDS,
)

from ._base import SpecModel


class FaultToleranceSpec(SpecModel):
    """How worker failures are detected and handled."""

    max_restarts: int = Field(
        default=10,
        ge=0,
        description="Worker failures tolerated (each one re-forms the world) before the job is Failed.",
    )
    heartbeat_timeout_seconds: int = Field(
        default=15,
        ge=5,
        le=600,
        description="A worker silent for this long (5..600 seconds) is considered failed.",
    )
    startup_timeout_seconds: int = Field(
        default=DEFAULT_STARTUP_TIMEOUT_SECONDS,
        ge=10,
        le=86400,
        description=(
            "A new worker of a job that runs the SDK (a replacement, or one that grows the world) starts "
            "its training processes before it joins; one that is not ready to join (has not built its "
            "model, optimizer and dataset) this many seconds after it started is stuck: it is killed and "
            "restarted in its pod, counted like a failed process (maxRestarts, the backoff)."
        ),
    )
    restart_backoff_seconds: int = Field(
        default=DEFAULT_RESTART_BACKOFF_SECONDS,
        ge=0,
        le=3600,
        description=(
            "Delay before a failed worker is restarted when it is not the only recent failure: the "
            "first failure within failureWindowSeconds is restarted at once, the next after this many "
            "seconds, then twice as long each time, up to restartBackoffLimitSeconds. 0: no backoff."
        ),
    )
    restart_backoff_limit_seconds: int = Field(
        default=DEFAULT_RESTART_BACKOFF_LIMIT_SECONDS,
        ge=0,
        le=3600,
        description="Longest delay of the restart backoff, in seconds.",
    )
    bad_node_failures: int = Field(
        default=3,
        ge=1,
        le=1000,
        description=(
            "A node on which this many of the job's workers failed within failureWindowSeconds gets no "
            "new worker of the job until the window has passed (a lost node at once)."
        ),
    )
    failure_window_seconds: int = Field(
        default=DEFAULT_FAILURE_WINDOW_SECONDS,
        ge=10,
        le=86400,
        description="The window (seconds) of the restart backoff and of avoiding bad nodes.",
    )
    on_worker_failure: Literal["Replace", "Shrink"] = Field(
        default="Replace",
        description=(
            "Replace: start a new worker in place of a failed one (the world shrinks only while it "
            "waits for capacity). Shrink: continue with the survivors, as long as at least "
            "spec.workers.min remain."
        ),
    )
