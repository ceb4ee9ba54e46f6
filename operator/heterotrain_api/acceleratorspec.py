"""``spec.accelerators[]``: one accelerator type (one node pool) of a job, with its own pod settings.

Each entry may set, for the workers of its type only, what the job sets for all of them: ``image``,
``env``, ``resources``, ``nodeSelector``, ``tolerations`` and ``precision``.  The merge rules are in
the field descriptions (``kubectl explain htj.spec.accelerators``); the combinations that cannot
work are refused by the API server (CEL rules of the CRD) and by these types alike, with a message
that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import ConfigDict, Field, StringConstraints, model_validator

import heterotrain_contract as hc
from heterotrain_contract import KNOWN_ACCELERATORS, LABEL_ACCELERATOR, MAX_SLOTS, PRECISIONS, Precision

from ._base import EnvVar, SpecModel, Toleration, WorkerResources, cel
from .accelerators import Backend

DNS1123_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
RESOURCE_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
MAX_WORKERS: Final = 10000

AcceleratorType = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=DNS1123_LABEL_PATTERN)
]

#: What the operator sets on every worker from the spec; a per-type env may not set it (it would be
#: overwritten, or contradict a field).  HETEROTRAIN_METRICS_PORT stays the user's to choose.
RESERVED_ENV: Final = tuple(
    sorted(getattr(hc, n) for n in dir(hc) if n.startswith("ENV_") and n != "ENV_METRICS_PORT")
)

# --- messages of the rules (CEL in the CRD, validators here) ---------------------------------------
MSG_SELECTOR_TYPE_LABEL: Final = (
    f"must not set {LABEL_ACCELERATOR}: the accelerator type selects the pool's nodes"
)
MSG_RESERVED_ENV: Final = (
    "must not set a variable the operator sets from the spec (" + ", ".join(RESERVED_ENV) + "); "
    "use the field it comes from (for HETEROTRAIN_PRECISION: precision)"
)
MSG_ACCELERATOR_RESOURCE: Final = (
    "must not name the type's accelerator resource (resourceName): perWorker sets its requests and limits"
)
MSG_PRECISION_UNSUPPORTED: Final = "the accelerator type does not compute in this precision natively"


def _missing_precisions() -> dict[str, list[str]]:
    """Known type -> the precisions it lacks (types that have them all are left out)."""
    out: dict[str, list[str]] = {}
    for t, k in KNOWN_ACCELERATORS.items():
        lacking: list[str] = [p for p in PRECISIONS if p not in k.precisions]
        if lacking:
            out[t] = lacking
    return out


def _cel_map(m: Mapping[str, Any]) -> str:
    def value(v: Any) -> str:
        return "[" + ", ".join(f"'{x}'" for x in v) + "]" if isinstance(v, list) else f"'{v}'"

    return "{" + ", ".join(f"'{k}': {value(v)}" for k, v in sorted(m.items())) + "}"


_KNOWN_RESOURCES = _cel_map({t: k.resource_name for t, k in KNOWN_ACCELERATORS.items()})
_ACCELERATOR_RESOURCE = f"(has(self.resourceName) ? self.resourceName : ({_KNOWN_RESOURCES}[self.type]))"

#: The rules of one entry (``self`` is the entry), in the order the validators below check them.
ACCELERATOR_VALIDATIONS: Final = (
    cel(
        f"!has(self.nodeSelector) || !('{LABEL_ACCELERATOR}' in self.nodeSelector)",
        f"spec.accelerators[].nodeSelector {MSG_SELECTOR_TYPE_LABEL}",
        ".nodeSelector",
    ),
    cel(
        "!has(self.env) || self.env.all(e, !(e.name in [" + ", ".join(f"'{n}'" for n in RESERVED_ENV) + "]))",
        f"spec.accelerators[].env {MSG_RESERVED_ENV}",
        ".env",
    ),
    cel(
        f"!has(self.resources) || !(has(self.resourceName) || self.type in {_KNOWN_RESOURCES}) || ("
        f"(!has(self.resources.requests) || !({_ACCELERATOR_RESOURCE} in self.resources.requests)) && "
        f"(!has(self.resources.limits) || !({_ACCELERATOR_RESOURCE} in self.resources.limits)))",
        f"spec.accelerators[].resources {MSG_ACCELERATOR_RESOURCE}",
        ".resources",
    ),
    cel(
        f"!has(self.precision) || !(self.type in {_cel_map(_missing_precisions())}) || "
        f"!(self.precision in {_cel_map(_missing_precisions())}[self.type])",
        f"spec.accelerators[].precision: {MSG_PRECISION_UNSUPPORTED}",
        ".precision",
        message_expression=(
            "'spec.accelerators[].precision: ' + self.type + ' does not compute in ' + self.precision "
            "+ ' natively'"
        ),
    ),
)


def _known_types_text() -> str:
    return ", ".join(KNOWN_ACCELERATORS)


class AcceleratorSpec(SpecModel):
    """One accelerator type (one node pool) the job may run workers on, and the pod settings of its
    workers where they differ from the job's."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": list(ACCELERATOR_VALIDATIONS)})

    type: AcceleratorType = Field(
        description=(
            "Accelerator type: a DNS-1123 label equal to the value of the node label "
            f"{LABEL_ACCELERATOR} of the pool's nodes. Workers of this type are scheduled on "
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
        default=1,
        ge=1,
        le=MAX_SLOTS,
        description=(
            "Accelerators (units of resourceName) per worker pod (1..64). The pod runs one training "
            "process per accelerator (torchrun-style: RANK, WORLD_SIZE over all pods, LOCAL_RANK, "
            "LOCAL_WORLD_SIZE), each with its share of the global batch."
        ),
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
    max_micro_batch: int | None = Field(
        default=None,
        ge=1,
        le=1 << 20,
        description=(
            "Most samples one training process of this type puts through one forward pass (its "
            "device memory's limit). A process whose share of the global batch is larger accumulates "
            "gradients over several micro-batches inside the step, with the same update. When a worker "
            "of this type runs out of memory (its container OOMKilled, or the framework's "
            "out-of-memory error) the operator halves this type's cap in force (or, without one, the "
            "largest share of a process of this type), the worker is replaced and the job goes on; "
            "status.workers.byType shows the cap in force."
        ),
    )
    # --- the workers' pod settings, over the job's -----------------------------------------------
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "Container image of the workers of this type, instead of spec.image (e.g. a CUDA build of "
            "the training image for NVIDIA pools and a CANN build for Ascend pools)."
        ),
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=512,
        description=(
            "Environment variables of the workers of this type, merged by name over spec.env: a name "
            "set in both takes this value, the others are added. The variables the operator sets "
            "(HETEROTRAIN_...) are refused here."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    resources: WorkerResources | None = Field(
        default=None,
        description=(
            "Resources of each worker of this type, merged key by key over spec.resources: a resource "
            "named here (in requests or in limits) takes this value, the others keep the job's. The "
            "accelerator resource itself is set from perWorker and may not be named. After the merge "
            "every limit must be at least its request."
        ),
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Node labels the workers of this type need, merged key by key over spec.nodeSelector (a "
            f"key in both takes this value). {LABEL_ACCELERATOR} is set from type and may not appear."
        ),
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        max_length=64,
        description="Tolerations of the workers of this type, added to spec.tolerations.",
    )
    precision: Precision | None = Field(
        default=None,
        description=(
            "Numeric format the workers of this type should train in (bf16, fp16, fp8, int8), instead "
            "of spec.precision: a hint handed to the training script as HETEROTRAIN_PRECISION "
            "(ElasticTrainer.precision) and shown in status.workers.byType. A precision a known type "
            "does not compute natively (fp8 on nvidia-a100, bf16 on nvidia-v100, ...) is refused."
        ),
    )

    @model_validator(mode="after")
    def _rules(self) -> AcceleratorSpec:
        problems = accelerator_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def accelerator_problems(a: AcceleratorSpec) -> list[str]:
    """What the CEL rules of one entry refuse, as ``<field>: <message>`` (relative to the entry)."""
    out = []
    if a.node_selector and LABEL_ACCELERATOR in a.node_selector:
        out.append(f"nodeSelector: {MSG_SELECTOR_TYPE_LABEL}")
    names = [e.name for e in a.env or ()]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        out.append(f"env: Duplicate value {', '.join(dup)} (a name appears once)")
    reserved = sorted(set(names) & set(RESERVED_ENV))
    if reserved:
        out.append(f"env: {', '.join(reserved)}: {MSG_RESERVED_ENV}")
    known = KNOWN_ACCELERATORS.get(a.type)
    resource = a.resource_name or (known.resource_name if known is not None else None)
    named = (
        set(a.resources.requests or {}) | set(a.resources.limits or {}) if a.resources is not None else set()
    )
    if resource is not None and resource in named:
        out.append(f"resources: {resource}: {MSG_ACCELERATOR_RESOURCE}")
    if a.precision is not None and not hc.supports_precision(a.type, a.precision):
        out.append(f"precision: {a.type} does not compute in {a.precision} natively")
    return out
