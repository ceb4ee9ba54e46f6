"""cgroup v1 limits (heterotrain_runtime.cgroups): the pure arithmetic, the clear errors (a fake mount root),
and real groups on this machine's cpu and memory controllers (root, cgroup v1: the project's machines and CI).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from heterotrain_runtime import cgroups
from heterotrain_runtime.cgroups import (
    Cgroups,
    CgroupUnavailable,
    CpuQuota,
    Limits,
    cpu_per_speed,
    cpu_quota,
    own_group_paths,
)

PYTHON = sys.executable


# --- pure -------------------------------------------------------------------------


def test_cpu_quota_keeps_the_period_until_the_quota_would_be_under_a_millisecond() -> None:
    assert cpu_quota(0.15) == CpuQuota(1500, 10_000)
    assert cpu_quota(2.0, period_us=100_000) == CpuQuota(200_000, 100_000)
    small = cpu_quota(0.05)  # 0.5 ms per 10 ms: the period grows to 20 ms
    assert small == CpuQuota(1000, 20_000) and small.cores == pytest.approx(0.05)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cores"):
            cpu_quota(bad)


def test_cpu_per_speed_scales_down_only_when_the_devices_exceed_the_budget() -> None:
    assert cpu_per_speed(6.0, cores=2.0) == 0.15  # 1:2:3 -> 0.9 cores <= 0.75 x 2
    assert cpu_per_speed(20.0, cores=2.0) == pytest.approx(1.5 / 20.0)
    assert cpu_per_speed(20.0, cores=2.0, budget_fraction=1.0) == pytest.approx(0.1)
    assert cpu_per_speed(4.0, cores=2.0, per_speed=0.5) == pytest.approx(0.375)
    with pytest.raises(ValueError):
        cpu_per_speed(1.0, cores=0.0)


def test_own_group_paths_reads_v1_lines_only() -> None:
    text = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/unified\n"
    assert own_group_paths(text) == {
        "name=systemd": "/",
        "memory": "/process_api/abc",
        "cpu": "/x",
        "cpuacct": "/x",
    }


def test_limits_refuse_a_non_positive_memory_limit() -> None:
    with pytest.raises(ValueError, match="memory_bytes"):
        Limits.of(memory_bytes=0)
    assert Limits.of() == Limits(None, None)


# --- clear errors (a test double of the filesystem) -------------------------------


def fake_root(tmp: Path, controllers: tuple[str, ...], self_cgroup: str) -> tuple[Path, Path]:
    root, proc = tmp / "sys-fs-cgroup", tmp / "proc"
    root.mkdir()
    for ctrl in controllers:
        (root / ctrl).mkdir()
        (root / ctrl / "cgroup.procs").write_text("")
        (root / ctrl / cgroups.CONTROL_FILES[ctrl]).write_text("-1\n")
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(self_cgroup)
    return root, proc


def test_a_missing_controller_is_named_with_what_to_do(tmp_path: Path) -> None:
    root, proc = fake_root(tmp_path, ("cpu",), "4:memory:/\n1:cpu:/\n")
    with pytest.raises(CgroupUnavailable) as e:
        Cgroups("local", mount_root=root, proc=proc, hint="or run with --no-emulate")
    msg = str(e.value)
    assert "'memory' controller is not mounted at" in msg and str(root / "memory") in msg
    assert "mount -t cgroup -o memory cgroup" in msg and msg.endswith("(or run with --no-emulate)")


def test_a_unified_only_machine_is_told_it_needs_cgroup_v1(tmp_path: Path) -> None:
    root, proc = fake_root(tmp_path, (), "0::/user.slice\n")
    (root / "cgroup.controllers").write_text("cpu memory\n")
    with pytest.raises(CgroupUnavailable, match=r"'cpu' controller is not mounted.*needs cgroup v1"):
        Cgroups("local", mount_root=root, proc=proc)


def test_a_controller_this_process_is_not_attached_to_is_unavailable(tmp_path: Path) -> None:
    root, proc = fake_root(tmp_path, ("cpu", "memory"), "1:cpu:/\n")  # no memory line
    with pytest.raises(CgroupUnavailable, match="'memory' controller"):
        Cgroups("local", mount_root=root, proc=proc)


def test_an_unreadable_proc_self_cgroup_is_unavailable(tmp_path: Path) -> None:
    root, proc = fake_root(tmp_path, ("cpu", "memory"), "")
    (proc / "self" / "cgroup").unlink()
    with pytest.raises(CgroupUnavailable, match="cannot read"):
        Cgroups("local", mount_root=root, proc=proc)


def test_the_fake_root_itself_works_so_the_errors_above_are_about_what_is_missing(tmp_path: Path) -> None:
    root, proc = fake_root(tmp_path, ("cpu", "memory"), "4:memory:/m\n1:cpu:/\n")
    cg = Cgroups("local", mount_root=root, proc=proc)
    assert cg.owner.dirs["cpu"].parent == root / "cpu"
    assert cg.owner.dirs["memory"].parent == root / "memory" / "m"
    assert cg.owner.name.startswith(f"heterotrain-local-{os.getpid()}-")
    other = Cgroups("local", parent="/elsewhere", mount_root=root, proc=proc)
    assert other.owner.dirs["memory"].parent == root / "memory" / "elsewhere"
    assert other.owner.name != cg.owner.name  # two owners in one process do not meet


# --- real groups ------------------------------------------------------------------


@pytest.fixture
def cg() -> Iterator[Cgroups]:
    c = Cgroups("test")
    try:
        yield c
    finally:
        c.close()
    for d in c.owner.dirs.values():
        assert not d.exists(), f"{d} left behind"


SPIN = (
    "import time\n"
    "t, c = time.perf_counter(), time.process_time(); n = 0\n"
    "while n < {n}: n += 1\n"
    "print(time.perf_counter() - t, time.process_time() - c, flush=True)"
)


def spin_calibrated() -> int:
    """Iterations of SPIN's loop that take about 0.25 s of CPU here."""
    out = subprocess.run([PYTHON, "-c", SPIN.format(n=1_000_000)], capture_output=True, text=True, timeout=60)
    return int(1_000_000 * 0.25 / max(1e-3, float(out.stdout.split()[1])))


def test_a_cpu_bound_loop_at_quota_q_takes_about_three_times_as_long_as_at_3q() -> None:
    with Cgroups("test", cpu_shares=cgroups.CAPPED_OWNER_CPU_SHARES) as cg:  # its groups are all capped
        spin_at_q_and_3q(cg)


def spin_at_q_and_3q(cg: Cgroups) -> None:
    n = spin_calibrated()
    slow, fast = cg.group("q", Limits.of(cores=0.1)), cg.group("3q", Limits.of(cores=0.3))
    procs = {
        g: subprocess.Popen(
            [PYTHON, "-c", SPIN.format(n=n)], preexec_fn=g.preexec(), stdout=subprocess.PIPE, text=True
        )
        for g in (slow, fast)
    }
    try:
        wall, cpu = {}, {}
        for g, p in procs.items():
            wall[g], cpu[g] = map(float, p.communicate(timeout=60)[0].split())
    finally:
        for p in procs.values():
            p.kill()
    # The quota governs the rate of CPU a group gets; the CPU the same loop costs varies between two runs
    # (CI measured 0.33 s against 0.26 s: frequency, caches), so the rates are what must stand 1:3 and the
    # wall times follow with that noise on top.
    rate = {g: cpu[g] / wall[g] for g in (slow, fast)}
    assert 2.5 <= rate[fast] / rate[slow] <= 3.5, (wall, cpu)  # measured 2.98-3.0 (dev machine and CI)
    assert 2.0 <= wall[slow] / wall[fast] <= 4.5, (wall, cpu)  # measured 2.98 here, 3.78 on CI
    for g, cores in ((slow, 0.1), (fast, 0.3)):  # the CPU it got over the time it took: its quota
        assert 0.6 * cores <= cpu[g] / wall[g] <= 1.1 * cores, (g, wall, cpu)
        assert g.cpu_stat()["nr_throttled"] > 0
    shares = {g: int((g.dirs["cpu"] / "cpu.shares").read_text()) for g in (slow, fast)}
    assert (shares[slow], shares[fast]) == (102, 307)  # 1024 per core: siblings keep their ratio
    assert int((cg.owner.dirs["cpu"] / "cpu.shares").read_text()) == 65536


def test_a_child_cannot_have_more_cpu_than_its_parent(cg: Cgroups) -> None:
    pod = cg.group("pod", Limits.of(cores=0.2))
    c = pod.child("c", Limits.of(cores=1.0))
    assert c.limits.cpu == pod.limits.cpu
    quota = int((c.dirs["cpu"] / "cpu.cfs_quota_us").read_text())
    period = int((c.dirs["cpu"] / "cpu.cfs_period_us").read_text())
    assert quota / period == pytest.approx(0.2)


def test_past_its_memory_limit_a_process_is_oom_killed_and_counted(cg: Cgroups) -> None:
    g = cg.group("mem", Limits.of(memory_bytes=64 << 20))
    assert (g.dirs["memory"] / "memory.swappiness").read_text().strip() == "0"
    p = subprocess.run(
        [PYTHON, "-c", "x = bytearray(256 << 20); print('survived')"],
        preexec_fn=g.preexec(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == -signal.SIGKILL and "survived" not in p.stdout
    assert g.oom_kills() == 1
    # an ordinary SIGKILL is not an OOM kill
    other = cg.group("other", Limits.of(memory_bytes=64 << 20))
    q = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"], preexec_fn=other.preexec())
    q.kill()
    assert q.wait(10) == -signal.SIGKILL and other.oom_kills() == 0


def test_remove_kills_what_still_runs_in_the_group_and_below(cg: Cgroups) -> None:
    g = cg.group("tree")
    sub = g.child("sub")
    a = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"], preexec_fn=g.preexec())
    b = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"], preexec_fn=sub.preexec())
    assert g.pids() == {a.pid, b.pid}
    g.remove()
    assert a.wait(10) == -signal.SIGKILL and b.wait(10) == -signal.SIGKILL
    assert not any(d.exists() for d in [*g.dirs.values(), *sub.dirs.values()])


CRASHING_OWNER = """
import subprocess, sys, time
from heterotrain_runtime.cgroups import Cgroups, Limits
cg = Cgroups("crashy", parent=sys.argv[1])
g = cg.group("w", Limits.of(cores=0.5))
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=g.preexec(),
                     start_new_session=True)
print(p.pid, cg.owner.name, flush=True)
time.sleep(120)
"""


def test_groups_of_an_owner_that_crashed_are_removed_by_the_next_one() -> None:
    parent = f"heterotrain-test-{uuid.uuid4().hex[:8]}"  # a parent of its own: no other owner meets it
    owner = subprocess.Popen([PYTHON, "-c", CRASHING_OWNER, parent], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline().split()
    orphan, name = int(line[0]), line[1]
    owner.kill()  # it never cleans up
    owner.wait(10)
    assert Path(f"/proc/{orphan}").exists()
    try:
        with Cgroups("test", parent=parent) as cg:
            assert cg.stale_removed == [name]
            assert not (cg.bases["cpu"] / name).exists() and not (cg.bases["memory"] / name).exists()
            deadline = time.monotonic() + 10
            while _alive(orphan) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not _alive(orphan)
    finally:
        if _alive(orphan):
            os.kill(orphan, signal.SIGKILL)
    for d in cg.bases.values():
        d.rmdir()  # the test's own parent


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
