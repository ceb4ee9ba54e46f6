"""The optimizer side of a step: loss scale, unscale, clipping, the user's hook, the update, the schedule.

After the gradient sync every rank holds the same gradients, the mean over the global batch
(each rank's contribution weighted by its share of the batch), so whatever is computed from them
here is the same on every rank without more communication: the global gradient norm, hence the
clipping factor; the unscaled gradients' overflow check.  The order within a committed step:

1. (before the sync) the loss was scaled (fp16 only) and each rank voted on its own overflow;
2. unscale the summed gradients; the step overflowed if any rank voted so or the sum is not finite;
3. an overflowed step skips 4-6 (its samples are consumed all the same, like ``GradScaler``);
4. clip to ``max_grad_norm`` by the global norm;
5. the user's hook ``before_optimizer_step(trainer)`` (it sees the world's mean gradient);
6. ``optimizer.step()``;
7. the learning-rate scheduler steps once, the loss scale moves (both on every committed step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from heterotrain_runtime.precision import LossScaler, Precision

#: Names of the optimizer side's state in checkpoints and state broadcasts (``extra.<name>``).
SCHEDULER_KEY = "heterotrain.lr_scheduler"
SCALER_KEY = "heterotrain.loss_scaler"


@dataclass(frozen=True)
class Update:
    """What the optimizer side did in one committed step."""

    applied: bool  # False: the gradients overflowed, the optimizer did not step
    grad_norm: float | None  # the global gradient norm before clipping (None when not computed)
    lr: float  # the first param group's learning rate used by this step


class OptimizerSide:
    """Owns everything between the gradient sync and the next step (see the module docstring)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        precision: Precision,
        *,
        lr_scheduler: Any = None,
        max_grad_norm: float | None = None,
        before_step: Callable[[], None] | None = None,
    ) -> None:
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.precision = precision
        self.scheduler = lr_scheduler
        self.max_grad_norm = max_grad_norm
        self.before_step = before_step
        self.scaler = LossScaler(enabled=precision.scaled)

    def agree_on_scaling(self, precisions: Sequence[str]) -> None:
        """One loss scale for the world: on when any rank computes in fp16 (``precisions``: every rank's)."""
        self.scaler.enabled = self.precision.scaled or "fp16" in precisions

    def stateful(self) -> dict[str, Any]:
        """What checkpoints and state broadcasts must carry besides the model and the optimizer."""
        out: dict[str, Any] = {SCALER_KEY: self.scaler}
        if self.scheduler is not None:
            out[SCHEDULER_KEY] = self.scheduler
        return out

    # --- before the sync ------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale_loss(loss).backward()  # type: ignore[no-untyped-call]

    def local_overflow(self) -> bool:
        return self.scaler.local_overflow(self.params)

    # --- after the sync ---------------------------------------------------------------------
    def apply(self, voted_overflow: bool) -> Update:
        """Steps 2-7 of the module docstring, with every rank's overflow votes summed in ``voted_overflow``."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        overflow = self.scaler.unscale(self.params) or voted_overflow
        norm: float | None = None
        if not overflow:
            if self.max_grad_norm is not None:
                total = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
                norm = float(total)
            if self.before_step is not None:
                self.before_step()
            self.optimizer.step()
        self.scaler.update(overflow)
        if self.scheduler is not None:
            self.scheduler.step()
        return Update(applied=not overflow, grad_norm=norm, lr=lr)
