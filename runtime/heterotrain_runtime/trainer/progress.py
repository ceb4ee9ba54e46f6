"""Every rank's progress and liveness summarised by rank 0 and written into the job's status.

Rank 0 listens for the beats of :mod:`.liveness` on its member address and the membership's port (UDP),
answers each with the name of the *backup* reporter (the lowest rank on another node, else rank 1), and
writes ``status.progress`` (see :func:`summarize`) under its own field manager: every
``REPORT_SECONDS``, and at once (at most once a second) when a rank goes stale or a process restart
appears.  One writer per job, whatever the world size: the API sees at most one write a second per job,
usually one every five.

A rank is *stale* when rank 0 has had no beat from it for the silence timeout (a stopped process, a lost
node, a partition; a member never heard from gets a start-up grace), or when it is *stuck*: it stays in
its step (or, far longer, in the user's code between steps) while the others have waited at the
rendezvous for longer than the heartbeat timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heterotrain_contract import Membership, Process

from .liveness import (
    FORMING,
    MAX_DATAGRAM,
    OUTSIDE,
    STEP,
    Beat,
    LatestMembership,
    backup_of,
    rank0_address,
)

log = logging.getLogger("heterotrain.sdk")

REPORT_SECONDS = 5.0
MIN_REPORT_GAP = 1.0
LIST_LIMIT = 32  # stale ranks and restarted processes listed in one report (the API type's limit)

Sink = Callable[[dict[str, Any]], None]  # writes one progress record (the status.progress object)


@dataclass(frozen=True)
class Limits:
    silence: float  # seconds without a beat: Silent
    heartbeat: float  # the others waited this long at the rendezvous: a rank in its step is Stuck
    outside: float  # ... or in the user's code between steps for this long
    startup: float  # a member never heard from: Silent after this long


@dataclass(frozen=True)
class Seen:
    beat: Beat
    age: float  # seconds since rank 0 received it


def _stale(
    world: Sequence[Process],
    seen: Mapping[str, Seen],
    waiting: Mapping[str, float],
    lim: Limits,
    trained: float | None = None,
) -> list[dict[str, Any]]:
    """Ranks that are silent or stuck, in rank order (each with its pod: the operator acts on pods).

    A rank never heard of has the start-up grace until the world commits a step: it took part in that
    step, so from then on its silence counts as any rank's (``trained``: seconds since that commit; it may
    have stopped before its first beat reached rank 0)."""
    out: list[dict[str, Any]] = []
    forming = [s.beat.since for s in seen.values() if s.beat.phase == FORMING and s.age <= lim.silence]
    for p in world:
        s = seen.get(p.name)
        if s is None:
            if trained is not None and trained > lim.silence:
                out.append(_entry(p, "Silent", trained))
            elif waiting.get(p.name, 0.0) > lim.startup:
                out.append(_entry(p, "Silent", waiting[p.name]))
            continue
        if s.age > lim.silence:
            out.append(_entry(p, "Silent", s.age))
            continue
        b = s.beat
        waited = [f for f in forming if f > lim.heartbeat and b.since > f]  # they waited for it all along
        bound = lim.heartbeat if b.phase == STEP else lim.outside if b.phase == OUTSIDE else math.inf
        if waited and b.since > bound:
            out.append(_entry(p, "Stuck", b.since))
    return out


def _entry(p: Process, reason: str, seconds: float) -> dict[str, Any]:
    return {"rank": p.rank, "pod": p.pod, "reason": reason, "seconds": round(seconds, 1)}


def _pools(world: Sequence[Process], seen: Mapping[str, Seen], global_batch: int) -> list[dict[str, Any]]:
    pools: dict[str, dict[str, Any]] = {}
    for proc in world:
        p = pools.setdefault(
            proc.type, {"type": proc.type, "ranks": 0, "step": None, "samplesPerSecond": 0.0, "batch": 0}
        )
        p["ranks"] += 1
        s = seen.get(proc.name)
        if s is None:
            continue
        b = s.beat
        p["step"] = b.step if p["step"] is None else min(p["step"], b.step)
        p["samplesPerSecond"] += b.sps
        p["batch"] += b.batch
        if b.rate > 0 and ("slowest" not in p or b.rate < p["slowest"]["samplesPerSecond"]):
            p["slowest"] = {"rank": proc.rank, "pod": proc.pod, "samplesPerSecond": round(b.rate, 1)}
    out = []
    for p in pools.values():
        batch = p.pop("batch")
        p["step"] = p["step"] or 0
        p["samplesPerSecond"] = round(p["samplesPerSecond"], 1)
        p["weight"] = round(min(1.0, batch / global_batch), 4) if global_batch else 0.0
        out.append(p)
    return out


def _restarts(world: Sequence[Process], seen: Mapping[str, Seen]) -> list[dict[str, Any]]:
    """In-place restarts per pod: its launcher counts the pod's (a process started later sees a larger
    count: the largest one of the pod's processes reports is the pod's), with the last failure's code."""
    best: dict[str, Beat] = {}
    for p in world:
        s = seen.get(p.name)
        if s is None or s.beat.restarts <= 0:
            continue
        if p.pod not in best or s.beat.restarts > best[p.pod].restarts:
            best[p.pod] = s.beat
    return [
        {"pod": pod, "count": b.restarts, **({"exitCode": b.exit_code} if b.exit_code is not None else {})}
        for pod, b in best.items()
    ]


def summarize(
    membership: Membership,
    seen: Mapping[str, Seen],
    waiting: Mapping[str, float],
    me: Beat,
    lim: Limits,
    *,
    global_batch: int,
    total_steps: int | None,
    now: float,
    trained: float | None = None,
) -> dict[str, Any]:
    """The ``status.progress`` record rank 0 writes (pure; ``now`` is the wall clock; ``seen`` and
    ``waiting`` are keyed by process name; ``trained``: seconds since the world first committed a step in
    this epoch, None before)."""
    world = membership.processes
    rec: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "reporter": me.pod,
        "epoch": membership.epoch,
        "step": me.step,
        "samplesPerSecond": round(me.global_sps, 1),
        "pools": _pools(world, seen, global_batch),
        "staleRanks": _stale(world, seen, waiting, lim, trained)[:LIST_LIMIT],
        "processRestarts": _restarts(world, seen)[:LIST_LIMIT],
    }
    if total_steps:
        rec["totalSteps"] = total_steps
        if me.global_sps > 0 and global_batch > 0:
            rec["etaSeconds"] = int(max(0, total_steps - me.step) * global_batch / me.global_sps)
    return rec


def signals(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a report urgent when it changes: the stale ranks, the restart counts."""
    return (
        tuple(sorted((s["pod"], s["reason"]) for s in rec.get("staleRanks") or [])),
        tuple(sorted((r["pod"], r["count"]) for r in rec.get("processRestarts") or [])),
    )


class Writer:
    """Writes reports from a thread of its own (an API call may take seconds); the newest one wins."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        threading.Thread(target=self._run, name="heterotrain-progress-writer", daemon=True).start()

    def put(self, rec: dict[str, Any]) -> None:
        try:
            self._q.put_nowait(rec)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                self._q.get_nowait()  # an older report nobody wrote yet: the newest replaces it
            self._q.put_nowait(rec)

    def _run(self) -> None:
        while True:
            rec = self._q.get()
            try:
                self.sink(rec)
            except Exception as e:  # the job trains on whether or not the API answers
                log.warning("could not report progress: %s", e)


class Aggregator:
    """Rank 0's side: receives beats, acknowledges them, reports (a daemon thread in every process; it acts
    only while this process is rank 0 of the latest membership)."""

    def __init__(
        self,
        name: str,
        me: Callable[[], Beat],
        membership: LatestMembership,
        writer: Writer,
        lim: Limits,
        *,
        global_batch: int,
        total_steps: int | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name, self.me, self.membership, self.writer, self.lim = name, me, membership, writer, lim
        self.global_batch, self.total_steps = global_batch, total_steps
        self.clock, self.wall = clock, wall
        self._sock: socket.socket | None = None
        self._bound: tuple[str, int] | None = None
        self._beats: dict[str, tuple[Beat, float]] = {}
        self._expected: dict[str, float] = {}
        # (epoch, rank 0's step when it was first seen in that epoch, when the world first committed since)
        self._epoch_start: tuple[int, int, float | None] = (-1, 0, None)
        self._last_write = -math.inf
        self._last_signals: tuple[Any, ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heterotrain-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        next_eval = 0.0
        while not self._stop.is_set():
            try:
                self._receive(0.25)
                if self.clock() >= next_eval:
                    next_eval = self.clock() + 1.0
                    self.evaluate()
            except Exception as e:
                log.debug("progress: %s", e)
                self._stop.wait(0.5)

    def _listen(self, m: Membership | None) -> bool:
        """Hold the UDP port while rank 0 of ``m``; give it up otherwise."""
        addr = rank0_address(m) if m is not None and m.world and m.processes[0].name == self.name else None
        if addr != self._bound and self._sock is not None:
            self._sock.close()
            self._sock, self._bound = None, None
        if addr is not None and self._sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind(addr)
            except OSError as e:
                sock.close()
                log.debug("progress: cannot listen on %s: %s", addr, e)
                return False
            self._sock, self._bound = sock, addr
            self._beats.clear()
            self._expected.clear()
        return self._sock is not None

    def _receive(self, timeout: float) -> None:
        if self._sock is None:
            self._stop.wait(timeout)
            return
        ready, _, _ = select.select([self._sock], [], [], timeout)
        while ready:
            try:
                data, peer = self._sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            beat = Beat.decode(data)
            if beat is not None:
                self._beats[beat.name] = (beat, self.clock())
                self._sock.sendto(self._ack(), peer)
            ready, _, _ = select.select([self._sock], [], [], 0)

    def _ack(self) -> bytes:
        m = self.membership.get()
        if m is None:
            return b"{}"
        nodes = {name: b.node for name, (b, _) in self._beats.items()}
        return json.dumps({"epoch": m.epoch, "backup": backup_of(m, nodes)}).encode()

    def _trained(self, epoch: int, me: Beat, now: float) -> float | None:
        """Seconds since the world first committed a step in ``epoch`` (rank 0's step moved on in it)."""
        start_epoch, start_step, committed = self._epoch_start
        if start_epoch != epoch:
            self._epoch_start = (epoch, me.step, None)
            return None
        if committed is None and me.epoch == epoch and me.step > start_step:
            self._epoch_start = (epoch, start_step, now)
            committed = now
        return None if committed is None else now - committed

    def evaluate(self) -> dict[str, Any] | None:
        """One report, written when due (returns it)."""
        m = self.membership.get()
        if not self._listen(m):
            return None
        assert m is not None
        now = self.clock()
        names = {p.name for p in m.processes}
        for name in names - set(self._expected):
            # A member from now on: what was heard of a process of that name before is of another one.
            self._expected[name] = now
            self._beats.pop(name, None)
        for name in set(self._expected) - names:
            del self._expected[name]
            self._beats.pop(name, None)
        me = self.me()
        self._beats[self.name] = (me, now)
        seen = {name: Seen(b, now - t) for name, (b, t) in self._beats.items() if name in names}
        waiting = {name: now - t for name, t in self._expected.items()}
        rec = summarize(
            m,
            seen,
            waiting,
            me,
            self.lim,
            global_batch=self.global_batch,
            total_steps=self.total_steps,
            now=self.wall(),
            trained=self._trained(m.epoch, me, now),
        )
        sig = signals(rec)
        urgent = sig != self._last_signals and now - self._last_write >= MIN_REPORT_GAP
        if urgent or now - self._last_write >= REPORT_SECONDS:
            self._last_write, self._last_signals = now, sig
            self.writer.put(rec)
        return rec


def rank0_silent_report(membership: Membership, me: Beat, silent: float, *, now: float) -> dict[str, Any]:
    """The backup's report: rank 0 silent (the backup knows no more of the others)."""
    rank0 = membership.processes[0]
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "reporter": me.pod,
        "epoch": membership.epoch,
        "step": me.step,
        "staleRanks": [{"rank": 0, "pod": rank0.pod, "reason": "Silent", "seconds": round(silent, 1)}],
    }
