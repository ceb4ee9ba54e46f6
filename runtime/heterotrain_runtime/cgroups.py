"""cgroup v1 CPU and memory limits for process trees, as a kubelet enforces ``limits.cpu``/``limits.memory``.

Local mode (``heterotrain run --local``) gives each emulated device's training
process a CPU quota proportional to the device's speed, so slower devices really
compute slower on one CPU (:mod:`heterotrain_runtime.emulation` lays out its
groups); the e2e process runner enforces pods' limits the same way.  Stdlib only.

Layout, in each controller's hierarchy (``cpu`` and ``memory``)::

    <parent>/heterotrain-<kind>-<pid>-<starttime>-<n>/<group>/<child>...

``<parent>`` is the caller's own group (read from ``/proc/self/cgroup``)
unless configured (``parent=`` or ``$HETEROTRAIN_CGROUP_PARENT``: relative to
the caller's own group, or from the hierarchy's root when it starts with
``/``).  One *owner* group per process that creates groups (a local
supervisor, a process runner), named after its pid and start time: an owner
whose process is gone left stale groups behind (it crashed), and the next
:class:`Cgroups` opened under the same parent kills what still runs in them and
removes them.

A process joins its group before it runs anything: :meth:`Cgroup.preexec` is a
``preexec_fn`` for :class:`subprocess.Popen` that writes the child's own pid
into ``cgroup.procs`` between fork and exec (it only calls ``os.open``/
``os.write``, so it is safe in a threaded parent).  Children the process forks
later inherit the group.

CPU: ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``.  The default period is
10 ms, finer than the kubelet's 100 ms, so that a training step of tens of
milliseconds is throttled evenly rather than in 100 ms bursts; the kernel needs
a quota of at least 1 ms, so the period grows for very small quotas.  The
kernel's cgroup v1 refuses a child quota above its parent's: a child's is
clamped to its parent's.  A group with a quota also gets ``cpu.shares`` in
proportion (1024 per core, as the kubelet derives shares from CPU), so that
siblings competing for the CPU keep their ratio.  An owner whose groups are all
capped may ask for a high weight (:data:`CAPPED_OWNER_CPU_SHARES`): its groups
then get their quota even while other processes load the machine, and cannot
starve them, being capped.

Memory: ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` to the same
value where swap accounting exists, and ``memory.swappiness`` 0, so a process
past its limit is OOM-killed rather than swapped; :meth:`Cgroup.oom_kills`
(``oom_kill`` of ``memory.oom_control``) tells an OOM kill from another SIGKILL.

Emulated device speed: ``cores = speed x per_speed``, with ``per_speed`` =
:data:`DEFAULT_CPU_PER_SPEED` (0.15 of a core at speed 1.0) unless the devices
together would need more than :data:`DEFAULT_CPU_BUDGET_FRACTION` of the
machine's cores, in which case it is scaled down to fit (see
:func:`cpu_per_speed`).  The speeds are approximate: a slow device loses a
little more to cold caches after each throttled period, and a device that
waited for its peers starts its next step with unspent quota.  Measured on the
2-core development machine, quotas of 0.15 and 0.45 of a core running the
same training step (``benchmarks/runtime/compute_train.py``, equal batches)
computed 3.2-4.1x apart rather than 3x.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_CGROUP_PARENT = "HETEROTRAIN_CGROUP_PARENT"
OWNER_PREFIX = "heterotrain-"
DEFAULT_MOUNT_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "memory")
CONTROL_FILES: Mapping[str, str] = {"cpu": "cpu.cfs_quota_us", "memory": "memory.limit_in_bytes"}

DEFAULT_CPU_PER_SPEED = 0.15  # cores given to an emulated device of speed 1.0
DEFAULT_CPU_BUDGET_FRACTION = 0.75  # of the machine's cores that all emulated devices may use together
DEFAULT_CPU_PERIOD_US = 10_000
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses less
MAX_CPU_PERIOD_US = 1_000_000  # nor a longer period
SHARES_PER_CORE = 1024
CAPPED_OWNER_CPU_SHARES = 64 * SHARES_PER_CORE  # an owner whose every group has a CPU quota


_OWNER_RE = re.compile(r"^heterotrain-(?P<kind>[a-z][a-z0-9-]*)-(?P<pid>\d+)-(?P<start>\d+)-(?P<seq>\d+)$")
_owner_seq = itertools.count()  # owners of one process differ by this


class CgroupError(RuntimeError):
    """A cgroup operation failed."""


class CgroupUnavailable(CgroupError):
    """cgroups cannot be used here: the message names what is missing and what to do."""


# --- pure -------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuQuota:
    quota_us: int
    period_us: int

    @property
    def cores(self) -> float:
        return self.quota_us / self.period_us


def cpu_quota(cores: float, period_us: int = DEFAULT_CPU_PERIOD_US) -> CpuQuota:
    """The CFS quota for ``cores`` CPUs; the period grows when the quota would be under 1 ms."""
    if not cores > 0 or math.isinf(cores):
        raise ValueError(f"cores must be a positive number, got {cores!r}")
    if period_us < MIN_CPU_QUOTA_US or period_us > MAX_CPU_PERIOD_US:
        raise ValueError(
            f"period_us must be within [{MIN_CPU_QUOTA_US}, {MAX_CPU_PERIOD_US}], got {period_us}"
        )
    if cores * period_us < MIN_CPU_QUOTA_US:
        period_us = min(MAX_CPU_PERIOD_US, math.ceil(MIN_CPU_QUOTA_US / cores))
    return CpuQuota(max(MIN_CPU_QUOTA_US, round(cores * period_us)), period_us)


def cpu_per_speed(
    total_speed: float,
    cores: float,
    per_speed: float = DEFAULT_CPU_PER_SPEED,
    budget_fraction: float = DEFAULT_CPU_BUDGET_FRACTION,
) -> float:
    """Cores per unit of emulated speed: ``per_speed``, scaled down so all devices fit the budget.

    ``total_speed`` is the sum of the speeds of every emulated device that may
    run at once; together they get at most ``budget_fraction`` of ``cores``.
    """
    if per_speed <= 0 or budget_fraction <= 0 or cores <= 0:
        raise ValueError("per_speed, budget_fraction and cores must be positive")
    if total_speed <= 0:
        return per_speed
    return min(per_speed, cores * budget_fraction / total_speed)


@dataclass(frozen=True)
class Limits:
    """What a group enforces; ``None``: unlimited."""

    cpu: CpuQuota | None = None
    memory_bytes: int | None = None

    @classmethod
    def of(
        cls,
        cores: float | None = None,
        memory_bytes: int | None = None,
        period_us: int = DEFAULT_CPU_PERIOD_US,
    ) -> Limits:
        if memory_bytes is not None and memory_bytes <= 0:
            raise ValueError(f"memory_bytes must be positive, got {memory_bytes}")
        return cls(None if cores is None else cpu_quota(cores, period_us), memory_bytes)


def own_group_paths(proc_self_cgroup: str) -> dict[str, str]:
    """Controller -> the caller's group path, from the text of ``/proc/self/cgroup`` (v1 lines only)."""
    out: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[1]:
            continue  # "0::/path" is the unified (v2) hierarchy
        for ctrl in parts[1].split(","):
            out[ctrl] = parts[2]
    return out


# --- files ------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str | int) -> None:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:
        raise CgroupError(f"writing {value!r} to {path}: {e.strerror or e}") from e


def proc_starttime(pid: int, proc: Path = Path("/proc")) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (tells a reused pid apart), or None when there is no such process."""
    try:
        return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Cgroup:
    """One group, present in every controller's hierarchy (``dirs``: controller -> directory)."""

    def __init__(self, name: str, dirs: Mapping[str, Path]) -> None:
        self.name = name
        self.dirs = dict(dirs)
        self.limits = Limits()

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r})"

    @classmethod
    def make(cls, name: str, dirs: Mapping[str, Path], limits: Limits = Limits()) -> Cgroup:
        """Create the directories (a leftover of the same name is removed first) and set ``limits``."""
        group = cls(name, dirs)
        for d in group.dirs.values():
            if d.exists():
                Cgroup(name, {"x": d}).remove()
        for ctrl, d in group.dirs.items():
            for _attempt in range(5):
                try:
                    d.parent.mkdir(parents=True, exist_ok=True)
                    d.mkdir()
                    break
                except FileNotFoundError:  # a parent was removed meanwhile (another owner's cleanup)
                    continue
                except OSError as e:
                    group.remove()
                    raise CgroupError(f"creating the {ctrl} group {d}: {e.strerror or e}") from e
            else:
                raise CgroupError(f"creating the {ctrl} group {d}: its parent keeps disappearing")
        try:
            group.set_limits(limits)
        except CgroupError:
            group.remove()
            raise
        return group

    def child(self, name: str, limits: Limits = Limits()) -> Cgroup:
        """A new group under this one; a CPU quota above this group's is clamped to it."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid group name {name!r}")
        cpu = limits.cpu
        if cpu is not None and self.limits.cpu is not None and cpu.cores > self.limits.cpu.cores:
            cpu = self.limits.cpu
        return Cgroup.make(
            f"{self.name}/{name}",
            {c: d / name for c, d in self.dirs.items()},
            Limits(cpu, limits.memory_bytes),
        )

    def set_limits(self, limits: Limits) -> None:
        cpu_dir, mem_dir = self.dirs.get("cpu"), self.dirs.get("memory")
        if limits.cpu is not None:
            if cpu_dir is None:
                raise CgroupError(f"{self}: a CPU limit needs the cpu controller")
            _write(cpu_dir / "cpu.cfs_quota_us", -1)  # so that any period is accepted
            _write(cpu_dir / "cpu.cfs_period_us", limits.cpu.period_us)
            _write(cpu_dir / "cpu.cfs_quota_us", limits.cpu.quota_us)
            _write(cpu_dir / "cpu.shares", max(2, round(SHARES_PER_CORE * limits.cpu.cores)))
        if limits.memory_bytes is not None:
            if mem_dir is None:
                raise CgroupError(f"{self}: a memory limit needs the memory controller")
            _write(mem_dir / "memory.swappiness", 0)
            _write(mem_dir / "memory.limit_in_bytes", limits.memory_bytes)
            if (mem_dir / "memory.memsw.limit_in_bytes").exists():
                _write(mem_dir / "memory.memsw.limit_in_bytes", limits.memory_bytes)
        self.limits = limits

    # --- processes ----------------------------------------------------------------

    def add(self, pid: int) -> None:
        """Move ``pid`` (the whole process) into this group in every controller."""
        for d in self.dirs.values():
            _write(d / "cgroup.procs", pid)

    def add_thread(self, tid: int) -> None:
        """Move one thread (``tid``) into this group's CPU controller only (its process stays put)."""
        cpu = self.dirs.get("cpu")
        if cpu is None:
            raise CgroupError(f"{self}: moving a thread needs the cpu controller")
        _write(cpu / "tasks", tid)

    def preexec(self) -> Callable[[], None]:
        """A ``preexec_fn``: the child moves itself into this group between fork and exec."""
        files = [os.fsencode(d / "cgroup.procs") for d in self.dirs.values()]

        def join() -> None:
            pid = str(os.getpid()).encode()
            for f in files:
                fd = os.open(f, os.O_WRONLY)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)

        return join

    def _tree(self) -> Iterator[Path]:
        """Every directory of this group and its descendants, deepest first."""
        for d in self.dirs.values():
            if d.is_dir():
                for sub, _dirs, _files in sorted(os.walk(d), key=lambda x: -x[0].count(os.sep)):
                    yield Path(sub)

    def pids(self) -> set[int]:
        """The processes in this group and its descendants."""
        out: set[int] = set()
        for d in self._tree():
            with contextlib.suppress(OSError, ValueError):
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return out

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Signal every process of this group and its descendants; how many were signalled."""
        n = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                n += 1
        return n

    # --- accounting ---------------------------------------------------------------

    def _stat_file(self, ctrl: str, name: str) -> dict[str, int]:
        d = self.dirs.get(ctrl)
        if d is None:
            return {}
        out = {}
        with contextlib.suppress(OSError):
            for line in (d / name).read_text().splitlines():
                k, _, v = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[k] = int(v)
        return out

    def oom_kills(self) -> int:
        """Processes of this group the kernel OOM-killed (``oom_kill`` of ``memory.oom_control``).

        Kernels before 4.13 have no such counter: there, any hit of the limit
        (``memory.failcnt``) counts, which over-reports when the kernel could reclaim instead.
        """
        ctl = self._stat_file("memory", "memory.oom_control")
        if "oom_kill" in ctl:
            return ctl["oom_kill"]
        d = self.dirs.get("memory")
        if d is None:
            return 0
        try:
            return int(_read(d / "memory.failcnt"))
        except (OSError, ValueError):
            return 0

    def cpu_stat(self) -> dict[str, int]:
        """``cpu.stat``: nr_periods, nr_throttled, throttled_time (ns), ..."""
        return self._stat_file("cpu", "cpu.stat")

    # --- the end ------------------------------------------------------------------

    def remove(self, timeout: float = 10.0) -> None:
        """Kill whatever still runs in this group (and below), then remove the directories, deepest first."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            if left:
                self.kill(signal.SIGKILL)
            else:
                busy = []
                for d in self._tree():
                    try:
                        d.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                            raise CgroupError(f"removing {d}: {e.strerror or e}") from e
                        busy.append(d)
                if not busy:
                    return
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"{self}: could not remove it within {timeout:g}s (processes left: {sorted(left)})"
                )
            time.sleep(0.02)


class Cgroups:
    """The groups of one owner process (see the module docstring); :meth:`close` removes them all."""

    def __init__(
        self,
        kind: str,
        *,
        parent: str | None = None,
        mount_root: Path = DEFAULT_MOUNT_ROOT,
        proc: Path = Path("/proc"),
        controllers: tuple[str, ...] = CONTROLLERS,
        hint: str = "",
        cpu_shares: int | None = None,
    ) -> None:
        """Check that the controllers can be used (else :class:`CgroupUnavailable`), remove stale owners,
        and create this owner's group.  ``hint``: what the user can do instead (e.g. a flag that turns
        emulation off), appended to the error.  ``cpu_shares``: the owner group's CPU weight (see the
        module docstring); default the kernel's 1024."""
        if not _OWNER_RE.match(f"{OWNER_PREFIX}{kind}-0-0-0"):
            raise ValueError(f"invalid owner kind {kind!r}")
        self.kind = kind
        self.mount_root = mount_root
        self.proc = proc
        self.bases = _parent_dirs(
            parent if parent is not None else os.environ.get(ENV_CGROUP_PARENT, ""),
            mount_root,
            proc,
            controllers,
            hint,
        )
        self.stale_removed = clean_stale(self.bases, proc)
        for b in self.bases.values():
            b.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        name = f"{OWNER_PREFIX}{kind}-{pid}-{proc_starttime(pid, proc) or 0}-{next(_owner_seq)}"
        self.owner = Cgroup.make(name, {c: b / name for c, b in self.bases.items()})
        self.closed = False
        if cpu_shares is not None and "cpu" in self.owner.dirs:
            _write(self.owner.dirs["cpu"] / "cpu.shares", cpu_shares)

    def group(self, name: str, limits: Limits = Limits()) -> Cgroup:
        """A new group of this owner (a leftover of the same name is killed and replaced)."""
        return self.owner.child(name, limits)

    def available_cores(self) -> float:
        """The CPUs this process may use: its affinity, capped by its own group's CPU quota if any."""
        cores = float(len(os.sched_getaffinity(0)))
        with contextlib.suppress(OSError, ValueError, KeyError):
            own = (
                self.mount_root
                / "cpu"
                / own_group_paths((self.proc / "self" / "cgroup").read_text())["cpu"].strip("/")
            )
            quota, period = int(_read(own / "cpu.cfs_quota_us")), int(_read(own / "cpu.cfs_period_us"))
            if quota > 0 and period > 0:
                cores = min(cores, quota / period)
        return cores

    def close(self) -> None:
        """Kill what runs in this owner's groups and remove them."""
        if self.closed:
            return
        self.owner.remove()
        self.closed = True

    def __enter__(self) -> Cgroups:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _parent_dirs(
    parent: str, mount_root: Path, proc: Path, controllers: tuple[str, ...], hint: str
) -> dict[str, Path]:
    """Controller -> the parent directory of the owners' groups; CgroupUnavailable naming what is missing."""
    todo = f" ({hint})" if hint else ""
    try:
        own = own_group_paths((proc / "self" / "cgroup").read_text())
    except OSError as e:
        raise CgroupUnavailable(f"cannot read {proc / 'self' / 'cgroup'}: {e.strerror or e}{todo}") from e
    out: dict[str, Path] = {}
    for ctrl in controllers:
        mount = mount_root / ctrl
        control = CONTROL_FILES.get(ctrl, "cgroup.procs")
        if not (mount / control).exists() or ctrl not in own:
            unified = (mount_root / "cgroup.controllers").exists() or (mount_root / "unified").is_dir()
            why = (
                "only the unified (v2) hierarchy seems mounted; this needs cgroup v1. "
                if unified and not mount.is_dir()
                else ""
            )
            raise CgroupUnavailable(
                f"the cgroup v1 {ctrl!r} controller is not mounted at {mount} (no {control} there): "
                f"{why}mount it, as root: `mkdir -p {mount} && mount -t cgroup -o {ctrl} cgroup {mount}`{todo}"
            )
        rel = parent if parent.startswith("/") else os.path.join(own[ctrl], parent)
        base = mount / rel.strip("/")
        existing = next((p for p in [base, *base.parents] if p.exists()), mount)
        if not os.access(existing, os.W_OK):
            raise CgroupUnavailable(
                f"no permission to create {ctrl} groups under {existing}: run as root (or give this user "
                f"a writable, delegated group and set {ENV_CGROUP_PARENT} to it){todo}"
            )
        out[ctrl] = base
    return out


def clean_stale(bases: Mapping[str, Path], proc: Path = Path("/proc")) -> list[str]:
    """Remove the owner groups under ``bases`` whose owner process is gone (killing what runs in them)."""
    removed = []
    names: set[str] = set()
    for b in bases.values():
        if b.is_dir():
            names.update(p.name for p in b.iterdir() if p.is_dir() and _OWNER_RE.match(p.name))
    for name in sorted(names):
        m = _OWNER_RE.match(name)
        assert m is not None
        pid, start = int(m["pid"]), m["start"]
        if proc_starttime(pid, proc) == start:
            continue  # its owner still runs
        Cgroup(name, {c: b / name for c, b in bases.items()}).remove()
        removed.append(name)
    return removed


def clean_stale_under(parent: str | None = None, mount_root: Path = DEFAULT_MOUNT_ROOT) -> list[str]:
    """:func:`clean_stale` for the default layout, without creating anything ([] when cgroups are unusable)."""
    try:
        bases = _parent_dirs(
            parent if parent is not None else os.environ.get(ENV_CGROUP_PARENT, ""),
            mount_root,
            Path("/proc"),
            CONTROLLERS,
            "",
        )
    except CgroupUnavailable:
        return []
    return clean_stale(bases)
