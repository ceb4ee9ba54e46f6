"""Gang admission: step 2 of ``plan`` (:func:`admit`) and the retry of step 7 (:func:`retry`).

Jobs are visited in priority order.  Every job below ``min_workers`` gets its missing workers placed at
once (:func:`_attempt`): in free capacity by reduced value, then by relocating workers placed earlier in
this round (:mod:`.relocation`), then by preempting lower priority jobs (:mod:`.preemption`); a failed
attempt is rolled back.  The last chance is the backfill by re-packing (:func:`_repack_for`).  A job that
still does not fit is refused with a report of what fits (:func:`_fit_report`).
"""

from __future__ import annotations

from .packing import by_value, drop_kept, fill, lift_new, settle
from .preemption import preempt_for
from .relocation import fill_mins, relocate_for
from .state import JobState, State
from .types import (
    REASON_INSUFFICIENT_CAPACITY,
    REASON_INVALID_SPEC,
    REASON_NO_MATCHING_NODES,
    REASON_SUSPENDED,
)

__all__ = ["admit", "retry"]


def admit(st: State) -> None:
    st.budget = 20 * len(st.nodes) + 50 * len(st.jobs) + 1000
    for j in st.jobs:
        req = j.req
        if j.reason == REASON_INVALID_SPEC:
            continue
        if req.suspended:
            j.reason, j.message = REASON_SUSPENDED, "job is suspended"
            continue
        if j.total >= j.min:
            j.admitted = True
            continue
        if not any(o.pools[0] or o.pools[1] for o in j.opts):
            drop_kept(st, j)
            j.reason = REASON_NO_MATCHING_NODES
            types = ", ".join(f"{o.type} ({o.resource})" for o in j.opts)
            j.message = (
                f"no ready, schedulable node of an accepted type [{types}] matches the job's "
                "node selector and tolerations"
            )
            continue
        if not _attempt(st, j) and not _repack_for(st, j):
            had = j.total
            drop_kept(st, j)
            j.reason = REASON_INSUFFICIENT_CAPACITY
            lost = f"; lost {len(j.dropped)} running worker(s): {j.dropped[0]}" if j.dropped else ""
            have = f" (has {had} running)" if had else ""
            j.message = f"needs {j.min} workers at once{have}, not enough fit: {_fit_report(st, j)}{lost}"


def _fit_report(st: State, j: JobState) -> str:
    parts = []
    for o in j.opts:
        free = 0
        fit = 0
        for pid in o.pools[0] + o.pools[1]:
            cnt = st.pools[pid].cnt
            for f in range(1, len(cnt)):
                free += f * cnt[f]
                fit += (f // o.p) * cnt[f]
        fit = min(fit, max(0, o.cap - o.count), max(0, j.max - j.total))
        parts.append(f"{o.type} {fit} fit ({free} free, {o.p} per worker)")
    return ", ".join(parts)


def _attempt(st: State, j: JobState) -> bool:
    """Place the missing min workers of ``j`` at once (free room, then moves, then preemption).

    Preemption first evicts workers that are not running yet.  That spends the victims' room above
    their min on the cheap workers, which can leave too little of it on another node the gang needs,
    while the next plan (where those workers run and all count the same) would admit ``j``.  So when
    lower priority jobs hold such workers and the attempt fails, it is made once more with every kept
    worker counted as running: the first plan then refuses only what the next plan refuses too.
    """
    if _attempt_with(st, j, fresh_first=True):
        return True
    prio = j.req.priority
    if any(
        v.req.priority < prio and any(c > v.orig.get(nidx, 0) for nidx, c in v.kept.items()) for v in st.jobs
    ):
        return _attempt_with(st, j, fresh_first=False)
    return False


def _attempt_with(st: State, j: JobState, fresh_first: bool) -> bool:
    need = j.min - j.total
    mark = st.begin()
    pmark = len(st.pre_log)
    placed = fill(st, j, need, opts=by_value(st, j))
    if placed < need:
        placed += relocate_for(st, j, need - placed)
    if placed < need:
        placed += preempt_for(st, j, need - placed, fresh_first)
    if placed < need:
        st.rollback(mark)
        st.commit(mark)
        while len(st.pre_log) > pmark:  # evictions of the failed attempt are undone too
            vi, ni, was_running = st.pre_log.pop()
            if was_running:
                st.jobs[vi].preempted.pop()
                st.jobs[vi].orig[ni] += 1
        return False
    st.commit(mark)
    j.admitted = True
    if len(st.pre_log) > pmark:
        # Admitted by preempting others: pin the gang where the room was made (later steps never move
        # kept workers), so the freed accelerators cannot end up with anybody else.
        settle(st, j)
    return True


def _repack_for(st: State, j: JobState) -> bool:
    """Backfill by re-packing: admit ``j`` if the mins of every admitted job fit once re-placed.

    The greedy admission places each gang where it fits best at its turn; that can leave no room for a
    later gang even though a different placement of the earlier gangs' (not yet running) workers would
    hold them all.  Here every worker placed in this round is lifted, and the mins of all admitted jobs
    plus ``j`` are placed again, least flexible jobs first (with the same moves as admission).  Kept
    workers, and gangs pinned by preemption, stay.  If some min does not fit, everything is rolled back.
    Jobs ahead of ``j`` stay admitted either way, so the priority / first-come-first-served order holds.
    """
    lifted = sum(sum(o.new_nodes.values()) for a in st.jobs if a.admitted for o in a.opts)
    if st.budget <= lifted:
        return False
    st.budget -= lifted
    mark = st.begin()
    lift_new(st, (a for a in st.jobs if a.admitted))
    j.admitted = True
    ok = fill_mins(st, (a for a in st.jobs if a.admitted and a.total < a.min))
    if not ok:
        st.rollback(mark)
        st.commit(mark)
        j.admitted = False
        return False
    st.commit(mark)
    return True


def retry(st: State) -> bool:
    """Second chance for jobs refused for capacity, against the plan as it stands after growth.

    Growth may have given lower priority jobs workers above their min; once those run, the next plan
    would preempt them for a refused higher priority job.  Doing it now (evicting workers that are not
    even running yet, first) makes the plan a fixed point: applying it and planning again changes
    nothing.  Every worker placed so far is settled first; returns whether a job was admitted.
    """
    refused = [j for j in st.jobs if not j.admitted and j.reason == REASON_INSUFFICIENT_CAPACITY]
    if not refused:
        return False
    for j in st.jobs:
        settle(st, j)
    changed = False
    for j in refused:
        if _attempt(st, j):
            j.reason = j.message = None
            changed = True
    return changed
