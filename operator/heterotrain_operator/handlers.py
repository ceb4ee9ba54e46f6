"""kopf wiring: the reconcile loop, the watch-fed cache, and a finalizer that stops workers on delete.

The informers (:mod:`heterotrain_operator.informers`) keep the cache current and wake
:class:`~heterotrain_operator.controller.Controller` on every change that matters; the controller
reconciles the level (what exists versus what should), never the event.  kopf contributes the finalizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import kopf

import heterotrain_contract as c

from . import leader, metrics
from .cache import ClusterCache
from .controller import Controller
from .informers import Informers
from .kube import Kube, load_client
from .settings import Settings

log = logging.getLogger(__name__)

_state: dict[str, Any] = {}
_passing = threading.Lock()  # held while a reconcile pass runs (its thread outlives a cancelled task)


def _pass(ctl: Controller) -> None:
    with _passing:
        ctl.reconcile_all()


def _wake() -> None:
    ev = _state.get("wake")
    if ev is not None:
        ev.set()


def _leading() -> bool:
    """Without leader election (one replica) always; with it, only while this replica holds the Lease."""
    elector: leader.Elector | None = _state.get("leader")
    return elector is None or elector.is_leader()


async def _loop(ctl: Controller, wake: asyncio.Event, resync: float) -> None:
    while True:
        timeout = resync
        if ctl.next_due is not None:  # a restart backoff ends before the next resync
            timeout = min(resync, max(0.05, ctl.next_due - ctl.clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=timeout)
        wake.clear()
        if not _leading():
            continue  # a standby watches, but only the leader reconciles
        try:
            await asyncio.to_thread(_pass, ctl)
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

        start_http_server(cfg.metrics_port, addr=cfg.metrics_address)
    kube = Kube(load_client(), cfg.field_manager)
    cache = ClusterCache()
    ctl = Controller(kube, cfg, cache)
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    election = leader.LeaderConfig.from_env()
    if election is not None:

        def changed(leading: bool) -> None:
            metrics.LEADER.set(1 if leading else 0)
            loop.call_soon_threadsafe(wake.set)

        # A client of its own: a renewal never queues behind the reconcile pass's requests.
        _state["leader"] = leader.Elector(Kube(load_client(), cfg.field_manager), election, on_change=changed)
        _state["leader"].start()

    def changed_in_cluster() -> None:  # called from the informers' threads
        loop.call_soon_threadsafe(wake.set)

    # The standby keeps its cache warm too: when it takes over, its first pass needs no listing.
    informers = Informers(
        Kube(load_client(), cfg.field_manager),  # its own client: watches hold connections for minutes
        cache,
        changed_in_cluster,
        namespace=cfg.namespace,
    )
    informers.start()
    _state.update(
        controller=ctl,
        wake=wake,
        informers=informers,
        task=asyncio.create_task(_loop(ctl, wake, cfg.resync_seconds)),
    )
    wake.set()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    task = _state.pop("task", None)
    if task is not None:
        task.cancel()
    elector: leader.Elector | None = _state.pop("leader", None)
    if elector is not None:
        await asyncio.to_thread(_passing.acquire, True, 60)  # let a pass in flight finish first
        await asyncio.to_thread(elector.stop)  # then hand the Lease over: the standby need not wait
    informers = _state.pop("informers", None)
    if informers is not None:
        informers.close()


@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL)
async def job_deleted(name: str, namespace: str | None, **_: Any) -> None:
    """Stop the workers gracefully (they get SIGTERM and checkpoint) before the job goes away."""
    assert namespace is not None  # HeteroTrainJobs are namespaced
    if not _leading():
        raise kopf.TemporaryError("not the leader: the leading replica stops the workers", delay=2)
    ctl: Controller = _state["controller"]
    left = await asyncio.to_thread(ctl.finalize, namespace, name)
    if left:
        raise kopf.TemporaryError(f"waiting for {left} worker pods to terminate", delay=1)
    _wake()
