"""Builders and invariant checks shared by the placement tests."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from heterotrain_operator.placement import (
    AcceleratorOption,
    ClusterSnapshot,
    JobRequest,
    Node,
    Plan,
    Taint,
    Toleration,
    WorkerSlot,
    node_keeps,
    node_usable_for,
)

GIB = 1024**3
RESOURCE = {
    "h100": "nvidia.com/gpu",
    "a100": "nvidia.com/gpu",
    "h20": "nvidia.com/gpu",
    "mi300x": "amd.com/gpu",
    "910b": "huawei.com/Ascend910",
}


def node(
    name: str,
    acc: str | None = "h100",
    size: int = 8,
    used: int = 0,
    *,
    cpu: int = 128_000,
    cpu_used: int = 0,
    mem: int = 1024 * GIB,
    mem_used: int = 0,
    taints: Iterable[Taint] = (),
    ready: bool = True,
    unschedulable: bool = False,
    labels: Iterable[tuple[str, str]] = (),
    resource: str | None = None,
) -> Node:
    return Node(
        name=name,
        accelerator=acc,
        resource_name=resource
        if resource is not None
        else (RESOURCE.get(acc, "example.com/acc") if acc else None),
        accelerators_allocatable=size,
        accelerators_used=used,
        cpu_milli_allocatable=cpu,
        cpu_milli_used=cpu_used,
        memory_allocatable=mem,
        memory_used=mem_used,
        taints=tuple(taints),
        ready=ready,
        unschedulable=unschedulable,
        labels=tuple(labels),
    )


def opt(
    t: str, per: int = 1, r: float = 1.0, cap: int | None = None, resource: str | None = None
) -> AcceleratorOption:
    return AcceleratorOption(t, resource or RESOURCE.get(t, "example.com/acc"), per, r, cap)


def job(
    key: str,
    *opts: AcceleratorOption,
    min_w: int = 1,
    max_w: int | None = None,
    prio: int = 0,
    created: float = 0.0,
    cpu: int = 0,
    mem: int = 0,
    tolerations: Iterable[Toleration] = (),
    selector: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    placement: str = "Pack",
    current: Iterable[WorkerSlot] = (),
    suspended: bool = False,
) -> JobRequest:
    return JobRequest(
        key=key,
        priority=prio,
        created=created,
        min_workers=min_w,
        max_workers=min_w if max_w is None else max_w,
        accelerators=tuple(opts) or (opt("h100"),),
        cpu_milli_per_worker=cpu,
        memory_per_worker=mem,
        tolerations=tuple(tolerations),
        node_selector=tuple(selector.items() if isinstance(selector, Mapping) else selector),
        placement=placement,
        current=tuple(current),
        suspended=suspended,
    )


def cluster(*nodes: Node) -> ClusterSnapshot:
    return ClusterSnapshot(tuple(nodes))


def with_current(jobs: Sequence[JobRequest], result: Plan) -> list[JobRequest]:
    """The jobs as the operator would see them after applying ``result``."""
    out = []
    for j in jobs:
        jp = result[j.key]
        out.append(
            JobRequest(
                key=j.key,
                priority=j.priority,
                created=j.created,
                min_workers=j.min_workers,
                max_workers=j.max_workers,
                accelerators=j.accelerators,
                cpu_milli_per_worker=j.cpu_milli_per_worker,
                memory_per_worker=j.memory_per_worker,
                tolerations=j.tolerations,
                node_selector=j.node_selector,
                placement=j.placement,
                current=jp.workers,
                suspended=j.suspended,
            )
        )
    return out


def check_invariants(snapshot: ClusterSnapshot, jobs: Sequence[JobRequest], result: Plan) -> None:
    """Assert every hard rule of a plan; raises AssertionError with the offending detail."""
    by_key = {j.key: j for j in jobs}
    nodes = {n.name: n for n in snapshot.nodes}
    assert [p.key for p in result.jobs] == sorted(by_key), "one plan per job, sorted by key"
    acc = Counter({n.name: n.accelerators_used for n in snapshot.nodes})
    cpu = Counter({n.name: n.cpu_milli_used for n in snapshot.nodes})
    mem = Counter({n.name: n.memory_used for n in snapshot.nodes})
    placed: Counter[str] = Counter()
    for jp in result.jobs:
        j = by_key[jp.key]
        opts = {o.type: o for o in j.accelerators}
        assert list(jp.workers) == sorted(jp.workers)
        if not jp.admitted:
            assert jp.workers == (), f"{j.key}: nothing placed when not admitted"
            assert jp.reason, f"{j.key}: a reason when not admitted"
            assert jp.throughput == 0.0
            continue
        assert j.min_workers <= len(jp.workers) <= j.max_workers, f"{j.key}: {len(jp.workers)} workers"
        counts = Counter(w.type for w in jp.workers)
        for t, c in counts.items():
            cap = opts[t].max_workers
            assert cap is None or c <= cap, f"{j.key}: {c} {t} workers > cap {cap}"
        assert abs(jp.throughput - sum(opts[w.type].worker_throughput for w in jp.workers)) < 1e-6
        running = Counter(j.current)
        for w in jp.workers:
            n = nodes[w.node]
            if running[w] > 0:  # a running worker stays where a running pod may stay
                running[w] -= 1
                assert node_keeps(n, j, opts[w.type]), f"{j.key}: running {w} kept where it may not run"
            else:
                assert node_usable_for(n, j, opts[w.type]), f"{j.key}: {w} not usable"
            acc[w.node] += opts[w.type].per_worker
            cpu[w.node] += j.cpu_milli_of(opts[w.type])
            mem[w.node] += j.memory_of(opts[w.type])
            placed[w.node] += 1
        if len(jp.workers) < j.max_workers:
            assert jp.reason, f"{j.key}: below max without a reason"
        for s in jp.preempted:
            assert s in j.current, f"{j.key}: preempted {s} was not running"
    for name in placed:
        n = nodes[name]
        assert acc[name] <= n.accelerators_allocatable, f"{name}: accelerators over-committed"
        assert cpu[name] <= n.cpu_milli_allocatable, f"{name}: cpu over-committed"
        assert mem[name] <= n.memory_allocatable, f"{name}: memory over-committed"


def load_benchmark() -> ModuleType:
    """``benchmarks/placement/run.py`` as a module (it is a script, not a package)."""
    name = "placement_bench_run"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "benchmarks" / "placement" / "run.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
