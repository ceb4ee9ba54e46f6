"""Process groups of a heterogeneous world and the hierarchical gradient all-reduce.

NCCL (NVIDIA), HCCL (Ascend) and RCCL (AMD) cannot talk to each other, so a
gradient sum over the whole world is done in three stages:

1. reduce within each pool (ranks of one accelerator type) to the pool's
   leader (its lowest rank), on the pool's native backend;
2. all-reduce among the pool leaders on gloo (through host memory);
3. broadcast from each leader back into its pool.

With one pool it is a plain all-reduce on the native backend; with one rank per
pool, stage 2 alone.  When every pool's backend is gloo (CPU pools, or no native
backend usable) the stages would only add hops: it is one all-reduce over the
world group (:attr:`Topology.flat`).  Gradients are flattened into buckets (one collective per
bucket, not per tensor).  The world group itself is gloo: it carries the small
control vector of every step and the state broadcast of a re-formation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from heterotrain_contract import torch_backend

DEFAULT_BUCKET_BYTES = 32 * 1024 * 1024


def resolve_backend(name: str) -> str:
    """Map an API backend name to torch's (and import the vendor plugin)."""
    name = torch_backend(name)
    if name == "hccl":
        import torch_npu  # noqa: F401  (registers the HCCL backend)
    return name


def usable_backend(name: str | None) -> str:
    """The backend this process can really use for its pool.

    A missing device (e.g. an emulated one: the e2e process runner's nodes run
    on the CPU) falls back to gloo, with a warning, instead of failing to form
    the group: NCCL/RCCL need a CUDA/ROCm device, HCCL needs torch_npu.
    """
    name = (name or "gloo").lower()
    if name == "gloo":
        return name
    if name in ("nccl", "rccl"):
        import torch

        if not torch.cuda.is_available():
            warnings.warn(
                f"backend {name} requested but no CUDA/ROCm device is visible; using gloo", stacklevel=2
            )
            return "gloo"
    elif name == "hccl":
        try:
            import torch_npu  # noqa: F401
        except ImportError:
            warnings.warn("backend hccl requested but torch_npu is not installed; using gloo", stacklevel=2)
            return "gloo"
    return name


@dataclass
class Topology:
    rank: int
    world_size: int
    pools: list[list[int]]  # global ranks of every pool, pools ordered by lowest rank
    pool_backends: list[str]
    my_pool: int
    world_group: Any
    pool_groups: list[Any]
    leaders_group: Any
    flat: bool = False  # one all-reduce over the world group instead of the three stages

    @property
    def pool_ranks(self) -> list[int]:
        return self.pools[self.my_pool]

    @property
    def leader(self) -> int:
        return self.pool_ranks[0]

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    @property
    def leaders(self) -> list[int]:
        return [p[0] for p in self.pools]

    @property
    def pool_group(self) -> Any:
        return self.pool_groups[self.my_pool]


def build_topology(
    rank: int,
    types: Sequence[str],
    backends: Sequence[str],
    timeout: timedelta | None = None,
    flat: bool | None = None,
) -> Topology:
    """Create the pool and leader groups; every rank calls it with the same lists.

    ``types[r]``/``backends[r]`` are rank r's accelerator type and intra-pool
    backend.  The default group must already be initialised (gloo).
    ``timeout`` bounds every collective on the new groups; give the heartbeat:
    torch's default for a new group is 30 minutes, and a leader waiting on a
    peer that is alive but gone to re-form would wait that long.  ``flat``:
    sum over the world group in one all-reduce (default: when every pool's
    backend is gloo).
    """
    world = len(types)
    order: dict[str, list[int]] = {}
    for r, t in enumerate(types):
        order.setdefault(t, []).append(r)
    pools = list(order.values())
    pool_backends = [resolve_backend(backends[p[0]]) if p else "gloo" for p in pools]
    my_pool = next(i for i, p in enumerate(pools) if rank in p)
    world_group = dist.group.WORLD
    pool_groups: list[Any] = []
    for p, b in zip(pools, pool_backends, strict=True):
        # Every rank takes part in every new_group call, in the same order.
        if len(p) == world and b == "gloo":
            pool_groups.append(world_group)
        else:
            pool_groups.append(dist.new_group(p, backend=b, timeout=timeout))
    leaders = [p[0] for p in pools]
    leaders_group: Any
    if len(pools) == 1:
        leaders_group = None
    elif len(leaders) == world:
        leaders_group = world_group
    else:
        leaders_group = dist.new_group(leaders, backend="gloo", timeout=timeout)
    if flat is None:
        flat = all(b == "gloo" for b in pool_backends)
    return Topology(rank, world, pools, pool_backends, my_pool, world_group, pool_groups, leaders_group, flat)


def hierarchical_all_reduce(flat: torch.Tensor, topo: Topology) -> None:
    """Sum ``flat`` over the whole world in place (see the module docstring)."""
    if topo.flat:
        host = flat if flat.device.type == "cpu" else flat.to("cpu")
        dist.all_reduce(host, group=topo.world_group)
        if host is not flat:
            flat.copy_(host)
        return
    if len(topo.pools) == 1:
        dist.all_reduce(flat, group=topo.pool_group)
        return
    in_pool = len(topo.pool_ranks) > 1
    if in_pool:
        dist.reduce(flat, dst=topo.leader, group=topo.pool_group)
    if topo.is_leader:
        host = flat if flat.device.type == "cpu" else flat.to("cpu")
        dist.all_reduce(host, group=topo.leaders_group)
        if host is not flat:
            flat.copy_(host)
    if in_pool:
        dist.broadcast(flat, src=topo.leader, group=topo.pool_group)


def buckets(tensors: Iterable[torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``tensors`` grouped into buckets of one dtype/device, at most ~bucket_bytes each."""
    out: list[list[int]] = []
    current: dict[tuple[torch.dtype, torch.device], tuple[list[int], int]] = {}
    for i, t in enumerate(tensors):
        key = (t.dtype, t.device)
        idx, size = current.get(key, ([], 0))
        nbytes = t.numel() * t.element_size()
        if idx and size + nbytes > bucket_bytes:
            out.append(idx)
            idx, size = [], 0
        idx.append(i)
        current[key] = (idx, size + nbytes)
    out.extend(idx for idx, _ in current.values() if idx)
    return out


class GradientSync:
    """Sum-reduces the gradients of ``params`` with a per-rank scale, bucketed."""

    def __init__(self, params: Sequence[torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.plan = buckets(self.params, bucket_bytes)
        self._flat: dict[int, torch.Tensor] = {}

    def carries_control(self) -> bool:
        """Whether :meth:`sync` can sum a small control vector along (last bucket in fp32/fp64)."""
        if not self.plan:
            return False
        return self.params[self.plan[-1][0]].dtype in (torch.float32, torch.float64)

    def sync(
        self, topo: Topology | None, scale: float, control: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``grad <- sum over ranks of scale_r * grad_r`` (missing grads count as zeros).

        ``control`` (a small float64 CPU vector, unscaled) rides at the end of
        the last bucket when :meth:`carries_control`: one collective per step
        instead of two.  Returns its sum over the world.
        """
        summed: torch.Tensor | None = None
        last = len(self.plan) - 1
        for b, idx in enumerate(self.plan):
            ps = [self.params[i] for i in idx]
            numel = sum(p.numel() for p in ps)
            extra = control.numel() if control is not None and b == last else 0
            flat = self._flat.get(b)
            if flat is None or flat.numel() != numel + extra:
                flat = torch.empty(numel + extra, dtype=ps[0].dtype, device=ps[0].device)
                self._flat[b] = flat
            off = 0
            for p in ps:
                n = p.numel()
                if p.grad is None:
                    flat[off : off + n].zero_()
                else:
                    flat[off : off + n].copy_(p.grad.reshape(-1))
                off += n
            if scale != 1.0:
                flat[:numel].mul_(scale)
            if extra:
                assert control is not None
                flat[numel:].copy_(control.to(dtype=flat.dtype, device=flat.device))
            if topo is not None and topo.world_size > 1:
                hierarchical_all_reduce(flat, topo)
            if extra:
                summed = flat[numel:].to(device="cpu", dtype=torch.float64)
            off = 0
            for p in ps:
                n = p.numel()
                view = flat[off : off + n].view_as(p)
                if p.grad is None:
                    p.grad = view.clone()
                else:
                    p.grad.copy_(view)
                off += n
        return summed
