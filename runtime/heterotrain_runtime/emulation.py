"""Emulated devices in local mode: a CPU quota per training process, its host's work outside it.

An accelerator computes at its own speed, and its host does the rest: a slow
device slows its forward and backward passes, not the gloo all-reduce that its
host's CPU runs between pools.  So a worker ("pod") of local mode gets a group
for its host and one child group per emulated device::

    <pod>.<generation>/         the host: the launcher, torch's communication threads
        device-0/               training process of LOCAL_RANK 0: speed x cores per speed
        device-1/               ...

The host group is capped too (its devices' cores plus :data:`HOST_CORES`), so
that an owner whose every group is capped may keep its high CPU weight
(:data:`heterotrain_runtime.cgroups.CAPPED_OWNER_CPU_SHARES`).

:meth:`DeviceGroups.sweep`, called from the supervisor's loop, does the rest:

* a process whose main thread is in the host group and whose environment
  names a ``LOCAL_RANK`` (a training process the launcher started) moves,
  whole, into that device's group;
  what it forks later inherits the device;
* a thread of a device group that torch started for communication
  (:data:`HOST_THREADS`, by the name torch gives it: gloo's run loops and TCP
  loop, the TCPStore's loop) moves back to the host group.

Everything else a training process does stays inside its device's quota: the
forward and backward passes, the optimizer, the SDK's bookkeeping on the main
thread, and any thread the script starts itself (OpenMP).  Between its start and
the next sweep a process runs at the host's speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from heterotrain_runtime import envvars
from heterotrain_runtime.cgroups import Cgroup, CgroupError, Cgroups, Limits

HOST_CORES = 1.0  # what a worker's host may use beside its devices
HOST_THREADS = frozenset({"pt_gloo_runloop", "gloo_tcp_loop", "pt_tcpstore_uv"})
LOCAL_RANK = envvars.ENV_LOCAL_RANK.encode() + b"="
DEVICE_GROUP = "device-{}"


def local_rank_of(environ: bytes) -> int | None:
    """``LOCAL_RANK`` from the text of ``/proc/<pid>/environ`` (None when absent or not a number)."""
    for entry in environ.split(b"\0"):
        if entry.startswith(LOCAL_RANK):
            with contextlib.suppress(ValueError):
                return int(entry[len(LOCAL_RANK) :])
    return None


def host_threads(threads: Iterable[tuple[int, str]]) -> list[int]:
    """The thread ids, of ``(tid, name)`` pairs, that are the host's work (:data:`HOST_THREADS`)."""
    return [tid for tid, name in threads if name in HOST_THREADS]


@dataclass
class DeviceGroups:
    """One worker's groups: its host and a device per training process (see the module docstring)."""

    host: Cgroup
    devices: list[Cgroup]
    launcher_pid: int | None = None
    proc: Path = Path("/proc")

    @classmethod
    def make(cls, cgroups: Cgroups, name: str, device_cores: list[float]) -> DeviceGroups:
        host = cgroups.group(name, Limits.of(cores=sum(device_cores) + HOST_CORES))
        devices = [host.child(DEVICE_GROUP.format(i), Limits.of(cores=c)) for i, c in enumerate(device_cores)]
        return cls(host, devices)

    @property
    def device_cores(self) -> list[float]:
        return [d.limits.cpu.cores if d.limits.cpu is not None else 0.0 for d in self.devices]

    def sweep(self) -> int:
        """Training processes into their devices, communication threads to the host; how many moved."""
        return self._place_processes() + self._release_host_threads()

    def _place_processes(self) -> int:
        moved = 0
        # a process whose main thread (tid = pid) is on the host: its moved threads list it there too
        on_host = set(self._read_ids(self.host, "tasks"))
        for pid in self._read_ids(self.host, "cgroup.procs"):
            if pid == self.launcher_pid or pid not in on_host:
                continue
            try:
                rank = local_rank_of((self.proc / str(pid) / "environ").read_bytes())
            except OSError:
                continue  # gone
            if rank is not None and 0 <= rank < len(self.devices):
                with contextlib.suppress(CgroupError):  # it may have ended meanwhile
                    self.devices[rank].add(pid)
                    moved += 1
        return moved

    def _release_host_threads(self) -> int:
        named = []
        for device in self.devices:
            for tid in self._read_ids(device, "tasks"):
                try:
                    named.append((tid, (self.proc / str(tid) / "comm").read_text().strip()))
                except OSError:
                    continue
        moved = 0
        for tid in host_threads(named):  # read every time: a new thread takes its name after it starts
            with contextlib.suppress(CgroupError):  # ended meanwhile
                self.host.add_thread(tid)
                moved += 1
        return moved

    @staticmethod
    def _read_ids(group: Cgroup, name: str) -> list[int]:
        d = group.dirs.get("cpu")
        if d is None:
            return []
        try:
            return [int(x) for x in (d / name).read_text().split()]
        except (OSError, ValueError):
            return []

    def remove(self) -> None:
        """Kill what runs in the worker's groups and remove them."""
        self.host.remove()
