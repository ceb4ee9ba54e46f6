"""Pod status, node status and node Lease bodies as the kubelet reports them (pure)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .lifecycle import RUNNING, SUCCEEDED, TERMINATED, WAITING, Container, PodState, Termination

JSON = dict[str, Any]

# The conditions the kubelet owns, in the kubelet's order.
POD_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def micro_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


def image_id(image: str) -> str:
    """Images are never pulled; the ID says so (stable, for status comparisons)."""
    return f"procnode://{image}"


def _terminated(t: Termination) -> JSON:
    d: JSON = {"exitCode": t.exit_code, "reason": t.reason, "finishedAt": rfc3339(t.finished_at)}
    if t.started_at is not None:
        d["startedAt"] = rfc3339(t.started_at)
    if t.container_id:
        d["containerID"] = t.container_id
    if t.signal:
        d["signal"] = t.signal
    if t.message:
        d["message"] = t.message
    return d


def container_ready(c: Container) -> bool:
    if c.init and not c.sidecar:
        return c.succeeded
    return c.state == RUNNING  # probes are not run: a running container is ready


def container_status(c: Container) -> JSON:
    if c.state == RUNNING:
        assert c.started_at is not None
        state: JSON = {"running": {"startedAt": rfc3339(c.started_at)}}
    elif c.state == TERMINATED:
        assert c.current is not None
        state = {"terminated": _terminated(c.current)}
    else:
        w: JSON = {"reason": c.reason or "ContainerCreating"}
        if c.message:
            w["message"] = c.message
        state = {"waiting": w}
    d: JSON = {
        "name": c.name,
        "image": c.image,
        "imageID": image_id(c.image),
        "ready": container_ready(c),
        "started": c.state == RUNNING,
        "restartCount": c.restart_count,
        "state": state,
        "lastState": {"terminated": _terminated(c.last)} if c.last is not None else {},
    }
    cid = c.container_id
    if cid:
        d["containerID"] = cid
    return d


def _condition(ctype: str, ok: bool, reason: str = "", message: str = "") -> JSON:
    d: JSON = {"type": ctype, "status": "True" if ok else "False"}
    if not ok and reason:
        d["reason"] = reason
    if not ok and message:
        d["message"] = message
    return d


def merge_conditions(old: list[JSON], ours: list[JSON], now: float) -> list[JSON]:
    """Our conditions with lastTransitionTime kept when the status did not change, then everyone else's."""
    old_by_type = {c.get("type"): c for c in old}
    out = []
    for c in ours:
        prev = old_by_type.get(c["type"])
        c = dict(c)
        if prev is not None and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            c["lastTransitionTime"] = prev["lastTransitionTime"]
        else:
            c["lastTransitionTime"] = rfc3339(now)
        out.append(c)
    mine = {c["type"] for c in ours}
    out += [c for c in old if c.get("type") not in mine]
    return out


def pod_conditions(pod: JSON, st: PodState) -> list[JSON]:
    old = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    incomplete = [c.name for c in st.init if not (c.succeeded or (c.sidecar and c.has_run))]
    initialized = not incomplete
    all_ctrs = [*[c for c in st.init if c.sidecar], *st.containers]
    unready = [c.name for c in all_ctrs if not container_ready(c)]
    if st.phase == SUCCEEDED:
        ready_reason, ready_msg = "PodCompleted", ""
    else:
        ready_reason = "ContainersNotReady"
        ready_msg = f"containers with unready status: [{' '.join(unready)}]"
    containers_ready = not unready and not st.terminal
    gates = [g.get("conditionType") for g in (pod.get("spec") or {}).get("readinessGates") or []]
    missing_gates = [g for g in gates if (old.get(g) or {}).get("status") != "True"]
    if containers_ready and missing_gates:
        ready = _condition(
            "Ready",
            False,
            "ReadinessGatesNotReady",
            f'corresponding condition of pod readiness gate "{missing_gates[0]}" does not exist.',
        )
    else:
        ready = _condition("Ready", containers_ready, ready_reason, ready_msg)
    ours = [
        _condition("PodReadyToStartContainers", st.sandbox_ready and not (st.terminal and not st.running())),
        _condition(
            "Initialized",
            initialized,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        ready,
        _condition("ContainersReady", containers_ready, ready_reason, ready_msg),
    ]
    if "PodScheduled" not in old:
        ours.append(_condition("PodScheduled", True))
    return ours


def build_pod_status(pod: JSON, st: PodState, now: float, host_ip: str) -> JSON:
    """The pod's whole status: the fields the kubelet owns replaced, everything else kept."""
    old: JSON = dict(pod.get("status") or {})
    new = dict(old)
    new["phase"] = st.phase
    new["hostIP"] = host_ip
    new["hostIPs"] = [{"ip": host_ip}]
    if st.pod_ip:
        new["podIP"] = st.pod_ip
        new["podIPs"] = [{"ip": st.pod_ip}]
    if st.start_time is not None:
        new["startTime"] = rfc3339(st.start_time)
    if st.init:
        new["initContainerStatuses"] = [container_status(c) for c in st.init]
    else:
        new.pop("initContainerStatuses", None)
    new["containerStatuses"] = [container_status(c) for c in st.containers]
    new["conditions"] = merge_conditions(old.get("conditions") or [], pod_conditions(pod, st), now)
    if st.reason:
        new["reason"] = st.reason
    if st.message:
        new["message"] = st.message
    return new


def sandbox_waiting(st: PodState, message: str) -> None:
    """Show a sandbox (volume) problem on every container still waiting."""
    for c in st.all_containers():
        if c.state == WAITING and not c.has_run:
            c.message = message


# --- nodes ------------------------------------------------------------------

NODE_CONDITIONS = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "process runner (test infrastructure) is posting ready status"),
)


def node_status_patch(
    node: JSON,
    now: float,
    node_info: Mapping[str, str],
    host_ip: str,
    default_capacity: Mapping[str, str],
    kubelet_port: int = 0,
) -> JSON:
    """A strategic-merge patch for ``nodes/status``: Ready & co., addresses, nodeInfo.

    Capacity and allocatable are left as created (extended resources included);
    only keys missing from both are filled in from ``default_capacity``.
    """
    status = node.get("status") or {}
    old = {c.get("type"): c for c in status.get("conditions") or []}
    conditions = []
    for ctype, value, reason, message in NODE_CONDITIONS:
        prev = old.get(ctype) or {}
        transition = prev.get("lastTransitionTime") if prev.get("status") == value else None
        conditions.append(
            {
                "type": ctype,
                "status": value,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": rfc3339(now),
                "lastTransitionTime": transition or rfc3339(now),
            }
        )
    patch: JSON = {
        "conditions": conditions,
        # InternalIP only (the list replaced): the API server reaches the kubelet endpoint
        # (kubectl logs) through the first address type it prefers, and Hostname comes first.
        "addresses": [{"$patch": "replace"}, {"type": "InternalIP", "address": host_ip}],
        "nodeInfo": dict(node_info),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
    }
    capacity = dict(status.get("capacity") or {})
    allocatable = dict(status.get("allocatable") or {})
    missing_cap = {k: v for k, v in default_capacity.items() if k not in capacity}
    if missing_cap:
        patch["capacity"] = missing_cap
    missing_alloc = {k: v for k, v in {**default_capacity, **capacity}.items() if k not in allocatable}
    if missing_alloc:
        patch["allocatable"] = missing_alloc
    return {"status": patch}


RUNNER_REMOVED_TAINTS = ("node.kubernetes.io/not-ready",)


def taints_without_not_ready(node: JSON) -> list[JSON] | None:
    """The node's taints without ``node.kubernetes.io/not-ready``; None when there is nothing to remove."""
    taints = (node.get("spec") or {}).get("taints") or []
    kept = [t for t in taints if t.get("key") not in RUNNER_REMOVED_TAINTS]
    return kept if len(kept) != len(taints) else None


def lease_body(node: JSON, now: float, duration: int, existing: JSON | None = None) -> JSON:
    """The node's Lease in ``kube-node-lease``: renewed, owned by the Node."""
    name = node["metadata"]["name"]
    body: JSON = (
        dict(existing)
        if existing
        else {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
        }
    )
    meta = dict(body.get("metadata") or {})
    meta["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "name": name,
            "uid": node["metadata"]["uid"],
        }
    ]
    body["metadata"] = meta
    spec = dict(body.get("spec") or {})
    spec.update({"holderIdentity": name, "leaseDurationSeconds": duration, "renewTime": micro_time(now)})
    body["spec"] = spec
    return body
