"""Emulated devices in local mode are cgroup CPU quotas: a device of speed 3 really computes ~3x faster.

Real processes (launcher + a training script whose step is real compute, timing
each rank's forward+backward), on this machine's cgroup v1 cpu controller.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from rt_helpers import COMPUTE, PYTHON

from heterotrain_runtime import envvars
from heterotrain_runtime.cgroups import Cgroup
from heterotrain_runtime.local import LocalSupervisor, PoolSpec

WARMUP = 3  # steps: the first ones pay for lazy initialisation


def samples_per_second(rate_dir: Path) -> dict[str, float]:
    """Per rank: samples over compute seconds of the steps after the warm-up."""
    out = {}
    for f in sorted(rate_dir.glob("*.jsonl")):
        recs = [json.loads(line) for line in f.read_text().splitlines()]
        steady = [r for r in recs if r["step"] > WARMUP]
        assert steady, f"{f.name}: no step after the warm-up"
        out[f.stem] = sum(r["samples"] for r in steady) / sum(r["compute_seconds"] for r in steady)
    return out


def test_devices_at_speeds_1_and_3_compute_about_1_to_3(tmp_path: Path) -> None:
    steps = 16
    sup = LocalSupervisor(
        pools=[PoolSpec("nvidia-a100", 1, 1.0), PoolSpec("amd-mi300x", 1, 3.0)],
        command=[PYTHON, str(COMPUTE), "--dataset-size", "3200", "--log-every", "0",
                 "--rate-dir", str(tmp_path / "rates")],
        workdir=str(tmp_path / "job"),
        global_batch_size=320,
        steps=steps,
        rebalance_policy="Equal",  # the same local batch on both: only the speed differs
        output="files",
        extra_env={envvars.ENV_MEMBERSHIP_POLL_SECONDS: "0.05"},
    )  # fmt: skip
    try:
        sup.start()
        assert sup.cgroups is not None
        worker_groups = [w.groups for w in sup.workers if w.groups is not None]
        groups = [d for g in worker_groups for c in (g.host, *g.devices) for d in c.dirs.values()]
        owner = list(sup.cgroups.owner.dirs.values())
        # cpu and memory: a host and a device group per worker
        assert len(groups) == 8 and all(d.is_dir() for d in groups)
        assert sorted(c for g in worker_groups for c in g.device_cores) == [0.15, 0.45]
        placed = {}

        def trained_a_step_with_threads_placed() -> bool:
            for g in worker_groups:
                placed[g.host.name] = (threads(g.host), threads(g.devices[0]))
            prog = sup.progress()
            return bool(prog) and prog[-1]["step"] >= 4

        assert sup.supervise_until(trained_a_step_with_threads_placed, 240) is None, sup.events
        rc = sup.supervise_until(lambda: False, 240)
    finally:
        sup.shutdown()
    assert rc == 0, sup.events
    progress = sup.progress()
    assert progress[-1]["step"] == steps and {tuple(r["split"]) for r in progress} == {(160, 160)}
    rates = samples_per_second(tmp_path / "rates")
    ratio = rates["amd-mi300x-0"] / rates["nvidia-a100-0"]
    # quotas 0.15 : 0.45 of a core.  Measured 3.2-4.1 on the 2-core dev machine while other sessions loaded
    # it, 4.55 on a machine twice as slow: the slow device loses more (each throttled 10 ms period starts
    # with cold caches), so "about 3": clearly apart, neither equal nor an order of magnitude off.
    assert 2.2 <= ratio <= 6.0, rates
    for name, (host, device) in placed.items():
        # the training process computes in its device's group; torch's communication threads run on the host
        assert "pt_gloo_runloop" in host and "pt_gloo_runloop" not in device, (name, host, device)
        assert device.count("python") >= 1, (name, host, device)
    assert not any(d.exists() for d in [*groups, *owner])  # every group removed at shutdown


def threads(group: Cgroup) -> list[str]:
    """The names of the threads in ``group``'s CPU controller (not its children's)."""
    out = []
    for tid in (group.dirs["cpu"] / "tasks").read_text().split():
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{tid}/comm").read_text().strip())
    return out


def test_no_emulate_runs_without_cgroups(tmp_path: Path) -> None:
    sup = LocalSupervisor(
        pools=[PoolSpec("nvidia-a100", 1, 1.0)],
        command=[PYTHON, str(COMPUTE), "--dataset-size", "320", "--log-every", "0", "--depth", "1"],
        workdir=str(tmp_path / "job"),
        global_batch_size=32,
        steps=2,
        emulate=False,
        output="files",
    )
    try:
        rc = sup.run(timeout=120)
    finally:
        sup.shutdown()
    assert rc == 0, sup.events
    assert sup.workers[0].groups is None and sup.cores_per_speed is None
    assert not any("emulated devices" in e for _t, e in sup.events)
