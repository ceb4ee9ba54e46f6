"""The resolution of a job's accelerator defaults.

``spec.accelerators[].type`` is the value of the node label
``heterotrain.io/accelerator`` on a pool's nodes.  For the types of the one table
of known accelerators (:data:`heterotrain_contract.KNOWN_ACCELERATORS`, where the
meaning and basis of each ``relative_throughput`` are documented) the operator
fills in what the user left out: the extended resource to request
(``resourceName``), the intra-pool collective backend (``backend``) and the
relative speed used to split the global batch (``relativeThroughput``).

A worker's share of the global batch is proportional to
``relative_throughput * per_worker`` (see :attr:`ResolvedAccelerator.worker_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heterotrain_contract import (
    DEFAULT_RELATIVE_THROUGHPUT,
    KNOWN_ACCELERATORS,
    VENDOR_BACKENDS,
    Backend,
    KnownAccelerator,
    Precision,
    Vendor,
    known_accelerator,
    vendor_of_resource,
)

if TYPE_CHECKING:
    from ._base import EnvVar, Toleration
    from .acceleratorspec import AcceleratorSpec
    from .v1alpha1 import HeteroTrainJobSpec

__all__ = [
    "DEFAULT_RELATIVE_THROUGHPUT",
    "KNOWN_ACCELERATORS",
    "VENDOR_BACKENDS",
    "AcceleratorResolutionError",
    "Backend",
    "KnownAccelerator",
    "PodSettings",
    "ResolvedAccelerator",
    "Vendor",
    "known_accelerator",
    "resolve_accelerator",
    "resolve_accelerators",
    "vendor_of_resource",
]


Pairs = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class PodSettings:
    """The pod settings of one type's workers: the job's, with the entry's merged over them.

    The merge rules (``kubectl explain htj.spec.accelerators``): image and precision are replaced;
    env is merged by name (the entry's value wins, its new names come after the job's); requests,
    limits and nodeSelector are merged key by key (the entry's value wins); tolerations are added.
    """

    image: str = ""
    env: tuple[EnvVar, ...] = ()
    requests: Pairs = ()
    limits: Pairs = ()
    node_selector: Pairs = ()
    tolerations: tuple[Toleration, ...] = ()
    precision: Precision | None = None

    @classmethod
    def merge(cls, job: HeteroTrainJobSpec, entry: AcceleratorSpec) -> PodSettings:
        own_env = {e.name: e for e in entry.env or ()}
        env = [own_env.pop(e.name, e) for e in job.env] + list(own_env.values())
        job_res, own_res = job.resources, entry.resources

        def pairs(a: dict[str, Any] | None, b: dict[str, Any] | None) -> Pairs:
            return tuple(sorted({**(a or {}), **(b or {})}.items()))

        return cls(
            image=entry.image or job.image,
            env=tuple(env),
            requests=pairs(job_res.requests if job_res else None, own_res.requests if own_res else None),
            limits=pairs(job_res.limits if job_res else None, own_res.limits if own_res else None),
            node_selector=pairs(job.node_selector, entry.node_selector),
            tolerations=(*job.tolerations, *(t for t in entry.tolerations or () if t not in job.tolerations)),
            precision=entry.precision or job.precision,
        )


@dataclass(frozen=True)
class ResolvedAccelerator:
    """One entry of ``spec.accelerators`` with every default filled in."""

    index: int  # position in spec.accelerators
    type: str
    resource_name: str
    per_worker: int
    relative_throughput: float
    backend: Backend
    vendor: Vendor
    max_workers: int | None
    known: bool  # whether the type is in KNOWN_ACCELERATORS
    pod: PodSettings = field(default_factory=PodSettings)  # its workers' pod settings (job's + entry's)

    @property
    def worker_weight(self) -> float:
        """The relative speed of one worker of this type (relative_throughput x per_worker)."""
        return self.relative_throughput * self.per_worker


class AcceleratorResolutionError(ValueError):
    """A spec whose accelerator defaults cannot be resolved; the operator reports it as Stalled.

    ``field_path`` names the offending field (``spec.accelerators[2].resourceName``);
    ``reason`` is a CamelCase condition reason.
    """

    reason = "UnknownAcceleratorType"

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


def resolve_accelerator(
    option: AcceleratorSpec, index: int, job: HeteroTrainJobSpec | None = None
) -> ResolvedAccelerator:
    """Fill in the defaults of ``spec.accelerators[index]``.

    Explicit values always win.  A known type supplies its resourceName,
    backend and relativeThroughput; an unknown type must name its
    resourceName (the vendor, and so the backend, is guessed from its
    domain, and relativeThroughput defaults to 1.0).
    """
    known = KNOWN_ACCELERATORS.get(option.type)
    resource_name = option.resource_name
    if resource_name is None:
        if known is None:
            raise AcceleratorResolutionError(
                f"spec.accelerators[{index}].resourceName",
                f"required for accelerator type {option.type!r}, which is not a known type "
                f"(known types: {', '.join(KNOWN_ACCELERATORS)})",
            )
        resource_name = known.resource_name
    if known is not None and option.resource_name in (None, known.resource_name):
        vendor: Vendor = known.vendor
    else:
        vendor = vendor_of_resource(resource_name)
    if option.relative_throughput is not None:
        relative_throughput = option.relative_throughput
    elif known is not None:
        relative_throughput = known.relative_throughput
    else:
        relative_throughput = DEFAULT_RELATIVE_THROUGHPUT
    return ResolvedAccelerator(
        index=index,
        type=option.type,
        resource_name=resource_name,
        per_worker=option.per_worker,
        relative_throughput=relative_throughput,
        backend=option.backend if option.backend is not None else VENDOR_BACKENDS[vendor],
        vendor=vendor,
        max_workers=option.max_workers,
        known=known is not None,
        pod=PodSettings.merge(job, option) if job is not None else PodSettings(),
    )


def resolve_accelerators(spec: HeteroTrainJobSpec) -> list[ResolvedAccelerator]:
    """Resolve every entry of ``spec.accelerators``, in order.

    Raises :class:`AcceleratorResolutionError` naming the first entry that
    cannot be resolved (an unknown type without ``resourceName``).
    """
    return [resolve_accelerator(option, i, spec) for i, option in enumerate(spec.accelerators)]
