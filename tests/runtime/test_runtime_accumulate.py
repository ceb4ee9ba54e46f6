"""The forward/backward part of a step in micro-batches: the same gradient as one pass; out of memory."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from heterotrain_runtime.batching import micro_batches
from heterotrain_runtime.trainer.accumulate import OutOfMemory, forward_backward, is_out_of_memory


def test_micro_batches() -> None:
    assert micro_batches(0, 4) == [] and micro_batches(10, None) == [10] and micro_batches(10, 10) == [10]
    assert micro_batches(10, 4) == [4, 3, 3]  # as few as the cap allows, as even as can be
    assert micro_batches(9, 1) == [1] * 9
    for n in range(1, 60):
        for cap in range(1, 20):
            sizes = micro_batches(n, cap)
            assert sum(sizes) == n and max(sizes) <= cap and len(sizes) == -(-n // cap)
    with pytest.raises(ValueError):
        micro_batches(5, 0)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("cap", [None, 1, 3, 7, 32])
def test_accumulated_gradient_equals_one_pass(cap: int | None) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x, y = torch.randn(23, 5), torch.randn(23, 1)
    indices = list(range(23))

    def fn(batch: Any) -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x[batch]), y[batch])

    model.zero_grad()
    ref_loss = fn(indices)
    ref_loss.backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    loss = forward_backward(fn, lambda ix: list(ix), indices, cap)
    assert abs(loss - ref_loss.item()) < 1e-6
    for g, r in zip(_grads(model), ref, strict=True):
        assert torch.allclose(g, r, atol=1e-6), (cap, float((g - r).abs().max()))


def test_out_of_memory_is_raised_with_the_micro_batch_size() -> None:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

    def fn(batch: Any) -> torch.Tensor:
        raise oom("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemory) as e:
        forward_backward(fn, list, list(range(10)), 4)
    assert (e.value.size, e.value.cap) == (4, 4)
    assert is_out_of_memory(RuntimeError("NPU out of memory. Tried to allocate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))

    def broken(batch: Any) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # any other error is the script's
        forward_backward(broken, list, [1, 2], None)
