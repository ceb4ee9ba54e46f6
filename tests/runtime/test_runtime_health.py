"""The health channel: every rank beats to rank 0 over UDP, rank 0 reports progress and stale ranks."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from rt_helpers import EXAMPLE, PYTHON

from heterotrain_contract import Member, Membership
from heterotrain_runtime.local import LocalSupervisor, PoolSpec
from heterotrain_runtime.trainer.liveness import (
    FORMING,
    OUTSIDE,
    STEP,
    Beat,
    Heartbeat,
    Liveness,
    backup_of,
    silence_timeout,
)
from heterotrain_runtime.trainer.progress import Limits, Seen, signals, summarize

LIM = Limits(silence=12.0, heartbeat=15.0, outside=600.0, startup=60.0)
WORLD = Membership(
    epoch=4,
    world=(
        Member("w-0", 0, "nvidia-h100", "10.0.0.1", 3.0),
        Member("w-1", 1, "nvidia-h100", "10.0.0.2", 3.0),
        Member("w-2", 2, "nvidia-a100", "10.0.0.3", 1.0),
    ),
    master_port=29500,
)


def beat(pod: str, rank: int, phase: str = OUTSIDE, since: float = 0.1, **kw: Any) -> Beat:
    base: dict[str, Any] = {
        "name": pod,
        "pod": pod,
        "node": f"node-{rank // 2}",
        "type": "nvidia-a100" if rank == 2 else "nvidia-h100",
        "epoch": 4,
        "rank": rank,
        "phase": phase,
        "since": since,
        "step": 100,
        "rate": 300.0 if rank < 2 else 100.0,
        "sps": 30.0 if rank < 2 else 10.0,
        "batch": 30 if rank < 2 else 10,
        "global_sps": 70.0,
        "restarts": 0,
        "exit_code": None,
    }
    base.update(kw)
    return Beat(**base)


def report(
    seen: dict[str, Seen],
    waiting: dict[str, float] | None = None,
    total: int | None = 170,
    trained: float | None = None,
) -> dict[str, Any]:
    return summarize(
        WORLD,
        seen,
        waiting or {},
        seen["w-0"].beat,
        LIM,
        global_batch=70,
        total_steps=total,
        now=1767225600.0,
        trained=trained,
    )


def test_a_report_has_the_step_the_pools_their_weights_and_the_eta():
    seen = {f"w-{r}": Seen(beat(f"w-{r}", r), 0.5) for r in range(3)}
    rec = report(seen)
    assert rec["time"] == "2026-01-01T00:00:00Z" and rec["reporter"] == "w-0" and rec["epoch"] == 4
    assert rec["step"] == 100 and rec["samplesPerSecond"] == 70.0
    assert rec["totalSteps"] == 170 and rec["etaSeconds"] == 70  # 70 steps of 70 samples at 70 samples/s
    h100, a100 = rec["pools"]
    assert h100 == {
        "type": "nvidia-h100",
        "ranks": 2,
        "step": 100,
        "samplesPerSecond": 60.0,
        "weight": round(60 / 70, 4),
        "slowest": {"rank": 0, "pod": "w-0", "samplesPerSecond": 300.0},
    }
    assert a100["ranks"] == 1 and a100["weight"] == round(10 / 70, 4)
    assert rec["staleRanks"] == [] and rec["processRestarts"] == []
    assert "etaSeconds" not in report(seen, total=None)


def test_silent_stuck_and_never_heard_ranks_are_stale():
    seen = {f"w-{r}": Seen(beat(f"w-{r}", r), 0.5) for r in range(3)}
    seen["w-1"] = Seen(beat("w-1", 1), 12.5)  # silent for longer than the silence timeout
    assert report(seen)["staleRanks"] == [{"rank": 1, "pod": "w-1", "reason": "Silent", "seconds": 12.5}]
    # w-2 has not beaten since it started: within its start-up grace it is not stale, then it is.
    del seen["w-1"]
    seen["w-1"] = Seen(beat("w-1", 1), 0.5)
    del seen["w-2"]
    assert report(seen, {"w-2": 30.0})["staleRanks"] == []
    assert report(seen, {"w-2": 61.0})["staleRanks"][0]["pod"] == "w-2"
    # ... unless the world committed a step with it: it was alive then, and has been silent since (it may
    # have stopped before its first beat reached rank 0).
    assert report(seen, {"w-2": 30.0}, trained=LIM.silence - 0.5)["staleRanks"] == []
    silent = report(seen, {"w-2": 30.0}, trained=LIM.silence + 0.5)["staleRanks"]
    assert silent == [{"rank": 2, "pod": "w-2", "reason": "Silent", "seconds": LIM.silence + 0.5}]
    # Stuck: in its step while the others have waited at the rendezvous for longer than the heartbeat timeout.
    seen = {
        "w-0": Seen(beat("w-0", 0, FORMING, since=16.0), 0.2),
        "w-1": Seen(beat("w-1", 1, FORMING, since=16.0), 0.2),
        "w-2": Seen(beat("w-2", 2, STEP, since=17.0), 0.2),
    }
    assert report(seen)["staleRanks"] == [{"rank": 2, "pod": "w-2", "reason": "Stuck", "seconds": 17.0}]
    # ... not before, nor a rank that entered its step after they began to wait, nor one in the user's code.
    seen["w-0"] = Seen(beat("w-0", 0, FORMING, since=14.0), 0.2)
    seen["w-1"] = Seen(beat("w-1", 1, FORMING, since=14.0), 0.2)
    assert report(seen)["staleRanks"] == []
    seen["w-2"] = Seen(beat("w-2", 2, OUTSIDE, since=20.0), 0.2)
    seen["w-0"] = Seen(beat("w-0", 0, FORMING, since=16.0), 0.2)
    assert report(seen)["staleRanks"] == []


def test_restarts_in_place_are_reported_and_signal_a_change():
    seen = {f"w-{r}": Seen(beat(f"w-{r}", r), 0.5) for r in range(3)}
    quiet = report(seen)
    seen["w-2"] = Seen(beat("w-2", 2, restarts=2, exit_code=137), 0.5)
    loud = report(seen)
    assert loud["processRestarts"] == [{"pod": "w-2", "count": 2, "exitCode": 137}]
    assert signals(loud) != signals(quiet)
    assert signals(report({**seen, "w-0": Seen(beat("w-0", 0, step=101), 0.1)})) == signals(loud)


def test_the_backup_reporter_is_on_another_node_than_rank_0():
    assert backup_of(WORLD, {"w-0": "node-0", "w-1": "node-0", "w-2": "node-1"}) == "w-2"
    assert backup_of(WORLD, {}) == "w-1"
    two = Membership(epoch=1, world=(Member("p", 0, "t", "a", 2.0, slots=2), WORLD.world[2]), master_port=1)
    assert backup_of(two, {}) == "w-2", "another pod than rank 0's when the nodes are not known"
    assert backup_of(Membership(epoch=1, world=WORLD.world[:1], master_port=1), {}) is None
    assert silence_timeout(15.0) == 12.0 and silence_timeout(5.0) == 2.5


def test_a_rank_0_that_fell_silent_before_a_new_epoch_is_still_reported():
    """Rank 0 names the backup in its acknowledgements, per epoch. A world that re-forms around a rank 0
    already stopped never hears a name for the new epoch: the backup named last, and the one the
    membership alone gives, report it then (no one would otherwise, and the job would wait for ever)."""

    def reports(name: str, m: Membership, backup: tuple[int, str] | None) -> list[int]:
        """The epochs ``name`` reports rank 0 silent in, after 13 s without an acknowledgement."""
        t = [100.0]
        reported: list[int] = []

        class Source:
            def get(self) -> Membership:
                return m

        live = Liveness(name, name, "node", "nvidia-h100", 0, None, clock=lambda: t[0])
        hb = Heartbeat(
            live,
            Source(),  # type: ignore[arg-type]
            12.0,
            lambda mm, silent: reported.append(mm.epoch),
            clock=lambda: t[0],
        )
        hb._backup = backup
        t[0] += 13.0
        hb._check_rank0(m, int(name[-1]))
        return reported

    new = Membership(epoch=5, world=WORLD.world, master_port=29500)
    # Named in this epoch: the named one alone.
    assert reports("w-2", WORLD, (4, "w-2")) == [4]
    assert reports("w-1", WORLD, (4, "w-2")) == []
    # Named in the epoch before only: the one named then, and the membership's own choice (w-1).
    assert reports("w-2", new, (4, "w-2")) == [5]
    assert reports("w-1", new, (4, "w-2")) == [5]
    assert reports("w-1", new, None) == [5]
    assert reports("w-2", new, None) == []
    # A backup named before that left the world does not report for it.
    gone = Membership(epoch=5, world=WORLD.world[:2], master_port=29500)
    assert reports("w-2", gone, (4, "w-2")) == []


def test_beats_round_trip_and_liveness_tracks_phases():
    t = [100.0]
    live = Liveness("w-1", "w-1", "node-0", "nvidia-h100", restarts=1, exit_code=137, clock=lambda: t[0])
    live.enter(FORMING, epoch=3)
    t[0] = 102.5
    b = live.beat()
    assert (b.phase, b.since, b.epoch, b.restarts, b.exit_code) == (FORMING, 2.5, 3, 1, 137)
    live.enter(STEP, 3, 1)
    live.committed(7, 200.0, 20, 0.5, 60.0)
    b = live.beat()
    assert (b.phase, b.since, b.step, b.sps, b.rank) == (STEP, 0.0, 7, 40.0, 1)
    assert Beat.decode(b.encode()) == b
    assert Beat.decode(b"not json") is None


def read_status(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def test_a_stopped_rank_and_a_stopped_rank_0_are_reported_within_the_heartbeat_timeout(
    tmp_path: Path,
) -> None:
    """Real processes (local mode): SIGSTOP rank 2, then rank 0; each is reported Silent in time."""
    status = tmp_path / "status.json"
    heartbeat = 8.0
    sup = LocalSupervisor(
        pools=[PoolSpec("nvidia-a100", 2, 1.0), PoolSpec("huawei-ascend-910b", 1, 1.0)],
        command=[PYTHON, str(EXAMPLE), "--dataset-size", "4800", "--log-every", "0"],
        workdir=str(tmp_path / "job"),
        global_batch_size=48,
        steps=100000,
        heartbeat_timeout=heartbeat,
        output="files",
        extra_env={"HETEROTRAIN_STATUS_FILE": str(status), "HETEROTRAIN_MEMBERSHIP_POLL_SECONDS": "0.05"},
    )
    stopped: list[int] = []
    try:
        sup.start()
        assert (
            sup.supervise_until(lambda: (read_status(status).get("progress") or {}).get("step", 0) >= 3, 120)
            is None
        )
        prog = read_status(status)["progress"]
        assert prog["reporter"] == sup.membership.world[0].pod and {p["type"] for p in prog["pools"]} == {
            "nvidia-a100",
            "huawei-ascend-910b",
        }
        assert prog["totalSteps"] == 100000 and prog["etaSeconds"] > 0
        for rank in (2, 0):
            victim = sup.membership.world[rank].pod
            pid = sup.user_pid(victim)
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
            t0 = time.monotonic()

            def reported(victim: str = victim) -> bool:
                stale = (read_status(status).get("progress") or {}).get("staleRanks") or []
                return any(s["pod"] == victim and s["reason"] == "Silent" for s in stale)

            assert sup.supervise_until(reported, 3 * heartbeat) is None
            took = time.monotonic() - t0
            assert took <= heartbeat, f"rank {rank} reported after {took:.1f}s"
            os.kill(pid, signal.SIGCONT)
            stopped.remove(pid)
            # Back: it beats again and is no longer stale (rank 0's own reports resume).
            assert sup.supervise_until(lambda v=victim: not reported(v), 3 * heartbeat) is None
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        sup.shutdown()


def test_the_aggregator_forgets_a_pod_that_left_and_reports_on_the_rules():
    from heterotrain_runtime.trainer.progress import Aggregator

    class Fixed:
        def __init__(self) -> None:
            self.m: Membership | None = WORLD

        def get(self) -> Membership | None:
            return self.m

    written: list[dict[str, Any]] = []

    class W:
        def put(self, rec: dict[str, Any]) -> None:
            written.append(rec)

    t = [1000.0]
    members = Fixed()
    agg = Aggregator(
        "w-0",
        lambda: beat("w-0", 0),
        members,  # type: ignore[arg-type]
        W(),  # type: ignore[arg-type]
        LIM,
        global_batch=70,
        total_steps=None,
        clock=lambda: t[0],
        wall=lambda: 1767225600.0,
    )
    agg._listen = lambda m: True  # type: ignore[method-assign]  # no socket: beats are fed below
    assert agg.evaluate() is not None and len(written) == 1  # the first report at once
    agg._beats.update({"w-1": (beat("w-1", 1), t[0]), "w-2": (beat("w-2", 2), t[0])})
    t[0] += 2.0
    agg._beats["w-1"] = (beat("w-1", 1), t[0])
    agg.evaluate()
    assert len(written) == 1, "nothing new: the next report after 5 s"
    t[0] += 11.0  # w-2 silent for 13 s
    agg._beats["w-1"] = (beat("w-1", 1), t[0])
    rec = agg.evaluate()
    assert rec is not None and [s["pod"] for s in rec["staleRanks"]] == ["w-2"] and len(written) == 2
    # w-2 leaves the world, and a new pod of the same name joins: the old beats are not its own.
    members.m = Membership(epoch=5, world=WORLD.world[:2], master_port=29500)
    agg.evaluate()
    members.m = Membership(epoch=6, world=WORLD.world, master_port=29500)
    t[0] += 1.0
    rec = agg.evaluate()
    assert rec is not None and rec["staleRanks"] == [], "a new member gets its start-up grace"
    # The world commits a step in epoch 6 (rank 0's step moves on): the new member took part in it, so it
    # is silent once it has not beaten for the silence timeout since (not the start-up grace).
    me = [beat("w-0", 0, epoch=6)]
    agg.me = lambda: me[0]  # type: ignore[method-assign]
    agg.evaluate()
    me[0] = beat("w-0", 0, epoch=6, step=101)
    t[0] += 1.0
    agg._beats["w-1"] = (beat("w-1", 1), t[0])
    assert agg.evaluate()["staleRanks"] == []  # type: ignore[index]
    t[0] += LIM.silence + 1.0
    agg._beats["w-1"] = (beat("w-1", 1), t[0])
    rec = agg.evaluate()
    assert rec is not None and [(s["pod"], s["reason"]) for s in rec["staleRanks"]] == [("w-2", "Silent")]
