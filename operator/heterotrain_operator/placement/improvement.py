"""Local improvement: step 6 of ``plan``, a bounded local search over the workers placed in this round.

:func:`improve` repeats, up to a node-visit budget: move a worker to a faster type with room
(:func:`_upgrade`); hand a node's accelerators from workers of one job that can move elsewhere (or that
their job can spare above its min) to workers of another job (:func:`_exchange`); or clear room on a node
shared by several jobs' workers (moved to other nodes of their type, to their next type, or dropped above
min) for a larger or faster worker (:func:`_clear`); each only when total throughput strictly increases;
then grow again.  Kept workers are never moved here.
"""

from __future__ import annotations

import heapq

from .packing import grow
from .state import BIG, EPS, INF, JobState, NodeState, OptionState, State

__all__ = ["improve"]

_IMPROVE_BUDGET = 50  # node visits per node and per requested worker, for the local search
_IMPROVE_ROUNDS = 20

# Per (job idx, type): the job's fastest other type with room and the node its worker would go to.
_AltCache = dict[tuple[int, str], tuple[OptionState, NodeState] | None]


def improve(st: State) -> None:
    st.budget = _IMPROVE_BUDGET * (len(st.nodes) + sum(j.max for j in st.jobs if j.admitted)) + 1000
    for _ in range(_IMPROVE_ROUNDS):
        changed = _upgrade(st)
        changed = _exchange(st) or changed
        changed = _clear(st) or changed
        if not changed:
            break
        grow(st)
        if st.budget <= 0:
            break


def _upgrade(st: State) -> bool:
    """Move workers placed in this round to a faster accepted type that has room."""
    improved = False
    for j in st.jobs:
        if not j.admitted or len(j.opts) < 2:
            continue
        for fi, fast in enumerate(j.opts):
            while fast.count < fast.cap:
                slow = next(
                    (o for o in reversed(j.opts[fi + 1 :]) if o.new_nodes and o.r < fast.r - EPS), None
                )
                if slow is None:
                    break
                n = st.find(j, fast)
                if n is None:
                    break
                # Take the slow worker off the node it leaves the most free.
                src = min(slow.new_nodes, key=lambda i: (-st.nodes[i].acc, i))
                st.give(st.nodes[src], j, slow, kept=False)
                st.take(n, j, fast, kept=False)
                improved = True
    return improved


def _exchange(st: State) -> bool:
    """Give a node's accelerators to workers of another job that yield more throughput there."""
    improved = False
    wanting: list[tuple[float, tuple[int, float, str], int, int]] = []
    for b in st.jobs:
        if not b.admitted or b.total >= b.max:
            continue
        for k, ob in enumerate(b.opts):
            if ob.count < ob.cap and ob.pool_set and ob.r > EPS:
                wanting.append((-ob.r / ob.p, b.rank, b.idx, k))
    wanting.sort()
    # Victim jobs per type: admitted jobs with workers of that type placed in this round.
    by_type: dict[str, list[tuple[float, tuple[int, float, str], int]]] = {}
    for a in st.jobs:
        if a.admitted:
            for oa in a.opts:
                if oa.new_nodes:
                    by_type.setdefault(oa.type, []).append((oa.r / oa.p, a.rank, a.idx))
    for lst in by_type.values():
        lst.sort()
    alt_cache: _AltCache = {}
    for _, _, bidx, k in wanting:
        if st.budget <= 0:
            break
        b = st.jobs[bidx]
        ob = b.opts[k]
        if b.total >= b.max or ob.count >= ob.cap:
            continue
        for aidx in _exchange_victims(st, b, ob, by_type.get(ob.type, [])):
            if st.budget <= 0:
                break
            a = st.jobs[aidx]
            oa = a.opt_by_type[ob.type]
            alt = _alternative(st, a, oa, alt_cache)
            if _hand_over(st, a, oa, b, ob, alt):
                alt_cache.clear()
                improved = True
                break
    return improved


def _exchange_victims(
    st: State, b: JobState, ob: OptionState, of_type: list[tuple[float, tuple[int, float, str], int]]
) -> list[int]:
    """The jobs whose workers of ``ob``'s type, placed in this round, may give way to a worker of ``b``."""
    dens_b = ob.r / ob.p
    cands: list[int] = []
    for dens_a, _, aidx in of_type:
        st.budget -= 1
        a = st.jobs[aidx]
        oa = a.opt_by_type[ob.type]
        if a is b or not oa.new_nodes:
            continue
        # Unless a can go elsewhere, only workers worth less per accelerator are worth evicting.
        if dens_a >= dens_b - EPS and not any(
            o.r > EPS and o.type != oa.type and o.count < o.cap for o in a.opts
        ):
            continue
        cands.append(aidx)
    return cands


def _alternative(
    st: State, a: JobState, oa: OptionState, alt_cache: _AltCache
) -> tuple[OptionState, NodeState] | None:
    # Cheapest way for a to give up one worker of this type: move it (to its fastest other type
    # with room; cached until the next change), or drop it.
    ck = (a.idx, oa.type)
    if ck in alt_cache:
        alt = alt_cache[ck]
    else:
        alt = None
        for o2 in a.opts:
            if o2.type == oa.type or o2.count >= o2.cap or o2.r <= EPS:
                continue
            m = st.find(a, o2)
            st.budget -= 1
            if m is not None:
                alt = (o2, m)
                break
        alt_cache[ck] = alt
    return alt


def _hand_over(
    st: State,
    a: JobState,
    oa: OptionState,
    b: JobState,
    ob: OptionState,
    alt: tuple[OptionState, NodeState] | None,
) -> bool:
    """On the first node of ``a``'s workers of type ``oa`` where it strictly gains throughput, evict as
    many of them as one worker of ``b`` needs (moved to ``alt``, or dropped) and place ``b``'s workers
    (type ``ob``) there.  Returns whether it did."""
    spare = a.total - a.min  # workers a can drop outright
    move_loss = oa.r - alt[0].r if alt is not None else INF
    for nidx in sorted(oa.new_nodes):
        st.budget -= 1
        n = st.nodes[nidx]
        if n.pool not in ob.pool_set or nidx in b.avoid:
            continue
        # How many of a's workers must leave n so that one worker of b fits.
        out = max(1, -(-(ob.p - n.acc) // oa.p))
        if ob.cpu > n.cpu:
            out = max(out, -(-(ob.cpu - n.cpu) // oa.cpu) if oa.cpu else BIG)
        if ob.mem > n.mem:
            out = max(out, -(-(ob.mem - n.mem) // oa.mem) if oa.mem else BIG)
        if out > oa.new_nodes[nidx]:
            continue
        drop = out <= spare and oa.r <= move_loss
        loss = out * (oa.r if drop else move_loss)
        if loss == INF:
            continue
        acc, cpu, mem = n.acc + out * oa.p, n.cpu + out * oa.cpu, n.mem + out * oa.mem
        kk = acc // ob.p
        if ob.cpu:
            kk = min(kk, cpu // ob.cpu)
        if ob.mem:
            kk = min(kk, mem // ob.mem)
        kk = min(kk, b.max - b.total, ob.cap - ob.count)
        if kk * ob.r - loss <= EPS:
            continue
        mark = st.begin()
        ok = True
        for _ in range(out):
            st.give(n, a, oa, kept=False)
            if not drop:
                assert alt is not None
                dest = st.find(a, alt[0], exclude=n.idx)
                if dest is None or alt[0].count >= alt[0].cap:
                    ok = False
                    break
                st.take(dest, a, alt[0], kept=False)
        if ok:
            for _ in range(kk):
                st.take(n, b, ob, kept=False)
        if not ok:
            st.rollback(mark)
            st.commit(mark)
            continue
        st.commit(mark)
        return True
    return False


def _evict(st: State, a: JobState, oa: OptionState, n: NodeState) -> float | None:
    """Take one of ``a``'s workers of type ``oa`` placed in this round off ``n``: onto another node of the
    same type, else onto ``a``'s fastest other type with room, else drop it if ``a`` stays at or above
    its min.  Returns the throughput lost, or None (and changes nothing) when none of these is possible.
    """
    st.give(n, a, oa, kept=False)
    m = st.find(a, oa, exclude=n.idx)
    if m is not None:
        st.take(m, a, oa, kept=False)
        return 0.0
    for o2 in a.opts:  # fastest first: the first with room loses the least
        if o2 is oa or o2.count >= o2.cap or not o2.pool_set:
            continue
        st.budget -= 1
        m = st.find(a, o2, exclude=n.idx)
        if m is not None:
            st.take(m, a, o2, kept=False)
            return oa.r - o2.r
    if a.total >= a.min:
        return oa.r
    st.take(n, a, oa, kept=False)
    return None


def _slowest_new(j: JobState, below: float) -> OptionState | None:
    """``j``'s option with the lowest throughput under ``below`` that has workers placed in this round."""
    slow: OptionState | None = None
    for o in j.opts:
        if o.new_nodes and o.r < below and (slow is None or o.r < slow.r):
            slow = o
    return slow


def _evict_cost(a: JobState, oa: OptionState) -> float:
    """Estimated throughput lost per accelerator freed by evicting one of ``a``'s ``oa`` workers."""
    alt = max((o.r for o in a.opts if o is not oa and o.count < o.cap and o.pool_set), default=-1.0)
    if alt < 0:
        alt = 0.0 if a.total > a.min else -BIG
    return (oa.r - alt) / oa.p


def _clear(st: State) -> bool:
    """Clear room on one node for workers of another job, evicting workers of *several* jobs.

    ``_exchange`` hands a node from one victim job to another; on a node shared by small workers of
    several jobs no single victim frees enough (eight 1-GPU workers of three jobs on the 8-GPU node an
    8-GPU worker needs).  Here a job that would gain from more workers of type t (below its max: the
    worker's throughput; at its max: the gain of moving its slowest worker placed in this round there)
    picks the nodes of t closest to fitting one; the workers placed there in this round are evicted,
    cheapest estimated loss per accelerator first, each moved to another node of its type, to its job's
    next type, or dropped above its job's min (``_evict``), until the worker fits.  The change is kept
    only when total throughput strictly increases.
    """
    improved = False
    per_type: dict[str, list[NodeState]] = {}
    for n in st.nodes:
        if n.new and n.pool >= 0:
            per_type.setdefault(n.accelerator or "", []).append(n)
    if not per_type:
        return False
    for _, _, bidx, k in _clear_wanting(st, per_type):
        if st.budget <= 0:
            break
        b = st.jobs[bidx]
        ob = b.opts[k]
        for n in _closest_to_fit(st, b, ob, per_type[ob.type]):
            if st.budget <= 0 or ob.count >= ob.cap:
                break
            if b.total >= b.max and _slowest_new(b, ob.r - EPS) is None:
                break
            if _clear_node(st, n, b, ob):
                improved = True
    return improved


def _clear_wanting(
    st: State, per_type: dict[str, list[NodeState]]
) -> list[tuple[float, tuple[int, float, str], int, int]]:
    """(gain per accelerator, negated; job rank; job idx; option index) of every option that would gain
    from one more worker on a node of its type that holds workers placed in this round, best first."""
    wanting: list[tuple[float, tuple[int, float, str], int, int]] = []
    for b in st.jobs:
        if not b.admitted:
            continue
        for k, ob in enumerate(b.opts):
            if ob.count >= ob.cap or not ob.pool_set or ob.r <= EPS or ob.type not in per_type:
                continue
            gain = ob.r
            if b.total >= b.max:
                slow = _slowest_new(b, ob.r - EPS)
                if slow is None:
                    continue
                gain -= slow.r
            wanting.append((-gain / ob.p, b.rank, b.idx, k))
    wanting.sort()
    return wanting


def _closest_to_fit(st: State, b: JobState, ob: OptionState, of_type: list[NodeState]) -> list[NodeState]:
    st.budget -= len(of_type)  # one visit per node
    p, pool_set = ob.p, ob.pool_set
    # The three nodes closest to fitting a worker (fewest accelerators missing, then index) among
    # those where it does not fit yet but would once the other jobs' workers placed in this round
    # left: free accelerators plus theirs (every worker on a node of type t is of type t).
    cands = heapq.nsmallest(
        3,
        (
            (p - n.acc, n.idx, n)
            for n in of_type
            if n.acc + n.new_acc - n.new.get(b.idx, 0) * p >= p
            and n.pool in pool_set
            and n.idx not in b.avoid
            and not st.fits(n, b, ob)
        ),
    )
    return [n for _, _, n in cands]


def _clear_node(st: State, n: NodeState, b: JobState, ob: OptionState) -> bool:
    """Evict the other jobs' workers placed on ``n`` in this round until a worker of ``b`` (type ``ob``)
    fits, place ``b``'s workers there, and keep the change only if total throughput strictly increases.
    Returns whether it was kept."""
    victims = sorted(
        (_evict_cost(st.jobs[aidx], st.jobs[aidx].opt_by_type[ob.type]), aidx)
        for aidx in n.new
        if aidx != b.idx
    )
    mark = st.begin()
    delta = 0.0
    for _, aidx in victims:
        a = st.jobs[aidx]
        oa = a.opt_by_type[ob.type]
        while n.new.get(aidx, 0) and not st.fits(n, b, ob):
            lost = _evict(st, a, oa, n)
            if lost is None:
                break
            delta -= lost
        if st.fits(n, b, ob):
            break
    while st.fits(n, b, ob) and ob.count < ob.cap:
        if b.total >= b.max:
            slow = _slowest_new(b, ob.r - EPS)
            if slow is None:
                break
            src = min(slow.new_nodes, key=lambda i: (-st.nodes[i].acc, i))
            st.give(st.nodes[src], b, slow, kept=False)
            delta -= slow.r
        st.take(n, b, ob, kept=False)
        delta += ob.r
    if delta > EPS:
        st.commit(mark)
        return True
    st.rollback(mark)
    st.commit(mark)
    return False
