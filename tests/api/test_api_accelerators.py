"""The known-accelerator table and resolve_accelerators()."""

from __future__ import annotations

import re
from typing import Any

import pytest

from heterotrain_api import (
    KNOWN_ACCELERATORS,
    AcceleratorResolutionError,
    parse_spec,
    resolve_accelerators,
)
from heterotrain_api.acceleratorspec import DNS1123_LABEL_PATTERN, RESOURCE_NAME_PATTERN

REQUIRED_TYPES = {
    "nvidia-h100",
    "nvidia-h200",
    "nvidia-a100",
    "nvidia-h20",
    "nvidia-l40s",
    "nvidia-v100",
    "huawei-ascend-910b",
    "amd-mi300x",
    "amd-mi250x",
}


def spec(*accelerators: dict[str, Any], workers_min: int = 1) -> Any:
    return parse_spec(
        {
            "image": "img",
            "command": ["python"],
            "workers": {"min": workers_min, "max": 8},
            "accelerators": list(accelerators),
            "globalBatchSize": 64,
        }
    )


def test_table_covers_the_documented_types() -> None:
    assert set(KNOWN_ACCELERATORS) >= REQUIRED_TYPES


@pytest.mark.parametrize("name", sorted(KNOWN_ACCELERATORS))
def test_table_entries_are_valid(name: str) -> None:
    k = KNOWN_ACCELERATORS[name]
    assert k.type == name
    assert re.match(DNS1123_LABEL_PATTERN, name) and len(name) <= 63
    assert re.match(RESOURCE_NAME_PATTERN, k.resource_name)
    assert k.relative_throughput > 0
    assert k.basis  # every figure documents where it comes from
    assert k.backend == {"nvidia": "nccl", "amd": "rccl", "huawei": "hccl"}[k.vendor]


def test_a100_is_the_reference() -> None:
    assert KNOWN_ACCELERATORS["nvidia-a100"].relative_throughput == 1.0
    assert (
        KNOWN_ACCELERATORS["nvidia-h100"].relative_throughput
        > KNOWN_ACCELERATORS["nvidia-a100"].relative_throughput
    )
    assert KNOWN_ACCELERATORS["nvidia-v100"].relative_throughput < 1.0


def test_known_types_are_filled_in() -> None:
    resolved = resolve_accelerators(
        spec(
            {"type": "nvidia-h100", "perWorker": 8},
            {"type": "huawei-ascend-910b"},
            {"type": "amd-mi300x", "maxWorkers": 2},
        )
    )
    assert [(r.index, r.type, r.resource_name, r.backend, r.vendor, r.known) for r in resolved] == [
        (0, "nvidia-h100", "nvidia.com/gpu", "nccl", "nvidia", True),
        (1, "huawei-ascend-910b", "huawei.com/Ascend910", "hccl", "huawei", True),
        (2, "amd-mi300x", "amd.com/gpu", "rccl", "amd", True),
    ]
    assert resolved[0].relative_throughput == KNOWN_ACCELERATORS["nvidia-h100"].relative_throughput
    assert resolved[0].worker_weight == pytest.approx(8 * resolved[0].relative_throughput)
    assert resolved[2].max_workers == 2 and resolved[0].max_workers is None


def test_explicit_values_win() -> None:
    (r,) = resolve_accelerators(
        spec(
            {
                "type": "nvidia-a100",
                "resourceName": "nvidia.com/mig-3g.40gb",
                "relativeThroughput": 0.45,
                "backend": "gloo",
            }
        )
    )
    assert (r.resource_name, r.relative_throughput, r.backend, r.vendor) == (
        "nvidia.com/mig-3g.40gb",
        0.45,
        "gloo",
        "nvidia",
    )


def test_unknown_type_with_resource_name() -> None:
    (a, b) = resolve_accelerators(
        spec(
            {"type": "acme-x1", "resourceName": "acme.example.com/x1"},
            {"type": "new-amd", "resourceName": "amd.com/gpu"},
        )
    )
    assert (a.vendor, a.backend, a.relative_throughput, a.known) == ("other", "gloo", 1.0, False)
    assert (b.vendor, b.backend) == ("amd", "rccl")


def test_unknown_type_without_resource_name_names_the_field() -> None:
    with pytest.raises(AcceleratorResolutionError) as e:
        resolve_accelerators(spec({"type": "nvidia-a100"}, {"type": "mystery-npu"}))
    assert e.value.field_path == "spec.accelerators[1].resourceName"
    assert str(e.value).startswith(
        "spec.accelerators[1].resourceName: required for accelerator type 'mystery-npu'"
    )
    assert "nvidia-a100" in str(e.value)  # lists the known types
    assert e.value.reason == "UnknownAcceleratorType"
    assert isinstance(e.value, ValueError)
