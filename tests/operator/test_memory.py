"""The micro-batch cap in force: declared, halved by out-of-memory failures, shown in the status and the world."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import heterotrain_contract as c
from heterotrain_operator import memory
from heterotrain_operator import placement as pl
from heterotrain_operator import reconcile as r
from heterotrain_operator.desired import worker_pod

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def failed(
    job, index: int, type_: str, settings, reason: str = "OOMKilled", code: int = 137
) -> dict[str, Any]:
    pod = worker_pod(job, index, type_, settings, node=f"n{index}")
    pod["metadata"]["uid"] = f"pod-{index}"
    term = {"exitCode": code, "reason": reason}
    pod["status"] = {
        "phase": "Failed",
        "containerStatuses": [{"name": "worker", "state": {"terminated": term}}],
    }
    return pod


def running(job, index: int, type_: str, settings) -> dict[str, Any]:
    pod = worker_pod(job, index, type_, settings, node=f"n{index}")
    pod["metadata"]["uid"] = f"pod-{index}"
    pod["spec"]["nodeName"] = f"n{index}"
    pod["status"] = {"phase": "Running", "podIP": f"10.0.0.{index + 1}"}
    return pod


def test_out_of_memory_is_an_oom_kill_or_the_sdks_exit_code(make_job, settings):
    job = make_job()
    assert memory.out_of_memory(failed(job, 0, "nvidia-a100", settings))
    assert memory.out_of_memory(failed(job, 0, "nvidia-a100", settings, "Error", c.EXIT_OUT_OF_MEMORY))
    assert not memory.out_of_memory(failed(job, 0, "nvidia-a100", settings, "Error", 1))


def test_caps_are_declared_then_halved_once_per_type_and_pass(make_job, settings):
    job = make_job(accelerators=[{"type": "nvidia-a100", "maxMicroBatch": 40}, {"type": "nvidia-h100"}])
    assert memory.caps_in_force(job, []) == {"nvidia-a100": 40}
    two = [failed(job, 0, "nvidia-a100", settings), failed(job, 1, "nvidia-a100", settings)]
    assert memory.caps_in_force(job, two) == {"nvidia-a100": 20}  # two pods of one type: halved once
    # without a cap of its own, the largest share of one of its processes in the world is halved
    world = c.Membership(
        1,
        (
            c.Member("j-worker-0", 0, "nvidia-a100", "a", 1.0),
            c.Member("j-worker-1", 1, "nvidia-h100", "b", 3.17),
        ),
    )
    job = make_job(
        accelerators=[{"type": "nvidia-a100", "maxMicroBatch": 40}, {"type": "nvidia-h100"}],
        status={"membership": world.to_dict()},
    )
    assert memory.largest_share(job, "nvidia-h100") == 73  # 96 x 3.17 / 4.17
    assert memory.caps_in_force(job, [failed(job, 1, "nvidia-h100", settings)]) == {
        "nvidia-a100": 40,
        "nvidia-h100": 36,
    }
    # a lowered cap holds; a lower declared one wins
    held = make_job(
        accelerators=[{"type": "nvidia-a100", "maxMicroBatch": 40}],
        status={"workers": {"byType": {"nvidia-a100": {"maxMicroBatch": 5}}}},
    )
    assert memory.caps_in_force(held, [failed(held, 0, "nvidia-a100", settings, "Error", 1)]) == {
        "nvidia-a100": 5
    }
    assert memory.caps_in_force(held, [failed(held, 0, "nvidia-a100", settings)]) == {"nvidia-a100": 2}


def test_an_oom_failure_lowers_the_cap_in_the_status_and_the_next_world(make_job, settings):
    spec = {"workers": {"min": 1, "max": 2}, "accelerators": [{"type": "nvidia-a100", "maxMicroBatch": 48}]}
    job = make_job(**spec)
    plan = pl.JobPlan(
        key="ns/j",
        admitted=True,
        workers=(pl.WorkerSlot("n0", "nvidia-a100"), pl.WorkerSlot("n1", "nvidia-a100")),
    )
    pods = [running(job, 0, "nvidia-a100", settings), running(job, 1, "nvidia-a100", settings)]
    first = r.reconcile_job(job, pods, plan, settings, NOW)
    assert first.status["workers"]["byType"]["nvidia-a100"]["maxMicroBatch"] == 48
    assert [m["maxMicroBatch"] for m in first.status["membership"]["world"]] == [48, 48]
    pods[1] = failed(job, 1, "nvidia-a100", settings)
    out = r.reconcile_job(make_job(status=first.status, **spec), pods, plan, settings, NOW)
    assert out.status["workers"]["byType"]["nvidia-a100"]["maxMicroBatch"] == 24
    assert out.status["membership"]["epoch"] == first.status["membership"]["epoch"] + 1
    assert [m["maxMicroBatch"] for m in out.status["membership"]["world"]] == [24]  # the re-formed world's
    assert out.status["lastFailure"]["reason"] == "OOMKilled"
    again = r.reconcile_job(make_job(status=out.status, **spec), pods[:1], plan, settings, NOW)
    assert again.status["workers"]["byType"]["nvidia-a100"]["maxMicroBatch"] == 24  # it holds
