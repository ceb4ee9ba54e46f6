"""Hierarchical gradient sync (gloo at both levels on CPU) equals a flat all-reduce."""

from __future__ import annotations

import pytest
import torch
from rt_helpers import init_gloo, run_world

from heterotrain_runtime.collectives import GradientSync, buckets, build_topology, hierarchical_all_reduce


def _compare(rank: int, world: int, port: int, types: list[str]) -> dict[str, object]:
    import torch.distributed as dist

    init_gloo(rank, world, port)
    topo = build_topology(rank, types, ["gloo"] * world)
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(1000, generator=g, dtype=torch.float64)
    flat = x.clone()
    dist.all_reduce(flat)
    hier = x.clone()
    hierarchical_all_reduce(hier, topo)
    # bucketed gradient sync with a per-rank scale and a missing gradient on some ranks
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4), torch.nn.Linear(4, 2))
    for i, p in enumerate(model.parameters()):
        p.grad = None if (i == 5 and rank % 2) else torch.full_like(p, float(rank + 1))
    scale = (rank + 1) / 10.0
    GradientSync(list(model.parameters()), bucket_bytes=256).sync(topo, scale=scale)
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    dist.destroy_process_group()
    return {
        "max_diff": float((flat - hier).abs().max()),
        "pools": topo.pools,
        "leader": topo.leader,
        "grad_sums": [float(gr.flatten()[0]) for gr in grads],
    }


@pytest.mark.parametrize(
    "types",
    [
        ["nvidia-a100", "nvidia-a100", "huawei-ascend-910b", "amd-mi300x"],  # pools of 2, 1, 1
        ["nvidia-a100", "huawei-ascend-910b", "nvidia-a100", "huawei-ascend-910b"],  # interleaved ranks
        ["nvidia-a100"] * 3,  # one pool: plain all-reduce
    ],
)
def test_hierarchical_equals_flat(types: list[str]) -> None:
    world = len(types)
    results = run_world(_compare, world, types, timeout=90)
    for r in results:
        assert r["max_diff"] < 1e-9
    pools: dict[str, list[int]] = {}
    for rank, t in enumerate(types):
        pools.setdefault(t, []).append(rank)
    assert results[0]["pools"] == list(pools.values())
    # sum_r scale_r * (r + 1): 0.1*1 + 0.2*2 + ...; the missing gradient counts as zero
    full = sum((r + 1) / 10.0 * (r + 1) for r in range(world))
    odd_missing = sum((r + 1) / 10.0 * (r + 1) for r in range(world) if r % 2 == 0)
    for r in results:
        assert r["grad_sums"][:5] == pytest.approx([full] * 5)
        assert r["grad_sums"][5] == pytest.approx(odd_missing)


def test_buckets_group_by_dtype_and_size() -> None:
    ts = [torch.zeros(10), torch.zeros(10, dtype=torch.float64), torch.zeros(10), torch.zeros(100)]
    plan = buckets(ts, bucket_bytes=100)
    assert sorted(i for b in plan for i in b) == [0, 1, 2, 3]
    for b in plan:
        assert len({ts[i].dtype for i in b}) == 1
    assert [0, 2] in plan  # 80 bytes of float32 share a bucket; the 400-byte tensor gets its own


def test_usable_backend_falls_back_to_gloo_without_the_device():
    import warnings

    import torch

    from heterotrain_runtime.collectives import usable_backend

    assert usable_backend("nccl", emulated=True) == "gloo"
    assert usable_backend(None) == "gloo"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        expected = "nccl" if torch.cuda.is_available() else "gloo"
        assert usable_backend("nccl") == expected
        assert usable_backend("rccl") == ("rccl" if torch.cuda.is_available() else "gloo")
