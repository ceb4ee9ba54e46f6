"""Learning-rate schedules: linear warm-up, then cosine decay to a floor.

:func:`warmup_cosine` returns a ``torch.optim.lr_scheduler.LambdaLR`` whose factor is a
:class:`WarmupCosine` object (not a closure), so the scheduler's ``state_dict`` holds the whole
schedule and a checkpoint restores it as it was.  The SDK steps it once per committed step
(``ElasticTrainer(lr_scheduler=...)``); a plain DDP script calls ``scheduler.step()`` after
``optimizer.step()``.  The factor of update ``n`` (counted from 0) depends on ``n`` alone, so a
resized or restored world continues with the learning rate an uninterrupted run would use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The learning-rate factor of update ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` updates; then a cosine
    from 1 down to ``min_ratio`` at ``total_steps``; ``min_ratio`` after that.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class WarmupCosine:
    """A ``LambdaLR`` factor: its fields are saved in the scheduler's ``state_dict``."""

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.total_steps < 1 or self.warmup_steps > self.total_steps:
            raise ValueError(
                f"warm-up steps ({self.warmup_steps}) must be between 0 and the total ({self.total_steps})"
            )
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio {self.min_ratio} must be in [0, 1]")

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(step, self.warmup_steps, self.total_steps, self.min_ratio)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler over ``optimizer``: warm-up over ``warmup_steps``, cosine down to ``min_ratio`` at
    ``total_steps`` (every param group's initial ``lr`` is its peak)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))
