"""Relocation: making room for a job by moving workers placed earlier in this round onto their other types.

* :func:`relocate_for` places missing workers of a job on nodes where room can be made by moving other
  admitted jobs' new workers to their other accepted types (:func:`_make_room`, up to two moves deep with
  :func:`_room_elsewhere`); step 2 of ``plan`` uses it before preemption.
* :func:`fill_mins` brings the admitted jobs below their min up to it, by value and then by relocation,
  when placements are redone (the backfill of admission and the reseat).
"""

from __future__ import annotations

from collections.abc import Iterable

from .packing import by_value, fill, flex_key, size_key
from .state import JobState, NodeState, OptionState, State

__all__ = ["fill_mins", "relocate_for"]


def _make_room(
    st: State, n: NodeState, p: int, cpu: int, mem: int, protect: frozenset[int], depth: int
) -> bool:
    """Move workers placed in this round off ``n`` (not those of ``protect`` jobs) onto other accepted
    types of their jobs until ``p`` accelerators, ``cpu`` and ``mem`` are free there.  With ``depth`` > 0
    a moved worker may in turn displace others on its new node.  Changes are left for the caller to
    commit or roll back."""
    while not (n.acc >= p and n.cpu >= cpu and n.mem >= mem):
        moved = False
        for aidx in sorted(n.new):
            if aidx in protect:
                continue
            a = st.jobs[aidx]
            oa = a.opt_by_type[n.accelerator or ""]
            for ob in by_value(st, a):
                if ob.type == oa.type or ob.count >= ob.cap or not ob.pool_set:
                    continue
                m = st.find(a, ob)
                if m is None and depth > 0:
                    m = _room_elsewhere(st, a, ob, protect | {aidx}, depth - 1)
                if m is not None:
                    st.give(n, a, oa, kept=False)
                    st.take(m, a, ob, kept=False)
                    moved = True
                    break
            if moved:
                break
        if not moved:
            return False
    return True


def _room_elsewhere(
    st: State, a: JobState, ob: OptionState, protect: frozenset[int], depth: int
) -> NodeState | None:
    """A node of ``ob``'s pools on which room for one worker of ``a`` can be made, or None."""
    cands: list[NodeState] = []
    for pid in ob.pools[0] + ob.pools[1]:
        for i in st.pools[pid].nodes:
            st.budget -= 1
            m = st.nodes[i]
            if m.new and m.idx not in a.avoid and any(x not in protect for x in m.new):
                cands.append(m)
    cands.sort(key=lambda m: (-m.acc, m.idx))
    for m in cands[:8]:
        if st.budget <= 0:
            return None
        mark = st.begin()
        if _make_room(st, m, ob.p, ob.cpu, ob.mem, protect, depth):
            return m
        st.rollback(mark)
    return None


def relocate_for(st: State, j: JobState, need: int) -> int:
    """Make room for ``j`` by moving workers placed earlier in this round onto their other types."""
    order = {o.type: i for i, o in enumerate(by_value(st, j))}
    cand: set[int] = set()
    for a in st.jobs:
        if a is j or not a.admitted:
            continue
        for oa in a.opts:
            oj = j.opt_by_type.get(oa.type)
            if oj is None or not oa.new_nodes:
                continue
            cand.update(i for i in oa.new_nodes if st.nodes[i].pool in oj.pool_set and i not in j.avoid)
    placed = 0
    nodes = st.nodes
    protect = frozenset((j.idx,))
    for nidx in sorted(cand, key=lambda i: (order[nodes[i].accelerator or ""], -nodes[i].acc, i)):
        if placed >= need or j.total >= j.max:
            break
        n = nodes[nidx]
        oj = j.opt_by_type[n.accelerator or ""]
        while placed < need and oj.count < oj.cap and j.total < j.max:
            got = 0
            for depth in (0, 1):
                if depth and st.budget <= 0:
                    break
                mark = st.begin()
                if _make_room(st, n, oj.p, oj.cpu, oj.mem, protect, depth):
                    got = fill(st, j, need - placed, only=n)
                if got:
                    placed += got
                    break
                st.rollback(mark)
            if not got:
                break
    return placed


def fill_mins(st: State, jobs: Iterable[JobState], targets: bool = False, by_size: bool = False) -> bool:
    """Bring every admitted job of ``jobs`` below its min up to it, least flexible first (``by_size``:
    largest workers first).

    Each is filled by value (with ``targets``: first up to each type's share in the price LP's primal
    solution), then by relocating others' workers; False as soon as one stays short.
    """
    for j in sorted(jobs, key=size_key if by_size else flex_key):
        if not j.admitted or j.total >= j.min:
            continue
        order = by_value(st, j)
        if targets:
            for o in order:
                if j.total < j.min and o.count < o.target:
                    fill(st, j, min(j.min - j.total, o.target - o.count), opts=(o,))
        fill(st, j, j.min - j.total, opts=order)
        if j.total < j.min:
            relocate_for(st, j, j.min - j.total)
        if j.total < j.min:
            return False
    return True
