"""Output: the plan assembled from the working state (one :class:`.types.JobPlan` per job, sorted by key).

Each job's workers (kept and placed in this round, sorted), its throughput, its preempted workers (less
those placed again on the same node with the same type), and the reason and message of a job that is not
admitted or runs below its max.
"""

from __future__ import annotations

from .state import State
from .types import REASON_CAPACITY_LIMITED, REASON_TYPE_CAPS_REACHED, JobPlan, Plan, WorkerSlot

__all__ = ["result"]


def result(st: State) -> Plan:
    out: list[JobPlan] = []
    for j in st.jobs:
        # A worker preempted and placed again on the same node with the same type simply stays.
        for ni, t in list(j.preempted):
            o = j.opt_by_type.get(t)
            if o is not None and o.new_nodes.get(ni, 0) + j.kept.get(ni, 0) > j.orig.get(ni, 0):
                j.orig[ni] = j.orig.get(ni, 0) + 1
                j.preempted.remove((ni, t))
        workers: list[WorkerSlot] = []
        throughput = 0.0
        for nidx, c in j.kept.items():
            n = st.nodes[nidx]
            o = j.opt_by_type[n.accelerator or ""]
            workers.extend([WorkerSlot(n.name, o.type)] * c)
            throughput += o.r * c
        for o in j.opts:
            for nidx, c in o.new_nodes.items():
                workers.extend([WorkerSlot(st.nodes[nidx].name, o.type)] * c)
                throughput += o.r * c
        workers.sort()
        reason, message = j.reason, j.message
        if j.admitted and j.total < j.max:
            counts = ", ".join(f"{o.type} {o.count}/{o.cap}" for o in j.opts)
            if all(o.count >= o.cap for o in j.opts):
                reason = REASON_TYPE_CAPS_REACHED
                message = (
                    f"runs {j.total} of max {j.max} workers; every accepted type is at its cap: {counts}"
                )
            else:
                reason = REASON_CAPACITY_LIMITED
                message = f"runs {j.total} of max {j.max} workers, no room for more: {counts}"
        preempted = tuple(sorted(WorkerSlot(st.nodes[ni].name, t) for ni, t in j.preempted))
        out.append(
            JobPlan(
                key=j.req.key,
                admitted=j.admitted,
                workers=tuple(workers) if j.admitted else (),
                reason=reason,
                message=message,
                preempted=preempted,
                throughput=round(throughput, 9) if j.admitted else 0.0,
            )
        )
    return Plan(tuple(out))
