"""The optimizer side of the SDK's step, in forked gloo worlds (torchrun-style static worlds).

AdamW, clipping by the global norm and a warm-up + cosine schedule under an uneven split give the
parameters of one process over the same global batches; fp16 overflow is decided by every rank
alike; a checkpoint written by 3 ranks restores on 2 with the same learning rate and moments.
The seed is ``HETEROTRAIN_TEST_SEED`` (default 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from rt_helpers import run_world

from heterotrain_e2e.reference import adam_moments, gpt_args, max_difference, reference, test_seed
from heterotrain_runtime import envvars
from heterotrain_runtime.examples import gpt
from heterotrain_runtime.examples.gpt_model import lm_loss
from heterotrain_runtime.schedule import warmup_cosine_factor
from heterotrain_runtime.sdk import ElasticTrainer

WEIGHTS = (1.0, 2.0, 3.0)
GLOBAL = 24  # split 4 : 8 : 12
#: fp32, summation order only (one global mean vs. a sum of weighted local means), through AdamW
#: for 12 steps; measured 6e-7 to 3.2e-6 over six seeds.  DDP's own mean under the same split (the
#: bias an uneven split brings without the weighting) ends 2.5e-2 away.
PARAM_TOLERANCE = 2e-5


def plain(x: Any) -> Any:
    """Tensors as numpy arrays: torch shares a tensor put on a queue through its sender, which exits."""
    if isinstance(x, torch.Tensor):
        return x.detach().numpy().copy()
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [plain(v) for v in x]
    return x


def tensors(xs: list[Any]) -> list[torch.Tensor]:
    return [torch.as_tensor(x) for x in xs]


def _trainer(rank: int, world: int, port: int, argv: list[str], **kw: Any) -> tuple[ElasticTrainer, Any]:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    os.environ[envvars.ENV_WEIGHT] = repr(WEIGHTS[rank] if world == len(WEIGHTS) else 1.0)
    args = gpt.parser().parse_args(argv)
    model, optimizer, scheduler, train, _val, _ = gpt.build(args)
    trainer = ElasticTrainer(
        model,
        optimizer,
        train,
        global_batch_size=args.global_batch_size,
        seed=args.seed,
        lr_scheduler=scheduler,
        max_grad_norm=args.max_grad_norm,
        log_every=0,
        heartbeat_timeout=60,
        env=dict(os.environ),
        **kw,
    )
    return trainer, model


def _train(rank: int, world: int, port: int, argv: list[str], steps: int) -> dict[str, Any]:
    trainer, model = _trainer(rank, world, port, argv)
    norms, splits = [], []
    while trainer.step < steps:
        r = trainer.train_step(lambda b: lm_loss(model, b))
        norms.append(r.grad_norm)
        splits.append(list(trainer.split))
    trainer.finish()
    return plain({"params": list(model.parameters()), "norms": norms, "splits": splits})


def test_adamw_clipping_and_cosine_under_an_uneven_split_match_one_process() -> None:
    seed, steps = test_seed(), 12
    argv = gpt_args(steps, GLOBAL, seed)
    out = run_world(_train, 3, argv, steps, timeout=240)
    ref = reference(argv, steps)
    assert out[0]["splits"][0] == [4, 8, 12]
    for r in out:
        assert max_difference(tensors(r["params"]), tensors(out[0]["params"])) == 0.0, "ranks agree"
        assert r["norms"] == out[0]["norms"], "every rank clips by the same global norm"
    assert out[0]["norms"] == pytest.approx(ref.grad_norms, rel=1e-4)
    assert any(n > 0.5 for n in ref.grad_norms), "clipping was exercised"
    diff = max_difference(tensors(out[0]["params"]), ref.params())
    print(f"seed {seed}: max parameter difference {diff:.2e}")
    assert diff < PARAM_TOLERANCE, f"max parameter difference {diff} (seed {seed})"


def _fp16_overflow(rank: int, world: int, port: int, argv: list[str], bad_step: int) -> dict[str, Any]:
    # rank 0's pool computes in fp16, the others in bf16: the loss scale is the world's
    trainer, model = _trainer(rank, world, port, argv, precision="fp16" if rank == 0 else "bf16")
    seen: list[dict[str, Any]] = []

    def loss(b: Any) -> torch.Tensor:
        value = lm_loss(model, b)
        return value * float("inf") if rank == 2 and trainer.step + 1 == bad_step else value

    while trainer.step < bad_step + 1:
        before = [p.detach().clone() for p in model.parameters()]
        r = trainer.train_step(loss)
        moved = max_difference([p.detach() for p in model.parameters()], before)
        seen.append({"applied": r.applied, "moved": moved, "scale": trainer.opt.scaler.scale, "lr": r.lr})
    trainer.finish()
    return plain({"steps": seen, "params": list(model.parameters())})


def test_fp16_overflow_on_one_rank_is_skipped_by_every_rank() -> None:
    bad = 3
    out = run_world(_fp16_overflow, 3, gpt_args(6, GLOBAL, test_seed()), bad, timeout=240)
    for r in out:
        steps = r["steps"]
        assert [s["applied"] for s in steps] == [True] * (bad - 1) + [False, True]
        assert steps[bad - 1]["moved"] == 0.0, "a skipped step leaves the parameters alone"
        assert steps[bad - 2]["scale"] == 2.0**16 and steps[bad - 1]["scale"] == 2.0**15
        # the schedule steps on every committed step, the skipped one included
        assert [s["lr"] for s in steps] == pytest.approx(
            [3e-3 * warmup_cosine_factor(n, 1, 6, 0.1) for n in range(bad + 1)]
        )
        assert max_difference(tensors(r["params"]), tensors(out[0]["params"])) == 0.0
        assert [s["scale"] for s in steps] == [s["scale"] for s in out[0]["steps"]]


def _segment(rank: int, world: int, port: int, argv: list[str], ckpt: str, steps: int) -> dict[str, Any]:
    trainer, model = _trainer(rank, world, port, argv, checkpoint_dir=ckpt, async_checkpoint=False)
    trainer.start()  # restores the checkpoint, if any
    restored = {
        "step": trainer.step,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "moments": adam_moments(trainer.optimizer) if trainer.step else [],
        "last_epoch": trainer.opt.scheduler.last_epoch,
    }
    while trainer.step < steps:
        trainer.train_step(lambda b: lm_loss(model, b))
    trainer.finish()  # a final checkpoint
    return plain(
        {
            "restored": restored,
            "params": list(model.parameters()),
            "moments": adam_moments(trainer.optimizer),
            "lr": trainer.optimizer.param_groups[0]["lr"],
        }
    )


def test_a_checkpoint_of_3_ranks_restores_on_2_with_the_same_lr_and_moments(tmp_path: Path) -> None:
    seed, cut, total = test_seed(), 6, 12
    argv = gpt_args(total, GLOBAL, seed)
    ckpt = str(tmp_path / "ckpt")
    run_world(_segment, 3, argv, ckpt, cut, timeout=240)
    out = run_world(_segment, 2, argv, ckpt, total, timeout=240)
    at_cut, uninterrupted = reference(argv, cut), reference(argv, total)
    for r in out:
        got = r["restored"]
        assert got["step"] == cut and got["last_epoch"] == cut
        assert got["lr"] == at_cut.optimizer.param_groups[0]["lr"]
        assert max_difference(tensors(got["moments"]), adam_moments(at_cut.optimizer)) < PARAM_TOLERANCE
        assert r["lr"] == uninterrupted.optimizer.param_groups[0]["lr"]
        assert max_difference(tensors(r["moments"]), adam_moments(uninterrupted.optimizer)) < PARAM_TOLERANCE
        assert max_difference(tensors(r["params"]), uninterrupted.params()) < PARAM_TOLERANCE


@pytest.fixture(autouse=True)
def _fewer_threads() -> None:
    torch.set_num_threads(1)


def test_the_loss_scale_and_the_schedule_are_in_the_checkpoint(tmp_path: Path) -> None:
    """One process in fp16: an overflow halves the scale; a new trainer restores scale, tracker and lr."""
    argv = gpt_args(8, 8, test_seed())

    def trainer() -> tuple[ElasticTrainer, Any]:
        model, optimizer, scheduler, train, _val, _ = gpt.build(gpt.parser().parse_args(argv))
        t = ElasticTrainer(
            model, optimizer, train, global_batch_size=8, lr_scheduler=scheduler, precision="fp16",
            checkpoint_dir=str(tmp_path), async_checkpoint=False, log_every=0, env={},
        )  # fmt: skip
        return t, model

    first, model = trainer()
    for step in range(4):
        r = first.train_step(lambda b, s=step: lm_loss(model, b) * (float("inf") if s == 1 else 1.0))
    assert r.applied and first.opt.scaler.scale == 2.0**15 and first.opt.scaler.growth_tracker == 2
    first.finish()  # a checkpoint of step 4
    second, _ = trainer()
    second.start()
    assert second.step == 4
    assert second.opt.scaler.state_dict() == first.opt.scaler.state_dict()
    assert second.opt.scheduler.last_epoch == 4
    assert second.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
