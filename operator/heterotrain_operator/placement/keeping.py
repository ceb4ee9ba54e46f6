"""Keeping what runs: step 1 of ``plan``.

Each running worker stays where it is if its node is still usable for the job and still has room for it
(:func:`.eligibility.node_keeps`: what only governs scheduling never moves a running worker); otherwise it is
dropped from the plan, with the reason recorded for the job's message.  Jobs are visited in priority order.
"""

from __future__ import annotations

from .eligibility import node_keeps
from .state import JobState, NodeState, OptionState, State
from .types import REASON_INVALID_SPEC, WorkerSlot

__all__ = ["keep"]


def keep(st: State) -> None:
    """Take every running worker that may stay as a kept worker; record why the others are dropped."""
    for j in st.jobs:
        req = j.req
        if not req.current:
            continue
        if req.suspended or j.reason == REASON_INVALID_SPEC:
            continue
        for slot in sorted(req.current):
            n = st.by_name.get(slot.node)
            o = j.opt_by_type.get(slot.type)
            why = _keep_blocker(st, j, slot, n, o)
            if why is None:
                assert n is not None and o is not None
                st.take(n, j, o, kept=True)
                j.orig[n.idx] = j.orig.get(n.idx, 0) + 1
            else:
                j.dropped.append(why)


def _keep_blocker(
    st: State, j: JobState, slot: WorkerSlot, n: NodeState | None, o: OptionState | None
) -> str | None:
    """Why a running worker cannot stay where it is (see :func:`node_keeps`), or None."""
    if n is None:
        return f"node {slot.node} is gone"
    if o is None:
        return f"type {slot.type} is no longer accepted"
    src = st.src_nodes[n.idx]
    if not src.ready:
        return f"node {slot.node} is not ready"
    if not node_keeps(src, j.req, j.req.accelerators[o.rank]):
        return f"node {slot.node} no longer matches the type, the node selector or a NoExecute taint"
    if o.count >= o.cap or j.total >= j.max:
        return "above the job's max_workers"
    if not st.fits(n, j, o):
        return f"node {slot.node} has no room left for it"
    return None
