"""The loop's parts that need no world: the schedule, the loss scaler, the precision hint."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import heterotrain_contract as hc
from heterotrain_runtime.precision import HINTS, LossScaler, parse_precision
from heterotrain_runtime.schedule import warmup_cosine, warmup_cosine_factor
from heterotrain_runtime.trainer.settings import TrainerSettings


def test_warmup_then_cosine_down_to_the_floor() -> None:
    f = [warmup_cosine_factor(n, 4, 14, 0.1) for n in range(16)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and f[9] == pytest.approx(0.55) and f[14] == f[15] == 0.1
    assert all(a >= b for a, b in itertools.pairwise(f[4:])), "cosine never climbs"


def test_a_scheduler_state_restores_the_schedule_and_its_position() -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = warmup_cosine(opt, 3, 10, 0.2)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    other = warmup_cosine(opt2, 1, 99, 0.0)  # a different schedule: the state wins
    other.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # what the optimizer's own state restores
    for _ in range(3):
        sched.step()
        other.step()
        assert other.get_last_lr() == sched.get_last_lr()


def test_bad_schedules_are_refused() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="warm-up"):
        warmup_cosine(opt, 20, 10)
    with pytest.raises(ValueError, match="min_ratio"):
        warmup_cosine(opt, 1, 10, 1.5)


def test_loss_scale_backs_off_on_overflow_and_grows_after_clean_steps() -> None:
    s = LossScaler(enabled=True, init_scale=8.0, growth_interval=3)
    s.update(overflow=True)
    assert s.scale == 4.0
    for _ in range(3):
        s.update(overflow=False)
    assert s.scale == 8.0 and s.growth_tracker == 0
    assert set(s.state_dict()) == set(torch.amp.GradScaler("cpu").state_dict()), "GradScaler's keys"
    t = LossScaler(enabled=True)
    t.load_state_dict(torch.amp.GradScaler("cpu", init_scale=32.0).state_dict())
    assert t.scale == 32.0


def test_unscale_divides_and_finds_a_non_finite_gradient() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    s = LossScaler(enabled=True, init_scale=4.0)
    p.grad = torch.tensor([4.0, 8.0, -4.0])
    assert not s.local_overflow([p]) and not s.unscale([p])
    assert p.grad.tolist() == [1.0, 2.0, -1.0]
    p.grad = torch.tensor([1.0, math.inf, 0.0])
    assert s.local_overflow([p]) and s.unscale([p])
    off = LossScaler(enabled=False)
    assert not off.local_overflow([p]) and not off.unscale([p])


def test_precision_hints() -> None:
    assert [parse_precision(h).compute for h in HINTS] == ["fp32", "bf16", "fp16", "bf16", "bf16"]
    assert parse_precision(None).hint == "fp32" and parse_precision("BFloat16").hint == "bf16"
    assert parse_precision("fp16").scaled and parse_precision("fp16").autocast_dtype == torch.float16
    with pytest.raises(ValueError, match="HETEROTRAIN_PRECISION: unknown precision 'fp4'"):
        parse_precision("fp4")


def test_the_trainer_takes_the_pools_precision_hint_unless_told() -> None:
    env = {hc.ENV_GLOBAL_BATCH_SIZE: "8", hc.ENV_PRECISION: "bf16"}
    assert TrainerSettings.from_env(env).precision == "bf16"
    assert TrainerSettings.from_env(env, precision="fp16").precision == "fp16"
    assert TrainerSettings.from_env({hc.ENV_GLOBAL_BATCH_SIZE: "8"}).precision == "fp32"
    with pytest.raises(ValueError, match="precision: unknown"):
        TrainerSettings.from_env(env, precision="fp64")
