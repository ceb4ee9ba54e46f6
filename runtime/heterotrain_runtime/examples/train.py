#!/usr/bin/env python
"""Example HeteroTrain job: an MLP regression on a synthetic, seeded dataset.

Runs anywhere the SDK does:

* local mode:   heterotrain run --local --pools nvidia-a100:2,huawei-ascend-910b:1 examples/train.py --steps 200
* a pod:        python -m heterotrain_runtime launch -- python -m heterotrain_runtime.examples.train
* plain:        python examples/train.py --steps 50      (one process)
* torchrun:     torchrun --nproc-per-node 2 examples/train.py

Steps, batch size and checkpoint directory come from the command line or from
the environment (HETEROTRAIN_TOTAL_STEPS, HETEROTRAIN_GLOBAL_BATCH_SIZE,
HETEROTRAIN_CHECKPOINT_DIR).  Prints progress on rank 0 and exits 0 when done.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import heterotrain_contract as hc
from heterotrain_runtime import envvars
from heterotrain_runtime.sdk import ElasticTrainer


class SyntheticRegression:
    """``y = tanh(x @ w1) @ w2 + noise``, generated from ``seed`` (identical in every process)."""

    def __init__(self, n: int, dim: int = 16, seed: int = 1234) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w1 = torch.randn(dim, 32, generator=g) / dim**0.5
        w2 = torch.randn(32, 1, generator=g) / 32**0.5
        self.y = torch.tanh(self.x @ w1) @ w2 + 0.01 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def build_model(dim: int = 16, hidden: int = 64, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, 1),
    )


def build_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def loss_fn(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], activation_mb: float = 0.0
) -> torch.Tensor:
    """The mean loss over the local batch.  ``activation_mb`` > 0 makes the forward pass hold that many
    MB per sample (a wide activation, as a large model's would), so that memory grows with the
    micro-batch; the loss and its gradient stay the same."""
    x, y = batch
    out = model(x)
    if activation_mb > 0:
        width = max(1, int(activation_mb * 2**20 / 4))
        wide = out.expand(-1, width).sin()  # x.shape[0] x width floats, written
        out = out + 0.0 * wide.mean(dim=1, keepdim=True)
    return F.mse_loss(out, y)


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=int(env.get(envvars.ENV_TOTAL_STEPS, "100")))
    p.add_argument("--global-batch-size", type=int, default=int(env.get(hc.ENV_GLOBAL_BATCH_SIZE, "64")))
    p.add_argument("--dataset-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--checkpoint-dir", default=env.get(hc.ENV_CHECKPOINT_DIR))
    p.add_argument("--checkpoint-interval", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument(
        "--activation-mb-per-sample",
        type=float,
        default=0.0,
        help="memory the forward pass holds per sample (MB): a large model's footprint, for memory tests",
    )
    args = p.parse_args(argv)
    if "OMP_NUM_THREADS" not in env:
        torch.set_num_threads(1)

    dataset = SyntheticRegression(args.dataset_size)
    model = build_model(seed=args.seed)
    optimizer = build_optimizer(model, args.lr)
    trainer = ElasticTrainer(
        model,
        optimizer,
        dataset,
        global_batch_size=args.global_batch_size,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_interval_steps=args.checkpoint_interval,
        seed=args.seed,
        log_every=args.log_every,
        total_steps=args.steps,
    )
    while trainer.step < args.steps:
        trainer.train_step(lambda batch: loss_fn(model, batch, args.activation_mb_per_sample))
    trainer.finish()
    if trainer.is_rank0:
        print(f"[train.py] done: {trainer.step} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
