"""The launcher with plain (non-torch) scripts: env contract, restarts, epochs, signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

from rt_helpers import PYTHON, Procs, wait_for

from heterotrain_runtime import contract
from heterotrain_runtime.contract import Member, Membership
from heterotrain_runtime.launcher import batch_split, child_env, exit_code


def _membership(epoch: int, pods: list[str], port: int = 29500) -> Membership:
    types = {"w0": "nvidia-a100", "w1": "huawei-ascend-910b", "w2": "nvidia-a100", "w3": "amd-mi300x"}
    weights = {"w0": 1.0, "w1": 0.8, "w2": 1.0, "w3": 1.3}
    world = tuple(Member(p, r, types[p], f"10.0.0.{r + 1}", weights[p]) for r, p in enumerate(pods))
    return Membership(epoch=epoch, world=world, master_port=port)


def test_child_env_pure() -> None:
    m = _membership(4, ["w0", "w1", "w2"])
    env = child_env({contract.ENV_GLOBAL_BATCH_SIZE: "28"}, m, "w2", 1, "/m.json", "/h.json")
    assert env["RANK"] == "2" and env["WORLD_SIZE"] == "3"
    assert env["LOCAL_RANK"] == "0" and env["LOCAL_WORLD_SIZE"] == "1"
    assert env["MASTER_ADDR"] == "10.0.0.1" and env["MASTER_PORT"] == "29500"
    assert env[contract.ENV_EPOCH] == "4" and float(env[contract.ENV_WEIGHT]) == 1.0
    assert env[contract.ENV_BATCH_SPLIT] == "10,8,10" and env[contract.ENV_LOCAL_BATCH_SIZE] == "10"
    assert env[contract.ENV_POOL] == "1/2"  # second of the two nvidia-a100 ranks
    assert env[contract.ENV_RESTART_COUNT] == "1"
    assert env[contract.ENV_MEMBERSHIP_SOURCE] == "file:/m.json"
    assert batch_split(m, 28, "Equal") == [10, 9, 9]
    assert exit_code(-9) == 137 and exit_code(3) == 3


SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    out = sys.argv[1]
    mode = sys.argv[2]
    keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "HETEROTRAIN_EPOCH", "HETEROTRAIN_WEIGHT", "HETEROTRAIN_LOCAL_BATCH_SIZE",
            "HETEROTRAIN_BATCH_SPLIT", "HETEROTRAIN_RESTART_COUNT"]
    rec = {k: os.environ.get(k) for k in keys}
    rec["pid"] = os.getpid()
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\\n")
    if mode == "ok":
        sys.exit(0)
    if mode == "fail":
        sys.exit(3)
    if mode == "fail-once":
        sys.exit(5 if rec["HETEROTRAIN_RESTART_COUNT"] == "0" else 0)
    if mode in ("loop", "sdk"):
        if mode == "sdk":
            with open(os.environ["HETEROTRAIN_SDK_HANDSHAKE_FILE"], "w") as f:
                json.dump({"pid": os.getpid(), "handlesEpochs": True}, f)
        def term(signum, frame):
            with open(out + ".term", "w") as f:
                f.write("checkpointed")
            sys.exit(143)
        signal.signal(signal.SIGTERM, term)
        while True:
            time.sleep(0.02)
    """
)


def _launch(
    procs: Procs, tmp: Path, mode: str, pod: str = "w1", max_restarts: int = 2
) -> tuple[Any, Path, Path]:
    script = tmp / "script.py"
    script.write_text(SCRIPT)
    out = tmp / "out.jsonl"
    mfile = tmp / "membership.json"
    env = dict(os.environ)
    env.update(
        {
            contract.ENV_POD_NAME: pod,
            contract.ENV_MEMBERSHIP_SOURCE: f"file:{mfile}",
            contract.ENV_MAX_RESTARTS: str(max_restarts),
            contract.ENV_GLOBAL_BATCH_SIZE: "28",
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
    contract.write_membership_file(str(mfile), _membership(1, ["w0", "w2"]))  # not a member yet
    assert p.poll() is None and not out.exists()
    contract.write_membership_file(str(mfile), _membership(2, ["w0", "w1", "w2"]))
    assert p.wait(20) == 0
    (rec,) = _records(out)
    assert rec["RANK"] == "1" and rec["WORLD_SIZE"] == "3" and rec["MASTER_ADDR"] == "10.0.0.1"
    assert rec["HETEROTRAIN_EPOCH"] == "2" and rec["HETEROTRAIN_LOCAL_BATCH_SIZE"] == "8"


def test_restarts_then_propagates_exit_code(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "fail", max_restarts=2)
    contract.write_membership_file(str(mfile), _membership(1, ["w1"]))
    assert p.wait(30) == 3
    assert [r["HETEROTRAIN_RESTART_COUNT"] for r in _records(out)] == ["0", "1", "2"]


def test_restart_recovers(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "fail-once", max_restarts=1)
    contract.write_membership_file(str(mfile), _membership(1, ["w1"]))
    assert p.wait(30) == 0
    assert len(_records(out)) == 2


def test_new_epoch_restarts_a_plain_script_with_the_new_world(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "loop")
    contract.write_membership_file(str(mfile), _membership(1, ["w0", "w1"]))
    wait_for(lambda: len(_records(out)) == 1, 20, "first start")
    contract.write_membership_file(str(mfile), _membership(2, ["w1", "w2", "w3"]))
    wait_for(lambda: len(_records(out)) == 2, 20, "restart on the new epoch")
    first, second = _records(out)
    assert (first["RANK"], first["WORLD_SIZE"]) == ("1", "2")
    assert (second["RANK"], second["WORLD_SIZE"], second["HETEROTRAIN_EPOCH"]) == ("0", "3", "2")
    assert second["HETEROTRAIN_RESTART_COUNT"] == "0"  # an epoch change is not a failure
    # SIGTERM is forwarded; the launcher exits with the process's code
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143
    assert (tmp_path / "out.jsonl.term").read_text() == "checkpointed"


def test_sdk_handshake_keeps_the_process_across_epochs(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "sdk")
    contract.write_membership_file(str(mfile), _membership(1, ["w1"]))
    wait_for(lambda: (tmp_path / "wd" / "sdk-handshake.json").exists(), 20, "handshake")
    contract.write_membership_file(str(mfile), _membership(2, ["w0", "w1"]))
    contract.write_membership_file(str(mfile), _membership(3, ["w2", "w1"]))
    # give the launcher a few polls (50 ms each) to (wrongly) restart the process
    time.sleep(0.5)
    assert len(_records(out)) == 1 and p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143


def test_killed_child_exit_code(procs: Procs, tmp_path: Path) -> None:
    p, out, mfile = _launch(procs, tmp_path, "loop", max_restarts=0)
    contract.write_membership_file(str(mfile), _membership(1, ["w1"]))
    wait_for(lambda: len(_records(out)) == 1, 20, "start")
    os.kill(_records(out)[0]["pid"], signal.SIGKILL)
    assert p.wait(20) == 128 + signal.SIGKILL


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
