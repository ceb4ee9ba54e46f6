#!/usr/bin/env python
"""The GPT example as a plain PyTorch DDP script, plus HeteroTrain's two lines (marked below).

No SDK: ``init_process_group``, ``DistributedDataParallel``, a ``DataLoader``, AdamW, clipping,
the warm-up + cosine schedule, ``torch.autocast`` and ``GradScaler``, and a checkpoint of its own
(rank 0 writes model, optimizer, scheduler, scaler and step to ``<checkpoint-dir>/gpt-ddp.pt``
every ``--checkpoint-interval`` steps and at the end; every rank resumes from it).  The two lines
make its updates those of one process over the same global batches, whatever the split:

* torchrun:    torchrun --nproc-per-node 3 examples/gpt_ddp.py --checkpoint-dir /tmp/ckpt
* a pod:       python -m heterotrain_runtime launch -- python -m heterotrain_runtime.examples.gpt_ddp
               (the launcher sets the torchrun environment and restarts the script on a new world)

Arguments are those of :mod:`heterotrain_runtime.examples.gpt`; ``--weights 1,2,3`` gives the
ranks' shares of the batch under torchrun (in a HeteroTrainJob the launcher's split is used).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from heterotrain_runtime.ddp import GlobalBatchSampler, exact_mean_hook
from heterotrain_runtime.examples import gpt
from heterotrain_runtime.examples.gpt_model import collate, lm_loss, threads_from_env

CHECKPOINT = "gpt-ddp.pt"


def load(directory: str | None) -> dict[str, Any] | None:
    path = os.path.join(directory, CHECKPOINT) if directory else None
    if path is None or not os.path.exists(path):
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def save(directory: str, state: dict[str, Any]) -> None:
    """Atomically: a process stopped mid-write leaves the previous checkpoint."""
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{CHECKPOINT}.{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(directory, CHECKPOINT))


def main(argv: list[str] | None = None) -> int:
    p = gpt.parser()
    p.add_argument("--weights", default=None, help="every rank's share of the batch, e.g. 1,2,3")
    p.add_argument(
        "--stop-at", type=int, default=None, help="checkpoint and exit after this step (a later run resumes)"
    )
    args = p.parse_args(argv)
    threads_from_env()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    model, optimizer, scheduler, train, val, _digest = gpt.build(args)
    step = 0
    resumed = load(args.checkpoint_dir)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        step = resumed["step"]
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids) if distributed else None
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None

    # --- HeteroTrain: the two lines -------------------------------------------------------------
    sampler = GlobalBatchSampler(
        train, args.global_batch_size, start_step=step, seed=args.seed, weights=weights
    )
    if ddp is not None:
        ddp.register_comm_hook(sampler, exact_mean_hook)
    # ----------------------------------------------------------------------------------------------

    loader: DataLoader[Any] = DataLoader(train, batch_sampler=sampler, collate_fn=collate)  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler(
        device.type, enabled=sampler.loss_scaling
    )  # every rank scales if any runs fp16
    if resumed is not None and resumed["scaler"]:
        scaler.load_state_dict(resumed["scaler"])
    if rank == 0:
        print(
            f"[gpt-ddp] start at step {step}, split {sampler.split}, precision {sampler.precision.hint}",
            flush=True,
        )
    while step < args.steps:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            with sampler.precision.autocast(device.type):
                loss = lm_loss(ddp if ddp is not None else model, batch)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.unscale_(optimizer)
            if args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            last = step in (args.steps, args.stop_at)
            _after_step(
                args, rank, step, float(loss.detach()), model, optimizer, scheduler, scaler, val, last
            )
            if last:
                break
        if step == args.stop_at:
            break
    if distributed:
        dist.barrier()  # rank 0's last checkpoint is written before anyone exits
        dist.destroy_process_group()
    return 0


def _after_step(args: Any, rank: int, step: int, loss: float, model: Any, optimizer: Any, scheduler: Any,
                scaler: Any, val: Any, last: bool) -> None:  # fmt: skip
    """Rank 0: log, evaluate, checkpoint."""
    if rank != 0:
        return
    if args.log_every and step % args.log_every == 0:
        print(f"[gpt-ddp] step {step} loss {loss:.4f} lr {scheduler.get_last_lr()[0]:.2e}", flush=True)
    if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
        with torch.no_grad():
            n = min(args.eval_samples, len(val))
            vl = float(lm_loss(model, val.__getitems__(list(range(n)))))
        print(f"[gpt-ddp] step {step} val_loss {vl:.4f}", flush=True)
    interval = args.checkpoint_interval or 0
    if args.checkpoint_dir and ((interval and step % interval == 0) or last):
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
        }
        save(args.checkpoint_dir, state)


if __name__ == "__main__":
    sys.exit(main())
