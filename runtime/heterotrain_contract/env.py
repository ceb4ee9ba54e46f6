"""The environment the operator sets on every worker container, and the runtime reads.

Only names with a writer on one side and a reader on the other live here; the
runtime's own variables (what the launcher tells the user process, the SDK's
optional knobs) are in ``heterotrain_runtime.envvars``.
"""

from __future__ import annotations

from typing import Final

#: The spellings of "on" in a flag variable or annotation (case and surrounding spaces ignored).
TRUTHY: Final = frozenset({"1", "true", "yes", "on"})


def truthy(value: object, default: bool = False) -> bool:
    """A flag's value: ``default`` when unset or empty, else whether it is one of :data:`TRUTHY`."""
    if value is None or str(value).strip() == "":
        return default
    return str(value).strip().lower() in TRUTHY


# --- identity ---------------------------------------------------------------------------------
ENV_JOB_NAME: Final = "HETEROTRAIN_JOB_NAME"
ENV_NAMESPACE: Final = "HETEROTRAIN_NAMESPACE"
ENV_POD_NAME: Final = "HETEROTRAIN_POD_NAME"  # from the downward API
ENV_POD_IP: Final = "HETEROTRAIN_POD_IP"  # (downward API: status.podIP) where metrics are served
ENV_NODE_NAME: Final = "HETEROTRAIN_NODE_NAME"  # the node the worker runs on (downward API: spec.nodeName)
ENV_ACCELERATOR: Final = "HETEROTRAIN_ACCELERATOR"  # the pool type of this worker
ENV_BACKEND: Final = "HETEROTRAIN_BACKEND"  # intra-pool backend, as the API names it: nccl|hccl|rccl|gloo
#: The precision hint of this worker's pool (spec.precision or spec.accelerators[].precision):
#: fp32 (or unset) | bf16 | fp16 | fp8 | int8; the SDK trains in it (heterotrain_runtime.precision).
ENV_PRECISION: Final = "HETEROTRAIN_PRECISION"

# --- the job's spec, as the runtime needs it -------------------------------------------------------
ENV_GLOBAL_BATCH_SIZE: Final = "HETEROTRAIN_GLOBAL_BATCH_SIZE"
ENV_REBALANCE_POLICY: Final = "HETEROTRAIN_REBALANCE_POLICY"  # Throughput|Equal
ENV_REBALANCE_MIN_INTERVAL: Final = "HETEROTRAIN_REBALANCE_MIN_INTERVAL_SECONDS"
ENV_CHECKPOINT_DIR: Final = "HETEROTRAIN_CHECKPOINT_DIR"
ENV_CHECKPOINT_KEEP: Final = "HETEROTRAIN_CHECKPOINT_KEEP"
ENV_CHECKPOINT_INTERVAL_STEPS: Final = "HETEROTRAIN_CHECKPOINT_INTERVAL_STEPS"
ENV_CHECKPOINT_INTERVAL_SECONDS: Final = "HETEROTRAIN_CHECKPOINT_INTERVAL_SECONDS"
ENV_CHECKPOINT_ASYNC: Final = "HETEROTRAIN_CHECKPOINT_ASYNC"
ENV_MAX_RESTARTS: Final = "HETEROTRAIN_MAX_RESTARTS"
ENV_HEARTBEAT_TIMEOUT: Final = "HETEROTRAIN_HEARTBEAT_TIMEOUT_SECONDS"
# The restart backoff (heterotrain_contract.backoff) of processes restarted in place by the launcher.
ENV_RESTART_BACKOFF: Final = "HETEROTRAIN_RESTART_BACKOFF_SECONDS"
ENV_RESTART_BACKOFF_LIMIT: Final = "HETEROTRAIN_RESTART_BACKOFF_LIMIT_SECONDS"
ENV_FAILURE_WINDOW: Final = "HETEROTRAIN_FAILURE_WINDOW_SECONDS"
#: A process of a pod that starts before it is a member (an SDK script) that has not written its SDK handshake
#: this many seconds after it started is stuck before training (an import, a dataset or a device that never
#: comes up): the launcher kills it and restarts it in place, and the pod fails once no restarts are left.
ENV_STARTUP_TIMEOUT: Final = "HETEROTRAIN_STARTUP_TIMEOUT_SECONDS"
DEFAULT_STARTUP_TIMEOUT_SECONDS: Final = 900
ENV_METRICS_PORT: Final = "HETEROTRAIN_METRICS_PORT"  # the worker serves Prometheus metrics on this port

# --- membership -------------------------------------------------------------------------------
#: Where membership is read from: "kubernetes" (the job's status, through the pod's service
#: account) or "file:<path>" (local mode, and the launcher's child process).
ENV_MEMBERSHIP_SOURCE: Final = "HETEROTRAIN_MEMBERSHIP_SOURCE"
MEMBERSHIP_SOURCE_KUBERNETES: Final = "kubernetes"
MEMBERSHIP_SOURCE_FILE_PREFIX: Final = "file:"
#: A :func:`truthy` flag: the launcher starts the training processes before its pod is a member (SDK scripts only:
#: the SDK waits for the membership itself). The operator sets it from the pod's annotation
#: ``heterotrain.io/start-before-member`` (:data:`heterotrain_contract.ANNOTATION_START_BEFORE_MEMBER`).
ENV_START_BEFORE_MEMBER: Final = "HETEROTRAIN_START_BEFORE_MEMBER"
#: How many processes the launcher starts before a membership names them (the type's ``perWorker``).
ENV_NPROC_PER_WORKER: Final = "HETEROTRAIN_NPROC_PER_WORKER"

# --- what a worker tells the operator through its exit code ------------------------------------------
#: The exit code of a training process whose framework ran out of device memory (torch's
#: OutOfMemoryError); its launcher does not restart it in place, the pod fails with it, and the
#: operator lowers the type's micro-batch cap, as for a container OOMKilled.
EXIT_OUT_OF_MEMORY: Final = 86

# --- the runtime's entry points, as the operator calls them ----------------------------------------
#: The init container's command (followed by the destination directory).
INSTALL_COMMAND: Final = ("python", "-m", "heterotrain_runtime.install")
#: ``python -m LAUNCH_MODULE launch -- CMD...`` starts the user's command under the launcher.
LAUNCH_MODULE: Final = "heterotrain_runtime"
