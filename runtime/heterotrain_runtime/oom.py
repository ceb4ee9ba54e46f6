"""How many processes the kernel OOM-killed in this process's memory cgroup (stdlib only).

A container's processes share its memory cgroup (``limits.memory``): when the kernel kills one of the
launcher's training processes for memory, the group's ``oom_kill`` counter goes up (cgroup v1:
``memory.oom_control``; v2: ``memory.events``).  The launcher reads it when a process died of SIGKILL,
to tell an OOM kill (not worth a restart in place: the pod fails, the operator lowers the type's
micro-batch cap) from any other kill.
"""

from __future__ import annotations

import os

CGROUP_ROOT = "/sys/fs/cgroup"


def memory_cgroup_files(proc_cgroup: str, root: str = CGROUP_ROOT) -> list[str]:
    """The files that hold the ``oom_kill`` counter of the memory cgroup ``proc_cgroup`` (the text of
    ``/proc/self/cgroup``) names, v1 first; a container's own view (``/``) maps to the root."""
    out = []
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if "memory" in controllers.split(","):
            out.append(os.path.join(root, "memory", rel, "memory.oom_control"))
        elif controllers == "":  # cgroup v2 (the unified hierarchy)
            out.append(os.path.join(root, rel, "memory.events"))
    return out


def parse_oom_kills(text: str) -> int | None:
    """The ``oom_kill N`` line of memory.oom_control / memory.events."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def oom_kills(pid: int | str = "self") -> int | None:
    """The OOM kills counted in the memory cgroup of ``pid`` (None where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            files = memory_cgroup_files(f.read())
    except OSError:
        return None
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                n = parse_oom_kills(f.read())
        except OSError:
            continue
        if n is not None:
            return n
    return None
