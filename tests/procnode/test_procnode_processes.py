"""Process runner (fake kubelet for tests): pod IPs, process groups and pid files (local processes only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from heterotrain_e2e.procnode.ipam import IPAllocator, IPExhausted
from heterotrain_e2e.procnode.process import ContainerProcess, kill_leftovers, write_pid_file


def wait_for(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ipam_unique_persisted_round_robin(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    a = IPAllocator(path, "127.1.0.0/16")
    ips = [a.allocate(f"u{i}") for i in range(300)]
    assert len(set(ips)) == 300
    assert ips[0] == "127.1.0.1"
    assert all(not ip.endswith((".0", ".255")) for ip in ips)
    assert a.allocate("u0") == ips[0]  # stable for a pod
    a.release("u0")
    assert a.allocate("new") not in ips  # not reused at once
    b = IPAllocator(path, "127.1.0.0/16")  # a restarted runner
    assert b.get("u1") == ips[1]
    assert b.allocate("another") not in {*ips, a.get("new")}
    assert set(b.retain_only({"u1", "u2"})) >= {"u3", "new"}
    assert set(b.snapshot()) == {"u1", "u2"}


def test_ipam_preferred_and_exhaustion(tmp_path: Path) -> None:
    a = IPAllocator(None, "127.9.9.0/30")
    assert a.allocate("x", preferred="127.9.9.2") == "127.9.9.2"
    assert a.allocate("y", preferred="127.9.9.2") == "127.9.9.1"
    with pytest.raises(IPExhausted):
        a.allocate("z")
    with pytest.raises(ValueError):
        IPAllocator(None, "10.0.0.0/8")


class Exits:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: tuple[int, int] | None = None

    def __call__(self, pid: int, rc: int) -> None:
        self.value = (pid, rc)
        self.done.set()


def start(tmp_path: Path, code: str, exits: Exits, env: dict[str, str] | None = None) -> ContainerProcess:
    return ContainerProcess(
        [sys.executable, "-c", code],
        env or {"PATH": os.defpath},
        tmp_path,
        tmp_path / "c.log",
        tmp_path,
        ("ns/p", "c"),
        exits,
    )


def test_exit_code_log_and_pid_file(tmp_path: Path) -> None:
    exits = Exits()
    p = start(tmp_path, "import os,sys; print('hello', os.getpgid(0) == os.getpid()); sys.exit(3)", exits)
    assert exits.done.wait(10)
    assert exits.value == (p.pid, 3)
    assert (tmp_path / "c.log").read_text() == "hello True\n"
    assert not (tmp_path / "pids" / str(p.pid)).exists()  # removed once reaped


def test_group_is_killed_when_main_process_ends(tmp_path: Path) -> None:
    exits = Exits()
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(c.pid, flush=True); time.sleep(0.3)"
    )
    p = start(tmp_path, code, exits)
    wait_for(lambda: (tmp_path / "c.log").read_text().strip() != "")
    child = int((tmp_path / "c.log").read_text().split()[0])
    assert (tmp_path / "pids" / str(p.pid)).read_text().split()[0] == str(p.pid)
    assert exits.done.wait(10)
    wait_for(lambda: not alive(child))


def test_signal_reaches_the_group_and_reports_negative_rc(tmp_path: Path) -> None:
    exits = Exits()
    p = start(tmp_path, "import time; print('up', flush=True); time.sleep(60)", exits)
    wait_for(lambda: (tmp_path / "c.log").exists() and "up" in (tmp_path / "c.log").read_text())
    p.signal(signal.SIGTERM)
    assert exits.done.wait(10)
    assert exits.value == (p.pid, -signal.SIGTERM)


def test_start_failure_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        ContainerProcess(
            ["definitely-not-a-command-xyz"],
            {"PATH": os.defpath},
            tmp_path,
            tmp_path / "l.log",
            tmp_path,
            ("ns/p", "c"),
            Exits(),
        )


def test_kill_leftovers_of_a_dead_runner(tmp_path: Path) -> None:
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        write_pid_file(tmp_path, leader.pid, "ns/p", "c")
        (tmp_path / "pids" / "999999999").write_text("999999999 1 ns/q c\n")  # long gone
        killed = kill_leftovers(tmp_path)
        assert leader.pid in killed
        assert leader.wait(10) == -signal.SIGKILL
        assert list((tmp_path / "pids").iterdir()) == []
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()


def test_kill_leftovers_spares_a_reused_pid(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (tmp_path / "pids").mkdir()
        (tmp_path / "pids" / str(other.pid)).write_text(f"{other.pid} 12345 ns/p c\n")  # another start time
        kill_leftovers(tmp_path)
        time.sleep(0.1)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_kubelet_log_endpoint(tmp_path: Path) -> None:
    import ssl
    import urllib.error
    import urllib.request

    from heterotrain_e2e.procnode.kubeletapi import KubeletAPI, find_log, tail_bytes

    pod_dir = tmp_path / "pods" / "ns_web_uid-1"
    pod_dir.mkdir(parents=True)
    (pod_dir / "main.log").write_bytes(b"a\nb\nc\n")
    (pod_dir / "main.previous.log").write_bytes(b"old\n")
    (tmp_path / "pods" / "ns_web-2_uid-2").mkdir()
    assert find_log(tmp_path, "ns", "web", "main", previous=False) == pod_dir / "main.log"
    assert find_log(tmp_path, "ns", "web-2", "main", previous=False) is None
    assert tail_bytes(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert tail_bytes(b"a\nb", 0) == b""

    running = threading.Event()
    running.set()
    api = KubeletAPI(tmp_path, lambda ns, pod, c: running.is_set())
    api.start()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"https://127.0.0.1:{api.port}{path}", context=ctx, timeout=10) as r:
            return bytes(r.read())

    try:
        assert get("/healthz") == b"ok"
        assert get("/containerLogs/ns/web/main") == b"a\nb\nc\n"
        assert get("/containerLogs/ns/web/main?tailLines=1") == b"c\n"
        assert get("/containerLogs/ns/web/main?limitBytes=3") == b"a\nb"
        assert get("/containerLogs/ns/web/main?previous=true") == b"old\n"
        with pytest.raises(urllib.error.HTTPError):
            get("/containerLogs/ns/nope/main")

        def writer() -> None:
            time.sleep(0.3)
            with open(pod_dir / "main.log", "ab") as f:
                f.write(b"d\n")
            time.sleep(0.3)
            running.clear()

        threading.Thread(target=writer).start()
        assert get("/containerLogs/ns/web/main?follow=true") == b"a\nb\nc\nd\n"
    finally:
        api.stop()


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_frozen_pod_and_a_stopped_node(tmp_path: Path) -> None:
    from heterotrain_e2e.procnode import control

    exits: list[int] = []
    procs = [
        ContainerProcess(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            dict(os.environ),
            tmp_path,
            tmp_path / f"{i}.log",
            tmp_path,
            (f"ns/p{i}", "worker"),
            on_exit=lambda pid, rc: exits.append(rc),
            node=f"node-{i % 2}",
        )
        for i in range(3)
    ]
    try:
        pids = control.container_pids(tmp_path)
        assert sorted((p.pod, p.node) for p in pids) == [
            ("ns/p0", "node-0"),
            ("ns/p1", "node-1"),
            ("ns/p2", "node-0"),
        ]
        assert control.freeze_pod(tmp_path, "ns", "p1") == [procs[1].pid]
        wait_for(lambda: proc_state(procs[1].pid) == "T")
        assert proc_state(procs[0].pid) != "T"
        control.thaw_pod(tmp_path, "ns", "p1")
        wait_for(lambda: proc_state(procs[1].pid) != "T")
        # A dead node: every process of its pods stops, and the runner sees it stopped.
        assert sorted(control.stop_node(tmp_path, "node-0")) == sorted([procs[0].pid, procs[2].pid])
        assert control.stopped_nodes(tmp_path) == {"node-0"}
        wait_for(lambda: proc_state(procs[0].pid) == "T" and proc_state(procs[2].pid) == "T")
        assert control.stop_node(tmp_path, "node-1", freeze=False) == []  # only its Lease stops
        assert proc_state(procs[1].pid) != "T"
        control.start_node(tmp_path, "node-0")
        wait_for(lambda: proc_state(procs[0].pid) != "T")
        assert control.stopped_nodes(tmp_path) == {"node-1"}
    finally:
        for p in procs:
            p.signal(signal.SIGKILL)
            p.join(10)
    assert len(exits) == 3
