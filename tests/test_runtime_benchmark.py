"""The pure parts of the runtime benchmark (benchmarks/runtime/run.py): the ideal split and balance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load() -> ModuleType:
    name = "runtime_bench_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "runtime" / "run.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_ideal_split_and_steps_to_balance() -> None:
    bench = load()
    ideal = bench.ideal_split(960, [100.0, 200.0, 300.0])
    assert ideal == [160, 320, 480]
    assert bench.off_balance([320, 320, 320], ideal) == (160 + 0 + 160) / 2 / 960
    progress = [
        {"step": 1, "split": [320, 320, 320]},
        {"step": 2, "split": [200, 320, 440]},  # 40 of 960 off: 4.2 %
        {"step": 3, "split": [160, 320, 480]},
    ]
    assert bench.steps_to_balance(progress, ideal, 0.05) == 2
    assert bench.steps_to_balance(progress, ideal, 0.01) == 3
    assert bench.steps_to_balance(progress[:1], ideal, 0.05) is None
    assert sum(p.speed * p.processes for p in bench.POOLS_MULTIPROCESS) == sum(p.speed for p in bench.POOLS)
