"""The training state of a trainer: the model, the optimizer, extra stateful objects and the progress
(step, data cursor, throughput tracker, batch split); checkpointed, restored, broadcast to new members."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from heterotrain_runtime.batching import DataCursor, ThroughputTracker
from heterotrain_runtime.checkpoint import CheckpointInfo, CheckpointManager, step_dirname

log = logging.getLogger("heterotrain.sdk")


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj


class TrainingState:
    """What every rank of a world must hold alike; ``has_state`` once it was restored or initialised."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        stateful: Mapping[str, Any],
        ckpt: CheckpointManager | None,
        tracker: ThroughputTracker,
        *,
        seed: int,
        dataset_len: int,
        global_batch_size: int,
        name: str,
    ) -> None:
        self.model, self.optimizer, self.stateful, self.ckpt = model, optimizer, dict(stateful), ckpt
        self.tracker = tracker
        self.seed, self.dataset_len, self.global_batch_size, self.name = (
            seed,
            dataset_len,
            global_batch_size,
            name,
        )
        self.step = 0
        self.cursor = DataCursor()
        self.split: list[int] = [global_batch_size]
        self.has_state = False
        self.record: dict[str, Any] | None = None  # the progress record of the last committed step

    def current_record(self) -> dict[str, Any] | None:
        """The progress record of the step this state is at (None: it has none, e.g. after a restore)."""
        rec = self.record
        return rec if rec is not None and rec["step"] == self.step else None

    # --- what is saved ----------------------------------------------------------------
    def dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": msd, "optim": osd}
        for k, v in self.stateful.items():
            state[f"extra.{k}"] = v.state_dict()
        return state

    def meta(self, names: Sequence[str]) -> dict[str, Any]:
        """The progress saved next to the state; ``names`` are the world's processes, in rank order."""
        return {
            "step": self.step,
            "cursor": self.cursor.to_dict(),
            "tracker": self.tracker.to_dict(),
            "split": list(self.split),
            "processes": list(names),
            "seed": self.seed,
            "dataset_len": self.dataset_len,
            "global_batch_size": self.global_batch_size,
        }

    def load_meta(self, meta: Mapping[str, Any]) -> None:
        self.step = int(meta["step"])
        self.cursor = DataCursor.from_dict(meta["cursor"])
        self.tracker.load_dict(meta.get("tracker", {}))

    # --- restore ------------------------------------------------------------------------
    def restore_single(self) -> None:
        """One process: the latest checkpoint, when newer than what it holds."""
        latest = self.ckpt.latest() if self.ckpt is not None else None
        if latest is not None and (not self.has_state or latest.step > self.step):
            self.load_checkpoint(latest.step)
        self.has_state = True

    def restore_world(self, infos: Sequence[Mapping[str, Any]], rank: int, names: Sequence[str]) -> None:
        """Make every rank hold the newest state: a peer's, the latest checkpoint's, or rank 0's."""
        steps = [i["step"] if i["has_state"] else None for i in infos]
        known = [s for s in steps if s is not None]
        mem_best = max(known) if known else None
        ck = infos[0]["ckpt_step"]
        if ck is not None and (mem_best is None or ck > mem_best):
            self.load_checkpoint(ck)
        elif mem_best is not None:
            if any(s != mem_best for s in steps):
                self.broadcast(steps.index(mem_best), rank, names)
        else:
            self.broadcast(0, rank, names)  # fresh start: everybody takes rank 0's initial weights
        self.has_state = True

    def load_checkpoint(self, step: int) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        assert self.ckpt is not None
        path = os.path.join(self.ckpt.root, step_dirname(step))
        state = self.dcp_state()
        marker = self.ckpt.load(state, CheckpointInfo(step, path, True))
        assert marker is not None
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        for k, v in self.stateful.items():
            v.load_state_dict(state[f"extra.{k}"])
        self.load_meta(marker["meta"])
        log.info("%s: restored step %d from %s", self.name, self.step, path)

    def broadcast(self, src: int, rank: int, names: Sequence[str]) -> None:
        """Rank ``src``'s state to every rank of the world (collective)."""
        payload: list[Any] = [None]
        if rank == src:
            payload[0] = {
                "model": to_cpu(self.model.state_dict()),
                "optim": to_cpu(self.optimizer.state_dict()),
                "extra": {k: to_cpu(v.state_dict()) for k, v in self.stateful.items()},
                "meta": self.meta(names),
                "record": self.record,
            }
        dist.broadcast_object_list(payload, src=src)
        if rank != src:
            p = payload[0]
            self.model.load_state_dict(p["model"])
            self.optimizer.load_state_dict(p["optim"])
            for k, v in self.stateful.items():
                v.load_state_dict(p["extra"][k])
            self.load_meta(p["meta"])
            self.record = p["record"]
