"""The launcher with plain (non-torch) scripts: env contract, restarts, epochs, signals, exit codes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rt_helpers import PYTHON, Procs, wait_for

import heterotrain_contract as hc
from heterotrain_contract import Member, Membership
from heterotrain_runtime import envvars
from heterotrain_runtime.launcher import Child, Launcher, Wakeup, batch_split, child_env, exit_code
from heterotrain_runtime.restarts import ProcessesCondition


def _membership(
    epoch: int, pods: list[str], port: int = 29500, slots: dict[str, int] | None = None
) -> Membership:
    types = {"w0": "nvidia-a100", "w1": "huawei-ascend-910b", "w2": "nvidia-a100", "w3": "amd-mi300x"}
    weights = {"w0": 1.0, "w1": 0.8, "w2": 1.0, "w3": 1.3}
    n = slots or {}
    world = tuple(
        Member(p, r, types[p], f"10.0.0.{r + 1}", weights[p] * n.get(p, 1), n.get(p, 1))
        for r, p in enumerate(pods)
    )
    return Membership(epoch=epoch, world=world, master_port=port)


def test_child_env_pure() -> None:
    m = _membership(4, ["w0", "w1", "w2"])
    env = child_env({hc.ENV_GLOBAL_BATCH_SIZE: "28"}, m, "w2", 1, "/m.json", "/h.json")
    assert env["RANK"] == "2" and env["WORLD_SIZE"] == "3"
    assert env["LOCAL_RANK"] == "0" and env["LOCAL_WORLD_SIZE"] == "1"
    assert env["MASTER_ADDR"] == "10.0.0.1" and env["MASTER_PORT"] == "29500"
    assert env[envvars.ENV_EPOCH] == "4" and float(env[envvars.ENV_WEIGHT]) == 1.0
    assert env[envvars.ENV_BATCH_SPLIT] == "10,8,10" and env[envvars.ENV_LOCAL_BATCH_SIZE] == "10"
    assert env[envvars.ENV_POOL] == "1/2"  # second of the two nvidia-a100 ranks
    assert env[envvars.ENV_RESTART_COUNT] == "1"
    assert env[hc.ENV_MEMBERSHIP_SOURCE] == "file:/m.json"
    assert batch_split(m, 28, "Equal") == [10, 9, 9]
    assert exit_code(-9) == 137 and exit_code(3) == 3


def test_child_env_of_a_pod_with_several_processes() -> None:
    # w0 runs 2 processes, w1 1, w2 3: global ranks pod by pod, world size the sum
    m = _membership(5, ["w0", "w1", "w2"], slots={"w0": 2, "w2": 3})
    assert m.world_size == 6 and m.pod_count == 3
    assert [(p.name, p.rank) for p in m.processes] == [
        ("w0:0", 0), ("w0:1", 1), ("w1", 2), ("w2:0", 3), ("w2:1", 4), ("w2:2", 5)
    ]  # fmt: skip
    base = {hc.ENV_GLOBAL_BATCH_SIZE: "58", hc.ENV_METRICS_PORT: "9400"}
    env = child_env(base, m, "w2", 0, "/m.json", "/h1.json", local_rank=1)
    assert env[hc.ENV_METRICS_PORT] == "9401"  # each process serves its own metrics endpoint
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (
        "4",
        "6",
        "1",
        "3",
    )
    assert (env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]) == ("2", "3")
    assert float(env[envvars.ENV_WEIGHT]) == 1.0  # one device's: the pod's weight / its processes
    # per-process weights 1,1,0.8,1,1,1 (sum 5.8): 10 samples per weight unit
    assert env[envvars.ENV_BATCH_SPLIT] == "10,10,8,10,10,10" and env[envvars.ENV_LOCAL_BATCH_SIZE] == "10"
    assert env[envvars.ENV_POOL] == "3/5"  # the a100 processes: w0's two, then w2's three
    assert env[envvars.ENV_SDK_HANDSHAKE_FILE] == "/h1.json"


SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    out = sys.argv[1]
    mode = sys.argv[2]
    keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "HETEROTRAIN_EPOCH", "HETEROTRAIN_WEIGHT", "HETEROTRAIN_LOCAL_BATCH_SIZE",
            "HETEROTRAIN_BATCH_SPLIT", "HETEROTRAIN_RESTART_COUNT", "HETEROTRAIN_LAST_EXIT_CODE"]
    rec = {k: os.environ.get(k) for k in keys}
    rec["pid"] = os.getpid()
    rec["time"] = time.time()
    rec["policy"] = os.sched_getscheduler(0)
    rec["comm"] = open("/proc/self/comm").read().strip()
    rec["oom_score_adj"] = open("/proc/self/oom_score_adj").read().strip()
    rec["argv0"] = open("/proc/self/cmdline", "rb").read().decode(errors="replace").split(chr(0))[:3]
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\\n")
    if mode == "ok":
        sys.exit(0)
    if mode == "fail":
        sys.exit(3)
    if mode == "oom":  # as the SDK does after the framework's out-of-memory error
        sys.exit(86)
    if mode == "hog":  # more memory than the container's cgroup allows: the kernel OOM-kills it
        hog = bytearray(400 * 1024 * 1024)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        sys.exit(0)
    if mode == "fail-once":
        sys.exit(5 if rec["HETEROTRAIN_RESTART_COUNT"] == "0" else 0)
    if mode in ("loop", "sdk", "sdk-slow"):
        if mode == "sdk-slow" and rec["HETEROTRAIN_RESTART_COUNT"] != "0":
            time.sleep(2.5)  # a restarted process that takes a while to get going
        if mode in ("sdk", "sdk-slow"):
            with open(os.environ["HETEROTRAIN_SDK_HANDSHAKE_FILE"], "w") as f:
                json.dump({"pid": os.getpid(), "handlesEpochs": True}, f)
        def term(signum, frame):
            time.sleep(0.5)  # a checkpoint takes a while: the launcher waits for it
            with open(out + ".term", "w") as f:
                f.write("checkpointed")
            sys.exit(143)
        signal.signal(signal.SIGTERM, term)
        while True:
            time.sleep(0.02)
    """
)


def _launch(
    procs: Procs, tmp: Path, mode: str, pod: str = "w1", max_restarts: int = 2, **extra_env: str
) -> tuple[Any, Path, Path]:
    script = tmp / "script.py"
    script.write_text(SCRIPT)
    out = tmp / "out.jsonl"
    mfile = tmp / "membership.json"
    env = dict(os.environ)
    env.update(
        {
            hc.ENV_POD_NAME: pod,
            hc.ENV_MEMBERSHIP_SOURCE: f"file:{mfile}",
            hc.ENV_MAX_RESTARTS: str(max_restarts),
            hc.ENV_GLOBAL_BATCH_SIZE: "28",
            **extra_env,
        }
    )
    cmd = [PYTHON, "-m", "heterotrain_runtime", "launch", "--poll-interval", "0.05", "--stop-timeout", "5"]
    cmd += ["--workdir", str(tmp / "wd"), "--", PYTHON, str(script), str(out), mode]
    p = procs.popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return p, out, mfile


def _records(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def test_waits_for_membership_then_runs_with_torchrun_env(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "ok")
    hc.write_membership_file(str(mfile), _membership(1, ["w0", "w2"]))  # not a member yet
    assert p.poll() is None and not out.exists()
    hc.write_membership_file(str(mfile), _membership(2, ["w0", "w1", "w2"]))
    assert p.wait(20) == 0
    (rec,) = _records(out)
    assert rec["RANK"] == "1" and rec["WORLD_SIZE"] == "3" and rec["MASTER_ADDR"] == "10.0.0.1"
    assert rec["HETEROTRAIN_EPOCH"] == "2" and rec["HETEROTRAIN_LOCAL_BATCH_SIZE"] == "8"


def test_restarts_then_propagates_exit_code(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "fail", max_restarts=2)
    hc.write_membership_file(str(mfile), _membership(1, ["w1"]))
    assert p.wait(30) == 3
    assert [r["HETEROTRAIN_RESTART_COUNT"] for r in _records(out)] == ["0", "1", "2"]


def test_restart_recovers(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "fail-once", max_restarts=1)
    hc.write_membership_file(str(mfile), _membership(1, ["w1"]))
    assert p.wait(30) == 0
    assert len(_records(out)) == 2


def test_new_epoch_restarts_a_plain_script_with_the_new_world(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "loop")
    hc.write_membership_file(str(mfile), _membership(1, ["w0", "w1"]))
    wait_for(lambda: len(_records(out)) == 1, 20, "first start")
    hc.write_membership_file(str(mfile), _membership(2, ["w1", "w2", "w3"]))
    wait_for(lambda: len(_records(out)) == 2, 20, "restart on the new epoch")
    first, second = _records(out)
    assert (first["RANK"], first["WORLD_SIZE"]) == ("1", "2")
    assert (second["RANK"], second["WORLD_SIZE"], second["HETEROTRAIN_EPOCH"]) == ("0", "3", "2")
    assert second["HETEROTRAIN_RESTART_COUNT"] == "0"  # an epoch change is not a failure
    # SIGTERM is forwarded; the launcher waits for the process and exits with its code, and says so
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143
    assert (tmp_path / "out.jsonl.term").read_text() == "checkpointed"
    assert "w1[0]: user process exited with 143" in p.stderr.read().decode()


def test_sdk_handshake_keeps_the_process_across_epochs(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "sdk")
    hc.write_membership_file(str(mfile), _membership(1, ["w1"]))
    wait_for(lambda: (tmp_path / "wd" / "sdk-handshake-0.json").exists(), 20, "handshake")
    hc.write_membership_file(str(mfile), _membership(2, ["w0", "w1"]))
    hc.write_membership_file(str(mfile), _membership(3, ["w2", "w1"]))
    # give the launcher a few polls (50 ms each) to (wrongly) restart the process
    time.sleep(0.5)
    assert len(_records(out)) == 1 and p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143


def test_a_restarted_sdk_process_waits_out_of_the_world_without_being_restarted_again(
    procs: Procs, tmp_path: Path
) -> None:
    """The pod leaves the world while its SDK process restarts (the operator's answer to the restart): the
    new process is started once, before the membership has it again, and kept across epochs."""
    p, out, mfile = _launch(procs, tmp_path, "sdk-slow")
    hc.write_membership_file(str(mfile), _membership(1, ["w0", "w1"]))
    handshake = tmp_path / "wd" / "sdk-handshake-0.json"
    wait_for(lambda: handshake.exists(), 20, "handshake")
    os.kill(_records(out)[0]["pid"], signal.SIGKILL)
    hc.write_membership_file(str(mfile), _membership(2, ["w0"]))  # the world goes on without w1
    again = wait_for(lambda: len(recs := _records(out)) >= 2 and recs[1], 20, "the restart")
    assert again["HETEROTRAIN_RESTART_COUNT"] == "1"
    wait_for(lambda: handshake.exists(), 20, "the restarted process's handshake")
    hc.write_membership_file(str(mfile), _membership(3, ["w0", "w1"]))  # back in the world
    time.sleep(0.5)  # a few polls (50 ms each) in which the launcher could (wrongly) restart it again
    assert len(_records(out)) == 2 and _alive(again["pid"]) and p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143


def test_killed_child_exit_code(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "loop", max_restarts=0)
    hc.write_membership_file(str(mfile), _membership(1, ["w1"]))
    wait_for(lambda: len(_records(out)) == 1, 20, "start")
    os.kill(_records(out)[0]["pid"], signal.SIGKILL)
    assert p.wait(20) == 128 + signal.SIGKILL


def test_a_pod_runs_one_process_per_slot_and_restarts_a_failed_one_in_place(
    procs: Procs, tmp_path: Path
) -> None:
    p, out, mfile = _launch(procs, tmp_path, "loop", max_restarts=1)
    hc.write_membership_file(str(mfile), _membership(1, ["w0", "w1"], slots={"w1": 2}))
    first = wait_for(lambda: len(recs := _records(out)) == 2 and recs, 20, "two processes")
    by_local = {r["LOCAL_RANK"]: r for r in first}
    assert {(r["RANK"], r["LOCAL_WORLD_SIZE"], r["GROUP_RANK"], r["WORLD_SIZE"]) for r in first} == {
        ("1", "2", "1", "3"),
        ("2", "2", "1", "3"),
    }
    os.kill(by_local["1"]["pid"], signal.SIGKILL)
    recs = wait_for(lambda: len(recs := _records(out)) == 3 and recs, 20, "local rank 1 restarted")
    again = recs[2]
    assert (again["LOCAL_RANK"], again["RANK"], again["HETEROTRAIN_RESTART_COUNT"]) == ("1", "2", "1")
    os.kill(by_local["0"]["pid"], 0)  # its sibling runs on, untouched
    assert p.poll() is None
    # no restarts left: the next failure stops the sibling and ends the pod with the failure's code
    os.kill(again["pid"], signal.SIGKILL)
    assert p.wait(20) == 128 + signal.SIGKILL
    wait_for(lambda: not _alive(by_local["0"]["pid"]), 10, "the sibling stopped")


def test_out_of_memory_is_not_restarted_in_place(procs: Procs, tmp_path: Path) -> None:
    assert hc.EXIT_OUT_OF_MEMORY == 86  # the script's exit code above
    p, out, mfile = _launch(procs, tmp_path, "oom", max_restarts=3)
    hc.write_membership_file(str(mfile), _membership(1, ["w1"]))
    assert p.wait(20) == hc.EXIT_OUT_OF_MEMORY
    assert len(_records(out)) == 1  # the pod fails at once: the operator lowers the type's cap


def _memory_cgroup(tmp_path: Path, limit: int) -> Path | None:
    """A memory cgroup (v1) under this process's own, limited to ``limit`` bytes; None where not possible."""
    from heterotrain_runtime.oom import memory_cgroup_files

    files = memory_cgroup_files(Path("/proc/self/cgroup").read_text())
    parent = Path(files[0]).parent if files and files[0].endswith("memory.oom_control") else None
    if parent is None or not parent.is_dir():
        return None
    group = parent / f"heterotrain-test-{os.getpid()}-{tmp_path.name[-12:]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
    except OSError:
        return None
    return group


def test_a_process_the_kernel_oom_killed_is_not_restarted_in_place(procs: Procs, tmp_path: Path) -> None:
    group = _memory_cgroup(tmp_path, 200 * 1024 * 1024)
    if group is None:
        pytest.skip("no writable cgroup v1 memory controller here (needs root)")
    try:
        script = tmp_path / "script.py"
        script.write_text(SCRIPT)
        mfile, out = tmp_path / "membership.json", tmp_path / "out.jsonl"
        hc.write_membership_file(str(mfile), _membership(1, ["w1"]))
        env = dict(os.environ)
        env.update(
            {hc.ENV_POD_NAME: "w1", hc.ENV_MEMBERSHIP_SOURCE: f"file:{mfile}", hc.ENV_MAX_RESTARTS: "3"}
        )
        cmd = [PYTHON, "-m", "heterotrain_runtime", "launch", "--poll-interval", "0.05", "--"]
        cmd += [PYTHON, str(script), str(out), "hog"]
        procs_file = group / "cgroup.procs"

        def join() -> None:
            procs_file.write_text(str(os.getpid()))

        p = procs.popen(cmd, env=env, preexec_fn=join, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert p.wait(60) == 128 + signal.SIGKILL
        assert len(_records(out)) == 1  # killed for memory once, not restarted
        assert "oom_kill 1" in (group / "memory.oom_control").read_text()
    finally:
        procs.cleanup()
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), 10, "the group empty")
        group.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie of a reaped parent is gone too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_python_m_and_help() -> None:
    r = subprocess.run(
        [PYTHON, "-m", "heterotrain_runtime", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "launch" in r.stdout and "run" in r.stdout
    r = subprocess.run(
        [PYTHON, "-m", "heterotrain_runtime", "run", "--pools", "cpu:1", "x.py"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--local" in r.stderr


def test_a_restart_waits_out_the_backoff_and_knows_the_failed_exit_code(procs: Procs, tmp_path: Path) -> None:
    env = {hc.ENV_RESTART_BACKOFF: "0.5", hc.ENV_RESTART_BACKOFF_LIMIT: "10", hc.ENV_FAILURE_WINDOW: "600"}
    p, out, mfile = _launch(procs, tmp_path, "fail", max_restarts=3, **env)
    hc.write_membership_file(str(mfile), _membership(1, ["w1"]))
    assert p.wait(30) == 3
    recs = _records(out)
    assert [r["HETEROTRAIN_RESTART_COUNT"] for r in recs] == ["0", "1", "2", "3"]
    assert [r["HETEROTRAIN_LAST_EXIT_CODE"] for r in recs] == [None, "3", "3", "3"]
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(recs)]
    assert gaps[1] >= 0.5 and gaps[2] >= 1.0, gaps  # at once, then 0.5 s, then 1 s (doubled)


def test_a_restarting_process_is_beaten_for_and_started_warm(procs: Procs, tmp_path: Path) -> None:
    """Killed, an SDK process is restarted in place by a warm interpreter (its modules imported before
    the failure), and until it beats itself its launcher beats for it to rank 0 (UDP)."""
    import socket

    from heterotrain_runtime.trainer.liveness import Beat

    rank0 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rank0.bind(("127.0.0.1", 0))
    rank0.settimeout(0.2)
    port = rank0.getsockname()[1]
    m = Membership(
        epoch=1,
        world=(
            Member("w0", 0, "nvidia-a100", "127.0.0.1", 1.0),
            Member("w1", 1, "nvidia-a100", "127.0.0.2", 1.0),
        ),
        master_port=port,
    )
    env = {
        envvars.ENV_WARM_RESTART: "1",
        envvars.ENV_WARM_MODULES: "json",
        hc.ENV_NODE_NAME: "node-7",
        hc.ENV_ACCELERATOR: "nvidia-a100",
    }
    p, out, mfile = _launch(procs, tmp_path, "sdk-slow", **env)
    hc.write_membership_file(str(mfile), m)
    (first,) = wait_for(lambda: _records(out), 20, "first start")

    def warm_waiting() -> bool:  # imports done, waiting (see heterotrain_runtime.standby)
        return any(
            b"heterotrain_runtime.standby" in Path(f"/proc/{pid}/cmdline").read_bytes()
            and Path(f"/proc/{pid}/comm").read_text().strip() == "ht-standby"
            for pid in _children(p.pid)
        )

    wait_for(warm_waiting, 20, "a warm interpreter waiting")
    (standby,) = [pid for pid in _children(p.pid) if pid != first["pid"]]
    assert Path(f"/proc/{standby}/oom_score_adj").read_text().strip() == "1000", "the first to go in an OOM"
    rank0.setblocking(False)  # the first start's beats (until its handshake) are not this test's
    with contextlib.suppress(BlockingIOError):
        while rank0.recv(4096):
            pass
    rank0.settimeout(0.2)
    os.kill(first["pid"], signal.SIGKILL)
    beats: list[Beat] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(beats) < 2:
        try:
            beat = Beat.decode(rank0.recv(4096))
        except TimeoutError:
            continue
        if beat is not None:
            beats.append(beat)
    rank0.close()
    assert len(beats) >= 2, "the launcher beats for its restarting process about once a second"
    b = beats[0]
    assert (b.name, b.pod, b.node, b.phase, b.rank, b.restarts, b.exit_code) == (
        "w1", "w1", "node-7", "starting", 1, 1, 137
    )  # fmt: skip
    second = wait_for(lambda: len(recs := _records(out)) == 2 and recs[1], 20, "restarted")
    assert second["HETEROTRAIN_RESTART_COUNT"] == "1" and second["HETEROTRAIN_LAST_EXIT_CODE"] == "137"
    assert "heterotrain_runtime.standby" in second["argv0"], "served by the warm interpreter"
    assert second["oom_score_adj"] == first["oom_score_adj"], "back to the launcher's value once it trains"
    assert second["comm"] == "ht-warm-0", "named after its local rank (its /proc environ is the launcher's)"
    assert second["policy"] == os.SCHED_OTHER, "it trains at normal priority, whatever it loaded at"
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143


def test_a_starting_process_is_beaten_for_until_it_beats_itself(procs: Procs, tmp_path: Path) -> None:
    """A process that has not started its SDK yet (here: never does) is heard of as "starting", so that a
    slow start (a cold import, a throttled host) is not taken for a silent rank."""
    import socket

    from heterotrain_runtime.trainer.liveness import Beat

    rank0 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rank0.bind(("127.0.0.1", 0))
    rank0.settimeout(0.2)
    m = Membership(
        epoch=1,
        world=(
            Member("w0", 0, "nvidia-a100", "127.0.0.1", 1.0),
            Member("w1", 1, "nvidia-a100", "127.0.0.2", 1.0),
        ),
        master_port=rank0.getsockname()[1],
    )
    p, _out, mfile = _launch(procs, tmp_path, "loop", **{hc.ENV_NODE_NAME: "node-7"})
    hc.write_membership_file(str(mfile), m)
    beats: list[Beat] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(beats) < 2:
        with contextlib.suppress(TimeoutError):
            if (beat := Beat.decode(rank0.recv(4096))) is not None:
                beats.append(beat)
    rank0.close()
    assert len(beats) >= 2, "the launcher beats for its starting process about once a second"
    assert {(b.pod, b.phase, b.rank, b.restarts, b.exit_code) for b in beats} == {
        ("w1", "starting", 1, 0, None)
    }
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                continue
    return out


def test_a_warm_interpreter_that_died_ends_warm_restarts_in_the_pod() -> None:
    from heterotrain_runtime.restarts import Standby

    env = {**os.environ, envvars.ENV_WARM_RESTART: "1", envvars.ENV_WARM_MODULES: "json"}
    standby = Standby([PYTHON, "-m", "heterotrain_runtime.examples.train"], env)
    assert standby.prepare() is False and standby.proc is not None
    standby.proc.kill()  # as the kernel would, first, in an out-of-memory kill (oom_score_adj 1000)
    standby.proc.wait()
    assert standby.prepare() is True, "its death is told once"
    assert standby.proc is None and not standby.enabled
    assert standby.prepare() is False and standby.proc is None, "and none is started again"
    assert standby.take(env) is None


def test_warm_restarts_are_off_unless_asked_for() -> None:
    """A warm interpreter holds an imported torch in the pod's memory limit and takes CPU from its quota:
    only HETEROTRAIN_WARM_RESTART=1 starts one."""
    from heterotrain_runtime.restarts import Standby

    cmd = [PYTHON, "-m", "heterotrain_runtime.examples.train"]
    base = {k: v for k, v in os.environ.items() if k != envvars.ENV_WARM_RESTART}
    assert not Standby(cmd, base).enabled
    assert not Standby(cmd, {**base, envvars.ENV_WARM_RESTART: "0"}).enabled
    assert Standby(cmd, {**base, envvars.ENV_WARM_RESTART: "1"}).enabled


@pytest.fixture
def handlers() -> Any:
    """A launcher run in this process installs its signal handlers here: they are put back afterwards."""
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
    saved = {s: signal.getsignal(s) for s in sigs}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


class RecordedCondition(ProcessesCondition):
    """The pod's ProcessesReady condition as the launcher sets it, with which handshakes existed then."""

    def __init__(self, handshakes: list[Path]) -> None:
        super().__init__("w1", None)
        self.handshakes = handshakes
        self.values: list[tuple[bool, str, str | None, int]] = []

    def set(self, ready: bool, message: str, reason: str | None = None) -> None:
        self.values.append((ready, message, reason, sum(h.exists() for h in self.handshakes)))


def _in_process(
    tmp: Path, members: list[str], nproc: int, mode: str = "sdk", **extra_env: str
) -> tuple[Launcher, RecordedCondition, Path]:
    """A launcher of pod w1 that may start before it is a member, run in this process (its condition
    recorded); ``members``: the world it finds; ``mode``: what the script does (see ``SCRIPT``)."""
    script = tmp / "script.py"
    script.write_text(SCRIPT)
    out, mfile, wd = tmp / "out.jsonl", tmp / "membership.json", tmp / "wd"
    hc.write_membership_file(str(mfile), _membership(4, members))
    cond = RecordedCondition([wd / f"sdk-handshake-{i}.json" for i in range(nproc)])
    env = {**os.environ, hc.ENV_POD_NAME: "w1", hc.ENV_MEMBERSHIP_SOURCE: f"file:{mfile}", **extra_env}
    launcher = Launcher(
        [PYTHON, str(script), str(out), mode],
        env=env,
        poll_interval=0.05,
        stop_timeout=5,
        workdir=str(wd),
        start_before_member=True,
        nproc=nproc,
        condition=cond,
    )
    return launcher, cond, out


def _run_until(launcher: Launcher, done: Any) -> int:
    """Run the launcher here (signal handlers need the main thread); SIGTERM it once ``done()`` holds."""

    def drive() -> None:
        try:
            wait_for(done, 30, "the launcher's processes")
        finally:  # stopped either way: a wait that timed out fails the test's asserts, it does not hang it
            launcher._on_signal(signal.SIGTERM, None)

    t = threading.Thread(target=drive)
    t.start()
    rc = launcher.run()
    t.join()
    return rc


def test_a_pod_started_before_it_is_a_member_says_when_its_processes_are_ready(
    tmp_path: Path, handlers: None
) -> None:
    """A new worker of a job that runs the SDK starts its processes at once and says False (starting),
    then True once every process wrote its handshake: the operator takes it into the world only then."""
    launcher, cond, out = _in_process(tmp_path, ["w0"], nproc=2)  # the others train; w1 is no member
    assert _run_until(launcher, lambda: any(v[0] for v in cond.values)) == 143
    first, *rest = cond.values
    assert first == (False, "2 processes starting", hc.REASON_PROCESSES_STARTING, 0)
    assert rest == [(True, "2 processes ready to join", None, 2)]
    assert sorted(r["LOCAL_RANK"] for r in _records(out)) == ["0", "1"]
    assert all(r["RANK"] is None for r in _records(out))  # no rank before membership: the SDK waits


def test_a_pod_started_as_a_member_sets_no_condition(tmp_path: Path, handlers: None) -> None:
    launcher, cond, _ = _in_process(tmp_path, ["w0", "w1"], nproc=1)
    handshake = tmp_path / "wd" / "sdk-handshake-0.json"
    assert _run_until(launcher, lambda: handshake.exists() and launcher.children[0].started_at) == 143
    assert cond.values == []


def test_an_sdk_process_not_ready_within_the_startup_timeout_is_restarted_then_ends_the_pod(
    tmp_path: Path, handlers: None
) -> None:
    """A process stuck before its handshake (an import, a dataset or a device that never comes up) would
    hold its pod's slot for ever without joining: past the startup timeout the launcher kills it and
    restarts it in place (a failure: counted, its exit code passed on), and ends the pod once no restarts
    are left, so that the operator replaces it.  The pod never says it is ready."""
    launcher, cond, out = _in_process(
        tmp_path, ["w0"], nproc=1, mode="loop", **{hc.ENV_STARTUP_TIMEOUT: "0.5", hc.ENV_MAX_RESTARTS: "1"}
    )
    finished = threading.Event()

    def watchdog() -> None:  # a launcher that never gives up would hang the test: stop it
        if not finished.wait(30):
            launcher._on_signal(signal.SIGTERM, None)

    t = threading.Thread(target=watchdog)
    t.start()
    try:
        rc = launcher.run()
    finally:
        finished.set()
        t.join()
    assert rc == exit_code(-signal.SIGKILL)  # killed twice: the second time no restart was left
    starts = _records(out)
    assert [r["HETEROTRAIN_RESTART_COUNT"] for r in starts] == ["0", "1"]
    assert starts[1]["HETEROTRAIN_LAST_EXIT_CODE"] == str(exit_code(-signal.SIGKILL))
    # not before its timeout (the records are written once each interpreter is up: allow for its start)
    assert starts[1]["time"] - starts[0]["time"] >= 0.4
    assert cond.values and not any(ready for ready, *_ in cond.values)


def test_only_a_process_without_its_handshake_past_the_startup_timeout_is_stuck(
    tmp_path: Path, procs: Procs
) -> None:
    """Ready (its handshake written) it lives on, however long ago it started; a plain script (no
    early start: nothing tells its slow start from a stuck one) is never killed for it."""
    for early in (True, False):
        env = {
            **os.environ,
            hc.ENV_POD_NAME: "w1",
            hc.ENV_MEMBERSHIP_SOURCE: f"file:{tmp_path / 'membership.json'}",
            hc.ENV_STARTUP_TIMEOUT: "10",
        }
        launcher = Launcher(
            ["true"], env=env, workdir=str(tmp_path / f"wd{early}"), start_before_member=early
        )
        c = Child(0, str(tmp_path / f"handshake-{early}.json"))
        c.proc = procs.popen([PYTHON, "-c", "import time; time.sleep(60)"])
        c.started_at = time.monotonic() - 11  # past its timeout
        launcher.children = [c]
        Path(c.handshake_file).write_text("{}")
        launcher._end_stuck_starts()
        assert c.running and not c.stuck
        os.unlink(c.handshake_file)
        launcher._end_stuck_starts()
        assert c.stuck is early
        assert (c.proc.wait(10) == -signal.SIGKILL) if early else c.running


class FailingAPI:
    """An API server that refuses the first ``failures`` patches."""

    def __init__(self, failures: int) -> None:
        self.failures, self.patches = failures, []  # type: ignore[var-annotated]

    def patch_pod_status(self, pod: str, patch: dict[str, Any]) -> None:
        self.patches.append(patch)
        if len(self.patches) <= self.failures:
            raise ConnectionError("refused")


def test_the_condition_is_retried_until_it_lands() -> None:
    """A lost True would keep the pod out of the world for ever: a refused patch is retried."""
    api = FailingAPI(failures=4)
    cond = ProcessesCondition("w1", api)  # type: ignore[arg-type]
    cond.set(True, "2 processes ready to join")
    wait_for(lambda: len(api.patches) >= 5, 20, "the fifth try")
    cond.close()
    statuses = [p["status"]["conditions"][0]["status"] for p in api.patches]
    assert statuses == ["True"] * 5


def test_the_wakeup_a_signal_handler_gives_takes_no_lock() -> None:
    """A SIGCHLD handler wakes the loop; with a threading.Event a second SIGCHLD during the first handler's
    set() deadlocked the launcher (two processes exiting together). A pipe takes no lock and never blocks."""
    w = Wakeup()
    t0 = time.monotonic()
    w.wait(0.05)
    assert time.monotonic() - t0 >= 0.04  # nothing given: the timeout
    for _ in range(100_000):  # more than a pipe holds: neither blocks nor fails
        w.set()
    t0 = time.monotonic()
    w.wait(5.0)
    assert time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    w.wait(0.05)  # used up by the wait before
    assert time.monotonic() - t0 >= 0.04
    previous = signal.signal(signal.SIGUSR1, lambda *_: w.set())
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        t0 = time.monotonic()
        w.wait(5.0)
        assert time.monotonic() - t0 < 1.0
    finally:
        signal.signal(signal.SIGUSR1, previous)
    w.close()
    w.set()  # after the end: nothing (the descriptor may be another file's by then)


def test_a_workdir_the_launcher_made_is_removed_when_it_ends(tmp_path: Path) -> None:
    """Without ``--workdir`` the launcher makes its own (handshakes, the mirrored membership) and removes
    it when it ends: a pod that is a process on a shared host (the e2e process runner) leaves no litter.
    A directory it was given is the caller's, and stays."""
    env = {**os.environ, hc.ENV_POD_NAME: "w1", hc.ENV_MEMBERSHIP_SOURCE: f"file:{tmp_path / 'm.json'}"}
    own = Launcher(["true"], env=env, start_before_member=True, nproc=1)
    assert os.path.isdir(own.workdir)
    assert own.run() == 0
    assert not os.path.exists(own.workdir)
    given = Launcher(["true"], env=env, workdir=str(tmp_path / "wd"), start_before_member=True, nproc=1)
    assert given.run() == 0
    assert (tmp_path / "wd").is_dir()
