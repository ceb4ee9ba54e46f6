"""World formation: which world to join, its rendezvous store, its process groups and topology.

Elastic mode reads the membership (published by the operator, mirrored by the launcher), waits
until this process (its pod, and its local rank among the pod's slots) is in a new enough epoch,
joins that epoch's rendezvous on the store rank 0 hosts, initialises the default group and gathers every rank's info; static mode (torchrun & co)
takes the world from the environment; a single process forms a world of one.  What a formed world
does with the gathered infos (restore the state, split the batch) is the caller's ``setup``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from heterotrain_contract import Member, Membership, Process
from heterotrain_runtime import rendezvous
from heterotrain_runtime.collectives import Topology, build_topology
from heterotrain_runtime.membership import MembershipSource

from .settings import TrainerSettings

log = logging.getLogger("heterotrain.sdk")

Info = Mapping[str, Any]  # what each rank tells the others when a world forms (see ElasticTrainer._info)


@dataclass(frozen=True)
class FormedWorld:
    membership: Membership
    rank: int
    topo: Topology | None  # None for a single process
    checkpoint_group: Any  # gloo group over the world for checkpoint collectives (None when single)
    infos: tuple[Info, ...]  # every rank's info, in rank order (empty when single)
    formation: tuple[str, float]  # (id, time) of this formation, the same on every rank

    @property
    def world_size(self) -> int:
        return self.membership.world_size


class WorldFormer:
    """Forms worlds for one process; ``teardown`` undoes a world (the trainer's, checkpoints included)."""

    def __init__(
        self,
        settings: TrainerSettings,
        source: MembershipSource | None,
        *,
        stop_requested: Callable[[], bool],
        exit_if_stopped: Callable[[], None],
        teardown: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.source = source
        self.stop_requested = stop_requested
        self.exit_if_stopped = exit_if_stopped
        self.teardown = teardown
        self._latest: Membership | None = None
        self._last_poll = 0.0
        self._server: Any = None  # the store this process hosts as rank 0
        self._server_key: tuple[str, int] | None = None

    # --- membership -------------------------------------------------------------------
    def read_membership(self, force: bool = False) -> Membership | None:
        """The newest membership seen (polled at most every ``membership_poll`` seconds)."""
        if self.source is None:
            return None
        now = time.monotonic()
        if force or now - self._last_poll >= self.settings.membership_poll:
            self._last_poll = now
            try:
                m = self.source.read()
            except Exception as e:
                log.debug("membership read failed: %s", e)
                m = None
            if m is not None and (self._latest is None or m.epoch >= self._latest.epoch):
                self._latest = m
        return self._latest

    def newer_epoch(self, epoch: int) -> bool:
        m = self.read_membership()
        return m is not None and m.epoch > epoch

    def drops_members(self, current: Membership) -> bool:
        """The newest membership read is a newer epoch without some process of ``current``."""
        m = self.read_membership()
        if m is None or m.epoch <= current.epoch:
            return False
        names = {p.name for p in m.processes}
        return any(p.name not in names for p in current.processes)

    def _wait_membership(self, min_epoch: int) -> tuple[Membership, Process]:
        """The latest membership with epoch >= min_epoch that has this process (parks otherwise)."""
        parked = False
        s = self.settings
        while True:
            self.exit_if_stopped()
            m = self.read_membership(force=True)
            if m is not None and m.epoch >= min_epoch:
                me = m.process(s.pod, s.local_rank)
                if me is not None:
                    return m, me
                if not parked:
                    log.info("%s: not a member of epoch %d; waiting", s.name, m.epoch)
                    self._server, self._server_key = None, None  # a parked process hosts no store
                    parked = True
            time.sleep(self.settings.membership_poll)

    def _abort_for(self, epoch: int) -> Callable[[], bool]:
        def abort() -> bool:
            return self.stop_requested() or self.newer_epoch(epoch)

        return abort

    def _store_for(self, m: Membership, me: Process) -> Any:
        key = (m.master_addr, m.master_port)
        heartbeat = self.settings.heartbeat
        if me.rank == 0:
            if self._server is None or self._server_key != key:
                self._server = None
                self._server = rendezvous.make_store(key[0], key[1], True, min(10.0, heartbeat))
                self._server_key = key
            return self._server
        self._server, self._server_key = None, None  # no longer rank 0
        return rendezvous.connect_store(key[0], key[1], self._abort_for(m.epoch), timeout=heartbeat)

    # --- forming ----------------------------------------------------------------------
    def form_elastic(
        self, min_epoch: int, info: Callable[[], Info], setup: Callable[[FormedWorld], None]
    ) -> None:
        """Join the first world of epoch >= ``min_epoch`` that has this pod; retried until one forms."""
        backoff = 0.1
        heartbeat = self.settings.heartbeat
        while True:
            m, me = self._wait_membership(min_epoch)
            store = None
            rnd = -1
            try:
                store = self._store_for(m, me)
                abort = self._abort_for(m.epoch)
                rnd = rendezvous.join(store, m.epoch, me.rank, m.world_size, abort, commit_timeout=heartbeat)
                rendezvous.init_world(store, m.epoch, rnd, me.rank, m.world_size, heartbeat)
                infos = self._gather(info, m.world_size)
                for i, p in zip(infos, m.processes, strict=True):
                    if i["name"] != p.name:
                        raise RuntimeError(f"rank {p.rank} is {i['name']}, expected {p.name}")
                setup(self._build(m, me.rank, infos))
                return
            except rendezvous.Aborted:
                self.teardown()
                continue
            except (
                RuntimeError,
                TimeoutError,
            ) as e:  # store or collective failures (DistError is a RuntimeError)
                log.warning(
                    "%s: forming epoch %d failed: %s", self.settings.name, m.epoch, str(e).splitlines()[0]
                )
                self.teardown()
                if store is not None and rnd >= 0:
                    with contextlib.suppress(Exception):
                        rendezvous.bump_round(store, m.epoch, rnd)
                if me.rank == 0 and rnd < 0:
                    self._server, self._server_key = None, None
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def form_static(self, info: Callable[[], Info], setup: Callable[[FormedWorld], None]) -> None:
        """The world torchrun & co started (RANK, WORLD_SIZE); it never changes in-process."""
        s = self.settings
        rank, world = s.static_rank, s.static_world_size
        if not dist.is_initialized():
            dist.init_process_group(
                "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=s.heartbeat)
            )
        infos = self._gather(info, world)
        # every process is a member of its own (torchrun & co rank processes, not pods)
        members = tuple(
            Member(i["name"], r, i["type"], s.master_addr, i["weight"]) for r, i in enumerate(infos)
        )
        m = Membership(epoch=s.restart_count, world=members, master_port=s.master_port)
        setup(self._build(m, rank, infos))

    def form_single(self) -> FormedWorld:
        s = self.settings
        m = Membership(epoch=0, world=(Member(s.name, 0, s.accelerator, "127.0.0.1", 1.0),), master_port=0)
        return FormedWorld(m, 0, None, None, (), (uuid.uuid4().hex, time.time()))

    @staticmethod
    def _gather(info: Callable[[], Info], world_size: int) -> tuple[Info, ...]:
        infos: list[Any] = [None] * world_size
        dist.all_gather_object(infos, dict(info()))
        return tuple(infos)

    def _build(self, m: Membership, rank: int, infos: tuple[Info, ...]) -> FormedWorld:
        """The process groups of a world: pools and leaders (topology), and the checkpoints' group."""
        topo = build_topology(
            rank,
            [i["type"] for i in infos],
            [i["backend"] for i in infos],
            timeout=timedelta(seconds=self.settings.heartbeat),
        )
        # a save's collectives wait for the slowest writer: bounded by the checkpoint timeout
        ckpt_group = dist.new_group(
            list(range(m.world_size)),
            backend="gloo",
            timeout=timedelta(seconds=self.settings.checkpoint_timeout),
        )
        return FormedWorld(m, rank, topo, ckpt_group, infos, (infos[0]["fid"], infos[0]["ftime"]))
