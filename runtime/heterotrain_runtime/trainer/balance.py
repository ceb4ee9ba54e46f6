"""The throughput side of the step: what this rank measures, and when the world reconsiders its split.

A rank measures its samples over the seconds of its forward and backward pass on its share (from taking
its slice to the end of the backward pass: what grows with the share).  A process's first step is
warm-up (allocation, autotuning, the data's first touch) and is not measured.  The estimates live in a
:class:`~heterotrain_runtime.batching.ThroughputTracker`.

Every rank computes the split from the same estimates (they ride the step's control vector), so the
ranks agree without another collective; rank 0's clock says when a new split is due.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from heterotrain_runtime.batching import ThroughputTracker


class Balancer:
    """This rank's measurements for ``tracker``, and the rebalance clock (rank 0's decides)."""

    def __init__(self, tracker: ThroughputTracker, clock: Callable[[], float] = time.monotonic) -> None:
        self.tracker, self.clock = tracker, clock
        self.last_rebalance = clock()
        self._warm: set[str] = set()

    def measured(self, name: str, samples: int, seconds: float) -> None:
        """``name`` computed ``samples`` in ``seconds`` (this step's forward and backward)."""
        if name not in self._warm:
            self._warm.add(name)  # its first step: warm-up, not measured
            return
        self.tracker.observe(name, samples, seconds)

    def restart(self) -> None:
        """A world formed: the next rebalance is a full interval away (its ranks measure first)."""
        self.last_rebalance = self.clock()

    def due(self) -> bool:
        return self.clock() - self.last_rebalance >= self.tracker.min_interval

    def proposal(self, global_batch: int, split: Sequence[int], rates: Sequence[float]) -> list[int] | None:
        """A better split for the world's ``rates`` (None: keep ``split``); the clock restarts."""
        self.last_rebalance = self.clock()
        if any(r <= 0 for r in rates):
            return None  # not every rank measured yet
        return self.tracker.proposal(global_batch, split, list(rates))
