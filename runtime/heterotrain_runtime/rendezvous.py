"""Rendezvous of one membership epoch on a TCPStore (used by the SDK).

The store lives in the epoch's rank-0 process at ``MASTER_ADDR:MASTER_PORT``
(the membership's address and port), keys under ``ht/e<epoch>/``.  Within an
epoch the world may have to re-form more than once (a process failed and its
launcher restarted it): every attempt is a *round*.  A process joins the
current round; the round is complete when all ``world_size`` ranks joined it,
each once, and then committed to it (see :func:`join`); they then initialise
the gloo world group under the round's prefix.
A process that finds its rank already taken in the round (it is a restarted
process) or whose collectives failed *bumps* the round: the first bumper of
round R moves the counter from R to R+1, exactly once.  A fresh store (the
rank-0 process restarted) starts at round 0 with no stale keys.

Waiting is interruptible: ``abort()`` is polled, so a process leaves as soon
as a newer epoch is published or it is asked to stop.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from torch.distributed import distributed_c10d


class Aborted(Exception):
    """The rendezvous was abandoned (newer epoch, stop request)."""


def _prefix(epoch: int) -> str:
    return f"ht/e{epoch}/"


def current_round(store: Any, epoch: int) -> int:
    return int(store.add(_prefix(epoch) + "round", 0))


def bump_round(store: Any, epoch: int, round_: int) -> None:
    p = _prefix(epoch)
    if int(store.add(f"{p}r{round_}/bump", 1)) == 1:
        store.add(p + "round", 1)


def join(
    store: Any,
    epoch: int,
    rank: int,
    world_size: int,
    abort: Callable[[], bool],
    poll: float = 0.02,
    commit_timeout: float = 60.0,
) -> int:
    """Join the current round of ``epoch``; returns the round once all ranks are committed to it.

    Two phases, so that nobody initialises a process group that a rank has
    walked away from: (1) wait until every rank *joined* the round — a rank
    may still leave (newer epoch, stop), and then it bumps the round so the
    others re-join the next one; (2) *commit* (no leaving any more) and wait
    until every rank committed.  A round that changes under a waiting rank is
    re-joined.
    """
    p = _prefix(epoch)
    while True:
        if abort():
            raise Aborted
        r = current_round(store, epoch)
        if int(store.add(f"{p}r{r}/rank{rank}", 1)) != 1:
            bump_round(store, epoch, r)  # our rank is taken in round r: a stale round
            continue
        store.add(f"{p}r{r}/joined", 1)
        moved = False
        while int(store.add(f"{p}r{r}/joined", 0)) < world_size:
            if current_round(store, epoch) != r:
                moved = True
                break
            if abort():
                bump_round(store, epoch, r)  # we counted in round r: make the others move on
                raise Aborted
            time.sleep(poll)
        if moved:
            continue
        store.add(f"{p}r{r}/committed", 1)
        deadline = time.monotonic() + commit_timeout
        while int(store.add(f"{p}r{r}/committed", 0)) < world_size:
            if current_round(store, epoch) != r:
                moved = True
                break
            if time.monotonic() > deadline:  # a rank died between joining and committing
                bump_round(store, epoch, r)
                moved = True
                break
            time.sleep(poll)
        if not moved:
            return r


def init_world(store: Any, epoch: int, round_: int, rank: int, world_size: int, timeout: float) -> None:
    """Initialise the default (gloo) process group of a complete round.

    Every rank starts the world's group names from 0: torch names a group by a process-wide counter
    that only the destruction of a formed world resets, so a process whose earlier attempt failed
    half-way (a timeout inside ``init_process_group``) would otherwise name its groups ahead of a fresh
    process's, and the two wait for each other's keys under different names for ever."""
    reset_group_names()
    dist.init_process_group(
        backend="gloo",
        store=dist.PrefixStore(  # type: ignore[attr-defined]
            f"{_prefix(epoch)}r{round_}/pg/", store
        ),
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout),
    )


def reset_group_names() -> None:
    """Name the next process group as a fresh process would (no world may exist in this process)."""
    if dist.is_initialized():
        raise RuntimeError("a world is formed in this process; tear it down first")
    distributed_c10d._world.group_count = 0


def wait_for_server(
    addr: str, port: int, abort: Callable[[], bool], timeout: float, poll: float = 0.05
) -> None:
    """Wait until something listens on ``addr:port`` (the rank-0 process hosts the store).

    A plain socket probe fails fast and lets ``abort`` be polled, where a
    TCPStore client would block in its own connect loop until its timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if abort():
            raise Aborted
        try:
            with socket.create_connection((addr, port), timeout=min(1.0, timeout)):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no rendezvous store at {addr}:{port} after {timeout:.0f}s") from None
            time.sleep(poll)


def connect_store(
    addr: str, port: int, abort: Callable[[], bool], timeout: float, attempt: float = 2.0, poll: float = 0.05
) -> Any:
    """A client of the store at ``addr:port``; gives up after ``timeout``, leaves as soon as ``abort()``.

    Each TCPStore client attempt is bounded by ``attempt`` seconds: a client
    retries a refused connection for its whole timeout without looking at
    ``abort``, and a probe can reach a store whose process is being killed (its
    listening socket outlives its collective sockets by a moment).  Ranks then
    sat blind to the next epoch for the whole timeout.  The client's timeout
    for store operations is ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        wait_for_server(addr, port, abort, max(0.0, deadline - time.monotonic()), poll)
        try:
            store = make_store(addr, port, False, max(0.1, min(attempt, deadline - time.monotonic())))
        except RuntimeError:  # DistNetworkError: refused, reset, or no answer in time
            if abort():
                raise Aborted from None
            if time.monotonic() > deadline:
                raise
            time.sleep(poll)
            continue
        store.set_timeout(timedelta(seconds=timeout))
        return store


def listen(addr: str, port: int) -> int:
    """A listening socket on ``addr:port`` (the rank-0 member's own address), its descriptor handed over."""
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock.detach()


def make_store(addr: str, port: int, is_master: bool, timeout: float) -> Any:
    """A client of the store at ``addr:port``, or (``is_master``) the store itself, listening on ``addr``
    only: a TCPStore server otherwise binds the port on every address, and two worlds' rank 0 that share
    a network (pods on the host network, test nodes whose pods are local processes) would clash."""
    fd = None
    if is_master:
        try:
            fd = listen(addr, port)
        except OSError as e:
            raise RuntimeError(f"cannot listen on {addr}:{port}: {e}") from e
    return dist.TCPStore(  # type: ignore[attr-defined]
        addr,
        port,
        None,
        is_master,
        timedelta(seconds=timeout),
        wait_for_workers=False,
        master_listen_fd=fd,  # the store owns it (and closes it) from now on
    )
