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

* refines the split from measured throughput (each rank's samples per second of compute, averaged;
  rebalanced at most every ``rebalance_min_interval`` seconds: :mod:`.trainer.balance`);
* notices a new membership epoch (the launcher keeps the membership file up to
  date) and, at the step boundary, re-forms the process groups for the new
  world (new members get the state from a peer or the latest checkpoint);
* survives a peer failure: a collective that raises (or times out after the
  heartbeat timeout) abandons the step and re-forms when the world is back;
* saves checkpoints (sync or async) and, on SIGTERM, saves one and exits;
* logs the consumed samples (``HETEROTRAIN_SAMPLE_LOG_DIR``) and progress.

Without a membership source it runs static (torchrun's RANK/WORLD_SIZE) or as a single process.

The trainer's parts live in :mod:`heterotrain_runtime.trainer` (settings, world formation,
training state, control vector, reporting); this module holds the step and its boundary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from heterotrain_contract import ENV_METRICS_PORT, EXIT_OUT_OF_MEMORY, Membership
from heterotrain_runtime.batching import SampleOrder, ThroughputTracker, cut_ranges, split_batch
from heterotrain_runtime.checkpoint import CheckpointManager, atomic_write
from heterotrain_runtime.collectives import GradientSync, Topology, usable_backend
from heterotrain_runtime.membership import MembershipSource, source_from_env, status_reporter
from heterotrain_runtime.metrics import RuntimeMetrics
from heterotrain_runtime.precision import parse_precision
from heterotrain_runtime.samplelog import SampleLog
from heterotrain_runtime.trainer.accumulate import OutOfMemory, forward_backward, wait_for_device
from heterotrain_runtime.trainer.balance import Balancer
from heterotrain_runtime.trainer.control import ControlVector, RankReport
from heterotrain_runtime.trainer.evaluation import Evaluation, collate_samples, eval_share, local_eval_sums
from heterotrain_runtime.trainer.failures import CommFailure, comm, drop_frames
from heterotrain_runtime.trainer.health import Health
from heterotrain_runtime.trainer.liveness import CHECKPOINT, FORMING, OUTSIDE, STEP
from heterotrain_runtime.trainer.optim import OptimizerSide, Update
from heterotrain_runtime.trainer.reporting import Reporter, StepResult
from heterotrain_runtime.trainer.settings import TrainerSettings
from heterotrain_runtime.trainer.state import TrainingState
from heterotrain_runtime.trainer.world import FormedWorld, Info, WorldFormer

log = logging.getLogger("heterotrain.sdk")

__all__ = ["ElasticTrainer", "Evaluation", "StepResult", "TrainerSettings"]


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
        lr_scheduler: Any = None,
        max_grad_norm: float | None = None,
        precision: str | None = None,
        before_optimizer_step: Callable[[ElasticTrainer], None] | None = None,
        evaluation: Evaluation | None = None,
        heartbeat_timeout: float | None = None,
        rebalance_policy: str | None = None,
        rebalance_min_interval: float | None = None,
        max_micro_batch: int | None = None,
        log_every: int = 10,
        total_steps: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.model, self.optimizer, self.dataset = model, optimizer, dataset
        if dataset_len is None:
            if dataset is None:
                raise ValueError("give a dataset or dataset_len")
            dataset_len = len(dataset)
        self.dataset_len = int(dataset_len)
        self.collate_fn = collate_fn
        self.settings = TrainerSettings.from_env(
            env,
            global_batch_size=global_batch_size,
            seed=seed,
            drop_last=drop_last,
            precision=precision,
            checkpoint_dir=checkpoint_dir,
            checkpoint_interval_steps=checkpoint_interval_steps,
            checkpoint_interval_seconds=checkpoint_interval_seconds,
            checkpoint_keep=checkpoint_keep,
            async_checkpoint=async_checkpoint,
            heartbeat_timeout=heartbeat_timeout,
            rebalance_policy=rebalance_policy,
            rebalance_min_interval=rebalance_min_interval,
            max_micro_batch=max_micro_batch,
            log_every=log_every,
            total_steps=total_steps,
        )
        hook = before_optimizer_step
        self.evaluation = evaluation
        self.precision = parse_precision(self.settings.precision)
        self.opt = OptimizerSide(
            optimizer,
            list(model.parameters()),
            self.precision,
            lr_scheduler=lr_scheduler,
            max_grad_norm=max_grad_norm,
            before_step=None if hook is None else lambda: hook(self),
        )
        self._build_parts({**(stateful or {}), **self.opt.stateful()})
        self._select_device()
        self._install_signal_handlers()
        self._handshake()

    def _build_parts(self, stateful: Mapping[str, Any]) -> None:
        """The trainer's parts (see :mod:`heterotrain_runtime.trainer`), and where it stands: in no world yet."""
        s = self.settings
        self.order = SampleOrder(self.dataset_len, s.seed)
        self.tracker = ThroughputTracker(min_interval=s.rebalance_min_interval)
        self.balance = Balancer(self.tracker)
        self.metrics = RuntimeMetrics(ENV_METRICS_PORT)
        self.reporter = Reporter(s, self.metrics, status_reporter(s.env))
        self.ckpt: CheckpointManager | None = None
        if s.checkpoint_dir:
            self.ckpt = CheckpointManager(
                s.checkpoint_dir,
                keep=s.checkpoint_keep,
                on_saved=self.reporter.checkpoint_saved,
                on_loaded=lambda secs: self.metrics.checkpoint_load_seconds.observe(secs),
                on_committed=self.reporter.checkpoint_committed,
            )
        self.state = TrainingState(
            self.model,
            self.optimizer,
            stateful,
            self.ckpt,
            self.tracker,
            seed=s.seed,
            dataset_len=self.dataset_len,
            global_batch_size=s.global_batch_size,
            name=s.name,
        )
        self.backend = usable_backend(s.backend)
        source: MembershipSource | None = source_from_env(s.env) if s.mode == "elastic" else None
        self.former = WorldFormer(
            s,
            source,
            stop_requested=lambda: self._stop_signal is not None,
            exit_if_stopped=self._exit_on_stop,
            teardown=self._teardown,
        )
        # the world this process is in
        self.membership: Membership | None = None
        self.rank, self.world_size = 0, 1
        self.micro_batch_cap: int | None = (
            s.max_micro_batch
        )  # the lower of the job's cap in force and the script's
        self.topo: Topology | None = None
        self._ckpt_pg: Any = None
        self._formed = False
        self._formation = ("", 0.0)
        # the step
        self._stop_signal: int | None = None
        self._last_commit: float | None = None
        self._last_ckpt_time = time.monotonic()
        self.gsync = GradientSync(list(self.model.parameters()))
        self.sample_log = SampleLog(s.sample_log_dir, s.name) if s.sample_log_dir else None
        # liveness and progress, told to rank 0 and by rank 0 to the job's status (trainer/health.py)
        self.health = Health(s)
        self.liveness = self.health.liveness

    # ------------------------------------------------------------------ public
    @property
    def step(self) -> int:
        """Committed steps so far."""
        return self.state.step

    @property
    def cursor(self) -> Any:
        return self.state.cursor

    @property
    def split(self) -> list[int]:
        """Every rank's share of the global batch, in rank order."""
        return self.state.split

    @property
    def global_batch_size(self) -> int:
        return self.settings.global_batch_size

    @property
    def pod(self) -> str:
        return self.settings.pod

    @property
    def name(self) -> str:
        """This process's name in the world (``<pod>:<local rank>`` when its pod runs several)."""
        return self.settings.name

    @property
    def mode(self) -> str:
        return self.settings.mode

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
        s = self.settings
        epoch, start, stop = self.cursor.step_span(self.dataset_len, s.global_batch_size, s.drop_last)
        count = stop - start
        sizes = self._sizes(count)
        a, b = cut_ranges(sizes)[self.rank]
        return epoch, self.order.slice(epoch, start + a, start + b), count

    def train_step(self, fn: Callable[[Any], torch.Tensor]) -> StepResult:
        """One committed step (retried on a new world after a peer failure)."""
        if not self._formed:
            self._form(min_epoch=0)
        while True:
            assert self.membership is not None
            self.liveness.enter(STEP, self.membership.epoch, self.rank)
            try:
                result, control = self._step_once(fn)
            except CommFailure as e:
                self._on_failure(e)
                continue
            val_loss = None
            try:
                val_loss = self._after_step(control)
            except CommFailure as e:
                self._on_failure(e)
            self.liveness.enter(OUTSIDE)
            return result if val_loss is None else dataclasses.replace(result, val_loss=val_loss)

    def evaluate(self, evaluation: Evaluation) -> float:
        """Run ``evaluation`` now (collective: every rank, after the same step); its mean loss.

        Safe after the training loop; inside it, give the trainer ``evaluation=`` instead (a new
        member joins at a step boundary and would meet a step where its peers evaluate).
        """
        if not self._formed:
            self._form(min_epoch=0)
        while True:
            try:
                return self._evaluate(evaluation)
            except CommFailure as e:
                self._on_failure(e)

    def save_checkpoint(self, asynchronous: bool | None = None) -> None:
        """Collective: every rank calls it at the same step."""
        if self.ckpt is None:
            return
        with comm():
            self._save(self.settings.checkpoint_async if asynchronous is None else asynchronous)

    def finish(self, final_checkpoint: bool = True) -> None:
        """Final checkpoint, wait for saves in flight, leave the process group."""
        if self._formed and final_checkpoint and self.ckpt is not None:
            try:
                self.save_checkpoint(asynchronous=False)
            except CommFailure as e:
                log.warning("final checkpoint failed: %s", e)
                drop_frames(e)  # its frames hold the groups: peers blocked on them learn at once that we left
        if self.ckpt is not None:
            self.ckpt.wait(raise_errors=False)
        self._teardown()
        self.health.stop()
        self.reporter.flush()
        if self.sample_log is not None:
            self.sample_log.close()

    # ----------------------------------------------------------------- process
    def _select_device(self) -> None:
        """Bind this process to its local accelerator before any collective (best effort)."""
        local = self.settings.local_rank
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
        path = self.settings.handshake_file
        if path and self.mode == "elastic":
            atomic_write(path, json.dumps({"pid": os.getpid(), "handlesEpochs": True}).encode())

    def _exit_on_stop(self) -> None:
        if self._stop_signal is not None:
            log.info("%s: stopping (signal %d) outside a world", self.name, self._stop_signal)
            if self.ckpt is not None:
                self.ckpt.wait(raise_errors=False)
            raise SystemExit(128 + self._stop_signal)

    # ---------------------------------------------------------------- forming
    def _teardown(self) -> None:
        if self.ckpt is not None:
            self.ckpt.wait(timeout=self.settings.heartbeat + 5, raise_errors=False)
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        if self.ckpt is not None:
            self.ckpt.release_group()
        # the last references: gloo closes a group's sockets only when it is freed, and
        # peers blocked on it learn that we left only then
        self.topo, self._ckpt_pg, self._formed = None, None, False

    def _form(self, min_epoch: int) -> None:
        self.liveness.enter(FORMING, min_epoch)
        if self.mode == "single":
            world = self.former.form_single()
            if not self.state.has_state:
                self.state.restore_single()
            self._enter(world)
        elif self.mode == "static":
            self.former.form_static(self._info, self._setup_world)
        else:
            self.former.form_elastic(min_epoch, self._info, self._setup_world)
        if self.membership is not None:
            self.liveness.enter(OUTSIDE, self.membership.epoch, self.rank)

    def _info(self) -> Info:
        latest = self.ckpt.latest() if self.ckpt is not None else None
        return {
            "name": self.name,
            "type": self.settings.accelerator,
            "backend": self.backend,
            "weight": self.settings.weight,
            "precision": self.precision.compute,
            "has_state": self.state.has_state,
            "step": self.step,
            "ckpt_step": latest.step if latest is not None else None,
            "ema": dict(self.tracker.ema),
            "fid": uuid.uuid4().hex,
            "ftime": time.time(),
        }

    def _setup_world(self, world: FormedWorld) -> None:
        """A world formed: every rank takes the same tracker and the newest state, then splits the batch."""
        # Every rank computes the split (and so its slice of each batch) from its own tracker: the trackers
        # must agree, or slices leave gaps or overlap.  They agree after each committed step (the rates ride
        # the all-reduce), but a step whose collective failed had already measured each rank's own speed.
        # Everybody takes rank 0's; a restore below then loads the same tracker on every rank.
        self.tracker.ema = dict(world.infos[0]["ema"])
        self.opt.agree_on_scaling([i["precision"] for i in world.infos])
        self.membership, self.rank, self.world_size = world.membership, world.rank, world.world_size
        self.topo, self._ckpt_pg = world.topo, world.checkpoint_group
        if self.ckpt is not None:
            self.ckpt.rebind(self._ckpt_pg, world.rank, world.world_size)
            self.ckpt.tidy()  # no save is in flight anywhere while a world forms
        self.state.restore_world(world.infos, world.rank, self._names())
        self.reporter.formed(self.state.current_record(), world.rank)
        self._enter(world)
        self.balance.restart()
        self.metrics.membership_epoch.set(world.membership.epoch)
        self.metrics.local_batch_size.set(self.local_batch_size)
        if world.rank == 0 and world.topo is not None:
            m = world.membership
            log.info(
                "formed epoch %d: world %d, pools %s, split %s, step %d",
                m.epoch,
                m.world_size,
                {world.infos[p[0]]["type"]: len(p) for p in world.topo.pools},
                self.split,
                self.step,
            )

    def _enter(self, world: FormedWorld) -> None:
        """This process is in ``world`` from now on: its batch split, its micro-batch cap, its formation id."""
        self.membership, self.rank, self.world_size = world.membership, world.rank, world.world_size
        self.topo = world.topo
        caps = [world.membership.processes[world.rank].max_micro_batch, self.settings.max_micro_batch]
        self.micro_batch_cap = min((c for c in caps if c is not None), default=None)
        self._set_split()
        self._formation = world.formation
        self._formed = True

    def _names(self) -> list[str]:
        """Every process's name, in rank order."""
        return [p.name for p in self.membership.processes] if self.membership else []

    def _set_split(self) -> None:
        m = self.membership
        assert m is not None
        if self.settings.policy == "equal":
            weights = [1.0] * m.world_size
        else:
            weights = self.tracker.estimates([p.name for p in m.processes], [p.weight for p in m.processes])
        self.state.split = split_batch(self.global_batch_size, weights)

    def _sizes(self, count: int) -> list[int]:
        """Every rank's share of a step of ``count`` samples (fewer than a global batch at an epoch's end)."""
        return self.split if count == self.global_batch_size else split_batch(count, self.split)

    # ------------------------------------------------------------------ step
    def _batch(self, indices: Sequence[int]) -> Any:
        return collate_samples(self.dataset, indices, self.collate_fn)

    def _device_type(self) -> str:
        """Where the model computes (for autocast)."""
        p = next(iter(self.model.parameters()), None)
        return p.device.type if p is not None else "cpu"

    def _compute(self, fn: Callable[[Any], torch.Tensor], indices: Sequence[int]) -> float:
        """Forward and backward on this rank's slice, in micro-batches of at most its cap
        (:mod:`heterotrain_runtime.trainer.accumulate`); its mean loss (0 on an empty slice)."""
        self.optimizer.zero_grad(set_to_none=True)
        if not indices:
            return 0.0
        try:
            device = self._device_type()

            def forward(batch: Any) -> torch.Tensor:
                with self.precision.autocast(device):  # the forward pass only: backward follows its casts
                    return fn(batch)

            value = forward_backward(forward, self._batch, indices, self.micro_batch_cap, self.opt.backward)
            wait_for_device(self.model)  # the step's compute, measured: not only its launch
        except OutOfMemory as e:
            self._out_of_memory(e)
        return value

    def _out_of_memory(self, e: OutOfMemory) -> NoReturn:
        """Leave with EXIT_OUT_OF_MEMORY: the operator lowers this type's cap and the world re-forms."""
        log.error(
            "%s: %s; exiting with %d so that the %s cap is lowered",
            self.name,
            e,
            EXIT_OUT_OF_MEMORY,
            self.settings.accelerator,
        )
        print(f"OutOfMemoryError: {e}", file=sys.stderr, flush=True)  # the container's termination message
        if self.ckpt is not None:
            self.ckpt.wait(raise_errors=False)
        raise SystemExit(EXIT_OUT_OF_MEMORY)

    def _report_to_world(self, loss: float, n_local: int, count: int) -> ControlVector:
        """This rank's control vector (see :mod:`heterotrain_runtime.trainer.control`)."""
        assert self.membership is not None
        now = time.monotonic()
        s = self.settings
        first = self.rank == 0
        report = RankReport(
            new_epoch=self.former.newer_epoch(self.membership.epoch),
            stop=self._stop_signal is not None,
            checkpoint_due=first
            and s.checkpoint_interval_seconds > 0
            and now - self._last_ckpt_time >= s.checkpoint_interval_seconds,
            rebalance_due=first and self.balance.due(),
            loss=loss * n_local / count,
            rate=self.tracker.ema.get(self.name, 0.0),
            step=self.step,
            overflow=self.opt.local_overflow(),
            members_leave=self.former.drops_members(self.membership),
        )
        return ControlVector.of_rank(self.world_size, self.rank, report)

    def _sync(self, control: ControlVector, scale: float) -> ControlVector:
        """Sum the gradients (scaled) and the control vector over the world; one collective when they fit."""
        with comm():
            if self.gsync.carries_control():
                summed = self.gsync.sync(self.topo, scale=scale, control=control.tensor)
                assert summed is not None
                total = control.summed(summed)
            else:
                if self.world_size > 1:
                    dist.all_reduce(control.tensor, group=self.topo.world_group if self.topo else None)
                self.gsync.sync(self.topo, scale=scale)
                total = control
            if not total.agrees_on(self.step):
                raise RuntimeError(f"ranks disagree on the step: {total.steps}")
        return total

    def _step_once(self, fn: Callable[[Any], torch.Tensor]) -> tuple[StepResult, ControlVector]:
        assert self.membership is not None
        t_start = time.perf_counter()
        data_epoch, indices, count = self.next_indices()
        n_local = len(indices)
        fid, ftime = self._formation
        if self.sample_log is not None:
            self.sample_log.attempt(
                fid, ftime, self.step + 1, data_epoch, self.rank, self.world_size, indices
            )
        loss = self._compute(fn, indices)
        compute_s = time.perf_counter() - t_start
        self.metrics.compute_seconds.observe(compute_s)
        self.balance.measured(self.name, n_local, compute_s)
        total = self._sync(self._report_to_world(loss, n_local, count), scale=n_local / count)
        update = self.opt.apply(total.overflow)  # clip, the user's hook, optimizer, scheduler, loss scale
        # ---- committed
        return self._commit(total, update, n_local, count, t_start), total

    def _commit(
        self, total: ControlVector, update: Update, n_local: int, count: int, t_start: float
    ) -> StepResult:
        assert self.membership is not None
        s = self.settings
        self.state.step += 1
        self.cursor.advance(self.dataset_len, s.global_batch_size, s.drop_last)
        if self.sample_log is not None:
            self.sample_log.commit(*self._formation, self.step)
        commit_t = time.perf_counter()
        step_s = commit_t - (self._last_commit if self._last_commit is not None else t_start)
        self._last_commit = commit_t
        for name, rate in zip(self._names(), total.rates, strict=True):
            if rate > 0:
                self.tracker.ema[name] = rate
        rate = self.tracker.ema.get(self.name, 0.0)
        self.liveness.committed(self.step, rate, n_local, step_s, count / step_s if step_s > 0 else 0.0)
        result = StepResult(
            step=self.step,
            loss=total.loss,
            local_batch=n_local,
            global_batch=count,
            step_seconds=step_s,
            samples_per_second=count / step_s if step_s > 0 else math.inf,
            epoch=self.membership.epoch,
            world_size=self.world_size,
            lr=update.lr,
            grad_norm=update.grad_norm,
            applied=update.applied,
            rates=tuple(total.rates),
        )
        self.state.record = self.reporter.step(
            result, self._sizes(count), self.membership, self.rank, self.cursor.data_epoch
        )
        return result

    # --------------------------------------------------------- step boundary
    def _after_step(self, control: ControlVector) -> float | None:
        """Checkpoint, rebalance, evaluation, membership change, stop: at the step boundary, same on
        every rank; the evaluation's loss when one was due."""
        assert self.membership is not None
        s = self.settings
        by_steps = s.checkpoint_interval_steps and self.step % s.checkpoint_interval_steps == 0
        # A new epoch without some member is about to re-form the world.  Every rank of this one has just
        # summed the step, so all are here: they checkpoint together first.  A member the operator stopped
        # (a preemption, a smaller plan, a deleted pod) may get its SIGTERM after its peers read the new
        # epoch, and would otherwise leave without the last step it trained in a checkpoint.
        leaving = control.members_leave and not control.stop  # a stop checkpoints in _on_stop
        if self.ckpt is not None and (control.checkpoint_due or by_steps or leaving):
            with comm():
                self._save(s.checkpoint_async)
        if control.rebalance_due and s.policy != "equal":
            self._maybe_rebalance(control.rates)
        val_loss = None
        if self.evaluation is not None and self.evaluation.due(self.step):
            val_loss = self._evaluate(self.evaluation)
            self.reporter.evaluated(self.step, val_loss, self.rank)
        if control.stop:
            self._on_stop()
        elif control.new_epoch:
            self.metrics.reformations.labels(reason="epoch").inc()
            epoch = self.membership.epoch
            self._teardown()
            self._form(min_epoch=epoch + 1)
        return val_loss

    def _evaluate(self, ev: Evaluation) -> float:
        """This rank's share of ``ev``, summed over the world (raises CommFailure)."""
        was_training = self.model.training
        self.model.eval()
        try:
            sums = local_eval_sums(
                ev.fn,
                ev.dataset,
                eval_share(ev.size(), self.split, self.rank),
                ev.batch_size,
                ev.collate_fn if ev.collate_fn is not None else self.collate_fn,
                lambda: self.precision.autocast(self._device_type()),
            )
        finally:
            self.model.train(was_training)
        with comm():
            if self.world_size > 1:
                dist.all_reduce(sums, group=self.topo.world_group if self.topo else None)
        return float(sums[0] / sums[1]) if sums[1] > 0 else math.nan

    def _on_failure(self, e: CommFailure) -> None:
        if self.mode != "elastic":
            raise e.__cause__ or e  # torchrun & co restart the whole world
        assert self.membership is not None
        log.warning("%s: collective failed after step %d (%s); re-forming", self.name, self.step, e)
        self.metrics.reformations.labels(reason="failure").inc()
        drop_frames(e)
        self._teardown()
        self._form(min_epoch=self.membership.epoch)

    def _maybe_rebalance(self, rates: list[float]) -> None:
        new = self.balance.proposal(self.global_batch_size, self.split, rates)
        if new is not None:
            if self.rank == 0:
                speeds = [round(r, 1) for r in rates]
                log.info("rebalance at step %d: %s -> %s (samples/s %s)", self.step, self.split, new, speeds)
            self.state.split = new
            self.metrics.local_batch_size.set(self.local_batch_size)

    def _on_stop(self) -> None:
        """Someone was asked to stop: checkpoint together, then the signalled ranks exit."""
        if self.ckpt is not None:
            try:
                self.save_checkpoint(asynchronous=False)
            except CommFailure as e:
                log.warning("checkpoint on stop failed: %s", e)
                drop_frames(e)  # its frames hold the groups: peers blocked on them learn at once that we left
        if self._stop_signal is not None:
            sig = self._stop_signal
            self._teardown()
            self.health.stop()
            self.reporter.flush()  # the report of the checkpoint reaches the job's status before we exit
            log.info("%s: checkpointed at step %d; exiting on signal %d", self.name, self.step, sig)
            raise SystemExit(128 + sig)
        assert self.membership is not None
        epoch = self.membership.epoch
        self._teardown()
        if self.mode != "elastic":
            raise SystemExit(0)
        self._form(min_epoch=epoch + 1)  # the world lost a member: wait for the next epoch

    def _save(self, asynchronous: bool) -> None:
        assert self.ckpt is not None
        before = self.liveness.phase
        self.liveness.enter(CHECKPOINT)
        self.ckpt.wait(raise_errors=False)
        self.ckpt.save(self.step, self.state.dcp_state(), self.state.meta(self._names()), asynchronous)
        self._last_ckpt_time = time.monotonic()
        self.liveness.enter(before)
