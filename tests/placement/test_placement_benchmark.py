"""Smoke test of the placement benchmark (``--quick``): it runs, writes its files, and its figures are sane."""

from __future__ import annotations

import json
from pathlib import Path

from placement_helpers import load_benchmark

REQUIRED = [
    "throughput_vs_lp",
    "throughput_vs_order_lp",
    "order_lp_vs_lp",
    "typeblind_vs_lp",
    "binpack_vs_lp",
    "single_type_vs_lp",
    "stranded_accelerators_fraction",
    "pods_per_second_5000_nodes",
    "pods_per_second_5000_nodes_binpack",
    "scenarios",
    "machine",
    "python",
]


def test_quick_benchmark_writes_json_and_png(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bench = load_benchmark()
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "placement.json").read_text())
    png = (tmp_path / "placement.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    for key in REQUIRED:
        assert key in out, key
    assert out["quick"] is True
    assert len(out["scenarios"]) >= 8
    for s in out["scenarios"]:
        for name, p in s["policies"].items():
            # No policy can beat a valid upper bound; every plan was checked for over-commitment.
            assert 0.0 <= p["vs_lp"] <= 1.0 + 1e-6, (s["family"], name)
            assert 0.0 <= p["stranded_accelerators_fraction"] <= 1.0
        # Ours follows the admission rule and serves as the proof plan: never above the order-respecting bound,
        # which is never above the order-free one.
        assert s["policies"]["ours"]["vs_order_lp"] <= 1.0 + 1e-6, s["family"]
        assert s["order_lp_bound"] <= s["lp_bound"] + 1e-6, s["family"]
    assert out["pods_per_second_5000_nodes"] > 0
    printed = capsys.readouterr().out
    assert "throughput / LP bound (median)" in printed
