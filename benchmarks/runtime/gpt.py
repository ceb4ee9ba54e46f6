"""The GPT figures of the runtime benchmark (``make bench-runtime``): the quickstart's model on three
emulated accelerators of real, different speeds, beside one process in the same invocation.

Three workers, an A100, an H100 and an Ascend 910B, each at its type's relative throughput in the
contract's table (1 : 3.17 : 1), train the byte-level GPT (``examples/gpt.py``, AdamW, clipping,
warm-up + cosine) through local mode.  Local mode emulates each device's speed the way the process
runner does, with a cgroup CPU quota proportional to it (``heterotrain_runtime.cgroups``), so a
slower device really computes slower; the job declares equal speeds (``--initial-weights equal``),
so the split must be learned from measured throughput.  Figures:

* ``gpt_tokens_per_second``: per pool and in total, in the steady state (after ``warmup`` steps):
  the samples each pool computed per second of wall time, times the block length;
* ``gpt_step_time_vs_ideal``: the ideal step time over the measured mean step time in the steady
  state; the ideal is the global batch over the sum of the workers' compute rates (samples/s of
  forward and backward each rank measures, the SDK's throughput EMA, in the same run): a perfectly
  balanced split with free communication and a free optimizer (target >= 0.9);
* ``gpt_val_loss_ratio``: the validation loss after the last step over that of one process trained
  on the same global batches (``examples/gpt.py`` as a single process, no emulation, in the same
  invocation) (target <= 1.02).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "runtime"))

import heterotrain_contract as hc  # noqa: E402
from heterotrain_runtime import envvars  # noqa: E402
from heterotrain_runtime.local import LocalSupervisor, PoolSpec  # noqa: E402

SCRIPT = REPO / "examples" / "gpt.py"
TYPES = ("nvidia-a100", "nvidia-h100", "huawei-ascend-910b")
# 12x the quickstart's: a step's compute (about 1 s) well above its gradient sync, whose CPU work
# the quotas throttle too (about 50 ms a step on the slow devices, measured)
GLOBAL_BATCH = 384
BLOCK = 64  # the example's context length: tokens per sample
CPU_PER_SPEED = 0.25  # cores of an emulated device of speed 1 (the three together: 1.3 of the 2 cores here)


def pools() -> list[PoolSpec]:
    return [PoolSpec(t, 1, hc.relative_throughput(t)) for t in TYPES]


def _args(steps: int, eval_file: Path) -> list[str]:
    return [
        "--steps", str(steps), "--global-batch-size", str(GLOBAL_BATCH), "--block", str(BLOCK),
        "--eval-every", str(steps), "--eval-file", str(eval_file), "--log-every", "0",
    ]  # fmt: skip


def _final_val_loss(eval_file: Path, steps: int) -> float:
    recs = [json.loads(x) for x in eval_file.read_text().splitlines() if x.strip()]
    return float(next(r["val_loss"] for r in recs if r["step"] == steps))


def distributed(work: Path, steps: int, warmup: int, emulate: bool = True, **kw: Any) -> dict[str, Any]:
    """The three emulated devices; the steady-state figures and the final validation loss."""
    sup = LocalSupervisor(
        pools=pools(),
        command=[sys.executable, str(SCRIPT), *_args(steps, work / "eval.jsonl")],
        workdir=str(work),
        global_batch_size=GLOBAL_BATCH,
        steps=steps,
        initial_weights="equal",  # the SDK must learn the speeds
        rebalance_min_interval=2.0,
        heartbeat_timeout=30.0,
        emulate=emulate,
        cpu_per_speed=CPU_PER_SPEED,
        output="files",
        extra_env={envvars.ENV_MEMBERSHIP_POLL_SECONDS: "0.05"},
        **kw,
    )
    t0 = time.monotonic()
    try:
        sup.start()
        quotas = {w.pod: _quota(w) for w in sup.workers}
        rc = sup.supervise_until(lambda: False, timeout=1800, poll=0.05)
    finally:
        sup.shutdown()
    prog = sup.progress()
    if rc != 0 or len(prog) < steps:
        raise RuntimeError(f"the GPT run failed (rc {rc}, {len(prog)} steps); logs in {work}")
    return {**steady_figures(prog, warmup), "quotas_cores": quotas, "wall_seconds": time.monotonic() - t0,
            "val_loss": _final_val_loss(work / "eval.jsonl", steps)}  # fmt: skip


def _quota(worker: Any) -> float | None:
    """The worker's devices' CPU quota together, in cores (None without emulation)."""
    groups = getattr(worker, "groups", None)
    return None if groups is None else float(sum(groups.device_cores))


def steady_figures(prog: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Tokens/s per pool and in total, and the step time against the ideal, over the steps after ``warmup``."""
    steady = [r for r in prog if r["step"] > warmup]
    span = steady[-1]["time"] - prog[warmup - 1]["time"]
    mean_step = span / len(steady)
    per_pool: dict[str, float] = {}
    for r in steady:
        for rank_type, share in zip(r["types"], r["split"], strict=True):
            per_pool[rank_type] = per_pool.get(rank_type, 0.0) + share * BLOCK
    rates = [sum(r["rates"][i] for r in steady) / len(steady) for i in range(len(steady[-1]["rates"]))]
    ideal = GLOBAL_BATCH / sum(rates)
    return {
        "tokens_per_second": {t: tokens / span for t, tokens in per_pool.items()},
        "total_tokens_per_second": GLOBAL_BATCH * BLOCK / mean_step,
        "mean_step_seconds": mean_step,
        "ideal_step_seconds": ideal,
        "step_time_vs_ideal": ideal / mean_step,
        "compute_samples_per_second": dict(zip(steady[-1]["types"], rates, strict=True)),
        "final_split": steady[-1]["split"],
        "first_split": prog[0]["split"],
        "steps_measured": len(steady),
    }


def single(work: Path, steps: int) -> dict[str, Any]:
    """One process over the same global batches (no emulation, every core): the final validation loss."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**_base_env(), "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *_args(steps, work / "eval.jsonl")],
        env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"the single-process GPT run failed: {r.stderr[-2000:]}")
    return {"val_loss": _final_val_loss(work / "eval.jsonl", steps), "wall_seconds": time.monotonic() - t0}


def _base_env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("HETEROTRAIN_")}
    return {**keep, "PYTHONPATH": str(REPO / "runtime")}


def figures(work: Path, steps: int = 100, warmup: int = 35, emulate: bool = True) -> dict[str, Any]:
    """Every GPT figure, with its details and setup (the caller merges them into runtime.json)."""
    dist = distributed(work / "distributed", steps, warmup, emulate=emulate)
    one = single(work / "single", steps)
    return {
        "figures": {
            "gpt_tokens_per_second": {
                **{t: round(v, 1) for t, v in dist["tokens_per_second"].items()},
                "total": round(dist["total_tokens_per_second"], 1),
            },
            "gpt_step_time_vs_ideal": round(dist["step_time_vs_ideal"], 4),
            "gpt_val_loss_ratio": round(dist["val_loss"] / one["val_loss"], 4),
        },
        "targets": {"gpt_step_time_vs_ideal": ">= 0.9", "gpt_val_loss_ratio": "<= 1.02"},
        "details": {"distributed": dist, "single_process": one},
        "setup": {
            "model": "examples/gpt.py defaults (byte-level GPT, 3 layers, 4 heads, 96 wide, block 64)",
            "workers": [{"type": p.type, "speed": p.speed} for p in pools()],
            "declared_speeds": "equal (the split is learned)",
            "global_batch_size": GLOBAL_BATCH,
            "steps": steps,
            "steady_after_step": warmup,
            "emulation": f"cgroup CPU quotas, {CPU_PER_SPEED} core per unit of speed" if emulate else "none",
        },
    }


def log_lines(g: dict[str, Any]) -> list[str]:
    f, d = g["figures"], g["details"]
    tps = f["gpt_tokens_per_second"]
    return [
        "gpt_tokens_per_second   " + ", ".join(f"{k} {v:.0f}" for k, v in tps.items()),
        f"gpt_step_time_vs_ideal  {f['gpt_step_time_vs_ideal']:.3f}   (target >= 0.9; learned split "
        f"{d['distributed']['final_split']} from {d['distributed']['first_split']})",
        f"gpt_val_loss_ratio      {f['gpt_val_loss_ratio']:.4f}  (target <= 1.02; "
        f"{d['distributed']['val_loss']:.4f} vs one process {d['single_process']['val_loss']:.4f})",
    ]


if __name__ == "__main__":  # the GPT part alone: python benchmarks/runtime/gpt.py [STEPS] [--no-emulate]
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 100
    out = figures(
        Path(tempfile.mkdtemp(prefix="heterotrain-gpt-")), n, n // 3, "--no-emulate" not in sys.argv
    )
    print(json.dumps(out, indent=2))
    print("\n".join(log_lines(out)))
