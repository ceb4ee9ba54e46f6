"""kopf wiring: watches wake the reconcile loop; a finalizer stops workers gracefully on delete.

The handlers carry no logic of their own: every watch event only wakes
:class:`~heterotrain_operator.controller.Controller`, which reconciles the
level (what exists versus what should), never the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from heterotrain_runtime import contract as c

from . import metrics
from .controller import Controller
from .kube import Kube, load_client
from .settings import Settings

log = logging.getLogger(__name__)

_state: dict[str, Any] = {}


def _wake() -> None:
    ev = _state.get("wake")
    if ev is not None:
        ev.set()


async def _loop(ctl: Controller, wake: asyncio.Event, resync: float) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=resync)
        wake.clear()
        try:
            await asyncio.to_thread(ctl.reconcile_all)
        except Exception:
            metrics.ERRORS.labels(kind="pass").inc()
            log.exception("reconcile pass failed; retrying")
            await asyncio.sleep(1.0)
        # Coalesce bursts of watch events (a pod's status changes several times a second) into one pass.
        await asyncio.sleep(0.2)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    cfg = Settings.from_env()
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP)
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 4
    if cfg.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(cfg.metrics_port)
    ctl = Controller(Kube(load_client(), cfg.field_manager), cfg)
    wake = asyncio.Event()
    _state.update(controller=ctl, wake=wake, task=asyncio.create_task(_loop(ctl, wake, cfg.resync_seconds)))
    wake.set()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    task = _state.pop("task", None)
    if task is not None:
        task.cancel()


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
def job_event(**_: Any) -> None:
    _wake()


@kopf.on.event("", "v1", "pods", labels={c.LABEL_JOB: kopf.PRESENT, c.LABEL_ROLE: "worker"})
def pod_event(**_: Any) -> None:
    _wake()


@kopf.on.event("", "v1", "nodes")
def node_event(type: str | None, **_: Any) -> None:
    _wake()


@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL)
async def job_deleted(name: str, namespace: str, **_: Any) -> None:
    """Stop the workers gracefully (they get SIGTERM and checkpoint) before the job goes away."""
    ctl: Controller = _state["controller"]
    left = await asyncio.to_thread(ctl.finalize, namespace, name)
    if left:
        raise kopf.TemporaryError(f"waiting for {left} worker pods to terminate", delay=1)
    _wake()
