"""TEST SUPPORT: the GPT example at test size, and the single-process reference every distributed run
is held to (unit tests under tests/runtime and the e2e training tests).

The reference is a plain loop, independent of the SDK: the same global batches (the seeded sample
order and the data cursor), the mean loss over each whole global batch, one backward, clipping by
the global norm, AdamW, the warm-up + cosine schedule; bf16 autocast when asked.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import torch

from heterotrain_runtime.batching import DataCursor, SampleOrder
from heterotrain_runtime.examples import gpt
from heterotrain_runtime.examples.gpt_model import lm_loss
from heterotrain_runtime.precision import parse_precision

#: A GPT small enough for tests on a shared 2-core machine (the example's defaults are larger).
TINY = ["--n-embd", "32", "--n-layer", "2", "--n-head", "2", "--block", "32", "--corpus-bytes", "400000"]


def test_seed(default: int = 0) -> int:
    """The seed of the equality tests: ``HETEROTRAIN_TEST_SEED`` (a reviewer picks it), else ``default``."""
    return int(os.environ.get("HETEROTRAIN_TEST_SEED", default))


test_seed.__test__ = False  # type: ignore[attr-defined]  # not a test


def gpt_args(steps: int, global_batch: int, seed: int, *extra: str) -> list[str]:
    return [
        *TINY,
        "--steps", str(steps), "--global-batch-size", str(global_batch), "--seed", str(seed),
        "--warmup", str(max(1, steps // 5)), "--lr", "3e-3", "--max-grad-norm", "0.5", *extra,
    ]  # fmt: skip


@dataclass
class Reference:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    val: Any
    grad_norms: list[float]

    def params(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]

    def val_loss(self, samples: int, precision: str = "fp32", batch: int = 64) -> float:
        prec = parse_precision(precision)
        self.model.eval()
        total, n = 0.0, min(samples, len(self.val))
        with torch.no_grad():
            for a in range(0, n, batch):
                idx = list(range(a, min(a + batch, n)))
                with prec.autocast():
                    total += float(lm_loss(self.model, self.val.__getitems__(idx))) * len(idx)
        self.model.train()
        return total / n


def reference(argv: list[str], steps: int, precision: str = "fp32") -> Reference:
    """One process over the same global batches as a distributed run of ``gpt.py argv``, for ``steps``."""
    args: argparse.Namespace = gpt.parser().parse_args(argv)
    model, optimizer, scheduler, train, val, _ = gpt.build(args)
    prec = parse_precision(precision)
    order, cursor, g = SampleOrder(len(train), args.seed), DataCursor(), args.global_batch_size
    norms = []
    for _ in range(steps):
        epoch, start, stop = cursor.step_span(len(train), g)
        optimizer.zero_grad(set_to_none=True)
        with prec.autocast():
            loss = lm_loss(model, train.__getitems__(order.slice(epoch, start, stop)))
        loss.backward()  # type: ignore[no-untyped-call]
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)))
        optimizer.step()
        scheduler.step()
        cursor.advance(len(train), g)
    return Reference(model, optimizer, scheduler, val, norms)


def max_difference(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    assert len(got) == len(want)
    return max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))


def adam_moments(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter's AdamW state, flattened in parameter order: exp_avg, exp_avg_sq, step."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state[p]
            out += [st["exp_avg"].clone(), st["exp_avg_sq"].clone(), torch.as_tensor(st["step"]).clone()]
    return out
