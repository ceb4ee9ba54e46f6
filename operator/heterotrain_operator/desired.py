"""What should exist for a HeteroTrainJob: pure functions from the job to Kubernetes objects.

Nothing here talks to the API server.  The reconciler server-side-applies
what these functions return, so running them twice gives the same objects and
applying them twice changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import heterotrain_contract as c
from heterotrain_api import ResolvedAccelerator

from .jobview import WORKER_CONTAINER as WORKER_CONTAINER  # re-exported: d.WORKER_CONTAINER
from .jobview import JobView as JobView  # re-exported: d.JobView
from .settings import Settings

INIT_CONTAINER = "heterotrain-runtime"
SCHEDULING_GATE = "heterotrain.io/placement"
CHECKPOINT_VOLUME = "heterotrain-checkpoints"
HEADLESS_PORT_NAME = "rendezvous"
METRICS_PORT_NAME = "metrics"
RUNTIME_VOLUME_NAME = "heterotrain-runtime"
RUNTIME_MOUNT_PATH = "/opt/heterotrain"  # the init container installs the runtime here; on PYTHONPATH


def worker_name(job: str, index: int) -> str:
    return f"{job}-worker-{index}"


def service_account_name(job: str) -> str:
    return f"{job}-worker"


def owner_reference(job: JobView) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(
    job: JobView,
    name: str,
    extra_labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/name": "heterotrain",
        "app.kubernetes.io/managed-by": "heterotrain-operator",
        c.LABEL_JOB: job.name,
        **(extra_labels or {}),
    }
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def runs_the_sdk(job: JobView) -> bool:
    """The job's processes run the SDK (only the SDK reports progress into the status): a new worker may
    start them before it is a member, and joins the world once they are ready (the others train on)."""
    return bool(job.status.get("progress"))


def support_objects(job: JobView) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding and headless Service of a job."""
    sa = service_account_name(job.name)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(job, sa),
            "automountServiceAccountToken": True,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(job, sa),
            # The workers may read their own job (membership is in its status), report their checkpoints
            # into its status (status.lastCheckpoint, under their own field manager), and set their pod's
            # ProcessesReady condition (pods/status: pod names are not known ahead); nothing else.
            "rules": [
                {
                    "apiGroups": [c.GROUP],
                    "resources": [c.PLURAL],
                    "resourceNames": [job.name],
                    "verbs": ["get", "watch", "list"],
                },
                {
                    "apiGroups": [c.GROUP],
                    "resources": [f"{c.PLURAL}/status"],
                    "resourceNames": [job.name],
                    "verbs": ["get", "patch"],
                },
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(job, sa),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": job.namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(job, job.name),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {c.LABEL_JOB: job.name, c.LABEL_ROLE: "worker"},
                "ports": [{"name": HEADLESS_PORT_NAME, "port": c.DEFAULT_MASTER_PORT, "protocol": "TCP"}],
            },
        },
    ]


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def contract_env(job: JobView, acc: ResolvedAccelerator) -> list[dict[str, Any]]:
    spec = job.spec
    ck = spec.checkpoint
    env: list[dict[str, Any]] = [
        {"name": c.ENV_JOB_NAME, "value": job.name},
        {"name": c.ENV_NAMESPACE, "value": job.namespace},
        _field_env(c.ENV_POD_NAME, "metadata.name"),
        _field_env(c.ENV_POD_IP, "status.podIP"),
        _field_env(c.ENV_NODE_NAME, "spec.nodeName"),
        # Read when the container starts: the annotation is set (or not) before the pod is ungated.
        _field_env(c.ENV_START_BEFORE_MEMBER, f"metadata.annotations['{c.ANNOTATION_START_BEFORE_MEMBER}']"),
        {"name": c.ENV_NPROC_PER_WORKER, "value": str(acc.per_worker)},
        {"name": c.ENV_ACCELERATOR, "value": acc.type},
        {"name": c.ENV_BACKEND, "value": acc.backend},
        {"name": c.ENV_GLOBAL_BATCH_SIZE, "value": str(spec.global_batch_size)},
        {"name": c.ENV_REBALANCE_POLICY, "value": spec.rebalance.policy},
        {"name": c.ENV_REBALANCE_MIN_INTERVAL, "value": str(spec.rebalance.min_interval_seconds)},
        {"name": c.ENV_CHECKPOINT_DIR, "value": ck.path},
        {"name": c.ENV_CHECKPOINT_KEEP, "value": str(ck.keep)},
        {"name": c.ENV_CHECKPOINT_ASYNC, "value": "true" if ck.async_ else "false"},
        {"name": c.ENV_MAX_RESTARTS, "value": str(spec.fault_tolerance.max_restarts)},
        {"name": c.ENV_HEARTBEAT_TIMEOUT, "value": str(spec.fault_tolerance.heartbeat_timeout_seconds)},
        {"name": c.ENV_STARTUP_TIMEOUT, "value": str(spec.fault_tolerance.startup_timeout_seconds)},
        {"name": c.ENV_RESTART_BACKOFF, "value": str(spec.fault_tolerance.restart_backoff_seconds)},
        {
            "name": c.ENV_RESTART_BACKOFF_LIMIT,
            "value": str(spec.fault_tolerance.restart_backoff_limit_seconds),
        },
        {"name": c.ENV_FAILURE_WINDOW, "value": str(spec.fault_tolerance.failure_window_seconds)},
        {"name": c.ENV_MEMBERSHIP_SOURCE, "value": c.MEMBERSHIP_SOURCE_KUBERNETES},
    ]
    if acc.pod.precision:
        env.append({"name": c.ENV_PRECISION, "value": acc.pod.precision})
    if ck.interval_steps:
        env.append({"name": c.ENV_CHECKPOINT_INTERVAL_STEPS, "value": str(ck.interval_steps)})
    if ck.interval_seconds:
        env.append({"name": c.ENV_CHECKPOINT_INTERVAL_SECONDS, "value": str(ck.interval_seconds)})
    return env


def _pythonpath(user_env: list[dict[str, Any]]) -> dict[str, Any]:
    for e in user_env:
        if e.get("name") == "PYTHONPATH" and e.get("value"):
            return {"name": "PYTHONPATH", "value": f"{RUNTIME_MOUNT_PATH}:{e['value']}"}
    return {"name": "PYTHONPATH", "value": RUNTIME_MOUNT_PATH}


def security_contexts(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and each container's securityContext: Pod Security "restricted" unless turned off."""
    if settings.worker_pod_security == "none":
        return {}, {}
    pod: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if settings.worker_run_as_user is not None:
        uid = settings.worker_run_as_user
        pod.update(runAsUser=uid, runAsGroup=uid, fsGroup=uid)  # fsGroup: the checkpoint volume is writable
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _metrics(
    user_env: list[dict[str, Any]], settings: Settings, processes: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Env and container ports of the worker's metrics endpoints (on by default; a user's own port wins).

    The training process of local rank i serves on the port + i (the launcher tells it so): ports
    ``metrics`` (local rank 0, the one the chart's PodMonitor scrapes), ``metrics-1``, ...
    """
    if not settings.worker_metrics_port or any(e.get("name") == c.ENV_METRICS_PORT for e in user_env):
        return [], []
    port = settings.worker_metrics_port
    names = [METRICS_PORT_NAME] + [f"{METRICS_PORT_NAME}-{i}" for i in range(1, processes)]
    return (
        [{"name": c.ENV_METRICS_PORT, "value": str(port)}],
        [{"name": n, "containerPort": port + i, "protocol": "TCP"} for i, n in enumerate(names)],
    )


def _resources(acc: ResolvedAccelerator) -> dict[str, Any]:
    """The worker container's requests and limits: the job's with its type's merged over them, plus its
    accelerators."""
    requests: dict[str, Any] = {k: str(v) for k, v in acc.pod.requests}
    limits: dict[str, Any] = {k: str(v) for k, v in acc.pod.limits}
    requests[acc.resource_name] = str(acc.per_worker)
    limits[acc.resource_name] = str(acc.per_worker)
    return {"requests": requests, "limits": limits}


def pinned_to(node: str) -> dict[str, Any]:
    """The affinity that pins a placed worker to its planned node (kube-scheduler binds it there)."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def worker_pod(
    job: JobView, index: int, type_: str, settings: Settings, node: str | None = None
) -> dict[str, Any]:
    """The worker pod ``index`` of accelerator ``type_``.

    Created with a scheduling gate and no node; once placed (``node`` given) it
    carries a required node affinity to that node and no gate, and the real
    kube-scheduler binds it.
    """
    spec = job.spec
    acc = job.accelerator(type_)
    name = worker_name(job.name, index)
    user_env = [e.to_dict() for e in acc.pod.env]
    env = [e for e in user_env if e.get("name") != "PYTHONPATH"]
    metrics_env, metrics_ports = _metrics(user_env, settings, acc.per_worker)
    env += [_pythonpath(user_env), *contract_env(job, acc), *metrics_env]
    pod_security, container_security = security_contexts(settings)

    mounts = [{"name": RUNTIME_VOLUME_NAME, "mountPath": RUNTIME_MOUNT_PATH}]
    volumes: list[dict[str, Any]] = [{"name": RUNTIME_VOLUME_NAME, "emptyDir": {}}]
    # without a volume, an emptyDir: the pod's own scratch (a read-only root filesystem stays possible)
    source = {"emptyDir": {}} if spec.checkpoint.volume is None else spec.checkpoint.volume
    volumes.append({"name": CHECKPOINT_VOLUME, **json.loads(json.dumps(source))})
    mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path})

    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": acc.pod.image,
        "command": ["python", "-m", c.LAUNCH_MODULE, "launch", "--", *spec.command],
        "args": list(spec.args),
        "env": env,
        "resources": _resources(acc),
        "volumeMounts": mounts,
        "ports": [
            {"name": HEADLESS_PORT_NAME, "containerPort": c.DEFAULT_MASTER_PORT, "protocol": "TCP"},
            *metrics_ports,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    init: dict[str, Any] = {
        "name": INIT_CONTAINER,
        "image": settings.runtime_image,
        "command": [*c.INSTALL_COMMAND, RUNTIME_MOUNT_PATH],
        "volumeMounts": [{"name": RUNTIME_VOLUME_NAME, "mountPath": RUNTIME_MOUNT_PATH}],
    }
    if container_security:
        container["securityContext"] = container_security
        init["securityContext"] = dict(container_security)
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account_name(job.name),
        "hostname": name,
        "subdomain": job.name,
        "terminationGracePeriodSeconds": settings.worker_grace_seconds,
        "initContainers": [init],
        "containers": [container],
        "volumes": volumes,
        "nodeSelector": {**dict(acc.pod.node_selector), c.LABEL_ACCELERATOR: type_},
    }
    if pod_security:
        pod_spec["securityContext"] = pod_security
    if acc.pod.tolerations:
        pod_spec["tolerations"] = [t.to_dict() for t in acc.pod.tolerations]
    if node is None:
        pod_spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    else:
        pod_spec["affinity"] = pinned_to(node)
    meta = _meta(
        job,
        name,
        {c.LABEL_ROLE: "worker", c.LABEL_ACCELERATOR: type_, c.LABEL_WORKER_INDEX: str(index)},
        {c.ANNOTATION_START_BEFORE_MEMBER: "true"} if runs_the_sdk(job) else None,
    )
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
