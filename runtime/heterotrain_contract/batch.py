"""The split of a global batch between ranks: the one function every side computes alike."""

from __future__ import annotations

from collections.abc import Sequence


def split_global_batch(global_batch: int, weights: Sequence[float]) -> list[int]:
    """Cut ``global_batch`` samples among ranks proportionally to ``weights``.

    Largest-remainder rounding: the shares sum to ``global_batch`` exactly;
    every rank gets at least one sample when ``global_batch >= len(weights)``;
    ties go to the lower rank, so every process computes the same split.
    """
    n = len(weights)
    if n == 0:
        return []
    if global_batch < 0:
        raise ValueError("global batch must be >= 0")
    w = [max(float(x), 0.0) for x in weights]
    if sum(w) <= 0.0:
        w = [1.0] * n
    total = sum(w)
    exact = [global_batch * x / total for x in w]
    shares = [int(e) for e in exact]
    left = global_batch - sum(shares)
    order = sorted(range(n), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[:left]:
        shares[i] += 1
    if global_batch >= n:
        # Every rank gets at least one sample, taken from the largest share.
        for i in range(n):
            if shares[i] == 0:
                donor = max(range(n), key=lambda j: (shares[j], -j))
                shares[donor] -= 1
                shares[i] = 1
    return shares
