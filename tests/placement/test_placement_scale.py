"""Plans are fixed points at scale, whatever the machine's load.

The soak scenario's shape (5 types x 200 nodes of 8 accelerators, 200 jobs accepting 1 to 3 types, perWorker
1/2/4/8, 2 to 10 workers) arriving over several passes, as watch events deliver them: every pass's plan,
once applied (its workers become the jobs' running workers), must be planned again unchanged; and the same
inputs must give the same plan while other processes keep every core busy.  The nodes carry the labels
real nodes have (a hostname each), and some carry a NoSchedule taint a running job does not tolerate, as
the node lifecycle controller adds it to a node whose heartbeat came late.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from placement_helpers import check_invariants, job, node, opt, with_current

from heterotrain_operator.placement import ClusterSnapshot, JobRequest, Plan, Taint, Toleration, plan

TYPES = ("h100", "a100", "h20", "910b", "mi300x")
SPEED = {"h100": 3.17, "a100": 1.0, "h20": 0.47, "910b": 1.0, "mi300x": 4.19}
KWOK = Toleration(key="kwok.x-k8s.io/node", operator="Exists", effect="NoSchedule")
UNREACHABLE = Taint("node.kubernetes.io/unreachable", "", "NoSchedule")


def big_cluster(per_type: int, late: frozenset[str] = frozenset()) -> ClusterSnapshot:
    nodes = []
    for t in TYPES:
        for i in range(per_type):
            name = f"{t}-{i:04d}"
            taints = [Taint("kwok.x-k8s.io/node", "fake", "NoSchedule")]
            if name in late:
                taints.append(UNREACHABLE)
            labels = [("heterotrain.io/accelerator", t), ("kubernetes.io/hostname", name)]
            nodes.append(node(name, t, 8, taints=taints, labels=labels))
    return ClusterSnapshot(tuple(nodes))


def job_mix(count: int, seed: int) -> list[JobRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        per = rng.choice((1, 2, 4, 8))
        types = rng.sample(TYPES, rng.randint(1, 3))
        opts = [opt(t, per, SPEED[t] * per) for t in types]
        out.append(job(f"ns/j{i:03d}", *opts, min_w=2, max_w=10, created=float(i), tolerations=[KWOK]))
    return out


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1_000_003


@contextmanager
def busy_cpu(procs: int = 3) -> Iterator[None]:
    stop = multiprocessing.Event()
    ps = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(procs)]
    for p in ps:
        p.start()
    try:
        yield
    finally:
        stop.set()
        for p in ps:
            p.join(timeout=10)


def test_a_1000_node_cluster_with_200_jobs_arriving_over_passes_is_a_fixed_point() -> None:
    jobs = job_mix(200, seed=7)
    snap = big_cluster(200)
    current: list[JobRequest] = []
    result: Plan | None = None
    for arrived in (40, 120, 200):  # the jobs seen so far, in three passes
        current = [*with_current(current, result)] if result is not None else []
        current += jobs[len(current) : arrived]
        result = plan(snap, current, now=0.0)
        check_invariants(snap, current, result)
    assert result is not None
    settled = with_current(current, result)
    again = plan(snap, settled, now=1.0)
    assert again == result, "a settled plan changed on the next pass"

    # Late heartbeats put the unreachable NoSchedule taint on 5 % of the nodes: nothing running moves.
    rng = random.Random(3)
    late = frozenset(rng.sample([n.name for n in snap.nodes], len(snap.nodes) // 20))
    tainted = plan(big_cluster(200, late), settled, now=2.0)
    for jp in result:
        kept = {w for w in tainted[jp.key].workers}
        assert set(jp.workers) <= kept or not jp.admitted, f"{jp.key} lost running workers to a taint"

    # The same inputs under a busy machine: the identical plan (no time budget, no clock, no randomness).
    with busy_cpu():
        loaded = plan(snap, settled, now=3.0)
    assert loaded == result


def test_admission_order_is_the_jobs_not_the_watch_events() -> None:
    """The same jobs handed over in another order (as another watch delivery would) plan the same."""
    jobs = [replace(j, created=float(i)) for i, j in enumerate(job_mix(60, seed=11))]
    snap = big_cluster(40)
    forward = plan(snap, jobs, now=0.0)
    shuffled = list(jobs)
    random.Random(5).shuffle(shuffled)
    assert plan(snap, shuffled, now=0.0) == forward
