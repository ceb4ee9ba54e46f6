"""The planner's mutable working state for one call of ``plan``, and its primitive moves.

* Bookkeeping records: :class:`NodeState` (a node's free room and the workers on it), :class:`Pool` (nodes
  that are interchangeable for eligibility, indexed in heaps by free accelerators), :class:`OptionState`
  (one accepted accelerator type of a job, its cap, pools and workers) and :class:`JobState` (a job's
  options, kept workers, admission and reasons).
* :class:`State`: the records of one snapshot and job set, built from the inputs (nodes sorted by name,
  jobs in priority order, pools per eligibility signature), with the primitive moves every phase uses:
  ``take`` / ``give`` one worker, an undo log (``begin``, ``rollback``, ``commit``) for tentative
  changes, and the node search (``find``: best fit for ``Pack``, worst fit for ``Spread``).

(How nodes are chosen and indexed: the planner's docstring, "Node choice".)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from .eligibility import prefers_not, selector_matches, tolerates_all, validate
from .types import (
    PLACEMENT_SPREAD,
    REASON_INVALID_SPEC,
    AcceleratorOption,
    ClusterSnapshot,
    JobRequest,
    Labels,
    Node,
    Taint,
    Toleration,
)

__all__ = ["BIG", "EPS", "INF", "JobState", "NodeState", "OptionState", "Pool", "Pricing", "State"]

EPS = 1e-9
INF = float("inf")
BIG = 1 << 30

# Shadow prices per accelerator by (type, worker size), and target workers by (job idx, option rank).
Pricing = tuple[dict[tuple[str, int], float], dict[tuple[int, int], int]]

# Per (tolerations, node selector, pool id): the pool as (preferred, fallback) pool ids of an option.
_EligCache = dict[tuple[tuple[Toleration, ...], Labels, int], tuple[tuple[int, ...], tuple[int, ...]]]


class NodeState:
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


class Pool:
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


class OptionState:
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


class JobState:
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
        self.opts: list[OptionState] = []  # fastest first, then the user's order
        self.opt_by_type: dict[str, OptionState] = {}
        self.kept: dict[int, int] = {}  # node idx -> kept workers
        self.total = 0
        self.admitted = False
        self.reason: str | None = None
        self.message: str | None = None
        self.preempted: list[tuple[int, str]] = []  # (node idx, type)
        self.orig: dict[int, int] = {}  # node idx -> kept workers that were running before this plan
        self.dropped: list[str] = []  # why current workers were dropped
        self.avoid: frozenset[int] = frozenset()  # node idx that get no new worker of this job


class State:
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
        self.nodes = [NodeState(i, n) for i, n in enumerate(src_nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        self.pools: list[Pool] = []
        self.pools_by_type: dict[str, list[Pool]] = {}
        self._index_pools(src_nodes, requests)
        # Jobs, in priority order.
        self.jobs = [
            JobState(i, r)
            for i, r in enumerate(sorted(requests, key=lambda r: (-r.priority, r.created, r.key)))
        ]
        self._index_jobs()
        # Undo log for tentative changes: (node idx, job idx, type, kept flag, +1 take / -1 give).
        self.log: list[tuple[int, int, str, bool, int]] | None = None
        # (victim job idx, node idx, was a running worker) per eviction, to undo failed admission attempts.
        self.pre_log: list[tuple[int, int, bool]] = []
        self.budget = 0
        self.prices: dict[tuple[str, int], float] = {}  # per accelerator, by (type, worker size)
        self.pricings: list[Pricing] = []

    def _index_pools(self, src_nodes: list[Node], requests: Sequence[JobRequest]) -> None:
        # Pools: usable accelerator nodes grouped by everything eligibility depends on: type, resource,
        # taints and the labels some job's node selector names (not every label: hostnames would make a
        # pool of each node).
        selected = {k for r in requests for o in r.accelerators for k, _ in r.node_selector_of(o)}
        pool_of: dict[tuple[str, str, tuple[Taint, ...], Labels], Pool] = {}
        for n, src in zip(self.nodes, src_nodes, strict=True):
            if not src.ready or src.unschedulable or not src.accelerator or not src.resource_name:
                continue
            taints = tuple(sorted(src.taints, key=lambda t: (t.key, t.value, t.effect)))
            labels = tuple(kv for kv in src.labels if kv[0] in selected)
            sig = (src.accelerator, src.resource_name, taints, labels)
            pool = pool_of.get(sig)
            if pool is None:
                pool = Pool(-1, src.accelerator, src.resource_name, taints, labels)
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

    def _index_jobs(self) -> None:
        elig_cache: _EligCache = {}
        for j in self.jobs:
            req = j.req
            j.avoid = frozenset(self.by_name[n].idx for n in req.avoid if n in self.by_name)
            err = validate(req)
            if err is not None:
                j.reason, j.message = REASON_INVALID_SPEC, err
                continue
            opts: list[OptionState] = []
            for rank, o in enumerate(req.accelerators):
                cap = req.max_workers if o.max_workers is None else min(o.max_workers, req.max_workers)
                opt = OptionState(o, rank, cap, req)
                self._pool_tiers(opt, o, req, elig_cache)
                opts.append(opt)
            opts.sort(key=lambda o: (-o.r, o.rank))
            j.opts = opts
            j.opt_by_type = {o.type: o for o in opts}

    def _pool_tiers(
        self, opt: OptionState, o: AcceleratorOption, req: JobRequest, elig_cache: _EligCache
    ) -> None:
        """Set the pools ``opt``'s workers may use: preferred, then those with an untolerated
        PreferNoSchedule taint."""
        tolerations, selector = req.tolerations_of(o), req.node_selector_of(o)
        pref: list[int] = []
        fallback: list[int] = []
        for pool in self.pools_by_type.get(o.type, []):
            if pool.resource != o.resource_name:
                continue
            ck = (tolerations, selector, pool.id)
            hit = elig_cache.get(ck)
            if hit is None:
                ok = tolerates_all(tolerations, pool.taints) and selector_matches(selector, pool.labels)
                soft = ok and prefers_not(tolerations, pool.taints)
                hit = ((pool.id,), ()) if ok and not soft else (((), (pool.id,)) if ok else ((), ()))
                elig_cache[ck] = hit
            pref.extend(hit[0])
            fallback.extend(hit[1])
        opt.pools = (tuple(pref), tuple(fallback))
        opt.pool_set = frozenset(pref) | frozenset(fallback)

    # ------------------------------------------------------------------ primitive moves

    def _touch(self, n: NodeState, old: int) -> None:
        n.ver += 1
        if n.pool >= 0:
            pool = self.pools[n.pool]
            if old >= 0:
                pool.cnt[old] -= 1
            if n.acc >= 0:
                pool.cnt[n.acc] += 1
                heapq.heappush(pool.buckets[n.acc], (n.idx, n.ver))

    def take(self, n: NodeState, j: JobState, o: OptionState, kept: bool) -> None:
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

    def give(self, n: NodeState, j: JobState, o: OptionState, kept: bool) -> None:
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

    def begin(self) -> int:
        if self.log is None:
            self.log = []
        return len(self.log)

    def rollback(self, mark: int) -> None:
        assert self.log is not None
        entries = self.log[mark:]
        del self.log[mark:]
        saved, self.log = self.log, None
        for nidx, jidx, typ, kept, sign in reversed(entries):
            j = self.jobs[jidx]
            if sign > 0:
                self.give(self.nodes[nidx], j, j.opt_by_type[typ], kept)
            else:
                self.take(self.nodes[nidx], j, j.opt_by_type[typ], kept)
        self.log = saved

    def commit(self, mark: int) -> None:
        if mark == 0:
            self.log = None

    def fits(self, n: NodeState, j: JobState, o: OptionState) -> bool:
        return n.acc >= o.p and n.cpu >= o.cpu and n.mem >= o.mem

    def _find_in_pool(
        self,
        pool: Pool,
        p: int,
        cpu: int,
        mem: int,
        spread: bool,
        exclude: int = -1,
        avoid: frozenset[int] = frozenset(),
    ) -> NodeState | None:
        nodes = self.nodes
        rng = range(pool.maxcap, p - 1, -1) if spread else range(p, pool.maxcap + 1)
        for f in rng:
            bucket = pool.buckets[f]
            skipped: list[tuple[int, int]] = []
            found: NodeState | None = None
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

    def find(self, j: JobState, o: OptionState, exclude: int = -1) -> NodeState | None:
        """The node a new worker of job ``j`` with option ``o`` goes to, or None when none has room."""
        for tier in o.pools:
            best: NodeState | None = None
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
