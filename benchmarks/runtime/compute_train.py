#!/usr/bin/env python
"""A training job whose step is real compute, for the runtime benchmark and the emulation tests.

The example job's MLP is so small that a step is mostly fixed overhead; here a
hidden layer is applied ``--depth`` times (weights shared), so the compute per
sample grows with the depth while the gradient to all-reduce does not.  Same
data (the example's seeded synthetic regression), SDK and arguments as
``examples/train.py``, plus:

* ``--rate-dir DIR``: every rank appends one JSON line per step to
  ``DIR/<process name>.jsonl`` (``<pod>:<local rank>`` in a pod of several processes): ``{"step", "samples", "compute_seconds", "epoch"}``,
  the compute measured from the start of the forward pass to the end of the
  backward pass (a hook on the first layer's weight, the last gradient to be
  accumulated), i.e. what the device does, without the waits for its peers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

import heterotrain_contract as hc
from heterotrain_runtime import envvars
from heterotrain_runtime.examples.train import SyntheticRegression
from heterotrain_runtime.sdk import ElasticTrainer


class DeepShared(torch.nn.Module):
    def __init__(self, dim: int, hidden: int, depth: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inp = torch.nn.Linear(dim, hidden)
        self.mid = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for _ in range(self.depth):
            h = torch.tanh(self.mid(h)) / 2 + h / 2
        out: torch.Tensor = self.out(h)
        return out


class ComputeClock:
    """Forward start -> the first layer's weight gradient accumulated (the end of backward)."""

    def __init__(self, model: DeepShared) -> None:
        self.started = 0.0
        self.ended: float | None = None
        self.samples = 0
        model.inp.weight.register_post_accumulate_grad_hook(self._done)  # type: ignore[no-untyped-call]

    def _done(self, _p: torch.Tensor) -> None:
        self.ended = time.perf_counter()

    def start(self, samples: int) -> None:
        self.started, self.ended, self.samples = time.perf_counter(), None, samples


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=int(env.get(envvars.ENV_TOTAL_STEPS, "100")))
    p.add_argument("--global-batch-size", type=int, default=int(env.get(hc.ENV_GLOBAL_BATCH_SIZE, "64")))
    p.add_argument("--dataset-size", type=int, default=4096)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--checkpoint-dir", default=env.get(hc.ENV_CHECKPOINT_DIR))
    p.add_argument("--checkpoint-interval", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--rate-dir", default=None, help="per-rank compute records go to DIR/<pod>.jsonl")
    args = p.parse_args(argv)
    if "OMP_NUM_THREADS" not in env:
        torch.set_num_threads(1)

    dataset = SyntheticRegression(args.dataset_size, dim=args.dim)
    model = DeepShared(args.dim, args.hidden, args.depth, args.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    clock = ComputeClock(model)
    trainer = ElasticTrainer(
        model,
        optimizer,
        dataset,
        global_batch_size=args.global_batch_size,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_interval_steps=args.checkpoint_interval,
        seed=args.seed,
        log_every=args.log_every,
    )

    def loss(batch: Any) -> torch.Tensor:
        x, y = batch
        clock.start(len(x))
        return F.mse_loss(model(x), y)

    rates = None
    if args.rate_dir:
        os.makedirs(args.rate_dir, exist_ok=True)
        rates = open(os.path.join(args.rate_dir, f"{trainer.name}.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
    while trainer.step < args.steps:
        clock.ended = None
        trainer.train_step(loss)
        if rates is not None and clock.ended is not None:
            rec = {
                "step": trainer.step,
                "samples": clock.samples,
                "compute_seconds": clock.ended - clock.started,
                "epoch": trainer.membership.epoch if trainer.membership else 0,
            }
            rates.write(json.dumps(rec) + "\n")
            rates.flush()
    trainer.finish()
    if trainer.is_rank0:
        print(f"[compute_train.py] done: {trainer.step} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
