"""The placement planner: a pure function from (cluster snapshot, job requests) to a plan.

Algorithm (see ``plan``):

1. *Keep.*  Jobs are visited in priority order (priority desc, then ``created``, then key).  Each running
   worker stays where it is if its node is still usable for the job and still has room for it; otherwise it
   is dropped from the plan (the operator replaces it).  Kept workers are never moved by later steps; only
   preemption (step 2) removes them.
2. *Admit* (gang, in the same order).  Every job below ``min_workers`` (pending jobs, and running jobs that
   lost workers) gets its missing workers placed at once, fastest accepted type first.  If they do not fit
   in free capacity, the planner moves workers placed earlier *in this round* to other accepted types of
   their jobs (up to two moves deep), then shrinks strictly lower priority running jobs towards (never
   below) their ``min_workers``, lowest priority and newest first.  If the gang still does not fit, every
   tentative change is rolled back.  Last chance (backfill by re-packing): every worker placed in this round
   is lifted and the mins of all admitted jobs plus this one are placed again, least flexible first; if
   that fails too, nothing of the job is placed (a running job below min is stopped).
   A gang admitted by preemption is pinned where the room was made.
3. *Price.*  Shadow prices of accelerators are computed from the Lagrangian dual of the aggregated
   throughput LP of the admitted jobs (projected subgradient, fixed round count), twice: with one capacity
   row per accelerator type, and with one per type and worker size (an 8-accelerator worker can only use
   nodes with 8 free, so the two free on a half-used node do not count for it).  The reduced value of a
   worker of job j on type t is ``worker_throughput - price * per_worker``: what j gains minus what those
   accelerators are worth to the other jobs.  This is what decides who gets scarce fast capacity.  The
   average of the rounds' maximisers (ergodic primal recovery) gives each job a target count per type: it
   settles the ties exact prices leave between jobs at the margin.
4. *Reseat.*  The workers placed in this round are re-placed so that the admitted set keeps its mins but on
   the right types; two candidates, each followed by steps 5 and 6, and the one with more total throughput
   wins.  Per-type prices: each job's mins go to its target counts and then its best types by reduced
   value; orders tried until one packs every min: least flexible jobs first, then largest workers first
   (first-fit decreasing), then both without targets.  Per-size prices: every job's whole target counts are
   placed first, largest workers first across all jobs (first-fit decreasing), then any min still short.
   Growing after the mins finds the whole nodes that large workers need already split by small ones; the
   second candidate packs the LP's solution the way a bin packer would.  If no candidate packs every min,
   the admission placement is kept.
5. *Grow.*  Admitted jobs below ``max_workers`` grow one worker at a time, workers within their targets
   first, best reduced value first.
6. *Improve.*  A bounded local search over this round's workers: move a worker to a faster type with room;
   hand a node's accelerators from workers of one job that can move elsewhere (or that their job can spare
   above its min) to workers of another job; or clear room on a node shared by several jobs' workers (moved
   to other nodes of their type, to their next type, or dropped above min) for a larger or faster worker;
   each only when total throughput strictly increases; then grow again.
7. *Retry.*  Jobs refused for capacity get a second admission attempt against the grown plan, where growth
   workers of lower priority jobs (not running yet) are evicted first.  Without it, the next plan would
   preempt that growth once it runs; with it, applying a plan and planning again changes nothing.  If
   evicting not-running workers first fails (it spends a victim's room above its min on the wrong node),
   the attempt is repeated with every worker counted as running, the way the next plan sees them.

Priority decides admission and preemption; capacity beyond the admitted jobs' mins goes where it adds
the most throughput, whatever the priority (higher priority pending jobs can always take it back by
preemption).

Node choice: ``Pack`` is best fit (the usable node with the fewest free accelerators that still fit, so
whole nodes stay free for large workers); ``Spread`` is worst fit (most free accelerators).  Ties go to the
node name.  Nodes are indexed per pool (accelerator type, resource, taints, labels) in heaps keyed by free
accelerators, so a placement costs O(pools x distinct free counts x log nodes).

Everything is deterministic: inputs are sorted by stable keys, no set or dict iteration order leaks into
the result, and there is no randomness and no clock.

Where each part lives: :mod:`.eligibility` (which nodes a worker may use, spec validation), :mod:`.state`
(working state, primitive moves, node search), :mod:`.keeping` (step 1), :mod:`.admission` (steps 2 and
7) with :mod:`.relocation` and :mod:`.preemption`, :mod:`.pricing` (step 3), :mod:`.reseat` (step 4),
:mod:`.packing` (greedy placement and step 5), :mod:`.improvement` (step 6), :mod:`.output` (the plan).
This module holds the entry point, :func:`plan`, which runs the steps in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from .admission import admit, retry
from .eligibility import node_keeps, node_usable_for, tolerates_all
from .improvement import improve
from .keeping import keep
from .output import result
from .packing import grow
from .pricing import price
from .reseat import reseat
from .state import State
from .types import ClusterSnapshot, JobRequest, Plan

__all__ = ["node_keeps", "node_usable_for", "plan", "tolerates_all"]


def plan(snapshot: ClusterSnapshot, jobs: Sequence[JobRequest], *, now: float) -> Plan:
    """Compute the desired placement of every job's workers.

    ``now`` is the planner's notion of the current time; the plan does not depend on it today but it is
    part of the contract so that time-based policies (aging, backoff) can be added without reading a clock.
    """
    del now
    st = State(snapshot, jobs)
    keep(st)
    admit(st)
    price(st)
    reseat(st)
    for _ in range(len(st.jobs)):
        if not retry(st):
            break
        grow(st)
        improve(st)
    return result(st)
