"""The cluster-wide avoid list (the chart's ``avoidNodes``, ``HETEROTRAIN_AVOID_NODES``): no new worker of
any job lands on a listed node; workers already running there stay (a node is drained for that)."""

from __future__ import annotations

from controller_helpers import A100, ASCEND, T0, Api, Clock, by_node, cluster, job

from heterotrain_operator.cache import ClusterCache
from heterotrain_operator.controller import Controller
from heterotrain_operator.settings import Settings


def submit(cache: ClusterCache, api: Api, name: str) -> None:
    j = job(name, 0, (1, 3), [A100, ASCEND], T0 - 600)
    api.objects[("HeteroTrainJob", "ns", name)] = j
    cache.upsert("jobs", j)


def controller(cache: ClusterCache, api: Api, clock: Clock, avoid: frozenset[str]) -> Controller:
    return Controller(api, Settings(avoid_nodes=avoid), cache, clock=clock)  # type: ignore[arg-type]


def test_no_new_worker_lands_on_an_avoided_node() -> None:
    cache, api, clock = cluster()
    submit(cache, api, "j")
    ctl = controller(cache, api, clock, frozenset({"asc"}))
    ctl.reconcile_all()
    assert list(by_node(api, "j").values()) == ["gpu"]  # the two Ascend accelerators stay free
    status = api.objects[("HeteroTrainJob", "ns", "j")]["status"]
    assert status["phase"] == "Admitted"


def test_workers_already_on_a_node_that_becomes_avoided_stay() -> None:
    cache, api, clock = cluster()
    submit(cache, api, "j")
    before = controller(cache, api, clock, frozenset())
    before.reconcile_all()
    for name in api.workers("j"):
        api.bind("ns", name)
    before.reconcile_all()
    placed = by_node(api, "j")
    assert sorted(placed.values()) == ["asc", "asc", "gpu"]

    after = controller(cache, api, clock, frozenset({"asc"}))  # the operator restarted with the list set
    for _ in range(3):
        clock.t += 5
        after.reconcile_all()
    assert api.deleted == [] and by_node(api, "j") == placed
    submit(cache, api, "k")  # a new job finds no room: the free accelerators are all on the avoided node
    clock.t += 1
    after.reconcile_all()
    assert by_node(api, "k") == {}
