"""make demo's pure parts: the timeline from status snapshots, Events and progress records; its job; its
added node.  (The demo itself runs end to end with `make demo`.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from heterotrain_contract import KIND
from heterotrain_e2e.cluster import profile as profilemod
from heterotrain_e2e.demo import chaos, job, timeline
from heterotrain_e2e.demo.timeline import ACTION, EVENT, MEMBERSHIP, Action, Snapshot
from heterotrain_e2e.emulation import ANNOTATION_EMULATED_SPEED

REPO = Path(__file__).resolve().parents[2]
T0 = 1_796_045_000.0  # 2026-11-30T13:23:20Z


def member(pod: str, rank: int, type_: str) -> dict[str, object]:
    return {"pod": pod, "rank": rank, "type": type_, "address": "198.18.4.1", "weight": 1.0}


def status(epoch: int, *members: dict[str, object], phase: str = "Running") -> dict[str, object]:
    return {"phase": phase, "membership": {"epoch": epoch, "masterPort": 29400, "world": list(members)}}


def event(uid: str, reason: str, count: int, last: str, message: str = "m") -> dict[str, object]:
    return {
        "metadata": {"name": f"quickstart.{uid}", "uid": uid},
        "reason": reason,
        "message": message,
        "count": count,
        "lastTimestamp": last,
    }


A, H = member("w-0", 0, "nvidia-a100"), member("w-1", 1, "nvidia-h100")


def test_membership_changes_are_the_first_snapshot_of_each_epoch() -> None:
    snaps = [
        Snapshot(T0 + 1, {"phase": "Pending"}),
        Snapshot(T0 + 2, status(1, A, H)),
        Snapshot(T0 + 4, status(1, A, H)),
        Snapshot(T0 + 6, status(2, A)),
        Snapshot(T0 + 8, status(3, A, H, member("w-2", 2, "nvidia-a100"))),
        Snapshot(T0 + 9, status(4, phase="Succeeded")),  # the job ended: an empty world is no change
    ]
    got = timeline.membership_changes(list(reversed(snaps)))  # order of the input does not matter
    assert got == [
        (T0 + 2, "world 1: 2 workers (1 nvidia-a100, 1 nvidia-h100)"),
        (T0 + 6, "world 2: 1 workers (1 nvidia-a100)"),
        (T0 + 8, "world 3: 3 workers (2 nvidia-a100, 1 nvidia-h100)"),
    ]


def test_each_event_count_is_one_occurrence_at_its_last_time() -> None:
    observed = [
        event("u1", "WorkerFailed", 1, "2026-11-30T13:23:30Z", "worker w-1 failed"),
        event("u1", "WorkerFailed", 1, "2026-11-30T13:23:30Z", "worker w-1 failed"),  # seen again
        event("u2", "Scaled", 1, "2026-11-30T13:23:35Z", "grew from 2 to 3"),
        event("u1", "WorkerFailed", 2, "2026-11-30T13:23:50Z", "worker w-2 failed"),  # the count bumped
        {"metadata": {"uid": "u3"}, "reason": "NoTime", "count": 1},  # no time: left out
    ]
    assert timeline.event_occurrences(observed) == [
        (T0 + 10, "WorkerFailed", "worker w-1 failed"),
        (T0 + 15, "Scaled", "grew from 2 to 3"),
        (T0 + 30, "WorkerFailed", "worker w-2 failed"),
    ]


def test_build_series_and_sorted_markers_relative_to_the_start() -> None:
    progress = [
        {"time": T0 + 12, "step": 2, "loss": 5.0, "pools": {"nvidia-a100": 10.0, "nvidia-h100": 30.0}},
        {"time": T0 + 11, "step": 1, "loss": 5.5, "pools": {"nvidia-a100": 9.0, "nvidia-h100": 28.0}},
        {"time": T0 + 20, "step": 3, "loss": 4.0, "pools": {"nvidia-a100": 12.0}},  # H100 killed
    ]
    snaps = [Snapshot(T0 + 9, status(1, A, H)), Snapshot(T0 + 19, status(2, A))]
    events = [
        event("u1", "WorkerFailed", 1, "2026-11-30T13:23:38Z", "w-1 failed"),
        event("u2", "MembershipChanged", 2, "2026-11-30T13:23:39Z"),  # shown by the membership marker
        event("u0", "Admitted", 1, "2026-11-30T13:20:00Z"),  # before the demo's job: left out
    ]
    tl = timeline.build(snaps, events, progress, [Action(T0 + 17, "killed w-1 (nvidia-h100)")], start=T0 + 5)
    assert tl.loss == [(6.0, 5.5), (7.0, 5.0), (15.0, 4.0)]
    assert tl.steps == [(6.0, 1), (7.0, 2), (15.0, 3)]
    assert tl.pools == {
        "nvidia-a100": [(6.0, 9.0), (7.0, 10.0), (15.0, 12.0)],
        "nvidia-h100": [(6.0, 28.0), (7.0, 30.0)],
    }
    assert [(m.time, m.kind) for m in tl.markers] == [
        (4.0, MEMBERSHIP),
        (12.0, ACTION),
        (13.0, EVENT),
        (14.0, MEMBERSHIP),
    ]
    assert tl.markers[2].label == "WorkerFailed: w-1 failed"


def test_break_gaps_puts_a_nan_in_a_pause_only() -> None:
    got = timeline.break_gaps([(0.0, 1.0), (1.0, 2.0), (9.0, 3.0), (10.0, 4.0)], 4.0)
    assert [t for t, _ in got] == [0.0, 1.0, 5.0, 9.0, 10.0]
    assert [math.isnan(v) for _, v in got] == [False, False, True, False, False]


def test_smooth_is_a_trailing_mean() -> None:
    assert timeline.smooth([(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)], 2) == [
        (0, 1.0),
        (1, 2.0),
        (2, 4.0),
        (3, 6.0),
    ]


def test_progress_line_shows_phase_step_pools_loss_and_workers() -> None:
    st = {**status(3, A, H), "workers": {"ready": 2, "desired": 3}, "restarts": 1}
    rec = {"step": 42, "loss": 2.5, "pools": {"nvidia-h100": 30.0, "nvidia-a100": 9.5}}
    line = timeline.progress_line(st, rec, 120)
    want = (
        "Running step 42/120 loss 2.500 nvidia-a100 9.5/s nvidia-h100 30.0/s workers 2/3 (world 3) restarts 1"
    )
    assert " ".join(line.split()) == want
    assert "waiting" in timeline.progress_line({"phase": "Pending", "waitingReason": "Gang"}, None, 120)


def test_demo_job_is_the_quickstart_shortened_with_room_for_one_more_node() -> None:
    text = (REPO / "examples" / "quickstart.yaml").read_text()
    docs = job.demo_manifests(text, "demo-x", 90, "nvidia-a100")
    assert {d["metadata"]["namespace"] for d in docs} == {"demo-x"}
    spec = next(d for d in docs if d["kind"] == KIND)["spec"]
    assert spec["args"][:2] == ["--steps", "90"]
    assert spec["command"] == ["python", "-m", "heterotrain_runtime.examples.gpt"]  # the quickstart's model
    assert spec["workers"] == {"min": 2, "max": 4}
    assert {a["type"]: a["maxWorkers"] for a in spec["accelerators"]} == {
        "nvidia-a100": 2,
        "nvidia-h100": 1,
        "huawei-ascend-910b": 1,
    }
    assert {"name": "HETEROTRAIN_PROGRESS_FILE", "value": "/checkpoints/demo-progress.jsonl"} in spec["env"]
    assert job.claim_name(docs) == "quickstart-checkpoints"
    with pytest.raises(ValueError, match="nvidia-l40s"):
        job.demo_manifests(text, "demo-x", 90, "nvidia-l40s")


def test_the_added_node_is_the_next_of_its_pool_at_the_pools_speed() -> None:
    prof = profilemod.load(REPO / "e2e" / "profiles" / "demo.yaml")
    assert prof.types() == ["huawei-ascend-910b", "nvidia-a100", "nvidia-h100"]
    node = chaos.next_node(prof, "nvidia-a100", {"proc-a100-0", "proc-a100-1"})
    meta = node["metadata"]
    assert meta["name"] == "proc-a100-2"
    assert meta["labels"]["heterotrain.io/runner"] == "process"
    assert meta["labels"]["heterotrain.io/accelerator"] == "nvidia-a100"
    assert float(meta["annotations"][ANNOTATION_EMULATED_SPEED]) == 1.0
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "1"
    with pytest.raises(ValueError, match="amd-mi300x"):
        chaos.next_node(prof, "amd-mi300x", set())
