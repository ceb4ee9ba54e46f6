"""Greedy packing: placing, lifting and re-placing the workers of this round one at a time.

* :func:`fill` places up to n new workers of a job on the best node of each type in turn (the node search
  of :meth:`State.find <.state.State.find>`), :func:`grow` lets admitted jobs grow to their max one worker
  at a time (step 5 of ``plan``: workers within their LP targets first, best reduced value first).
* The order helpers: :func:`price_of` (what a worker's accelerators are worth to the other jobs, at the
  shadow prices), :func:`by_value` (a job's types, best reduced value first), :func:`flex_key` (least
  flexible jobs first) and :func:`size_key` (largest workers first).
* Whole-placement moves: :func:`lift_new` removes this round's workers, :func:`settle` turns them into kept
  ones, :func:`drop_kept` removes a job's kept workers, :func:`new_placement` / :func:`restore_new` save and
  restore this round's placement, :func:`throughput` sums the admitted jobs' throughput.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from .state import JobState, NodeState, OptionState, State

__all__ = [
    "by_value",
    "drop_kept",
    "fill",
    "flex_key",
    "grow",
    "lift_new",
    "new_placement",
    "price_of",
    "restore_new",
    "settle",
    "size_key",
    "throughput",
]


def fill(
    st: State,
    j: JobState,
    need: int,
    only: NodeState | None = None,
    opts: Sequence[OptionState] | None = None,
) -> int:
    """Place up to ``need`` new workers of ``j`` (types in ``opts`` order, default fastest first)."""
    placed = 0
    for o in j.opts if opts is None else opts:
        while placed < need and o.count < o.cap and j.total < j.max:
            if only is not None:
                if only.pool not in o.pool_set or only.idx in j.avoid or not st.fits(only, j, o):
                    break
                n: NodeState | None = only
            else:
                n = st.find(j, o)
            if n is None:
                break
            st.take(n, j, o, kept=False)
            placed += 1
        if placed >= need:
            break
    return placed


def price_of(st: State, o: OptionState) -> float:
    """What one worker of option ``o`` costs the other jobs, at the shadow prices (0 if unpriced)."""
    return st.prices.get((o.type, o.p), 0.0) * o.p


def by_value(st: State, j: JobState) -> list[OptionState]:
    """The job's types, best reduced value (throughput minus the price of the accelerators) first."""
    return sorted(j.opts, key=lambda o: (-(o.r - price_of(st, o)), -o.r, o.rank))


def flex_key(j: JobState) -> tuple[int, tuple[int, float, str]]:
    """Least flexible jobs (fewest usable accepted types) are placed first when placements are redone."""
    return (sum(1 for o in j.opts if o.pool_set), j.rank)


def size_key(j: JobState) -> tuple[int, int, tuple[int, float, str]]:
    """Largest workers first (first-fit decreasing), then least flexible first."""
    smallest = min((o.p for o in j.opts if o.pool_set), default=0)
    return (-smallest, sum(1 for o in j.opts if o.pool_set), j.rank)


def lift_new(st: State, jobs: Iterable[JobState]) -> None:
    """Remove every worker of ``jobs`` placed in this round."""
    for j in jobs:
        for o in j.opts:
            for nidx, c in sorted(o.new_nodes.items()):
                for _ in range(c):
                    st.give(st.nodes[nidx], j, o, kept=False)


def settle(st: State, j: JobState) -> None:
    """Turn the workers of ``j`` placed in this round into kept ones: later steps leave them alone."""
    for o in j.opts:
        for nidx, c in sorted(o.new_nodes.items()):
            n = st.nodes[nidx]
            for _ in range(c):
                st.give(n, j, o, kept=False)
                st.take(n, j, o, kept=True)


def drop_kept(st: State, j: JobState) -> None:
    for nidx in sorted(j.kept):
        n = st.nodes[nidx]
        o = j.opt_by_type[n.accelerator or ""]
        for _ in range(j.kept[nidx]):
            st.give(n, j, o, kept=True)


def new_placement(st: State) -> list[tuple[int, str, dict[int, int]]]:
    return [(j.idx, o.type, dict(o.new_nodes)) for j in st.jobs for o in j.opts if o.new_nodes]


def restore_new(st: State, saved: list[tuple[int, str, dict[int, int]]]) -> None:
    lift_new(st, st.jobs)
    for jidx, typ, new_nodes in saved:
        j = st.jobs[jidx]
        o = j.opt_by_type[typ]
        for nidx, c in sorted(new_nodes.items()):
            for _ in range(c):
                st.take(st.nodes[nidx], j, o, kept=False)


def throughput(st: State) -> float:
    return sum(o.r * o.count for j in st.jobs if j.admitted for o in j.opts)


def grow(st: State) -> int:
    """Grow admitted jobs below their max one worker at a time, workers within their LP targets first, best
    reduced value first; returns how many were placed."""
    heap: list[tuple[int, float, float, tuple[int, float, str], int, int, int]] = []
    for j in st.jobs:
        if not j.admitted or j.total >= j.max:
            continue
        for k, o in enumerate(j.opts):
            if o.count >= o.cap or not o.pool_set:
                continue
            rho = o.r - price_of(st, o)
            heap.append((int(o.count >= o.target), -rho, -o.r, j.rank, o.rank, j.idx, k))
    heapq.heapify(heap)
    added = 0
    while heap:
        phase, nrho, nr, jr, orank, jidx, k = heap[0]
        j = st.jobs[jidx]
        o = j.opts[k]
        if j.total >= j.max or o.count >= o.cap:
            heapq.heappop(heap)
            continue
        if phase == 0 and o.count >= o.target:
            heapq.heapreplace(heap, (1, nrho, nr, jr, orank, jidx, k))
            continue
        n = st.find(j, o)
        if n is None:
            heapq.heappop(heap)
            continue
        st.take(n, j, o, kept=False)
        added += 1
    return added
