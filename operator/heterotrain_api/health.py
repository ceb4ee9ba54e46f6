"""The status types of a job's health: its progress (written by the runtime) and its failures (by the operator).

``status.progress`` is the one report of every rank's liveness and progress that reaches the API: the
runtime aggregates it inside the job (every rank beats to rank 0 over UDP, rank 0 summarises) and
writes it under its own field manager every few seconds, whatever the world size.  The operator reads
the ranks it names stale and the processes it names restarted in place; the rest is for people
(``kubectl get htj`` shows the step and the samples/s).

``status.failures`` keeps the last failures the operator handled, ``status.avoidedNodes`` the nodes this
job stays away from for new workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import Field, ValidationError

from ._base import ApiModel, Time

#: How many failures ``status.failures`` keeps (the newest last).
FAILURE_HISTORY: Final = 10
#: Most stale ranks and restarted processes one progress report lists (the rest are counted).
PROGRESS_LIST_LIMIT: Final = 32

# Why a worker failed (FailureStatus.reason), besides the container's termination reason.
REASON_HUNG: Final = "Hung"  # alive (as far as Kubernetes knows) but silent or stuck
REASON_NODE_LOST: Final = "NodeLost"  # its node went NotReady, unreachable or away

# How a failure was handled (FailureStatus.action).
ACTION_RESTARTED_IN_PLACE: Final = "RestartedInPlace"  # the launcher restarted the process in its pod
ACTION_REPLACED: Final = "Replaced"  # the pod was deleted and a new one placed

StaleReason = Literal["Silent", "Stuck"]
STALE_SILENT: Final = "Silent"  # no heartbeat (stopped process, dead node, partition)
STALE_STUCK: Final = "Stuck"  # heartbeats, but holds the world up (deadlock in the step, between steps)


class HealthModel(ApiModel):
    """Base of the health status types (lax, as every status type: timestamps arrive as strings)."""


class SlowestRank(HealthModel):
    """The rank of a pool that computes the fewest samples per second."""

    rank: int = Field(ge=0, description="Its rank.")
    pod: str = Field(description="Its pod.")
    samples_per_second: float = Field(ge=0, description="Samples per second it computes (its own measure).")


class PoolProgress(HealthModel):
    """The progress of one accelerator pool (the workers of one type)."""

    type: str = Field(description="Accelerator type.")
    ranks: int = Field(ge=0, description="Ranks of this type in the world.")
    step: int = Field(ge=0, description="The lowest committed step among them.")
    samples_per_second: float = Field(ge=0, description="Samples per second the pool trains.")
    weight: float = Field(
        ge=0, le=1, description="The pool's learned share of the global batch (0..1), from measured speed."
    )
    slowest: SlowestRank | None = Field(default=None, description="Its slowest rank, once measured.")


class StaleRank(HealthModel):
    """A rank the runtime found silent or stuck: the operator replaces its worker."""

    rank: int = Field(ge=0, description="Its rank.")
    pod: str = Field(description="Its pod.")
    reason: StaleReason = Field(
        description="Silent: no heartbeat for the timeout; Stuck: alive, but the world waits on it."
    )
    seconds: float = Field(ge=0, description="For how long, in seconds.")


class ProcessRestarts(HealthModel):
    """In-place restarts of one worker's training process (by the launcher, in the same pod)."""

    pod: str = Field(description="The worker pod.")
    count: int = Field(ge=0, description="Restarts of its process so far.")
    exit_code: int | None = Field(default=None, description="Exit code of the process that failed last.")


class ProgressStatus(HealthModel):
    """Every rank's progress and liveness, summarised inside the job and written by the runtime."""

    time: Time = Field(description="When the report was made (the reporter's clock).")
    reporter: str = Field(description="The pod that wrote it: rank 0, or a backup while rank 0 is silent.")
    epoch: int = Field(ge=0, description="Membership epoch the report is about.")
    step: int = Field(ge=0, description="Committed steps (rank 0's).")
    total_steps: int | None = Field(default=None, ge=0, description="Steps the job trains, when known.")
    samples_per_second: float = Field(default=0, ge=0, description="Global samples per second.")
    eta_seconds: int | None = Field(
        default=None, ge=0, description="Seconds to totalSteps at the current speed, when the total is known."
    )
    pools: list[PoolProgress] = Field(default_factory=list, description="Progress per accelerator pool.")
    stale_ranks: list[StaleRank] = Field(
        default_factory=list, description="Ranks found silent or stuck (at most 32 are listed)."
    )
    process_restarts: list[ProcessRestarts] = Field(
        default_factory=list,
        description="Workers whose process was restarted in place, with the count (at most 32 are listed).",
    )

    def stale_pods(self) -> dict[str, str]:
        """Pod -> why it is stale."""
        return {s.pod: s.reason for s in self.stale_ranks}

    def restarts_by_pod(self) -> dict[str, ProcessRestarts]:
        return {r.pod: r for r in self.process_restarts}


def read_progress(status: Mapping[str, Any]) -> ProgressStatus | None:
    """``status.progress`` parsed, or None when absent or malformed (the runtime wrote something else)."""
    raw = status.get("progress")
    if not isinstance(raw, Mapping):
        return None
    try:
        return ProgressStatus.model_validate(raw)
    except ValidationError:
        return None


def progress_signals(
    status: Mapping[str, Any],
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, int], ...]]:
    """What of ``status.progress`` the operator acts on: the stale pods and every pod's restart count.

    The watch-fed cache wakes a reconcile pass only when these change, not on every report.
    """
    p = read_progress(status)
    if p is None:
        return ((), ())
    return (
        tuple(sorted(p.stale_pods().items())),
        tuple(sorted((r.pod, r.count) for r in p.process_restarts)),
    )


class FailureStatus(HealthModel):
    """A worker failure the operator handled."""

    pod: str | None = Field(default=None, description="Pod that failed.")
    node: str | None = Field(default=None, description="Node it ran on.")
    reason: str | None = Field(
        default=None,
        description=(
            "Why: the container's termination reason (OOMKilled, Error, ...), Hung (silent or stuck, "
            "found by the runtime's heartbeats) or NodeLost (its node went NotReady, unreachable or away)."
        ),
    )
    action: str | None = Field(
        default=None,
        description="How it was handled: RestartedInPlace (the process, in the same pod) or Replaced (a new pod).",
    )
    exit_code: int | None = Field(
        default=None, description="Exit code of the worker container, if it exited."
    )
    message: str | None = Field(
        default=None, description="Details (e.g. the container's termination message)."
    )
    time: Time | None = Field(default=None, description="When the failure was observed.")


class CheckpointStatus(HealthModel):
    """The latest complete checkpoint."""

    step: int = Field(ge=0, description="Training step of the checkpoint.")
    time: Time | None = Field(default=None, description="When it completed.")
    path: str | None = Field(default=None, description="Where it lies, inside spec.checkpoint.path.")


class AvoidedNode(HealthModel):
    """A node this job places no new worker on (its running workers stay)."""

    node: str = Field(description="The node.")
    reason: str = Field(
        description="RepeatedFailures (badNodeFailures within failureWindowSeconds) or NodeLost."
    )
    failures: int = Field(ge=0, description="This job's failures on it within the window.")
    until: Time = Field(description="When the node may be used again.")
