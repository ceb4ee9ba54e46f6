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

import heterotrain_contract as hc
from heterotrain_contract import (
    GROUP,
    KIND,
    LABEL_ACCELERATOR,
    MAX_SLOTS,
    PLURAL,
    PRECISIONS,
    Precision,
)

from ._base import (
    ApiModel,
    EnvVar,
    FreeFormObject,
    ObjectMeta,
    SpecModel,
    Time,
    Toleration,
    WorkerResources,
    cel,
    cel_quantity_at_least,
    limit_below_request,
)
from .accelerators import KNOWN_ACCELERATORS
from .acceleratorspec import MAX_WORKERS, MSG_SELECTOR_TYPE_LABEL
from .acceleratorspec import AcceleratorSpec as AcceleratorSpec  # re-exported: the spec's item type
from .faulttolerance import FaultToleranceSpec as FaultToleranceSpec  # re-exported: spec.faultTolerance
from .health import AvoidedNode, CheckpointStatus, FailureStatus, ProgressStatus

LIST_KIND: Final = "HeteroTrainJobList"
SINGULAR: Final = "heterotrainjob"
SHORT_NAMES: Final = ("htj",)
CATEGORIES: Final = ("heterotrain",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

MAX_ACCELERATOR_TYPES: Final = 16
#: Worker pods are named ``<job>-worker-<index>`` (index < 10000), which must stay a 63-character label.
MAX_JOB_NAME_LENGTH: Final = 50

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


_cel = cel


#: Rules of the root schema (metadata is only reachable from the root).
ROOT_VALIDATIONS: Final = (_cel(f"size(self.metadata.name) <= {MAX_JOB_NAME_LENGTH}", MSG_NAME_LENGTH),)


# =============================================================================
# spec
# =============================================================================


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
            "resume. When unset, an emptyDir: each worker's checkpoints last as long as its pod (a "
            "process restarted in place resumes from them; a recreated pod takes its state from its "
            "peers), and never reach another pod or the node's filesystem."
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


MSG_SPEC_PRECISION: Final = (
    "spec.precision: an accelerator type that takes it (it sets no precision of its own) does not "
    "compute in it natively; set spec.accelerators[].precision for that type"
)
MSG_MERGED_LIMIT: Final = (
    "spec.accelerators[].resources: merged over spec.resources, a limit is below its request"
)


def _merged_limit_rule(keys: str, other: str, own: str, big: str, small: str) -> str:
    """CEL: for every resource k of the map ``keys`` that the map ``other`` names too (and the entry's
    ``own`` map does not override), quantity ``big``[k] >= quantity ``small``[k]."""
    return (
        f"{keys}.all(k, !(k in {other}) || (has({own}) && k in {own}) || "
        + cel_quantity_at_least(f"{big}[k]", f"{small}[k]")
        + ")"
    )


_MISSING = (
    "{"
    + ", ".join(
        f"'{t}': [" + ", ".join(f"'{p}'" for p in PRECISIONS if p not in k.precisions) + "]"
        for t, k in sorted(KNOWN_ACCELERATORS.items())
        if set(PRECISIONS) - set(k.precisions)
    )
    + "}"
)

#: Rules over the job's pod settings and its entries' (``self`` is the spec).
SPEC_POD_VALIDATIONS: Final = (
    _cel(
        f"!has(self.nodeSelector) || !('{LABEL_ACCELERATOR}' in self.nodeSelector)",
        f"spec.nodeSelector {MSG_SELECTOR_TYPE_LABEL}",
        ".nodeSelector",
    ),
    _cel(
        "!has(self.precision) || self.accelerators.all(a, has(a.precision) || "
        f"!(a.type in {_MISSING}) || !(self.precision in {_MISSING}[a.type]))",
        MSG_SPEC_PRECISION,
        ".precision",
    ),
    _cel(
        "!has(self.resources) || self.accelerators.all(a, !has(a.resources) || ("
        "(!has(self.resources.requests) || !has(a.resources.limits) || "
        + _merged_limit_rule(
            "a.resources.limits",
            "self.resources.requests",
            "a.resources.requests",
            big="a.resources.limits",
            small="self.resources.requests",
        )
        + ") && (!has(self.resources.limits) || !has(a.resources.requests) || "
        + _merged_limit_rule(
            "a.resources.requests",
            "self.resources.limits",
            "a.resources.limits",
            big="self.resources.limits",
            small="a.resources.requests",
        )
        + ")))",
        MSG_MERGED_LIMIT,
        ".accelerators",
    ),
)


def _merge(job: Mapping[str, Any] | None, own: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**(job or {}), **(own or {})}


def pod_settings_problems(spec: HeteroTrainJobSpec) -> list[str]:
    """What :data:`SPEC_POD_VALIDATIONS` refuse, as messages naming the field."""
    out = []
    if LABEL_ACCELERATOR in spec.node_selector:
        out.append(f"spec.nodeSelector {MSG_SELECTOR_TYPE_LABEL}")
    for i, a in enumerate(spec.accelerators):
        if (
            spec.precision is not None
            and a.precision is None
            and not hc.supports_precision(a.type, spec.precision)
        ):
            out.append(f"{MSG_SPEC_PRECISION} (spec.accelerators[{i}]: {a.type} lacks {spec.precision})")
        job = spec.resources or WorkerResources()
        own = a.resources or WorkerResources()
        below = limit_below_request(_merge(job.requests, own.requests), _merge(job.limits, own.limits))
        if below and a.resources is not None:
            out.append(f"{MSG_MERGED_LIMIT} (spec.accelerators[{i}].resources: {', '.join(below)})")
    return out


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
                *SPEC_POD_VALIDATIONS,
            ]
        }
    )

    image: str = Field(
        min_length=1,
        max_length=4096,
        description="Container image of the workers, unless their accelerator entry sets its own image.",
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
    precision: Precision | None = Field(
        default=None,
        description=(
            "Numeric format the workers should train in (bf16, fp16, fp8, int8) unless their accelerator "
            "entry sets its own: a hint handed to the training script as HETEROTRAIN_PRECISION. Every "
            "known type that takes it must compute it natively."
        ),
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
        problems = pod_settings_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
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
PHASE_PENDING: Final = "Pending"
PHASE_ADMITTED: Final = "Admitted"
PHASE_RUNNING: Final = "Running"
PHASE_RECOVERING: Final = "Recovering"
PHASE_SUSPENDED: Final = "Suspended"
PHASE_SUCCEEDED: Final = "Succeeded"
PHASE_FAILED: Final = "Failed"
PHASES: Final[tuple[Phase, ...]] = (
    PHASE_PENDING,
    PHASE_ADMITTED,
    PHASE_RUNNING,
    PHASE_RECOVERING,
    PHASE_SUSPENDED,
    PHASE_SUCCEEDED,
    PHASE_FAILED,
)
TERMINAL_PHASES: Final[frozenset[Phase]] = frozenset({PHASE_SUCCEEDED, PHASE_FAILED})
#: Phases in which the operator is still working towards the spec (kstatus Reconciling, unless Stalled).
PROGRESSING_PHASES: Final[frozenset[Phase]] = frozenset({PHASE_PENDING, PHASE_ADMITTED, PHASE_RECOVERING})

# Condition types.  Ready/Reconciling/Stalled follow kstatus conventions: Reconciling and Stalled are
# never both True.
CONDITION_READY: Final = "Ready"
CONDITION_RECONCILING: Final = "Reconciling"
CONDITION_STALLED: Final = "Stalled"
CONDITION_ADMITTED: Final = "Admitted"
CONDITION_RUNNING: Final = "Running"
CONDITION_RECOVERING: Final = "Recovering"
CONDITION_SUSPENDED: Final = "Suspended"
CONDITION_SUCCEEDED: Final = "Succeeded"
CONDITION_FAILED: Final = "Failed"
#: A warning: some listed accelerator types have no node (or none offering their resource); the job runs on
#: the others and takes nodes of the missing types when they join.  (No type at all: Stalled instead.)
CONDITION_ACCELERATORS_MISSING: Final = "AcceleratorsMissing"
#: Every condition type, in the order status.conditions lists them (every type, every time).
CONDITION_TYPES: Final = (
    CONDITION_READY,
    CONDITION_RECONCILING,
    CONDITION_STALLED,
    CONDITION_ADMITTED,
    CONDITION_RUNNING,
    CONDITION_RECOVERING,
    CONDITION_SUSPENDED,
    CONDITION_SUCCEEDED,
    CONDITION_FAILED,
    CONDITION_ACCELERATORS_MISSING,
)
#: The reason of a condition that does not apply in the current phase (status False).
REASON_NOT_APPLICABLE: Final = "NotApplicable"

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
    """Worker counts of one accelerator type (one pool), and what its workers are asked to do."""

    desired: int = Field(default=0, ge=0, description="Workers of this type in the current plan.")
    ready: int = Field(default=0, ge=0, description="Workers of this type running and in the world.")
    precision: Precision | None = Field(
        default=None,
        description="Numeric format this type's workers are asked to train in (HETEROTRAIN_PRECISION).",
    )
    max_micro_batch: int | None = Field(
        default=None,
        ge=1,
        description=(
            "The micro-batch cap in force for this type: spec.accelerators[].maxMicroBatch, or lower "
            "after its workers ran out of memory (halved per out-of-memory failure)."
        ),
    )


class WorkersStatus(StatusModel):
    """Worker counts."""

    desired: int = Field(default=0, ge=0, description="Workers in the current plan.")
    ready: int = Field(default=0, ge=0, description="Workers running and part of the current world.")
    # None, not {}, while no type has workers: server-side apply would store an empty map as null.
    by_type: dict[str, TypeWorkers] | None = Field(default=None, description="Counts per accelerator type.")


class MemberStatus(StatusModel):
    """One worker pod of the current world (heterotrain_contract.Member)."""

    pod: str = Field(description="Worker pod name.")
    rank: int = Field(
        ge=0,
        description=(
            "The pod's rank among the members, 0..members - 1 (torchrun's GROUP_RANK). Its training "
            "processes take the global ranks pod by pod: the processes of the pods of lower rank first."
        ),
    )
    type: str = Field(description="Accelerator type of the worker.")
    address: str = Field(description="Pod IP the worker is reachable at.")
    weight: float = Field(
        ge=0,
        description="Relative speed of the whole pod; each of its processes weighs weight / slots.",
    )
    max_micro_batch: int | None = Field(
        default=None,
        ge=1,
        description="Its type's micro-batch cap in force (status.workers.byType); unset: no cap.",
    )
    slots: int = Field(
        default=1,
        ge=1,
        le=MAX_SLOTS,
        description="Training processes in the pod, one per accelerator it requested (LOCAL_WORLD_SIZE).",
    )


class MembershipStatus(StatusModel):
    """The world the workers form (heterotrain_contract.Membership.to_dict()).

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
        default=0,
        ge=0,
        description="Worker failures handled so far, in place or by a new pod (compared with maxRestarts).",
    )
    in_place_restarts: int | None = Field(
        default=None, ge=0, description="Of restarts: processes restarted in their own pod by the launcher."
    )
    pod_restarts: int | None = Field(
        default=None, ge=0, description="Of restarts: workers replaced by a new pod (pod, node or hang lost)."
    )
    counted_process_restarts: dict[str, int] | None = Field(
        default=None,
        description="In-place restarts of each current worker as counted so far (from status.progress).",
    )
    last_failure: FailureStatus | None = None
    failures: list[FailureStatus] | None = Field(
        default=None, description="The last 10 failures, the newest last."
    )
    avoided_nodes: list[AvoidedNode] | None = Field(
        default=None,
        description="Nodes that get no new worker of this job for now (repeated failures, lost).",
    )
    progress: ProgressStatus | None = Field(
        default=None, description="Every rank's progress and liveness, written by the runtime."
    )
    last_checkpoint: CheckpointStatus | None = None
    start_time: Time | None = Field(default=None, description="When the job first started running.")
    completion_time: Time | None = Field(default=None, description="When the job Succeeded or Failed.")

    def to_apply(self) -> dict[str, Any]:
        """The Kubernetes form of the fields this status was built with: what a server-side apply
        of it owns.  Unset and None fields are left out, never sent as null."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)

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
