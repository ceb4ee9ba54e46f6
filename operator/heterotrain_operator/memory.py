"""The micro-batch cap in force per accelerator type: declared, then lowered by out-of-memory failures.

``spec.accelerators[].maxMicroBatch`` caps the samples one training process puts through one forward
pass; a larger share accumulates gradients over micro-batches inside the step (the same update).  A
worker of a type that runs out of memory (its container OOMKilled, or the SDK's ``EXIT_OUT_OF_MEMORY``
after the framework's out-of-memory error) halves that type's cap in force: the cap it had, or, without
one, the largest share of a process of that type in the current world.  The cap in force is kept in
``status.workers.byType[type].maxMicroBatch`` and reaches the processes with the membership
(``world[].maxMicroBatch``); the failed worker is replaced and the world re-forms, so the split is
computed again and the job goes on instead of crash-looping.  Pure functions over plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import heterotrain_contract as c

from .jobview import WORKER_CONTAINER, JobView


def out_of_memory(pod: Mapping[str, Any]) -> bool:
    """Whether a failed worker pod ran out of memory: its worker container OOMKilled, or exited with the
    SDK's EXIT_OUT_OF_MEMORY (the framework's out-of-memory error)."""
    status = pod.get("status") or {}
    if status.get("reason") == "OOMKilled":
        return True
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if cs.get("name") == WORKER_CONTAINER and term:
            return term.get("reason") == "OOMKilled" or term.get("exitCode") == c.EXIT_OUT_OF_MEMORY
    return False


def _type(pod: Mapping[str, Any]) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(c.LABEL_ACCELERATOR, ""))


def _declared(job: JobView) -> dict[str, int]:
    return {e.type: e.max_micro_batch for e in job.spec.accelerators if e.max_micro_batch is not None}


def _recorded(job: JobView) -> dict[str, int]:
    by_type = (job.status.get("workers") or {}).get("byType") or {}
    return {t: int(v["maxMicroBatch"]) for t, v in by_type.items() if (v or {}).get("maxMicroBatch")}


def largest_share(job: JobView, type_: str) -> int:
    """The largest share of one process of ``type_`` in the job's current world, split by the declared
    weights (the global batch when the world has none of that type)."""
    record = job.status.get("membership") or {}
    try:
        m = c.Membership.from_dict(record) if record.get("world") else None
    except ValueError:
        m = None
    gb = job.spec.global_batch_size
    if m is None or not any(p.type == type_ for p in m.processes):
        return gb
    split = c.split_global_batch(gb, [p.weight for p in m.processes])
    return max(split[p.rank] for p in m.processes if p.type == type_)


def caps_in_force(job: JobView, failed: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Type -> its micro-batch cap in force, after this pass's failures (``failed``: the pods counted as
    new failures).  A lowered cap holds until the spec's own is lower; types without a cap are left out."""
    caps = _declared(job)
    for t, cap in _recorded(job).items():
        caps[t] = min(cap, caps.get(t, cap))
    for t in sorted({_type(p) for p in failed if out_of_memory(p)}):  # once per type and pass
        current = caps.get(t) or largest_share(job, t)
        caps[t] = max(1, current // 2)
    return caps
