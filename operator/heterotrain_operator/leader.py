"""Leader election over a ``coordination.k8s.io/v1`` Lease, so two replicas never both act.

The rules are client-go's (``tools/leaderelection``): a candidate creates the
Lease if there is none; the holder renews it every ``retry_period``; another
candidate takes it over only when the record has not changed for
``lease_duration`` *as measured by its own clock since it last saw it change*
(never by comparing its clock with the holder's timestamps); every write
carries the resourceVersion it read, so of two candidates racing for one
expired Lease exactly one wins.  The holder counts itself leader only until
``renew_deadline`` (< ``lease_duration``) after its last successful renewal,
so it stops acting before anyone else may start.  A holder that stops
gracefully releases the Lease (empty holder), and the standby takes it at once.

:class:`Candidate` is the pure decision logic (the clock is passed in);
:class:`Elector` is the thin loop that reads and writes the Lease through
:mod:`heterotrain_operator.kube`, in a thread of its own so that a long
reconcile pass never delays a renewal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from heterotrain_contract import truthy

from .kube import Conflict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderConfig:
    name: str = "heterotrain-operator"
    namespace: str = "default"
    identity: str = ""
    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 1.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retryPeriod < renewDeadline < leaseDuration, got "
                f"{self.retry_period}, {self.renew_deadline}, {self.lease_duration}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LeaderConfig | None:
        """None unless HETEROTRAIN_LEADER_ELECT is true (the chart sets it; a local run has no peers)."""
        env = os.environ if env is None else env
        if not truthy(env.get("HETEROTRAIN_LEADER_ELECT")):
            return None
        pod = env.get("HETEROTRAIN_POD_NAME") or socket.gethostname()
        return cls(
            name=env.get("HETEROTRAIN_LEADER_ELECTION_ID", cls.name),
            namespace=env.get("HETEROTRAIN_LEADER_ELECTION_NAMESPACE")
            or env.get("HETEROTRAIN_POD_NAMESPACE")
            or cls.namespace,
            identity=f"{pod}_{uuid.uuid4().hex[:8]}",
            lease_duration=float(env.get("HETEROTRAIN_LEASE_DURATION_SECONDS", cls.lease_duration)),
            renew_deadline=float(env.get("HETEROTRAIN_RENEW_DEADLINE_SECONDS", cls.renew_deadline)),
            retry_period=float(env.get("HETEROTRAIN_RETRY_PERIOD_SECONDS", cls.retry_period)),
        )


@dataclass(frozen=True)
class Record:
    """The spec of a Lease (what the candidates compare)."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_seconds,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time:
            out["acquireTime"] = self.acquire_time
        if self.renew_time:
            out["renewTime"] = self.renew_time
        return out


def micro_time(wall: float) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, UTC."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Action:
    """What to write: ``create`` a Lease, ``update`` it (with the resourceVersion read), or nothing."""

    kind: Literal["create", "update", "none"]
    record: Record | None = None


class Candidate:
    """One replica's view of the election: pure, every time is passed in (``now``: a monotonic clock)."""

    def __init__(self, cfg: LeaderConfig) -> None:
        self.cfg = cfg
        self.observed: Record | None = None
        self.observed_at = 0.0  # when (our clock) the record was last seen to change
        self.renewed_at: float | None = None  # when we last wrote the record as its holder

    def decide(self, current: Record | None, now: float, wall: float) -> Action:
        me = self.cfg.identity
        if current is None:
            return Action("create", self._mine(None, wall))
        if current != self.observed:
            self.observed, self.observed_at = current, now
        if current.holder and current.holder != me and now < self.observed_at + self.cfg.lease_duration:
            self.renewed_at = None  # held by another, and alive
            return Action("none")
        return Action("update", self._mine(current, wall))

    def _mine(self, current: Record | None, wall: float) -> Record:
        t = micro_time(wall)
        base = current or Record()
        if base.holder == self.cfg.identity:
            return replace(base, renew_time=t, duration_seconds=int(self.cfg.lease_duration))
        return Record(
            holder=self.cfg.identity,
            duration_seconds=int(self.cfg.lease_duration),
            acquire_time=t,
            renew_time=t,
            transitions=base.transitions + (1 if current is not None else 0),
        )

    def written(self, record: Record, now: float) -> None:
        """The write of ``record`` succeeded (at ``now``)."""
        self.observed, self.observed_at = record, now
        self.renewed_at = now if record.holder == self.cfg.identity else None

    def lost_race(self) -> None:
        """The write was refused (someone wrote in between): not leader until the next read says so."""
        self.renewed_at = None

    def is_leader(self, now: float) -> bool:
        return self.renewed_at is not None and now < self.renewed_at + self.cfg.renew_deadline

    def release(self, wall: float) -> Record | None:
        """The record that hands the Lease over at once (None if we do not hold it)."""
        if self.observed is None or self.observed.holder != self.cfg.identity:
            return None
        self.renewed_at = None
        return replace(self.observed, holder="", duration_seconds=1, renew_time=micro_time(wall))


class LeaseStore(Protocol):
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]: ...

    def update_lease(
        self, namespace: str, name: str, resource_version: str, spec: Mapping[str, Any]
    ) -> dict[str, Any]: ...


class Elector:
    """Runs a :class:`Candidate` against the Lease every ``retry_period``, in its own thread."""

    def __init__(
        self,
        store: LeaseStore,
        cfg: LeaderConfig,
        *,
        on_change: Callable[[bool], None] = lambda _: None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.candidate = Candidate(cfg)
        self.on_change = on_change
        self.monotonic = monotonic
        self.wall = wall
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False
        self._version = ""

    def is_leader(self) -> bool:
        return self.candidate.is_leader(self.monotonic())

    def step(self) -> None:
        """One read-decide-write round; API errors leave us standing by until the next round."""
        try:
            lease = self.store.get_lease(self.cfg.namespace, self.cfg.name)
            self._version = str((lease or {}).get("metadata", {}).get("resourceVersion") or "")
            action = self.candidate.decide(
                Record.from_lease(lease) if lease else None, self.monotonic(), self.wall()
            )
            if action.kind != "none":
                assert action.record is not None
                self._write(action.kind, action.record)
        except Conflict:  # the Lease changed between our read and our write
            self.candidate.lost_race()
        except Exception as e:  # the API server is away: keep trying; leadership lapses by itself
            log.warning("leader election: %s", e)
        self._notify()

    def _write(self, kind: str, record: Record) -> None:
        ns, name = self.cfg.namespace, self.cfg.name
        if kind == "create":
            lease = self.store.create_lease(ns, name, record.spec())
        else:
            lease = self.store.update_lease(ns, name, self._version, record.spec())
        self._version = str(lease.get("metadata", {}).get("resourceVersion") or "")
        self.candidate.written(record, self.monotonic())

    def _notify(self) -> None:
        leading = self.is_leader()
        if leading != self._leading:
            self._leading = leading
            log.warning(
                "%s leadership of lease %s/%s as %s",
                "acquired" if leading else "lost",
                self.cfg.namespace,
                self.cfg.name,
                self.cfg.identity,
            )
            self.on_change(leading)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.cfg.retry_period)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with ``release``, hand the Lease over so a standby need not wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.retry_period + 5)
        record = self.candidate.release(self.wall()) if release else None
        if record is not None:
            try:
                self.store.update_lease(self.cfg.namespace, self.cfg.name, self._version, record.spec())
                log.warning("released lease %s/%s", self.cfg.namespace, self.cfg.name)
            except Exception as e:
                log.warning("could not release lease %s/%s: %s", self.cfg.namespace, self.cfg.name, e)
        self._notify()
