"""One reconcile pass over every HeteroTrainJob: observe, plan, act.

Level-based: each pass reads a snapshot of the watch-fed cache (jobs, nodes and pods; see
:mod:`heterotrain_operator.cache`), plans placement for all jobs at once on that snapshot (the planner is
pure), reduces each job to the status and pods it should have (:func:`reconcile.reconcile_job`, pure) and
applies the difference, writing what the API server answers back into the cache.  Nothing depends on
which event woke the pass, so a restarted operator converges to the same state.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import heterotrain_contract as c
from heterotrain_api import (
    AcceleratorResolutionError,
    InvalidJobError,
    parse_spec,
    read_progress,
    resolve_accelerators,
)
from heterotrain_api.v1alpha1 import PHASE_PENDING, PHASES, TERMINAL_PHASES

from . import desired as d
from . import faults as f
from . import metrics
from . import observe as o
from . import placement as pl
from . import reconcile as r
from .cache import ClusterCache
from .kube import Kube, namespace_terminating
from .lifecycle import classify_pods
from .settings import Settings

log = logging.getLogger(__name__)

# Status fields the operator owns; others (e.g. lastCheckpoint, written by the runtime) are left alone.
OWNED_STATUS = (
    "observedGeneration",
    "phase",
    "conditions",
    "workers",
    "mix",
    "membership",
    "placement",
    "waitingReason",
    "waitingMessage",
    "restarts",
    "inPlaceRestarts",
    "podRestarts",
    "countedProcessRestarts",
    "lastFailure",
    "failures",
    "avoidedNodes",
    "startTime",
    "completionTime",
)

Planner = Callable[..., pl.Plan]
View = tuple[dict[str, Any], d.JobView | None, r.Stall | None, list[r.Missing]]
NODE_LEASE_NAMESPACE = "kube-node-lease"


def job_view(obj: Mapping[str, Any]) -> d.JobView | r.Stall:
    """Parse a job; a spec the operator cannot act on becomes a Stall (the API server let it through)."""
    meta = obj["metadata"]
    try:
        spec = parse_spec(obj.get("spec") or {})
        accs = tuple(resolve_accelerators(spec))
    except InvalidJobError as e:
        return r.Stall("InvalidSpec", "; ".join(e.errors)[:1024])
    except AcceleratorResolutionError as e:
        return r.Stall(e.reason, str(e))
    return d.JobView(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        generation=int(meta.get("generation") or 0),
        spec=spec,
        accelerators=accs,
        created=o.parse_time(meta.get("creationTimestamp")),
        deleting=o.is_deleting(obj),
        status=dict(obj.get("status") or {}),
    )


def pool_resources(nodes: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Accelerator type -> the extended resources its nodes offer."""
    types: dict[str, set[str]] = defaultdict(set)
    for n in nodes:
        t = (n["metadata"].get("labels") or {}).get(c.LABEL_ACCELERATOR)
        if t:
            types[t].update(k for k in (n.get("status", {}).get("allocatable") or {}) if "/" in k)
    return types


def missing_accelerators(job: d.JobView, types: Mapping[str, set[str]]) -> list[r.Missing]:
    """What the schema cannot catch, per listed type: a type no node has, a resource no node offers."""
    out = []
    for a in job.accelerators:
        path = f"spec.accelerators[{a.index}]"
        if a.type not in types:
            known = ", ".join(sorted(types)) or "none"
            out.append(
                r.Missing(
                    a.type,
                    "NoMatchingNodes",
                    f"{path}.type: no node has label {c.LABEL_ACCELERATOR}={a.type} (types in the cluster: {known})",
                )
            )
        elif a.resource_name not in types[a.type]:
            out.append(
                r.Missing(
                    a.type,
                    "UnknownResourceName",
                    f"{path}.resourceName: no {a.type} node offers {a.resource_name} "
                    f"(they offer: {', '.join(sorted(types[a.type])) or 'nothing'})",
                )
            )
    return out


def semantic_stall(job: d.JobView, missing: Sequence[r.Missing]) -> r.Stall | None:
    """A job none of whose types the cluster has cannot run: Stalled (the first type's reason, every
    type's message).  With some types there, the missing ones are a warning, not a stall."""
    if not missing or len(missing) < len(job.accelerators):
        return None
    return r.Stall(missing[0].reason, "; ".join(m.message for m in missing))


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        cache: ClusterCache,
        *,
        clock: Callable[[], float] = time.time,
        planner: Planner = pl.plan,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.cache = cache
        self.clock = clock
        self.planner = planner
        self._support_applied: dict[str, int] = {}  # job uid -> generation whose objects were applied
        self._progress = f.ProgressWatch()
        self._releases = o.Releases()
        self.next_due: float | None = None  # when a pass is due at the latest (a restart backoff ends)

    def reconcile_all(self) -> dict[str, int] | None:
        """One pass; None while the cache has not listed every kind yet (a partial view of the nodes
        would shrink jobs)."""
        if not self.cache.synced():
            return None
        t0 = time.perf_counter()
        snap = self.cache.snapshot()
        jobs, nodes, pods = snap.jobs, snap.nodes, snap.pods
        metrics.record_jobs(jobs)  # per-job series, as of the status this pass starts from
        now = self.clock()
        workers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in pods:
            labels = p["metadata"].get("labels") or {}
            if labels.get(c.LABEL_ROLE) == "worker" and c.LABEL_JOB in labels:
                workers[f"{p['metadata']['namespace']}/{labels[c.LABEL_JOB]}"].append(p)

        views, requests, planned_pods, facts = self._requests(
            jobs, nodes, workers, self._releases.nodes(pods, now), now
        )
        plan = self.planner(o.snapshot(nodes, pods, planned_pods, now), requests, now=now)
        metrics.PLAN_SECONDS.observe(time.perf_counter() - t0)
        log.debug(
            "pass at cache version %d: %d jobs, %d nodes, %d pods; planned %d workers in %.3fs",
            snap.version,
            len(requests),
            len(nodes),
            len(pods),
            sum(len(jp.workers) for jp in plan),
            time.perf_counter() - t0,
        )

        by_phase: dict[str, int] = defaultdict(int)
        self.next_due = None
        for obj, view, stall, missing in views:
            try:
                phase = self._reconcile_one(
                    obj, view, (stall, missing), plan, workers, now, facts.get(obj["metadata"]["uid"])
                )
                by_phase[phase] += 1
                metrics.RECONCILES.labels(result="ok").inc()
            except Exception as e:
                metrics.RECONCILES.labels(result="error").inc()
                ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
                if namespace_terminating(e):
                    log.info("reconcile of %s/%s stopped: its namespace is being deleted", ns, name)
                else:
                    log.exception("reconcile of %s/%s failed", ns, name)
        for phase in PHASES:
            metrics.JOBS.labels(phase=phase).set(by_phase.get(phase, 0))
        metrics.PASS_SECONDS.observe(time.perf_counter() - t0)
        return dict(by_phase)

    def _requests(
        self,
        jobs: Sequence[dict[str, Any]],
        nodes: Sequence[dict[str, Any]],
        workers: Mapping[str, list[dict[str, Any]]],
        releasing: frozenset[str],
        now: float,
    ) -> tuple[list[View], list[pl.JobRequest], set[tuple[str, str]], dict[str, f.Facts]]:
        """Every job parsed, the planner's request of each active one (its failures found first: lost and
        hung workers are not kept, bad nodes are avoided), and the facts its failures were found from."""
        types = pool_resources(nodes)
        health = f.node_health(nodes)
        views: list[View] = []
        requests = []
        planned_pods: set[tuple[str, str]] = set()
        facts: dict[str, f.Facts] = {}
        for obj in jobs:
            v = job_view(obj)
            if isinstance(v, r.Stall):
                views.append((obj, None, v, []))
                continue
            if v.deleting:
                continue  # the finalizer handler takes it from here
            missing = missing_accelerators(v, types)
            stall = semantic_stall(v, missing)
            views.append((obj, v, stall, missing))
            if stall or (v.status.get("phase") in TERMINAL_PHASES) or v.spec.suspend:
                continue
            own = o.owned_pods(v, workers.get(v.key, []))
            mine = classify_pods(v, own)
            facts[v.uid] = self._facts(v, mine.alive, health, releasing, now)
            found = f.detect(v, mine.failed, mine.alive, facts[v.uid], datetime.fromtimestamp(now, UTC))
            kept = [p for p in mine.alive if p["metadata"]["name"] not in found.gone]
            for live_pod in kept:
                if o.pod_node(live_pod) is not None:
                    planned_pods.add((v.namespace, live_pod["metadata"]["name"]))
            avoid = found.avoid_nodes() | self.settings.avoid_nodes
            current = o.current_slots(kept, releasing)
            requests.append(o.job_request(v, current, o.planner_max_workers(v, own), avoid))
        self._progress.forget_except(set(facts))
        return views, requests, planned_pods, facts

    def _facts(
        self,
        v: d.JobView,
        alive: Sequence[Mapping[str, Any]],
        health: dict[str, f.NodeHealth],
        releasing: frozenset[str],
        now: float,
    ) -> f.Facts:
        """The nodes' health, with the Lease age of the nodes of the workers the runtime reports stale."""
        age = self._progress.age(v.uid, v.status, now)
        facts = f.Facts(nodes=health, progress_age=age, releasing=releasing)
        stale = f.stale_pods(v, read_progress(v.status), facts)
        if not stale:
            return facts
        nodes = dict(health)
        for p in alive:
            node = o.pod_node(p)
            if p["metadata"]["name"] in stale and node in nodes:
                nodes[node] = self._with_lease(node, nodes[node], now)
        return f.Facts(nodes=nodes, progress_age=age, releasing=releasing)

    def _with_lease(self, node: str, health: f.NodeHealth, now: float) -> f.NodeHealth:
        """The node's health with its Lease's age (unknown when it cannot be read)."""
        try:
            lease = self.kube.get_lease(NODE_LEASE_NAMESPACE, node)
        except Exception as e:  # no permission, API hiccup: the worker is then taken as hung, not lost
            log.warning("cannot read the Lease of node %s: %s", node, e)
            return health
        return f.NodeHealth(health.ready, health.gone, f.lease_age(lease, now), f.lease_interval(lease))

    def _reconcile_one(
        self,
        obj: dict[str, Any],
        v: d.JobView | None,
        semantics: tuple[r.Stall | None, list[r.Missing]],
        plan: pl.Plan,
        workers: Mapping[str, list[dict[str, Any]]],
        now: float,
        facts: f.Facts | None = None,
    ) -> str:
        meta = obj["metadata"]
        stall, missing = semantics
        if v is None:
            assert stall is not None
            # Unparseable spec: only conditions can be reported.
            prev = [
                x for x in (obj.get("status") or {}).get("conditions") or [] if x.get("type") == "Stalled"
            ]
            if not prev or prev[0].get("message") != stall.message:
                status = r.unparseable_status(meta.get("generation"), stall, datetime.fromtimestamp(now, UTC))
                self._write_job_status(meta["namespace"], meta["name"], meta["uid"], status)
                self.kube.event(obj, "Warning", stall.reason, stall.message)
            return PHASE_PENDING
        out = r.reconcile_job(
            v,
            workers.get(v.key, []),
            plan.get(v.key),
            self.settings,
            datetime.fromtimestamp(now, UTC),
            stall,
            missing=missing,
            facts=facts,
        )
        if out.wake_at is not None:
            self.next_due = out.wake_at if self.next_due is None else min(self.next_due, out.wake_at)
        if (
            stall is None
            and out.status["phase"] not in TERMINAL_PHASES
            and self._support_applied.get(v.uid) != v.generation
        ):
            for o_ in d.support_objects(v):
                self.kube.apply(o_)
            self._support_applied[v.uid] = v.generation
        for pod in out.apply:
            self.cache.upsert("pods", self.kube.apply(pod))
            metrics.POD_WRITES.labels(op="apply").inc()
            name = pod["metadata"]["name"]
            node = o.pod_node(pod)
            if node is None:
                log.info("created pod %s/%s (%s)", v.namespace, name, o.worker_type(pod))
            else:
                log.debug("placed pod %s/%s on %s", v.namespace, name, node)
        for name, uid, reason in out.delete:
            grace = 0 if reason in f.FORCE_DELETE_REASONS else None
            gone = self.kube.delete_pod(v.namespace, name, uid, grace_seconds=grace)
            if gone is not None:
                metrics.POD_WRITES.labels(op="delete").inc()
                log.info("deleted pod %s/%s (%s)", v.namespace, name, reason)
            if gone is not None and gone.get("kind") == "Pod":
                self.cache.upsert("pods", gone)  # terminating
            else:
                self.cache.remove("pods", {"metadata": {"namespace": v.namespace, "name": name, "uid": uid}})
        old = {k: v.status[k] for k in OWNED_STATUS if k in v.status}
        if old != out.status:
            self._write_job_status(v.namespace, v.name, v.uid, out.status)
        for type_, reason, message in out.events:
            log.info("%s: %s: %s", v.key, reason, message)
            self.kube.event(obj, type_, reason, message)
        if out.delete_job:
            log.info("deleting %s: ttlSecondsAfterFinished passed", v.key)
            self.kube.delete_job(v.namespace, v.name, v.uid)
        return str(out.status["phase"])

    def _write_job_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        self.cache.upsert("jobs", self.kube.apply_job_status(namespace, name, uid, status))

    def finalize(self, namespace: str, name: str) -> int:
        """Delete a deleted job's worker pods (gracefully); return how many are left."""
        left = 0
        for p in self.kube.list_pods(label_selector=f"{c.LABEL_JOB}={name}", namespace=namespace):
            if p["metadata"]["namespace"] != namespace:
                continue
            left += 1
            if not o.is_deleting(p):
                self.kube.delete_pod(namespace, p["metadata"]["name"], p["metadata"]["uid"])
        return left
