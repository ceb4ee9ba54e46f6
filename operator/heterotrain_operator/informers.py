"""List-then-watch streams that keep the :class:`~heterotrain_operator.cache.ClusterCache` current.

One thread per kind (jobs, nodes, pods), as client-go's reflectors: list once (the store then holds exactly
that listing), watch from the listing's resourceVersion with bookmarks, and list again only when the
server says the version is too old (410) or the stream broke.  Every change that matters calls
``on_change`` (which wakes a reconcile pass); a heartbeat does not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import heterotrain_contract as c

from .cache import ClusterCache
from .kube import JOBS_PATH, Gone, Kube

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    kind: str  # a cache kind: jobs, nodes or pods
    path: str


def sources(namespace: str | None) -> tuple[Source, ...]:
    """What the operator watches: its jobs, every node, and every pod (any pod on a node holds capacity)."""
    jobs = (
        JOBS_PATH if namespace is None else f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{namespace}/{c.PLURAL}"
    )
    return (Source("jobs", jobs), Source("nodes", "/api/v1/nodes"), Source("pods", "/api/v1/pods"))


class Informers:
    def __init__(
        self,
        kube: Kube,
        cache: ClusterCache,
        on_change: Callable[[], None],
        namespace: str | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.on_change = on_change
        self.sources = sources(namespace)
        self.retry_seconds = retry_seconds
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for src in self.sources:
            t = threading.Thread(target=self._run, args=(src,), name=f"informer-{src.kind}", daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        self.stop.set()

    def _run(self, src: Source) -> None:
        version: str | None = None

        def on_event(kind: str, obj: dict[str, Any]) -> None:
            changed = (
                self.cache.remove(src.kind, obj) if kind == "DELETED" else self.cache.upsert(src.kind, obj)
            )
            if changed:
                self.on_change()

        while not self.stop.is_set():
            try:
                if version is None:
                    items, version = self.kube.list_with_version(src.path)
                    log.debug("listed %d %s at resourceVersion %s", len(items), src.kind, version)
                    if self.cache.replace(src.kind, items):
                        self.on_change()
                version = self.kube.watch(src.path, version, on_event, self.stop)
            except Gone:
                log.debug("watch of %s expired; listing again", src.kind)
                version = None
            except Exception as e:  # a broken stream or an API hiccup: list again after a pause
                log.warning("watch of %s failed (%s); listing again", src.kind, e)
                version = None
                self.stop.wait(self.retry_seconds)
