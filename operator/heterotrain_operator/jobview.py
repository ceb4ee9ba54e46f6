"""A HeteroTrainJob as the operator acts on it: the parsed spec, defaults resolved, the old status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from heterotrain_api import HeteroTrainJobSpec, ResolvedAccelerator

#: The name of the worker container in every worker pod (the one the runtime's launcher runs in).
WORKER_CONTAINER = "worker"


@dataclass(frozen=True)
class JobView:
    """The parts of a HeteroTrainJob the operator acts on, with defaults resolved."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: HeteroTrainJobSpec
    accelerators: tuple[ResolvedAccelerator, ...]
    created: float = 0.0
    deleting: bool = False
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def accelerator(self, type_: str) -> ResolvedAccelerator:
        for a in self.accelerators:
            if a.type == type_:
                return a
        raise KeyError(type_)
