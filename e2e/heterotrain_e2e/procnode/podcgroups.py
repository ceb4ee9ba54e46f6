"""The cgroups of one pod's processes (I/O glue over :mod:`heterotrain_runtime.cgroups`).

Part of the process runner, a fake kubelet for tests (see the package docstring).

One group per pod (``<owner>/pod-<uid>``: the pod's CPU quota and memory
limit, see :mod:`.resources`) and, below it, one per container run (a
restarted container gets a fresh group, as a new container would).  When a
container's main process ends, what it left running in its group is killed
and the group removed; whether the kernel OOM-killed one of its processes is
what makes the exit ``OOMKilled``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heterotrain_runtime.cgroups import Cgroup, CgroupError, Cgroups

from .resources import PodResources, pod_resources

JSON = dict[str, Any]
log = logging.getLogger(__name__)
RECORD = "cgroups.json"  # in the state dir: the runner's owner groups, for a cluster-down after a crash


class PodCgroups:
    def __init__(self, cgroups: Cgroups, uid: str, key: str, cores_per_speed: Callable[[], float]) -> None:
        self._cgroups = cgroups
        self._uid = uid
        self._key = key
        self._cores_per_speed = cores_per_speed
        self._pod: Cgroup | None = None
        self._runs: dict[str, Cgroup] = {}
        self.resources: PodResources | None = None

    def start(self, pod: JSON, node: JSON, container: str) -> Cgroup:
        """A fresh group for a new run of ``container`` (the pod's group is made on first use)."""
        if self._pod is None:
            self.resources = pod_resources(pod, node, self._cores_per_speed())
            self._pod = self._cgroups.group(f"pod-{self._uid}", self.resources.pod)
            r = self.resources
            log.info(
                "pod %s: cgroup %s, CPU %s, memory %s%s",
                self._key,
                self._pod.name,
                "unlimited" if r.pod.cpu is None else f"{r.pod.cpu.cores:.3g} cores",
                "unlimited" if r.pod.memory_bytes is None else f"{r.pod.memory_bytes} bytes",
                f" ({r.emulated_devices} emulated device(s) of speed {r.emulated_speed:g})"
                if r.emulated_cores is not None and r.emulated_speed is not None
                else "",
            )
        assert self.resources is not None
        old = self._runs.pop(container, None)
        if old is not None:
            old.remove()
        group = self._pod.child(container, self.resources.containers[container])
        self._runs[container] = group
        return group

    def ended(self, container: str) -> bool:
        """The container's main process ended: kill what is left, remove its group; was it an OOM kill?"""
        group = self._runs.pop(container, None)
        if group is None:
            return False
        oom = group.oom_kills() > 0
        try:
            group.remove()
        except CgroupError as e:
            log.warning("pod %s container %s: %s", self._key, container, e)
        return oom

    def close(self) -> None:
        """Remove every group of the pod (killing whatever still runs in them)."""
        self._runs.clear()
        if self._pod is not None:
            try:
                self._pod.remove()
            except CgroupError as e:
                log.warning("pod %s: %s", self._key, e)
            self._pod = None


def record_owner(state_dir: Path, cgroups: Cgroups) -> None:
    """Write the runner's owner groups into the state dir (see :func:`remove_recorded`)."""
    path = state_dir / RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({c: str(d) for c, d in cgroups.owner.dirs.items()}) + "\n")
    tmp.replace(path)


def remove_recorded(state_dir: Path) -> list[str]:
    """Remove the groups a runner recorded (it was SIGKILLed: nobody else will); what was removed."""
    path = state_dir / RECORD
    try:
        dirs = {str(c): Path(d) for c, d in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return []
    present = {c: d for c, d in dirs.items() if d.exists()}
    if present:
        Cgroup(next(iter(present.values())).name, present).remove()
    path.unlink(missing_ok=True)
    return sorted(str(d) for d in present.values())
