"""Property tests of the placement planner over random snapshots and job sets (hypothesis)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from placement_helpers import GIB, check_invariants, job, load_benchmark, node, opt, with_current

from heterotrain_operator.placement import (
    REASON_INSUFFICIENT_CAPACITY,
    ClusterSnapshot,
    JobRequest,
    Node,
    Plan,
    Taint,
    Toleration,
    node_keeps,
    node_usable_for,
    plan,
)
from heterotrain_operator.placement.baselines import plan_binpack, plan_single_type, plan_typeblind_spread

TYPES = ["h100", "a100", "mi300x", "910b"]
TAINTS = [
    Taint("dedicated", "x", "NoSchedule"),
    Taint("spot", "true", "PreferNoSchedule"),
    Taint("gpu", "bad", "NoExecute"),
]
TOLERATIONS = [
    Toleration("dedicated", "Equal", "x", "NoSchedule"),
    Toleration("gpu", "Exists"),
    Toleration(None, "Exists"),
    Toleration("spot", "Exists", effect="PreferNoSchedule"),
]

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def nodes_st(draw: st.DrawFn, prefix: str = "n", min_size: int = 1, max_size: int = 10) -> list[Node]:
    out = []
    for i in range(draw(st.integers(min_size, max_size))):
        size = draw(st.sampled_from([1, 2, 4, 8, 8, 16]))
        cpu = draw(st.sampled_from([16_000, 64_000, 128_000]))
        mem = draw(st.sampled_from([64, 512, 1024])) * GIB
        out.append(
            node(
                f"{prefix}-{i:02d}",
                draw(st.sampled_from([*TYPES, *TYPES, None])),
                size,
                draw(st.integers(0, size)),
                cpu=cpu,
                cpu_used=draw(st.integers(0, cpu // 2)),
                mem=mem,
                mem_used=draw(st.integers(0, mem // GIB // 2)) * GIB,
                taints=draw(st.lists(st.sampled_from(TAINTS), max_size=2, unique=True)),
                ready=draw(st.sampled_from([True, True, True, True, False])),
                unschedulable=draw(st.sampled_from([False, False, False, False, True])),
                labels=draw(st.sampled_from([(), (("zone", "a"),), (("zone", "b"),)])),
            )
        )
    return out


@st.composite
def jobs_st(draw: st.DrawFn, prefix: str = "ns/j", min_size: int = 1, max_size: int = 7) -> list[JobRequest]:
    out = []
    for i in range(draw(st.integers(min_size, max_size))):
        types = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True))
        opts = [
            opt(
                t,
                per=draw(st.sampled_from([1, 1, 2, 4, 8])),
                r=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])),
                cap=draw(st.one_of(st.none(), st.integers(1, 4))),
            )
            for t in types
        ]
        lo = draw(st.integers(1, 4))
        out.append(
            job(
                f"{prefix}{i:02d}",
                *opts,
                min_w=lo,
                max_w=lo + draw(st.integers(0, 6)),
                prio=draw(st.integers(0, 2)),
                created=float(draw(st.integers(0, 3))),
                cpu=draw(st.sampled_from([0, 1_000, 8_000])),
                mem=draw(st.sampled_from([0, 8 * GIB])),
                tolerations=draw(st.lists(st.sampled_from(TOLERATIONS), max_size=2, unique=True)),
                selector=draw(st.sampled_from([(), (("zone", "a"),)])),
                placement=draw(st.sampled_from(["Pack", "Pack", "Spread"])),
                suspended=draw(st.sampled_from([False] * 9 + [True])),
            )
        )
    return out


@st.composite
def evolution_st(
    draw: st.DrawFn,
) -> tuple[ClusterSnapshot, list[JobRequest], ClusterSnapshot, list[JobRequest]]:
    """A first round (all pending), then a changed cluster with the first plan applied and new jobs."""
    nodes = draw(nodes_st())
    jobs = draw(jobs_st())
    snap1 = ClusterSnapshot(tuple(nodes))
    first = plan(snap1, jobs, now=0.0)
    running = with_current(jobs, first)
    # Nodes fail, get cordoned, disappear or join.
    changed: list[Node] = []
    for n in nodes:
        fate = draw(st.sampled_from(["same"] * 6 + ["down", "cordon", "gone"]))
        if fate == "same":
            changed.append(n)
        elif fate == "down":
            changed.append(replace(n, ready=False))
        elif fate == "cordon":
            changed.append(replace(n, unschedulable=True))
    changed += draw(nodes_st(prefix="new", min_size=0, max_size=3))
    newcomers = draw(jobs_st(prefix="ns/new", min_size=0, max_size=3))
    # Some newcomers outrank every running job, so that preemption gets exercised.
    newcomers = [replace(j, priority=j.priority + draw(st.sampled_from([0, 3]))) for j in newcomers]
    return snap1, jobs, ClusterSnapshot(tuple(changed)), running + newcomers


def rank(j: JobRequest) -> tuple[int, float, str]:
    return (-j.priority, j.created, j.key)


def usable_current(snapshot: ClusterSnapshot, j: JobRequest) -> Counter[object]:
    nodes = {n.name: n for n in snapshot.nodes}
    opts = {o.type: o for o in j.accelerators}
    return Counter(
        w
        for w in j.current
        if w.node in nodes and w.type in opts and node_keeps(nodes[w.node], j, opts[w.type])
    )


@SETTINGS
@given(st.data())
def test_invariants_hold_for_fresh_clusters(data: st.DataObject) -> None:
    nodes = data.draw(nodes_st())
    jobs = data.draw(jobs_st())
    snap = ClusterSnapshot(tuple(nodes))
    result = plan(snap, jobs, now=0.0)
    check_invariants(snap, jobs, result)


@st.composite
def contention_st(draw: st.DrawFn) -> tuple[ClusterSnapshot, list[JobRequest]]:
    """A full cluster of two types running low priority elastic jobs, and higher priority newcomers."""
    nodes = [
        node(
            f"c-{i:02d}",
            draw(st.sampled_from(["h100", "a100"])),
            draw(st.sampled_from([4, 8])),
            draw(st.integers(0, 2)),
        )
        for i in range(draw(st.integers(1, 6)))
    ]

    def jobs(prefix: str, prio: tuple[int, int], per: list[int], lo: int, n: int) -> list[JobRequest]:
        out = []
        for i in range(draw(st.integers(1, n))):
            types = draw(st.lists(st.sampled_from(["h100", "a100"]), min_size=1, max_size=2, unique=True))
            m = draw(st.integers(1, lo))
            out.append(
                job(
                    f"{prefix}{i}",
                    *[
                        opt(t, per=draw(st.sampled_from(per)), r=draw(st.sampled_from([1.0, 2.0])))
                        for t in types
                    ],
                    min_w=m,
                    max_w=m + draw(st.integers(0, 8)),
                    prio=draw(st.integers(*prio)),
                    created=float(i),
                    placement=draw(st.sampled_from(["Pack", "Spread"])),
                )
            )
        return out

    first = jobs("ns/run", (0, 1), [1, 2], 2, 4)
    snap = ClusterSnapshot(tuple(nodes))
    running = with_current(first, plan(snap, first, now=0.0))
    return snap, running + jobs("ns/hi", (2, 3), [1, 2, 4], 6, 3)


def check_replan(snap: ClusterSnapshot, jobs: list[JobRequest], rnd: random.Random) -> None:
    result = plan(snap, jobs, now=5.0)
    check_invariants(snap, jobs, result)

    # Same input, any order: the same plan.
    nodes = list(snap.nodes)
    shuffled = list(jobs)
    rnd.shuffle(nodes)
    rnd.shuffle(shuffled)
    assert plan(ClusterSnapshot(tuple(nodes)), shuffled, now=99.0) == result

    by_key = {j.key: j for j in jobs}
    for jp in result.jobs:
        j = by_key[jp.key]
        if not jp.admitted:
            # A running job that still has its min on usable nodes is never stopped (preemption stops at min).
            assert (
                j.suspended
                or sum(usable_current(snap, j).values()) < j.min_workers
                or jp.reason == "InvalidSpec"
            )
            continue
        # Running workers on nodes that are still usable stay, unless preempted.
        lost = usable_current(snap, j) - Counter(jp.workers) - Counter(jp.preempted)
        assert not lost, f"{j.key} lost {lost}"
        if jp.preempted:
            event("preemption")
            # Preempted only for a strictly higher priority job that needed room, and never below min ...
            assert len(jp.workers) >= j.min_workers
            # ... and the room made on each node went to such a job (a new worker of it lands there).
            for slot in set(jp.preempted):
                assert any(
                    other.priority > j.priority
                    and result[other.key].admitted
                    and sum(usable_current(snap, other).values()) < other.min_workers
                    and slot.node
                    in {w.node for w in (Counter(result[other.key].workers) - Counter(other.current))}
                    for other in jobs
                ), f"{j.key} preempted on {slot.node} without a higher priority job in need placed there"

    # Applying the plan and planning again changes nothing (no churn).
    again = plan(snap, with_current(jobs, result), now=10.0)
    assert [(p.key, p.admitted, p.workers) for p in again.jobs] == [
        (p.key, p.admitted, p.workers) for p in result.jobs
    ]


@SETTINGS
@given(evolution_st(), st.randoms(use_true_random=False))
def test_invariants_determinism_and_stability_after_changes(
    ev: tuple[ClusterSnapshot, list[JobRequest], ClusterSnapshot, list[JobRequest]], rnd: random.Random
) -> None:
    _, _, snap, jobs = ev
    check_replan(snap, jobs, rnd)


@SETTINGS
@given(contention_st(), st.randoms(use_true_random=False))
def test_preemption_rules_under_contention(
    ev: tuple[ClusterSnapshot, list[JobRequest]], rnd: random.Random
) -> None:
    snap, jobs = ev
    check_replan(snap, jobs, rnd)


def check_later_jobs_do_not_matter(snap: ClusterSnapshot, jobs: list[JobRequest]) -> None:
    result = plan(snap, jobs, now=0.0)
    for j in sorted(jobs, key=rank)[:4]:
        if j.suspended:
            continue
        kept = [o for o in jobs if o is j or o.current or rank(o) < rank(j)]
        alone = plan(snap, kept, now=0.0)
        assert alone[j.key].admitted == result[j.key].admitted, j.key
        if not result[j.key].admitted:
            assert alone[j.key].reason == result[j.key].reason


@SETTINGS
@given(evolution_st())
def test_admission_does_not_depend_on_later_pending_jobs(
    ev: tuple[ClusterSnapshot, list[JobRequest], ClusterSnapshot, list[JobRequest]],
) -> None:
    """Priority/FCFS order: a job's admission is decided before any pending job ranked after it is looked at,
    so removing those jobs never changes it (lower priority jobs never block a higher priority one)."""
    check_later_jobs_do_not_matter(ev[2], ev[3])


@SETTINGS
@given(contention_st())
def test_admission_under_contention_does_not_depend_on_later_pending_jobs(
    ev: tuple[ClusterSnapshot, list[JobRequest]],
) -> None:
    check_later_jobs_do_not_matter(*ev)


@SETTINGS
@given(st.data())
def test_gang_not_admitted_means_min_really_does_not_fit_alone_on_free_nodes(data: st.DataObject) -> None:
    """A single pending job is admitted exactly when its min fits in the free capacity (counted per node)."""
    nodes = data.draw(nodes_st())
    (j,) = data.draw(jobs_st(min_size=1, max_size=1))
    j = replace(j, suspended=False)
    snap = ClusterSnapshot(tuple(nodes))
    result = plan(snap, [j], now=0.0)
    check_invariants(snap, [j], result)
    # Upper bound on workers that can fit: per node, the best of its options, within caps.
    per_type: Counter[str] = Counter()
    for n in nodes:
        for o in j.accelerators:
            if not node_usable_for(n, j, o):
                continue
            k = (n.accelerators_allocatable - n.accelerators_used) // o.per_worker
            if j.cpu_milli_per_worker:
                k = min(k, (n.cpu_milli_allocatable - n.cpu_milli_used) // j.cpu_milli_per_worker)
            if j.memory_per_worker:
                k = min(k, (n.memory_allocatable - n.memory_used) // j.memory_per_worker)
            per_type[o.type] += max(0, k)
    fit = sum(
        min(per_type[o.type], o.max_workers if o.max_workers is not None else j.max_workers)
        for o in j.accelerators
    )
    caps = sum(o.max_workers if o.max_workers is not None else j.max_workers for o in j.accelerators)
    if caps < j.min_workers:
        assert not result[j.key].admitted
    elif fit >= j.min_workers:
        # One type per node, so per-type counts add up exactly: the job must be admitted, at up to max.
        assert result[j.key].admitted
        assert len(result[j.key].workers) == min(fit, j.max_workers)
    else:
        assert not result[j.key].admitted
        assert result[j.key].reason in (REASON_INSUFFICIENT_CAPACITY, "NoMatchingNodes")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_baselines_produce_valid_plans_and_never_beat_the_lp_bound(data: st.DataObject) -> None:
    bench = load_benchmark()
    nodes = [replace(n, taints=(), labels=()) for n in data.draw(nodes_st(max_size=8))]
    jobs = [replace(j, tolerations=(), node_selector=()) for j in data.draw(jobs_st(max_size=5))]
    snap = ClusterSnapshot(tuple(nodes))
    bound = bench.lp_upper_bound(snap, jobs)
    for fn in (plan, plan_typeblind_spread, plan_binpack, plan_single_type):
        result: Plan = fn(snap, jobs, now=0.0)
        check_invariants(snap, jobs, result)
        assert result.total_throughput <= bound + 1e-6, fn.__name__


def _exact_optimum(
    snap: ClusterSnapshot, jobs: list[JobRequest], fixed: set[int] | None = None
) -> float | None:
    """Max total throughput over every feasible plan (any admission order), by a per-node MILP.

    With ``fixed``: over the plans that admit exactly the jobs with those indices (None if none exists)."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    var: list[tuple[int, int, int]] = []  # (job, option, node)
    for ji, j in enumerate(jobs):
        for oi, o in enumerate(j.accelerators):
            for ni, n in enumerate(snap.nodes):
                if node_usable_for(n, j, o):
                    var.append((ji, oi, ni))
    nx, ny = len(var), len(jobs)
    if nx == 0:
        return 0.0 if not fixed else None
    c = np.zeros(nx + ny)
    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []
    for k, (ji, oi, _) in enumerate(var):
        c[k] = -jobs[ji].accelerators[oi].worker_throughput
    for ji, j in enumerate(jobs):
        a = np.zeros(nx + ny)
        for k, (jj, _, _) in enumerate(var):
            if jj == ji:
                a[k] = 1.0
        b = a.copy()
        a[nx + ji] = -j.max_workers
        rows.append(a)
        lo.append(-np.inf)
        hi.append(0.0)
        b[nx + ji] = -j.min_workers
        rows.append(b)
        lo.append(0.0)
        hi.append(np.inf)
        for oi, o in enumerate(j.accelerators):
            if o.max_workers is not None:
                a = np.zeros(nx + ny)
                for k, (jj, oo, _) in enumerate(var):
                    if jj == ji and oo == oi:
                        a[k] = 1.0
                rows.append(a)
                lo.append(-np.inf)
                hi.append(float(o.max_workers))
    for ni, n in enumerate(snap.nodes):
        for free, per in (
            (n.accelerators_allocatable - n.accelerators_used, lambda j, o: o.per_worker),
            (n.cpu_milli_allocatable - n.cpu_milli_used, lambda j, o: j.cpu_milli_per_worker),
            ((n.memory_allocatable - n.memory_used) / GIB, lambda j, o: j.memory_per_worker / GIB),
        ):
            a = np.zeros(nx + ny)
            for k, (ji, oi, nn) in enumerate(var):
                if nn == ni:
                    a[k] = per(jobs[ji], jobs[ji].accelerators[oi])
            rows.append(a)
            lo.append(-np.inf)
            hi.append(float(free))
    y_lo = [0.0] * ny if fixed is None else [1.0 if ji in fixed else 0.0 for ji in range(ny)]
    y_hi = [1.0] * ny if fixed is None else y_lo
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=np.ones(nx + ny),
        bounds=Bounds(np.array([0.0] * nx + y_lo), np.array([np.inf] * nx + y_hi)),
    )
    if fixed is not None and res.status == 2:
        return None
    assert res.status == 0, res.message
    return float(-res.fun)


def _exact_order_optimum(snap: ClusterSnapshot, jobs: list[JobRequest]) -> float:
    """Max throughput over the plans that follow the admission rule, exactly: in priority / creation order a
    job is admitted iff its min fits next to the mins of the jobs admitted before it (so the admitted set is
    unique), and the optimum over plans admitting exactly that set."""
    bench = load_benchmark()
    admitted: set[int] = set()
    for ji in bench.admission_order(jobs):
        if _exact_optimum(snap, jobs, admitted | {ji}) is not None:
            admitted.add(ji)
    value = _exact_optimum(snap, jobs, admitted)
    assert value is not None
    return value


def _small_instance(data: st.DataObject) -> tuple[ClusterSnapshot, list[JobRequest]] | None:
    """A cluster and jobs small enough for the exact per-node MILP (no taints; None if a node is overused)."""
    nodes = [replace(n, taints=()) for n in data.draw(nodes_st(max_size=5))]
    jobs = [replace(j, tolerations=()) for j in data.draw(jobs_st(max_size=4))]
    if any(n.accelerators_used > n.accelerators_allocatable for n in nodes):
        return None
    return ClusterSnapshot(tuple(nodes)), jobs


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_lp_bound_is_above_the_exact_optimum_and_every_plan(data: st.DataObject) -> None:
    """The benchmark's LP bound (with its CPU, memory and per-node slot rows) stays a valid upper bound."""
    bench = load_benchmark()
    drawn = _small_instance(data)
    if drawn is None:
        return
    snap, jobs = drawn
    bound = bench.lp_upper_bound(snap, jobs)
    exact = _exact_optimum(snap, jobs)
    assert exact <= bound + 1e-6
    for fn in (plan, plan_typeblind_spread, plan_binpack, plan_single_type):
        assert fn(snap, jobs, now=0.0).total_throughput <= bound + 1e-6, fn.__name__


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_order_respecting_bound_is_above_the_exact_order_optimum_and_our_plan(data: st.DataObject) -> None:
    """The benchmark's order-respecting bound stays a valid upper bound on every plan that follows the
    admission rule (checked against the exact optimum over those plans), is never below our plan, and never
    above the order-free bound."""
    bench = load_benchmark()
    drawn = _small_instance(data)
    if drawn is None:
        return
    snap, jobs = drawn
    model = bench.BoundModel(snap, jobs)
    free = model.solve()
    exact = _exact_order_optimum(snap, jobs)
    # Any valid plan's admitted set may serve as the proof; the bound must hold whichever is used.
    # The empty plan (it admits nothing) is valid too and leaves every refusal to be proven.
    bound, _ = bench.order_respecting_bound(model, jobs, set())
    assert exact <= bound + 1e-6
    for fn in (plan, plan_typeblind_spread, plan_binpack, plan_single_type):
        result = fn(snap, jobs, now=0.0)
        bound, _ = bench.order_respecting_bound(model, jobs, {p.key for p in result.jobs if p.admitted})
        assert exact <= bound + 1e-6, fn.__name__
        assert result.total_throughput <= bound + 1e-6 or fn is not plan
        assert bound <= free + 1e-6


@SETTINGS
@given(st.data())
def test_avoided_nodes_get_no_new_worker_of_the_job(data: st.DataObject) -> None:
    """A job's avoid set (bad or lost nodes) keeps its new workers off them; its running workers stay."""
    _, _, snap2, jobs = data.draw(evolution_st())
    names = sorted(n.name for n in snap2.nodes)
    jobs = [
        replace(j, avoid=frozenset(data.draw(st.lists(st.sampled_from(names), max_size=3)) if names else ()))
        for j in jobs
    ]
    result = plan(snap2, jobs, now=5.0)
    check_invariants(snap2, jobs, result)
    for j in jobs:
        jp = result.get(j.key)
        if jp is None:
            continue
        kept = Counter(j.current)
        for w in jp.workers:
            if kept[w] > 0:
                kept[w] -= 1
                continue
            assert w.node not in j.avoid, (j.key, w, sorted(j.avoid))
