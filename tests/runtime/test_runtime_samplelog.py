"""The exactly-once checker on synthetic logs (including crash scenarios)."""

from __future__ import annotations

from pathlib import Path

from heterotrain_runtime.batching import DataCursor, SampleOrder, cut_ranges, split_batch
from heterotrain_runtime.samplelog import SampleLog, check_exactly_once, read_records


def _run_formation(
    logs: dict[str, SampleLog],
    pods: list[str],
    fid: str,
    ftime: float,
    cursor: DataCursor,
    first_step: int,
    steps: int,
    n: int,
    b: int,
    order: SampleOrder,
    commit_upto: int | None = None,
) -> None:
    for s in range(first_step, first_step + steps):
        epoch, start, stop = cursor.step_span(n, b)
        sizes = split_batch(stop - start, [1.0 + r for r in range(len(pods))])
        for r, (a, z) in enumerate(cut_ranges(sizes)):
            logs[pods[r]].attempt(
                fid, ftime, s, epoch, r, len(pods), order.slice(epoch, start + a, start + z)
            )
        if commit_upto is not None and s > commit_upto:
            return  # crashed before the update
        for p in pods:
            logs[p].commit(fid, ftime, s)
        cursor.advance(n, b)


def test_checker_accepts_a_recovered_run_and_catches_skips(tmp_path: Path) -> None:
    n, b = 40, 8
    order = SampleOrder(n, 0)
    pods = ["a", "b", "c"]
    logs = {p: SampleLog(str(tmp_path), p) for p in [*pods, "d"]}
    cursor = DataCursor()
    # formation 1 runs steps 1..4 and crashes during step 5 (not committed)
    _run_formation(logs, pods, "f1", 1.0, cursor, 1, 5, n, b, order, commit_upto=4)
    # formation 2 (world of 2) redoes step 5 and goes on to 8
    _run_formation(logs, ["a", "c"], "f2", 2.0, cursor, 5, 4, n, b, order)
    # formation 3 restores a checkpoint at step 6 and redoes 7..12 with 4 ranks
    cursor = DataCursor()
    for _ in range(6):
        cursor.advance(n, b)
    _run_formation(logs, ["a", "b", "c", "d"], "f3", 3.0, cursor, 7, 6, n, b, order)
    for log in logs.values():
        log.close()
    records = read_records(str(tmp_path))
    report = check_exactly_once(records, n, final_step=12, complete_epochs=[0, 1])
    assert report.ok, report.problems
    assert report.steps == 12
    assert sorted(report.consumed[0]) == list(range(n))

    # a lost step (a record of step 3 missing) is reported
    broken = [r for r in records if not (r["kind"] == "commit" and r["step"] == 3)]
    assert not check_exactly_once(broken, n, final_step=12).ok
    # a sample consumed twice is reported
    dup = [dict(r) for r in records]
    for r in dup:
        if r["kind"] == "attempt" and r["formation"] == "f3" and r["step"] == 8 and r["rank"] == 0:
            r["indices"] = r["indices"] + [order.index(1, 0)]
    assert not check_exactly_once(dup, n, final_step=12).ok


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    log = SampleLog(str(tmp_path), "a")
    log.attempt("f", 1.0, 1, 0, 0, 1, [0, 1])
    log.commit("f", 1.0, 1)
    log.close()
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write('{"kind": "attempt", "ind')
    assert len(read_records(str(tmp_path))) == 2
