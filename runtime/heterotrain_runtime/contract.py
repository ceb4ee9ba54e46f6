"""The contract between the HeteroTrain operator and the runtime it injects.

This is the only module the operator imports from the runtime, and the runtime
imports nothing of the operator.  It names the environment variables the
operator sets on every worker, the labels and annotations on worker pods, and
the shape of the membership record the operator publishes in the job's
``status.membership`` (or a local file in local mode).

It depends on the standard library alone, so that both sides can import it
cheaply (no torch, no kubernetes client).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

GROUP = "heterotrain.io"
VERSION = "v1alpha1"
PLURAL = "heterotrainjobs"
KIND = "HeteroTrainJob"

# --- labels and annotations on objects the operator owns -------------------
LABEL_JOB = f"{GROUP}/job-name"
LABEL_ROLE = f"{GROUP}/role"  # "worker"
LABEL_ACCELERATOR = f"{GROUP}/accelerator"  # also the node label of a pool
LABEL_WORKER_INDEX = f"{GROUP}/worker-index"
ANNOTATION_EMULATED_SPEED = f"{GROUP}/emulated-speed"  # on process-runner nodes

# --- environment variables set on every worker container -------------------
ENV_JOB_NAME = "HETEROTRAIN_JOB_NAME"
ENV_NAMESPACE = "HETEROTRAIN_NAMESPACE"
ENV_POD_NAME = "HETEROTRAIN_POD_NAME"
ENV_POD_IP = "HETEROTRAIN_POD_IP"
ENV_NODE_NAME = "HETEROTRAIN_NODE_NAME"
ENV_ACCELERATOR = "HETEROTRAIN_ACCELERATOR"  # the pool type of this worker
ENV_RELATIVE_THROUGHPUT = "HETEROTRAIN_RELATIVE_THROUGHPUT"
ENV_BACKEND = "HETEROTRAIN_BACKEND"  # intra-pool backend: nccl|hccl|rccl|gloo
ENV_GLOBAL_BATCH_SIZE = "HETEROTRAIN_GLOBAL_BATCH_SIZE"
ENV_REBALANCE_POLICY = "HETEROTRAIN_REBALANCE_POLICY"  # Throughput|Equal
ENV_CHECKPOINT_DIR = "HETEROTRAIN_CHECKPOINT_DIR"
ENV_CHECKPOINT_KEEP = "HETEROTRAIN_CHECKPOINT_KEEP"
ENV_CHECKPOINT_INTERVAL_STEPS = "HETEROTRAIN_CHECKPOINT_INTERVAL_STEPS"
ENV_CHECKPOINT_INTERVAL_SECONDS = "HETEROTRAIN_CHECKPOINT_INTERVAL_SECONDS"
ENV_CHECKPOINT_ASYNC = "HETEROTRAIN_CHECKPOINT_ASYNC"
# Bound on a checkpoint's collectives (they wait for the slowest rank's write); at least the heartbeat.
ENV_CHECKPOINT_TIMEOUT = "HETEROTRAIN_CHECKPOINT_TIMEOUT_SECONDS"
ENV_MAX_RESTARTS = "HETEROTRAIN_MAX_RESTARTS"
ENV_HEARTBEAT_TIMEOUT = "HETEROTRAIN_HEARTBEAT_TIMEOUT_SECONDS"
ENV_MASTER_PORT = "HETEROTRAIN_MASTER_PORT"
# Where membership is read from: "kubernetes" (the job's status, through the
# pod's service account) or "file:<path>" (local mode).
ENV_MEMBERSHIP_SOURCE = "HETEROTRAIN_MEMBERSHIP_SOURCE"
# Emulated device speed of a process-runner node (test infrastructure): a
# float, 1.0 = reference speed.  Unset on real accelerators.
ENV_EMULATED_SPEED = "HETEROTRAIN_EMULATED_SPEED"
# Directory holding the pod's service-account token and CA (token, ca.crt); unset in a
# normal pod, where /var/run/secrets/kubernetes.io/serviceaccount is used.
ENV_SERVICEACCOUNT_DIR = "HETEROTRAIN_SERVICEACCOUNT_DIR"
# Where the init container installed the runtime package (put on PYTHONPATH).
ENV_RUNTIME_PATH = "HETEROTRAIN_RUNTIME_PATH"

MEMBERSHIP_SOURCE_KUBERNETES = "kubernetes"
MEMBERSHIP_SOURCE_FILE_PREFIX = "file:"

DEFAULT_MASTER_PORT = 29400
RUNTIME_VOLUME_NAME = "heterotrain-runtime"
RUNTIME_MOUNT_PATH = "/opt/heterotrain"
INSTALL_COMMAND = ["python", "-m", "heterotrain_runtime.install"]
LAUNCH_MODULE = "heterotrain_runtime"


@dataclass(frozen=True)
class Member:
    """One worker of the current world."""

    pod: str
    rank: int
    type: str
    address: str
    weight: float


@dataclass(frozen=True)
class Membership:
    """The world of one membership epoch, as published by the operator.

    ``epoch`` increases by one every time the set of workers (or their ranks)
    changes; workers re-form their process group when they see a new epoch.
    """

    epoch: int
    world: tuple[Member, ...] = field(default_factory=tuple)
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def world_size(self) -> int:
        return len(self.world)

    @property
    def master_addr(self) -> str:
        for m in self.world:
            if m.rank == 0:
                return m.address
        raise ValueError("membership has no rank 0")

    def member(self, pod: str) -> Member | None:
        for m in self.world:
            if m.pod == pod:
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "masterPort": self.master_port,
            "world": [asdict(m) for m in self.world],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Membership:
        """Parse ``status.membership`` (or a membership file); strict on shape."""
        try:
            epoch = int(data["epoch"])
            world = tuple(
                Member(
                    pod=str(m["pod"]),
                    rank=int(m["rank"]),
                    type=str(m["type"]),
                    address=str(m["address"]),
                    weight=float(m["weight"]),
                )
                for m in data.get("world") or ()
            )
            port = int(data.get("masterPort", DEFAULT_MASTER_PORT))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed membership record: {e!r}") from e
        ranks = sorted(m.rank for m in world)
        if ranks != list(range(len(world))):
            raise ValueError(f"membership ranks must be 0..{len(world) - 1}, got {ranks}")
        return cls(epoch=epoch, world=tuple(sorted(world, key=lambda m: m.rank)), master_port=port)


def write_membership_file(path: str, membership: Membership) -> None:
    """Atomically replace a local membership file (local mode)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(membership.to_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_membership_file(path: str) -> Membership | None:
    try:
        with open(path, encoding="utf-8") as f:
            return Membership.from_dict(json.load(f))
    except FileNotFoundError:
        return None


# --- additions by the runtime (issue 5) -------------------------------------
# Set by the launcher on the user process, next to the torchrun-style
# RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT.
ENV_EPOCH = "HETEROTRAIN_EPOCH"  # membership epoch the process was started in
ENV_WEIGHT = "HETEROTRAIN_WEIGHT"  # this rank's weight in that epoch
ENV_LOCAL_BATCH_SIZE = "HETEROTRAIN_LOCAL_BATCH_SIZE"  # this rank's share of the global batch
ENV_BATCH_SPLIT = "HETEROTRAIN_BATCH_SPLIT"  # every rank's share, comma-separated, rank order
ENV_POOL = "HETEROTRAIN_POOL"  # this rank's pool: "<index>/<count>" of its accelerator type
ENV_RESTART_COUNT = "HETEROTRAIN_RESTART_COUNT"  # failure restarts done by the launcher so far
# A file the launcher names and the SDK writes once it is in charge of
# membership changes: with it the launcher does not restart the process on a
# new epoch (the SDK re-forms its process groups at a step boundary).
ENV_SDK_HANDSHAKE_FILE = "HETEROTRAIN_SDK_HANDSHAKE_FILE"
# Optional knobs read by the SDK (all have defaults).
ENV_REBALANCE_MIN_INTERVAL = "HETEROTRAIN_REBALANCE_MIN_INTERVAL_SECONDS"
ENV_EMULATED_BASE_RATE = "HETEROTRAIN_EMULATED_BASE_RATE"  # samples/s at emulated speed 1.0
ENV_METRICS_PORT = "HETEROTRAIN_METRICS_PORT"  # serve Prometheus metrics on this port when set
ENV_PROGRESS_FILE = "HETEROTRAIN_PROGRESS_FILE"  # rank 0 appends one JSON line per step
ENV_SAMPLE_LOG_DIR = "HETEROTRAIN_SAMPLE_LOG_DIR"  # every rank logs the sample indices it committed
ENV_DATA_SEED = "HETEROTRAIN_DATA_SEED"  # seed of the global sample order
ENV_TOTAL_STEPS = "HETEROTRAIN_TOTAL_STEPS"  # steps to train (examples/train.py)
ENV_MEMBERSHIP_POLL_SECONDS = "HETEROTRAIN_MEMBERSHIP_POLL_SECONDS"

DEFAULT_MAX_RESTARTS = 3
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 30.0
DEFAULT_CHECKPOINT_TIMEOUT_SECONDS = 600.0
DEFAULT_REBALANCE_MIN_INTERVAL_SECONDS = 30.0

# Relative throughput of known accelerator types (samples/s relative to an
# NVIDIA A100 80GB on a dense transformer step, bf16).  Rough public figures;
# the runtime refines them from measured step times, so they only need to be
# good enough for a first split.
DEFAULT_RELATIVE_THROUGHPUT: dict[str, float] = {
    # The same numbers as the API's table of known accelerators (heterotrain_api.accelerators:
    # peak dense BF16 relative to an A100), which the operator uses for the weights it publishes;
    # a test keeps the two in agreement.  Local mode reads them from here.
    "nvidia-b200": 7.21,
    "nvidia-h100": 3.17,
    "nvidia-h200": 3.17,
    "nvidia-a100": 1.0,
    "nvidia-h20": 0.47,
    "nvidia-l40s": 1.16,
    "nvidia-l4": 0.39,
    "nvidia-v100": 0.4,
    "huawei-ascend-910b": 1.0,
    "amd-mi300x": 4.19,
    "amd-mi325x": 4.19,
    "amd-mi250x": 0.61,
    "cpu": 0.05,
}

# The collective backend native to each accelerator vendor, by type prefix.
DEFAULT_BACKENDS: dict[str, str] = {
    "nvidia": "nccl",
    "huawei": "hccl",
    "amd": "nccl",  # RCCL is exposed as "nccl" by ROCm builds of torch
    "cpu": "gloo",
}


def relative_throughput(accelerator: str) -> float:
    """Relative throughput of an accelerator type (1.0 when unknown)."""
    return DEFAULT_RELATIVE_THROUGHPUT.get(accelerator, 1.0)


def default_backend(accelerator: str) -> str:
    """The intra-pool collective backend of an accelerator type (gloo when unknown)."""
    return DEFAULT_BACKENDS.get(accelerator.split("-", 1)[0], "gloo")


def split_global_batch(global_batch: int, weights: list[float]) -> list[int]:
    """Cut ``global_batch`` samples among ranks proportionally to ``weights``.

    Largest-remainder rounding: the shares sum to ``global_batch`` exactly;
    every rank gets at least one sample when ``global_batch >= len(weights)``;
    ties go to the lower rank, so every process computes the same split.
    """
    n = len(weights)
    if n == 0:
        return []
    if global_batch < 0:
        raise ValueError("global batch must be >= 0")
    w = [max(float(x), 0.0) for x in weights]
    if sum(w) <= 0.0:
        w = [1.0] * n
    total = sum(w)
    exact = [global_batch * x / total for x in w]
    shares = [int(e) for e in exact]
    left = global_batch - sum(shares)
    order = sorted(range(n), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[:left]:
        shares[i] += 1
    if global_batch >= n:
        # Every rank gets at least one sample, taken from the largest share.
        for i in range(n):
            if shares[i] == 0:
                donor = max(range(n), key=lambda j: (shares[j], -j))
                shares[donor] -= 1
                shares[i] = 1
    return shares
