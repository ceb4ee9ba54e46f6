"""An audit log of the samples every step consumed, and the exactly-once check (stdlib only).

Every rank appends to ``<dir>/<pod>.jsonl`` (flushed, so it survives SIGKILL):

* an ``attempt`` record *before* it contributes its gradients: formation id and
  start time, step number, data-epoch and the sample indices of its slice;
* a ``commit`` record after the optimizer applied the step.

What counts as consumed: the update of a step is in the final model iff some
rank committed it and no later execution of that step replaced it.  An
all-reduce only completes with every rank's contribution, so when any rank of
a formation committed step ``s``, every attempt of that formation for ``s``
went into the update.  The lineage of the final model therefore takes, for
every step, the latest formation (by start time) in which some rank committed
it, and the samples of that step are the union of that formation's attempts.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO


class SampleLog:
    def __init__(self, directory: str, pod: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._f: TextIO = open(os.path.join(directory, f"{pod}.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
        self.pod = pod

    def _write(self, rec: Mapping[str, Any]) -> None:
        self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._f.flush()

    def attempt(
        self,
        formation: str,
        formation_time: float,
        step: int,
        data_epoch: int,
        rank: int,
        world: int,
        indices: Sequence[int],
    ) -> None:
        self._write(
            {
                "kind": "attempt",
                "pod": self.pod,
                "formation": formation,
                "ftime": formation_time,
                "step": step,
                "data_epoch": data_epoch,
                "rank": rank,
                "world": world,
                "indices": list(indices),
            }
        )

    def commit(self, formation: str, formation_time: float, step: int) -> None:
        self._write(
            {"kind": "commit", "pod": self.pod, "formation": formation, "ftime": formation_time, "step": step}
        )

    def close(self) -> None:
        self._f.close()


def read_records(directory: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by SIGKILL: its step cannot have committed
    return out


@dataclass
class ExactlyOnceReport:
    steps: int  # committed steps in the lineage
    consumed: dict[int, Counter[int]] = field(default_factory=dict)  # data-epoch -> index -> count
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_exactly_once(
    records: Iterable[Mapping[str, Any]],
    dataset_len: int,
    final_step: int,
    complete_epochs: Sequence[int] | None = None,
) -> ExactlyOnceReport:
    """Verify that the lineage of steps ``1..final_step`` consumed every sample once per data-epoch.

    ``complete_epochs``: data-epochs that must be fully covered (default: every
    data-epoch the lineage finished, i.e. all but the last one touched).
    """
    attempts: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
    committed: dict[int, dict[str, float]] = defaultdict(dict)  # step -> formation -> time
    for r in records:
        if r.get("kind") == "attempt":
            attempts[(r["formation"], r["step"])].append(r)
        elif r.get("kind") == "commit":
            committed[r["step"]][r["formation"]] = r["ftime"]
    report = ExactlyOnceReport(steps=0)
    consumed: dict[int, Counter[int]] = defaultdict(Counter)
    for step in range(1, final_step + 1):
        if not committed.get(step):
            report.problems.append(f"step {step} was never committed")
            continue
        formation = max(committed[step].items(), key=lambda kv: kv[1])[0]
        recs = attempts.get((formation, step), [])
        if not recs:
            report.problems.append(f"step {step}: no attempt records for formation {formation}")
            continue
        worlds = {r["world"] for r in recs}
        ranks = sorted(r["rank"] for r in recs)
        if len(worlds) != 1 or ranks != list(range(next(iter(worlds)))):
            report.problems.append(f"step {step}: attempts of ranks {ranks} in a world of {worlds}")
        epochs = {r["data_epoch"] for r in recs}
        if len(epochs) != 1:
            report.problems.append(f"step {step} straddles data-epochs {epochs}")
        epoch = min(epochs)
        for r in recs:
            consumed[epoch].update(r["indices"])
        report.steps += 1
    report.consumed = dict(consumed)
    touched = sorted(consumed)
    must = list(complete_epochs) if complete_epochs is not None else touched[:-1]
    for e in touched:
        c = consumed[e]
        dup = sorted(i for i, n in c.items() if n > 1)
        if dup:
            report.problems.append(f"data-epoch {e}: {len(dup)} samples seen twice, e.g. {dup[:5]}")
        bad = sorted(i for i in c if not 0 <= i < dataset_len)
        if bad:
            report.problems.append(f"data-epoch {e}: out-of-range samples {bad[:5]}")
        if e in must:
            missing = sorted(set(range(dataset_len)) - set(c))
            if missing:
                report.problems.append(f"data-epoch {e}: {len(missing)} samples skipped, e.g. {missing[:5]}")
    return report
