"""The membership record: the world of one epoch, published by the operator in ``status.membership``.

The operator writes it (through the API's status model, whose shape is the same);
the launcher and the SDK read it from the job, or from a file in local mode.

A member is a worker pod; it runs ``slots`` training processes, one per accelerator
(torchrun's ``LOCAL_WORLD_SIZE``).  Members are ranked pod by pod (``rank`` is the
pod's, torchrun's ``GROUP_RANK``), and the processes take the global ranks in that
order: the processes of the member of rank 0 are ranks ``0..slots-1``, then the next
member's, and so on (:attr:`Membership.processes`).  A member's ``weight`` is the
whole pod's; each of its processes weighs ``weight / slots``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Final

#: The rendezvous port on the rank-0 worker (the membership's ``masterPort``).
DEFAULT_MASTER_PORT: Final = 29400
#: Most training processes in one worker pod (one per accelerator; the API's perWorker bound).
MAX_SLOTS: Final = 64


def process_name(pod: str, local_rank: int, local_world_size: int) -> str:
    """The name of a training process, unique in its world: its pod's name when the pod runs one
    process, else ``<pod>:<local rank>`` (a pod name never holds a colon)."""
    return pod if local_world_size == 1 else f"{pod}:{local_rank}"


@dataclass(frozen=True)
class Member:
    """One worker pod of the current world."""

    pod: str
    rank: int  # the pod's rank among the members (GROUP_RANK)
    type: str
    address: str
    weight: float  # the whole pod's; each of its processes weighs weight / slots
    slots: int = 1  # training processes in the pod, one per accelerator (LOCAL_WORLD_SIZE)
    #: Most samples one of its processes puts through one forward pass (its type's cap in force; None:
    #: unlimited).  A larger share is split into micro-batches whose gradients accumulate in the step.
    max_micro_batch: int | None = None


@dataclass(frozen=True)
class Process:
    """One training process of the world (derived from the members, see :attr:`Membership.processes`)."""

    name: str  # process_name(pod, local_rank, local_world_size)
    pod: str
    rank: int  # global rank, 0..world size - 1
    local_rank: int
    local_world_size: int
    group_rank: int  # its pod's rank
    type: str
    address: str
    weight: float
    max_micro_batch: int | None = None


@dataclass(frozen=True)
class Membership:
    """The world of one membership epoch, as published by the operator.

    ``epoch`` increases by one every time the set of workers (or their ranks)
    changes; workers re-form their process group when they see a new epoch.
    """

    epoch: int
    world: tuple[Member, ...] = field(default_factory=tuple)
    master_port: int = DEFAULT_MASTER_PORT

    @cached_property
    def processes(self) -> tuple[Process, ...]:
        """Every training process, in global rank order (pod by pod, then local rank)."""
        out: list[Process] = []
        for m in sorted(self.world, key=lambda x: x.rank):
            for local in range(m.slots):
                out.append(
                    Process(
                        name=process_name(m.pod, local, m.slots),
                        pod=m.pod,
                        rank=len(out),
                        local_rank=local,
                        local_world_size=m.slots,
                        group_rank=m.rank,
                        type=m.type,
                        address=m.address,
                        weight=m.weight / m.slots,
                        max_micro_batch=m.max_micro_batch,
                    )
                )
        return tuple(out)

    @property
    def world_size(self) -> int:
        """Training processes in the world (torch's world size)."""
        return len(self.processes)

    @property
    def pod_count(self) -> int:
        return len(self.world)

    @property
    def master_addr(self) -> str:
        for m in self.world:
            if m.rank == 0:
                return m.address
        raise ValueError("membership has no rank 0")

    def member(self, pod: str) -> Member | None:
        for m in self.world:
            if m.pod == pod:
                return m
        return None

    def process(self, pod: str, local_rank: int = 0) -> Process | None:
        """The process of ``pod`` with ``local_rank``; None when the pod is no member or has fewer slots."""
        for p in self.processes:
            if p.pod == pod and p.local_rank == local_rank:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "masterPort": self.master_port,
            "world": [_member_dict(m) for m in self.world],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Membership:
        """Parse ``status.membership`` (or a membership file); strict on shape."""
        try:
            epoch = int(data["epoch"])
            world = tuple(
                Member(
                    pod=str(m["pod"]),
                    rank=int(m["rank"]),
                    type=str(m["type"]),
                    address=str(m["address"]),
                    weight=float(m["weight"]),
                    slots=int(m.get("slots", 1)),
                    max_micro_batch=_optional_int(m.get("maxMicroBatch")),
                )
                for m in data.get("world") or ()
            )
            port = int(data.get("masterPort", DEFAULT_MASTER_PORT))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed membership record: {e!r}") from e
        ranks = sorted(m.rank for m in world)
        if ranks != list(range(len(world))):
            raise ValueError(f"membership ranks must be 0..{len(world) - 1}, got {ranks}")
        bad = [m.pod for m in world if not 1 <= m.slots <= MAX_SLOTS]
        if bad:
            raise ValueError(f"membership slots must be 1..{MAX_SLOTS}: {bad}")
        return cls(epoch=epoch, world=tuple(sorted(world, key=lambda m: m.rank)), master_port=port)


def _member_dict(m: Member) -> dict[str, Any]:
    """A member as the status lists it (camelCase; maxMicroBatch only when there is a cap)."""
    out = asdict(m)
    cap = out.pop("max_micro_batch")
    if cap is not None:
        out["maxMicroBatch"] = cap
    return out


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def write_membership_file(path: str, membership: Membership) -> None:
    """Atomically replace a local membership file (local mode)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(membership.to_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_membership_file(path: str) -> Membership | None:
    try:
        with open(path, encoding="utf-8") as f:
            return Membership.from_dict(json.load(f))
    except FileNotFoundError:
        return None
