"""Import lightness, the install command, metrics, local-mode helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rt_helpers import PYTHON

import heterotrain_contract as hc
from heterotrain_runtime.local import parse_pools


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)


def test_package_contract_and_launcher_do_not_import_torch() -> None:
    r = _run(
        "import sys, heterotrain_runtime, heterotrain_contract, heterotrain_runtime.launcher, "
        "heterotrain_runtime.membership, heterotrain_runtime.batching, heterotrain_runtime.samplelog, "
        "heterotrain_runtime.local, heterotrain_runtime.cli; "
        "bad = [m for m in ('torch', 'kubernetes', 'kopf', 'heterotrain_operator', 'heterotrain_api') "
        "if m in sys.modules]; print(bad)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_install_makes_the_runtime_importable_from_a_bare_path(tmp_path: Path) -> None:
    dest = tmp_path / "opt"
    r = subprocess.run(
        [PYTHON, "-m", "heterotrain_runtime.install", str(dest)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert (dest / "heterotrain_runtime" / "sdk.py").exists()
    assert not list(dest.rglob("__pycache__"))
    # again over an existing install (init containers re-run)
    r = subprocess.run(
        [PYTHON, "-m", "heterotrain_runtime.install", str(dest)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["heterotrain_contract", "heterotrain_runtime"]
    # -S -I: no site-packages, no PYTHONPATH from the environment: only DEST (and the stdlib)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(dest)}
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import heterotrain_runtime.launcher as l, "
        "heterotrain_contract as c; print(l.__file__.startswith(sys.argv[1]), c.__file__.startswith(sys.argv[1]), "
        "c.GROUP)"
    )
    r = subprocess.run(
        [sys.executable, "-S", "-I", "-c", code, str(dest)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "heterotrain.io"]


def test_metrics_registry() -> None:
    from heterotrain_runtime.metrics import RuntimeMetrics

    m = RuntimeMetrics()
    m.step_seconds.observe(0.2)
    m.rank_samples_per_second.labels(rank="0", pod="p").set(120.0)
    m.pool_samples_per_second.labels(pool="nvidia-a100").set(300.0)
    m.checkpoint_save_seconds.labels(kind="pause").observe(0.01)
    m.restarts.labels(reason="failure").inc()
    text = m.render()
    for name in (
        "heterotrain_step_seconds_bucket",
        'heterotrain_pool_samples_per_second{pool="nvidia-a100"} 300.0',
        'heterotrain_restarts_total{reason="failure"} 1.0',
        "heterotrain_checkpoint_save_seconds_count",
    ):
        assert name in text
    assert RuntimeMetrics().render().count("heterotrain_restarts_total{") == 0  # a registry per instance


def test_parse_pools() -> None:
    pools = parse_pools("nvidia-a100:2,huawei-ascend-910b:1, amd-mi300x:1@2.5")
    assert [(p.type, p.count) for p in pools] == [
        ("nvidia-a100", 2),
        ("huawei-ascend-910b", 1),
        ("amd-mi300x", 1),
    ]
    # speeds come from the one accelerator table, unless the pool names its own
    assert pools[0].speed == hc.KNOWN_ACCELERATORS["nvidia-a100"].relative_throughput == 1.0
    assert pools[1].speed == hc.KNOWN_ACCELERATORS["huawei-ascend-910b"].relative_throughput
    assert pools[2].speed == 2.5
    assert parse_pools("example-npu:1")[0].speed == hc.DEFAULT_RELATIVE_THROUGHPUT
    for bad in ("", "nvidia-a100", "x:0"):
        with pytest.raises(ValueError):
            parse_pools(bad)
