"""What should exist for a HeteroTrainJob: pure functions from the job to Kubernetes objects.

Nothing here talks to the API server.  The reconciler server-side-applies
what these functions return, so running them twice gives the same objects and
applying them twice changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jinja2

from heterotrain_api import HeteroTrainJobSpec, ResolvedAccelerator
from heterotrain_runtime import contract as c

from .settings import Settings

WORKER_CONTAINER = "worker"
INIT_CONTAINER = "heterotrain-runtime"
SCHEDULING_GATE = "heterotrain.io/placement"
CONFIG_VOLUME = "heterotrain-config"
CONFIG_MOUNT = "/etc/heterotrain"
CHECKPOINT_VOLUME = "heterotrain-checkpoints"
HEADLESS_PORT_NAME = "rendezvous"


@dataclass(frozen=True)
class JobView:
    """The parts of a HeteroTrainJob the operator acts on, with defaults resolved."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: HeteroTrainJobSpec
    accelerators: tuple[ResolvedAccelerator, ...]
    created: float = 0.0
    deleting: bool = False
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def accelerator(self, type_: str) -> ResolvedAccelerator:
        for a in self.accelerators:
            if a.type == type_:
                return a
        raise KeyError(type_)


def worker_name(job: str, index: int) -> str:
    return f"{job}-worker-{index}"


def service_account_name(job: str) -> str:
    return f"{job}-worker"


def config_map_name(job: str) -> str:
    return f"{job}-runtime"


def owner_reference(job: JobView) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": c.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(job: JobView, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/name": "heterotrain",
        "app.kubernetes.io/managed-by": "heterotrain-operator",
        c.LABEL_JOB: job.name,
        **(extra_labels or {}),
    }
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


_CONFIG_TEMPLATE = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
).from_string(
    """\
# Runtime configuration of HeteroTrainJob {{ job.namespace }}/{{ job.name }} (rendered by the operator).
job: {{ job.name }}
namespace: {{ job.namespace }}
globalBatchSize: {{ spec.global_batch_size }}
workers: {min: {{ spec.workers.min }}, max: {{ spec.workers.max }}}
rebalance: {policy: {{ spec.rebalance.policy }}, minIntervalSeconds: {{ spec.rebalance.min_interval_seconds }}}
checkpoint:
  path: {{ spec.checkpoint.path | tojson }}
  keep: {{ spec.checkpoint.keep }}
  async: {{ spec.checkpoint.async_ | tojson }}
{%- if spec.checkpoint.interval_steps %}
  intervalSteps: {{ spec.checkpoint.interval_steps }}
{%- endif %}
{%- if spec.checkpoint.interval_seconds %}
  intervalSeconds: {{ spec.checkpoint.interval_seconds }}
{%- endif %}
faultTolerance:
  maxRestarts: {{ spec.fault_tolerance.max_restarts }}
  heartbeatTimeoutSeconds: {{ spec.fault_tolerance.heartbeat_timeout_seconds }}
  onWorkerFailure: {{ spec.fault_tolerance.on_worker_failure }}
# Pools: intra-pool collectives use each pool's backend; traffic between pools uses gloo.
pools:
{%- for a in accelerators %}
  - {type: {{ a.type }}, resourceName: {{ a.resource_name }}, perWorker: {{ a.per_worker }}, relativeThroughput: {{ a.relative_throughput }}, workerWeight: {{ a.worker_weight }}, backend: {{ a.backend }}}
{%- endfor %}
"""
)


def render_runtime_config(job: JobView) -> str:
    return _CONFIG_TEMPLATE.render(job=job, spec=job.spec, accelerators=job.accelerators)


def support_objects(job: JobView) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding, headless Service and ConfigMap of a job."""
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
            # The workers may read their own job (membership is in its status) and report their
            # checkpoints into its status (status.lastCheckpoint, under their own field manager); nothing else.
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
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(job, config_map_name(job.name)),
            "data": {"runtime.yaml": render_runtime_config(job)},
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
        {"name": c.ENV_ACCELERATOR, "value": acc.type},
        {"name": c.ENV_RELATIVE_THROUGHPUT, "value": repr(acc.worker_weight)},
        {"name": c.ENV_BACKEND, "value": acc.backend},
        {"name": c.ENV_GLOBAL_BATCH_SIZE, "value": str(spec.global_batch_size)},
        {"name": c.ENV_REBALANCE_POLICY, "value": spec.rebalance.policy},
        {"name": c.ENV_REBALANCE_MIN_INTERVAL, "value": str(spec.rebalance.min_interval_seconds)},
        {"name": c.ENV_CHECKPOINT_DIR, "value": ck.path},
        {"name": c.ENV_CHECKPOINT_KEEP, "value": str(ck.keep)},
        {"name": c.ENV_CHECKPOINT_ASYNC, "value": "true" if ck.async_ else "false"},
        {"name": c.ENV_MAX_RESTARTS, "value": str(spec.fault_tolerance.max_restarts)},
        {"name": c.ENV_HEARTBEAT_TIMEOUT, "value": str(spec.fault_tolerance.heartbeat_timeout_seconds)},
        {"name": c.ENV_MASTER_PORT, "value": str(c.DEFAULT_MASTER_PORT)},
        {"name": c.ENV_MEMBERSHIP_SOURCE, "value": c.MEMBERSHIP_SOURCE_KUBERNETES},
        {"name": c.ENV_RUNTIME_PATH, "value": c.RUNTIME_MOUNT_PATH},
    ]
    if ck.interval_steps:
        env.append({"name": c.ENV_CHECKPOINT_INTERVAL_STEPS, "value": str(ck.interval_steps)})
    if ck.interval_seconds:
        env.append({"name": c.ENV_CHECKPOINT_INTERVAL_SECONDS, "value": str(ck.interval_seconds)})
    return env


def _pythonpath(user_env: list[dict[str, Any]]) -> dict[str, Any]:
    for e in user_env:
        if e.get("name") == "PYTHONPATH" and e.get("value"):
            return {"name": "PYTHONPATH", "value": f"{c.RUNTIME_MOUNT_PATH}:{e['value']}"}
    return {"name": "PYTHONPATH", "value": c.RUNTIME_MOUNT_PATH}


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
    user_env = [e.to_dict() for e in spec.env]
    env = [e for e in user_env if e.get("name") != "PYTHONPATH"]
    env += [_pythonpath(user_env), *contract_env(job, acc)]

    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if spec.resources is not None:
        requests.update({k: str(v) for k, v in (spec.resources.requests or {}).items()})
        limits.update({k: str(v) for k, v in (spec.resources.limits or {}).items()})
    requests[acc.resource_name] = str(acc.per_worker)
    limits[acc.resource_name] = str(acc.per_worker)

    mounts = [
        {"name": c.RUNTIME_VOLUME_NAME, "mountPath": c.RUNTIME_MOUNT_PATH},
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": c.RUNTIME_VOLUME_NAME, "emptyDir": {}},
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(job.name)}},
    ]
    if spec.checkpoint.volume is not None:
        volumes.append({"name": CHECKPOINT_VOLUME, **json.loads(json.dumps(spec.checkpoint.volume))})
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path})

    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": spec.image,
        "command": ["python", "-m", c.LAUNCH_MODULE, "launch", "--", *spec.command],
        "args": list(spec.args),
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "ports": [{"name": HEADLESS_PORT_NAME, "containerPort": c.DEFAULT_MASTER_PORT, "protocol": "TCP"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account_name(job.name),
        "hostname": name,
        "subdomain": job.name,
        "terminationGracePeriodSeconds": settings.worker_grace_seconds,
        "initContainers": [
            {
                "name": INIT_CONTAINER,
                "image": settings.runtime_image,
                "command": [*c.INSTALL_COMMAND, c.RUNTIME_MOUNT_PATH],
                "volumeMounts": [{"name": c.RUNTIME_VOLUME_NAME, "mountPath": c.RUNTIME_MOUNT_PATH}],
            }
        ],
        "containers": [container],
        "volumes": volumes,
        "nodeSelector": {**spec.node_selector, c.LABEL_ACCELERATOR: type_},
    }
    if spec.tolerations:
        pod_spec["tolerations"] = [t.to_dict() for t in spec.tolerations]
    if node is None:
        pod_spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    else:
        pod_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                    ]
                }
            }
        }
    meta = _meta(
        job, name, {c.LABEL_ROLE: "worker", c.LABEL_ACCELERATOR: type_, c.LABEL_WORKER_INDEX: str(index)}
    )
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
