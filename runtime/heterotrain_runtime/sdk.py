"""The training SDK: elastic, heterogeneous data parallelism without restarts.

Usage (see ``examples/train.py``)::

    from heterotrain_runtime.sdk import ElasticTrainer

    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = ElasticTrainer(model, opt, dataset, global_batch_size=64, checkpoint_dir="/ckpt")
    while trainer.step < total_steps:
        trainer.train_step(lambda batch: F.mse_loss(model(batch[0]), batch[1]))
    trainer.finish()

``train_step(fn)`` takes the next ``global_batch_size`` samples of the global
order from the data cursor, gives this rank its slice (proportional to its
weight), calls ``fn(batch)`` (it must return the *mean* loss over the local
batch), back-propagates, sums the gradients over the world with every rank's
contribution scaled by ``local_batch / global_batch`` (so the update equals the
mean over the whole global batch whatever the split), steps the optimizer and
moves the cursor.  Around that it:

* refines the split from measured throughput (EMA of samples/s per rank,
  rebalanced at most every ``rebalance_min_interval`` seconds);
* notices a new membership epoch (the launcher keeps the membership file up to
  date) and, at the step boundary, re-forms the process groups for the new
  world (new members get the state from a peer or the latest checkpoint);
* survives a peer failure: a collective that raises (or times out after the
  heartbeat timeout) abandons the step and re-forms when the world is back;
* saves checkpoints (sync or async) and, on SIGTERM, saves one and exits;
* logs the consumed samples (``HETEROTRAIN_SAMPLE_LOG_DIR``) and progress.

Without a membership source it still works: under torchrun (static world from
RANK/WORLD_SIZE) or as a single process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist

from heterotrain_runtime import contract, rendezvous
from heterotrain_runtime.batching import DataCursor, SampleOrder, ThroughputTracker, cut_ranges, split_batch
from heterotrain_runtime.checkpoint import CheckpointManager, atomic_write, step_dirname
from heterotrain_runtime.collectives import GradientSync, Topology, build_topology, usable_backend
from heterotrain_runtime.contract import Member, Membership
from heterotrain_runtime.membership import MembershipSource, source_from_env, status_reporter
from heterotrain_runtime.metrics import RuntimeMetrics
from heterotrain_runtime.samplelog import SampleLog

log = logging.getLogger("heterotrain.sdk")

__all__ = ["ElasticTrainer", "StepResult"]


@dataclass(frozen=True)
class StepResult:
    step: int  # committed steps so far (this one included)
    loss: float  # mean loss over the global batch
    local_batch: int
    global_batch: int
    step_seconds: float  # wall time since the previous committed step
    samples_per_second: float  # global
    epoch: int  # membership epoch
    world_size: int


_STEP_CHECK_MOD = 1 << 20


class _CommFailure(Exception):
    """A collective or the store failed: a peer is gone."""


def _drop_frames(exc: BaseException) -> None:
    """Free the locals of the frames ``exc`` (and its causes) went through.

    A failed collective's frames hold its process group (``group=``, the
    topology); while they live, gloo keeps the group's sockets open and a peer
    blocked on it (a pool leader waiting for us in the leaders' all-reduce)
    never learns that we left.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if x.__traceback__ is not None:
            traceback.clear_frames(x.__traceback__)
            x.__traceback__ = None
        todo += [x.__cause__, x.__context__]


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


class ElasticTrainer:
    """Wraps a model, its optimizer and a map-style dataset (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Any = None,
        *,
        dataset_len: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        global_batch_size: int | None = None,
        seed: int | None = None,
        drop_last: bool = False,
        checkpoint_dir: str | None = None,
        checkpoint_interval_steps: int | None = None,
        checkpoint_interval_seconds: float | None = None,
        checkpoint_keep: int | None = None,
        async_checkpoint: bool | None = None,
        stateful: Mapping[str, Any] | None = None,
        heartbeat_timeout: float | None = None,
        rebalance_policy: str | None = None,
        rebalance_min_interval: float | None = None,
        emulated_speed: float | None = None,
        emulated_base_rate: float | None = None,
        log_every: int = 10,
        env: Mapping[str, str] | None = None,
    ) -> None:
        e = dict(os.environ if env is None else env)
        self.env = e
        self.model, self.optimizer, self.dataset = model, optimizer, dataset
        if dataset_len is None:
            if dataset is None:
                raise ValueError("give a dataset or dataset_len")
            dataset_len = len(dataset)
        self.dataset_len = int(dataset_len)
        self.collate_fn = collate_fn
        gb = global_batch_size or int(e.get(contract.ENV_GLOBAL_BATCH_SIZE, "0") or 0)
        if gb <= 0:
            raise ValueError(f"global batch size unknown (argument or {contract.ENV_GLOBAL_BATCH_SIZE})")
        self.global_batch_size = gb
        self.drop_last = drop_last
        self.seed = seed if seed is not None else int(e.get(contract.ENV_DATA_SEED, "0") or 0)
        self.order = SampleOrder(self.dataset_len, self.seed)
        self.stateful = dict(stateful or {})
        self.heartbeat = heartbeat_timeout or float(
            e.get(contract.ENV_HEARTBEAT_TIMEOUT, contract.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS)
        )
        self.policy = (rebalance_policy or e.get(contract.ENV_REBALANCE_POLICY) or "Throughput").lower()
        self.tracker = ThroughputTracker(
            min_interval=rebalance_min_interval
            if rebalance_min_interval is not None
            else float(
                e.get(contract.ENV_REBALANCE_MIN_INTERVAL, contract.DEFAULT_REBALANCE_MIN_INTERVAL_SECONDS)
            )
        )
        speed = emulated_speed if emulated_speed is not None else e.get(contract.ENV_EMULATED_SPEED)
        self.emulated_speed = float(speed) if speed not in (None, "") else None
        self.emulated_base_rate = emulated_base_rate or float(e.get(contract.ENV_EMULATED_BASE_RATE, "200"))
        self.log_every = log_every
        # checkpoints
        ckdir = checkpoint_dir or e.get(contract.ENV_CHECKPOINT_DIR) or None
        self.ckpt_interval_steps = checkpoint_interval_steps or int(
            e.get(contract.ENV_CHECKPOINT_INTERVAL_STEPS, "0") or 0
        )
        self.ckpt_interval_seconds = checkpoint_interval_seconds or float(
            e.get(contract.ENV_CHECKPOINT_INTERVAL_SECONDS, "0") or 0
        )
        self.ckpt_async = (
            async_checkpoint
            if async_checkpoint is not None
            else _env_bool(e.get(contract.ENV_CHECKPOINT_ASYNC), True)
        )
        self.ckpt_timeout = max(
            self.heartbeat,
            float(e.get(contract.ENV_CHECKPOINT_TIMEOUT) or contract.DEFAULT_CHECKPOINT_TIMEOUT_SECONDS),
        )
        self.metrics = RuntimeMetrics(contract.ENV_METRICS_PORT)
        self.ckpt: CheckpointManager | None = None
        if ckdir:
            self.ckpt = CheckpointManager(
                ckdir,
                keep=checkpoint_keep or int(e.get(contract.ENV_CHECKPOINT_KEEP, "3") or 3),
                on_saved=self._on_saved,
                on_loaded=lambda s: self.metrics.checkpoint_load_seconds.observe(s),
                on_committed=self._on_committed,
            )
        self._status = status_reporter(e)  # the job's status, when running in a HeteroTrainJob pod
        # identity and membership
        self.pod = e.get(contract.ENV_POD_NAME) or f"rank{e.get('RANK', '0')}"
        self.accelerator = e.get(contract.ENV_ACCELERATOR, "cpu")
        self.backend = usable_backend(
            e.get(contract.ENV_BACKEND) or contract.default_backend(self.accelerator),
            emulated=bool(e.get(contract.ENV_EMULATED_SPEED)),
        )
        self.source: MembershipSource | None = None
        if e.get(contract.ENV_MEMBERSHIP_SOURCE):
            self.source = source_from_env(e)
            self.mode = "elastic"
        elif int(e.get("WORLD_SIZE", "1")) > 1:
            self.mode = "static"  # torchrun & co: the world never changes in-process
        else:
            self.mode = "single"
        self.poll = float(e.get(contract.ENV_MEMBERSHIP_POLL_SECONDS, "0.1"))
        self._last_poll = 0.0
        self._latest: Membership | None = None
        # training state
        self.step = 0
        self.cursor = DataCursor()
        self.split: list[int] = [gb]
        self.membership: Membership | None = None
        self.rank, self.world_size = 0, 1
        self.topo: Topology | None = None
        self._ckpt_pg: Any = None
        self._formed = False
        self._has_state = False
        self._formation = ("", 0.0)
        self._server: Any = None
        self._server_key: tuple[str, int] | None = None
        self._stop_signal: int | None = None
        self._last_commit: float | None = None
        self._last_ckpt_time = time.monotonic()
        self._last_rebalance = time.monotonic()
        self._observations: dict[str, int] = {}
        self.gsync = GradientSync(list(model.parameters()))
        slog = e.get(contract.ENV_SAMPLE_LOG_DIR)
        self.sample_log = SampleLog(slog, self.pod) if slog else None
        self.progress_file = e.get(contract.ENV_PROGRESS_FILE) or None
        self._select_device(e)
        self._install_signal_handlers()
        self._handshake()

    # ------------------------------------------------------------------ public
    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def local_batch_size(self) -> int:
        return self.split[self.rank] if self.rank < len(self.split) else 0

    @property
    def stop_requested(self) -> bool:
        return self._stop_signal is not None

    def start(self) -> None:
        """Join the world and restore the state (done by the first ``train_step`` otherwise)."""
        if not self._formed:
            self._form(min_epoch=0)

    def next_indices(self) -> tuple[int, list[int], int]:
        """``(data_epoch, this rank's sample indices, global count)`` of the next step."""
        epoch, start, stop = self.cursor.step_span(self.dataset_len, self.global_batch_size, self.drop_last)
        count = stop - start
        sizes = self.split if count == self.global_batch_size else split_batch(count, self.split)
        a, b = cut_ranges(sizes)[self.rank]
        return epoch, self.order.slice(epoch, start + a, start + b), count

    def train_step(self, fn: Callable[[Any], torch.Tensor]) -> StepResult:
        """One committed step (retried on a new world after a peer failure)."""
        if not self._formed:
            self._form(min_epoch=0)
        while True:
            try:
                result, control = self._step_once(fn)
            except _CommFailure as e:
                self._on_failure(e)
                continue
            try:
                self._after_step(control)
            except _CommFailure as e:
                self._on_failure(e)
            return result

    def _on_failure(self, e: _CommFailure) -> None:
        if self.mode != "elastic":
            raise e.__cause__ or e  # torchrun & co restart the whole world
        assert self.membership is not None
        log.warning("%s: collective failed after step %d (%s); re-forming", self.pod, self.step, e)
        self.metrics.reformations.labels(reason="failure").inc()
        _drop_frames(e)
        self._teardown()
        self._form(min_epoch=self.membership.epoch)

    def save_checkpoint(self, asynchronous: bool | None = None) -> None:
        """Collective: every rank calls it at the same step."""
        if self.ckpt is None:
            return
        with self._comm():
            self._save(self.ckpt_async if asynchronous is None else asynchronous)

    def finish(self, final_checkpoint: bool = True) -> None:
        """Final checkpoint, wait for saves in flight, leave the process group."""
        if self._formed and final_checkpoint and self.ckpt is not None:
            try:
                self.save_checkpoint(asynchronous=False)
            except _CommFailure as e:
                log.warning("final checkpoint failed: %s", e)
        if self.ckpt is not None:
            self.ckpt.wait(raise_errors=False)
        self._teardown()
        if self.sample_log is not None:
            self.sample_log.close()

    # ------------------------------------------------------------- membership
    def _select_device(self, e: Mapping[str, str]) -> None:
        """Bind this process to its local accelerator before any collective (best effort)."""
        local = int(e.get("LOCAL_RANK", "0") or 0)
        if self.backend in ("nccl", "rccl") and torch.cuda.is_available():
            torch.cuda.set_device(local % torch.cuda.device_count())
        elif self.backend == "hccl":
            import torch_npu  # noqa: F401  (registers torch.npu)

            npu: Any = getattr(torch, "npu", None)
            if npu is not None and npu.is_available():
                npu.set_device(local % npu.device_count())

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: object) -> None:
            self._stop_signal = signum

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, handler)

    def _handshake(self) -> None:
        path = self.env.get(contract.ENV_SDK_HANDSHAKE_FILE)
        if path and self.mode == "elastic":
            atomic_write(path, json.dumps({"pid": os.getpid(), "handlesEpochs": True}).encode())

    def _read_membership(self, force: bool = False) -> Membership | None:
        if self.source is None:
            return None
        now = time.monotonic()
        if force or now - self._last_poll >= self.poll:
            self._last_poll = now
            try:
                m = self.source.read()
            except Exception as e:
                log.debug("membership read failed: %s", e)
                m = None
            if m is not None and (self._latest is None or m.epoch >= self._latest.epoch):
                self._latest = m
        return self._latest

    def _newer_epoch(self, epoch: int) -> bool:
        m = self._read_membership()
        return m is not None and m.epoch > epoch

    def _exit_on_stop(self) -> None:
        if self._stop_signal is not None:
            log.info("%s: stopping (signal %d) outside a world", self.pod, self._stop_signal)
            if self.ckpt is not None:
                self.ckpt.wait(raise_errors=False)
            raise SystemExit(128 + self._stop_signal)

    def _wait_membership(self, min_epoch: int) -> tuple[Membership, Member]:
        """The latest membership with epoch >= min_epoch that has this pod (parks otherwise)."""
        parked = False
        while True:
            self._exit_on_stop()
            m = self._read_membership(force=True)
            if m is not None and m.epoch >= min_epoch:
                me = m.member(self.pod)
                if me is not None:
                    return m, me
                if not parked:
                    log.info("%s: not a member of epoch %d; waiting", self.pod, m.epoch)
                    self._server, self._server_key = None, None  # a parked process hosts no store
                    parked = True
            time.sleep(self.poll)

    def _abort_for(self, epoch: int) -> Callable[[], bool]:
        def abort() -> bool:
            return self._stop_signal is not None or self._newer_epoch(epoch)

        return abort

    def _store_for(self, m: Membership, me: Member) -> Any:
        key = (m.master_addr, m.master_port)
        timeout = min(10.0, self.heartbeat)
        if me.rank == 0:
            if self._server is None or self._server_key != key:
                self._server = None
                self._server = rendezvous.make_store(key[0], key[1], True, timeout)
                self._server_key = key
            return self._server
        self._server, self._server_key = None, None  # no longer rank 0
        return rendezvous.connect_store(key[0], key[1], self._abort_for(m.epoch), timeout=self.heartbeat)

    # ---------------------------------------------------------------- forming
    def _teardown(self) -> None:
        if self.ckpt is not None:
            self.ckpt.wait(timeout=self.heartbeat + 5, raise_errors=False)
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        if self.ckpt is not None:
            self.ckpt.release_group()
        # the last references: gloo closes a group's sockets only when it is freed, and
        # peers blocked on it learn that we left only then
        self.topo, self._ckpt_pg, self._formed = None, None, False

    def _form(self, min_epoch: int) -> None:
        if self.mode == "single":
            self._form_single()
            return
        if self.mode == "static":
            self._form_static()
            return
        backoff = 0.1
        while True:
            m, me = self._wait_membership(min_epoch)
            store = None
            rnd = -1
            try:
                store = self._store_for(m, me)
                rnd = rendezvous.join(
                    store,
                    m.epoch,
                    me.rank,
                    m.world_size,
                    self._abort_for(m.epoch),
                    commit_timeout=self.heartbeat,
                )
                rendezvous.init_world(store, m.epoch, rnd, me.rank, m.world_size, self.heartbeat)
                self._after_init(m, me)
                return
            except rendezvous.Aborted:
                self._teardown()
                continue
            except (
                RuntimeError,
                TimeoutError,
            ) as e:  # store or collective failures (DistError is a RuntimeError)
                log.warning("%s: forming epoch %d failed: %s", self.pod, m.epoch, str(e).splitlines()[0])
                self._teardown()
                if store is not None and rnd >= 0:
                    with contextlib.suppress(Exception):
                        rendezvous.bump_round(store, m.epoch, rnd)
                if me.rank == 0 and rnd < 0:
                    self._server, self._server_key = None, None
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _form_single(self) -> None:
        self.membership = Membership(
            epoch=0, world=(Member(self.pod, 0, self.accelerator, "127.0.0.1", 1.0),), master_port=0
        )
        self.rank, self.world_size, self.topo = 0, 1, None
        if not self._has_state:
            self._restore_or_init(infos=None)
        self._set_split()
        self._formation = (uuid.uuid4().hex, time.time())
        self._formed = True

    def _form_static(self) -> None:
        rank, world = int(self.env["RANK"]), int(self.env["WORLD_SIZE"])
        if not dist.is_initialized():
            dist.init_process_group(
                "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=self.heartbeat)
            )
        infos: list[Any] = [None] * world
        dist.all_gather_object(infos, self._info())
        world_members = tuple(
            Member(i["pod"], r, i["type"], self.env.get("MASTER_ADDR", "127.0.0.1"), i["weight"])
            for r, i in enumerate(infos)
        )
        m = Membership(
            epoch=int(self.env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
            world=world_members,
            master_port=int(self.env.get("MASTER_PORT", "0") or 0),
        )
        self._setup_world(m, rank, infos)

    def _info(self) -> dict[str, Any]:
        latest = self.ckpt.latest() if self.ckpt is not None else None
        return {
            "pod": self.pod,
            "type": self.accelerator,
            "backend": self.backend,
            "weight": float(self.env.get(contract.ENV_WEIGHT, "1") or 1.0),
            "has_state": self._has_state,
            "step": self.step,
            "ckpt_step": latest.step if latest is not None else None,
            "ema": dict(self.tracker.ema),
            "fid": uuid.uuid4().hex,
            "ftime": time.time(),
        }

    def _after_init(self, m: Membership, me: Member) -> None:
        infos: list[Any] = [None] * m.world_size
        dist.all_gather_object(infos, self._info())
        for r, i in enumerate(infos):
            if i["pod"] != m.world[r].pod:
                raise RuntimeError(f"rank {r} is {i['pod']}, expected {m.world[r].pod}")
        self._setup_world(m, me.rank, infos)

    def _setup_world(self, m: Membership, rank: int, infos: list[dict[str, Any]]) -> None:
        self.membership, self.rank, self.world_size = m, rank, m.world_size
        # Every rank computes the split (and so its slice of each batch) from its own tracker: the trackers
        # must agree, or slices leave gaps or overlap.  They agree after each committed step (the rates ride
        # the all-reduce), but a step whose collective failed had already measured each rank's own speed.
        # Everybody takes rank 0's; a restore below then loads the same tracker on every rank.
        self.tracker.ema = dict(infos[0]["ema"])
        self.topo = build_topology(
            rank,
            [i["type"] for i in infos],
            [i["backend"] for i in infos],
            timeout=timedelta(seconds=self.heartbeat),
        )
        # a save's collectives wait for the slowest writer: bounded by the checkpoint timeout
        self._ckpt_pg = dist.new_group(
            list(range(m.world_size)), backend="gloo", timeout=timedelta(seconds=self.ckpt_timeout)
        )
        if self.ckpt is not None:
            self.ckpt.rebind(self._ckpt_pg, rank, m.world_size)
            self.ckpt.tidy()  # no save is in flight anywhere while a world forms
        self._restore_or_init(infos)
        self._set_split()
        self._formation = (infos[0]["fid"], infos[0]["ftime"])
        self._formed = True
        self._last_rebalance = time.monotonic()
        self.metrics.membership_epoch.set(m.epoch)
        self.metrics.local_batch_size.set(self.local_batch_size)
        if rank == 0:
            log.info(
                "formed epoch %d: world %d, pools %s, split %s, step %d",
                m.epoch,
                m.world_size,
                {infos[p[0]]["type"]: len(p) for p in self.topo.pools},
                self.split,
                self.step,
            )

    # ----------------------------------------------------------------- state
    def _dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": msd, "optim": osd}
        for k, v in self.stateful.items():
            state[f"extra.{k}"] = v.state_dict()
        return state

    def _meta(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "cursor": self.cursor.to_dict(),
            "tracker": self.tracker.to_dict(),
            "split": list(self.split),
            "pods": [m.pod for m in self.membership.world] if self.membership else [],
            "seed": self.seed,
            "dataset_len": self.dataset_len,
            "global_batch_size": self.global_batch_size,
        }

    def _load_meta(self, meta: Mapping[str, Any]) -> None:
        self.step = int(meta["step"])
        self.cursor = DataCursor.from_dict(meta["cursor"])
        self.tracker.load_dict(meta.get("tracker", {}))

    def _restore_or_init(self, infos: list[dict[str, Any]] | None) -> None:
        """Make every rank hold the newest state: a peer's, the latest checkpoint's, or rank 0's."""
        if infos is None:  # single process
            latest = self.ckpt.latest() if self.ckpt is not None else None
            if latest is not None and (not self._has_state or latest.step > self.step):
                self._load_checkpoint(latest.step)
            self._has_state = True
            return
        steps = [i["step"] if i["has_state"] else None for i in infos]
        known = [s for s in steps if s is not None]
        mem_best = max(known) if known else None
        ck = infos[0]["ckpt_step"]
        if ck is not None and (mem_best is None or ck > mem_best):
            self._load_checkpoint(ck)
        elif mem_best is not None:
            if any(s != mem_best for s in steps):
                self._broadcast_state(steps.index(mem_best))
        else:
            self._broadcast_state(0)  # fresh start: everybody takes rank 0's initial weights
        self._has_state = True

    def _load_checkpoint(self, step: int) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        assert self.ckpt is not None
        from heterotrain_runtime.checkpoint import CheckpointInfo

        path = os.path.join(self.ckpt.root, step_dirname(step))
        state = self._dcp_state()
        marker = self.ckpt.load(state, CheckpointInfo(step, path, True))
        assert marker is not None
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        for k, v in self.stateful.items():
            v.load_state_dict(state[f"extra.{k}"])
        self._load_meta(marker["meta"])
        log.info("%s: restored step %d from %s", self.pod, self.step, path)

    def _broadcast_state(self, src: int) -> None:
        payload: list[Any] = [None]
        if self.rank == src:
            payload[0] = {
                "model": _to_cpu(self.model.state_dict()),
                "optim": _to_cpu(self.optimizer.state_dict()),
                "extra": {k: _to_cpu(v.state_dict()) for k, v in self.stateful.items()},
                "meta": self._meta(),
            }
        dist.broadcast_object_list(payload, src=src)
        if self.rank != src:
            p = payload[0]
            self.model.load_state_dict(p["model"])
            self.optimizer.load_state_dict(p["optim"])
            for k, v in self.stateful.items():
                v.load_state_dict(p["extra"][k])
            self._load_meta(p["meta"])

    def _set_split(self) -> None:
        m = self.membership
        assert m is not None
        if self.policy == "equal":
            weights = [1.0] * m.world_size
        else:
            weights = self.tracker.estimates([x.pod for x in m.world], [x.weight for x in m.world])
        self.split = split_batch(self.global_batch_size, weights)

    # ------------------------------------------------------------------ step
    @contextlib.contextmanager
    def _comm(self) -> Any:
        try:
            yield
        except RuntimeError as e:
            raise _CommFailure(str(e).splitlines()[0] if str(e) else type(e).__name__) from e

    def _batch(self, indices: Sequence[int]) -> Any:
        if self.dataset is None:
            return list(indices)
        batched = hasattr(self.dataset, "__getitems__")
        items = self.dataset.__getitems__(list(indices)) if batched else [self.dataset[i] for i in indices]
        if self.collate_fn is not None:
            return self.collate_fn(items)
        if batched:
            return items
        from torch.utils.data import default_collate

        return default_collate(items)

    def _step_once(self, fn: Callable[[Any], torch.Tensor]) -> tuple[StepResult, torch.Tensor]:
        assert self.membership is not None
        t_start = time.perf_counter()
        data_epoch, indices, count = self.next_indices()
        n_local = len(indices)
        fid, ftime = self._formation
        if self.sample_log is not None:
            self.sample_log.attempt(
                fid, ftime, self.step + 1, data_epoch, self.rank, self.world_size, indices
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss_val = 0.0
        if n_local:
            loss = fn(self._batch(indices))
            cast(Any, loss).backward()
            loss_val = float(loss.detach())
            if self.emulated_speed:
                target = n_local / (self.emulated_speed * self.emulated_base_rate)
                left = target - (time.perf_counter() - t_start)
                if left > 0:
                    time.sleep(left)
        compute = time.perf_counter() - t_start
        self.metrics.compute_seconds.observe(compute)
        seen = self._observations.get(self.pod, 0)
        if seen > 0:  # the first step of a process is warm-up: not measured
            self.tracker.observe(self.pod, n_local, compute)
        self._observations[self.pod] = seen + 1

        # control vector: flags, loss, throughputs, steps (one small gloo all-reduce)
        world = self.world_size
        v = torch.zeros(6 + 2 * world, dtype=torch.float64)
        now = time.monotonic()
        v[0] = 1.0 if self._newer_epoch(self.membership.epoch) else 0.0
        v[1] = 1.0 if self._stop_signal is not None else 0.0
        if self.rank == 0:
            due = self.ckpt_interval_seconds > 0 and now - self._last_ckpt_time >= self.ckpt_interval_seconds
            v[2] = 1.0 if due else 0.0
            v[3] = 1.0 if now - self._last_rebalance >= self.tracker.min_interval else 0.0
        v[4] = loss_val * n_local / count
        v[5] = 1.0
        v[6 + self.rank] = self.tracker.ema.get(self.pod, 0.0)
        v[6 + world + self.rank] = float(self.step % _STEP_CHECK_MOD)  # exact in fp32
        with self._comm():
            if self.gsync.carries_control():
                # the control vector rides along the gradients: one collective per step
                summed = self.gsync.sync(self.topo, scale=n_local / count, control=v)
                assert summed is not None
                v = summed
            else:
                if world > 1:
                    dist.all_reduce(v, group=self.topo.world_group if self.topo else None)
                self.gsync.sync(self.topo, scale=n_local / count)
            steps = [round(x) for x in v[6 + world :].tolist()]
            if round(v[5].item()) != world or any(x != self.step % _STEP_CHECK_MOD for x in steps):
                raise RuntimeError(f"ranks disagree on the step: {steps}")
        self.optimizer.step()
        # ---- committed
        self.step += 1
        self.cursor.advance(self.dataset_len, self.global_batch_size, self.drop_last)
        if self.sample_log is not None:
            self.sample_log.commit(fid, ftime, self.step)
        commit_t = time.perf_counter()
        step_s = commit_t - (self._last_commit if self._last_commit is not None else t_start)
        self._last_commit = commit_t
        pods = [x.pod for x in self.membership.world]
        rates = v[6 : 6 + world].tolist()
        for p, r in zip(pods, rates, strict=True):
            if r > 0:
                self.tracker.ema[p] = r
        result = StepResult(
            step=self.step,
            loss=float(v[4].item()),
            local_batch=n_local,
            global_batch=count,
            step_seconds=step_s,
            samples_per_second=count / step_s if step_s > 0 else math.inf,
            epoch=self.membership.epoch,
            world_size=world,
        )
        self._report(result, count)
        return result, v

    def _after_step(self, v: torch.Tensor) -> None:
        """Checkpoint, rebalance, membership change, stop: at the step boundary, same on every rank."""
        assert self.membership is not None
        if self.ckpt is not None and (
            v[2] > 0 or (self.ckpt_interval_steps and self.step % self.ckpt_interval_steps == 0)
        ):
            with self._comm():
                self._save(self.ckpt_async)
        if v[3] > 0 and self.policy != "equal":
            self._maybe_rebalance(v[6 : 6 + self.world_size].tolist())
        if v[1] > 0:
            self._on_stop()
        elif v[0] > 0:
            self.metrics.reformations.labels(reason="epoch").inc()
            epoch = self.membership.epoch
            self._teardown()
            self._form(min_epoch=epoch + 1)

    def _maybe_rebalance(self, rates: list[float]) -> None:
        self._last_rebalance = time.monotonic()
        if any(r <= 0 for r in rates):
            return  # not every rank measured yet
        new = self.tracker.proposal(self.global_batch_size, self.split, rates)
        if new is not None:
            if self.rank == 0:
                log.info(
                    "rebalance at step %d: %s -> %s (samples/s %s)",
                    self.step,
                    self.split,
                    new,
                    [round(r, 1) for r in rates],
                )
            self.split = new
            self.metrics.local_batch_size.set(self.local_batch_size)

    def _on_stop(self) -> None:
        """Someone was asked to stop: checkpoint together, then the signalled ranks exit."""
        if self.ckpt is not None:
            try:
                self.save_checkpoint(asynchronous=False)
            except _CommFailure as e:
                log.warning("checkpoint on stop failed: %s", e)
        if self._stop_signal is not None:
            sig = self._stop_signal
            self._teardown()
            log.info("%s: checkpointed at step %d; exiting on signal %d", self.pod, self.step, sig)
            raise SystemExit(128 + sig)
        assert self.membership is not None
        epoch = self.membership.epoch
        self._teardown()
        if self.mode != "elastic":
            raise SystemExit(0)
        self._form(min_epoch=epoch + 1)  # the world lost a member: wait for the next epoch

    def _save(self, asynchronous: bool) -> None:
        assert self.ckpt is not None
        self.ckpt.wait(raise_errors=False)
        self.ckpt.save(self.step, self._dcp_state(), self._meta(), asynchronous)
        self._last_ckpt_time = time.monotonic()

    def _on_committed(self, step: int, path: str) -> None:
        """Rank 0, once a checkpoint is complete: report it as the job's status.lastCheckpoint."""
        reporter = self._status
        if reporter is None:
            return
        record = {
            "lastCheckpoint": {
                "step": step,
                "path": path,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        }

        def send() -> None:
            try:
                reporter.apply_status(record)
            except Exception as e:  # the job trains on whether or not the API answers
                log.warning("could not report checkpoint %d to the job status: %s", step, e)

        threading.Thread(target=send, name=f"heterotrain-report-{step}", daemon=True).start()

    def _on_saved(self, kind: str, pause: float, total: float) -> None:
        self.metrics.checkpoint_save_seconds.labels(kind="pause").observe(pause)
        self.metrics.checkpoint_save_seconds.labels(kind="total").observe(total)

    def _report(self, r: StepResult, count: int) -> None:
        m = self.membership
        assert m is not None
        self.metrics.steps.inc()
        self.metrics.step_seconds.observe(r.step_seconds)
        sizes = self.split if count == self.global_batch_size else split_batch(count, self.split)
        pools: dict[str, float] = {}
        for mem, b in zip(m.world, sizes, strict=True):
            pools[mem.type] = pools.get(mem.type, 0.0) + b / r.step_seconds
        self.metrics.rank_samples_per_second.labels(rank=str(self.rank), pod=self.pod).set(
            r.local_batch / r.step_seconds
        )
        for t, sps in pools.items():
            self.metrics.pool_samples_per_second.labels(pool=t).set(sps)
        if self.rank != 0:
            return
        if self.progress_file:
            rec = {
                "time": time.time(),
                "step": r.step,
                "loss": r.loss,
                "epoch": r.epoch,
                "world": r.world_size,
                "split": sizes,
                "types": [x.type for x in m.world],
                "step_seconds": r.step_seconds,
                "samples_per_second": r.samples_per_second,
                "pools": pools,
                "data_epoch": self.cursor.data_epoch,
            }
            with open(self.progress_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        if self.log_every and r.step % self.log_every == 0:
            per_pool = " ".join(f"{t}={sps:.0f}/s" for t, sps in pools.items())
            print(
                f"[heterotrain] step {r.step} loss {r.loss:.4f} epoch {r.epoch} world {r.world_size} "
                f"split {sizes} | {r.samples_per_second:.0f} samples/s ({per_pool})",
                file=sys.stdout,
                flush=True,
            )
