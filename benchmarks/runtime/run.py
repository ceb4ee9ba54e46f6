#!/usr/bin/env python
"""Runtime benchmark (``make bench-runtime``) -> ``benchmarks/results/runtime.json``.

One machine, CPU and gloo, three workers emulating accelerators of relative
speeds 1:2:3 (the SDK sleeps so that a local batch of b samples takes
b / (speed x base_rate) seconds).  Figures, each printed next to its baseline:

* ``step_time_vs_ideal``: ideal step time (global batch / sum of the workers'
  throughputs) over the measured mean step time, throughput-proportional split
  (target >= 0.9); ``equal_split_step_time_vs_ideal`` is the same with an equal
  split (the baseline).
* ``recovery_seconds``: from SIGKILL of one worker to the first training step
  completed by the re-formed world (target <= 10 s); ``torchrun_recovery_seconds``:
  the same fault under plain torchrun (c10d rendezvous, --max-restarts, the
  workers reload the latest checkpoint), measured with a deadline; null with
  the reason when it does not recover.
* ``async_save_pause_ratio``: training pause of an asynchronous save over that
  of a synchronous save of the same >= 200 MB state (target <= 0.2).
* ``exactly_once``: the recovery run's sample log shows every sample of every
  finished data-epoch consumed exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "runtime"))

from heterotrain_runtime import contract  # noqa: E402
from heterotrain_runtime.local import LocalSupervisor, PoolSpec, free_port  # noqa: E402
from heterotrain_runtime.samplelog import check_exactly_once, read_records  # noqa: E402

EXAMPLE = REPO / "examples" / "train.py"
RESULTS = REPO / "benchmarks" / "results" / "runtime.json"
SPEEDS = (1.0, 2.0, 3.0)
POOLS = [PoolSpec("emulated-1x", 1, 1.0), PoolSpec("emulated-2x", 1, 2.0), PoolSpec("emulated-3x", 1, 3.0)]
GLOBAL_BATCH = 240
BASE_RATE = 200.0  # samples/s at speed 1.0 -> ideal step 240 / (6 x 200) = 0.2 s
DATASET = 2400  # 10 steps per data-epoch


def log(msg: str) -> None:
    print(msg, flush=True)


def _supervisor(work: Path, steps: int, policy: str, **kw: Any) -> LocalSupervisor:
    extra = {
        contract.ENV_MEMBERSHIP_POLL_SECONDS: "0.05",
        contract.ENV_CHECKPOINT_KEEP: "2",
        **kw.pop("extra_env", {}),
    }
    return LocalSupervisor(
        pools=POOLS,
        command=[
            sys.executable,
            str(EXAMPLE),
            "--dataset-size",
            str(DATASET),
            "--log-every",
            "0",
            *kw.pop("args", []),
        ],
        workdir=str(work),
        global_batch_size=GLOBAL_BATCH,
        steps=steps,
        base_rate=BASE_RATE,
        rebalance_policy=policy,
        rebalance_min_interval=1.0,
        heartbeat_timeout=10.0,
        output="quiet",
        extra_env=extra,
        **kw,
    )


def _drive(sup: LocalSupervisor, cond: Any, timeout: float) -> int | None:
    return sup.supervise_until(cond, timeout, poll=0.02)


def step_time(work: Path, policy: str, steps: int, warmup: int) -> dict[str, Any]:
    sup = _supervisor(work, steps, policy)
    try:
        sup.start()
        rc = _drive(sup, lambda: False, 240)
    finally:
        sup.shutdown()
    prog = sup.progress()
    if rc != 0 or len(prog) < steps:
        raise RuntimeError(f"{policy} run failed (rc {rc}, {len(prog)} steps)")
    steady = [r for r in prog if r["step"] > warmup]
    # mean step time = wall time over the steady steps / their number (a throughput, not a median)
    span = steady[-1]["time"] - prog[warmup - 1]["time"]
    mean = span / len(steady)
    ideal = GLOBAL_BATCH / (sum(SPEEDS) * BASE_RATE)
    return {
        "policy": policy,
        "ideal_step_seconds": ideal,
        "mean_step_seconds": mean,
        "ratio": ideal / mean,
        "final_split": steady[-1]["split"],
        "steps_measured": len(steady),
    }


def recovery(work: Path, steps: int, kill_at: int) -> dict[str, Any]:
    sup = _supervisor(
        work,
        steps,
        "Throughput",
        sample_log_dir=str(work / "samples"),
        checkpoint_dir=str(work / "ckpt"),
        args=["--checkpoint-interval", "10"],
    )
    try:
        sup.start()
        _drive(sup, lambda: (sup.progress() or [{"step": 0}])[-1]["step"] >= kill_at, 240)
        victim = sup.membership.world[1].pod if sup.membership else ""
        t_kill = time.time()
        epoch_before = sup.membership.epoch if sup.membership else 0
        sup.kill(victim)
        rc = _drive(sup, lambda: False, 240)
    finally:
        sup.shutdown()
    prog = sup.progress()
    after = [r for r in prog if r["time"] > t_kill and r["epoch"] > epoch_before]
    if rc != 0 or not after:
        raise RuntimeError(f"recovery run failed (rc {rc})")
    first = after[0]
    records = read_records(str(work / "samples"))
    final = prog[-1]["step"]
    finished_epochs = list(range(final * GLOBAL_BATCH // DATASET))
    report = check_exactly_once(records, DATASET, final, complete_epochs=finished_epochs)
    return {
        "recovery_seconds": first["time"] - t_kill,
        "killed": victim,
        "first_step_after": first["step"],
        "world_after": first["world"],
        "final_step": final,
        "exactly_once": report.ok,
        "exactly_once_problems": report.problems[:5],
        "data_epochs_checked": finished_epochs,
    }


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return out


def torchrun_recovery(work: Path, kill_at: int, deadline: float) -> dict[str, Any]:
    """The same fault under plain torchrun: the agent restarts every worker; they reload the checkpoint."""
    progress = work / "progress.jsonl"
    ckpt = work / "ckpt"
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("HETEROTRAIN_"):
            del env[k]
    env.update(
        {
            contract.ENV_PROGRESS_FILE: str(progress),
            contract.ENV_EMULATED_SPEED: "2.0",  # the same aggregate speed as 1:2:3, spread evenly
            contract.ENV_EMULATED_BASE_RATE: repr(BASE_RATE),
            contract.ENV_HEARTBEAT_TIMEOUT: "10",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    port = free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "3", "--max-restarts", "3",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--monitor-interval", "0.5",
        str(EXAMPLE), "--steps", "100000", "--global-batch-size", str(GLOBAL_BATCH),
        "--dataset-size", str(DATASET), "--log-every", "0",
        "--checkpoint-dir", str(ckpt), "--checkpoint-interval", "10",
    ]  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "torchrun.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

    def records() -> list[dict[str, Any]]:
        try:
            return [json.loads(x) for x in progress.read_text().splitlines() if x.strip().endswith("}")]
        except FileNotFoundError:
            return []

    result: dict[str, Any] = {"torchrun_recovery_seconds": None}
    try:
        t_end = time.monotonic() + 240
        while not records() or records()[-1]["step"] < kill_at:
            if agent.poll() is not None or time.monotonic() > t_end:
                result["note"] = f"torchrun did not start training (exit {agent.poll()})"
                return result
            time.sleep(0.05)
        workers = _children(agent.pid)
        if not workers:
            result["note"] = "no torchrun worker process found"
            return result
        victim = sorted(workers)[1]
        t_kill = time.time()
        epoch_before = records()[-1]["epoch"]
        os.kill(victim, signal.SIGKILL)
        limit = time.monotonic() + deadline
        while time.monotonic() < limit:
            after = [r for r in records() if r["time"] > t_kill and r["epoch"] > epoch_before]
            if after:
                result["torchrun_recovery_seconds"] = after[0]["time"] - t_kill
                result["first_step_after"] = after[0]["step"]
                result["note"] = "agent restarted all workers; they reloaded the latest checkpoint"
                return result
            if agent.poll() is not None:
                result["note"] = f"torchrun exited with {agent.returncode} without recovering"
                return result
            time.sleep(0.05)
        result["note"] = f"no training step within {deadline:.0f} s after the kill (did not recover)"
        return result
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
        logf.close()
        text = (work / "torchrun.log").read_text(errors="replace")
        result["worker_failures_seen_by_agent"] = text.count("failed (exitcode")
        errors = [line.strip() for line in text.splitlines() if line.startswith("RuntimeError:")]
        if errors and result["torchrun_recovery_seconds"] is None:
            result["last_worker_error"] = errors[-1][:300]


def async_save(work: Path, megabytes: int, repeats: int) -> dict[str, Any]:
    import torch

    from heterotrain_runtime.checkpoint import CheckpointManager

    n = megabytes * 1024 * 1024 // 4 // 4
    state = {f"layer{i}": torch.randn(n) for i in range(4)}  # 4 tensors, `megabytes` MB of float32
    size_mb = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
    mgr = CheckpointManager(str(work / "ckpt"), keep=2)
    mgr.save(0, {"w": torch.zeros(4)}, {}, asynchronous=False)  # warm up DCP's lazy imports
    sync, asyn = [], []
    step = 1
    for _ in range(repeats):
        sync.append(mgr.save(step, state, {}, asynchronous=False))
        step += 1
        asyn.append(mgr.save(step, state, {}, asynchronous=True))
        for t in state.values():
            t.add_(1.0)  # training goes on while the save is written
        mgr.wait()
        step += 1
    s, a = statistics.median(sync), statistics.median(asyn)
    return {
        "state_mb": size_mb,
        "sync_pause_seconds": sync,
        "async_pause_seconds": asyn,
        "async_save_pause_ratio": a / s,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--save-mb", type=int, default=256)
    p.add_argument("--torchrun-deadline", type=float, default=90.0)
    args = p.parse_args()
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="heterotrain-bench-"))
    try:
        import torch

        log(
            f"runtime benchmark: 3 workers at speeds {SPEEDS}, global batch {GLOBAL_BATCH}, base rate {BASE_RATE}/s"
        )
        thr = step_time(work / "throughput", "Throughput", args.steps, warmup=10)
        log(f"  throughput split {thr['final_split']}: mean step {thr['mean_step_seconds']:.3f} s")
        eq = step_time(work / "equal", "Equal", args.steps // 2, warmup=5)
        log(f"  equal split {eq['final_split']}: mean step {eq['mean_step_seconds']:.3f} s")
        rec = recovery(work / "recovery", steps=40, kill_at=15)
        log(f"  recovery: first step of the re-formed world {rec['recovery_seconds']:.2f} s after the kill")
        tr = torchrun_recovery(work / "torchrun", kill_at=15, deadline=args.torchrun_deadline)
        log(f"  torchrun: {tr.get('torchrun_recovery_seconds')} ({tr.get('note')})")
        sv = async_save(work / "save", args.save_mb, repeats=3)
        log(
            f"  save of {sv['state_mb']:.0f} MB: sync {sv['sync_pause_seconds']}, async {sv['async_pause_seconds']}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    torchrun_s = tr.get("torchrun_recovery_seconds")
    result = {
        "step_time_vs_ideal": round(thr["ratio"], 4),
        "equal_split_step_time_vs_ideal": round(eq["ratio"], 4),
        "recovery_seconds": round(rec["recovery_seconds"], 3),
        "torchrun_recovery_seconds": None if torchrun_s is None else round(torchrun_s, 3),
        "torchrun_recovery_note": tr.get("note"),
        "async_save_pause_ratio": round(sv["async_save_pause_ratio"], 4),
        "exactly_once": rec["exactly_once"],
        "targets": {
            "step_time_vs_ideal": ">= 0.9",
            "recovery_seconds": "<= 10",
            "async_save_pause_ratio": "<= 0.2",
            "exactly_once": "true",
        },
        "details": {"throughput_split": thr, "equal_split": eq, "recovery": rec, "torchrun": tr, "save": sv},
        "setup": {
            "workers": [{"type": p.type, "speed": p.speed} for p in POOLS],
            "global_batch_size": GLOBAL_BATCH,
            "emulated_base_rate": BASE_RATE,
            "dataset_size": DATASET,
            "backend": "gloo",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "elapsed_seconds": round(time.monotonic() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.out)

    tr_txt = f"{torchrun_s:.2f} s" if torchrun_s is not None else f"failed: {tr.get('note')}"
    if torchrun_s is None and tr.get("last_worker_error"):
        tr_txt += f"; restarted workers died with {tr['last_worker_error'][:120]}"
    log("")
    log(
        f"step_time_vs_ideal      {thr['ratio']:.3f}   (target >= 0.9; baseline equal split {eq['ratio']:.3f})"
    )
    log(
        f"recovery_seconds        {rec['recovery_seconds']:.2f}    (target <= 10; baseline torchrun {tr_txt})"
    )
    log(
        f"async_save_pause_ratio  {sv['async_save_pause_ratio']:.3f}   (target <= 0.2; baseline sync save 1.0: "
        f"{statistics.median(sv['async_pause_seconds']):.3f} s vs {statistics.median(sv['sync_pause_seconds']):.3f} s "
        f"for {sv['state_mb']:.0f} MB)"
    )
    log(f"exactly_once            {str(rec['exactly_once']).lower()}")
    log(f"wrote {args.out} in {result['elapsed_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
