"""The CPU and memory limits a pod's processes run under, as a kubelet derives them (pure).

Part of the process runner, a fake kubelet for tests (see the package docstring).

* A container's ``resources.limits.cpu`` / ``.memory`` are its own group's
  CPU quota and memory limit.
* The pod's group, like the kubelet's pod cgroup, is limited only when every
  container has the limit: then to ``max(largest regular init container,
  sum of the app containers)``, sidecars (init containers with
  ``restartPolicy: Always``) added to both.
* On a node with the ``heterotrain.io/emulated-speed`` annotation, a pod that
  requests N of the node's accelerators (extended resources the node has,
  e.g. ``nvidia.com/gpu``) emulates N devices of that speed: its group's CPU
  quota is ``speed x cores_per_speed x N`` (each emulated device gets its
  share), or its CPU limit if that is lower.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from heterotrain_e2e.emulation import ANNOTATION_EMULATED_SPEED
from heterotrain_runtime.cgroups import Limits

from .quantity import parse_quantity

JSON = dict[str, Any]


@dataclass(frozen=True)
class PodResources:
    pod: Limits
    containers: Mapping[str, Limits]
    emulated_speed: float | None  # the node's
    emulated_devices: int  # accelerators the pod requests on an emulated node
    emulated_cores: float | None  # speed x cores_per_speed x devices


def _limit(container: JSON, resource: str) -> Decimal | None:
    value = ((container.get("resources") or {}).get("limits") or {}).get(resource)
    return None if value is None else parse_quantity(value)


def _amount(container: JSON, resource: str) -> Decimal:
    """What a container asks for of an extended resource (requests and limits are equal for those)."""
    res = container.get("resources") or {}
    value = (res.get("limits") or {}).get(resource, (res.get("requests") or {}).get(resource))
    return Decimal(0) if value is None else parse_quantity(value)


def _pod_total(spec: JSON, per_container: Any) -> Decimal | None:
    """max(largest regular init container, sum of app containers) + sidecars; None if any is None."""
    inits = spec.get("initContainers") or []
    sidecars = [c for c in inits if c.get("restartPolicy") == "Always"]
    regular = [c for c in inits if c.get("restartPolicy") != "Always"]
    values = [per_container(c) for c in [*spec.get("containers", []), *inits]]
    if any(v is None for v in values):
        return None
    side = sum((per_container(c) for c in sidecars), Decimal(0))
    apps = sum((per_container(c) for c in spec.get("containers", [])), Decimal(0))
    first = max((per_container(c) for c in regular), default=Decimal(0))
    return side + max(apps, first)


def emulated_speed(node: JSON) -> float | None:
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_EMULATED_SPEED)
    if raw in (None, ""):
        return None
    speed = float(raw)
    if not speed > 0 or math.isinf(speed):
        raise ValueError(f"node annotation {ANNOTATION_EMULATED_SPEED}={raw!r}: must be a positive number")
    return speed


def accelerator_resources(node: JSON) -> list[str]:
    """The node's extended resources (``domain/name``): its accelerators."""
    status = node.get("status") or {}
    return sorted(r for r in (status.get("capacity") or status.get("allocatable") or {}) if "/" in r)


def accelerators_requested(pod: JSON, node: JSON) -> int:
    spec = pod["spec"]
    total = Decimal(0)
    for r in accelerator_resources(node):
        total += _pod_total(spec, lambda c, r=r: _amount(c, r)) or Decimal(0)
    return math.ceil(total)


def node_emulated_capacity(nodes: Iterable[JSON]) -> float:
    """Sum over emulated nodes of speed x accelerators: what all emulated devices need at once."""
    total = 0.0
    for node in nodes:
        speed = emulated_speed(node)
        if speed is None:
            continue
        status = node.get("status") or {}
        cap = status.get("capacity") or status.get("allocatable") or {}
        total += speed * float(sum(parse_quantity(cap[r]) for r in accelerator_resources(node)))
    return total


def _bytes(value: Decimal | None) -> int | None:
    return None if value is None else max(1, math.ceil(value))


def _cores(value: Decimal | None) -> float | None:
    return None if value is None or value <= 0 else float(value)


def pod_resources(pod: JSON, node: JSON, cores_per_speed: float) -> PodResources:
    """The limits of the pod's group and of each container's group."""
    spec = pod["spec"]
    containers = {
        c["name"]: Limits.of(cores=_cores(_limit(c, "cpu")), memory_bytes=_bytes(_limit(c, "memory")))
        for c in [*(spec.get("initContainers") or []), *spec.get("containers", [])]
    }
    cpu = _cores(_pod_total(spec, lambda c: _limit(c, "cpu")))
    memory = _bytes(_pod_total(spec, lambda c: _limit(c, "memory")))
    speed = emulated_speed(node)
    devices = accelerators_requested(pod, node) if speed is not None else 0
    emulated = speed * cores_per_speed * devices if speed is not None and devices else None
    if emulated is not None:
        cpu = emulated if cpu is None else min(cpu, emulated)
    return PodResources(Limits.of(cores=cpu, memory_bytes=memory), containers, speed, devices, emulated)
