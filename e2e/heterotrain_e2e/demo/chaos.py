"""What the demo does to the local cluster midway (test infrastructure I/O), and where it reads progress.

* a worker's training process killed: SIGKILL of the process group the process runner started for
  the pod's ``worker`` container (the launcher and its training process), as an OOM kill would;
* a node added: the next node of one of the profile's process-runner pools (same labels, capacity and
  emulated speed), applied to the API; the process runner serves it from its next node sync.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from heterotrain_e2e.cluster import profile as profilemod
from heterotrain_e2e.testing import Cluster, pod_pgid


def kill_worker(cluster: Cluster, namespace: str, pod: str) -> int:
    """SIGKILL the worker container's process group; returns its id."""
    pgid = pod_pgid(cluster, namespace, pod, "worker")
    os.killpg(pgid, signal.SIGKILL)
    return pgid


def next_node(profile: profilemod.Profile, type_: str, existing: set[str]) -> dict[str, Any]:
    """The Node object of one more node in the profile's process-runner pool of ``type_`` (pure)."""
    pools = [p for p in profile.pools if p.type == type_ and p.runner == "process"]
    if not pools:
        raise ValueError(f"the profile {profile.name!r} has no process-runner pool of {type_}")
    pool = pools[0]
    count = pool.count
    while True:
        count += 1
        grown = pool.model_copy(update={"count": count})
        node = profilemod.node_manifests(profile.model_copy(update={"pools": [grown]}))[-1]
        if node["metadata"]["name"] not in existing:
            return node


def add_node(cluster: Cluster, node: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=heterotrain-demo",
        "-f",
        "-",
        input=json.dumps(node),
    )


class ProgressTail:
    """Rank 0's progress records (one JSON object per line), read as they are appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.records: list[dict[str, Any]] = []

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.pos += end + 1
        new = []
        for line in chunk[: end + 1].splitlines():
            try:
                new.append(json.loads(line))
            except ValueError:
                continue
        self.records.extend(new)
        return new
