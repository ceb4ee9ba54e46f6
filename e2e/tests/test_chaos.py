"""Chaos on the real control plane: a schedule of faults hits a job training on three emulated types.

Process kills, SIGSTOP hangs, pod deletions, a node drain, a node that dies (its Lease and its processes
stop) and a node that joins, at the steps the schedule says (see :mod:`heterotrain_e2e.schedule`: a seed,
``HETEROTRAIN_CHAOS_SEED``, or a file, ``HETEROTRAIN_CHAOS_SCHEDULE``).  The job must complete, every sample
of every data-epoch must be consumed exactly once, and the final parameters must equal those of one
process trained on the same global batches.

    HETEROTRAIN_CHAOS_SEED=7 .venv/bin/python -m pytest e2e/tests/test_chaos.py -q
    HETEROTRAIN_CHAOS_SCHEDULE=my-schedule.yaml .venv/bin/python -m pytest e2e/tests/test_chaos.py -q
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from heterotrain_e2e import chaos, schedule
from heterotrain_e2e.testing import Cluster, OperatorProcess, clear_jobs
from heterotrain_runtime.batching import DataCursor, SampleOrder
from heterotrain_runtime.checkpoint import CheckpointInfo, CheckpointManager, step_dirname
from heterotrain_runtime.samplelog import check_exactly_once, read_records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]  # ~10 min alone; longer next to other load

STEPS = 1200
DATASET = 9600  # 100 global batches of 96: twelve data-epochs
BATCH = 96
TYPES = ("nvidia-h100", "nvidia-a100", "huawei-ascend-910b")
ACCELERATORS = [
    {"type": "nvidia-h100", "maxWorkers": 1},
    {"type": "nvidia-a100", "maxWorkers": 2},
    {"type": "huawei-ascend-910b", "maxWorkers": 1},
]


def reference_params(steps: int) -> list[torch.Tensor]:
    """One process, the same global batches (the job's sample order): the parameters after ``steps``."""
    from heterotrain_runtime.examples import train as ex

    data = ex.SyntheticRegression(DATASET)
    model = ex.build_model(seed=0)
    opt = ex.build_optimizer(model, 0.05)
    order, cursor = SampleOrder(DATASET, seed=0), DataCursor()
    for _ in range(steps):
        epoch, start, stop = cursor.step_span(DATASET, BATCH)
        opt.zero_grad()
        ex.loss_fn(model, data.__getitems__(order.slice(epoch, start, stop))).backward()
        opt.step()
        cursor.advance(DATASET, BATCH)
    return [p.detach().clone() for p in model.parameters()]


def checkpoint_params(root: Path, step: int) -> list[torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from heterotrain_runtime.examples import train as ex

    model = ex.build_model(seed=99)  # other weights: everything must come from the checkpoint
    opt = ex.build_optimizer(model, 0.05)
    msd, osd = get_state_dict(model, opt)
    state: dict[str, Any] = {"model": msd, "optim": osd}
    marker = CheckpointManager(str(root)).load(
        state, CheckpointInfo(step, str(root / step_dirname(step)), True)
    )
    assert marker is not None and marker["step"] == step
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return [p.detach().clone() for p in model.parameters()]


def test_a_job_under_a_chaos_schedule_completes_exactly_once_with_the_reference_parameters(
    cluster: Cluster, operator: OperatorProcess
):
    sched = schedule.from_env(STEPS, TYPES)
    print(f"chaos schedule {sched.describe()}")
    ns, name = f"chaos-{uuid.uuid4().hex[:6]}", "chaos"
    cluster.kubectl("create", "namespace", ns)
    chaos.apply(
        cluster,
        chaos.training_job(
            ns,
            name,
            steps=STEPS,
            dataset=DATASET,
            batch=BATCH,
            workers=(2, 4),
            accelerators=ACCELERATORS,
            checkpoint_steps=50,
            fault_tolerance={"maxRestarts": 100, "badNodeFailures": 4, "restartBackoffLimitSeconds": 8},
        ),
    )
    progress = chaos.job_progress(cluster, ns, name)
    injected: list[chaos.Injected] = []
    try:
        with chaos.Timeline(cluster, ns, name, interval=0.5) as tl:
            tl.wait("Running", lambda s: s.phase == "Running" and len(s.world) >= 3, timeout=300)
            injected = chaos.run_schedule(cluster, ns, tl, sched, progress)
            final = tl.wait("Succeeded", lambda s: s.phase in ("Succeeded", "Failed"), timeout=900)
        assert final.phase == "Succeeded", final.status
    finally:
        chaos.restore(cluster, injected)
    failures = final.status.get("failures") or []
    print(
        f"restarts {final.status.get('restarts')}: "
        + ", ".join(f"{f['reason']}/{f['action']}" for f in failures)
    )
    assert final.status["lastCheckpoint"]["step"] == STEPS
    # Every sample of every data-epoch consumed exactly once, across every fault.
    pvc = chaos.procnode_dir(cluster) / "pvc" / ns / f"{name}-ckpt"
    report = check_exactly_once(read_records(str(pvc / "samples")), DATASET, STEPS)
    assert report.ok, report.problems[:5]
    assert report.steps == STEPS and sorted(report.consumed) == list(range(STEPS * BATCH // DATASET))
    # The final parameters are those of one process over the same global batches.
    got, want = checkpoint_params(pvc, STEPS), reference_params(STEPS)
    worst = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
    assert worst < 1e-4, f"max parameter difference {worst}"
    print(f"max parameter difference {worst:.2e} after {STEPS} steps")
    assert os.environ.get("HETEROTRAIN_CHAOS_SCHEDULE") or len(injected) == len(schedule.DRAWN)
    # The tests after this one count on the process nodes (a test of the chart checks that none is left).
    clear_jobs(cluster, {ns})
