"""Every rank's liveness, told to rank 0 over UDP: the heartbeat side.

The training thread records where it stands (:class:`Liveness`: its phase — starting, forming a world, in
a step, between steps, checkpointing — since when, and its last committed step and speed).  A daemon
thread (:class:`Heartbeat`) sends that, once a second, as one small datagram to the rank 0 of the latest
membership, at its address and the membership's port (UDP: a stopped or dead rank 0 can never block the
sender, where a TCP store client would wait for ever).  Rank 0 answers every beat with an
acknowledgement that names the *backup* reporter (see :mod:`.progress`); when rank 0 stops answering for
the silence timeout (its process stopped, its node gone: a refused port means it is restarting and
does not count), the backup reports it silent itself.

The beat of a stopped process stops with it; a process stuck in its step keeps beating but stays in
phase "step" while the others wait at the rendezvous.  Rank 0 sees both (:func:`.progress.summarize`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from heterotrain_contract import Membership
from heterotrain_runtime.membership import MembershipSource

log = logging.getLogger("heterotrain.sdk")

STARTING = "starting"  # the trainer exists; it has not formed a world yet
FORMING = "forming"  # waiting for a membership, at the rendezvous, restoring state
STEP = "step"  # inside train_step: computing, in a collective
OUTSIDE = "outside"  # between two train_step calls (the user's code)
CHECKPOINT = "checkpoint"  # a synchronous checkpoint

BEAT_SECONDS = 1.0
MAX_DATAGRAM = 4096


def silence_timeout(heartbeat: float) -> float:
    """How long a rank may be silent before it is reported: the heartbeat timeout less the time the report
    takes to reach the operator (a beat, a report, a pass), so that the operator knows within the timeout."""
    return max(heartbeat / 2, heartbeat - 3 * BEAT_SECONDS)


@dataclass(frozen=True)
class Beat:
    """What one rank (a training process) tells rank 0 each second."""

    name: str  # the process's name in the world (its pod's, with its local rank when the pod runs several)
    pod: str
    node: str
    type: str
    epoch: int  # of its world, or the epoch it is forming
    rank: int
    phase: str
    since: float  # seconds in this phase
    step: int
    rate: float  # samples/s its compute takes (the throughput tracker's estimate; 0 until measured)
    sps: float  # samples/s it trains over a step's wall time (local batch / step time)
    batch: int  # its share of the global batch
    global_sps: float  # samples/s of the whole world over a step (as this rank saw it)
    restarts: int  # in-place restarts of this pod's process (by the launcher)
    exit_code: int | None  # exit code of the process that failed last, if any

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Beat | None:
        try:
            raw = json.loads(data.decode())
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return None


class Liveness:
    """Where the training thread stands (thread-safe; the training thread writes, the heartbeat reads)."""

    def __init__(
        self,
        name: str,
        pod: str,
        node: str,
        type_: str,
        restarts: int,
        exit_code: int | None,
        clock: Callable[[], float],
        local_rank: int = 0,
    ) -> None:
        self.name, self.pod, self.node, self.type, self.local_rank = name, pod, node, type_, local_rank
        self.restarts, self.exit_code = restarts, exit_code
        self.clock = clock
        self._lock = threading.Lock()
        self._phase, self._since, self._epoch, self._rank = STARTING, clock(), 0, 0
        self._step, self._rate, self._sps, self._batch, self._global_sps = 0, 0.0, 0.0, 0, 0.0

    def enter(self, phase: str, epoch: int | None = None, rank: int | None = None) -> None:
        with self._lock:
            if phase != self._phase:
                self._phase, self._since = phase, self.clock()
            if epoch is not None:
                self._epoch = epoch
            if rank is not None:
                self._rank = rank

    def committed(
        self, step: int, rate: float, local_batch: int, step_seconds: float, global_sps: float
    ) -> None:
        with self._lock:
            self._step, self._rate, self._batch = step, rate, local_batch
            self._sps = local_batch / step_seconds if step_seconds > 0 else 0.0
            # a short average: one slow step (a checkpoint, a re-formation) does not swing the report
            self._global_sps = (
                global_sps if self._global_sps <= 0 else 0.7 * self._global_sps + 0.3 * global_sps
            )

    @property
    def phase(self) -> str:
        with self._lock:
            return self._phase

    @property
    def step(self) -> int:
        with self._lock:
            return self._step

    def beat(self) -> Beat:
        with self._lock:
            return Beat(
                name=self.name,
                pod=self.pod,
                node=self.node,
                type=self.type,
                epoch=self._epoch,
                rank=self._rank,
                phase=self._phase,
                since=round(self.clock() - self._since, 3),
                step=self._step,
                rate=round(self._rate, 3),
                sps=round(self._sps, 3),
                batch=self._batch,
                global_sps=round(self._global_sps, 3),
                restarts=self.restarts,
                exit_code=self.exit_code,
            )


class LatestMembership:
    """The newest membership from a source, read at most every ``poll`` seconds (for the health threads)."""

    def __init__(self, source: MembershipSource, poll: float) -> None:
        self.source, self.poll = source, poll
        self._latest: Membership | None = None
        self._at = -poll

    def get(self) -> Membership | None:
        now = time.monotonic()
        if now - self._at >= self.poll:
            self._at = now
            try:
                m = self.source.read()
            except Exception as e:  # a hiccup of the source: keep the last one
                log.debug("membership read failed: %s", e)
                m = None
            if m is not None and (self._latest is None or m.epoch >= self._latest.epoch):
                self._latest = m
        return self._latest


def backup_of(membership: Membership, nodes: Mapping[str, str]) -> str | None:
    """The process that reports a silent rank 0: the lowest rank on another node than rank 0's, else the
    lowest rank of another pod, else rank 1 (``nodes``: process name -> node, as the beats say)."""
    procs = membership.processes
    if len(procs) < 2:
        return None
    first = procs[0]
    node0 = nodes.get(first.name, "")
    for p in procs[1:]:
        node = nodes.get(p.name, "")
        if node and node0 and node != node0:
            return p.name
    return next((p.name for p in procs[1:] if p.pod != first.pod), procs[1].name)


BackupReport = Callable[[Membership, float], None]  # (membership, seconds rank 0 was silent)


def rank0_address(m: Membership) -> tuple[str, int]:
    """Where rank 0 hears the beats: its pod's address and the membership's port (UDP)."""
    return (m.processes[0].address, m.master_port)


class Heartbeat:
    """Sends this rank's beat to rank 0 every second; as the backup, reports a silent rank 0."""

    def __init__(
        self,
        liveness: Liveness,
        membership: LatestMembership,
        silence: float,
        on_rank0_silent: BackupReport | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.liveness, self.membership, self.silence = liveness, membership, silence
        self.on_rank0_silent, self.clock = on_rank0_silent, clock
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._target: tuple[str, int] | None = None
        self._answered = clock()  # last acknowledgement from rank 0 (or last change of rank 0)
        self._backup: tuple[int, str] | None = None  # (epoch, pod) rank 0 named as backup
        self._reported = 0.0
        self._thread = threading.Thread(target=self._run, name="heterotrain-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            try:
                self.once()
            except Exception as e:  # never let the heartbeat die of one bad round
                log.debug("heartbeat: %s", e)

    def once(self) -> None:
        m = self.membership.get()
        me = m.process(self.liveness.pod, self.liveness.local_rank) if m is not None else None
        if m is None or me is None or not m.world:
            self._close()
            return
        target = rank0_address(m)
        if target != self._target:
            self._close()
            self._target, self._answered = target, self.clock()
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._sock.connect(target)  # connected: a closed port comes back as ECONNREFUSED
        try:
            self._sock.send(self.liveness.beat().encode())
        except (ConnectionRefusedError, BlockingIOError):
            self._answered = self.clock()  # nobody listens (rank 0 restarting, or not yet up): not silent
        except OSError as e:
            log.debug("heartbeat to %s: %s", target, e)
        self._drain()
        self._check_rank0(m, me.rank)

    def _drain(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except ConnectionRefusedError:
                self._answered = self.clock()
                return
            except (BlockingIOError, OSError):
                return
            with contextlib.suppress(ValueError, KeyError, TypeError):
                ack: dict[str, Any] = json.loads(data.decode())
                self._answered = self.clock()
                if ack.get("backup"):
                    self._backup = (int(ack["epoch"]), str(ack["backup"]))

    def _check_rank0(self, m: Membership, my_rank: int) -> None:
        silent = self.clock() - self._answered
        if my_rank == 0 or silent <= self.silence or self.on_rank0_silent is None:
            return
        if not self._is_backup(m):
            return
        if self.clock() - self._reported >= 5.0:
            self._reported = self.clock()
            rank0 = m.processes[0].name
            log.warning("%s: rank 0 (%s) silent for %.0fs: reporting it", self.liveness.name, rank0, silent)
            self.on_rank0_silent(m, silent)

    def _is_backup(self, m: Membership) -> bool:
        """This process reports a silent rank 0 of ``m``: rank 0 named it the backup in this epoch; or rank 0
        named none in this epoch (it fell silent before the epoch began: a world re-formed around a stopped
        rank 0) and this process is the backup it named last, or the one the membership alone gives.  Two
        may report then; never none while either lives."""
        me = self.liveness.name
        if self._backup is not None and self._backup[0] == m.epoch:
            return self._backup[1] == me
        last = self._backup[1] if self._backup is not None else None
        members = {p.name for p in m.processes[1:]}
        return (last == me and me in members) or backup_of(m, {}) == me

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._target = None, None
