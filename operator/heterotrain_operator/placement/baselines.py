"""Baseline placement policies, for the benchmark and for comparison in tests.

They run on the same node index as the planner (so speed comparisons are about the policy, not the data
structure) and they get the same gang admission in priority/FCFS order, so differences in the benchmark
come from type choice and node choice only:

* ``plan_typeblind_spread``: kube-scheduler default-like.  Each worker takes the accepted types in the
  user's listed order and goes to the least allocated node that fits (spreading); throughput is ignored.
  Jobs grow to their max one after another in priority order.
* ``plan_binpack``: Volcano binpack-like.  Same, but the most allocated node that fits (best fit).
* ``plan_single_type``: Kueue flavors / Sia-like.  Each job gets exactly one accelerator type: the fastest
  accepted type on which its ``min_workers`` fit (best-fit nodes); it grows within that type only.

None of them preempts, moves workers or does local improvement.
"""

from __future__ import annotations

from collections.abc import Sequence

from .keeping import keep
from .output import result
from .packing import drop_kept, fill
from .state import JobState, OptionState, State
from .types import (
    REASON_INSUFFICIENT_CAPACITY,
    REASON_INVALID_SPEC,
    REASON_NO_MATCHING_NODES,
    REASON_SUSPENDED,
    ClusterSnapshot,
    JobRequest,
    Plan,
)

__all__ = ["plan_binpack", "plan_single_type", "plan_typeblind_spread"]


class _Baseline(State):
    def __init__(self, snapshot: ClusterSnapshot, jobs: Sequence[JobRequest], *, spread: bool) -> None:
        super().__init__(snapshot, jobs)
        for j in self.jobs:
            j.spread = spread
            j.opts.sort(key=lambda o: o.rank)  # the user's listed order, not fastest first

    def _admit_one(self, j: JobState, need: int) -> bool:
        mark = self.begin()
        if fill(self, j, need) < need:
            self.rollback(mark)
            self.commit(mark)
            return False
        self.commit(mark)
        return True

    def admit(self) -> None:
        for j in self.jobs:
            if j.reason == REASON_INVALID_SPEC:
                continue
            if j.req.suspended:
                j.reason = REASON_SUSPENDED
                continue
            need = j.min - j.total
            if need <= 0 or self._admit_one(j, need):
                j.admitted = True
                continue
            drop_kept(self, j)
            j.reason = (
                REASON_INSUFFICIENT_CAPACITY
                if any(o.pools[0] or o.pools[1] for o in j.opts)
                else REASON_NO_MATCHING_NODES
            )

    def grow(self) -> int:
        added = 0
        for j in self.jobs:
            if j.admitted and j.total < j.max:
                added += fill(self, j, j.max - j.total)
        return added


class _SingleType(_Baseline):
    def __init__(self, snapshot: ClusterSnapshot, jobs: Sequence[JobRequest]) -> None:
        super().__init__(snapshot, jobs, spread=False)
        for j in self.jobs:
            j.opts.sort(key=lambda o: (-o.r, o.rank))  # the fastest type that fits
        self.chosen: dict[int, OptionState] = {}

    def _admit_one(self, j: JobState, need: int) -> bool:
        kept_types = {o.type for o in j.opts if o.count}
        for o in j.opts:
            if kept_types - {o.type}:
                continue
            mark = self.begin()
            placed = 0
            while placed < need and o.count < o.cap:
                n = self.find(j, o)
                if n is None:
                    break
                self.take(n, j, o, kept=False)
                placed += 1
            if placed >= need:
                self.commit(mark)
                self.chosen[j.idx] = o
                return True
            self.rollback(mark)
            self.commit(mark)
        return False

    def grow(self) -> int:
        added = 0
        for j in self.jobs:
            o = self.chosen.get(j.idx)
            if o is None and j.admitted:
                o = next((x for x in j.opts if x.count), None)
            if o is None:
                continue
            while j.total < j.max and o.count < o.cap:
                n = self.find(j, o)
                if n is None:
                    break
                self.take(n, j, o, kept=False)
                added += 1
        return added


def _run(p: _Baseline) -> Plan:
    keep(p)
    p.admit()
    p.grow()
    return result(p)


def plan_typeblind_spread(snapshot: ClusterSnapshot, jobs: Sequence[JobRequest], *, now: float) -> Plan:
    del now
    return _run(_Baseline(snapshot, jobs, spread=True))


def plan_binpack(snapshot: ClusterSnapshot, jobs: Sequence[JobRequest], *, now: float) -> Plan:
    del now
    return _run(_Baseline(snapshot, jobs, spread=False))


def plan_single_type(snapshot: ClusterSnapshot, jobs: Sequence[JobRequest], *, now: float) -> Plan:
    del now
    return _run(_SingleType(snapshot, jobs))
