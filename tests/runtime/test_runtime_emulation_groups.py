"""Emulated devices' groups (heterotrain_runtime.emulation): a training process computes inside its device's
quota, torch's communication threads run on the host.  The pure parts, then real groups on this machine's
cgroup v1 cpu controller with a real process whose thread carries a torch communication thread's name.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heterotrain_runtime.cgroups import Cgroup, Cgroups
from heterotrain_runtime.emulation import HOST_CORES, DeviceGroups, host_threads, local_rank_of

PYTHON = sys.executable

# A "training process": names one thread as gloo's run loop does (prctl PR_SET_NAME), keeps another one
# unnamed, and waits for stdin to close.
PROCESS = """
import ctypes, sys, threading
named = threading.Event()
def gloo_like():
    ctypes.CDLL(None).prctl(15, b"pt_gloo_runloop", 0, 0, 0)
    named.set()
    sys.stdin.read()
threading.Thread(target=gloo_like, daemon=True).start()
threading.Thread(target=sys.stdin.read, daemon=True).start()
named.wait()
print("ready", flush=True)
sys.stdin.read()
"""


def test_local_rank_is_read_from_the_environment_text() -> None:
    assert local_rank_of(b"PATH=/bin\0LOCAL_RANK=3\0RANK=7\0") == 3
    assert local_rank_of(b"PATH=/bin\0RANK=7\0") is None
    assert local_rank_of(b"LOCAL_RANK=x\0") is None
    assert local_rank_of(b"NOT_LOCAL_RANK=2\0") is None


def test_only_torchs_communication_threads_are_the_hosts() -> None:
    threads = [(1, "python"), (2, "pt_gloo_runloop"), (3, "gloo_tcp_loop"), (4, "pt_tcpstore_uv"), (5, "omp")]
    assert host_threads(threads) == [2, 3, 4]


def names(group: Cgroup) -> list[str]:
    out = []
    for tid in (group.dirs["cpu"] / "tasks").read_text().split():
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{tid}/comm").read_text().strip())
    return sorted(out)


def procs(group: Cgroup) -> set[int]:
    return {int(x) for x in (group.dirs["cpu"] / "cgroup.procs").read_text().split()}


@pytest.fixture
def groups() -> Iterator[tuple[Cgroups, DeviceGroups]]:
    cg = Cgroups("test")
    try:
        yield cg, DeviceGroups.make(cg, "pod.1", [0.15, 0.3])
    finally:
        cg.close()


def start(group: Cgroup, env: dict[str, str]) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [PYTHON, "-c", PROCESS],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=group.preexec(),
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def stop(*ps: subprocess.Popen[str]) -> None:
    for p in ps:
        assert p.stdin is not None
        p.stdin.close()
        p.wait(30)


def test_the_quotas_are_a_device_each_and_the_host_is_capped_above_them(
    groups: tuple[Cgroups, DeviceGroups],
) -> None:
    _cg, g = groups
    assert g.device_cores == [0.15, 0.3]
    assert g.host.limits.cpu is not None and g.host.limits.cpu.cores == pytest.approx(0.45 + HOST_CORES)


def test_a_sweep_moves_a_process_to_its_device_and_its_communication_thread_back_to_the_host(
    groups: tuple[Cgroups, DeviceGroups],
) -> None:
    _cg, g = groups
    launcher = start(g.host, {})  # no LOCAL_RANK: the launcher stays on the host
    g.launcher_pid = launcher.pid
    rank1 = start(g.host, {"LOCAL_RANK": "1"})
    stray = start(g.host, {"LOCAL_RANK": "5"})  # no such device: stays
    try:
        assert g.sweep() >= 2  # the process, then its named thread
        assert procs(g.devices[1]) == {rank1.pid} and not procs(g.devices[0])
        assert names(g.devices[1]) == ["python", "python"]  # the main thread and the unnamed one
        assert "pt_gloo_runloop" in names(g.host)
        assert {launcher.pid, stray.pid} <= procs(g.host)
        assert g.sweep() == 0  # a fixed point
    finally:
        stop(launcher, rank1, stray)
