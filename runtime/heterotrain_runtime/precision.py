"""Mixed precision: the pool's precision hint, autocast, and a loss scaler every rank agrees on.

The operator hands each worker its pool's precision hint as ``HETEROTRAIN_PRECISION``
(``heterotrain_contract.ENV_PRECISION``): ``fp32`` (or unset), ``bf16``, ``fp16``, ``fp8`` or
``int8``.  :func:`parse_precision` turns it into what a step does:

* ``fp32``: no autocast;
* ``bf16``: ``torch.autocast(dtype=torch.bfloat16)`` around the forward pass;
* ``fp16``: ``torch.autocast(dtype=torch.float16)`` and a dynamic loss scale (:class:`LossScaler`);
* ``fp8`` / ``int8``: these need the model's own kernels (Transformer Engine and the like), which a
  generic trainer cannot supply; the trainer runs such a pool in bf16 and says so once, and the hint
  still reaches the script unchanged for a model that does it itself.

Parameters, gradients and optimizer state stay fp32 (autocast only changes the compute dtype), so
gradients of pools with different hints add up in one all-reduce.  The loss scale is one number
for the whole world: when any rank runs fp16, every rank scales its loss by the same factor
(scaling by a power of two is exact), and whether a step overflowed is decided for all ranks at
once (each rank's own check rides the step's control vector; the summed gradients, identical on
every rank, are checked again when unscaled), so every rank skips the same steps and moves the
scale alike.  The scaler's state is in every checkpoint and in the state a new member receives.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("heterotrain.precision")

#: The hints the API accepts, as written in the job spec and in ``HETEROTRAIN_PRECISION``.
HINTS = ("fp32", "bf16", "fp16", "fp8", "int8")
_ALIASES = {"": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


@dataclass(frozen=True)
class Precision:
    """What a precision hint means for a step."""

    hint: str  # as given (normalised): one of HINTS
    compute: str  # what the step runs in: fp32 | bf16 | fp16

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.compute)

    @property
    def scaled(self) -> bool:
        """Whether the loss needs scaling (fp16's narrow exponent range)."""
        return self.compute == "fp16"

    @contextlib.contextmanager
    def autocast(self, device_type: str = "cpu") -> Iterator[None]:
        """Autocast to the compute dtype (nothing for fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=device_type, dtype=dtype):
            yield


def parse_precision(hint: str | None, *, field: str = "HETEROTRAIN_PRECISION") -> Precision:
    """The :class:`Precision` of a hint (None or empty: fp32); an unknown hint is an error naming ``field``."""
    h = (hint or "").strip().lower()
    h = _ALIASES.get(h, h)
    if h not in HINTS:
        raise ValueError(f"{field}: unknown precision {hint!r} (expected one of {', '.join(HINTS)})")
    if h in ("fp8", "int8"):
        log.warning("precision %s needs the model's own kernels; the trainer computes in bf16", h)
        return Precision(h, "bf16")
    return Precision(h, h)


def grads_finite(params: Iterable[torch.Tensor]) -> bool:
    """Whether every gradient of ``params`` is finite (no inf, no NaN)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads, ord=math.inf)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


class LossScaler:
    """A dynamic loss scale (``torch.amp.GradScaler``'s rule) whose decisions the caller agrees on.

    ``scale_loss`` before backward; after the gradients are summed over the world, ``unscale``
    divides them by the scale and says whether they hold an inf or NaN; the caller combines that
    with every rank's own check (the control vector) and calls ``update(overflow)`` with the
    agreed answer: an overflow halves the scale (the step is skipped), ``growth_interval`` clean
    steps in a row double it.  Disabled, it does nothing and never reports an overflow.
    """

    def __init__(
        self,
        enabled: bool = False,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self.enabled = enabled
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.growth_tracker = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def local_overflow(self, params: Iterable[torch.Tensor]) -> bool:
        """This rank's own gradients overflowed (before the sum): its vote for the control vector."""
        return self.enabled and not grads_finite(params)

    def unscale(self, params: Iterable[torch.Tensor]) -> bool:
        """Divide the (summed) gradients by the scale; whether any of them is not finite."""
        if not self.enabled:
            return False
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        overflow = False
        for (device, _dtype), grads in groups.items():  # the kernel wants one device and dtype per call
            found = torch.zeros(1, dtype=torch.float32, device=device)
            inv = torch.full((1,), 1.0 / self.scale, dtype=torch.float32, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
            overflow = overflow or bool(found.item() > 0)
        return overflow

    def update(self, overflow: bool) -> None:
        """Move the scale after a step, with the overflow decision every rank took."""
        if not self.enabled:
            return
        if overflow:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            return
        self.growth_tracker += 1
        if self.growth_tracker >= self.growth_interval:
            self.scale *= self.growth_factor
            self.growth_tracker = 0

    # ``torch.amp.GradScaler``'s keys, so either loads the other's state
    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "_growth_tracker": self.growth_tracker,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))
        self.growth_tracker = int(state.get("_growth_tracker", 0))
