"""Pure logic of uneven batches and exactly-once data order (no torch).

* :func:`split_batch` cuts the global batch among ranks by weight
  (largest-remainder rounding, shares sum exactly to the global batch).
* :func:`cut_ranges` turns the shares into contiguous slices in rank order.
* :func:`micro_batches` cuts one rank's share into micro-batches of at most its cap.
* :class:`SampleOrder` is a deterministic permutation of ``range(n)`` per
  data-epoch (a Feistel network with cycle walking: O(1) memory, any index
  computable on its own, so a rank only computes the indices it consumes).
* :class:`DataCursor` is the global position in that order; it is saved in
  every checkpoint and moves by the size of the global batch at every
  committed step, whatever the world and the split.
* :class:`ThroughputTracker` keeps an average of samples/s per process and decides
  when a new split is worth it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from heterotrain_contract import split_global_batch

__all__ = [
    "DataCursor",
    "SampleOrder",
    "ThroughputTracker",
    "cut_ranges",
    "micro_batches",
    "predicted_step_time",
    "split_batch",
]

_MASK64 = (1 << 64) - 1


def split_batch(global_batch: int, weights: Sequence[float]) -> list[int]:
    """Local batch sizes proportional to ``weights`` (see :func:`heterotrain_contract.split_global_batch`)."""
    return split_global_batch(global_batch, list(weights))


def cut_ranges(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` slices of a global batch, in rank order."""
    out: list[tuple[int, int]] = []
    start = 0
    for s in sizes:
        if s < 0:
            raise ValueError("negative share")
        out.append((start, start + s))
        start += s
    return out


def micro_batches(n: int, cap: int | None) -> list[int]:
    """Sizes of the micro-batches a share of ``n`` samples is put through, at most ``cap`` each: as few
    as the cap allows, as even as can be (``[n]`` without a cap, ``[]`` for no sample)."""
    if n <= 0:
        return []
    if cap is None or cap >= n:
        return [n]
    if cap < 1:
        raise ValueError(f"micro-batch cap must be >= 1, got {cap}")
    return split_global_batch(n, [1.0] * math.ceil(n / cap))


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class SampleOrder:
    """A seeded permutation of ``range(n)``, different for every data-epoch.

    With numpy, the permutation of the data-epoch in use is computed once, whole, and kept (up to
    :attr:`CACHE_LIMIT` positions): a step then slices it instead of hashing its positions again.
    """

    ROUNDS = 4
    CACHE_LIMIT = 1 << 22  # positions (as uint64: 32 MB)

    def __init__(self, n: int, seed: int = 0) -> None:
        if n < 0:
            raise ValueError("dataset length must be >= 0")
        self.n = n
        self.seed = seed
        bits = max(2, math.ceil(math.log2(max(n, 2))))
        self._half = (bits + 1) // 2
        self._mask = (1 << self._half) - 1
        self._cached: tuple[int, Any] | None = None  # (data-epoch, its whole permutation as a numpy array)

    def _keys(self, epoch: int) -> list[int]:
        base = _mix64((self.seed * 0x100000001B3 + epoch) & _MASK64)
        return [_mix64(base + r) for r in range(self.ROUNDS)]

    def _feistel(self, x: int, keys: Sequence[int]) -> int:
        h, m = self._half, self._mask
        left, right = x >> h, x & m
        for k in keys:
            left, right = right, left ^ (_mix64(right ^ k) & m)
        return (left << h) | right

    def index(self, epoch: int, i: int, _keys: Sequence[int] | None = None) -> int:
        """The sample at position ``i`` of data-epoch ``epoch``."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        keys = _keys if _keys is not None else self._keys(epoch)
        x = self._feistel(i, keys)
        while x >= self.n:  # cycle walking keeps it a bijection on [0, n)
            x = self._feistel(x, keys)
        return x

    def slice(self, epoch: int, start: int, stop: int) -> list[int]:
        """Positions ``start..stop-1`` of data-epoch ``epoch`` (vectorised with numpy when present)."""
        keys = self._keys(epoch)
        if stop - start >= 64:
            if start < 0 or stop > self.n:
                raise IndexError((start, stop))
            whole = self._permutation(epoch, keys)
            if whole is not None:
                return list(whole[start:stop].tolist())
            fast = _permute_numpy(self, keys, start, stop)
            if fast is not None:
                return list(fast.tolist())
        return [self.index(epoch, i, keys) for i in range(start, stop)]

    def _permutation(self, epoch: int, keys: Sequence[int]) -> Any:
        """Data-epoch ``epoch``'s whole permutation (numpy), kept for the next slices; None past the limit
        or without numpy."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        if self.n > self.CACHE_LIMIT:
            return None
        whole = _permute_numpy(self, keys, 0, self.n)
        if whole is not None:
            self._cached = (epoch, whole)
        return whole


def _permute_numpy(order: SampleOrder, keys: Sequence[int], start: int, stop: int) -> Any:
    """Positions ``start..stop-1`` of the same permutation as :meth:`SampleOrder.index`, computed on uint64
    arrays (wrapping arithmetic); None without numpy."""
    try:
        import numpy as np
    except ImportError:  # the SDK only needs torch; numpy is an optional speed-up
        return None
    u = np.uint64
    c1, c2, c3 = u(0x9E3779B97F4A7C15), u(0xBF58476D1CE4E5B9), u(0x94D049BB133111EB)
    h, m = u(order._half), u(order._mask)
    ks = [u(k) for k in keys]

    def mix(x: Any) -> Any:
        x = x + c1
        x = (x ^ (x >> u(30))) * c2
        x = (x ^ (x >> u(27))) * c3
        return x ^ (x >> u(31))

    def feistel(x: Any) -> Any:
        left, right = x >> h, x & m
        for k in ks:
            left, right = right, left ^ (mix(right ^ k) & m)
        return (left << h) | right

    with np.errstate(over="ignore"):
        x = feistel(np.arange(start, stop, dtype=np.uint64))
        n = u(order.n)
        todo = x >= n
        while todo.any():
            x[todo] = feistel(x[todo])
            todo = x >= n
    return x


@dataclass
class DataCursor:
    """Global position in the sample order: saved in every checkpoint."""

    data_epoch: int = 0
    position: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"data_epoch": self.data_epoch, "position": self.position}

    @classmethod
    def from_dict(cls, d: Mapping[str, int]) -> DataCursor:
        return cls(int(d["data_epoch"]), int(d["position"]))

    def step_span(self, dataset_len: int, global_batch: int, drop_last: bool = False) -> tuple[int, int, int]:
        """``(data_epoch, start, stop)`` of the next global batch.

        A global batch never straddles two data-epochs: the last one of an
        epoch is shorter (or skipped with ``drop_last``).
        """
        if dataset_len <= 0 or global_batch <= 0:
            raise ValueError("dataset length and global batch must be > 0")
        epoch, pos = self.data_epoch, self.position
        if pos >= dataset_len or (drop_last and dataset_len - pos < global_batch):
            epoch, pos = epoch + 1, 0
        return epoch, pos, min(pos + global_batch, dataset_len)

    def advance(self, dataset_len: int, global_batch: int, drop_last: bool = False) -> None:
        epoch, _start, stop = self.step_span(dataset_len, global_batch, drop_last)
        self.data_epoch, self.position = epoch, stop
        if self.position >= dataset_len:
            self.data_epoch, self.position = self.data_epoch + 1, 0


def predicted_step_time(sizes: Sequence[int], throughputs: Sequence[float]) -> float:
    """Step time of a split: the slowest rank's ``size / samples-per-second``."""
    worst = 0.0
    for s, t in zip(sizes, throughputs, strict=True):
        if s > 0:
            worst = max(worst, s / t if t > 0 else math.inf)
    return worst


@dataclass
class ThroughputTracker:
    """Samples/s per process (keyed by name), and the rebalance rule.

    A process's estimate is the mean of its own first observations, then an exponential average that
    gives each new one the weight ``alpha``: one step's rate on a shared host varies by several percent,
    and a split that chased the last step's noise would be off by as much (the step waits for the rank
    the noise made slowest); the average still follows a real change of speed within about 1/alpha steps.
    An estimate this process did not measure itself (rank 0's, a checkpoint's) is trusted as one of many
    observations.  A new split is proposed when it saves ``min_gain`` of the predicted step time.
    """

    alpha: float = 0.1
    min_interval: float = 30.0
    min_gain: float = 0.01  # rebalance only when the predicted step time drops by 1%
    ema: dict[str, float] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # observations made here, per process

    def observe(self, pod: str, samples: int, seconds: float) -> None:
        if samples <= 0 or seconds <= 0:
            return
        rate = samples / seconds
        old = self.ema.get(pod)
        n = self.seen.get(pod, 0)
        self.seen[pod] = n + 1
        if old is None:
            self.ema[pod] = rate
            return
        weight = max(self.alpha, 1.0 / (n + 1)) if n > 0 else self.alpha
        self.ema[pod] = (1 - weight) * old + weight * rate

    def estimates(self, pods: Sequence[str], prior_weights: Sequence[float]) -> list[float]:
        """Samples/s of every pod; unmeasured pods get ``prior weight x`` the measured rate per weight."""
        ratios = [
            self.ema[p] / w for p, w in zip(pods, prior_weights, strict=True) if p in self.ema and w > 0
        ]
        per_weight = sum(ratios) / len(ratios) if ratios else 1.0
        return [self.ema.get(p, w * per_weight) for p, w in zip(pods, prior_weights, strict=True)]

    def proposal(
        self, global_batch: int, current: Sequence[int], throughputs: Sequence[float]
    ) -> list[int] | None:
        """A better split than ``current`` for the measured ``throughputs``, or None."""
        if any(t <= 0 for t in throughputs):
            return None
        new = split_batch(global_batch, throughputs)
        if list(new) == list(current):
            return None
        old_t = predicted_step_time(current, throughputs)
        new_t = predicted_step_time(new, throughputs)
        if new_t < old_t * (1.0 - self.min_gain):
            return new
        return None

    def to_dict(self) -> dict[str, object]:
        return {"alpha": self.alpha, "ema": dict(self.ema)}

    def load_dict(self, d: Mapping[str, object]) -> None:
        ema = d.get("ema")
        if isinstance(ema, Mapping):
            self.ema = {str(k): float(v) for k, v in ema.items()}
