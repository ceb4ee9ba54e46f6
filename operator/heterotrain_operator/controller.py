"""One reconcile pass over every HeteroTrainJob: observe, plan, act.

Level-based: each pass lists jobs, nodes and pods, plans placement for all
jobs at once on that snapshot (the planner is pure), reduces each job to the
status and pods it should have (:func:`reconcile.reconcile_job`, pure) and
applies the difference.  Nothing depends on which event woke the pass, so a
restarted operator converges to the same state.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from heterotrain_api import AcceleratorResolutionError, InvalidJobError, parse_spec, resolve_accelerators
from heterotrain_runtime import contract as c

from . import desired as d
from . import metrics
from . import observe as o
from . import placement as pl
from . import reconcile as r
from .kube import Kube
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
    "lastFailure",
    "startTime",
    "completionTime",
)

Planner = Callable[..., pl.Plan]


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


def semantic_stall(job: d.JobView, types: Mapping[str, set[str]]) -> r.Stall | None:
    """What the schema cannot catch: a named type no node has, a resource no node offers."""
    for a in job.accelerators:
        path = f"spec.accelerators[{a.index}]"
        if a.type not in types:
            known = ", ".join(sorted(types)) or "none"
            return r.Stall(
                "NoMatchingNodes",
                f"{path}.type: no node has label {c.LABEL_ACCELERATOR}={a.type} (types in the cluster: {known})",
            )
        if a.resource_name not in types[a.type]:
            return r.Stall(
                "UnknownResourceName",
                f"{path}.resourceName: no {a.type} node offers {a.resource_name} "
                f"(they offer: {', '.join(sorted(types[a.type])) or 'nothing'})",
            )
    return None


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        planner: Planner = pl.plan,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.planner = planner
        self._support_applied: dict[str, int] = {}  # job uid -> generation whose objects were applied

    def reconcile_all(self) -> dict[str, int]:
        t0 = time.perf_counter()
        jobs = self.kube.list_jobs(self.settings.namespace)
        nodes = self.kube.list_nodes()
        pods = self.kube.list_pods()
        now = self.clock()
        workers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in pods:
            labels = p["metadata"].get("labels") or {}
            if labels.get(c.LABEL_ROLE) == "worker" and c.LABEL_JOB in labels:
                workers[f"{p['metadata']['namespace']}/{labels[c.LABEL_JOB]}"].append(p)

        types = pool_resources(nodes)
        views: list[tuple[dict[str, Any], d.JobView | None, r.Stall | None]] = []
        requests = []
        planned_pods: set[tuple[str, str]] = set()
        for obj in jobs:
            v = job_view(obj)
            if isinstance(v, r.Stall):
                views.append((obj, None, v))
                continue
            if v.deleting:
                continue  # the finalizer handler takes it from here
            stall = semantic_stall(v, types)
            views.append((obj, v, stall))
            if stall or (v.status.get("phase") in r.TERMINAL) or v.spec.suspend:
                continue
            own = r.owned_pods(v, workers.get(v.key, []))
            for p in r.live(own):
                if o.pod_node(p) is not None:
                    planned_pods.add((v.namespace, p["metadata"]["name"]))
            requests.append(o.job_request(v, r.current_slots(own), r.planner_max_workers(v, own)))
        plan = self.planner(o.snapshot(nodes, pods, planned_pods), requests, now=now)
        metrics.PLAN_SECONDS.observe(time.perf_counter() - t0)

        by_phase: dict[str, int] = defaultdict(int)
        for obj, v, stall in views:
            try:
                phase = self._reconcile_one(obj, v, stall, plan, workers, now)
                by_phase[phase] += 1
                metrics.RECONCILES.labels(result="ok").inc()
            except Exception:
                metrics.RECONCILES.labels(result="error").inc()
                log.exception(
                    "reconcile of %s/%s failed", obj["metadata"]["namespace"], obj["metadata"]["name"]
                )
        for phase in ("Pending", "Admitted", "Running", "Recovering", "Suspended", "Succeeded", "Failed"):
            metrics.JOBS.labels(phase=phase).set(by_phase.get(phase, 0))
        metrics.PASS_SECONDS.observe(time.perf_counter() - t0)
        return dict(by_phase)

    def _reconcile_one(
        self,
        obj: dict[str, Any],
        v: d.JobView | None,
        stall: r.Stall | None,
        plan: pl.Plan,
        workers: Mapping[str, list[dict[str, Any]]],
        now: float,
    ) -> str:
        meta = obj["metadata"]
        if v is None:
            assert stall is not None
            # Unparseable spec: only conditions can be reported.
            status = dict(obj.get("status") or {})
            cond = {
                "type": "Stalled",
                "status": "True",
                "reason": stall.reason,
                "message": stall.message,
                "lastTransitionTime": r.fmt_time(datetime.fromtimestamp(now, UTC)),
                "observedGeneration": meta.get("generation"),
            }
            prev = [x for x in status.get("conditions") or [] if x.get("type") == "Stalled"]
            if not prev or prev[0].get("message") != stall.message:
                self.kube.apply_job_status(
                    meta["namespace"],
                    meta["name"],
                    meta["uid"],
                    {"observedGeneration": meta.get("generation"), "phase": "Pending", "conditions": [cond]},
                )
                self.kube.event(obj, "Warning", stall.reason, stall.message)
            return "Pending"
        out = r.reconcile_job(
            v, workers.get(v.key, []), plan.get(v.key), self.settings, datetime.fromtimestamp(now, UTC), stall
        )
        if (
            stall is None
            and out.status["phase"] not in r.TERMINAL
            and self._support_applied.get(v.uid) != v.generation
        ):
            for o_ in d.support_objects(v):
                self.kube.apply(o_)
            self._support_applied[v.uid] = v.generation
        for pod in out.apply:
            self.kube.apply(pod)
            metrics.POD_WRITES.labels(op="apply").inc()
        for name, uid, reason in out.delete:
            if self.kube.delete_pod(v.namespace, name, uid):
                metrics.POD_WRITES.labels(op="delete").inc()
                log.info("deleted pod %s/%s (%s)", v.namespace, name, reason)
        old = {k: v.status[k] for k in OWNED_STATUS if k in v.status}
        if old != out.status:
            self.kube.apply_job_status(v.namespace, v.name, v.uid, out.status)
        for type_, reason, message in out.events:
            self.kube.event(obj, type_, reason, message)
        if out.delete_job:
            log.info("deleting %s: ttlSecondsAfterFinished passed", v.key)
            self.kube.delete_job(v.namespace, v.name, v.uid)
        return str(out.status["phase"])

    def finalize(self, namespace: str, name: str) -> int:
        """Delete a deleted job's worker pods (gracefully); return how many are left."""
        left = 0
        for p in self.kube.list_pods(label_selector=f"{c.LABEL_JOB}={name}"):
            if p["metadata"]["namespace"] != namespace:
                continue
            left += 1
            if not o.is_deleting(p):
                self.kube.delete_pod(namespace, p["metadata"]["name"], p["metadata"]["uid"])
        return left
