"""Eligibility: which nodes a worker of a job may run on (or stay on), and whether a job's spec is valid.

Pure functions of the value types: taints and tolerations (:func:`tolerates_all`, :func:`prefers_not`),
node selectors (:func:`selector_matches`), a node's fitness for a new worker (:func:`node_usable_for`) or
for a running one (:func:`node_keeps`), and the planner's check of a job request (:func:`validate`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import (
    EFFECT_NO_EXECUTE,
    EFFECT_NO_SCHEDULE,
    EFFECT_PREFER_NO_SCHEDULE,
    PLACEMENT_PACK,
    PLACEMENT_SPREAD,
    AcceleratorOption,
    JobRequest,
    Labels,
    Node,
    Taint,
    Toleration,
)

__all__ = ["node_keeps", "node_usable_for", "prefers_not", "selector_matches", "tolerates_all", "validate"]


def tolerates_all(tolerations: Sequence[Toleration], taints: Sequence[Taint]) -> bool:
    """True when every NoSchedule/NoExecute taint is tolerated (PreferNoSchedule is only a preference)."""
    for taint in taints:
        if taint.effect not in (EFFECT_NO_SCHEDULE, EFFECT_NO_EXECUTE):
            continue
        if not any(t.tolerates(taint) for t in tolerations):
            return False
    return True


def prefers_not(tolerations: Sequence[Toleration], taints: Sequence[Taint]) -> bool:
    """True when the node has a PreferNoSchedule taint the job does not tolerate."""
    return any(
        taint.effect == EFFECT_PREFER_NO_SCHEDULE and not any(t.tolerates(taint) for t in tolerations)
        for taint in taints
    )


def selector_matches(selector: Labels, labels: Labels) -> bool:
    if not selector:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)


def node_usable_for(node: Node, job: JobRequest, option: AcceleratorOption) -> bool:
    """Whether a worker of ``job`` with accelerator ``option`` may run on ``node`` at all (ignoring room)."""
    return (
        node.ready
        and not node.unschedulable
        and node.accelerator == option.type
        and node.resource_name == option.resource_name
        and tolerates_all(job.tolerations_of(option), node.taints)
        and selector_matches(job.node_selector_of(option), node.labels)
    )


def node_keeps(node: Node, job: JobRequest, option: AcceleratorOption) -> bool:
    """Whether a RUNNING worker of ``job`` with ``option`` may stay on ``node`` (ignoring room).

    Kubernetes semantics: what only governs scheduling (a ``NoSchedule`` or ``PreferNoSchedule`` taint, a
    cordon) never moves a running worker; a node that is not ready, an untolerated ``NoExecute`` taint, a
    change of the node's type or of the job's node selector does.
    """
    evicting = [t for t in node.taints if t.effect == EFFECT_NO_EXECUTE]
    return (
        node.ready
        and node.accelerator == option.type
        and node.resource_name == option.resource_name
        and selector_matches(job.node_selector_of(option), node.labels)
        and tolerates_all(job.tolerations_of(option), evicting)
    )


def validate(req: JobRequest) -> str | None:
    """Why the planner refuses the spec of ``req`` (reason InvalidSpec), or None when it is valid."""
    if req.min_workers < 1:
        return f"min_workers must be >= 1, got {req.min_workers}"
    if req.max_workers < req.min_workers:
        return f"max_workers ({req.max_workers}) < min_workers ({req.min_workers})"
    if not req.accelerators:
        return "no accelerator types accepted"
    if req.placement not in (PLACEMENT_PACK, PLACEMENT_SPREAD):
        return f"placement must be Pack or Spread, got {req.placement!r}"
    if any(req.cpu_milli_of(o) < 0 or req.memory_of(o) < 0 for o in req.accelerators):
        return "negative cpu or memory request"
    seen: set[str] = set()
    for o in req.accelerators:
        if o.type in seen:
            return f"accelerator type {o.type} listed twice"
        seen.add(o.type)
        if o.per_worker < 1:
            return f"per_worker must be >= 1 for {o.type}"
        if not o.worker_throughput >= 0:
            return f"worker_throughput must be >= 0 for {o.type}"
        if o.max_workers is not None and o.max_workers < 0:
            return f"max_workers must be >= 0 for {o.type}"
    caps = sum(req.max_workers if o.max_workers is None else o.max_workers for o in req.accelerators)
    if caps < req.min_workers:
        return f"per-type max_workers add up to {caps} < min_workers {req.min_workers}"
    return None
