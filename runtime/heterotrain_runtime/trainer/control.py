"""The control vector: what every rank tells every other one at the end of a step.

One small float64 tensor, summed over the world (it rides at the end of the last
gradient bucket, or goes in its own all-reduce): six flags (the fifth: this rank's
own gradients overflowed under a loss scale, so that every rank skips the same fp16
steps; the sixth: the newer membership this rank read drops a member of this world),
the loss, a count of the ranks present, and one slot per rank for its measured
throughput and its step.
Each rank fills only its own slots, so the sum holds every rank's value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Steps are compared modulo this (exact in fp32, the dtype of a float32 model's last bucket).
STEP_CHECK_MOD = 1 << 20

#: The scalar fields, in tensor order; per-rank fields (rates, then steps) follow them.
SCALARS = (
    "new_epoch",
    "stop",
    "checkpoint_due",
    "rebalance_due",
    "overflow",
    "members_leave",
    "loss",
    "present",
)


@dataclass(frozen=True)
class RankReport:
    """What one rank contributes to a step's control vector."""

    new_epoch: bool  # this rank saw a newer membership epoch
    stop: bool  # this rank was signalled to stop
    checkpoint_due: bool  # rank 0: the checkpoint interval (seconds) passed
    rebalance_due: bool  # rank 0: the rebalance interval passed
    loss: float  # this rank's share of the global mean loss (local mean x local / global batch)
    rate: float  # this rank's measured samples/s (0 until measured)
    step: int  # this rank's committed steps
    overflow: bool = False  # this rank's own (scaled) gradients hold an inf or NaN
    members_leave: bool = False  # the newer membership this rank read drops a member of this world


class ControlVector:
    """Named fields over the tensor (see the module docstring)."""

    def __init__(self, world_size: int, tensor: torch.Tensor | None = None) -> None:
        self.world_size = world_size
        size = len(SCALARS) + 2 * world_size
        self.tensor = torch.zeros(size, dtype=torch.float64) if tensor is None else tensor
        if self.tensor.numel() != size:
            raise ValueError(f"control vector of {self.tensor.numel()} values for a world of {world_size}")

    @classmethod
    def of_rank(cls, world_size: int, rank: int, report: RankReport) -> ControlVector:
        v = cls(world_size)
        for name in ("new_epoch", "stop", "checkpoint_due", "rebalance_due", "overflow", "members_leave"):
            v._set(name, 1.0 if getattr(report, name) else 0.0)
        v._set("loss", report.loss)
        v._set("present", 1.0)
        v.tensor[v._rates()][rank] = report.rate
        v.tensor[v._steps()][rank] = float(report.step % STEP_CHECK_MOD)
        return v

    def summed(self, tensor: torch.Tensor) -> ControlVector:
        """The same layout over ``tensor``, the sum of every rank's vector."""
        return ControlVector(self.world_size, tensor)

    # --- fields of the sum --------------------------------------------------------
    @property
    def new_epoch(self) -> bool:
        return self._get("new_epoch") > 0

    @property
    def stop(self) -> bool:
        return self._get("stop") > 0

    @property
    def checkpoint_due(self) -> bool:
        return self._get("checkpoint_due") > 0

    @property
    def rebalance_due(self) -> bool:
        return self._get("rebalance_due") > 0

    @property
    def overflow(self) -> bool:
        """Some rank's gradients overflowed: every rank skips the update."""
        return self._get("overflow") > 0

    @property
    def members_leave(self) -> bool:
        """Some rank read a newer membership without a member of this world."""
        return self._get("members_leave") > 0

    @property
    def loss(self) -> float:
        return self._get("loss")

    @property
    def ranks_present(self) -> int:
        return round(self._get("present"))

    @property
    def rates(self) -> list[float]:
        """Every rank's measured samples/s, in rank order."""
        return [float(x) for x in self.tensor[self._rates()].tolist()]

    @property
    def steps(self) -> list[int]:
        """Every rank's step (modulo :data:`STEP_CHECK_MOD`), in rank order."""
        return [round(x) for x in self.tensor[self._steps()].tolist()]

    def agrees_on(self, step: int) -> bool:
        """Every rank of the world contributed, and each is at ``step``."""
        return self.ranks_present == self.world_size and all(s == step % STEP_CHECK_MOD for s in self.steps)

    # --- layout -----------------------------------------------------------------------
    def _set(self, name: str, value: float) -> None:
        self.tensor[SCALARS.index(name)] = value

    def _get(self, name: str) -> float:
        return float(self.tensor[SCALARS.index(name)].item())

    def _rates(self) -> slice:
        return slice(len(SCALARS), len(SCALARS) + self.world_size)

    def _steps(self) -> slice:
        return slice(len(SCALARS) + self.world_size, len(SCALARS) + 2 * self.world_size)
