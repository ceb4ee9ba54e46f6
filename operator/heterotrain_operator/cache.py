"""What the operator knows of the cluster: jobs, nodes and pods, kept current by watches.

A pure, thread-safe store (no I/O): :mod:`heterotrain_operator.kube` feeds it from list-then-watch
streams (one per kind, as client-go's reflectors do) and from the responses of the operator's own writes,
and every reconcile pass reads a snapshot of it instead of listing the cluster.  Each object is kept with
its ``resourceVersion``; an event older than what the store holds (a watch event that arrives after the
response of the write that superseded it) is ignored, so the store never goes back in time.  Nor does a
removed object come back: the answer to a delete can arrive after the watch's DELETED event (a pod deleted
at once, or one never bound), and the store keeps the uids of the objects it removed lately to refuse it.

The store tells whether an event *matters*: a change of what the reconcile reads (a node's labels, taints,
capacity or readiness; a pod's node, phase, address, requests or deletion; anything of a job but its
progress report, of which only a stale rank or a process restarted in place matters), not a heartbeat.  Only such changes wake a pass.  Pods that are not HeteroTrain workers are kept slim: their node,
phase, deletion and resource requests (they only count as used capacity).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import heterotrain_contract as c
from heterotrain_api import progress_signals

Obj = dict[str, Any]
KINDS = ("jobs", "nodes", "pods")
#: How many uids of removed objects the store remembers (a late answer comes within seconds).
TOMBSTONES = 8192


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of the store."""

    jobs: tuple[Obj, ...]
    nodes: tuple[Obj, ...]
    pods: tuple[Obj, ...]
    version: int  # increases with every change that matters


def key_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def _rv(obj: Mapping[str, Any]) -> int | None:
    """The resourceVersion as a number (etcd's revision), or None where it is not one."""
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def is_worker(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(c.LABEL_ROLE) == "worker" and c.LABEL_JOB in labels


def slim_pod(pod: Mapping[str, Any]) -> Obj:
    """What the planner needs of a pod that is not a worker: where it is and what it holds there."""
    if is_worker(pod):
        return dict(pod)
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}

    def resources(ctrs: Iterable[Mapping[str, Any]]) -> list[Obj]:
        return [{"resources": {"requests": (x.get("resources") or {}).get("requests") or {}}} for x in ctrs]

    return {
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "labels", "deletionTimestamp")
            if k in meta
        },
        "spec": {
            **{k: spec[k] for k in ("nodeName", "schedulingGates", "affinity") if k in spec},
            "containers": resources(spec.get("containers") or []),
            "initContainers": resources(spec.get("initContainers") or []),
        },
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


def _node_view(node: Mapping[str, Any]) -> Any:
    meta, spec, st = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    ready = [x.get("status") for x in st.get("conditions") or [] if x.get("type") == "Ready"]
    return (  # annotations are not read (the TTL and attach-detach controllers write them)
        meta.get("labels"),
        meta.get("deletionTimestamp"),
        spec.get("taints"),
        spec.get("unschedulable"),
        st.get("allocatable"),
        ready,
    )


def _pod_view(pod: Mapping[str, Any]) -> Any:
    if not is_worker(pod):
        slim = slim_pod(pod)
        meta = {k: v for k, v in slim["metadata"].items() if k != "resourceVersion"}
        return (meta, slim["spec"], slim["status"])
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    return (
        meta.get("labels"),
        meta.get("deletionTimestamp"),
        meta.get("ownerReferences"),
        pod.get("spec"),
        st.get("phase"),
        st.get("podIP"),
        st.get("reason"),
        [(x.get("name"), x.get("state")) for x in st.get("containerStatuses") or []],
        [(x.get("type"), x.get("status"), x.get("reason")) for x in st.get("conditions") or []],
    )


def _job_view(job: Mapping[str, Any]) -> Any:
    """A job's spec and status, but of ``status.progress`` (reported every few seconds by the runtime) only
    what the operator acts on: the ranks it names stale and the processes it names restarted in place."""
    meta = job.get("metadata") or {}
    status = dict(job.get("status") or {})
    progress = progress_signals(status)
    status.pop("progress", None)
    return (meta.get("generation"), meta.get("deletionTimestamp"), job.get("spec"), status, progress)


_VIEWS = {"jobs": _job_view, "nodes": _node_view, "pods": _pod_view}


class ClusterCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objs: dict[str, dict[str, Obj]] = {k: {} for k in KINDS}
        self._synced: set[str] = set()
        self._version = 0
        self._gone: dict[str, None] = {}  # uids of removed objects, oldest first

    # --- feeding ---------------------------------------------------------------------------
    def replace(self, kind: str, objs: Iterable[Mapping[str, Any]]) -> bool:
        """A full listing of ``kind``: the store holds exactly these (a relist after a broken watch)."""
        new = {key_of(o): self._prepare(kind, o) for o in objs}
        with self._lock:
            old = self._objs[kind]
            view = _VIEWS[kind]
            changed = old.keys() != new.keys() or any(view(old[k]) != view(v) for k, v in new.items())
            self._objs[kind] = new
            self._synced.add(kind)
            if changed:
                self._version += 1
            return changed

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """An object as the API server returned or streamed it; returns whether a change that matters."""
        key = key_of(obj)
        new = self._prepare(kind, obj)
        with self._lock:
            if (new.get("metadata") or {}).get("uid") in self._gone:
                return False  # removed already: a late answer to a delete, not the object coming back
            old = self._objs[kind].get(key)
            if old is not None:
                rv_old, rv_new = _rv(old), _rv(new)
                if rv_old is not None and rv_new is not None and rv_new < rv_old:
                    return False  # older than what we hold
            self._objs[kind][key] = new
            changed = old is None or _VIEWS[kind](old) != _VIEWS[kind](new)
            if changed:
                self._version += 1
            return changed

    def remove(self, kind: str, obj: Mapping[str, Any]) -> bool:
        key = key_of(obj)
        with self._lock:
            old = self._objs[kind].get(key)
            uid = (obj.get("metadata") or {}).get("uid") or ((old or {}).get("metadata") or {}).get("uid")
            if uid:
                self._gone[uid] = None
                if len(self._gone) > TOMBSTONES:
                    del self._gone[next(iter(self._gone))]
            if old is None:
                return False
            if uid and (old.get("metadata") or {}).get("uid") not in (None, uid):
                return False  # a newer object of the same name is already here
            del self._objs[kind][key]
            self._version += 1
            return True

    @staticmethod
    def _prepare(kind: str, obj: Mapping[str, Any]) -> Obj:
        return slim_pod(obj) if kind == "pods" else dict(obj)

    # --- reading ---------------------------------------------------------------------------
    def synced(self) -> bool:
        with self._lock:
            return self._synced.issuperset(KINDS)

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                jobs=tuple(self._objs["jobs"].values()),
                nodes=tuple(self._objs["nodes"].values()),
                pods=tuple(self._objs["pods"].values()),
                version=self._version,
            )
