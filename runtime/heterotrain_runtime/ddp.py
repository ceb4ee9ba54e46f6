"""Plain PyTorch DDP scripts on a heterogeneous world: two lines.

DDP has no per-rank batch size: its all-reduce averages every rank's gradient alike, which is the
mean over the global batch only when every rank had as many samples.  Under an uneven split (fast
pools take more of the batch) the update is biased.  Two lines fix it, after
``init_process_group`` and ``DistributedDataParallel(model)``::

    sampler = GlobalBatchSampler(dataset, global_batch_size=256, start_step=step)   # 1
    model.register_comm_hook(sampler, exact_mean_hook)                              # 2
    loader = DataLoader(dataset, batch_sampler=sampler)

1. :class:`GlobalBatchSampler` yields, for every step, this rank's share of the global batch:
   the global batches come from the exactly-once sample order of the SDK (a seeded permutation per
   data-epoch, cut into consecutive global batches by the data cursor, whatever the world), cut
   among the ranks by weight (the launcher's split in a HeteroTrainJob, ``weights=`` or an equal
   split otherwise; largest remainder, contiguous in rank order).  ``start_step`` is the number of
   optimizer steps already taken (what the script's checkpoint says; 0 for a fresh start): the
   sampler resumes at that step's global batch, in any world.
2. :func:`exact_mean_hook` makes DDP's all-reduce the exact mean over the global batch: each rank's
   gradient (of its local mean loss) is weighted by ``local / global`` samples and the weighted
   gradients are summed; across pools the sum is hierarchical (the pool's native backend inside a
   pool, gloo between the pool leaders; one all-reduce over the world when every pool's backend is
   gloo; :mod:`heterotrain_runtime.collectives`).

Every rank then holds the same gradient, so the usual tools need nothing more:
``clip_grad_norm_`` clips every rank by the same global norm, ``torch.amp.GradScaler`` takes the
same overflow decision on every rank, a learning-rate scheduler stepped once per step is the same
everywhere.  ``sampler.precision`` is the pool's precision hint (``HETEROTRAIN_PRECISION``) and
``sampler.loss_scaling`` says whether any rank of the world runs fp16 (then every rank must scale:
``GradScaler(enabled=sampler.loss_scaling)``).

One backward per batch the sampler yields (the hook counts steps; for gradient accumulation use
the SDK).  The script runs under ``torchrun`` and inside a HeteroTrainJob unchanged (the launcher
sets the torchrun environment and restarts the script on a new world; it resumes from its own
checkpoint with ``start_step``).
"""

# No ``from __future__ import annotations`` here: DDP compares the hook's annotations with the classes.
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import GradBucket  # type: ignore[attr-defined]  # (not re-exported for mypy)

from heterotrain_runtime.batching import SampleOrder, cut_ranges, split_batch
from heterotrain_runtime.collectives import Topology, build_topology, hierarchical_all_reduce, usable_backend
from heterotrain_runtime.precision import Precision, parse_precision
from heterotrain_runtime.trainer.settings import TrainerSettings

__all__ = ["GlobalBatchSampler", "exact_mean_hook"]


class GlobalBatchSampler:
    """A batch sampler: this rank's indices of every global batch (see the module docstring).

    Iterating it yields the batches of the current data-epoch from where it stands (a resumed
    sampler starts mid-epoch), then the next iteration goes on with the next data-epoch.
    """

    def __init__(
        self,
        dataset: Any,
        global_batch_size: int | None = None,
        *,
        start_step: int = 0,
        seed: int | None = None,
        drop_last: bool = False,
        weights: Sequence[float] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        s = TrainerSettings.from_env(env, global_batch_size=global_batch_size, seed=seed)
        self.dataset_len = dataset if isinstance(dataset, int) else len(dataset)
        self.global_batch_size, self.seed, self.drop_last = s.global_batch_size, s.seed, drop_last
        self.steps_per_epoch = _steps_per_epoch(self.dataset_len, self.global_batch_size, drop_last)
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.step = start_step  # the next step this sampler yields (runs ahead of a prefetching loader)
        self.hook_step = start_step  # the step whose gradients the hook sums next
        self.order = SampleOrder(self.dataset_len, self.seed)
        self.precision: Precision = parse_precision(s.precision)
        if dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        elif s.static_world_size > 1:
            raise RuntimeError("call torch.distributed.init_process_group before building the sampler")
        else:
            self.rank, self.world_size = 0, 1
        self.split = _split(self.global_batch_size, self.world_size, weights, s.batch_split)
        self.topo: Topology | None = None
        self.loss_scaling = self.precision.scaled  # any rank of the world in fp16
        if self.world_size > 1:
            self._join(s)

    def _join(self, s: TrainerSettings) -> None:
        """Collective: check that every rank computed the same split; the pools and their groups."""
        mine = {
            "type": s.accelerator,
            "backend": usable_backend(s.backend),
            "precision": self.precision.compute,
            "split": self.split,
        }
        infos: list[Any] = [None] * self.world_size
        dist.all_gather_object(infos, mine)
        splits = {tuple(i["split"]) for i in infos}
        if len(splits) > 1:
            raise ValueError(
                f"the ranks computed different batch splits {sorted(splits)}: give every rank the same weights"
            )
        self.loss_scaling = any(i["precision"] == "fp16" for i in infos)
        self.topo = build_topology(
            self.rank,
            [i["type"] for i in infos],
            [i["backend"] for i in infos],
            timeout=timedelta(seconds=s.heartbeat),
        )

    # --- the global batches ---------------------------------------------------------------------
    def span(self, step: int) -> tuple[int, int, int]:
        """``(data_epoch, start, stop)`` of step ``step``'s global batch (the data cursor's arithmetic)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.global_batch_size
        return epoch, start, min(start + self.global_batch_size, self.dataset_len)

    def sizes(self, count: int) -> list[int]:
        """Every rank's share of a global batch of ``count`` samples (the last of an epoch may be short)."""
        return list(self.split) if count == self.global_batch_size else split_batch(count, self.split)

    def shares(self, step: int) -> tuple[int, int]:
        """``(this rank's samples, the global batch's samples)`` at step ``step``."""
        _epoch, start, stop = self.span(step)
        a, b = cut_ranges(self.sizes(stop - start))[self.rank]
        return b - a, stop - start

    def indices(self, step: int) -> list[int]:
        """This rank's sample indices at step ``step``."""
        epoch, start, stop = self.span(step)
        a, b = cut_ranges(self.sizes(stop - start))[self.rank]
        return self.order.slice(epoch, start + a, start + b)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.step // self.steps_per_epoch
        while self.step // self.steps_per_epoch == epoch:
            step = self.step
            self.step += 1
            yield self.indices(step)

    def __len__(self) -> int:
        """Batches left in the current data-epoch."""
        return self.steps_per_epoch - self.step % self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Accepted for ``DistributedSampler``'s callers; the data-epoch follows the step."""

    # --- the gradients ----------------------------------------------------------------------------
    def reduce_bucket(self, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
        """Weight one DDP gradient bucket by this rank's share of the step, sum it over the world."""
        n_local, count = self.shares(self.hook_step)
        buf: torch.Tensor = bucket.buffer()
        if n_local:
            buf.mul_(n_local / count)
        else:
            buf.zero_()  # an empty share's loss is NaN: it contributes nothing
        if bucket.is_last():
            self.hook_step += 1
        topo = self.topo
        if topo is not None and len(topo.pools) == 1:
            work = dist.all_reduce(buf, group=topo.pool_group, async_op=True)
            assert work is not None
            return work.get_future().then(lambda f: f.value()[0])
        if topo is not None:
            hierarchical_all_reduce(buf, topo)
        done: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        done.set_result(buf)
        return done


def exact_mean_hook(state: GlobalBatchSampler, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: ``model.register_comm_hook(sampler, exact_mean_hook)``."""
    return state.reduce_bucket(bucket)


def _steps_per_epoch(dataset_len: int, global_batch: int, drop_last: bool) -> int:
    if dataset_len <= 0 or global_batch <= 0:
        raise ValueError("dataset length and global batch size must be > 0")
    n = dataset_len // global_batch if drop_last else math.ceil(dataset_len / global_batch)
    if n < 1:
        raise ValueError(f"drop_last with a dataset of {dataset_len} < the global batch {global_batch}")
    return n


def _split(
    global_batch: int, world: int, weights: Sequence[float] | None, launcher: Sequence[int]
) -> list[int]:
    """``weights=`` when given, else the launcher's split (``HETEROTRAIN_BATCH_SPLIT``), else equal."""
    if weights is not None:
        if len(weights) != world:
            raise ValueError(f"weights: {len(weights)} values for a world of {world}")
        return split_batch(global_batch, weights)
    if len(launcher) == world and sum(launcher) == global_batch:
        return list(launcher)
    return split_batch(global_batch, [1.0] * world)
