#!/usr/bin/env python
"""One training process of ``benchmarks/gpu/run.py``: a residual MLP trained with the SDK, on the GPU
(the GPU pool's process) or the CPU (the CPU pool's), then two checkpoints (sync, async) timed.

Every sample is made on the process's own device from its index (no input pipeline to measure).  After
training it measures its own compute rate at its final share (forward and backward, synchronized, no
communication) and the training pause of a synchronous and of an asynchronous checkpoint of its state
(on the GPU: saved from GPU memory), and writes them to ``<results>/<process name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import heterotrain_contract as hc
from heterotrain_runtime.sdk import ElasticTrainer


class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 2 * width)
        self.down = torch.nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


def build_model(width: int, depth: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[Block(width) for _ in range(depth)], torch.nn.Linear(width, 1))


def batch_of(indices: list[int], width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``i``'s features and target, made on ``device`` from ``i`` alone (the same on any device)."""
    idx = torch.as_tensor(indices, dtype=torch.float32, device=device)
    freq = torch.arange(1, width + 1, dtype=torch.float32, device=device) / width
    x = torch.sin(idx[:, None] * 0.001 + freq[None, :] * 6.283)
    return x, torch.tanh(x[:, ::2].sum(dim=1, keepdim=True) * 0.1)


def compute_rate(model: torch.nn.Module, share: int, width: int, device: torch.device, repeats: int) -> float:
    """Samples/s of forward and backward alone at ``share`` samples (the device synchronized)."""
    if share <= 0:
        return 0.0
    x, y = batch_of(list(range(share)), width, device)

    def once() -> None:
        model.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    once()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    return share * repeats / (time.perf_counter() - t0)


def timed_save(trainer: ElasticTrainer, asynchronous: bool) -> float:
    """The training pause of one checkpoint (the async one is written on in the background)."""
    t0 = time.perf_counter()
    trainer.save_checkpoint(asynchronous=asynchronous)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--global-batch-size", type=int, required=True)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--gpu-type", required=True, help="the accelerator type of the GPU pool")
    p.add_argument("--gpu-device", default="cuda:0", help="the GPU pool's torch device")
    p.add_argument("--cpu-threads", type=int, default=1)
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--rate-repeats", type=int, default=5)
    args = p.parse_args(argv)

    on_gpu = os.environ.get(hc.ENV_ACCELERATOR) == args.gpu_type
    device = torch.device(args.gpu_device if on_gpu else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # the GPU's fast fp32 path, as a training job would
    else:
        torch.set_num_threads(args.cpu_threads)
    model = build_model(args.width, args.depth).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = ElasticTrainer(
        model,
        optimizer,
        dataset_len=1 << 30,
        global_batch_size=args.global_batch_size,
        checkpoint_dir=args.checkpoint_dir,
        log_every=10,
    )

    def loss(indices: list[int]) -> torch.Tensor:
        x, y = batch_of(indices, args.width, device)
        return F.mse_loss(model(x), y)

    while trainer.step < args.steps:
        trainer.train_step(loss)
    rate = compute_rate(model, trainer.local_batch_size, args.width, device, args.rate_repeats)
    sync_pause = timed_save(trainer, asynchronous=False)
    trainer.train_step(loss)  # a new step: never two saves into one step's directory
    async_pause = timed_save(trainer, asynchronous=True)
    state_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    record: dict[str, Any] = {
        "name": trainer.name,
        "type": os.environ.get(hc.ENV_ACCELERATOR),
        "device": str(device),
        "rank": trainer.rank,
        "share": trainer.local_batch_size,
        "compute_samples_per_second": rate,
        "sync_checkpoint_pause_seconds": sync_pause,
        "async_checkpoint_pause_seconds": async_pause,
        "model_state_mb": state_mb,
    }
    trainer.finish(final_checkpoint=False)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{trainer.name}.json").write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
