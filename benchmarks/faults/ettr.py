"""Effective training time ratio (ETTR) at Llama 3's failure rate, from measured recovery costs (pure).

Model (written into ``faults.json`` under ``ettr_model``):

* failures arrive as a Poisson process at Llama 3's rate of unexpected interruptions on 16,384 H100s:
  419 in a 54-day snapshot (one every 3.1 h);
* each failure is of one of the measured kinds, in the proportions of Llama 3's root causes
  (:data:`LLAMA3_MIX`: faulty GPUs, HBM3 and the other hardware lose their node; software bugs kill the
  process; network switches and cables hang a collective; host maintenance drains the node);
* a failure costs the measured ``recovery_seconds`` (fault to the next committed step, detection
  included) plus, when the recovery reloads the last checkpoint (``steps_lost`` > 0 was measured), the
  work since that checkpoint: half a checkpoint interval on average, plus the pause of a second
  re-formation when the worker rejoins the world (``rejoin_pause_seconds``, where measured);
* every checkpoint pauses training for ``checkpoint_pause_seconds``.

ETTR = productive time / wall time, simulated over many 54-day runs (seeded) and given in closed form.
The costs are measured on a small world on one machine; at 16,384 ranks a re-formation takes longer, so
the figures are an upper bound of what the measured mechanisms allow, for both systems alike.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LLAMA3_ACCELERATORS = 16384
LLAMA3_UNEXPECTED_INTERRUPTIONS = 419
LLAMA3_DAYS = 54
#: Llama 3's root causes (share of the unexpected interruptions) and the measured kind each one is.
LLAMA3_MIX: dict[str, tuple[float, str]] = {
    "faulty GPU": (0.301, "node_notready"),
    "GPU HBM3 memory": (0.172, "node_notready"),
    "software bug": (0.129, "process_kill"),
    "network switch or cable": (0.084, "hang"),
    "host maintenance": (0.076, "drain"),
    "other (SRAM, GPU system processor, NIC, NCCL watchdog, SDC, power, ...)": (0.238, "node_notready"),
}


@dataclass(frozen=True)
class Model:
    failures_per_hour: float = LLAMA3_UNEXPECTED_INTERRUPTIONS / (LLAMA3_DAYS * 24)
    days: float = LLAMA3_DAYS
    checkpoint_interval_seconds: float = 1800.0
    checkpoint_pause_seconds: float = 2.0
    runs: int = 200
    seed: int = 0

    def describe(self, costs: Mapping[str, float]) -> dict[str, Any]:
        return {
            "failure_rate": (
                f"{LLAMA3_UNEXPECTED_INTERRUPTIONS} unexpected interruptions in {LLAMA3_DAYS} days on "
                f"{LLAMA3_ACCELERATORS} H100 (Llama 3): {self.failures_per_hour:.4f} per hour"
            ),
            "failures_per_hour": round(self.failures_per_hour, 5),
            "mix": {cause: {"share": share, "kind": kind} for cause, (share, kind) in LLAMA3_MIX.items()},
            "cost_per_failure": (
                "recovery_seconds of the kind (fault to the next committed step), plus half a checkpoint "
                "interval when the recovery reloads the last checkpoint (steps_lost > 0 measured), plus "
                "the pause when the worker rejoins (rejoin_pause_seconds, where measured)"
            ),
            "cost_seconds_by_kind": {k: round(v, 3) for k, v in sorted(costs.items())},
            "checkpoint_interval_seconds": self.checkpoint_interval_seconds,
            "checkpoint_pause_seconds": self.checkpoint_pause_seconds,
            "simulation": f"{self.runs} runs of {self.days} days, Poisson arrivals, seed {self.seed}",
            "limits": (
                "costs measured on 3 workers on one machine; a world of 16,384 ranks re-forms slower, for "
                "both systems alike; partial throughput while a replacement joins is not counted"
            ),
        }


def cost_per_kind(kinds: Mapping[str, Mapping[str, Any]], model: Model) -> dict[str, float]:
    """Seconds of training lost by one failure of each measured kind."""
    out = {}
    for kind, m in kinds.items():
        if m.get("recovery_seconds") is None:
            continue
        replay = model.checkpoint_interval_seconds / 2 if (m.get("steps_lost") or 0) > 0 else 0.0
        # a worker that comes back (restarted in place, or its replacement) costs a second re-formation
        out[kind] = float(m["recovery_seconds"]) + replay + float(m.get("rejoin_pause_seconds") or 0.0)
    return out


def closed_form(costs: Mapping[str, float], model: Model) -> float:
    """ETTR = 1 / (1 + failures per second x mean cost + checkpoint pause / interval)."""
    mean = sum(share * costs[kind] for share, kind in LLAMA3_MIX.values())
    per_second = model.failures_per_hour / 3600
    return 1.0 / (
        1.0 + per_second * mean + model.checkpoint_pause_seconds / model.checkpoint_interval_seconds
    )


def simulate(costs: Mapping[str, float], model: Model) -> float:
    """The mean ETTR over ``model.runs`` simulated runs of ``model.days`` of productive training."""
    rng = random.Random(model.seed)
    kinds = [kind for _, kind in LLAMA3_MIX.values()]
    weights = [share for share, _ in LLAMA3_MIX.values()]
    productive = model.days * 86400
    ratios = []
    for _ in range(model.runs):
        lost, t = 0.0, 0.0
        while True:
            t += rng.expovariate(model.failures_per_hour / 3600)
            if t >= productive:
                break
            lost += costs[rng.choices(kinds, weights)[0]]
        pauses = math.floor(productive / model.checkpoint_interval_seconds) * model.checkpoint_pause_seconds
        ratios.append(productive / (productive + lost + pauses))
    return sum(ratios) / len(ratios)


def ettr(
    kinds: Mapping[str, Mapping[str, Any]], model: Model, fallback: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ETTR of a system from its measured kinds; ``fallback`` names, for a kind it cannot handle, the
    measured kind that stands for it (torchrun in one agent: a lost node is a hang to the others)."""
    costs = cost_per_kind(kinds, model)
    for kind, stand_in in (fallback or {}).items():
        if kind not in costs and stand_in in costs:
            costs[kind] = costs[stand_in]
    missing = sorted({kind for _, kind in LLAMA3_MIX.values()} - set(costs))
    if missing:
        return {"ettr": None, "missing": missing, "costs": costs}
    return {
        "ettr": round(simulate(costs, model), 5),
        "closed_form": round(closed_form(costs, model), 5),
        "costs": costs,
    }
