#!/usr/bin/env python
"""A job over a CUDA GPU and the CPU: two pools, the split learned, on one machine with one GPU.

    python benchmarks/gpu/run.py                    # a few minutes on one GPU (under 10); needs CUDA
    python benchmarks/gpu/run.py --cpu-procs 2      # the CPU pool with two processes

One training process runs on the GPU (pool ``cuda-gpu``), one or two on the CPU (pool ``host-cpu``),
under the runtime's local mode (launchers, membership file, the SDK); the two pools meet over gloo (the
GPU's gradients go through host memory).  The model is a residual MLP (benchmarks/gpu/worker.py) whose
every step is real compute on both devices.  The job declares the GPU 8x as fast as a CPU process, a
guess the SDK corrects from measured step times.  It prints, and writes to ``--out``:

* the learned split (the GPU's share of the global batch, first and last step);
* ``step_time_vs_ideal``: the ideal step time over the measured mean step time in the steady state
  (the last half of the steps).  Ideal = global batch / the sum of every process's compute rate, each
  measured alone after training at its final share (forward and backward, synchronized): what a step
  would take if every device finished at once and communication were free;
* the training pause of an asynchronous checkpoint of the GPU's state (saved from GPU memory) against
  a synchronous one of the same state.

Without a usable CUDA device it says so and exits with 69 (EX_UNAVAILABLE); nothing is started.
``--gpu-pool-device cpu`` runs the "GPU" pool on the CPU, to test the pipeline on a machine without a
GPU (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "runtime"))

WORKER = Path(__file__).resolve().parent / "worker.py"
RESULTS = REPO / "benchmarks" / "results" / "gpu.json"
GPU_TYPE, CPU_TYPE = "cuda-gpu", "host-cpu"
EXIT_NO_GPU = 69  # sysexits EX_UNAVAILABLE: a service (here: a CUDA device) is not available


def cuda_refusal(torch_module: Any) -> str | None:
    """Why this machine cannot run the benchmark (no CUDA build, no device), or None."""
    version = getattr(torch_module, "__version__", "?")
    cuda = getattr(getattr(torch_module, "version", None), "cuda", None)
    if not cuda:
        return f"it needs a CUDA GPU, and this torch ({version}) is a build without CUDA"
    if not torch_module.cuda.is_available() or torch_module.cuda.device_count() < 1:
        return f"it needs a CUDA GPU, and torch {version} (CUDA {cuda}) sees none"
    return None


def steady_state(progress: Sequence[Mapping[str, Any]], warmup: int) -> dict[str, Any]:
    """Mean step time over the steps after ``warmup`` (wall time over their number), and the split."""
    steady = [r for r in progress if r["step"] > warmup]
    before = [r for r in progress if r["step"] == warmup]
    if len(steady) < 2 or not before:
        raise ValueError(f"need steps past {warmup} and step {warmup} itself; got {len(progress)} steps")
    return {
        "mean_step_seconds": (steady[-1]["time"] - before[0]["time"]) / len(steady),
        "steps_measured": len(steady),
        "first_split": list(progress[0]["split"]),
        "final_split": list(steady[-1]["split"]),
        "types": list(steady[-1]["types"]),
    }


def ideal_step_seconds(global_batch: int, rates: Sequence[float]) -> float:
    """The step time if every process finished its share at once: global batch / summed compute rates."""
    total = sum(rates)
    if total <= 0:
        raise ValueError("no compute rate measured")
    return global_batch / total


def summarize(
    progress: Sequence[Mapping[str, Any]],
    workers: Sequence[Mapping[str, Any]],
    global_batch: int,
    warmup: int,
) -> dict[str, Any]:
    """The figures of a run from rank 0's progress records and every process's results."""
    st = steady_state(progress, warmup)
    ideal = ideal_step_seconds(global_batch, [w["compute_samples_per_second"] for w in workers])
    gpu = [w for w in workers if w["type"] == GPU_TYPE]
    share = {t: 0 for t in st["types"]}
    for t, b in zip(st["types"], st["final_split"], strict=True):
        share[t] += b
    out: dict[str, Any] = {
        "step_time_vs_ideal": ideal / st["mean_step_seconds"],
        "ideal_step_seconds": ideal,
        **st,
        "gpu_share_first": sum(
            b for t, b in zip(st["types"], st["first_split"], strict=True) if t == GPU_TYPE
        )
        / global_batch,
        "gpu_share_final": share.get(GPU_TYPE, 0) / global_batch,
        "compute_samples_per_second": {w["name"]: w["compute_samples_per_second"] for w in workers},
    }
    if gpu:
        g = gpu[0]
        out["gpu_model_state_mb"] = g["model_state_mb"]
        out["gpu_sync_checkpoint_pause_seconds"] = g["sync_checkpoint_pause_seconds"]
        out["gpu_async_checkpoint_pause_seconds"] = g["async_checkpoint_pause_seconds"]
        out["gpu_async_checkpoint_pause_ratio"] = g["async_checkpoint_pause_seconds"] / max(
            g["sync_checkpoint_pause_seconds"], 1e-9
        )
    return out


def report(s: Mapping[str, Any]) -> list[str]:
    lines = [
        f"learned split      GPU {s['gpu_share_first']:.1%} of the batch at step 1 -> {s['gpu_share_final']:.1%} "
        f"(final split {s['final_split']} over {s['types']})",
        f"step_time_vs_ideal {s['step_time_vs_ideal']:.3f}  (mean step {s['mean_step_seconds'] * 1e3:.1f} ms over "
        f"{s['steps_measured']} steps; ideal {s['ideal_step_seconds'] * 1e3:.1f} ms)",
    ]
    if "gpu_async_checkpoint_pause_ratio" in s:
        lines.append(
            f"checkpoint pause   async {s['gpu_async_checkpoint_pause_seconds'] * 1e3:.1f} ms vs sync "
            f"{s['gpu_sync_checkpoint_pause_seconds'] * 1e3:.1f} ms of {s['gpu_model_state_mb']:.0f} MB in GPU "
            f"memory (ratio {s['gpu_async_checkpoint_pause_ratio']:.3f})"
        )
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=80)
    # about 13 TFLOP of forward and backward per step (~0.1 s on an H100/H200-class GPU in TF32) against
    # 34 MB of gradients through host memory and gloo: compute, not communication, makes the step
    p.add_argument("--global-batch-size", type=int, default=262144)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--cpu-procs", type=int, default=1, choices=(1, 2))
    p.add_argument(
        "--gpu-weight", type=float, default=8.0, help="declared speed of the GPU process vs a CPU one"
    )
    p.add_argument("--timeout", type=float, default=540.0, help="give up after this many seconds")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--gpu-pool-device", default="cuda:0", help="cpu: test the pipeline without a GPU")
    return p


def _run(args: argparse.Namespace, work: Path) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    from heterotrain_runtime import envvars
    from heterotrain_runtime.local import LocalSupervisor, PoolSpec

    cpus = os.cpu_count() or 2
    threads = max(1, (cpus - 2) // args.cpu_procs)  # the GPU process and the launchers keep two cores
    command = [
        sys.executable, str(WORKER), "--steps", str(args.steps), "--global-batch-size", str(args.global_batch_size),
        "--width", str(args.width), "--depth", str(args.depth), "--gpu-type", GPU_TYPE,
        "--gpu-device", args.gpu_pool_device, "--cpu-threads", str(threads),
        "--checkpoint-dir", str(work / "ckpt"), "--results", str(work / "results"),
    ]  # fmt: skip
    sup = LocalSupervisor(
        pools=[PoolSpec(GPU_TYPE, 1, args.gpu_weight), PoolSpec(CPU_TYPE, args.cpu_procs, 1.0)],
        command=command,
        workdir=str(work / "job"),
        global_batch_size=args.global_batch_size,
        emulate=False,  # real devices at their real speeds
        rebalance_min_interval=1.0,
        heartbeat_timeout=120.0,
        output="files",
        extra_env={envvars.ENV_MEMBERSHIP_POLL_SECONDS: "0.05", "PYTHONPATH": str(REPO / "runtime")},
    )
    rc = sup.run(timeout=args.timeout)
    results = [json.loads(f.read_text()) for f in sorted((work / "results").glob("*.json"))]
    return rc, sup.progress(), results


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    if args.gpu_pool_device.startswith("cuda"):
        why = cuda_refusal(torch)
        if why is not None:
            print(f"benchmarks/gpu/run.py: not run: {why}.", file=sys.stderr)
            return EXIT_NO_GPU
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="heterotrain-gpu-"))
    try:
        rc, progress, workers = _run(args, work)
        if rc != 0 or len(workers) != 1 + args.cpu_procs:
            logs = "\n".join(p.read_text()[-2000:] for p in sorted((work / "job").glob("*.log")))
            print(f"benchmarks/gpu/run.py: the job failed (exit {rc}):\n{logs}", file=sys.stderr)
            return 1
        summary = summarize(progress, workers, args.global_batch_size, warmup=args.steps // 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary.update(
        {
            "setup": {
                "gpu": torch.cuda.get_device_name(0)
                if args.gpu_pool_device.startswith("cuda")
                else "none (cpu)",
                "cpu_procs": args.cpu_procs,
                "cpus": os.cpu_count(),
                "global_batch_size": args.global_batch_size,
                "width": args.width,
                "depth": args.depth,
                "declared_gpu_weight": args.gpu_weight,
                "torch": torch.__version__,
            },
            "elapsed_seconds": round(time.monotonic() - t0, 1),
            "per_step_seconds_median": statistics.median(r["step_seconds"] for r in progress[1:] or progress),
        }
    )
    for line in report(summary):
        print(line, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out} in {summary['elapsed_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
