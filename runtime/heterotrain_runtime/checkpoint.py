"""Checkpoints with ``torch.distributed.checkpoint`` (DCP), crash-atomic.

Layout under the checkpoint root::

    step-00000120/            one directory per saved step
        __0_0.distcp ...      DCP shards (every rank writes its part)
        .metadata             DCP writes it last (tmp + rename)
        COMMITTED.json        ours, written after .metadata: step, world, data cursor,
                              rebalance state (tmp + fsync + os.replace + fsync dir)
    latest                    "step-00000120", replaced atomically after each commit

A checkpoint is *complete* iff its ``COMMITTED.json`` parses and names its step
and ``.metadata`` exists.  The loader scans the directories and returns the
newest complete one, whatever ``latest`` says (it may point at a directory that
a crash tore or a retention pass removed).  Retention keeps the last ``keep``
complete checkpoints, never the newest complete one, never counts incomplete
directories as complete; it uncommits (removes the marker, fsyncs) before it
deletes, so a crash half-way leaves an incomplete directory, never a torn
"complete" one.

Saving is synchronous or asynchronous: the asynchronous save copies the state
to host memory (reusing its staging buffers, pinned on CUDA), returns, and a
background thread writes the shards and commits.  At most one save is in
flight.  DCP replicated tensors are de-duplicated across ranks (each rank
writes a share), and loading re-plans for the current world, so a checkpoint
saved by 3 ranks loads on 2.

A peer lost during a save's collectives is noticed as in a step's: the ranks
that talk to it fail at once, and the others as soon as those free the group
(gloo closes a group's sockets only when it is freed).  So a failed save keeps
no reference to its group (its frames are cleared, also in the future that
reports an asynchronous failure), and a group that failed a collective is not
used again: the next save raises, and the trainer re-forms.

Torch is imported lazily: the pure helpers work without it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from heterotrain_runtime.trainer.failures import drop_frames

log = logging.getLogger("heterotrain.checkpoint")

STEP_PREFIX = "step-"
MARKER = "COMMITTED.json"
DCP_METADATA = ".metadata"
LATEST = "latest"
_STEP_RE = re.compile(r"^step-(\d+)$")

# Called with a phase name between the steps of a save (tests widen the crash
# windows with it); None in production.
crash_point_hook: Callable[[str], None] | None = None


def _crash_point(phase: str) -> None:
    if crash_point_hook is not None:
        crash_point_hook(phase)


# --- pure helpers -----------------------------------------------------------


def step_dirname(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def parse_step(name: str) -> int | None:
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: str
    complete: bool


def choose_deletions(entries: Iterable[tuple[int, bool]], keep: int) -> list[int]:
    """Steps to delete, given ``(step, complete)`` of every checkpoint directory.

    Keeps the newest ``keep`` complete checkpoints (at least one: the newest
    complete one is never deleted) and every incomplete directory newer than the
    newest complete one (it may be a save in progress); deletes older complete
    ones and incomplete ones older than the newest complete.
    """
    keep = max(1, keep)
    entries = sorted(set(entries))
    complete = [s for s, ok in entries if ok]
    if not complete:
        return []
    kept = set(complete[-keep:])
    newest = complete[-1]
    out = []
    for s, ok in entries:
        if (ok and s not in kept) or (not ok and s < newest):
            out.append(s)
    return out


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``path`` so that a crash leaves the old content or the new, never a mix."""
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def read_marker(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(path: str, step: int | None = None) -> bool:
    marker = read_marker(path)
    if marker is None or not os.path.exists(os.path.join(path, DCP_METADATA)):
        return False
    return step is None or marker.get("step") == step


def list_checkpoints(root: str) -> list[CheckpointInfo]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        step = parse_step(name)
        if step is None:
            continue
        path = os.path.join(root, name)
        if os.path.isdir(path):
            out.append(CheckpointInfo(step, path, is_complete(path, step)))
    return sorted(out, key=lambda c: c.step)


def newest_complete(root: str) -> CheckpointInfo | None:
    """The newest complete checkpoint; ``latest`` is not trusted."""
    for c in reversed(list_checkpoints(root)):
        if c.complete:
            return c
    return None


def read_latest(root: str) -> str | None:
    try:
        with open(os.path.join(root, LATEST), encoding="utf-8") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def commit(path: str, step: int, meta: Mapping[str, Any]) -> None:
    """Mark ``path`` complete (after DCP wrote ``.metadata``) and point ``latest`` at it."""
    if not os.path.exists(os.path.join(path, DCP_METADATA)):
        raise RuntimeError(f"{path}: DCP metadata missing, refusing to commit")
    record = {"step": step, "time": time.time(), **meta}
    _crash_point("before-marker")
    atomic_write(os.path.join(path, MARKER), json.dumps(record, sort_keys=True).encode("utf-8"))
    _crash_point("before-latest")
    root = os.path.dirname(os.path.abspath(path))
    atomic_write(os.path.join(root, LATEST), os.path.basename(path).encode("utf-8"))


def remove_checkpoint(path: str) -> None:
    """Uncommit first (atomic), then delete: a crash leaves an incomplete directory."""
    marker = os.path.join(path, MARKER)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker)
        fsync_dir(path)
    _crash_point("before-rmtree")
    shutil.rmtree(path, ignore_errors=True)


def apply_retention(root: str, keep: int) -> list[int]:
    entries = list_checkpoints(root)
    doomed = choose_deletions(((c.step, c.complete) for c in entries), keep)
    by_step = {c.step: c for c in entries}
    for s in doomed:
        remove_checkpoint(by_step[s].path)
    return doomed


def remove_incomplete(root: str) -> list[int]:
    """Delete every incomplete directory; only when no save can be in flight."""
    removed = []
    for c in list_checkpoints(root):
        if not c.complete:
            remove_checkpoint(c.path)
            removed.append(c.step)
    for name in os.listdir(root) if os.path.isdir(root) else ():
        if name.startswith(f"{LATEST}.tmp."):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
    return removed


# --- DCP --------------------------------------------------------------------


class _Stager:
    """Copies a state dict to host memory, reusing buffers between saves."""

    def __init__(self) -> None:
        self._buffers: dict[str, Any] = {}

    def stage(self, obj: Any, prefix: str = "") -> Any:
        import torch

        if isinstance(obj, torch.Tensor):
            buf = self._buffers.get(prefix)
            if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
                buf = torch.empty(
                    obj.shape,
                    dtype=obj.dtype,
                    device="cpu",
                    pin_memory=torch.cuda.is_available() and obj.is_cuda,
                )
                self._buffers[prefix] = buf
            buf.copy_(obj.detach(), non_blocking=obj.is_cuda)
            return buf
        if isinstance(obj, Mapping):
            return {k: self.stage(v, f"{prefix}/{k}") for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.stage(v, f"{prefix}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return tuple(self.stage(v, f"{prefix}/{i}") for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def synchronize(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


class CheckpointManager:
    """Saves and loads checkpoints under ``root``; collective over ``process_group`` when given.

    ``process_group`` must be a gloo group used by nothing else while a save is
    in flight (the asynchronous save runs its collectives in a background
    thread).  Rank 0 of the group commits and applies retention.
    """

    def __init__(
        self,
        root: str,
        keep: int = 3,
        process_group: Any = None,
        rank: int = 0,
        world_size: int = 1,
        on_saved: Callable[[str, float, float], None] | None = None,
        on_loaded: Callable[[float], None] | None = None,
        on_committed: Callable[[int, str], None] | None = None,
    ) -> None:
        self.root = root
        self.keep = max(1, keep)
        self.pg = process_group
        self.rank = rank
        self.world_size = world_size
        self.on_saved = on_saved  # (kind, pause seconds, total seconds)
        self.on_loaded = on_loaded  # (seconds)
        self.on_committed = on_committed  # (step, path), rank 0, once the checkpoint is complete
        self._stager = _Stager()
        self._pending: Future[int] | None = None
        self._lock = threading.Lock()
        self._broken: str | None = None  # why the group failed a save's collective (a peer is gone)
        os.makedirs(root, exist_ok=True)

    # -- group changes ---------------------------------------------------------
    def rebind(self, process_group: Any, rank: int, world_size: int) -> None:
        self.wait(raise_errors=False)
        self.pg, self.rank, self.world_size = process_group, rank, world_size
        self._broken = None

    def release_group(self) -> None:
        """Forget the process group (the world is torn down); a save still in flight keeps its own."""
        self.pg, self._broken = None, None

    def _group_failed(self, pg: Any, e: BaseException) -> None:
        """A save's collective failed on ``pg``: a peer is gone, and a gloo group is not usable after an error.

        Later saves on it raise at once (the caller re-forms, freeing the group, so that peers still
        blocked on it fail too) instead of blocking on it up to the checkpoint timeout.
        """
        if isinstance(e, RuntimeError) and pg is not None and pg is self.pg:  # DistError is a RuntimeError
            self._broken = str(e).splitlines()[0] if str(e) else type(e).__name__

    def tidy(self) -> None:
        """Rank 0, when no save can be in flight (start, re-formation): drop torn dirs, apply retention."""
        if self.rank != 0:
            return
        removed = remove_incomplete(self.root)
        deleted = apply_retention(self.root, self.keep)
        if removed or deleted:
            log.info("checkpoint tidy: removed incomplete %s, retention %s", removed, deleted)

    # -- save --------------------------------------------------------------------
    def _prepare(self, step: int, path: str) -> bool:
        """Collective: whether to save ``step``; rank 0 clears a torn directory first.

        Rank 0 decides (a complete checkpoint of that step is never rewritten)
        and broadcasts its decision, which also orders its clean-up before any
        rank writes.
        """
        decision = [True]
        if self.rank == 0:
            if is_complete(path, step):
                decision[0] = False
            elif os.path.exists(path):
                remove_checkpoint(path)  # torn by a crash: start afresh
        if self.pg is not None and self.world_size > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(decision, src=0, group=self.pg)
        return bool(decision[0])

    def _dcp_save(self, state: Mapping[str, Any], path: str, pg: Any) -> None:
        from torch.distributed.checkpoint import filesystem, state_dict_saver

        _crash_point("before-dcp")
        writer = filesystem.FileSystemWriter(path, sync_files=True, overwrite=True)
        if pg is None:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", UserWarning
                )  # "assuming the intent is to save in a single process"
                state_dict_saver.save(dict(state), storage_writer=writer, no_dist=True)
        else:
            state_dict_saver.save(dict(state), storage_writer=writer, process_group=pg)

    def _finish(self, step: int, path: str, meta: Mapping[str, Any]) -> None:
        if self.rank == 0:
            commit(path, step, {"world_size": self.world_size, "meta": dict(meta)})
            if self.on_committed is not None:
                try:
                    self.on_committed(step, path)
                except Exception:  # reporting must never break a checkpoint
                    log.warning("reporting checkpoint %s failed", step, exc_info=True)
            _crash_point("before-retention")
            deleted = apply_retention(self.root, self.keep)
            if deleted:
                log.debug("retention removed steps %s", deleted)

    def save(self, step: int, state: Mapping[str, Any], meta: Mapping[str, Any], asynchronous: bool) -> float:
        """Save ``state`` (tensors, nested dicts) as step ``step``; returns the training pause (s).

        Raises RuntimeError when a collective fails, or failed in the previous (asynchronous) save: a
        peer is gone, and the caller re-forms the world.
        """
        self.wait(raise_errors=False)
        if self._broken is not None:
            raise RuntimeError(f"the checkpoint group failed in a save: {self._broken}")
        path = os.path.join(self.root, step_dirname(step))
        pg = self.pg  # the save keeps its group even if the world is torn down meanwhile
        t0 = time.perf_counter()
        try:
            if not self._prepare(step, path):
                return 0.0
            if not asynchronous:
                self._dcp_save(state, path, pg)
                self._finish(step, path, meta)
        except BaseException as e:
            self._group_failed(pg, e)
            raise
        if not asynchronous:
            pause = time.perf_counter() - t0
            if self.on_saved:
                self.on_saved("sync", pause, pause)
            return pause
        staged = self._stager.stage(state)
        self._stager.synchronize()
        meta = copy.deepcopy(dict(meta))
        pause = time.perf_counter() - t0
        fut: Future[int] = Future()

        def work() -> None:
            try:
                self._dcp_save(staged, path, pg)
                self._finish(step, path, meta)
            except BaseException as e:  # reported through the future
                self._group_failed(pg, e)
                # The frames hold ``pg``, and the future holds the frames (a cycle through this closure that
                # only the garbage collector breaks): peers blocked on the group would wait for it up to the
                # checkpoint timeout.  Freed now, the group closes its sockets once its owner re-forms.
                drop_frames(e)
                fut.set_exception(e)
                return
            total = time.perf_counter() - t0
            if self.on_saved:
                self.on_saved("async", pause, total)
            fut.set_result(step)

        threading.Thread(target=work, name=f"heterotrain-ckpt-{step}", daemon=True).start()
        with self._lock:
            self._pending = fut
        return pause

    def wait(self, timeout: float | None = None, raise_errors: bool = True) -> int | None:
        """Wait for the save in flight; returns its step (None if none or it failed)."""
        with self._lock:
            fut, self._pending = self._pending, None
        if fut is None:
            return None
        try:
            return fut.result(timeout)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # also DCP's CheckpointException (a BaseException): a failed save
            if raise_errors:
                raise
            log.warning("checkpoint save failed: %s", e)
            return None

    @property
    def in_flight(self) -> bool:
        with self._lock:
            return self._pending is not None and not self._pending.done()

    # -- load --------------------------------------------------------------------
    def latest(self) -> CheckpointInfo | None:
        return newest_complete(self.root)

    def load(self, state: dict[str, Any], info: CheckpointInfo | None = None) -> dict[str, Any] | None:
        """Load the newest complete checkpoint (or ``info``) into ``state`` in place.

        Returns the marker record (step, meta...) or None when there is none.
        """
        from torch.distributed.checkpoint import filesystem, state_dict_loader

        info = info or self.latest()
        if info is None:
            return None
        marker = read_marker(info.path)
        assert marker is not None
        t0 = time.perf_counter()
        reader = filesystem.FileSystemReader(info.path)
        if self.pg is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                state_dict_loader.load(state, storage_reader=reader, no_dist=True)
        else:
            state_dict_loader.load(state, storage_reader=reader, process_group=self.pg)
        if self.on_loaded:
            self.on_loaded(time.perf_counter() - t0)
        return marker
