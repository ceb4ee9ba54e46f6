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
ENV_MAX_RESTARTS = "HETEROTRAIN_MAX_RESTARTS"
ENV_HEARTBEAT_TIMEOUT = "HETEROTRAIN_HEARTBEAT_TIMEOUT_SECONDS"
ENV_MASTER_PORT = "HETEROTRAIN_MASTER_PORT"
# Where membership is read from: "kubernetes" (the job's status, through the
# pod's service account) or "file:<path>" (local mode).
ENV_MEMBERSHIP_SOURCE = "HETEROTRAIN_MEMBERSHIP_SOURCE"
# Emulated device speed of a process-runner node (test infrastructure): a
# float, 1.0 = reference speed.  Unset on real accelerators.
ENV_EMULATED_SPEED = "HETEROTRAIN_EMULATED_SPEED"
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
