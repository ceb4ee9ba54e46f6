"""Operator settings, read once from the environment (HETEROTRAIN_*)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from heterotrain_contract import truthy


@dataclass(frozen=True)
class Settings:
    field_manager: str = "heterotrain-operator"
    # Image of the init container that installs the runtime into the worker (the operator's own image).
    runtime_image: str = "ghcr.io/heterotrain/heterotrain:0.1.0"
    worker_grace_seconds: int = 60
    resync_seconds: float = 10.0
    namespace: str | None = None  # watch one namespace; None = cluster-wide
    metrics_port: int = 0  # 0 = no metrics HTTP server
    # The pod IP when the chart gives it (HETEROTRAIN_POD_IP): replicas sharing a host never clash.
    metrics_address: str = "0.0.0.0"
    # Workers: Pod Security "restricted" (the default) or "none" (no securityContext is set), the uid they
    # run as (None: the image's own user, which must then not be root), and their metrics port (0 = off).
    worker_pod_security: str = "restricted"
    worker_run_as_user: int | None = 65532
    worker_metrics_port: int = 9400
    verbose: bool = False  # kopf's verbose logging
    # A growing world waits for all its planned workers to run (one membership change), but no longer than
    # this after the first of them runs: one pod that never starts does not hold the others back.
    growth_wait_seconds: float = 60.0
    # Nodes no job gets new workers on (a cluster-wide avoid list; running workers stay).
    avoid_nodes: frozenset[str] = frozenset()

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
            metrics_address=env.get("HETEROTRAIN_POD_IP") or cls.metrics_address,
            worker_pod_security=_choice(
                env, "HETEROTRAIN_WORKER_POD_SECURITY", cls.worker_pod_security, ("restricted", "none")
            ),
            worker_run_as_user=_optional_int(env, "HETEROTRAIN_WORKER_RUN_AS_USER", cls.worker_run_as_user),
            worker_metrics_port=int(env.get("HETEROTRAIN_WORKER_METRICS_PORT", cls.worker_metrics_port)),
            verbose=truthy(env.get("HETEROTRAIN_VERBOSE")),
            growth_wait_seconds=float(env.get("HETEROTRAIN_GROWTH_WAIT_SECONDS", cls.growth_wait_seconds)),
            avoid_nodes=frozenset(
                n.strip() for n in env.get("HETEROTRAIN_AVOID_NODES", "").split(",") if n.strip()
            ),
        )


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default)
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: must be one of {', '.join(allowed)}")
    return value


def _optional_int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    """Unset: the default; set but empty: None; else the number."""
    if name not in env:
        return default
    return int(env[name]) if env[name] else None
