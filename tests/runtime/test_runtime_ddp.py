"""Plain DDP scripts with the two lines (``heterotrain_runtime.ddp``), under torchrun.

``examples/gpt_ddp.py`` is a plain DDP script (AdamW, clipping, warm-up + cosine, its own
checkpoint) plus the sampler and the communication hook.  Under torchrun with an uneven split,
and across a 3 -> 2 resize through its checkpoint, its parameters equal those of one process over
the same global batches.  The seed is ``HETEROTRAIN_TEST_SEED`` (default 0).  The resize inside a
HeteroTrainJob is ``e2e/tests/test_training.py``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from rt_helpers import PYTHON, REPO, free_port, run_world

from heterotrain_e2e.reference import gpt_args, max_difference, reference, test_seed
from heterotrain_runtime.batching import DataCursor, SampleOrder
from heterotrain_runtime.ddp import GlobalBatchSampler

SCRIPT = REPO / "examples" / "gpt_ddp.py"
GLOBAL = 24
#: fp32, summation order only; the SDK's equality tests measure 6e-7..3.2e-6 for the same run length.
PARAM_TOLERANCE = 2e-5


def torchrun(nproc: int, argv: list[str], ckpt: Path, *, env: dict[str, str] | None = None) -> str:
    cmd = [
        PYTHON, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--master-port", str(free_port()), str(SCRIPT), *argv, "--checkpoint-dir", str(ckpt),
    ]  # fmt: skip
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r.stdout


def final_params(ckpt: Path, step: int) -> list[torch.Tensor]:
    state = torch.load(ckpt / "gpt-ddp.pt", weights_only=False)
    assert state["step"] == step
    return [t.clone() for t in state["model"].values()]


def test_torchrun_with_an_uneven_split_matches_one_process(tmp_path: Path) -> None:
    seed, steps = test_seed(), 12
    argv = gpt_args(steps, GLOBAL, seed)
    out = torchrun(3, [*argv, "--weights", "1,2,3", "--log-every", "0", "--eval-every", "0"], tmp_path)
    assert "split [4, 8, 12]" in out
    diff = max_difference(final_params(tmp_path, steps), reference(argv, steps).params())
    assert diff < PARAM_TOLERANCE, f"max parameter difference {diff} (seed {seed})"


def test_torchrun_resized_from_3_to_2_resumes_with_the_same_updates(tmp_path: Path) -> None:
    seed, steps = test_seed(), 12
    argv = [*gpt_args(steps, GLOBAL, seed), "--log-every", "0", "--eval-every", "0"]
    torchrun(3, [*argv, "--weights", "1,2,3", "--stop-at", "5"], tmp_path)
    assert torch.load(tmp_path / "gpt-ddp.pt", weights_only=False)["step"] == 5
    out = torchrun(2, [*argv, "--weights", "1,3"], tmp_path)
    assert "start at step 5, split [6, 18]" in out
    diff = max_difference(final_params(tmp_path, steps), reference(argv, steps).params())
    assert diff < PARAM_TOLERANCE, f"max parameter difference {diff} (seed {seed})"


def test_bf16_from_the_pools_hint_ends_within_2_percent_of_one_process(tmp_path: Path) -> None:
    seed, steps = test_seed(), 24
    argv = [*gpt_args(steps, GLOBAL, seed), "--log-every", "0", "--eval-every", str(steps)]
    out = torchrun(3, [*argv, "--weights", "1,2,3"], tmp_path, env={"HETEROTRAIN_PRECISION": "bf16"})
    assert "precision bf16" in out
    got = float(out.split(f"step {steps} val_loss ")[1].split()[0])  # rank 0 evaluates in fp32
    want = reference(argv, steps, precision="bf16").val_loss(256)
    print(f"bf16 validation loss {got:.4f}, one process {want:.4f}")
    assert abs(got - want) / want < 0.02, (got, want)


def _shares(rank: int, world: int, port: int, n: int, weights: list[float]) -> dict[str, Any]:
    from rt_helpers import init_gloo

    init_gloo(rank, world, port)
    sampler = GlobalBatchSampler(n, GLOBAL, seed=3, weights=weights)
    first = [list(b) for b in sampler]  # one data-epoch
    resumed = GlobalBatchSampler(n, GLOBAL, seed=3, weights=weights, start_step=len(first) - 1)
    return {"epoch0": first, "resumed": [list(b) for b in resumed], "split": sampler.split}


def test_the_sampler_cuts_each_global_batch_of_the_data_cursor_among_the_ranks() -> None:
    n = 100  # 5 steps per data-epoch, the last one short (4 samples)
    out = run_world(_shares, 3, n, [1.0, 2.0, 3.0], timeout=60)
    assert out[0]["split"] == [4, 8, 12]
    order, cursor = SampleOrder(n, 3), DataCursor()
    for step in range(5):
        epoch, start, stop = cursor.step_span(n, GLOBAL)
        together = [i for r in out for i in r["epoch0"][step]]
        assert together == order.slice(epoch, start, stop), "rank order, contiguous, the cursor's batch"
        cursor.advance(n, GLOBAL)
    assert [len(r["epoch0"][4]) for r in out] == [1, 1, 2], "the short last batch, split by weight"
    assert [r["resumed"] for r in out] == [[r["epoch0"][4]] for r in out], "start_step resumes mid-epoch"


#: A DDP script as a user writes it from the runtime README: the two lines, nothing else of ours.
README_SCRIPT = """
import sys, torch, torch.distributed as dist, torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from heterotrain_runtime.ddp import GlobalBatchSampler, exact_mean_hook

torch.manual_seed(0)
x = torch.randn(500, 8)
dataset = TensorDataset(x, x @ torch.randn(8, 1) + 0.1 * torch.randn(500, 1))
dist.init_process_group("gloo")
torch.manual_seed(int(sys.argv[2]))
net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5))
step = 0
model = DistributedDataParallel(net)
sampler = GlobalBatchSampler(dataset, global_batch_size=40, start_step=step, weights=[1, 2, 3])  # line 1
model.register_comm_hook(sampler, exact_mean_hook)                                               # line 2
loader = DataLoader(dataset, batch_sampler=sampler)
while step < 30:
    for batch in loader:
        loss = F.mse_loss(model(batch[0]), batch[1])
        optimizer.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(); scheduler.step(); step += 1
        if step == 30:
            break
if dist.get_rank() == 0:
    torch.save(net.state_dict(), sys.argv[1])
dist.destroy_process_group()
"""


def test_a_script_written_from_the_readme_matches_one_process(tmp_path: Path) -> None:
    """500 samples in global batches of 40 (13 steps a data-epoch, the last of 20), 30 steps, 1:2:3."""
    seed = test_seed()
    script = tmp_path / "train.py"
    script.write_text(README_SCRIPT)
    out = tmp_path / "final.pt"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", "3", "--master-port", str(free_port()),
           str(script), str(out), str(seed)]  # fmt: skip
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-5000:]
    torch.manual_seed(0)
    x = torch.randn(500, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(500, 1)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5))
    order, cursor = SampleOrder(500, 0), DataCursor()
    for _ in range(30):
        epoch, start, stop = cursor.step_span(500, 40)
        idx = torch.as_tensor(order.slice(epoch, start, stop))
        loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        cursor.advance(500, 40)
    got = torch.load(out)
    diff = max_difference(list(got.values()), [p.detach() for p in net.parameters()])
    assert diff < PARAM_TOLERANCE, f"max parameter difference {diff} (seed {seed})"


@pytest.fixture(autouse=True)
def _fewer_threads() -> None:
    torch.set_num_threads(1)
