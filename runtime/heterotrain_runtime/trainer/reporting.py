"""What a trainer tells the outside world: metrics, the progress file, the job's status, a log line."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heterotrain_contract import Membership
from heterotrain_runtime.metrics import RuntimeMetrics

from .settings import TrainerSettings

log = logging.getLogger("heterotrain.sdk")


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
    lr: float = 0.0  # the learning rate of the first param group used by this step
    grad_norm: float | None = None  # the global gradient norm before clipping (when clipping)
    applied: bool = True  # False: the (fp16) gradients overflowed and the optimizer skipped the step
    val_loss: float | None = None  # the trainer's evaluation, when one was due after this step
    rates: tuple[float, ...] = ()  # every rank's measured compute samples/s (averaged; 0 until measured)


class Reporter:
    """Reports steps and checkpoints; ``status`` reports into the job's status (None out of a cluster)."""

    def __init__(self, settings: TrainerSettings, metrics: RuntimeMetrics, status: Any) -> None:
        self.settings = settings
        self.metrics = metrics
        self.status = status
        self._sending: list[threading.Thread] = []

    def flush(self, timeout: float = 10.0) -> None:
        """Wait (up to ``timeout`` s) for the reports in flight: a process about to exit (a stop with a
        checkpoint) makes sure its checkpoint reached the job's status first."""
        deadline = time.monotonic() + timeout
        for t in self._sending:
            t.join(max(0.0, deadline - time.monotonic()))
        self._sending = [t for t in self._sending if t.is_alive()]

    def step(
        self, r: StepResult, sizes: Sequence[int], membership: Membership, rank: int, data_epoch: int
    ) -> dict[str, Any]:
        """Metrics on every rank; on rank 0 the progress file and, every ``log_every`` steps, a line.
        Returns the step's progress record, which every rank keeps (see :meth:`formed`)."""
        self.metrics.steps.inc()
        self.metrics.step_seconds.observe(r.step_seconds)
        pools: dict[str, float] = {}
        for mem, b in zip(membership.processes, sizes, strict=True):
            pools[mem.type] = pools.get(mem.type, 0.0) + b / r.step_seconds
        self.metrics.rank_samples_per_second.labels(rank=str(rank), pod=self.settings.name).set(
            r.local_batch / r.step_seconds
        )
        for t, sps in pools.items():
            self.metrics.pool_samples_per_second.labels(pool=t).set(sps)
        rec: dict[str, Any] = {
            "time": time.time(),
            "step": r.step,
            "loss": r.loss,
            "epoch": r.epoch,
            "world": r.world_size,
            "split": list(sizes),
            "types": [x.type for x in membership.processes],
            "step_seconds": r.step_seconds,
            "samples_per_second": r.samples_per_second,
            "pools": pools,
            "data_epoch": data_epoch,
            "lr": r.lr,
            "grad_norm": r.grad_norm,
            "applied": r.applied,
            "rates": list(r.rates),
        }
        if rank != 0:
            return rec
        if self.settings.progress_file:
            _append(self.settings.progress_file, rec)
        if self.settings.log_every and r.step % self.settings.log_every == 0:
            per_pool = " ".join(f"{t}={sps:.0f}/s" for t, sps in pools.items())
            print(
                f"[heterotrain] step {r.step} loss {r.loss:.4f} epoch {r.epoch} world {r.world_size} "
                f"split {list(sizes)} | {r.samples_per_second:.0f} samples/s ({per_pool})",
                file=sys.stdout,
                flush=True,
            )
        return rec

    def formed(self, rec: Mapping[str, Any] | None, rank: int) -> None:
        """A world formed with the state of the step of ``rec`` (None: a state with no record, a fresh
        start or a checkpoint).  Rank 0 makes the progress file end with a whole line (a rank 0 killed
        while writing leaves a part of one) and writes ``rec`` unless the file has it already: a step's
        collective can end on some ranks and fail on others as a world breaks, and the new world takes the
        newest state (``TrainingState.restore_world``), so a step the old rank 0 did not commit, or that
        died with it, is committed all the same.  The file holds every committed step once; such a late
        record says ``"late": true``."""
        path = self.settings.progress_file
        if rank != 0 or not path:
            return
        last, whole = _tail(path)
        late = rec is not None and last < int(rec["step"])
        if whole and not late:
            return
        with open(path, "a", encoding="utf-8") as f:
            if not whole:
                f.write("\n")
            if late:
                assert rec is not None
                f.write(json.dumps({**rec, "late": True}) + "\n")

    def evaluated(self, step: int, val_loss: float, rank: int) -> None:
        """Rank 0: a line with the evaluation's loss (every ``log_every``-th step's line shows the training loss)."""
        if rank == 0 and self.settings.log_every:
            print(
                f"[heterotrain] validation loss {val_loss:.4f} after step {step}", file=sys.stdout, flush=True
            )

    def checkpoint_committed(self, step: int, path: str) -> None:
        """Rank 0, once a checkpoint is complete: report it as the job's status.lastCheckpoint."""
        reporter = self.status
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

        t = threading.Thread(target=send, name=f"heterotrain-report-{step}", daemon=True)
        t.start()
        self._sending = [x for x in self._sending if x.is_alive()] + [t]

    def checkpoint_saved(self, kind: str, pause: float, total: float) -> None:
        self.metrics.checkpoint_save_seconds.labels(kind="pause").observe(pause)
        self.metrics.checkpoint_save_seconds.labels(kind="total").observe(total)


def _append(path: str, rec: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def _tail(path: str) -> tuple[int, bool]:
    """The step of the last whole record in a progress file (0: none), and whether the file ends with a
    whole line (or is empty)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            tail = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return 0, True
    for line in reversed(tail.splitlines()):
        try:
            return int(json.loads(line)["step"]), tail.endswith("\n")
        except (ValueError, KeyError, TypeError):
            continue  # the part of a line at the start of the tail, or one cut off at its end
    return 0, tail == "" or tail.endswith("\n")
