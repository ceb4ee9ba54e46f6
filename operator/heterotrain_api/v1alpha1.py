"""HeteroTrainJob, heterotrain.io/v1alpha1: the single source of truth of the API.

The CRD in ``crds/`` is generated from these classes (``python -m
heterotrain_api.crdgen``).  Every rule the API server enforces through the
CRD schema (bounds, patterns, enums, CEL rules) is also enforced when a
manifest is validated with :class:`HeteroTrainJob`, with messages that name
the field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from ._base import (
    ApiModel,
    EnvVar,
    FreeFormObject,
    ObjectMeta,
    SpecModel,
    Time,
    Toleration,
    WorkerResources,
)
from .accelerators import KNOWN_ACCELERATORS, Backend

GROUP: Final = "heterotrain.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "HeteroTrainJob"
LIST_KIND: Final = "HeteroTrainJobList"
PLURAL: Final = "heterotrainjobs"
SINGULAR: Final = "heterotrainjob"
SHORT_NAMES: Final = ("htj",)
CATEGORIES: Final = ("heterotrain",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

#: The node label whose value is an accelerator type.
ACCELERATOR_NODE_LABEL: Final = f"{GROUP}/accelerator"

MAX_WORKERS: Final = 10000
MAX_ACCELERATOR_TYPES: Final = 16
#: Worker pods are named ``<job>-worker-<index>`` (index < 10000), which must stay a 63-character label.
MAX_JOB_NAME_LENGTH: Final = 50

DNS1123_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
RESOURCE_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
ABSOLUTE_PATH_PATTERN: Final = r"^/"

# --- messages of the cross-field rules (CEL in the CRD, validators here) ----
MSG_WORKERS_MIN_MAX: Final = "spec.workers.min must be <= spec.workers.max"
MSG_BATCH_GE_MAX: Final = (
    "spec.globalBatchSize must be >= spec.workers.max (every worker needs at least one sample per step)"
)
MSG_MAX_WORKERS_SUM: Final = (
    "spec.accelerators[*].maxWorkers must add up to at least spec.workers.min when every accelerator sets it"
)
MSG_NAME_LENGTH: Final = (
    f"metadata.name must be at most {MAX_JOB_NAME_LENGTH} characters "
    "(worker pods are named <name>-worker-<index>, which must fit in 63)"
)


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"rule": rule, "message": message, "reason": "FieldValueInvalid"}
    if field_path is not None:
        out["fieldPath"] = field_path
    return out


#: Rules of the root schema (metadata is only reachable from the root).
ROOT_VALIDATIONS: Final = (_cel(f"size(self.metadata.name) <= {MAX_JOB_NAME_LENGTH}", MSG_NAME_LENGTH),)


# =============================================================================
# spec
# =============================================================================

AcceleratorType = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=DNS1123_LABEL_PATTERN)
]


class WorkersSpec(SpecModel):
    """The elastic range of the world size, in workers (pods) over all accelerator types.

    The job starts once min workers can be placed and grows up to max as capacity allows;
    it keeps training while at least min workers are alive.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [_cel("self.min <= self.max", MSG_WORKERS_MIN_MAX, ".min")]
        }
    )

    min: int = Field(
        ge=1, le=MAX_WORKERS, description="Fewest workers the job trains with (1..10000, <= max)."
    )
    max: int = Field(ge=1, le=MAX_WORKERS, description="Most workers the job scales up to (1..10000).")

    @model_validator(mode="after")
    def _min_le_max(self) -> WorkersSpec:
        if self.min > self.max:
            raise ValueError(MSG_WORKERS_MIN_MAX)
        return self


def _known_types_text() -> str:
    return ", ".join(KNOWN_ACCELERATORS)


class AcceleratorSpec(SpecModel):
    """One accelerator type (one node pool) the job may run workers on."""

    type: AcceleratorType = Field(
        description=(
            "Accelerator type: a DNS-1123 label equal to the value of the node label "
            f"{ACCELERATOR_NODE_LABEL} of the pool's nodes. Workers of this type are scheduled on "
            "those nodes. Types with built-in defaults for resourceName, backend and "
            f"relativeThroughput: {_known_types_text()}."
        )
    )
    resource_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=RESOURCE_NAME_PATTERN,
        description=(
            "Extended resource requested for the accelerators of each worker, e.g. nvidia.com/gpu, "
            "amd.com/gpu, huawei.com/Ascend910. Defaulted for known types; required for others."
        ),
    )
    per_worker: int = Field(
        default=1, ge=1, le=64, description="Accelerators (units of resourceName) per worker pod (1..64)."
    )
    relative_throughput: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description=(
            "Training speed of one accelerator of this type relative to one NVIDIA A100 (1.0); a "
            "worker's share of the global batch is proportional to relativeThroughput x perWorker. "
            "Defaulted for known types from peak dense BF16 throughput, otherwise 1.0. Set it from a "
            "measurement of your model for the best balance."
        ),
    )
    max_workers: int | None = Field(
        default=None, ge=1, le=MAX_WORKERS, description="Most workers of this type (unbounded when unset)."
    )
    backend: Backend | None = Field(
        default=None,
        description=(
            "Collective backend within this pool: nccl (NVIDIA), rccl (AMD ROCm), hccl (Huawei Ascend) "
            "or gloo (CPU/any). Defaulted from the vendor; traffic between pools of different types "
            "uses gloo."
        ),
    )


class CheckpointSpec(SpecModel):
    """Where and how often the workers checkpoint; a restarted or resized world resumes from the latest."""

    path: str = Field(
        default="/checkpoints",
        min_length=1,
        max_length=4096,
        pattern=ABSOLUTE_PATH_PATTERN,
        description="Absolute directory in every worker container where checkpoints are written.",
    )
    volume: FreeFormObject | None = Field(
        default=None,
        description=(
            "Volume mounted at path in every worker: a Kubernetes VolumeSource (for example "
            "{persistentVolumeClaim: {claimName: ckpt}}), shared by all workers so any world can "
            "resume. When unset the operator mounts nothing at path."
        ),
    )
    interval_steps: int | None = Field(
        default=None, ge=1, description="Checkpoint every this many training steps."
    )
    interval_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Checkpoint at least this often, in seconds. With intervalSteps, whichever comes first.",
    )
    keep: int = Field(default=3, ge=1, le=100, description="Most recent checkpoints to keep (1..100).")
    async_: bool = Field(
        default=True, description="Write checkpoints in the background while training continues."
    )


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
    on_worker_failure: Literal["Replace", "Shrink"] = Field(
        default="Replace",
        description=(
            "Replace: start a new worker in place of a failed one (the world shrinks only while it "
            "waits for capacity). Shrink: continue with the survivors, as long as at least "
            "spec.workers.min remain."
        ),
    )


class RebalanceSpec(SpecModel):
    """How the global batch is split between workers of different speeds."""

    policy: Literal["Throughput", "Equal"] = Field(
        default="Throughput",
        description=(
            "Throughput: per-worker batch proportional to its speed (relativeThroughput x perWorker, "
            "refined by measured step times). Equal: the same batch on every worker."
        ),
    )
    min_interval_seconds: int = Field(
        default=30, ge=0, description="Fewest seconds between two rebalances of the batch split."
    )


class HeteroTrainJobSpec(SpecModel):
    """The desired state of a HeteroTrainJob: one elastic data-parallel training job over several
    accelerator types."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.globalBatchSize >= self.workers.max", MSG_BATCH_GE_MAX, ".globalBatchSize"),
                _cel(
                    "size(self.accelerators) == 0 || self.accelerators.exists(a, !has(a.maxWorkers)) || "
                    "self.accelerators.map(a, a.maxWorkers).sum() >= self.workers.min",
                    MSG_MAX_WORKERS_SUM,
                    ".accelerators",
                ),
            ]
        }
    )

    image: str = Field(
        min_length=1, max_length=4096, description="Container image of the workers (every accelerator type)."
    )
    command: list[Annotated[str, StringConstraints(max_length=65536)]] = Field(
        min_length=1,
        max_length=256,
        description="Entrypoint of the training script, e.g. [python, train.py]; the runtime launches it.",
    )
    args: list[Annotated[str, StringConstraints(max_length=65536)]] = Field(
        default_factory=list, max_length=1024, description="Arguments appended to command."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=512, description="Environment variables of every worker."
    )
    resources: WorkerResources | None = Field(
        default=None, description="CPU, memory and other resources per worker, besides its accelerators."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the workers (Kubernetes' default when unset)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Extra node labels every worker's node must have, on top of the accelerator type label."
        ),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Tolerations of every worker pod (e.g. for tainted accelerator pools).",
    )
    workers: WorkersSpec
    accelerators: list[AcceleratorSpec] = Field(
        min_length=1,
        max_length=MAX_ACCELERATOR_TYPES,
        description=(
            "Accelerator types (node pools) the job may use, 1 to 16, each type at most once. The "
            "operator places workers on them according to placement and the available capacity."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    global_batch_size: int = Field(
        ge=1,
        description=(
            "Samples per optimizer step over the whole world, kept constant as the world changes; "
            "split between workers by rebalance.policy. Must be >= spec.workers.max."
        ),
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec,
        json_schema_extra={"default": {}},
    )
    fault_tolerance: FaultToleranceSpec = Field(
        default_factory=FaultToleranceSpec,
        json_schema_extra={"default": {}},
    )
    rebalance: RebalanceSpec = Field(
        default_factory=RebalanceSpec,
        json_schema_extra={"default": {}},
    )
    placement: Literal["Pack", "Spread"] = Field(
        default="Pack",
        description=(
            "Pack: fill the fastest accelerator types first and as few nodes as possible. Spread: "
            "spread workers over types and nodes."
        ),
    )
    priority: int = Field(
        default=0,
        description="Admission priority among HeteroTrainJobs competing for accelerators; higher first.",
    )
    suspend: bool = Field(
        default=False,
        description="Stop all workers, keeping the checkpoints; resuming restarts from the latest one.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the job this many seconds after it Succeeded or Failed (kept forever if unset).",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> HeteroTrainJobSpec:
        seen: dict[str, int] = {}
        for i, option in enumerate(self.accelerators):
            if option.type in seen:
                raise ValueError(
                    f"spec.accelerators[{i}].type: Duplicate value {option.type!r} "
                    f"(also spec.accelerators[{seen[option.type]}].type)"
                )
            seen[option.type] = i
        if self.global_batch_size < self.workers.max:
            raise ValueError(MSG_BATCH_GE_MAX)
        caps = [a.max_workers for a in self.accelerators]
        if (
            caps
            and all(c is not None for c in caps)
            and sum(c for c in caps if c is not None) < self.workers.min
        ):
            raise ValueError(MSG_MAX_WORKERS_SUM)
        return self


# =============================================================================
# status (written by the operator through the status subresource)
# =============================================================================

Phase = Literal["Pending", "Admitted", "Running", "Recovering", "Suspended", "Succeeded", "Failed"]
PHASES: Final[tuple[Phase, ...]] = (
    "Pending",
    "Admitted",
    "Running",
    "Recovering",
    "Suspended",
    "Succeeded",
    "Failed",
)
TERMINAL_PHASES: Final[frozenset[Phase]] = frozenset({"Succeeded", "Failed"})

# Condition types.  Ready/Reconciling/Stalled follow kstatus conventions.
CONDITION_READY: Final = "Ready"
CONDITION_RECONCILING: Final = "Reconciling"
CONDITION_STALLED: Final = "Stalled"
CONDITION_ADMITTED: Final = "Admitted"
CONDITION_RUNNING: Final = "Running"
CONDITION_RECOVERING: Final = "Recovering"
CONDITION_SUCCEEDED: Final = "Succeeded"
CONDITION_FAILED: Final = "Failed"
CONDITION_SUSPENDED: Final = "Suspended"
CONDITION_TYPES: Final = (
    CONDITION_READY,
    CONDITION_RECONCILING,
    CONDITION_STALLED,
    CONDITION_ADMITTED,
    CONDITION_RUNNING,
    CONDITION_RECOVERING,
    CONDITION_SUCCEEDED,
    CONDITION_FAILED,
    CONDITION_SUSPENDED,
)

CONDITION_TYPE_PATTERN: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class StatusModel(ApiModel):
    """Base of the status types (lax: timestamps arrive as strings)."""


class Condition(StatusModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description=f"Type of the condition: one of {', '.join(CONDITION_TYPES)}.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable details of the transition."
    )
    last_transition_time: Time = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was set for."
    )


class TypeWorkers(StatusModel):
    """Worker counts of one accelerator type."""

    desired: int = Field(default=0, ge=0, description="Workers of this type in the current plan.")
    ready: int = Field(default=0, ge=0, description="Workers of this type running and in the world.")


class WorkersStatus(StatusModel):
    """Worker counts."""

    desired: int = Field(default=0, ge=0, description="Workers in the current plan.")
    ready: int = Field(default=0, ge=0, description="Workers running and part of the current world.")
    by_type: dict[str, TypeWorkers] = Field(default_factory=dict, description="Counts per accelerator type.")


class MemberStatus(StatusModel):
    """One worker of the current world (heterotrain_runtime.contract.Member)."""

    pod: str = Field(description="Worker pod name.")
    rank: int = Field(ge=0, description="Global rank, 0..world size - 1.")
    type: str = Field(description="Accelerator type of the worker.")
    address: str = Field(description="Pod IP the worker is reachable at.")
    weight: float = Field(ge=0, description="Relative speed; the worker's share of the global batch.")


class MembershipStatus(StatusModel):
    """The world the workers form (heterotrain_runtime.contract.Membership.to_dict()).

    Workers re-form their process group when epoch changes.
    """

    epoch: int = Field(ge=0, description="Increases by one every time the world (or its ranks) changes.")
    master_port: int = Field(ge=1, le=65535, description="Rendezvous port on the rank-0 worker.")
    world: list[MemberStatus] = Field(default_factory=list, description="Workers, ordered by rank.")

    @classmethod
    def from_contract(cls, data: Mapping[str, Any]) -> MembershipStatus:
        """Build from ``Membership.to_dict()`` (the shapes are the same)."""
        return cls.model_validate(data)


class PodPlacement(StatusModel):
    """Where one worker pod was placed."""

    pod: str = Field(description="Worker pod name.")
    node: str | None = Field(default=None, description="Node the pod is bound to (unset until scheduled).")
    type: str = Field(description="Accelerator type of the worker.")


class FailureStatus(StatusModel):
    """The most recent worker failure."""

    pod: str | None = Field(default=None, description="Pod that failed.")
    reason: str | None = Field(
        default=None,
        description="Why: the container's termination reason (OOMKilled, Error, ...) or Evicted, Lost.",
    )
    exit_code: int | None = Field(
        default=None, description="Exit code of the worker container, if it exited."
    )
    message: str | None = Field(
        default=None, description="Details (e.g. the container's termination message)."
    )
    time: Time | None = Field(default=None, description="When the failure was observed.")


class CheckpointStatus(StatusModel):
    """The latest complete checkpoint."""

    step: int = Field(ge=0, description="Training step of the checkpoint.")
    time: Time | None = Field(default=None, description="When it completed.")
    path: str | None = Field(default=None, description="Where it lies, inside spec.checkpoint.path.")


class HeteroTrainJobStatus(StatusModel):
    """The observed state of a HeteroTrainJob, written by the operator."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec this status describes."
    )
    phase: Phase | None = Field(default=None, description=f"Lifecycle phase: {', '.join(PHASES)}.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description=f"Conditions of the job ({', '.join(CONDITION_TYPES)}).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    workers: WorkersStatus | None = None
    mix: str | None = Field(
        default=None, description="Ready workers per accelerator type, e.g. nvidia-a100:3,nvidia-h100:2."
    )
    membership: MembershipStatus | None = Field(
        default=None,
        description="The world the workers form; workers re-form their process group when epoch changes.",
    )
    placement: list[PodPlacement] = Field(
        default_factory=list, description="Where each worker pod of the current plan was placed."
    )
    waiting_reason: str | None = Field(
        default=None, description="Why the job waits for capacity (CamelCase), e.g. InsufficientAccelerators."
    )
    waiting_message: str | None = Field(default=None, description="Details on what the job waits for.")
    restarts: int = Field(
        default=0, ge=0, description="Worker failures handled so far (compared with maxRestarts)."
    )
    last_failure: FailureStatus | None = None
    last_checkpoint: CheckpointStatus | None = None
    start_time: Time | None = Field(default=None, description="When the job first started running.")
    completion_time: Time | None = Field(default=None, description="When the job Succeeded or Failed.")

    def condition(self, type_: str) -> Condition | None:
        """The condition of a type, or None."""
        for c in self.conditions:
            if c.type == type_:
                return c
        return None


def format_mix(counts: Mapping[str, int]) -> str:
    """The ``status.mix`` column: ``type:count`` pairs, sorted by type, zero counts left out."""
    return ",".join(f"{t}:{n}" for t, n in sorted(counts.items()) if n > 0)


# =============================================================================
# the resource
# =============================================================================


class HeteroTrainJob(ApiModel):
    """HeteroTrainJob trains one elastic PyTorch job across node pools of different accelerator
    types (for example NVIDIA, AMD and Huawei Ascend), splitting the global batch by speed."""

    api_version: Literal["heterotrain.io/v1alpha1"] = Field(
        default="heterotrain.io/v1alpha1", description="heterotrain.io/v1alpha1"
    )
    kind: Literal["HeteroTrainJob"] = Field(default=KIND, description="HeteroTrainJob")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: HeteroTrainJobSpec
    status: HeteroTrainJobStatus | None = None

    @model_validator(mode="after")
    def _name_length(self) -> HeteroTrainJob:
        if self.metadata.name is not None and len(self.metadata.name) > MAX_JOB_NAME_LENGTH:
            raise ValueError(MSG_NAME_LENGTH)
        return self
