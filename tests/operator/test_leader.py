"""Leader election: the pure decisions of a candidate, and two electors sharing one Lease.

The Lease store here is an in-memory stand-in with the API server's optimistic
concurrency (a write must carry the resourceVersion it read, else 409); the
real Lease and two operator replicas are exercised in e2e/tests/test_helm.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from heterotrain_operator.leader import Candidate, Conflict, Elector, LeaderConfig, Record, micro_time


def cfg(identity: str) -> LeaderConfig:
    return LeaderConfig(identity=identity, lease_duration=10, renew_deadline=7, retry_period=1)


def test_config_refuses_inconsistent_periods():
    with pytest.raises(ValueError, match="retryPeriod < renewDeadline < leaseDuration"):
        LeaderConfig(identity="a", lease_duration=5, renew_deadline=7, retry_period=1)
    with pytest.raises(ValueError, match="identity"):
        LeaderConfig(identity="")


def test_from_env_is_off_unless_asked_and_names_the_pod():
    assert LeaderConfig.from_env({}) is None
    c = LeaderConfig.from_env(
        {
            "HETEROTRAIN_LEADER_ELECT": "true",
            "HETEROTRAIN_POD_NAME": "op-7d9-abc",
            "HETEROTRAIN_POD_NAMESPACE": "heterotrain-system",
            "HETEROTRAIN_LEADER_ELECTION_ID": "ht-operator",
        }
    )
    assert c is not None
    assert (c.name, c.namespace) == ("ht-operator", "heterotrain-system")
    assert c.identity.startswith("op-7d9-abc_")  # a restarted process is a new candidate


def test_first_candidate_creates_the_lease():
    a = Candidate(cfg("a"))
    act = a.decide(None, now=0.0, wall=100.0)
    assert act.kind == "create" and act.record is not None
    assert act.record.holder == "a" and act.record.transitions == 0
    assert act.record.acquire_time == act.record.renew_time == micro_time(100.0)
    assert not a.is_leader(0.0)  # not before the write succeeded
    a.written(act.record, 0.0)
    assert a.is_leader(0.5)


def test_holder_renews_keeping_acquire_time_and_transitions():
    a = Candidate(cfg("a"))
    held = Record("a", 10, micro_time(50.0), micro_time(50.0), 3)
    a.written(held, 0.0)
    act = a.decide(held, now=1.0, wall=51.0)
    assert act.kind == "update" and act.record is not None
    assert act.record.acquire_time == micro_time(50.0) and act.record.transitions == 3
    assert act.record.renew_time == micro_time(51.0)


def test_leader_stops_leading_at_the_renew_deadline_without_a_renewal():
    a = Candidate(cfg("a"))
    a.written(Record("a", 10, "t", "t", 0), 0.0)
    assert a.is_leader(6.9)
    assert not a.is_leader(7.0)  # before anyone may take over (lease duration 10)


def test_standby_waits_a_full_lease_duration_of_its_own_clock_then_takes_over():
    b = Candidate(cfg("b"))
    held = Record("a", 10, "t0", "t0", 0)
    # B's clock says anything: only the time since B saw the record change counts.
    assert b.decide(held, now=1000.0, wall=0.0).kind == "none"
    assert b.decide(held, now=1009.9, wall=0.0).kind == "none"
    act = b.decide(held, now=1010.0, wall=7.0)
    assert act.kind == "update" and act.record is not None
    assert act.record.holder == "b" and act.record.transitions == 1
    assert act.record.acquire_time == micro_time(7.0)


def test_a_renewing_holder_is_never_taken_over():
    b = Candidate(cfg("b"))
    for i in range(50):
        renewed = Record("a", 10, "t0", f"t{i}", 0)
        assert b.decide(renewed, now=i * 1.0, wall=0.0).kind == "none"


def test_a_released_lease_is_taken_at_once():
    b = Candidate(cfg("b"))
    assert b.decide(Record("a", 10, "t0", "t0", 2), now=0.0, wall=0.0).kind == "none"
    act = b.decide(Record("", 1, "t0", "t1", 2), now=0.5, wall=0.0)
    assert act.kind == "update" and act.record is not None and act.record.holder == "b"
    assert act.record.transitions == 3


def test_lost_race_and_release():
    a = Candidate(cfg("a"))
    rec = Record("a", 10, "t", "t", 0)
    a.written(rec, 0.0)
    a.lost_race()
    assert not a.is_leader(0.1)
    a.written(rec, 1.0)
    released = a.release(wall=2.0)
    assert released is not None and released.holder == "" and released.duration_seconds == 1
    assert not a.is_leader(1.1)
    assert Candidate(cfg("x")).release(wall=0.0) is None  # nothing to release when not holding


class LeaseTable:
    """In-memory Leases with resourceVersion checks, as the API server does them."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise OSError("connection refused")

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        lease = self.leases.get((namespace, name))
        return None if lease is None else {**lease, "spec": dict(lease["spec"])}

    def _put(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        self.version += 1
        lease = {"metadata": {"name": name, "resourceVersion": str(self.version)}, "spec": dict(spec)}
        self.leases[(namespace, name)] = lease
        return lease

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        if (namespace, name) in self.leases:
            raise Conflict("exists")
        return self._put(namespace, name, spec)

    def update_lease(
        self, namespace: str, name: str, resource_version: str, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        self._check()
        if self.leases[(namespace, name)]["metadata"]["resourceVersion"] != resource_version:
            raise Conflict("stale")
        return self._put(namespace, name, spec)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def pair(table: LeaseTable, clock: Clock) -> tuple[Elector, Elector, list[tuple[str, bool]]]:
    changes: list[tuple[str, bool]] = []
    a = Elector(table, cfg("a"), monotonic=clock, wall=clock, on_change=lambda x: changes.append(("a", x)))
    b = Elector(table, cfg("b"), monotonic=clock, wall=clock, on_change=lambda x: changes.append(("b", x)))
    return a, b, changes


def run_until(clock: Clock, electors: list[Elector], until: float) -> None:
    """Step every elector once per retry period, checking that never two lead at once."""
    while clock.t < until:
        for e in electors:
            e.step()
            assert sum(x.is_leader() for x in electors) <= 1, f"two leaders at t={clock.t}"
        clock.t += 1.0


def test_two_electors_one_leader_and_takeover_after_a_crash():
    table, clock = LeaseTable(), Clock()
    a, b, changes = pair(table, clock)
    run_until(clock, [a, b], 30)
    assert a.is_leader() and not b.is_leader()
    assert changes == [("a", True)]
    crashed_at = clock.t  # a is SIGKILLed: it neither renews nor releases
    while not b.is_leader():
        run_until(clock, [b], clock.t + 1)
        assert not (b.is_leader() and a.is_leader()), "the crashed leader still counted itself leader"
    took = clock.t - crashed_at
    assert took <= 10 + 2, f"takeover after {took}s"  # lease duration + a retry period or two
    assert Record.from_lease(table.get_lease("default", "heterotrain-operator") or {}).transitions == 1


def test_graceful_stop_releases_and_the_standby_takes_over_at_the_next_step():
    table, clock = LeaseTable(), Clock()
    a, b, _ = pair(table, clock)
    run_until(clock, [a, b], 5)
    assert a.is_leader()
    a.stop(release=True)
    assert not a.is_leader()
    b.step()
    assert b.is_leader()


def test_api_server_away_leadership_lapses_then_resumes():
    table, clock = LeaseTable(), Clock()
    a, b, _ = pair(table, clock)
    run_until(clock, [a, b], 3)
    table.down = True
    run_until(clock, [a, b], 12)
    assert not a.is_leader() and not b.is_leader()  # nobody acts on a view it cannot renew
    table.down = False
    run_until(clock, [a, b], 14)
    assert a.is_leader() and not b.is_leader()  # a still holds the record and renews it first
