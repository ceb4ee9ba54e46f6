"""The demo's timeline, as plain data: what the job's status, its Events, rank 0's progress records and
the demo's own actions say, turned into series to plot (pure: no I/O, no clock).

Inputs, each stamped in seconds since the epoch:

* ``Snapshot``: the job's ``status`` as read at a time (phase, membership epoch and world, workers);
* Event objects of the job as listed (the operator keeps ONE object per (type, reason) and bumps its
  ``count``: each new count is one occurrence, at the object's ``lastTimestamp``);
* progress records: the JSON lines rank 0 appends per step to ``HETEROTRAIN_PROGRESS_FILE``
  (``time``, ``step``, ``loss``, ``pools``: samples/s per accelerator type);
* ``Action``: what the demo itself did (a worker killed, a node added).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Marker kinds, one colour each in the plot.
ACTION, MEMBERSHIP, EVENT = "action", "membership", "event"
#: Event reasons already shown by another marker (the membership change itself, from the status).
COVERED_REASONS = frozenset({"MembershipChanged"})


@dataclass(frozen=True)
class Snapshot:
    time: float
    status: Mapping[str, Any]


@dataclass(frozen=True)
class Action:
    time: float
    label: str


@dataclass(frozen=True)
class Marker:
    time: float  # seconds since the timeline's start
    kind: str  # ACTION, MEMBERSHIP or EVENT
    label: str


@dataclass(frozen=True)
class Timeline:
    start: float  # seconds since the epoch that time 0 stands for
    pools: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # type -> (t, samples/s)
    loss: list[tuple[float, float]] = field(default_factory=list)  # (t, training loss)
    steps: list[tuple[float, int]] = field(default_factory=list)  # (t, step)
    markers: list[Marker] = field(default_factory=list)  # sorted by time


def parse_time(value: str | None) -> float | None:
    """An RFC 3339 time of the API (``2026-11-30T13:40:02Z``, or with fractions) in seconds, or None."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def membership_changes(snapshots: Sequence[Snapshot]) -> list[tuple[float, str]]:
    """(time, label) where the membership epoch first shows a new value: the world re-formed."""
    out: list[tuple[float, str]] = []
    last: int | None = None
    for snap in sorted(snapshots, key=lambda s: s.time):
        mem = snap.status.get("membership") or {}
        epoch = mem.get("epoch")
        if epoch is None or epoch == last:
            continue
        world = mem.get("world") or []
        if not world:  # before the first world forms, and once the job ended: no change to show
            continue
        counts: dict[str, int] = {}
        for m in world:
            counts[m["type"]] = counts.get(m["type"], 0) + 1
        mix = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
        out.append((snap.time, f"world {epoch}: {len(world)} workers" + (f" ({mix})" if mix else "")))
        last = epoch
    return out


def event_occurrences(observed: Iterable[Mapping[str, Any]]) -> list[tuple[float, str, str]]:
    """(time, reason, message) for each occurrence seen: every (object, count) once, at its last time."""
    seen: dict[tuple[str, int], tuple[float, str, str]] = {}
    for ev in observed:
        meta = ev.get("metadata") or {}
        count = int(ev.get("count") or 1)
        key = (str(meta.get("uid") or meta.get("name")), count)
        when = parse_time(ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp"))
        if when is None or key in seen:
            continue
        seen[key] = (when, str(ev.get("reason", "")), str(ev.get("message", "")))
    return sorted(seen.values())


def build(
    snapshots: Sequence[Snapshot],
    events: Iterable[Mapping[str, Any]],
    progress: Sequence[Mapping[str, Any]],
    actions: Sequence[Action],
    start: float,
) -> Timeline:
    """The series and markers of a demo run; times become seconds since ``start``."""
    tl = Timeline(start=start)
    # In time order; steps replayed after a restore from a checkpoint show as they happen.
    for rec in sorted(progress, key=lambda r: float(r["time"])):
        t = float(rec["time"]) - start
        tl.steps.append((t, int(rec["step"])))
        tl.loss.append((t, float(rec["loss"])))
        for pool, sps in (rec.get("pools") or {}).items():
            tl.pools.setdefault(pool, []).append((t, float(sps)))
    markers = [Marker(a.time - start, ACTION, a.label) for a in actions]
    markers += [Marker(t - start, MEMBERSHIP, label) for t, label in membership_changes(snapshots)]
    markers += [
        Marker(t - start, EVENT, f"{reason}: {message}")
        for t, reason, message in event_occurrences(events)
        if reason not in COVERED_REASONS and t >= start - 1  # Event times are whole seconds
    ]
    tl.markers.extend(sorted(markers, key=lambda m: (m.time, m.kind, m.label)))
    return tl


def break_gaps(points: Sequence[tuple[float, float]], max_gap: float) -> list[tuple[float, float]]:
    """The points with a NaN between two more than ``max_gap`` seconds apart: no line across a pause."""
    out: list[tuple[float, float]] = []
    for i, (t, v) in enumerate(points):
        if i and t - points[i - 1][0] > max_gap:
            out.append(((t + points[i - 1][0]) / 2, math.nan))
        out.append((t, v))
    return out


def smooth(points: Sequence[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """A trailing mean over ``window`` points (per-step rates are noisy on a shared CPU)."""
    out: list[tuple[float, float]] = []
    for i, (t, _) in enumerate(points):
        chunk = points[max(0, i - window + 1) : i + 1]
        out.append((t, sum(v for _, v in chunk) / len(chunk)))
    return out


def progress_line(status: Mapping[str, Any], last: Mapping[str, Any] | None, steps: int) -> str:
    """One live line: phase, step, samples/s per pool, loss, workers."""
    w = status.get("workers") or {}
    mem = status.get("membership") or {}
    parts = [f"{status.get('phase', '-'):<9}"]
    if last:
        pools = " ".join(f"{t} {v:5.1f}/s" for t, v in sorted((last.get("pools") or {}).items()))
        parts += [f"step {last['step']:>4}/{steps}", f"loss {last['loss']:.3f}", pools]
    else:
        parts.append(f"step    -/{steps}")
    parts.append(f"workers {w.get('ready', 0)}/{w.get('desired', 0)} (world {mem.get('epoch', 0)})")
    if status.get("restarts"):
        parts.append(f"restarts {status['restarts']}")
    if status.get("waitingReason") and status.get("phase") != "Running":
        parts.append(f"waiting: {status['waitingReason']}")
    return "  ".join(parts)
