"""Prometheus metrics of a runtime process (a registry per process).

``prometheus_client`` is optional: in a user image without it every metric is
a no-op, so the launcher and the SDK never fail for want of it.  Set
``HETEROTRAIN_METRICS_PORT`` to serve the registry over HTTP (the SDK process
uses that port; the launcher uses ``HETEROTRAIN_LAUNCHER_METRICS_PORT``), on
``HETEROTRAIN_POD_IP`` when set (the operator sets it and, by default, the port).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import heterotrain_contract as hc

log = logging.getLogger(__name__)


class _Noop:
    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set(self, *args: Any, **kwargs: Any) -> None:
        pass

    def inc(self, *args: Any, **kwargs: Any) -> None:
        pass


class RuntimeMetrics:
    """Every metric the runtime exports; ``available`` is False without prometheus_client."""

    def __init__(self, port_env: str | None = None) -> None:
        try:
            import prometheus_client as pc
        except ImportError:  # pragma: no cover - depends on the image
            self.available = False
            self.registry: Any = None
            noop = _Noop()
            self.step_seconds: Any = noop
            self.compute_seconds: Any = noop
            self.rank_samples_per_second: Any = noop
            self.pool_samples_per_second: Any = noop
            self.local_batch_size: Any = noop
            self.checkpoint_save_seconds: Any = noop
            self.checkpoint_load_seconds: Any = noop
            self.restarts: Any = noop
            self.reformations: Any = noop
            self.membership_epoch: Any = noop
            self.steps: Any = noop
            return
        self.available = True
        r = self.registry = pc.CollectorRegistry()
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.step_seconds = pc.Histogram(
            "heterotrain_step_seconds", "Wall time of a training step", registry=r, buckets=buckets
        )
        self.compute_seconds = pc.Histogram(
            "heterotrain_compute_seconds",
            "Local forward/backward time of a step (before gradient sync)",
            registry=r,
            buckets=buckets,
        )
        self.rank_samples_per_second = pc.Gauge(
            "heterotrain_rank_samples_per_second", "Measured samples/s per rank", ["rank", "pod"], registry=r
        )
        self.pool_samples_per_second = pc.Gauge(
            "heterotrain_pool_samples_per_second", "Measured samples/s per pool", ["pool"], registry=r
        )
        self.local_batch_size = pc.Gauge(
            "heterotrain_local_batch_size", "This rank's local batch", registry=r
        )
        self.checkpoint_save_seconds = pc.Histogram(
            "heterotrain_checkpoint_save_seconds",
            "Checkpoint save time; kind=pause is the training pause, kind=total the full save",
            ["kind"],
            registry=r,
            buckets=buckets,
        )
        self.checkpoint_load_seconds = pc.Histogram(
            "heterotrain_checkpoint_load_seconds", "Checkpoint load time", registry=r, buckets=buckets
        )
        self.restarts = pc.Counter(
            "heterotrain_restarts", "Restarts of the user process by the launcher", ["reason"], registry=r
        )
        self.reformations = pc.Counter(
            "heterotrain_reformations", "Process group re-formations by the SDK", ["reason"], registry=r
        )
        self.membership_epoch = pc.Gauge(
            "heterotrain_membership_epoch", "Current membership epoch", registry=r
        )
        self.steps = pc.Counter("heterotrain_steps", "Committed training steps", registry=r)
        if port_env:
            port = os.environ.get(port_env)
            if port:
                # On the pod IP when known (where Prometheus scrapes it): pods that share a host's
                # network, as on the e2e suite's process nodes, then never clash on the port.
                addr = os.environ.get(hc.ENV_POD_IP) or "0.0.0.0"
                try:
                    pc.start_http_server(int(port), addr=addr, registry=r)
                except OSError as e:
                    log.warning("cannot serve metrics on port %s: %s", port, e)

    def render(self) -> str:
        if not self.available:
            return ""
        import prometheus_client as pc

        out: bytes = pc.generate_latest(self.registry)
        return out.decode("utf-8")
