"""Operator settings, read once from the environment (HETEROTRAIN_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    field_manager: str = "heterotrain-operator"
    # Image of the init container that installs the runtime into the worker (the operator's own image).
    runtime_image: str = "ghcr.io/heterotrain/heterotrain:0.1.0"
    worker_grace_seconds: int = 60
    resync_seconds: float = 10.0
    namespace: str | None = None  # watch one namespace; None = cluster-wide
    metrics_port: int = 0  # 0 = no metrics HTTP server

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            field_manager=env.get("HETEROTRAIN_FIELD_MANAGER", cls.field_manager),
            runtime_image=env.get("HETEROTRAIN_RUNTIME_IMAGE", cls.runtime_image),
            worker_grace_seconds=int(env.get("HETEROTRAIN_WORKER_GRACE_SECONDS", cls.worker_grace_seconds)),
            resync_seconds=float(env.get("HETEROTRAIN_RESYNC_SECONDS", cls.resync_seconds)),
            namespace=env.get("HETEROTRAIN_NAMESPACE_SCOPE") or None,
            metrics_port=int(env.get("HETEROTRAIN_METRICS_PORT", "0")),
        )
