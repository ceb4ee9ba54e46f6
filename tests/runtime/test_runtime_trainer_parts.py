"""The trainer's parts that need no world: its settings, its control vector, its balancer."""

from __future__ import annotations

import pytest
import torch

import heterotrain_contract as hc
from heterotrain_runtime import envvars
from heterotrain_runtime.batching import ThroughputTracker
from heterotrain_runtime.trainer.balance import Balancer
from heterotrain_runtime.trainer.control import STEP_CHECK_MOD, ControlVector, RankReport
from heterotrain_runtime.trainer.settings import TrainerSettings

ENV = {
    hc.ENV_GLOBAL_BATCH_SIZE: "96",
    hc.ENV_HEARTBEAT_TIMEOUT: "15",
    hc.ENV_REBALANCE_POLICY: "Equal",
    hc.ENV_CHECKPOINT_DIR: "/ckpt",
    hc.ENV_CHECKPOINT_KEEP: "5",
    hc.ENV_CHECKPOINT_ASYNC: "false",
    hc.ENV_CHECKPOINT_INTERVAL_STEPS: "50",
    hc.ENV_POD_NAME: "j-worker-3",
    hc.ENV_ACCELERATOR: "amd-mi300x",
    hc.ENV_MEMBERSHIP_SOURCE: "kubernetes",
    envvars.ENV_DATA_SEED: "7",
    envvars.ENV_CHECKPOINT_TIMEOUT: "5",
}


def test_settings_come_from_the_environment() -> None:
    s = TrainerSettings.from_env(ENV)
    assert (s.global_batch_size, s.seed, s.heartbeat, s.policy) == (96, 7, 15.0, "equal")
    assert (s.checkpoint_dir, s.checkpoint_keep, s.checkpoint_async, s.checkpoint_interval_steps) == (
        "/ckpt",
        5,
        False,
        50,
    )
    assert s.checkpoint_timeout == 15.0, "never below the heartbeat"
    assert (s.pod, s.mode, s.backend) == ("j-worker-3", "elastic", "rccl")  # the API's name for AMD
    # no setting tells the trainer a device's speed: emulated devices run under CPU quotas
    assert not any("emulat" in f for f in vars(s))


def test_arguments_win_over_the_environment_and_unset_arguments_do_not() -> None:
    s = TrainerSettings.from_env(
        ENV, global_batch_size=32, seed=0, heartbeat_timeout=None, async_checkpoint=True, checkpoint_keep=0
    )
    assert s.global_batch_size == 32
    assert s.seed == 0, "an explicit seed 0 is a seed"
    assert s.heartbeat == 15.0 and s.checkpoint_async is True
    assert s.checkpoint_keep == 5, "0 keeps nothing: it means unset"


def test_defaults_and_modes() -> None:
    single = TrainerSettings.from_env({}, global_batch_size=8)
    assert (single.mode, single.pod, single.backend, single.heartbeat) == (
        "single",
        "rank0",
        "gloo",
        envvars.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    )
    static = TrainerSettings.from_env(
        {"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"}, global_batch_size=8
    )
    assert (static.mode, static.pod, static.static_rank, static.master_port) == ("static", "rank1", 1, 29500)
    per_device = TrainerSettings.from_env(
        {hc.ENV_POD_NAME: "p", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", hc.ENV_PRECISION: "fp8"},
        global_batch_size=8,
    )
    assert (per_device.name, per_device.local_rank, per_device.precision) == ("p:1", 1, "fp8")


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=hc.ENV_GLOBAL_BATCH_SIZE):
        TrainerSettings.from_env({})
    with pytest.raises(TypeError, match="batch_size"):
        TrainerSettings.from_env(ENV, batch_size=3)


def _report(rank: int, **over: object) -> RankReport:
    base: dict[str, object] = dict(
        new_epoch=False,
        stop=False,
        checkpoint_due=False,
        rebalance_due=False,
        loss=0.5,
        rate=10.0 * (rank + 1),
        step=41,
    )
    base.update(over)
    return RankReport(**base)  # type: ignore[arg-type]


def _sum(*vectors: ControlVector) -> ControlVector:
    return vectors[0].summed(torch.stack([v.tensor for v in vectors]).sum(dim=0))


def test_control_vector_sums_flags_loss_and_per_rank_slots() -> None:
    world = [
        ControlVector.of_rank(3, r, _report(r, new_epoch=r == 2, checkpoint_due=r == 0)) for r in range(3)
    ]
    total = _sum(*world)
    assert total.new_epoch and total.checkpoint_due and not total.stop and not total.rebalance_due
    assert not total.members_leave and not total.overflow
    assert _sum(
        *[ControlVector.of_rank(3, r, _report(r, members_leave=r == 1)) for r in range(3)]
    ).members_leave
    assert total.loss == pytest.approx(1.5)
    assert total.rates == [10.0, 20.0, 30.0]
    assert total.steps == [41, 41, 41] and total.ranks_present == 3 and total.agrees_on(41)
    assert not total.agrees_on(42)


def test_control_vector_notices_a_missing_or_lagging_rank() -> None:
    assert not _sum(*(ControlVector.of_rank(3, r, _report(r)) for r in range(2))).agrees_on(41)
    lagging = [ControlVector.of_rank(2, 0, _report(0)), ControlVector.of_rank(2, 1, _report(1, step=40))]
    assert not _sum(*lagging).agrees_on(41)
    big = ControlVector.of_rank(1, 0, _report(0, step=STEP_CHECK_MOD + 5))
    assert big.steps == [5] and big.agrees_on(STEP_CHECK_MOD + 5)
    with pytest.raises(ValueError):
        ControlVector(2, torch.zeros(5, dtype=torch.float64))


def test_nothing_in_the_step_waits_to_emulate_a_device() -> None:
    import importlib.util
    import inspect

    from heterotrain_runtime import sdk
    from heterotrain_runtime.trainer import accumulate

    assert importlib.util.find_spec("heterotrain_runtime.trainer.emulation") is None
    for part in (sdk.ElasticTrainer._step_once, sdk.ElasticTrainer._compute, accumulate.forward_backward):
        assert "sleep" not in inspect.getsource(part), part


def test_a_step_committed_by_a_peer_only_is_recorded_once_by_rank_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A step's collective can end on some ranks and fail on the others as the world breaks; the new world
    takes the newest state, and rank 0 writes that step's record unless the progress file has it."""
    import json

    from heterotrain_runtime.metrics import RuntimeMetrics
    from heterotrain_runtime.trainer.reporting import Reporter

    path = tmp_path / "progress.jsonl"
    path.write_text("".join(json.dumps({"step": s, "world": 3}) + "\n" for s in range(1, 51)))
    rep = Reporter(TrainerSettings(global_batch_size=8, progress_file=str(path)), RuntimeMetrics(), None)

    def steps() -> list[int]:
        return [json.loads(x)["step"] for x in path.read_text().splitlines()]

    rep.formed({"step": 51, "world": 3}, rank=1)  # only rank 0 writes
    assert steps() == list(range(1, 51))
    rep.formed({"step": 50, "world": 3}, rank=0)  # the old rank 0 wrote it already
    assert steps() == list(range(1, 51))
    rep.formed({"step": 51, "world": 3}, rank=0)  # a survivor committed it, rank 0 did not
    rep.formed({"step": 51, "world": 3}, rank=0)  # a second formation at the same step
    assert steps() == list(range(1, 52))
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 51, "world": 3, "late": True}
    with open(path, "a") as f:
        f.write('{"step": 52, "wor')  # a rank 0 killed while it wrote the line
    rep.formed(None, rank=0)  # the next world, from a checkpoint
    rep.formed(None, rank=0)
    assert path.read_text().endswith('"wor\n')
    lines = path.read_text().splitlines()
    assert lines[-1] == '{"step": 52, "wor' and json.loads(lines[-2])["step"] == 51


def test_the_balancer_skips_each_process_first_step_and_keeps_rank_0s_clock() -> None:
    now = [100.0]
    b = Balancer(ThroughputTracker(min_interval=5.0), clock=lambda: now[0])
    b.measured("a", 100, 10.0)  # warm-up
    assert b.tracker.ema == {}
    b.measured("a", 100, 1.0)
    b.measured("b", 50, 1.0)  # b's warm-up: a's does not count for it
    assert b.tracker.ema == {"a": 100.0}
    assert not b.due()
    now[0] = 105.0
    assert b.due()
    assert b.proposal(300, [150, 150], [100.0, 0.0]) is None  # b has not measured yet
    assert not b.due()  # the clock restarted all the same
    now[0] = 110.0
    assert b.proposal(300, [150, 150], [100.0, 200.0]) == [100, 200]
    b.restart()
    assert not b.due()
