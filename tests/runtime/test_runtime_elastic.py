"""End to end on CPU/gloo: uneven split, resize 3 -> 2 -> 4, kills and preemption.

Workers are real processes (launcher + examples/train.py) driven by the local
supervisor; the test plays the operator by publishing membership epochs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from rt_helpers import COMPUTE, EXAMPLE, PYTHON, STALL_TRAIN
from stall_train import STALL_ENV

import heterotrain_contract as hc
from heterotrain_runtime import envvars
from heterotrain_runtime.batching import DataCursor, SampleOrder
from heterotrain_runtime.checkpoint import (
    CheckpointInfo,
    CheckpointManager,
    list_checkpoints,
    newest_complete,
    step_dirname,
)
from heterotrain_runtime.local import LocalSupervisor, PoolSpec
from heterotrain_runtime.samplelog import check_exactly_once, read_records

GLOBAL_BATCH = 24
DATASET = 240  # 10 steps per data-epoch


def _example() -> ModuleType:
    """The example's model and data (examples/train.py runs heterotrain_runtime.examples.train)."""
    return importlib.import_module("heterotrain_runtime.examples.train")


def reference_params(steps: int, lr: float = 0.05) -> list[torch.Tensor]:
    """One process, the same global batches: the parameters after ``steps`` updates."""
    ex = _example()
    data = ex.SyntheticRegression(DATASET)
    model = ex.build_model(seed=0)
    opt = ex.build_optimizer(model, lr)
    order = SampleOrder(DATASET, seed=0)
    cursor = DataCursor()
    for _ in range(steps):
        epoch, start, stop = cursor.step_span(DATASET, GLOBAL_BATCH)
        opt.zero_grad()
        ex.loss_fn(model, data.__getitems__(order.slice(epoch, start, stop))).backward()
        opt.step()
        cursor.advance(DATASET, GLOBAL_BATCH)
    return [p.detach().clone() for p in model.parameters()]


def checkpoint_params(root: str, step: int) -> list[torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    ex = _example()
    model = ex.build_model(seed=99)  # different weights: everything must come from the checkpoint
    opt = ex.build_optimizer(model, 0.05)
    msd, osd = get_state_dict(model, opt)
    state: dict[str, Any] = {"model": msd, "optim": osd}
    marker = CheckpointManager(root).load(
        state, CheckpointInfo(step, os.path.join(root, step_dirname(step)), True)
    )
    assert marker is not None and marker["step"] == step
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return [p.detach().clone() for p in model.parameters()]


def assert_params_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    worst = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
    assert worst < 1e-6, f"max parameter difference {worst}"  # measured ~5e-8 (fp32 summation order)


def make_supervisor(tmp: Path, pools: list[PoolSpec], steps: int, **kw: Any) -> LocalSupervisor:
    extra = {
        hc.ENV_CHECKPOINT_KEEP: "1000",
        hc.ENV_CHECKPOINT_ASYNC: "1",
        envvars.ENV_MEMBERSHIP_POLL_SECONDS: "0.05",
        **kw.pop("extra_env", {}),
    }
    ckpt_every = kw.pop("checkpoint_every", 2)
    script = kw.pop("script", EXAMPLE)
    # Emulated devices (cgroup CPU quotas) pace the steps; these tests are about exactness, not speed, so
    # the quotas are larger than the default (a worker's start-up, mostly `import torch`, is CPU-bound).
    kw.setdefault("cpu_per_speed", 0.5)
    return LocalSupervisor(
        pools=pools,
        command=[
            PYTHON,
            str(script),
            "--dataset-size",
            str(DATASET),
            "--log-every",
            "0",
            "--checkpoint-interval",
            str(ckpt_every),
        ],
        workdir=str(tmp / "job"),
        global_batch_size=GLOBAL_BATCH,
        steps=steps,
        checkpoint_dir=str(tmp / "ckpt"),
        sample_log_dir=str(tmp / "samples"),
        output="files",
        extra_env=extra,
        **kw,
    )


def drive(sup: LocalSupervisor, cond: Any, timeout: float, what: str) -> int | None:
    """Supervise until ``cond()`` holds (None) or the job ends (its exit code); on timeout, show the logs."""
    try:
        return sup.supervise_until(cond, timeout)
    except TimeoutError:
        pass
    logs = "\n".join(
        f"--- {name}\n" + (Path(sup.workdir, name).read_text()[-3000:])
        for name in sorted(os.listdir(sup.workdir))
        if name.endswith(".log")
    )
    raise TimeoutError(f"timed out waiting for {what}; events {sup.events}\n{logs}")


def last(sup: LocalSupervisor) -> dict[str, Any]:
    p = sup.progress()
    return p[-1] if p else {"step": 0, "world": 0, "epoch": 0}


def test_uneven_split_and_resize_3_2_4_match_a_single_process(tmp_path: Path) -> None:
    steps = 36
    pools = [
        PoolSpec("nvidia-a100", 2, 1.0),
        PoolSpec("huawei-ascend-910b", 1, 2.0),
        PoolSpec("amd-mi300x", 1, 3.0),
    ]
    sup = make_supervisor(tmp_path, pools, steps, rebalance_min_interval=0.5)
    try:
        sup.start(pods=["nvidia-a100-0", "huawei-ascend-910b-0", "amd-mi300x-0"])  # weights 1:2:3
        drive(sup, lambda: last(sup)["step"] >= 6, 120, "phase A (3 ranks)")
        sup.publish(["nvidia-a100-0", "amd-mi300x-0"])  # scale down: the Ascend worker idles
        mark = last(sup)["step"]
        drive(sup, lambda: last(sup)["world"] == 2 and last(sup)["step"] >= mark + 4, 60, "phase B (2 ranks)")
        # scale up: the idle worker comes back with stale state, a fresh worker joins the A100 pool
        sup.publish(["nvidia-a100-0", "huawei-ascend-910b-0", "amd-mi300x-0", "nvidia-a100-1"])
        rc = drive(sup, lambda: False, 120, "the end of training")
    finally:
        sup.shutdown()
    assert rc == 0
    progress = sup.progress()
    assert [r["step"] for r in progress] == list(range(1, steps + 1))  # no step lost or repeated
    worlds = [r["world"] for r in progress]
    assert worlds[0] == 3 and 2 in worlds and worlds[-1] == 4
    assert progress[0]["split"] == [4, 8, 12]  # uneven: proportional to the weights 1:2:3
    assert any(r["world"] == 4 and len(r["types"]) == 4 for r in progress)

    root = str(tmp_path / "ckpt")
    # a checkpoint written while the world was the uneven 3-rank one: its last step, which the world
    # checkpointed together as it read the epoch without the Ascend worker (told nothing else: no SIGTERM)
    phase_a = [r["step"] for r in progress if r["world"] == 3]
    ck_a = max(c.step for c in list_checkpoints(root) if c.complete and c.step in phase_a)
    assert ck_a == max(phase_a), (ck_a, phase_a)
    assert_params_close(checkpoint_params(root, ck_a), reference_params(ck_a))
    # the final state after 3 -> 2 -> 4
    assert_params_close(checkpoint_params(root, steps), reference_params(steps))
    report = check_exactly_once(
        read_records(str(tmp_path / "samples")), DATASET, steps, complete_epochs=[0, 1, 2]
    )
    assert report.ok, report.problems


def test_a_process_per_device_restarted_in_place_matches_a_single_process(tmp_path: Path) -> None:
    """Two A100 workers with two processes each and an Ascend worker with one: five ranks, numbered pod by
    pod, split per device; every share is above the micro-batch cap of 3 (accumulated in micro-batches);
    one process dies, its launcher restarts it in place (no new epoch), the world re-forms around it, and
    the parameters equal one process's over the same global batches."""
    steps = 20
    pools = [PoolSpec("nvidia-a100", 2, 1.0, processes=2), PoolSpec("huawei-ascend-910b", 1, 2.0)]
    sup = make_supervisor(
        tmp_path, pools, steps, max_restarts=1, checkpoint_every=4,
        extra_env={envvars.ENV_MAX_MICRO_BATCH: "3"},
    )  # fmt: skip
    try:
        sup.start()
        assert sup.membership is not None
        assert [p.name for p in sup.membership.processes] == [
            "nvidia-a100-0:0", "nvidia-a100-0:1", "nvidia-a100-1:0", "nvidia-a100-1:1", "huawei-ascend-910b-0"
        ]  # fmt: skip
        drive(sup, lambda: last(sup)["step"] >= 6, 120, "step 6")
        pid = sup.user_pid("nvidia-a100-1", 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        rc = drive(sup, lambda: False, 180, "the end of training")
    finally:
        sup.shutdown()
    assert rc == 0, sup.events
    assert all(w.generation == 1 for w in sup.workers)  # no launcher ("pod") was started again
    progress = sup.progress()
    assert [r["step"] for r in progress] == list(range(1, steps + 1))
    assert {r["world"] for r in progress} == {5} and {r["epoch"] for r in progress} == {1}  # no new epoch
    assert progress[0]["split"] == [4, 4, 4, 4, 8]  # per device: an A100 weighs 1, the Ascend 2
    restarted = sup.user_pid("nvidia-a100-1", 1)
    assert restarted is not None and restarted != pid
    assert_params_close(checkpoint_params(str(tmp_path / "ckpt"), steps), reference_params(steps))
    report = check_exactly_once(read_records(str(tmp_path / "samples")), DATASET, steps, complete_epochs=[0])
    assert report.ok, report.problems
    names = {r["pod"] for r in read_records(str(tmp_path / "samples"))}
    assert "nvidia-a100-1:1" in names and len(names) == 5


def test_exactly_once_under_kills_and_preemption(tmp_path: Path) -> None:
    """Workers die at random (seeded) steps; every sample of an epoch is consumed exactly once."""
    steps = 40
    rng = random.Random(5)
    pools = [PoolSpec("nvidia-a100", 2, 1.0), PoolSpec("huawei-ascend-910b", 1, 0.8)]
    sup = make_supervisor(
        tmp_path,
        pools,
        steps,
        replace=True,
        max_replacements=6,
        max_restarts=1,
        heartbeat_timeout=10.0,
        checkpoint_every=3,
    )
    faults = [
        (
            "kill-worker",
            rng.randint(3, 8),
        ),  # the whole pod: a new epoch without it, then with its replacement
        ("kill-process", rng.randint(12, 16)),  # the user process only: its launcher restarts it in the epoch
        ("sigterm", rng.randint(20, 24)),  # preemption: checkpoint, leave, come back
        ("kill-all", rng.randint(28, 32)),  # everybody: restore from the latest checkpoint
    ]
    done: list[str] = []
    try:
        sup.start()
        for kind, at in faults:
            drive(sup, lambda at=at: last(sup)["step"] >= at, 120, f"step {at} before {kind}")
            members = [m.pod for m in sup.membership.world] if sup.membership else []
            victim = rng.choice(members)
            if kind == "kill-worker":
                sup.kill(victim)
            elif kind == "kill-process":
                pid = sup.user_pid(victim)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
            elif kind == "sigterm":
                sup.kill(victim, signal.SIGTERM)
            else:
                for p in members:
                    sup.kill(p)
            done.append(f"{kind}:{victim}@{last(sup)['step']}")
            mark = last(sup)["step"]
            drive(sup, lambda mark=mark: last(sup)["step"] >= mark + 2, 120, f"progress after {kind}")
        rc = drive(sup, lambda: False, 180, "the end of training")
    finally:
        sup.shutdown()
    assert rc == 0, (done, sup.events)
    progress = sup.progress()
    assert progress[-1]["step"] == steps
    epochs = {r["epoch"] for r in progress}
    assert len(epochs) >= 4, epochs  # the membership changed several times
    records = read_records(str(tmp_path / "samples"))
    report = check_exactly_once(records, DATASET, steps, complete_epochs=[0, 1, 2, 3])
    assert report.ok, (report.problems, done)
    assert report.steps == steps
    # the kill of everybody forced a restore from a checkpoint: some step ran twice, only one counts
    attempts = {(r["formation"], r["step"]) for r in records if r["kind"] == "attempt"}
    assert len(attempts) > steps
    json.dumps(done)


def test_a_lost_pool_member_frees_the_other_pools_leader_at_once(tmp_path: Path) -> None:
    """[A100, A100, Ascend]: the second A100's process dies; the Ascend rank only talks to the A100 leader.

    The A100 leader sees the failure in its pool's reduce and re-forms; the
    Ascend rank, blocked in the leaders' all-reduce, must learn it at once
    (the leader's groups are freed, their sockets close), not after the
    heartbeat.  A CI run once waited the 30-minute default of a new group.
    """
    steps, heartbeat = 24, 120.0
    pools = [PoolSpec("nvidia-a100", 2, 1.0), PoolSpec("huawei-ascend-910b", 1, 0.8)]
    sup = make_supervisor(
        tmp_path, pools, steps, replace=True, max_restarts=1,
        heartbeat_timeout=heartbeat, checkpoint_every=3,
    )  # fmt: skip
    try:
        sup.start()
        drive(sup, lambda: last(sup)["step"] >= 5, 120, "step 5")
        assert [m.pod for m in sup.membership.world] == [
            "nvidia-a100-0",
            "nvidia-a100-1",
            "huawei-ascend-910b-0",
        ]
        pid = sup.user_pid("nvidia-a100-1")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        mark = last(sup)["step"]
        # far below the heartbeat: nobody may wait for a timeout
        drive(sup, lambda: last(sup)["step"] >= mark + 2, heartbeat / 2, "progress after the non-leader died")
        rc = drive(sup, lambda: False, 120, "the end of training")
    finally:
        sup.shutdown()
    assert rc == 0
    assert [r["step"] for r in sup.progress()][-1] == steps
    report = check_exactly_once(
        read_records(str(tmp_path / "samples")), DATASET, steps, complete_epochs=[0, 1]
    )
    assert report.ok, report.problems


def test_a_worker_killed_in_a_checkpoints_collectives_leaves_no_peer_waiting(tmp_path: Path) -> None:
    """[A100, A100, Ascend], asynchronous checkpoints every 3 steps: the second A100's process stops in the
    save of step 6 (the test's stand-in for a slow writer), so every rank waits for that save in the save of
    step 9; it is killed there.  Its peers' saves of step 6 fail at once (they talk to it); then the Ascend
    rank, in the next save's collectives, waits on the first A100 rank, whose failed save (its frames, kept
    in the failed future through a reference cycle) held that group alive, its sockets open: the Ascend
    rank waited up to the checkpoint timeout (10 minutes).  The survivors must re-form within seconds, as
    after a failed step, and the torn save of step 6 must never count as a checkpoint."""
    steps, heartbeat, ckpt_timeout = 24, 120.0, 600.0
    marker = tmp_path / "stalled"
    stall = {"pod": "nvidia-a100-1", "phase": "before-dcp", "nth": 2, "marker": str(marker), "seconds": 3600}
    pools = [PoolSpec("nvidia-a100", 2, 1.0), PoolSpec("huawei-ascend-910b", 1, 0.8)]
    sup = make_supervisor(
        tmp_path, pools, steps, replace=True, max_restarts=1, heartbeat_timeout=heartbeat, checkpoint_every=3,
        extra_env={STALL_ENV: json.dumps(stall), envvars.ENV_CHECKPOINT_TIMEOUT: str(ckpt_timeout)},
        script=STALL_TRAIN,
    )  # fmt: skip
    root = str(tmp_path / "ckpt")
    try:
        sup.start()
        drive(sup, marker.exists, 120, "the second A100 stopped in the save of step 6")
        # no rank gets past step 9: each waits there, in the save of step 9, for the stalled save of step 6
        drive(sup, lambda: last(sup)["step"] >= 9, 120, "step 9, the next checkpoint")
        pid = sup.user_pid("nvidia-a100-1")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        mark = last(sup)["step"]
        assert mark == 9
        drive(sup, lambda: last(sup)["step"] >= mark + 2, heartbeat / 2, "progress after the kill")
        good = newest_complete(root)  # the last good checkpoint, as a crash now would find it
        assert good is not None and good.step >= 3
        assert_params_close(checkpoint_params(root, good.step), reference_params(good.step))
        rc = drive(sup, lambda: False, 120, "the end of training")
    finally:
        sup.shutdown()
    assert rc == 0, sup.events
    assert [r["step"] for r in sup.progress()][-1] == steps
    complete = [c.step for c in list_checkpoints(root) if c.complete]
    assert 6 not in complete and complete[-1] == steps, complete  # the torn save was never accepted
    for step in complete:
        assert_params_close(checkpoint_params(root, step), reference_params(step))
    report = check_exactly_once(
        read_records(str(tmp_path / "samples")), DATASET, steps, complete_epochs=[0, 1]
    )
    assert report.ok, report.problems


def test_cli_local_run_learns_the_speeds(tmp_path: Path) -> None:
    """``heterotrain run --local``: equal initial weights, devices at speeds 1:3 (cgroup CPU quotas) doing
    real compute; the measured throughputs rebalance the split towards the fast device."""
    import subprocess

    work = tmp_path / "w"
    r = subprocess.run(
        [PYTHON, "-m", "heterotrain_runtime", "run", "--local", "--pools", "nvidia-a100:1@1,amd-mi300x:1@3",
         str(COMPUTE), "--steps", "24", "--global-batch-size", "320", "--log-every", "8",
         "--initial-weights", "equal", "--rebalance-min-interval", "0.3",
         "--workdir", str(work), "--timeout", "240", "--",
         "--dataset-size", "3200"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "step     8" in r.stdout and "amd-mi300x" in r.stdout
    assert "started amd-mi300x-0 (generation 1, 0.45 cores)" in r.stdout  # 3 x 0.15 of a core
    assert "done: 24 steps" in r.stdout
    progress = [json.loads(line) for line in (work / "progress.jsonl").read_text().splitlines()]
    assert progress[0]["split"] == [160, 160]
    last = progress[-1]
    slow, fast = last["split"]
    # Learned towards the fast device (declared equal, speeds 1:3): how far exactly depends on the machine
    # (a larger batch computes more efficiently per sample, and a throttled device also pays its share of
    # each step's fixed work at its quota: measured 4.1-5.0 on a quiet machine, 7.4 on a slow one).
    assert fast / slow >= 2.0, last["split"]
    # ... from what the ranks measured: the split in force follows their rates (one tracker for all, a new
    # split only when it saves 3 %; the rates drift after the last rebalance, since a rank's rate per sample
    # depends on its share of the batch: 0.69-1.46 of the split's ratio seen on slow machines).
    r_slow, r_fast = last["rates"]
    assert 0.5 <= (fast / slow) / (r_fast / r_slow) <= 2.0, last
    # How close the learned split comes to the ideal one is a speed figure: ``make bench-runtime`` measures
    # it (steps_to_balance, final_off_balance) on a quiet machine.


@pytest.fixture(autouse=True)
def _fewer_threads() -> None:
    torch.set_num_threads(1)
