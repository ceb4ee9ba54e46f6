"""Preemption: shrinking strictly lower priority running jobs towards their min to admit a gang.

:func:`preempt_for` is the last resort of an admission attempt (step 2 of ``plan``, after free capacity
and relocation): victims are evicted lowest priority and newest first, workers that are not running yet
before running ones (unless the attempt counts every kept worker as running), on nodes the job can use,
and each eviction is logged (``State.pre_log``) so that a failed attempt can undo it.
"""

from __future__ import annotations

from .packing import fill
from .state import JobState, State

__all__ = ["preempt_for"]


def preempt_for(st: State, j: JobState, need: int, fresh_first: bool = True) -> int:
    """Shrink strictly lower priority jobs towards their min on nodes ``j`` can use, placing ``j`` there.

    With ``fresh_first``, workers that are not running yet (placed earlier in this plan) are evicted
    before running ones on each node; without it, every kept worker counts as running, which is the
    order the next plan will use once this one is applied.
    """
    prio = j.req.priority
    spare: dict[int, int] = {}
    victims: list[JobState] = []
    for v in st.jobs:
        if v.req.priority < prio and v.kept and v.total > v.min:
            spare[v.idx] = v.total - v.min
            victims.append(v)
    if not victims:
        return 0
    # Victim order: lowest priority first, then newest first.
    vorder = sorted(victims, key=lambda v: (v.req.priority, -v.req.created, v.req.key))
    vrank = {v.idx: i for i, v in enumerate(vorder)}
    cand: dict[int, int] = {}  # node idx -> best victim rank on it
    for v in vorder:
        for nidx in v.kept:
            n = st.nodes[nidx]
            if n.pool < 0 or nidx in j.avoid or not any(n.pool in o.pool_set for o in j.opts):
                continue
            r = vrank[v.idx]
            if nidx not in cand or r < cand[nidx]:
                cand[nidx] = r
    placed = 0
    for nidx in sorted(cand, key=lambda i: (cand[i], i)):
        if placed >= need:
            break
        n = st.nodes[nidx]
        while placed < need:
            got = fill(st, j, 1, only=n)
            if got:
                placed += got
                continue
            # Evict the cheapest victim worker on this node, if that can help.
            opts_here = [o for o in j.opts if n.pool in o.pool_set and o.count < o.cap]
            if not opts_here or j.total >= j.max:
                break
            # Workers that are not running yet (placed earlier in this plan) go first: evicting them is free.
            here = sorted(
                (fresh_first and n.kept[vi] <= st.jobs[vi].orig.get(nidx, 0), vrank[vi], vi)
                for vi in n.kept
                if vi in vrank and spare[vi] > 0
            )
            if not here:
                break
            # a node holds one type: every worker of a victim here is of its option for that type
            vopts = [
                (st.jobs[vi].opt_by_type[n.accelerator or ""], min(n.kept[vi], spare[vi]))
                for _, _, vi in here
            ]
            acc = n.acc + sum(ov.p * k for ov, k in vopts)
            cpu = n.cpu + sum(ov.cpu * k for ov, k in vopts)
            mem = n.mem + sum(ov.mem * k for ov, k in vopts)
            if not any(acc >= o.p and cpu >= o.cpu and mem >= o.mem for o in opts_here):
                break
            v = st.jobs[here[0][2]]
            ov = v.opt_by_type[n.accelerator or ""]
            running = n.kept[v.idx] <= v.orig.get(nidx, 0)
            st.give(n, v, ov, kept=True)
            spare[v.idx] -= 1
            if running:
                v.orig[nidx] -= 1
                v.preempted.append((nidx, ov.type))
            st.pre_log.append((v.idx, nidx, running))
    return placed
