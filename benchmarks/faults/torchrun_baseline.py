"""The baseline: the same faults under plain torchrun, configured as its documentation says.

``torchrun`` (torch.distributed.run) with a c10d rendezvous, ``--max-restarts``, and
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (the documented setting against restarted gloo workers reading the
previous attempt's addresses from the shared store); the script (examples/train.py, the SDK in its static
mode) reloads the latest checkpoint at every start, so a restart resumes from it and replays the steps since.
torchrun restarts the whole worker group on any failure; it can handle a killed process, a hang (once the
collective timeout, the same heartbeat timeout, fires) and a SIGTERM (a pod deletion); one agent on one
machine has no node to lose or drain.

Its three workers compute on the same emulated hardware as HeteroTrain's: the whole torchrun process tree
runs in one cgroup whose CPU quota is the sum of the quotas the process runner gives HeteroTrain's three
workers (``cores``), so the three equal workers together have the same compute (torchrun has no per-rank
batch, so its devices are equal: no straggler, which favours it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heterotrain_runtime import cgroups

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train.py"
SIGNALS = {"process_kill": signal.SIGKILL, "hang": signal.SIGSTOP, "pod_delete": signal.SIGTERM}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(d))
    return out


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip().endswith("}")]
    except FileNotFoundError:
        return []


def measure(
    work: Path,
    *,
    heartbeat: float,
    checkpoint_steps: int,
    cores: float,
    batch: int,
    dataset: int,
    log: Callable[[str], None] = print,
    steady_steps: int = 30,
) -> dict[str, Any]:
    """Run torchrun with 3 workers in one cgroup of ``cores`` CPUs and inject each fault it can handle in
    turn; the measured kinds."""
    work.mkdir(parents=True, exist_ok=True)
    progress = work / "progress.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETEROTRAIN_")}
    env.update(
        HETEROTRAIN_PROGRESS_FILE=str(progress),
        HETEROTRAIN_HEARTBEAT_TIMEOUT_SECONDS=repr(heartbeat),  # the collectives' timeout (gloo)
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "3", "--max-restarts", str(len(SIGNALS)),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
        str(EXAMPLE), "--steps", "1000000", "--global-batch-size", str(batch), "--dataset-size", str(dataset),
        "--log-every", "0", "--checkpoint-dir", str(work / "ckpt"), "--checkpoint-interval", str(checkpoint_steps),
    ]  # fmt: skip
    config = {
        "command": " ".join(["torchrun", *cmd[3:]]),
        "env": {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "collective timeout (s)": heartbeat},
        "workers": 3,
        "cpu_quota_cores": round(cores, 4),
        "checkpoint_interval_steps": checkpoint_steps,
    }
    out: dict[str, Any] = {"config": config}
    with (
        cgroups.Cgroups("bench", cpu_shares=cgroups.CAPPED_OWNER_CPU_SHARES) as groups,
        open(work / "torchrun.log", "wb") as logf,
    ):
        group = groups.group("torchrun", cgroups.Limits.of(cores=cores))
        agent = subprocess.Popen(
            cmd,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=group.preexec(),
        )
        try:
            for kind, sig in SIGNALS.items():
                out[kind] = _one(agent.pid, progress, kind, sig, steady_steps, log)
                log(f"  torchrun {kind}: {out[kind]}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
            group.kill()
    return out


def _one(
    agent: int, progress: Path, kind: str, sig: int, steady: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Wait for ``steady`` steps of the current attempt, signal one worker, measure until it trains again."""
    deadline = time.monotonic() + 300
    while True:
        recs = _records(progress)
        if recs:
            epoch = recs[-1]["epoch"]
            if sum(r["epoch"] == epoch for r in recs) >= steady:
                break
        if time.monotonic() > deadline:
            return {
                "detection_seconds": None,
                "recovery_seconds": None,
                "steps_lost": None,
                "note": "never steady",
            }
        time.sleep(0.1)
    workers = _children(agent)
    victim = sorted(workers)[1]
    before = recs[-1]
    t_fault = time.time()
    os.kill(victim, sig)
    detected = None
    limit = time.monotonic() + 240
    while time.monotonic() < limit:
        now = _children(agent)
        if detected is None and now - workers:
            detected = time.time()  # the agent started a new worker group
        after = [r for r in _records(progress) if r["epoch"] > before["epoch"] and r["time"] > t_fault]
        if after:
            first = after[0]
            return {
                "detection_seconds": round((detected or first["time"]) - t_fault, 3),
                "recovery_seconds": round(first["time"] - t_fault, 3),
                "steps_lost": max(0, before["step"] - (first["step"] - 1)),
                "how": "the agent restarted every worker; they reloaded the latest checkpoint",
            }
        time.sleep(0.05)
    log(f"  torchrun {kind}: no step within 240 s")
    return {
        "detection_seconds": None,
        "recovery_seconds": None,
        "steps_lost": None,
        "note": "did not recover",
    }
