"""Batches from a dataset, and an evaluation shared by the whole world.

:func:`local_eval_sums` is one rank's part of an :class:`Evaluation`: the ranks cut the
evaluation samples into contiguous shares in proportion to their training split (so the fast
pools evaluate more), each sums ``loss x samples`` over its share, and the trainer adds the sums
over the world.  The result is the mean over the samples whatever the world: the same as one
process, up to the order of the float additions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from heterotrain_runtime.batching import cut_ranges, split_batch


def collate_samples(
    dataset: Any, indices: Sequence[int], collate_fn: Callable[[list[Any]], Any] | None
) -> Any:
    """The batch of ``dataset`` at ``indices`` (``__getitems__`` when it has one, then ``collate_fn``)."""
    if dataset is None:
        return list(indices)
    batched = hasattr(dataset, "__getitems__")
    items = dataset.__getitems__(list(indices)) if batched else [dataset[i] for i in indices]
    if collate_fn is not None:
        return collate_fn(items)
    if batched:
        return items
    from torch.utils.data import default_collate

    return default_collate(items)


def eval_share(samples: int, split: Sequence[int], rank: int) -> tuple[int, int]:
    """This rank's contiguous ``[start, stop)`` of ``samples`` evaluation samples, by the training split."""
    return cut_ranges(split_batch(samples, split))[rank]


def local_eval_sums(
    fn: Callable[[Any], torch.Tensor],
    dataset: Any,
    span: tuple[int, int],
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    autocast: Callable[[], Any],
) -> torch.Tensor:
    """``[sum of loss x samples, samples]`` (float64) over the samples ``span`` of ``dataset``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = torch.zeros(2, dtype=torch.float64)
    start, stop = span
    with torch.no_grad():
        for a in range(start, stop, batch_size):
            idx = list(range(a, min(a + batch_size, stop)))
            with autocast():
                loss = fn(collate_samples(dataset, idx, collate_fn))
            total[0] += float(loss.detach()) * len(idx)
            total[1] += len(idx)
    return total


@dataclass(frozen=True)
class Evaluation:
    """An evaluation the trainer runs at its step boundaries, every ``every`` committed steps.

    ``fn(batch)`` returns a batch's mean loss; the result is the mean over the first ``samples``
    of ``dataset`` (all of it when None), in ``StepResult.val_loss``.  It runs before the
    boundary re-forms the world, so every rank of the world that made the step evaluates it.
    """

    fn: Callable[[Any], torch.Tensor]
    dataset: Any
    every: int
    batch_size: int = 64
    samples: int | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None

    def __post_init__(self) -> None:
        if self.every < 1 or self.batch_size < 1:
            raise ValueError(
                f"evaluation every {self.every} steps in batches of {self.batch_size}: both >= 1"
            )

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def size(self) -> int:
        n = len(self.dataset)
        return n if self.samples is None else min(self.samples, n)
