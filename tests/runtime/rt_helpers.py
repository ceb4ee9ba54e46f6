"""Helpers of the runtime tests: free ports, forked gloo worlds, child-process cleanup."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train.py"
COMPUTE = REPO / "benchmarks" / "runtime" / "compute_train.py"  # a step of real compute, per-rank timing
STALL_TRAIN = Path(__file__).resolve().parent / "stall_train.py"  # the example, stopping in a checkpoint
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple[Any, ...], q: Any) -> None:
    try:
        import torch

        torch.set_num_threads(1)
        q.put((rank, "ok", fn(rank, world, port, *args)))
    except BaseException:
        q.put((rank, "error", traceback.format_exc()))


def warm_imports() -> None:
    """Import torch.distributed.checkpoint's lazily loaded parts once, before forking."""
    import torch.distributed.checkpoint
    import torch.distributed.checkpoint.default_planner
    import torch.distributed.checkpoint.filesystem
    import torch.distributed.checkpoint.state_dict
    import torch.distributed.checkpoint.state_dict_loader
    import torch.distributed.checkpoint.state_dict_saver  # noqa: F401


def run_world(
    fn: Callable[..., Any],
    world: int,
    *args: Any,
    timeout: float = 60.0,
    may_die: frozenset[int] = frozenset(),
) -> list[Any]:
    """Run ``fn(rank, world, port, *args)`` in ``world`` forked processes; their results by rank.

    Forking from the test process (torch already imported) costs milliseconds
    instead of seconds of imports per process.  Stragglers are killed at the
    deadline.  A rank of ``may_die`` whose process exits without a result has None.
    """
    warm_imports()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(fn, r, world, port, args, q), daemon=True) for r in range(world)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < world:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"world of {world} did not finish in {timeout}s; got {sorted(results)}")
            try:
                rank, status, value = q.get(timeout=min(left, 1.0))
            except Exception:
                for r in may_die - set(results):
                    if procs[r].exitcode is not None:  # gone without a result (and the queue was quiet)
                        results[r] = None
                continue
            if status == "ok":
                results[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world)]


def init_gloo(rank: int, world: int, port: int, timeout: float = 30.0) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(  # type: ignore[attr-defined]
        "127.0.0.1", port, world, rank == 0, timedelta(seconds=timeout)
    )
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout)
    )


class Procs:
    """Child processes started by a test; all killed (by process group) at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(5)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)
