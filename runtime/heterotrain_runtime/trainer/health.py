"""The trainer's health channel, wired: its liveness, the heartbeat to rank 0, rank 0's progress reports.

See :mod:`.liveness` (every rank) and :mod:`.progress` (rank 0, and the backup reporter).  Elastic mode
only: a static (torchrun) or single-process trainer has no membership to report to.  Reports go into the
job's ``status.progress`` (in a pod of a HeteroTrainJob) or, out of a cluster, into the JSON file named by
``HETEROTRAIN_STATUS_FILE`` (local mode, tests); with neither, ranks still beat but nobody reports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from heterotrain_runtime.checkpoint import atomic_write
from heterotrain_runtime.membership import FileSource, source_from_env, status_reporter

from .liveness import Heartbeat, LatestMembership, Liveness, silence_timeout
from .progress import Aggregator, Limits, Sink, Writer, rank0_silent_report
from .settings import TrainerSettings

#: The field manager of status.progress: the runtime's own, apart from the operator's and from the one of
#: status.lastCheckpoint (a server-side apply drops the fields its manager owned and left out).
PROGRESS_FIELD_MANAGER = "heterotrain-progress"


def merge_into_file(path: str, fields: Mapping[str, Any]) -> None:
    """Set ``fields`` in the JSON object stored at ``path`` (written atomically)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = dict(json.load(f))
    except (FileNotFoundError, ValueError):
        data = {}
    data.update(fields)
    atomic_write(path, json.dumps(data, indent=1).encode())


def progress_sink(settings: TrainerSettings) -> Sink | None:
    reporter = status_reporter(settings.env)
    if reporter is not None:
        return lambda rec: reporter.apply_status({"progress": rec}, field_manager=PROGRESS_FIELD_MANAGER)
    path = settings.status_file
    if path:
        return lambda rec: merge_into_file(path, {"progress": rec})
    return None


def limits(settings: TrainerSettings) -> Limits:
    hb = settings.heartbeat
    return Limits(
        silence=silence_timeout(hb),
        heartbeat=hb,
        outside=max(hb, settings.checkpoint_timeout),
        startup=max(60.0, 4 * hb),
    )


class Health:
    """Starts the threads (elastic mode); ``liveness`` is what the training thread updates."""

    def __init__(self, settings: TrainerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        s = settings
        self.liveness = Liveness(
            s.name, s.pod, s.node, s.accelerator, s.process_restarts, s.last_exit_code, clock, s.local_rank
        )
        self._stops: list[Callable[[], None]] = []
        if s.mode != "elastic":
            return
        lim = limits(s)
        sink = progress_sink(s)
        backup = None
        if sink is not None:
            writer = Writer(sink)
            agg = Aggregator(
                s.name,
                self.liveness.beat,
                self._membership(s),
                writer,
                lim,
                global_batch=s.global_batch_size,
                total_steps=s.total_steps,
            )
            agg.start()
            self._stops.append(agg.stop)

            def backup(m: Any, silent: float) -> None:
                writer.put(rank0_silent_report(m, self.liveness.beat(), silent, now=time.time()))

        hb = Heartbeat(self.liveness, self._membership(s), lim.silence, backup)
        hb.start()
        self._stops.append(hb.stop)

    @staticmethod
    def _membership(s: TrainerSettings) -> LatestMembership:
        """A reader of its own for each thread (a source is not shared between threads)."""
        source = source_from_env(s.env)
        return LatestMembership(source, 0.2 if isinstance(source, FileSource) else 5.0)

    def stop(self) -> None:
        for stop in self._stops:
            stop()
        self._stops.clear()
