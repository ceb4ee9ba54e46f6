"""Chaos schedules: which faults hit a training job, at which step, where (TEST INFRASTRUCTURE).

A schedule is a list of events.  It is either drawn from a seed (:func:`random_schedule`) or read from a
YAML or JSON file (:func:`load`), chosen by the environment (:func:`from_env`):

* ``HETEROTRAIN_CHAOS_SCHEDULE=path``: the events of that file;
* ``HETEROTRAIN_CHAOS_SEED=N``: a schedule drawn from seed N (the default seed is 1).

The file format::

    events:
      - {atStep: 60, kind: process_kill}                 # target: a random worker of the world
      - {atStep: 140, kind: hang, target: "rank:1"}       # the worker of rank 1
      - {atStep: 220, kind: pod_delete, target: "type:nvidia-a100"}
      - {atStep: 300, kind: drain}                       # the node of a random worker
      - {atStep: 380, kind: node_notready, target: "node:proc-a100-1"}
      - {atStep: 460, kind: node_join, type: huawei-ascend-910b}   # a new process node of that type
    seed: 7   # optional: the random choices of "random" targets

``kind`` is one of process_kill (SIGKILL of the training process), hang (SIGSTOP of the pod's processes),
pod_delete, drain (cordon + eviction of the node's pods), node_notready (the node stops renewing its
Lease, its processes stop), node_join.  ``target``: ``random`` (default), ``rank:N``, ``type:T`` (a random
worker of type T) or, for the node kinds, ``node:NAME``.  An event fires once the job has committed
``atStep`` steps and the previous event's fault has been absorbed (the job trained a few steps since).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KINDS = ("process_kill", "hang", "pod_delete", "drain", "node_notready", "node_join")
NODE_KINDS = frozenset({"drain", "node_notready"})
ENV_SEED = "HETEROTRAIN_CHAOS_SEED"
ENV_SCHEDULE = "HETEROTRAIN_CHAOS_SCHEDULE"

#: What a drawn schedule holds: the issue's list (several kills, hangs and deletions; one drain, one dead
#: node, one node that joins).
DRAWN = (
    "process_kill",
    "process_kill",
    "hang",
    "hang",
    "pod_delete",
    "pod_delete",
    "drain",
    "node_notready",
    "node_join",
)


class ScheduleError(ValueError):
    """A schedule that cannot be run; the message names the event and field."""


@dataclass(frozen=True)
class Event:
    at_step: int
    kind: str
    target: str = "random"
    type: str | None = None  # node_join: the accelerator type of the new node

    def describe(self) -> str:
        extra = f" {self.type}" if self.type else ""
        return f"step {self.at_step}: {self.kind} ({self.target}{extra})"


@dataclass(frozen=True)
class Schedule:
    events: tuple[Event, ...]
    seed: int
    source: str  # where it came from, for the test's report

    def describe(self) -> str:
        return f"{self.source}:\n  " + "\n  ".join(e.describe() for e in self.events)


def random_schedule(seed: int, total_steps: int, types: tuple[str, ...]) -> Schedule:
    """The faults of :data:`DRAWN` in a random order, spread between 10 % and 80 % of the run."""
    rng = random.Random(seed)
    kinds = list(DRAWN)
    rng.shuffle(kinds)
    lo, hi = int(total_steps * 0.1), int(total_steps * 0.8)
    gap = (hi - lo) / len(kinds)
    events = []
    for i, kind in enumerate(kinds):
        at = int(lo + gap * i + rng.uniform(0, gap / 3))
        events.append(Event(at, kind, type=rng.choice(types) if kind == "node_join" else None))
    return Schedule(tuple(events), seed, f"drawn from seed {seed}")


def _event(i: int, raw: Any) -> Event:
    where = f"events[{i}]"
    if not isinstance(raw, dict):
        raise ScheduleError(f"{where}: an event is a mapping with atStep and kind")
    unknown = set(raw) - {"atStep", "kind", "target", "type"}
    if unknown:
        raise ScheduleError(f"{where}: unknown fields {sorted(unknown)}")
    at, kind, target = raw.get("atStep"), raw.get("kind"), str(raw.get("target", "random"))
    if not isinstance(at, int) or at < 1:
        raise ScheduleError(f"{where}.atStep: a step >= 1, got {at!r}")
    if kind not in KINDS:
        raise ScheduleError(f"{where}.kind: one of {', '.join(KINDS)}, got {kind!r}")
    ok = (
        target == "random"
        or target.startswith(("rank:", "type:"))
        or (target.startswith("node:") and kind in NODE_KINDS)
    )
    if not ok or (target.startswith("rank:") and not target[5:].isdigit()):
        raise ScheduleError(
            f"{where}.target: random, rank:N, type:T or (drain, node_notready) node:NAME, got {target!r}"
        )
    if kind == "node_join" and not raw.get("type"):
        raise ScheduleError(f"{where}.type: node_join needs the accelerator type of the new node")
    return Event(at, str(kind), target, raw.get("type"))


def load(path: Path, default_seed: int = 1) -> Schedule:
    """A schedule file (YAML or JSON, see the module docstring)."""
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ScheduleError(f"{path}: cannot read the schedule: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list) or not data["events"]:
        raise ScheduleError(f"{path}: a schedule is a mapping with a non-empty list of events")
    events = [_event(i, e) for i, e in enumerate(data["events"])]
    if [e.at_step for e in events] != sorted(e.at_step for e in events):
        raise ScheduleError(f"{path}: events must be in step order")
    return Schedule(tuple(events), int(data.get("seed", default_seed)), f"file {path}")


def from_env(total_steps: int, types: tuple[str, ...]) -> Schedule:
    """The schedule the environment asks for (a file, else a seed, else seed 1)."""
    path = os.environ.get(ENV_SCHEDULE)
    if path:
        return load(Path(path))
    return random_schedule(int(os.environ.get(ENV_SEED, "1")), total_steps, types)
