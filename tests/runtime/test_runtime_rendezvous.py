"""The round-based rendezvous on a real TCPStore (threads of one process)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import torch.distributed as dist
from rt_helpers import free_port, run_world

from heterotrain_runtime import rendezvous


def _stores(n: int) -> tuple[Any, list[Any]]:
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=10), wait_for_workers=False)  # type: ignore[attr-defined]
    clients = [dist.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=10)) for _ in range(n)]  # type: ignore[attr-defined]
    return server, clients


def _join_async(store: Any, rank: int, world: int, abort: Any, out: dict[int, Any]) -> threading.Thread:
    def run() -> None:
        try:
            out[rank] = rendezvous.join(store, 7, rank, world, abort, poll=0.005, commit_timeout=5)
        except rendezvous.Aborted:
            out[rank] = "aborted"

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_all_join_the_same_round() -> None:
    _server, clients = _stores(3)
    out: dict[int, Any] = {}
    threads = [_join_async(c, r, 3, lambda: False, out) for r, c in enumerate(clients)]
    for t in threads:
        t.join(10)
    assert out == {0: 0, 1: 0, 2: 0}


def test_a_rank_that_leaves_sends_the_others_to_the_next_round() -> None:
    _server, clients = _stores(4)
    out: dict[int, Any] = {}
    leave = threading.Event()
    t0 = _join_async(clients[0], 0, 3, lambda: False, out)
    t2 = _join_async(clients[2], 2, 3, leave.is_set, out)
    time.sleep(0.1)
    leave.set()  # rank 2 saw a newer epoch: it leaves round 0 after joining it
    t2.join(5)
    assert out.get(2) == "aborted"
    t1 = _join_async(clients[1], 1, 3, lambda: False, out)
    time.sleep(0.2)
    assert 0 not in out and 1 not in out  # nobody may form a round that rank 2 left
    t2b = _join_async(clients[3], 2, 3, lambda: False, out)  # rank 2 comes back
    for t in (t0, t1, t2b):
        t.join(10)
    assert out[0] == out[1] == out[2] == 1


def test_a_restarted_rank_bumps_a_stale_round() -> None:
    _server, clients = _stores(3)
    store = clients[0]
    # round 0 of epoch 7 already has rank 0 in it (an incarnation that died)
    assert store.add("ht/e7/r0/rank0", 1) == 1
    store.add("ht/e7/r0/joined", 1)
    out: dict[int, Any] = {}
    threads = [
        _join_async(clients[1], 0, 2, lambda: False, out),
        _join_async(clients[2], 1, 2, lambda: False, out),
    ]
    for t in threads:
        t.join(10)
    assert out[0] == out[1] == 1


@pytest.mark.parametrize("rounds", [3])
def test_bump_moves_the_round_once(rounds: int) -> None:
    _server, clients = _stores(1)
    s = clients[0]
    for r in range(rounds):
        for _ in range(3):  # many bumpers of the same round: one increment
            rendezvous.bump_round(s, 1, r)
        assert rendezvous.current_round(s, 1) == r + 1
    rendezvous.bump_round(s, 1, 0)  # a late bumper of an old round: no effect
    assert rendezvous.current_round(s, 1) == rounds


def test_connecting_to_a_dying_store_leaves_when_a_newer_epoch_comes() -> None:
    """The probe reaches a listener whose process is dying; the client must still see ``abort``.

    A killed rank 0's listening socket can outlive its collective sockets by a
    moment: the probe connects, then every connection is refused.  A plain
    TCPStore client retried there for its whole timeout, blind to the newer
    epoch (a CI run lost 10 s there, then the test its deadline).
    """
    import socket

    dying = socket.socket()
    dying.bind(("127.0.0.1", 0))
    dying.listen(16)  # accepts in the kernel, never answers, then goes away
    port = dying.getsockname()[1]
    closer = threading.Timer(0.3, dying.close)
    closer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(rendezvous.Aborted):
            rendezvous.connect_store(
                "127.0.0.1", port, abort=lambda: time.monotonic() - t0 > 1.0, timeout=60.0, attempt=0.5
            )
        assert time.monotonic() - t0 < 10.0  # left soon after abort(), long before the 60 s timeout
    finally:
        closer.join()
        dying.close()


def test_connect_store_waits_for_a_store_that_comes_up_late() -> None:
    port = free_port()
    server: list[Any] = []
    t = threading.Timer(0.5, lambda: server.append(rendezvous.make_store("127.0.0.1", port, True, 10.0)))
    t.start()
    try:
        client = rendezvous.connect_store("127.0.0.1", port, abort=lambda: False, timeout=20.0)
        client.set("k", "v")
        t.join()  # the server's constructor may return after the client already talked to it
        assert server[0].get("k") == b"v"
    finally:
        t.join()


def _world_after_a_failed_init(rank: int, world: int, port: int) -> float:
    import torch

    store = dist.TCPStore("127.0.0.1", port, None, rank == 0, timedelta(seconds=30), wait_for_workers=False)  # type: ignore[attr-defined]
    if rank == 1:
        # Round 0 never completes (its peer died between commit and init): this rank's init times out.
        try:
            rendezvous.init_world(store, 7, 0, rank, world, timeout=1)
        except (RuntimeError, TimeoutError):
            pass
        else:
            raise AssertionError("the init of an incomplete round succeeded")
    # Round 1: rank 0 is a fresh process (a replacement worker), rank 1 the survivor of round 0.
    rendezvous.init_world(store, 7, 1, rank, world, timeout=20)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return float(t.item())


def test_a_world_forms_after_a_failed_init_next_to_a_fresh_process() -> None:
    # torch names groups after a per-process counter that only destroying the default group resets; a
    # failed init counts a group and leaves none: unreset, the two ranks wait on different keys forever.
    assert run_world(_world_after_a_failed_init, 2, timeout=60) == [3.0, 3.0]
