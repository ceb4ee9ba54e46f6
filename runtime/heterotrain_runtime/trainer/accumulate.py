"""The forward and backward part of a step: this rank's share in micro-batches, gradients accumulated.

A share larger than the micro-batch cap (the type's ``maxMicroBatch`` in force, or the script's own) is
cut into as few, as even, contiguous micro-batches as the cap allows (:func:`~heterotrain_runtime.batching.
micro_batches`); each one's mean loss is back-propagated scaled by its size over the share, so the
accumulated gradient is the gradient of the mean loss over the whole share: the same update as one
pass (up to float summation order).  The optimizer side of the step (sync, clipping, the step itself)
is the trainer's.

A forward or backward that runs out of device memory raises :class:`OutOfMemory`: the process leaves
with ``EXIT_OUT_OF_MEMORY``, its launcher does not restart it in place, and the operator lowers the
type's cap (as for a container the kernel OOM-killed) before the world re-forms without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from heterotrain_runtime.batching import micro_batches


class OutOfMemory(Exception):
    """The framework ran out of memory in a micro-batch of ``size`` samples (cap ``cap``)."""

    def __init__(self, size: int, cap: int | None, error: BaseException) -> None:
        super().__init__(f"out of memory in a micro-batch of {size} samples (cap {cap}): {error}")
        self.size, self.cap = size, cap


def is_out_of_memory(e: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, ROCm), or a vendor's RuntimeError saying so (Ascend's NPU)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def forward_backward(
    fn: Callable[[Any], torch.Tensor],
    batch_of: Callable[[Sequence[int]], Any],
    indices: Sequence[int],
    cap: int | None,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> float:
    """Back-propagate the mean loss of ``fn`` over ``indices`` in micro-batches of at most ``cap``
    (gradients add up in ``.grad``; zero them before); the mean loss over the share (0.0 when empty).
    ``backward`` runs each micro-batch's backward (the optimizer side's: its loss scale); default
    ``loss.backward()``."""
    n = len(indices)
    total, start = 0.0, 0
    for size in micro_batches(n, cap):
        chunk = indices[start : start + size]
        start += size
        try:
            loss = fn(batch_of(chunk))
            scaled = loss if size == n else loss * (size / n)
            if backward is None:
                cast(Any, scaled).backward()
            else:
                backward(scaled)
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e) and not isinstance(e, MemoryError):
                raise
            raise OutOfMemory(size, cap, e) from None
        total += float(loss.detach()) * size / n
    return total


def wait_for_device(module: torch.nn.Module) -> None:
    """Block until the device of ``module`` finished the work queued so far: CUDA and Ascend run
    kernels asynchronously, and a step's compute time (what the throughput tracker splits the batch by)
    must be the time of the computation, not of its launch."""
    param = next(module.parameters(), None)
    if param is None or param.device.type == "cpu":
        return
    if param.device.type == "cuda":
        torch.cuda.synchronize(param.device)
    elif param.device.type == "npu":
        npu: Any = getattr(torch, "npu", None)
        if npu is not None:
            npu.synchronize(param.device)
