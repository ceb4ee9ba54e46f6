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
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from .types import (
    EFFECT_NO_EXECUTE,
    EFFECT_NO_SCHEDULE,
    EFFECT_PREFER_NO_SCHEDULE,
    PLACEMENT_PACK,
    PLACEMENT_SPREAD,
    REASON_CAPACITY_LIMITED,
    REASON_INSUFFICIENT_CAPACITY,
    REASON_INVALID_SPEC,
    REASON_NO_MATCHING_NODES,
    REASON_SUSPENDED,
    REASON_TYPE_CAPS_REACHED,
    AcceleratorOption,
    ClusterSnapshot,
    JobPlan,
    JobRequest,
    Labels,
    Node,
    Plan,
    Taint,
    Toleration,
    WorkerSlot,
)

__all__ = ["node_keeps", "node_usable_for", "plan", "tolerates_all"]

_EPS = 1e-9
_PRICE_ROUNDS = 200
_IMPROVE_BUDGET = 50  # node visits per node and per requested worker, for the local search
_IMPROVE_ROUNDS = 20
_INF = float("inf")
_BIG = 1 << 30


def tolerates_all(tolerations: Sequence[Toleration], taints: Sequence[Taint]) -> bool:
    """True when every NoSchedule/NoExecute taint is tolerated (PreferNoSchedule is only a preference)."""
    for taint in taints:
        if taint.effect not in (EFFECT_NO_SCHEDULE, EFFECT_NO_EXECUTE):
            continue
        if not any(t.tolerates(taint) for t in tolerations):
            return False
    return True


def _prefers_not(tolerations: Sequence[Toleration], taints: Sequence[Taint]) -> bool:
    """True when the node has a PreferNoSchedule taint the job does not tolerate."""
    return any(
        taint.effect == EFFECT_PREFER_NO_SCHEDULE and not any(t.tolerates(taint) for t in tolerations)
        for taint in taints
    )


def _selector_matches(selector: Labels, labels: Labels) -> bool:
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
        and _selector_matches(job.node_selector_of(option), node.labels)
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
        and _selector_matches(job.node_selector_of(option), node.labels)
        and tolerates_all(job.tolerations_of(option), evicting)
    )


class _Node:
    __slots__ = ("acc", "accelerator", "cpu", "idx", "kept", "mem", "name", "new", "new_acc", "pool", "ver")

    def __init__(self, idx: int, node: Node) -> None:
        self.idx = idx
        self.name = node.name
        self.accelerator = node.accelerator
        self.acc = node.accelerators_allocatable - node.accelerators_used
        self.cpu = node.cpu_milli_allocatable - node.cpu_milli_used
        self.mem = node.memory_allocatable - node.memory_used
        self.pool = -1
        self.ver = 0
        self.kept: dict[int, int] = {}  # job idx -> kept workers on this node
        self.new: dict[int, int] = {}  # job idx -> workers placed in this round
        self.new_acc = 0  # accelerators held by the workers placed in this round


class _Pool:
    __slots__ = ("accelerator", "buckets", "cnt", "id", "labels", "maxcap", "nodes", "resource", "taints")

    def __init__(self, pid: int, accelerator: str, resource: str, taints: tuple[Taint, ...], labels: Labels):
        self.id = pid
        self.accelerator = accelerator
        self.resource = resource
        self.taints = taints
        self.labels = labels
        self.nodes: list[int] = []
        self.maxcap = 0
        self.buckets: list[list[tuple[int, int]]] = []  # free accelerators -> heap of (node idx, version)
        self.cnt: list[int] = []  # free accelerators -> number of nodes


class _Opt:
    __slots__ = (
        "cap",
        "count",
        "cpu",
        "mem",
        "new_nodes",
        "p",
        "pool_set",
        "pools",
        "r",
        "rank",
        "resource",
        "target",
        "type",
    )

    def __init__(self, option: AcceleratorOption, rank: int, cap: int, req: JobRequest) -> None:
        self.type = option.type
        self.cpu = req.cpu_milli_of(option)  # one worker of this type's cpu and memory
        self.mem = req.memory_of(option)
        self.resource = option.resource_name
        self.p = option.per_worker
        self.r = float(option.worker_throughput)
        self.rank = rank  # position in the job's preference order
        self.cap = cap
        self.count = 0
        self.pools: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # (preferred, fallback) pool ids
        self.pool_set: frozenset[int] = frozenset()
        self.new_nodes: dict[int, int] = {}  # node idx -> workers of this type placed in this round
        self.target = -1  # workers of this type in the aggregated LP's (averaged) primal solution; -1: none


class _Job:
    __slots__ = (
        "admitted",
        "avoid",
        "dropped",
        "idx",
        "kept",
        "max",
        "message",
        "min",
        "opt_by_type",
        "opts",
        "orig",
        "preempted",
        "rank",
        "reason",
        "req",
        "spread",
        "total",
    )

    def __init__(self, idx: int, req: JobRequest) -> None:
        self.idx = idx
        self.req = req
        self.rank = (-req.priority, req.created, req.key)
        self.min = req.min_workers
        self.max = req.max_workers
        self.spread = req.placement == PLACEMENT_SPREAD
        self.opts: list[_Opt] = []  # fastest first, then the user's order
        self.opt_by_type: dict[str, _Opt] = {}
        self.kept: dict[int, int] = {}  # node idx -> kept workers
        self.total = 0
        self.admitted = False
        self.reason: str | None = None
        self.message: str | None = None
        self.preempted: list[tuple[int, str]] = []  # (node idx, type)
        self.orig: dict[int, int] = {}  # node idx -> kept workers that were running before this plan
        self.dropped: list[str] = []  # why current workers were dropped
        self.avoid: frozenset[int] = frozenset()  # node idx that get no new worker of this job


def _validate(req: JobRequest) -> str | None:
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


# Shadow prices per accelerator by (type, worker size), and target workers by (job idx, option rank).
_Pricing = tuple[dict[tuple[str, int], float], dict[tuple[int, int], int]]


class _Planner:
    """Mutable working state for one call of ``plan``."""

    def __init__(self, snapshot: ClusterSnapshot, requests: Sequence[JobRequest]) -> None:
        names = [n.name for n in snapshot.nodes]
        if len(set(names)) != len(names):
            raise ValueError("duplicate node names in snapshot")
        keys = [r.key for r in requests]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate job keys")
        src_nodes = sorted(snapshot.nodes, key=lambda n: n.name)
        self.src_nodes = src_nodes
        self.nodes = [_Node(i, n) for i, n in enumerate(src_nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        # Pools: usable accelerator nodes grouped by everything eligibility depends on: type, resource,
        # taints and the labels some job's node selector names (not every label: hostnames would make a
        # pool of each node).
        selected = {k for r in requests for o in r.accelerators for k, _ in r.node_selector_of(o)}
        pool_of: dict[tuple[str, str, tuple[Taint, ...], Labels], _Pool] = {}
        self.pools: list[_Pool] = []
        self.pools_by_type: dict[str, list[_Pool]] = {}
        for n, src in zip(self.nodes, src_nodes, strict=True):
            if not src.ready or src.unschedulable or not src.accelerator or not src.resource_name:
                continue
            taints = tuple(sorted(src.taints, key=lambda t: (t.key, t.value, t.effect)))
            labels = tuple(kv for kv in src.labels if kv[0] in selected)
            sig = (src.accelerator, src.resource_name, taints, labels)
            pool = pool_of.get(sig)
            if pool is None:
                pool = _Pool(-1, src.accelerator, src.resource_name, taints, labels)
                pool_of[sig] = pool
            pool.nodes.append(n.idx)
        for sig in sorted(pool_of, key=lambda s: (s[0], s[1], repr(s[2]), s[3])):
            pool = pool_of[sig]
            pool.id = len(self.pools)
            self.pools.append(pool)
            self.pools_by_type.setdefault(pool.accelerator, []).append(pool)
            pool.maxcap = max(0, max(self.nodes[i].acc for i in pool.nodes))
            pool.buckets = [[] for _ in range(pool.maxcap + 1)]
            pool.cnt = [0] * (pool.maxcap + 1)
            for i in pool.nodes:
                n = self.nodes[i]
                n.pool = pool.id
                if n.acc >= 0:
                    pool.buckets[n.acc].append((n.idx, n.ver))
                    pool.cnt[n.acc] += 1
            for b in pool.buckets:
                heapq.heapify(b)
        # Jobs, in priority order.
        self.jobs = [
            _Job(i, r) for i, r in enumerate(sorted(requests, key=lambda r: (-r.priority, r.created, r.key)))
        ]
        elig_cache: dict[
            tuple[tuple[Toleration, ...], Labels, int], tuple[tuple[int, ...], tuple[int, ...]]
        ] = {}
        for j in self.jobs:
            req = j.req
            j.avoid = frozenset(self.by_name[n].idx for n in req.avoid if n in self.by_name)
            err = _validate(req)
            if err is not None:
                j.reason, j.message = REASON_INVALID_SPEC, err
                continue
            opts: list[_Opt] = []
            for rank, o in enumerate(req.accelerators):
                cap = req.max_workers if o.max_workers is None else min(o.max_workers, req.max_workers)
                opt = _Opt(o, rank, cap, req)
                tolerations, selector = req.tolerations_of(o), req.node_selector_of(o)
                pref: list[int] = []
                fallback: list[int] = []
                for pool in self.pools_by_type.get(o.type, []):
                    if pool.resource != o.resource_name:
                        continue
                    ck = (tolerations, selector, pool.id)
                    hit = elig_cache.get(ck)
                    if hit is None:
                        ok = tolerates_all(tolerations, pool.taints) and _selector_matches(
                            selector, pool.labels
                        )
                        soft = ok and _prefers_not(tolerations, pool.taints)
                        hit = ((pool.id,), ()) if ok and not soft else (((), (pool.id,)) if ok else ((), ()))
                        elig_cache[ck] = hit
                    pref.extend(hit[0])
                    fallback.extend(hit[1])
                opt.pools = (tuple(pref), tuple(fallback))
                opt.pool_set = frozenset(pref) | frozenset(fallback)
                opts.append(opt)
            opts.sort(key=lambda o: (-o.r, o.rank))
            j.opts = opts
            j.opt_by_type = {o.type: o for o in opts}
        # Undo log for tentative changes: (node idx, job idx, type, kept flag, +1 take / -1 give).
        self.log: list[tuple[int, int, str, bool, int]] | None = None
        # (victim job idx, node idx, was a running worker) per eviction, to undo failed admission attempts.
        self.pre_log: list[tuple[int, int, bool]] = []
        self.budget = 0
        self.prices: dict[tuple[str, int], float] = {}  # per accelerator, by (type, worker size)
        self.pricings: list[_Pricing] = []

    # ------------------------------------------------------------------ primitive moves

    def _touch(self, n: _Node, old: int) -> None:
        n.ver += 1
        if n.pool >= 0:
            pool = self.pools[n.pool]
            if old >= 0:
                pool.cnt[old] -= 1
            if n.acc >= 0:
                pool.cnt[n.acc] += 1
                heapq.heappush(pool.buckets[n.acc], (n.idx, n.ver))

    def _take(self, n: _Node, j: _Job, o: _Opt, kept: bool) -> None:
        n.acc -= o.p
        n.cpu -= o.cpu
        n.mem -= o.mem
        self._touch(n, n.acc + o.p)
        if not kept:
            n.new_acc += o.p
        d = n.kept if kept else n.new
        d[j.idx] = d.get(j.idx, 0) + 1
        d2 = j.kept if kept else o.new_nodes
        d2[n.idx] = d2.get(n.idx, 0) + 1
        o.count += 1
        j.total += 1
        if self.log is not None:
            self.log.append((n.idx, j.idx, o.type, kept, 1))

    def _give(self, n: _Node, j: _Job, o: _Opt, kept: bool) -> None:
        n.acc += o.p
        n.cpu += o.cpu
        n.mem += o.mem
        self._touch(n, n.acc - o.p)
        if not kept:
            n.new_acc -= o.p
        d = n.kept if kept else n.new
        c = d[j.idx] - 1
        if c:
            d[j.idx] = c
        else:
            del d[j.idx]
        d2 = j.kept if kept else o.new_nodes
        c = d2[n.idx] - 1
        if c:
            d2[n.idx] = c
        else:
            del d2[n.idx]
        o.count -= 1
        j.total -= 1
        if self.log is not None:
            self.log.append((n.idx, j.idx, o.type, kept, -1))

    def _begin(self) -> int:
        if self.log is None:
            self.log = []
        return len(self.log)

    def _rollback(self, mark: int) -> None:
        assert self.log is not None
        entries = self.log[mark:]
        del self.log[mark:]
        saved, self.log = self.log, None
        for nidx, jidx, typ, kept, sign in reversed(entries):
            j = self.jobs[jidx]
            if sign > 0:
                self._give(self.nodes[nidx], j, j.opt_by_type[typ], kept)
            else:
                self._take(self.nodes[nidx], j, j.opt_by_type[typ], kept)
        self.log = saved

    def _commit(self, mark: int) -> None:
        if mark == 0:
            self.log = None

    def _fits(self, n: _Node, j: _Job, o: _Opt) -> bool:
        return n.acc >= o.p and n.cpu >= o.cpu and n.mem >= o.mem

    def _find_in_pool(
        self,
        pool: _Pool,
        p: int,
        cpu: int,
        mem: int,
        spread: bool,
        exclude: int = -1,
        avoid: frozenset[int] = frozenset(),
    ) -> _Node | None:
        nodes = self.nodes
        rng = range(pool.maxcap, p - 1, -1) if spread else range(p, pool.maxcap + 1)
        for f in rng:
            bucket = pool.buckets[f]
            skipped: list[tuple[int, int]] = []
            found: _Node | None = None
            while bucket:
                idx, ver = bucket[0]
                n = nodes[idx]
                if n.ver != ver:
                    heapq.heappop(bucket)
                    continue
                if n.cpu >= cpu and n.mem >= mem and idx != exclude and idx not in avoid:
                    found = n
                    break
                skipped.append(heapq.heappop(bucket))
            for e in skipped:
                heapq.heappush(bucket, e)
            if found is not None:
                return found
        return None

    def _find(self, j: _Job, o: _Opt, exclude: int = -1) -> _Node | None:
        """The node a new worker of job ``j`` with option ``o`` goes to, or None when none has room."""
        for tier in o.pools:
            best: _Node | None = None
            for pid in tier:
                n = self._find_in_pool(self.pools[pid], o.p, o.cpu, o.mem, j.spread, exclude, j.avoid)
                if n is None:
                    continue
                if best is None:
                    best = n
                elif j.spread:
                    if (-n.acc, n.idx) < (-best.acc, best.idx):
                        best = n
                elif (n.acc, n.idx) < (best.acc, best.idx):
                    best = n
            if best is not None:
                return best
        return None

    # ------------------------------------------------------------------ phase 1: keep running workers

    def keep(self) -> None:
        for j in self.jobs:
            req = j.req
            if not req.current:
                continue
            if req.suspended or j.reason == REASON_INVALID_SPEC:
                continue
            for slot in sorted(req.current):
                n = self.by_name.get(slot.node)
                o = j.opt_by_type.get(slot.type)
                why = self._keep_blocker(j, slot, n, o)
                if why is None:
                    assert n is not None and o is not None
                    self._take(n, j, o, kept=True)
                    j.orig[n.idx] = j.orig.get(n.idx, 0) + 1
                else:
                    j.dropped.append(why)

    def _keep_blocker(self, j: _Job, slot: WorkerSlot, n: _Node | None, o: _Opt | None) -> str | None:
        """Why a running worker cannot stay where it is (see :func:`node_keeps`), or None."""
        if n is None:
            return f"node {slot.node} is gone"
        if o is None:
            return f"type {slot.type} is no longer accepted"
        src = self.src_nodes[n.idx]
        if not src.ready:
            return f"node {slot.node} is not ready"
        if not node_keeps(src, j.req, j.req.accelerators[o.rank]):
            return f"node {slot.node} no longer matches the type, the node selector or a NoExecute taint"
        if o.count >= o.cap or j.total >= j.max:
            return "above the job's max_workers"
        if not self._fits(n, j, o):
            return f"node {slot.node} has no room left for it"
        return None

    # ------------------------------------------------------------------ phase 2: gang admission

    def _fill(self, j: _Job, need: int, only: _Node | None = None, opts: Sequence[_Opt] | None = None) -> int:
        """Place up to ``need`` new workers of ``j`` (types in ``opts`` order, default fastest first)."""
        placed = 0
        for o in j.opts if opts is None else opts:
            while placed < need and o.count < o.cap and j.total < j.max:
                if only is not None:
                    if only.pool not in o.pool_set or only.idx in j.avoid or not self._fits(only, j, o):
                        break
                    n: _Node | None = only
                else:
                    n = self._find(j, o)
                if n is None:
                    break
                self._take(n, j, o, kept=False)
                placed += 1
            if placed >= need:
                break
        return placed

    def _by_value(self, j: _Job) -> list[_Opt]:
        """The job's types, best reduced value (throughput minus the price of the accelerators) first."""
        return sorted(j.opts, key=lambda o: (-(o.r - self._price(o)), -o.r, o.rank))

    def _make_room(self, n: _Node, p: int, cpu: int, mem: int, protect: frozenset[int], depth: int) -> bool:
        """Move workers placed in this round off ``n`` (not those of ``protect`` jobs) onto other accepted
        types of their jobs until ``p`` accelerators, ``cpu`` and ``mem`` are free there.  With ``depth`` > 0
        a moved worker may in turn displace others on its new node.  Changes are left for the caller to
        commit or roll back."""
        while not (n.acc >= p and n.cpu >= cpu and n.mem >= mem):
            moved = False
            for aidx in sorted(n.new):
                if aidx in protect:
                    continue
                a = self.jobs[aidx]
                oa = a.opt_by_type[n.accelerator or ""]
                for ob in self._by_value(a):
                    if ob.type == oa.type or ob.count >= ob.cap or not ob.pool_set:
                        continue
                    m = self._find(a, ob)
                    if m is None and depth > 0:
                        m = self._room_elsewhere(a, ob, protect | {aidx}, depth - 1)
                    if m is not None:
                        self._give(n, a, oa, kept=False)
                        self._take(m, a, ob, kept=False)
                        moved = True
                        break
                if moved:
                    break
            if not moved:
                return False
        return True

    def _room_elsewhere(self, a: _Job, ob: _Opt, protect: frozenset[int], depth: int) -> _Node | None:
        """A node of ``ob``'s pools on which room for one worker of ``a`` can be made, or None."""
        cands: list[_Node] = []
        for pid in ob.pools[0] + ob.pools[1]:
            for i in self.pools[pid].nodes:
                self.budget -= 1
                m = self.nodes[i]
                if m.new and m.idx not in a.avoid and any(x not in protect for x in m.new):
                    cands.append(m)
        cands.sort(key=lambda m: (-m.acc, m.idx))
        for m in cands[:8]:
            if self.budget <= 0:
                return None
            mark = self._begin()
            if self._make_room(m, ob.p, ob.cpu, ob.mem, protect, depth):
                return m
            self._rollback(mark)
        return None

    def _relocate_for(self, j: _Job, need: int) -> int:
        """Make room for ``j`` by moving workers placed earlier in this round onto their other types."""
        order = {o.type: i for i, o in enumerate(self._by_value(j))}
        cand: set[int] = set()
        for a in self.jobs:
            if a is j or not a.admitted:
                continue
            for oa in a.opts:
                oj = j.opt_by_type.get(oa.type)
                if oj is None or not oa.new_nodes:
                    continue
                cand.update(i for i in oa.new_nodes if self.nodes[i].pool in oj.pool_set and i not in j.avoid)
        placed = 0
        nodes = self.nodes
        protect = frozenset((j.idx,))
        for nidx in sorted(cand, key=lambda i: (order[nodes[i].accelerator or ""], -nodes[i].acc, i)):
            if placed >= need or j.total >= j.max:
                break
            n = nodes[nidx]
            oj = j.opt_by_type[n.accelerator or ""]
            while placed < need and oj.count < oj.cap and j.total < j.max:
                got = 0
                for depth in (0, 1):
                    if depth and self.budget <= 0:
                        break
                    mark = self._begin()
                    if self._make_room(n, oj.p, oj.cpu, oj.mem, protect, depth):
                        got = self._fill(j, need - placed, only=n)
                    if got:
                        placed += got
                        break
                    self._rollback(mark)
                if not got:
                    break
        return placed

    def _preempt_for(self, j: _Job, need: int, fresh_first: bool = True) -> int:
        """Shrink strictly lower priority jobs towards their min on nodes ``j`` can use, placing ``j`` there.

        With ``fresh_first``, workers that are not running yet (placed earlier in this plan) are evicted
        before running ones on each node; without it, every kept worker counts as running, which is the
        order the next plan will use once this one is applied.
        """
        prio = j.req.priority
        spare: dict[int, int] = {}
        victims: list[_Job] = []
        for v in self.jobs:
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
                n = self.nodes[nidx]
                if n.pool < 0 or nidx in j.avoid or not any(n.pool in o.pool_set for o in j.opts):
                    continue
                r = vrank[v.idx]
                if nidx not in cand or r < cand[nidx]:
                    cand[nidx] = r
        placed = 0
        for nidx in sorted(cand, key=lambda i: (cand[i], i)):
            if placed >= need:
                break
            n = self.nodes[nidx]
            while placed < need:
                got = self._fill(j, 1, only=n)
                if got:
                    placed += got
                    continue
                # Evict the cheapest victim worker on this node, if that can help.
                opts_here = [o for o in j.opts if n.pool in o.pool_set and o.count < o.cap]
                if not opts_here or j.total >= j.max:
                    break
                # Workers that are not running yet (placed earlier in this plan) go first: evicting them is free.
                here = sorted(
                    (fresh_first and n.kept[vi] <= self.jobs[vi].orig.get(nidx, 0), vrank[vi], vi)
                    for vi in n.kept
                    if vi in vrank and spare[vi] > 0
                )
                if not here:
                    break
                # a node holds one type: every worker of a victim here is of its option for that type
                vopts = [
                    (self.jobs[vi].opt_by_type[n.accelerator or ""], min(n.kept[vi], spare[vi]))
                    for _, _, vi in here
                ]
                acc = n.acc + sum(ov.p * k for ov, k in vopts)
                cpu = n.cpu + sum(ov.cpu * k for ov, k in vopts)
                mem = n.mem + sum(ov.mem * k for ov, k in vopts)
                if not any(acc >= o.p and cpu >= o.cpu and mem >= o.mem for o in opts_here):
                    break
                v = self.jobs[here[0][2]]
                ov = v.opt_by_type[n.accelerator or ""]
                running = n.kept[v.idx] <= v.orig.get(nidx, 0)
                self._give(n, v, ov, kept=True)
                spare[v.idx] -= 1
                if running:
                    v.orig[nidx] -= 1
                    v.preempted.append((nidx, ov.type))
                self.pre_log.append((v.idx, nidx, running))
        return placed

    def _fit_report(self, j: _Job) -> str:
        parts = []
        for o in j.opts:
            free = 0
            fit = 0
            for pid in o.pools[0] + o.pools[1]:
                cnt = self.pools[pid].cnt
                for f in range(1, len(cnt)):
                    free += f * cnt[f]
                    fit += (f // o.p) * cnt[f]
            fit = min(fit, max(0, o.cap - o.count), max(0, j.max - j.total))
            parts.append(f"{o.type} {fit} fit ({free} free, {o.p} per worker)")
        return ", ".join(parts)

    def admit(self) -> None:
        self.budget = 20 * len(self.nodes) + 50 * len(self.jobs) + 1000
        for j in self.jobs:
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
                self._drop_kept(j)
                j.reason = REASON_NO_MATCHING_NODES
                types = ", ".join(f"{o.type} ({o.resource})" for o in j.opts)
                j.message = (
                    f"no ready, schedulable node of an accepted type [{types}] matches the job's "
                    "node selector and tolerations"
                )
                continue
            if not self._attempt(j) and not self._repack_for(j):
                had = j.total
                self._drop_kept(j)
                j.reason = REASON_INSUFFICIENT_CAPACITY
                lost = f"; lost {len(j.dropped)} running worker(s): {j.dropped[0]}" if j.dropped else ""
                have = f" (has {had} running)" if had else ""
                j.message = (
                    f"needs {j.min} workers at once{have}, not enough fit: {self._fit_report(j)}{lost}"
                )

    def _attempt(self, j: _Job) -> bool:
        """Place the missing min workers of ``j`` at once (free room, then moves, then preemption).

        Preemption first evicts workers that are not running yet.  That spends the victims' room above
        their min on the cheap workers, which can leave too little of it on another node the gang needs,
        while the next plan (where those workers run and all count the same) would admit ``j``.  So when
        lower priority jobs hold such workers and the attempt fails, it is made once more with every kept
        worker counted as running: the first plan then refuses only what the next plan refuses too.
        """
        if self._attempt_with(j, fresh_first=True):
            return True
        prio = j.req.priority
        if any(
            v.req.priority < prio and any(c > v.orig.get(nidx, 0) for nidx, c in v.kept.items())
            for v in self.jobs
        ):
            return self._attempt_with(j, fresh_first=False)
        return False

    def _attempt_with(self, j: _Job, fresh_first: bool) -> bool:
        need = j.min - j.total
        mark = self._begin()
        pmark = len(self.pre_log)
        placed = self._fill(j, need, opts=self._by_value(j))
        if placed < need:
            placed += self._relocate_for(j, need - placed)
        if placed < need:
            placed += self._preempt_for(j, need - placed, fresh_first)
        if placed < need:
            self._rollback(mark)
            self._commit(mark)
            while len(self.pre_log) > pmark:  # evictions of the failed attempt are undone too
                vi, ni, was_running = self.pre_log.pop()
                if was_running:
                    self.jobs[vi].preempted.pop()
                    self.jobs[vi].orig[ni] += 1
            return False
        self._commit(mark)
        j.admitted = True
        if len(self.pre_log) > pmark:
            # Admitted by preempting others: pin the gang where the room was made (later steps never move
            # kept workers), so the freed accelerators cannot end up with anybody else.
            self._settle(j)
        return True

    def _flex_key(self, j: _Job) -> tuple[int, tuple[int, float, str]]:
        """Least flexible jobs (fewest usable accepted types) are placed first when placements are redone."""
        return (sum(1 for o in j.opts if o.pool_set), j.rank)

    def _repack_for(self, j: _Job) -> bool:
        """Backfill by re-packing: admit ``j`` if the mins of every admitted job fit once re-placed.

        The greedy admission places each gang where it fits best at its turn; that can leave no room for a
        later gang even though a different placement of the earlier gangs' (not yet running) workers would
        hold them all.  Here every worker placed in this round is lifted, and the mins of all admitted jobs
        plus ``j`` are placed again, least flexible jobs first (with the same moves as admission).  Kept
        workers, and gangs pinned by preemption, stay.  If some min does not fit, everything is rolled back.
        Jobs ahead of ``j`` stay admitted either way, so the priority / first-come-first-served order holds.
        """
        lifted = sum(sum(o.new_nodes.values()) for a in self.jobs if a.admitted for o in a.opts)
        if self.budget <= lifted:
            return False
        self.budget -= lifted
        mark = self._begin()
        self._lift_new(a for a in self.jobs if a.admitted)
        j.admitted = True
        ok = self._fill_mins(a for a in self.jobs if a.admitted and a.total < a.min)
        if not ok:
            self._rollback(mark)
            self._commit(mark)
            j.admitted = False
            return False
        self._commit(mark)
        return True

    def _settle(self, j: _Job) -> None:
        """Turn the workers of ``j`` placed in this round into kept ones: later steps leave them alone."""
        for o in j.opts:
            for nidx, c in sorted(o.new_nodes.items()):
                n = self.nodes[nidx]
                for _ in range(c):
                    self._give(n, j, o, kept=False)
                    self._take(n, j, o, kept=True)

    def retry(self) -> bool:
        """Second chance for jobs refused for capacity, against the plan as it stands after growth.

        Growth may have given lower priority jobs workers above their min; once those run, the next plan
        would preempt them for a refused higher priority job.  Doing it now (evicting workers that are not
        even running yet, first) makes the plan a fixed point: applying it and planning again changes
        nothing.  Every worker placed so far is settled first; returns whether a job was admitted.
        """
        refused = [j for j in self.jobs if not j.admitted and j.reason == REASON_INSUFFICIENT_CAPACITY]
        if not refused:
            return False
        for j in self.jobs:
            self._settle(j)
        changed = False
        for j in refused:
            if self._attempt(j):
                j.reason = j.message = None
                changed = True
        return changed

    def _drop_kept(self, j: _Job) -> None:
        for nidx in sorted(j.kept):
            n = self.nodes[nidx]
            o = j.opt_by_type[n.accelerator or ""]
            for _ in range(j.kept[nidx]):
                self._give(n, j, o, kept=True)

    def price(self) -> None:
        """Compute both pricings (see ``_solve_prices``) and use the per-type one."""
        self.pricings = [self._solve_prices(by_size=False), self._solve_prices(by_size=True)]
        self._use(self.pricings[0])

    def _use(self, pricing: _Pricing) -> None:
        self.prices = pricing[0]
        for j in self.jobs:
            for o in j.opts:
                o.target = pricing[1].get((j.idx, o.rank), -1)

    def _solve_prices(self, by_size: bool) -> _Pricing:
        """Shadow prices of accelerators, from the dual of the aggregated throughput LP, and its primal.

        The LP: maximise sum r[j,t] x[j,t] subject to, per type t, sum_j p[j,t] x[j,t] <= free
        accelerators of t (``by_size``: one such row per type t and worker size q that admitted jobs ask of
        t, over the options whose worker size p is a multiple of q, against the accelerators workers of
        size q can use: sum over nodes of floor(free / q) * q, since an 8-accelerator worker needs a node
        with 8 free and the 2 free on a half-used node are no use to it); and, per admitted job,
        min <= sum_t x[j,t] <= max and x[j,t] <= cap[j,t] (all net of kept workers).  Its Lagrangian dual over the capacity rows is minimised by projected subgradient descent
        over a fixed number of rounds (the best iterate wins).  The price of one accelerator for a worker of
        size p on type t is the sum of the multipliers of the rows it is in; a job's "reduced value" of a
        worker of type t is then r[j,t] - price * p: what it gains minus what the accelerators are worth to
        others.
        """
        # Free accelerators per node, with the workers placed in this round lifted (reseat re-places them).
        free_by_type: dict[str, list[int]] = {}
        for pool in self.pools:
            lst = free_by_type.setdefault(pool.accelerator, [])
            for i in pool.nodes:
                n = self.nodes[i]
                f = n.acc + n.new_acc
                if f > 0:
                    lst.append(f)
        rows: list[tuple[int, int, list[tuple[str, int, float, int, _Opt]]]] = []
        sizes: dict[str, set[int]] = {}
        for j in self.jobs:
            if not j.admitted:
                continue
            kept = sum(j.kept.values())
            hi = j.max - kept
            if hi <= 0:
                continue
            lo = max(0, j.min - kept)
            opts: list[tuple[str, int, float, int, _Opt]] = []
            for o in j.opts:
                c = o.cap - (o.count - sum(o.new_nodes.values()))
                if o.pool_set and free_by_type.get(o.type) and c > 0:
                    opts.append((o.type, o.p, o.r, c, o))
                    sizes.setdefault(o.type, set()).add(o.p)
            if opts:
                rows.append((lo, hi, opts))
        if not rows:
            return {}, {}
        # Capacity rows (type, size q), and per (type, worker size p) the rows such a worker is in.
        classes = sizes if by_size else {t: {1} for t in sizes}
        keys = sorted((t, q) for t, qs in classes.items() for q in qs)
        kix = {k: i for i, k in enumerate(keys)}
        cap = [float(sum(f // q * q for f in free_by_type[t])) or 1.0 for t, q in keys]
        member = {
            (t, p): [kix[(t, q)] for q in sorted(classes[t]) if p % q == 0]
            for t, ps in sizes.items()
            for p in ps
        }
        scale = [1e-6] * len(keys)
        for _, _, opts in rows:
            for t, p, r, _, _ in opts:
                for i in member[(t, p)]:
                    scale[i] = max(scale[i], r / p)
        # Primal recovery: the average over the rounds of each round's Lagrangian maximiser converges to a
        # primal optimum (ergodic averaging); it breaks the ties that exact prices leave at the margin.
        takes: dict[int, float] = {}
        rounds = 0
        lam = [0.0] * len(keys)
        best = (_INF, list(lam))
        stall = 0
        for k in range(_PRICE_ROUNDS):
            dual = sum(c * x for c, x in zip(cap, lam, strict=True))
            dem = [0.0] * len(keys)
            unit = {tp: sum(lam[i] for i in rs) for tp, rs in member.items()}
            for lo, hi, opts in rows:
                ranked = sorted(opts, key=lambda o: o[2] - unit[(o[0], o[1])] * o[1], reverse=True)
                tot = 0
                for t, p, r, c, ref in ranked:
                    if tot >= hi:
                        break
                    rho = r - unit[(t, p)] * p
                    if rho > 0:
                        take = min(c, hi - tot)
                    elif tot < lo:
                        take = min(c, lo - tot)
                    else:
                        break
                    dual += take * rho
                    for i in member[(t, p)]:
                        dem[i] += take * p
                    tot += take
                    takes[id(ref)] = takes.get(id(ref), 0.0) + take
            rounds += 1
            if dual < best[0] - 1e-12:
                best = (dual, list(lam))
                stall = 0
            else:
                stall += 1
                if stall > 40:
                    break
            step = 0.5 / (k + 1) ** 0.5
            for i in range(len(keys)):
                lam[i] = max(0.0, lam[i] - step * scale[i] * (cap[i] - dem[i]) / cap[i])
        prices = {tp: sum(best[1][i] for i in rs) for tp, rs in member.items()}
        targets: dict[tuple[int, int], int] = {}
        for j in self.jobs:
            for o in j.opts:
                if id(o) in takes:
                    kept = o.count - sum(o.new_nodes.values())
                    targets[(j.idx, o.rank)] = kept + int(takes[id(o)] / rounds + 0.5)
        return prices, targets

    def _price(self, o: _Opt) -> float:
        """What one worker of option ``o`` costs the other jobs, at the shadow prices (0 if unpriced)."""
        return self.prices.get((o.type, o.p), 0.0) * o.p

    def _size_key(self, j: _Job) -> tuple[int, int, tuple[int, float, str]]:
        """Largest workers first (first-fit decreasing), then least flexible first."""
        smallest = min((o.p for o in j.opts if o.pool_set), default=0)
        return (-smallest, sum(1 for o in j.opts if o.pool_set), j.rank)

    def _fill_mins(self, jobs: Iterable[_Job], targets: bool = False, by_size: bool = False) -> bool:
        """Bring every admitted job of ``jobs`` below its min up to it, least flexible first (``by_size``:
        largest workers first).

        Each is filled by value (with ``targets``: first up to each type's share in the price LP's primal
        solution), then by relocating others' workers; False as soon as one stays short.
        """
        for j in sorted(jobs, key=self._size_key if by_size else self._flex_key):
            if not j.admitted or j.total >= j.min:
                continue
            order = self._by_value(j)
            if targets:
                for o in order:
                    if j.total < j.min and o.count < o.target:
                        self._fill(j, min(j.min - j.total, o.target - o.count), opts=(o,))
            self._fill(j, j.min - j.total, opts=order)
            if j.total < j.min:
                self._relocate_for(j, j.min - j.total)
            if j.total < j.min:
                return False
        return True

    def _fill_targets(self) -> None:
        """Place every admitted job's LP target counts, largest workers first (first-fit decreasing)."""
        wants = sorted(
            (
                (-o.p, j.rank, o.rank, j.idx, k)
                for j in self.jobs
                if j.admitted
                for k, o in enumerate(j.opts)
                if o.target > o.count
            ),
        )
        for _, _, _, jidx, k in wants:
            j = self.jobs[jidx]
            o = j.opts[k]
            if j.total < j.max:
                self._fill(j, min(o.target - o.count, j.max - j.total), opts=(o,))

    def reseat(self) -> None:
        """Re-place the workers placed in this round on the types the LP prices favour, then grow and improve.

        Admission (priority order, fastest type first) decided who runs; this decides where their workers
        go.  Two candidates start from the same admitted set, and the one with more total throughput wins
        (the first on a tie):

        - per-type prices: each job's min workers are placed up to its LP targets, then by reduced value.
          Bin packing is not exact, so four orders are tried until one fits every job's min: least flexible
          jobs first, then largest workers first; then both by value alone.
        - per-size prices (see ``_solve_prices``): every job's LP target counts are placed at once, largest
          workers first (first-fit decreasing), then whatever mins are still short.  Growth placed after
          the mins of small workers finds the whole nodes large workers need already split; this packs the
          targets the way a bin packer would.

        If neither fits every min, the admission placement is kept.
        """
        if not self.pricings or not self.pricings[0][0]:
            self.grow()
            self.improve()
            return
        start = self._new_placement()
        best: tuple[float, int, list[tuple[int, str, dict[int, int]]]] | None = None
        last = -1  # the candidate whose placement is in place now
        for k, pricing in enumerate(self.pricings):
            self._use(pricing)
            orders = (
                ((True, False), (True, True), (False, False), (False, True)) if k == 0 else ((True, True),)
            )
            for targets, by_size in orders:
                self._lift_new(self.jobs)
                last = -1
                if k == 1:
                    self._fill_targets()
                if self._fill_mins(self.jobs, targets, by_size):
                    self.grow()
                    self.improve()
                    last = k
                    value = self._throughput()
                    if best is None or value > best[0] + _EPS:
                        best = (value, k, self._new_placement())
                    break
        if best is None:
            self._use(self.pricings[0])
            self._restore_new(start)
            self.grow()
            self.improve()
        else:
            self._use(self.pricings[best[1]])
            if best[1] != last:
                self._restore_new(best[2])

    def _lift_new(self, jobs: Iterable[_Job]) -> None:
        """Remove every worker of ``jobs`` placed in this round."""
        for j in jobs:
            for o in j.opts:
                for nidx, c in sorted(o.new_nodes.items()):
                    for _ in range(c):
                        self._give(self.nodes[nidx], j, o, kept=False)

    # ------------------------------------------------------------------ phase 3: growth

    def grow(self) -> int:
        heap: list[tuple[int, float, float, tuple[int, float, str], int, int, int]] = []
        for j in self.jobs:
            if not j.admitted or j.total >= j.max:
                continue
            for k, o in enumerate(j.opts):
                if o.count >= o.cap or not o.pool_set:
                    continue
                rho = o.r - self._price(o)
                heap.append((int(o.count >= o.target), -rho, -o.r, j.rank, o.rank, j.idx, k))
        heapq.heapify(heap)
        added = 0
        while heap:
            phase, nrho, nr, jr, orank, jidx, k = heap[0]
            j = self.jobs[jidx]
            o = j.opts[k]
            if j.total >= j.max or o.count >= o.cap:
                heapq.heappop(heap)
                continue
            if phase == 0 and o.count >= o.target:
                heapq.heapreplace(heap, (1, nrho, nr, jr, orank, jidx, k))
                continue
            n = self._find(j, o)
            if n is None:
                heapq.heappop(heap)
                continue
            self._take(n, j, o, kept=False)
            added += 1
        return added

    # ------------------------------------------------------------------ phase 4: local improvement

    def _upgrade(self) -> bool:
        """Move workers placed in this round to a faster accepted type that has room."""
        improved = False
        for j in self.jobs:
            if not j.admitted or len(j.opts) < 2:
                continue
            for fi, fast in enumerate(j.opts):
                while fast.count < fast.cap:
                    slow = next(
                        (o for o in reversed(j.opts[fi + 1 :]) if o.new_nodes and o.r < fast.r - _EPS), None
                    )
                    if slow is None:
                        break
                    n = self._find(j, fast)
                    if n is None:
                        break
                    # Take the slow worker off the node it leaves the most free.
                    src = min(slow.new_nodes, key=lambda i: (-self.nodes[i].acc, i))
                    self._give(self.nodes[src], j, slow, kept=False)
                    self._take(n, j, fast, kept=False)
                    improved = True
        return improved

    def _exchange(self) -> bool:
        """Give a node's accelerators to workers of another job that yield more throughput there."""
        improved = False
        wanting: list[tuple[float, tuple[int, float, str], int, int]] = []
        for b in self.jobs:
            if not b.admitted or b.total >= b.max:
                continue
            for k, ob in enumerate(b.opts):
                if ob.count < ob.cap and ob.pool_set and ob.r > _EPS:
                    wanting.append((-ob.r / ob.p, b.rank, b.idx, k))
        wanting.sort()
        # Victim jobs per type: admitted jobs with workers of that type placed in this round.
        by_type: dict[str, list[tuple[float, tuple[int, float, str], int]]] = {}
        for a in self.jobs:
            if a.admitted:
                for oa in a.opts:
                    if oa.new_nodes:
                        by_type.setdefault(oa.type, []).append((oa.r / oa.p, a.rank, a.idx))
        for lst in by_type.values():
            lst.sort()
        alt_cache: dict[tuple[int, str], tuple[_Opt, _Node] | None] = {}
        for _, _, bidx, k in wanting:
            if self.budget <= 0:
                break
            b = self.jobs[bidx]
            ob = b.opts[k]
            if b.total >= b.max or ob.count >= ob.cap:
                continue
            dens_b = ob.r / ob.p
            cands: list[int] = []
            for dens_a, _, aidx in by_type.get(ob.type, ()):
                self.budget -= 1
                a = self.jobs[aidx]
                oa = a.opt_by_type[ob.type]
                if a is b or not oa.new_nodes:
                    continue
                # Unless a can go elsewhere, only workers worth less per accelerator are worth evicting.
                if dens_a >= dens_b - _EPS and not any(
                    o.r > _EPS and o.type != oa.type and o.count < o.cap for o in a.opts
                ):
                    continue
                cands.append(aidx)
            done = False
            for aidx in cands:
                if done or self.budget <= 0:
                    break
                a = self.jobs[aidx]
                oa = a.opt_by_type[ob.type]
                # Cheapest way for a to give up one worker of this type: move it (to its fastest other type
                # with room; cached until the next change), or drop it.
                ck = (aidx, oa.type)
                if ck in alt_cache:
                    alt = alt_cache[ck]
                else:
                    alt = None
                    for o2 in a.opts:
                        if o2.type == oa.type or o2.count >= o2.cap or o2.r <= _EPS:
                            continue
                        m = self._find(a, o2)
                        self.budget -= 1
                        if m is not None:
                            alt = (o2, m)
                            break
                    alt_cache[ck] = alt
                spare = a.total - a.min  # workers a can drop outright
                move_loss = oa.r - alt[0].r if alt is not None else _INF
                for nidx in sorted(oa.new_nodes):
                    self.budget -= 1
                    n = self.nodes[nidx]
                    if n.pool not in ob.pool_set or nidx in b.avoid:
                        continue
                    # How many of a's workers must leave n so that one worker of b fits.
                    out = max(1, -(-(ob.p - n.acc) // oa.p))
                    if ob.cpu > n.cpu:
                        out = max(out, -(-(ob.cpu - n.cpu) // oa.cpu) if oa.cpu else _BIG)
                    if ob.mem > n.mem:
                        out = max(out, -(-(ob.mem - n.mem) // oa.mem) if oa.mem else _BIG)
                    if out > oa.new_nodes[nidx]:
                        continue
                    drop = out <= spare and oa.r <= move_loss
                    loss = out * (oa.r if drop else move_loss)
                    if loss == _INF:
                        continue
                    acc, cpu, mem = n.acc + out * oa.p, n.cpu + out * oa.cpu, n.mem + out * oa.mem
                    kk = acc // ob.p
                    if ob.cpu:
                        kk = min(kk, cpu // ob.cpu)
                    if ob.mem:
                        kk = min(kk, mem // ob.mem)
                    kk = min(kk, b.max - b.total, ob.cap - ob.count)
                    if kk * ob.r - loss <= _EPS:
                        continue
                    mark = self._begin()
                    ok = True
                    for _ in range(out):
                        self._give(n, a, oa, kept=False)
                        if not drop:
                            assert alt is not None
                            dest = self._find(a, alt[0], exclude=n.idx)
                            if dest is None or alt[0].count >= alt[0].cap:
                                ok = False
                                break
                            self._take(dest, a, alt[0], kept=False)
                    if ok:
                        for _ in range(kk):
                            self._take(n, b, ob, kept=False)
                    if not ok:
                        self._rollback(mark)
                        self._commit(mark)
                        continue
                    self._commit(mark)
                    alt_cache.clear()
                    improved = True
                    done = True
                    break
        return improved

    def _evict(self, a: _Job, oa: _Opt, n: _Node) -> float | None:
        """Take one of ``a``'s workers of type ``oa`` placed in this round off ``n``: onto another node of the
        same type, else onto ``a``'s fastest other type with room, else drop it if ``a`` stays at or above
        its min.  Returns the throughput lost, or None (and changes nothing) when none of these is possible.
        """
        self._give(n, a, oa, kept=False)
        m = self._find(a, oa, exclude=n.idx)
        if m is not None:
            self._take(m, a, oa, kept=False)
            return 0.0
        for o2 in a.opts:  # fastest first: the first with room loses the least
            if o2 is oa or o2.count >= o2.cap or not o2.pool_set:
                continue
            self.budget -= 1
            m = self._find(a, o2, exclude=n.idx)
            if m is not None:
                self._take(m, a, o2, kept=False)
                return oa.r - o2.r
        if a.total >= a.min:
            return oa.r
        self._take(n, a, oa, kept=False)
        return None

    def _slowest_new(self, j: _Job, below: float) -> _Opt | None:
        """``j``'s option with the lowest throughput under ``below`` that has workers placed in this round."""
        slow: _Opt | None = None
        for o in j.opts:
            if o.new_nodes and o.r < below and (slow is None or o.r < slow.r):
                slow = o
        return slow

    def _evict_cost(self, a: _Job, oa: _Opt) -> float:
        """Estimated throughput lost per accelerator freed by evicting one of ``a``'s ``oa`` workers."""
        alt = max((o.r for o in a.opts if o is not oa and o.count < o.cap and o.pool_set), default=-1.0)
        if alt < 0:
            alt = 0.0 if a.total > a.min else -_BIG
        return (oa.r - alt) / oa.p

    def _clear(self) -> bool:
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
        per_type: dict[str, list[_Node]] = {}
        for n in self.nodes:
            if n.new and n.pool >= 0:
                per_type.setdefault(n.accelerator or "", []).append(n)
        if not per_type:
            return False
        wanting: list[tuple[float, tuple[int, float, str], int, int]] = []
        for b in self.jobs:
            if not b.admitted:
                continue
            for k, ob in enumerate(b.opts):
                if ob.count >= ob.cap or not ob.pool_set or ob.r <= _EPS or ob.type not in per_type:
                    continue
                gain = ob.r
                if b.total >= b.max:
                    slow = self._slowest_new(b, ob.r - _EPS)
                    if slow is None:
                        continue
                    gain -= slow.r
                wanting.append((-gain / ob.p, b.rank, b.idx, k))
        wanting.sort()
        for _, _, bidx, k in wanting:
            if self.budget <= 0:
                break
            b = self.jobs[bidx]
            ob = b.opts[k]
            of_type = per_type[ob.type]
            self.budget -= len(of_type)  # one visit per node
            p, pool_set = ob.p, ob.pool_set
            # The three nodes closest to fitting a worker (fewest accelerators missing, then index) among
            # those where it does not fit yet but would once the other jobs' workers placed in this round
            # left: free accelerators plus theirs (every worker on a node of type t is of type t).
            cands = heapq.nsmallest(
                3,
                (
                    (p - n.acc, n.idx, n)
                    for n in of_type
                    if n.acc + n.new_acc - n.new.get(bidx, 0) * p >= p
                    and n.pool in pool_set
                    and n.idx not in b.avoid
                    and not self._fits(n, b, ob)
                ),
            )
            for _, _, n in cands:
                if self.budget <= 0 or ob.count >= ob.cap:
                    break
                if b.total >= b.max and self._slowest_new(b, ob.r - _EPS) is None:
                    break
                victims = sorted(
                    (self._evict_cost(self.jobs[aidx], self.jobs[aidx].opt_by_type[ob.type]), aidx)
                    for aidx in n.new
                    if aidx != bidx
                )
                mark = self._begin()
                delta = 0.0
                for _, aidx in victims:
                    a = self.jobs[aidx]
                    oa = a.opt_by_type[ob.type]
                    while n.new.get(aidx, 0) and not self._fits(n, b, ob):
                        lost = self._evict(a, oa, n)
                        if lost is None:
                            break
                        delta -= lost
                    if self._fits(n, b, ob):
                        break
                while self._fits(n, b, ob) and ob.count < ob.cap:
                    if b.total >= b.max:
                        slow = self._slowest_new(b, ob.r - _EPS)
                        if slow is None:
                            break
                        src = min(slow.new_nodes, key=lambda i: (-self.nodes[i].acc, i))
                        self._give(self.nodes[src], b, slow, kept=False)
                        delta -= slow.r
                    self._take(n, b, ob, kept=False)
                    delta += ob.r
                if delta > _EPS:
                    self._commit(mark)
                    improved = True
                else:
                    self._rollback(mark)
                    self._commit(mark)
        return improved

    def _new_placement(self) -> list[tuple[int, str, dict[int, int]]]:
        return [(j.idx, o.type, dict(o.new_nodes)) for j in self.jobs for o in j.opts if o.new_nodes]

    def _restore_new(self, saved: list[tuple[int, str, dict[int, int]]]) -> None:
        self._lift_new(self.jobs)
        for jidx, typ, new_nodes in saved:
            j = self.jobs[jidx]
            o = j.opt_by_type[typ]
            for nidx, c in sorted(new_nodes.items()):
                for _ in range(c):
                    self._take(self.nodes[nidx], j, o, kept=False)

    def _throughput(self) -> float:
        return sum(o.r * o.count for j in self.jobs if j.admitted for o in j.opts)

    def improve(self) -> None:
        self.budget = _IMPROVE_BUDGET * (len(self.nodes) + sum(j.max for j in self.jobs if j.admitted)) + 1000
        for _ in range(_IMPROVE_ROUNDS):
            changed = self._upgrade()
            changed = self._exchange() or changed
            changed = self._clear() or changed
            if not changed:
                break
            self.grow()
            if self.budget <= 0:
                break

    # ------------------------------------------------------------------ output

    def result(self) -> Plan:
        out: list[JobPlan] = []
        for j in self.jobs:
            # A worker preempted and placed again on the same node with the same type simply stays.
            for ni, t in list(j.preempted):
                o = j.opt_by_type.get(t)
                if o is not None and o.new_nodes.get(ni, 0) + j.kept.get(ni, 0) > j.orig.get(ni, 0):
                    j.orig[ni] = j.orig.get(ni, 0) + 1
                    j.preempted.remove((ni, t))
            workers: list[WorkerSlot] = []
            throughput = 0.0
            for nidx, c in j.kept.items():
                n = self.nodes[nidx]
                o = j.opt_by_type[n.accelerator or ""]
                workers.extend([WorkerSlot(n.name, o.type)] * c)
                throughput += o.r * c
            for o in j.opts:
                for nidx, c in o.new_nodes.items():
                    workers.extend([WorkerSlot(self.nodes[nidx].name, o.type)] * c)
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
            preempted = tuple(sorted(WorkerSlot(self.nodes[ni].name, t) for ni, t in j.preempted))
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


def plan(snapshot: ClusterSnapshot, jobs: Sequence[JobRequest], *, now: float) -> Plan:
    """Compute the desired placement of every job's workers.

    ``now`` is the planner's notion of the current time; the plan does not depend on it today but it is
    part of the contract so that time-based policies (aging, backoff) can be added without reading a clock.
    """
    del now
    p = _Planner(snapshot, jobs)
    p.keep()
    p.admit()
    p.price()
    p.reseat()
    for _ in range(len(p.jobs)):
        if not p.retry():
            break
        p.grow()
        p.improve()
    return p.result()
