"""Process runner (fake kubelet for tests): the limits a pod's cgroups get (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from heterotrain_e2e.procnode.resources import (
    accelerators_requested,
    emulated_speed,
    node_emulated_capacity,
    pod_resources,
)
from heterotrain_runtime.cgroups import cpu_quota

JSON = dict[str, Any]


def node(speed: str | None = "3.0", gpus: str = "2") -> JSON:
    ann = {} if speed is None else {"heterotrain.io/emulated-speed": speed}
    return {
        "metadata": {"name": "n", "annotations": ann},
        "status": {"capacity": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": gpus}},
    }


def c(name: str, **limits: str) -> JSON:
    return {"name": name, "resources": {"limits": limits}}


def pod(containers: list[JSON], init: list[JSON] | None = None) -> JSON:
    return {"spec": {"containers": containers, "initContainers": init or []}}


def test_container_limits_become_its_groups_quota_and_memory() -> None:
    r = pod_resources(pod([c("a", cpu="250m", memory="64Mi"), c("b")]), node(None), 0.15)
    assert r.containers["a"].cpu == cpu_quota(0.25) and r.containers["a"].memory_bytes == 64 << 20
    assert r.containers["b"].cpu is None and r.containers["b"].memory_bytes is None
    assert r.pod.cpu is None and r.pod.memory_bytes is None  # b has no limit: the pod is not limited


def test_the_pod_limit_is_max_of_largest_init_and_sum_of_apps_plus_sidecars() -> None:
    init = [
        c("i1", cpu="2", memory="1Gi"),
        {**c("side", cpu="100m", memory="100Mi"), "restartPolicy": "Always"},
    ]
    r = pod_resources(
        pod([c("a", cpu="500m", memory="300Mi"), c("b", cpu="1", memory="200Mi")], init), node(None), 1
    )
    assert r.pod.cpu is not None and r.pod.cpu.cores == pytest.approx(2.1)  # max(2, 1.5) + 0.1
    assert r.pod.memory_bytes == (1 << 30) + (100 << 20)  # max(1Gi, 500Mi) + 100Mi


def test_an_emulated_node_gives_each_requested_device_its_share() -> None:
    r = pod_resources(pod([c("w", **{"nvidia.com/gpu": "2"})]), node("3.0"), 0.1)
    assert (r.emulated_speed, r.emulated_devices) == (3.0, 2)
    assert r.pod.cpu is not None and r.pod.cpu.cores == pytest.approx(0.6)
    assert r.containers["w"].cpu is None


def test_the_lower_of_cpu_limit_and_emulated_quota_wins() -> None:
    low = pod_resources(pod([c("w", cpu="200m", **{"nvidia.com/gpu": "1"})]), node("3.0"), 0.1)
    assert low.pod.cpu is not None and low.pod.cpu.cores == pytest.approx(0.2)
    high = pod_resources(pod([c("w", cpu="4", **{"nvidia.com/gpu": "1"})]), node("3.0"), 0.1)
    assert high.pod.cpu is not None and high.pod.cpu.cores == pytest.approx(0.3)


def test_no_accelerator_or_no_annotation_means_no_emulated_quota() -> None:
    assert pod_resources(pod([c("w")]), node("3.0"), 0.1).pod.cpu is None
    assert pod_resources(pod([c("w", **{"nvidia.com/gpu": "1"})]), node(None), 0.1).pod.cpu is None


def test_accelerators_requested_counts_requests_too_and_init_containers_by_max() -> None:
    p = pod(
        [
            {"name": "a", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
            c("b", **{"nvidia.com/gpu": "1"}),
        ],
        [c("i", **{"nvidia.com/gpu": "1"})],
    )
    assert accelerators_requested(p, node()) == 2
    assert accelerators_requested(p, node(gpus="0") | {"status": {"capacity": {"cpu": "8"}}}) == 0


def test_the_served_nodes_emulated_capacity() -> None:
    assert node_emulated_capacity([node("3.0", "2"), node("0.8", "2"), node(None, "8")]) == pytest.approx(7.6)


def test_a_bad_speed_annotation_is_named() -> None:
    with pytest.raises(ValueError, match=r"emulated-speed.*positive"):
        emulated_speed(node("-1"))
