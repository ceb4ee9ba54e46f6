"""Cluster profiles: which node pools (accelerator types) the local cluster has.

A profile is YAML in the repo (``e2e/profiles/*.yaml``).  It is validated
strictly: an unknown field, a pool without a type, a negative count, ... is
refused with a message that names the file, the line and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from heterotrain_contract import KNOWN_ACCELERATORS, LABEL_ACCELERATOR, QUANTITY_PATTERN
from heterotrain_e2e.emulation import ANNOTATION_EMULATED_SPEED

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
QUANTITY = QUANTITY_PATTERN

ACCELERATOR_LABEL = LABEL_ACCELERATOR
RUNNER_LABEL = "heterotrain.io/runner"
POOL_LABEL = "heterotrain.io/pool"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_TAINT_KEY = "kwok.x-k8s.io/node"

# What each vendor's device plugin / feature discovery usually puts on a node of a known type (its
# extended resource is the one table's: heterotrain_contract.KNOWN_ACCELERATORS).
NODE_LABELS: dict[str, dict[str, str]] = {
    "nvidia-h100": {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.family": "hopper",
    },
    "nvidia-h200": {
        "nvidia.com/gpu.product": "NVIDIA-H200",
        "nvidia.com/gpu.memory": "143771",
        "nvidia.com/gpu.family": "hopper",
    },
    "nvidia-a100": {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "nvidia.com/gpu.memory": "81920",
        "nvidia.com/gpu.family": "ampere",
    },
    "nvidia-h20": {
        "nvidia.com/gpu.product": "NVIDIA-H20",
        "nvidia.com/gpu.memory": "97871",
        "nvidia.com/gpu.family": "hopper",
    },
    "nvidia-l40s": {
        "nvidia.com/gpu.product": "NVIDIA-L40S",
        "nvidia.com/gpu.memory": "46068",
        "nvidia.com/gpu.family": "ada-lovelace",
    },
    "huawei-ascend-910b": {"accelerator": "huawei-Ascend910", "node.kubernetes.io/npu.chip.name": "910B3"},
    "amd-mi300x": {
        "amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM",
        "amd.com/gpu.family": "AI",
        "amd.com/gpu.vram": "192G",
    },
    "amd-mi250x": {"amd.com/gpu.product-name": "AMD_Instinct_MI250X", "amd.com/gpu.family": "AI"},
}
COUNT_LABEL = {
    "nvidia.com/gpu": "nvidia.com/gpu.count",
    "amd.com/gpu": "amd.com/gpu.count",
    "huawei.com/Ascend910": "huawei.com/npu.count",
}


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and line."""


class Taint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class Pool(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=40)]
    type: Annotated[str, Field(pattern=DNS_LABEL, description="value of heterotrain.io/accelerator")]
    runner: Literal["kwok", "process"] = "kwok"
    count: Annotated[int, Field(ge=0, le=10000)]
    accelerators_per_node: Annotated[int, Field(alias="acceleratorsPerNode", ge=0, le=64)] = 8
    resource_name: Annotated[str | None, Field(alias="resourceName")] = None
    cpu: Annotated[str, Field(pattern=QUANTITY)] = "96"
    memory: Annotated[str, Field(pattern=QUANTITY)] = "1Ti"
    pods: Annotated[int, Field(ge=1, le=1000)] = 110
    emulated_speed: Annotated[float | None, Field(alias="emulatedSpeed", gt=0)] = None
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)

    @field_validator("resource_name")
    @classmethod
    def _resource(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[a-z0-9.-]+/[A-Za-z0-9._-]+$", v):
            raise ValueError("must be an extended resource name like nvidia.com/gpu")
        return v

    @model_validator(mode="after")
    def _check(self) -> Pool:
        if self.resource_name is None:
            known = KNOWN_ACCELERATORS.get(self.type)
            if known is None:
                raise ValueError(f"type {self.type!r} is not a known accelerator type; set resourceName")
            self.resource_name = known.resource_name
        if self.emulated_speed is not None and self.runner != "process":
            raise ValueError("emulatedSpeed applies to runner: process pools only")
        return self

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Annotated[Literal["heterotrain.io/cluster-profile/v1"], Field(alias="apiVersion")]
    kind: Literal["ClusterProfile"]
    name: Annotated[str, Field(pattern=DNS_LABEL)]
    pools: Annotated[list[Pool], Field(min_length=1)]

    def types(self) -> list[str]:
        return sorted({p.type for p in self.pools if p.count > 0})


def _index_lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[(*path, k.value)] = k.start_mark.line + 1
            _index_lines(v, (*path, k.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index_lines(v, (*path, i), out)


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _iter_errors(e: ValidationError) -> Iterator[tuple[tuple[Any, ...], str]]:
    for err in e.errors():
        # Drop pydantic's internal tags (e.g. function-after[...]) from the location.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        yield loc, err["msg"]


def parse(text: str, source: str = "<profile>") -> Profile:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"{source}: not valid YAML: {e}") from e
    if root is None or not isinstance(data, dict):
        raise ProfileError(f"{source}:1: a profile is a mapping with apiVersion, kind, name and pools")
    lines: dict[tuple[Any, ...], int] = {}
    _index_lines(root, (), lines)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as e:
        msgs = [f"{source}:{_line_for(loc, lines)}: {_fmt_loc(loc)}: {msg}" for loc, msg in _iter_errors(e)]
        raise ProfileError("invalid cluster profile:\n  " + "\n  ".join(msgs)) from None
    seen: set[str] = set()
    for i, pool in enumerate(profile.pools):
        if pool.name in seen:
            loc = ("pools", i, "name")
            raise ProfileError(
                f"invalid cluster profile:\n  {source}:{_line_for(loc, lines)}: {_fmt_loc(loc)}: "
                f"duplicate pool name {pool.name!r} (node names derive from it)"
            )
        seen.add(pool.name)
    return profile


def load(path: Path) -> Profile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(f"cannot read cluster profile {path}: {e.strerror}") from None
    return parse(text, str(path))


def node_manifests(profile: Profile) -> list[dict[str, Any]]:
    """The Node objects of a profile (kwok nodes carry kwok's annotation and a taint)."""
    nodes: list[dict[str, Any]] = []
    for pool in profile.pools:
        device_labels = NODE_LABELS.get(pool.type, {})
        assert pool.resource_name is not None
        for name in pool.node_names():
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": f"{pool.type}-x{pool.accelerators_per_node}",
                ACCELERATOR_LABEL: pool.type,
                RUNNER_LABEL: pool.runner,
                POOL_LABEL: pool.name,
                **device_labels,
                **pool.labels,
            }
            if pool.resource_name in COUNT_LABEL:
                labels[COUNT_LABEL[pool.resource_name]] = str(pool.accelerators_per_node)
            annotations = {"node.alpha.kubernetes.io/ttl": "0"}
            taints = [t.model_dump() for t in pool.taints]
            if pool.runner == "kwok":
                annotations[KWOK_ANNOTATION] = "fake"
                taints.append({"key": KWOK_TAINT_KEY, "value": "fake", "effect": "NoSchedule"})
            if pool.emulated_speed is not None:
                annotations[ANNOTATION_EMULATED_SPEED] = repr(pool.emulated_speed)
            capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods)}
            if pool.accelerators_per_node:
                capacity[pool.resource_name] = str(pool.accelerators_per_node)
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": name, "labels": labels, "annotations": annotations},
                    "spec": {"taints": taints} if taints else {},
                    "status": {
                        "capacity": capacity,
                        "allocatable": dict(capacity),
                        "nodeInfo": {
                            "architecture": "amd64",
                            "operatingSystem": "linux",
                            "kubeletVersion": "fake",
                            "containerRuntimeVersion": pool.runner,
                            "kubeProxyVersion": "fake",
                            "machineID": name,
                            "systemUUID": name,
                            "bootID": name,
                            "kernelVersion": "fake",
                            "osImage": f"heterotrain {pool.runner} node",
                        },
                    },
                }
            )
    return nodes
