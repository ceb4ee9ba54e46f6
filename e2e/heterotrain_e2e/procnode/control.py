"""Faults the process runner can play (TEST INFRASTRUCTURE): a pod whose processes hang, a node that dies.

* :func:`freeze_pod` / :func:`thaw_pod`: SIGSTOP / SIGCONT every process of a pod's containers (a hang:
  alive as far as Kubernetes knows, silent to its peers).
* :func:`stop_node` / :func:`start_node`: the node's kubelet stops renewing its Lease and posting its
  status, so the node goes NotReady after the controller manager's grace period; with ``freeze`` (a dead
  node: power, kernel, network) its pods' processes are stopped too.  A stopped node starts no new pod.
  The runner still stops the processes of pods deleted from a stopped node (as if the node came back
  long enough to clean up), so that a test leaves nothing running.

The runner reads the stopped nodes from ``<state-dir>/control/stopped-nodes/<node>`` (one file each);
processes are found through the pid files (``<state-dir>/pids``), which name pod, container and node.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from .process import pid_dir, signal_group


@dataclass(frozen=True)
class ContainerPid:
    pgid: int
    pod: str  # namespace/name
    container: str
    node: str


def container_pids(state_dir: Path) -> list[ContainerPid]:
    """Every running container process the runner recorded."""
    out = []
    d = pid_dir(state_dir)
    for f in sorted(d.glob("*")) if d.is_dir() else []:
        if f.name.startswith("."):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = f.read_text().split()
            out.append(
                ContainerPid(int(fields[0]), fields[2], fields[3], fields[4] if len(fields) > 4 else "-")
            )
    return out


def _signal_all(pids: list[ContainerPid], sig: int) -> list[int]:
    return [p.pgid for p in pids if signal_group(p.pgid, sig)]


def freeze_pod(state_dir: Path, namespace: str, pod: str) -> list[int]:
    """SIGSTOP the process groups of a pod's containers; returns them (empty: none running)."""
    return _signal_all(
        [p for p in container_pids(state_dir) if p.pod == f"{namespace}/{pod}"], signal.SIGSTOP
    )


def thaw_pod(state_dir: Path, namespace: str, pod: str) -> list[int]:
    return _signal_all(
        [p for p in container_pids(state_dir) if p.pod == f"{namespace}/{pod}"], signal.SIGCONT
    )


def stopped_dir(state_dir: Path) -> Path:
    return state_dir / "control" / "stopped-nodes"


def stopped_nodes(state_dir: Path) -> set[str]:
    d = stopped_dir(state_dir)
    return {f.name for f in d.iterdir()} if d.is_dir() else set()


def stop_node(state_dir: Path, node: str, freeze: bool = True) -> list[int]:
    """The node stops reporting (Lease, status) and, with ``freeze``, its pods' processes stop."""
    d = stopped_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / node).write_text("freeze\n" if freeze else "lease\n")
    if not freeze:
        return []
    return _signal_all([p for p in container_pids(state_dir) if p.node == node], signal.SIGSTOP)


def start_node(state_dir: Path, node: str) -> list[int]:
    """Undo :func:`stop_node`: reporting resumes, stopped processes continue."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stopped_dir(state_dir) / node)
    return _signal_all([p for p in container_pids(state_dir) if p.node == node], signal.SIGCONT)
