"""Known accelerator types, and the resolution of a job's accelerator defaults.

``spec.accelerators[].type`` is the value of the node label
``heterotrain.io/accelerator`` on a pool's nodes.  For the types below the
operator fills in what the user left out: the extended resource to request
(``resourceName``), the intra-pool collective backend (``backend``) and the
relative speed used to split the global batch (``relativeThroughput``).

About ``relative_throughput``
-----------------------------
It is the speed of ONE device (one unit of ``resource_name``) relative to one
NVIDIA A100 (= 1.0), and it is a *prior*: the ratio of peak dense (no
sparsity) BF16 tensor throughput from the vendor's datasheet, rounded to two
decimals.  Realized training speed also depends on memory bandwidth,
interconnect and software maturity, and is often lower than the peak ratio
suggests (notably for the newer parts).  Users who measured their model set
``relativeThroughput`` explicitly, and that always wins.

A worker's share of the global batch is proportional to
``relative_throughput * per_worker`` (see :attr:`ResolvedAccelerator.worker_weight`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .v1alpha1 import AcceleratorSpec, HeteroTrainJobSpec

Backend = Literal["nccl", "hccl", "rccl", "gloo"]
Vendor = Literal["nvidia", "amd", "huawei", "other"]

NVIDIA_GPU = "nvidia.com/gpu"
AMD_GPU = "amd.com/gpu"
ASCEND_NPU = "huawei.com/Ascend910"  # the Ascend device plugin's name for the 910 and 910B series

#: The default intra-pool backend of each vendor (``gloo`` for anything else).
VENDOR_BACKENDS: Mapping[Vendor, Backend] = MappingProxyType(
    {"nvidia": "nccl", "amd": "rccl", "huawei": "hccl", "other": "gloo"}
)

#: The vendor of an unknown type is guessed from the domain of its resourceName.
RESOURCE_DOMAIN_VENDORS: Mapping[str, Vendor] = MappingProxyType(
    {"nvidia.com": "nvidia", "amd.com": "amd", "huawei.com": "huawei"}
)

#: relativeThroughput of a type that is neither known nor given one.
DEFAULT_RELATIVE_THROUGHPUT = 1.0

#: The reference device: relative_throughput 1.0 = one A100.
A100_BF16_DENSE_TFLOPS = 312.0


@dataclass(frozen=True)
class KnownAccelerator:
    """Defaults for one well-known accelerator type."""

    type: str
    vendor: Vendor
    resource_name: str
    relative_throughput: float
    basis: str  # where relative_throughput comes from

    @property
    def backend(self) -> Backend:
        return VENDOR_BACKENDS[self.vendor]


def _known(*entries: KnownAccelerator) -> Mapping[str, KnownAccelerator]:
    return MappingProxyType({e.type: e for e in sorted(entries, key=lambda e: e.type)})


#: The known accelerator types, keyed by type (the node label value).
KNOWN_ACCELERATORS: Mapping[str, KnownAccelerator] = _known(
    # --- NVIDIA: resource nvidia.com/gpu (NVIDIA device plugin / GPU operator), backend NCCL.
    KnownAccelerator(
        "nvidia-a100",
        "nvidia",
        NVIDIA_GPU,
        1.00,
        "A100 SXM: 312 TFLOPS dense BF16 (the reference).",
    ),
    KnownAccelerator(
        "nvidia-h100",
        "nvidia",
        NVIDIA_GPU,
        3.17,
        "H100 SXM5: 989 TFLOPS dense BF16 / 312 (the PCIe card has 756, i.e. 2.42).",
    ),
    KnownAccelerator(
        "nvidia-h200",
        "nvidia",
        NVIDIA_GPU,
        3.17,
        "H200 SXM: 989 TFLOPS dense BF16 / 312 (H100 compute; more and faster HBM3e).",
    ),
    KnownAccelerator(
        "nvidia-h20",
        "nvidia",
        NVIDIA_GPU,
        0.47,
        "H20: 148 TFLOPS dense BF16 / 312.",
    ),
    KnownAccelerator(
        "nvidia-b200",
        "nvidia",
        NVIDIA_GPU,
        7.21,
        "B200 (HGX): 2250 TFLOPS dense BF16 / 312.",
    ),
    KnownAccelerator(
        "nvidia-l40s",
        "nvidia",
        NVIDIA_GPU,
        1.16,
        "L40S: 362 TFLOPS dense BF16 / 312 (GDDR6 at 864 GB/s; realized training speed is lower).",
    ),
    KnownAccelerator(
        "nvidia-l4",
        "nvidia",
        NVIDIA_GPU,
        0.39,
        "L4: 121 TFLOPS dense BF16 / 312.",
    ),
    KnownAccelerator(
        "nvidia-v100",
        "nvidia",
        NVIDIA_GPU,
        0.40,
        "V100 SXM2: no BF16 support; 125 TFLOPS FP16 tensor / 312 (train in FP16 on this pool).",
    ),
    # --- Huawei: resource huawei.com/Ascend910 (Ascend device plugin), backend HCCL.
    KnownAccelerator(
        "huawei-ascend-910b",
        "huawei",
        ASCEND_NPU,
        1.00,
        "Ascend 910B: ~313-376 TFLOPS FP16/BF16 depending on SKU (910B3..910B1), A100-class.",
    ),
    # --- AMD: resource amd.com/gpu (ROCm device plugin), backend RCCL.
    KnownAccelerator(
        "amd-mi300x",
        "amd",
        AMD_GPU,
        4.19,
        "MI300X: 1307 TFLOPS dense BF16 / 312 (realized speed depends heavily on the ROCm stack).",
    ),
    KnownAccelerator(
        "amd-mi325x",
        "amd",
        AMD_GPU,
        4.19,
        "MI325X: 1307 TFLOPS dense BF16 / 312 (MI300X compute, more HBM3e).",
    ),
    KnownAccelerator(
        "amd-mi250x",
        "amd",
        AMD_GPU,
        0.61,
        "MI250X: 383 TFLOPS dense BF16 per module of two GCDs; the device plugin exposes each GCD "
        "as one amd.com/gpu, so 191.5 / 312 per device.",
    ),
)


def known_accelerator(type_: str) -> KnownAccelerator | None:
    """The table entry of a type, or None."""
    return KNOWN_ACCELERATORS.get(type_)


def vendor_of_resource(resource_name: str) -> Vendor:
    """The vendor owning an extended resource name (``nvidia.com/gpu`` -> ``nvidia``)."""
    domain = resource_name.split("/", 1)[0]
    return RESOURCE_DOMAIN_VENDORS.get(domain, "other")


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


def resolve_accelerator(option: AcceleratorSpec, index: int) -> ResolvedAccelerator:
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
    )


def resolve_accelerators(spec: HeteroTrainJobSpec) -> list[ResolvedAccelerator]:
    """Resolve every entry of ``spec.accelerators``, in order.

    Raises :class:`AcceleratorResolutionError` naming the first entry that
    cannot be resolved (an unknown type without ``resourceName``).
    """
    return [resolve_accelerator(option, i) for i, option in enumerate(spec.accelerators)]
