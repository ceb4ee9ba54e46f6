"""The one table of known accelerator types: vendor, extended resource, speed, and the basis of each figure.

``type`` is the value of the node label ``heterotrain.io/accelerator`` on a pool's
nodes.  The API fills a job's defaults from this table (``heterotrain_api.accelerators``),
the operator publishes worker weights from it, and the runtime's local mode emulates
speeds from it.

About ``relative_throughput``
-----------------------------
It is the speed of ONE device (one unit of ``resource_name``) relative to one
NVIDIA A100 (= 1.0), and it is a *prior*: the ratio of peak dense (no
sparsity) BF16 tensor throughput from the vendor's datasheet, rounded to two
decimals.  Realized training speed also depends on memory bandwidth,
interconnect and software maturity, and is often lower than the peak ratio
suggests (notably for the newer parts).  Users who measured their model set
``relativeThroughput`` explicitly, and that always wins.

About ``precisions``
--------------------
The numeric formats the device's tensor units compute natively, from the same
datasheets: FP8 from Hopper, Ada and Blackwell (NVIDIA) and CDNA3 (AMD) on; no
BF16 on Volta.  A job whose ``precision`` a listed known type lacks is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Backend = Literal["nccl", "hccl", "rccl", "gloo"]
Vendor = Literal["nvidia", "amd", "huawei", "other"]
#: Numeric formats a job may ask its training processes to compute in (a hint handed to the script).
Precision = Literal["bf16", "fp16", "fp8", "int8"]
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp16", "fp8", "int8")

_NO_FP8: frozenset[Precision] = frozenset({"bf16", "fp16", "int8"})  # Ampere, Ascend 910B, CDNA2
_FP8: frozenset[Precision] = frozenset(PRECISIONS)  # Hopper, Ada, Blackwell, CDNA3

NVIDIA_GPU = "nvidia.com/gpu"
AMD_GPU = "amd.com/gpu"
ASCEND_NPU = "huawei.com/Ascend910"  # the Ascend device plugin's name for the 910 and 910B series

#: The default intra-pool backend of each vendor (``gloo`` for anything else).
VENDOR_BACKENDS: Mapping[Vendor, Backend] = MappingProxyType(
    {"nvidia": "nccl", "amd": "rccl", "huawei": "hccl", "other": "gloo"}
)

#: The vendor of an unknown type is guessed from the domain of its resourceName (in a job's spec) ...
RESOURCE_DOMAIN_VENDORS: Mapping[str, Vendor] = MappingProxyType(
    {"nvidia.com": "nvidia", "amd.com": "amd", "huawei.com": "huawei"}
)

#: ... or, where only the type is known (the runtime without the operator), from the type's prefix.
TYPE_PREFIX_VENDORS: Mapping[str, Vendor] = MappingProxyType(
    {"nvidia": "nvidia", "amd": "amd", "huawei": "huawei"}
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
    #: The formats its tensor units compute natively (the vendor's datasheet); a job asking for another
    #: precision on this type is refused by the API server.
    precisions: frozenset[Precision] = _FP8

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
        _NO_FP8,
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
        frozenset({"fp16"}),
    ),
    # --- Huawei: resource huawei.com/Ascend910 (Ascend device plugin), backend HCCL.
    KnownAccelerator(
        "huawei-ascend-910b",
        "huawei",
        ASCEND_NPU,
        1.00,
        "Ascend 910B: ~313-376 TFLOPS FP16/BF16 depending on SKU (910B3..910B1), A100-class.",
        _NO_FP8,
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
        _NO_FP8,
    ),
)


def supports_precision(type_: str, precision: str) -> bool:
    """Whether a type computes in ``precision`` natively (an unknown type: assumed so)."""
    known = KNOWN_ACCELERATORS.get(type_)
    return known is None or precision in known.precisions


def known_accelerator(type_: str) -> KnownAccelerator | None:
    """The table entry of a type, or None."""
    return KNOWN_ACCELERATORS.get(type_)


def vendor_of_resource(resource_name: str) -> Vendor:
    """The vendor owning an extended resource name (``nvidia.com/gpu`` -> ``nvidia``)."""
    domain = resource_name.split("/", 1)[0]
    return RESOURCE_DOMAIN_VENDORS.get(domain, "other")


def relative_throughput(type_: str) -> float:
    """The speed of one device of a type relative to an A100 (:data:`DEFAULT_RELATIVE_THROUGHPUT` when unknown)."""
    known = KNOWN_ACCELERATORS.get(type_)
    return known.relative_throughput if known is not None else DEFAULT_RELATIVE_THROUGHPUT


def vendor_of_type(type_: str) -> Vendor:
    """The vendor of a type: the table's, else guessed from the type's prefix (``nvidia-...``)."""
    known = KNOWN_ACCELERATORS.get(type_)
    if known is not None:
        return known.vendor
    return TYPE_PREFIX_VENDORS.get(type_.split("-", 1)[0], "other")


def default_backend(type_: str) -> Backend:
    """The intra-pool backend of a type, as the API names it (``gloo`` for an unknown vendor)."""
    return VENDOR_BACKENDS[vendor_of_type(type_)]


def torch_backend(backend: str) -> str:
    """The name torch knows a backend by: ROCm builds of torch expose RCCL as ``nccl``."""
    name = (backend or "gloo").lower()
    return "nccl" if name == "rccl" else name
