"""benchmarks/gpu/run.py without a GPU: its pure parts, its refusal, and its pipeline with the "GPU" pool
on the CPU (the figures of such a run mean nothing; that it runs end to end does)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "run.py"


def load() -> ModuleType:
    name = "gpu_bench_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def fake_torch(cuda: str | None, devices: int) -> Any:
    return SimpleNamespace(
        __version__="2.9.0",
        version=SimpleNamespace(cuda=cuda),
        cuda=SimpleNamespace(is_available=lambda: devices > 0, device_count=lambda: devices),
    )


def test_refusal_reasons() -> None:
    bench = load()
    assert "without CUDA" in bench.cuda_refusal(fake_torch(None, 0))
    assert "sees none" in bench.cuda_refusal(fake_torch("12.4", 0))
    assert bench.cuda_refusal(fake_torch("12.4", 1)) is None


def test_summary_of_a_run() -> None:
    bench = load()
    gpu, cpu = bench.GPU_TYPE, bench.CPU_TYPE
    progress = [
        {
            "step": s,
            "time": 10.0 + 0.5 * s,
            "split": [80, 20] if s < 4 else [95, 5],
            "types": [gpu, cpu],
            "step_seconds": 0.5,
        }
        for s in range(1, 11)
    ]
    workers = [
        {"name": "g", "type": gpu, "compute_samples_per_second": 380.0, "model_state_mb": 34.0,
         "sync_checkpoint_pause_seconds": 0.4, "async_checkpoint_pause_seconds": 0.02},
        {"name": "c", "type": cpu, "compute_samples_per_second": 20.0},
    ]  # fmt: skip
    s = bench.summarize(progress, workers, 100, warmup=5)
    assert s["mean_step_seconds"] == pytest.approx(0.5) and s["steps_measured"] == 5
    assert s["ideal_step_seconds"] == pytest.approx(0.25)  # 100 samples / 400 samples/s
    assert s["step_time_vs_ideal"] == pytest.approx(0.5)
    assert (s["gpu_share_first"], s["gpu_share_final"]) == (0.8, 0.95)
    assert s["gpu_async_checkpoint_pause_ratio"] == pytest.approx(0.05)
    assert any("learned split" in line and "95.0%" in line for line in bench.report(s))
    with pytest.raises(ValueError):
        bench.steady_state(progress[:3], warmup=5)


def test_without_a_gpu_it_refuses_with_exit_69() -> None:
    import torch

    if load().cuda_refusal(torch) is None:
        pytest.skip("a CUDA GPU is here: the refusal cannot show")
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 69, r.stderr
    assert "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_the_pipeline_runs_with_the_gpu_pool_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    args = ["--gpu-pool-device", "cpu", "--steps", "6", "--global-batch-size", "48", "--width", "16"]
    args += ["--depth", "1", "--out", str(out), "--timeout", "150"]
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    s = json.loads(out.read_text())
    assert len(s["final_split"]) == 2 and sum(s["final_split"]) == 48
    assert s["types"] == ["cuda-gpu", "host-cpu"] and len(s["compute_samples_per_second"]) == 2
    assert s["step_time_vs_ideal"] > 0 and s["gpu_sync_checkpoint_pause_seconds"] > 0
    assert "step_time_vs_ideal" in r.stdout and "checkpoint pause" in r.stdout
