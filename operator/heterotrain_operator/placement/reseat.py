"""Reseat: step 4 of ``plan``, re-placing this round's workers on the types the LP prices favour.

:func:`reseat` tries the candidates (per-type prices, in four orders; per-size prices, the LP's target
counts packed first by :func:`_fill_targets`), each followed by growth (:func:`.packing.grow`) and local
improvement (:func:`.improvement.improve`), and keeps the one with the most total throughput.
"""

from __future__ import annotations

from .improvement import improve
from .packing import fill, grow, lift_new, new_placement, restore_new, throughput
from .pricing import use
from .relocation import fill_mins
from .state import EPS, State

__all__ = ["reseat"]


def reseat(st: State) -> None:
    """Re-place the workers placed in this round on the types the LP prices favour, then grow and improve.

    Admission (priority order, fastest type first) decided who runs; this decides where their workers
    go.  Two candidates start from the same admitted set, and the one with more total throughput wins
    (the first on a tie):

    - per-type prices: each job's min workers are placed up to its LP targets, then by reduced value.
      Bin packing is not exact, so four orders are tried until one fits every job's min: least flexible
      jobs first, then largest workers first; then both by value alone.
    - per-size prices (see ``solve_prices``): every job's LP target counts are placed at once, largest
      workers first (first-fit decreasing), then whatever mins are still short.  Growth placed after
      the mins of small workers finds the whole nodes large workers need already split; this packs the
      targets the way a bin packer would.

    If neither fits every min, the admission placement is kept.
    """
    if not st.pricings or not st.pricings[0][0]:
        grow(st)
        improve(st)
        return
    start = new_placement(st)
    best: tuple[float, int, list[tuple[int, str, dict[int, int]]]] | None = None
    last = -1  # the candidate whose placement is in place now
    for k, pricing in enumerate(st.pricings):
        use(st, pricing)
        orders = ((True, False), (True, True), (False, False), (False, True)) if k == 0 else ((True, True),)
        for targets, by_size in orders:
            lift_new(st, st.jobs)
            last = -1
            if k == 1:
                _fill_targets(st)
            if fill_mins(st, st.jobs, targets, by_size):
                grow(st)
                improve(st)
                last = k
                value = throughput(st)
                if best is None or value > best[0] + EPS:
                    best = (value, k, new_placement(st))
                break
    if best is None:
        use(st, st.pricings[0])
        restore_new(st, start)
        grow(st)
        improve(st)
    else:
        use(st, st.pricings[best[1]])
        if best[1] != last:
            restore_new(st, best[2])


def _fill_targets(st: State) -> None:
    """Place every admitted job's LP target counts, largest workers first (first-fit decreasing)."""
    wants = sorted(
        (
            (-o.p, j.rank, o.rank, j.idx, k)
            for j in st.jobs
            if j.admitted
            for k, o in enumerate(j.opts)
            if o.target > o.count
        ),
    )
    for _, _, _, jidx, k in wants:
        j = st.jobs[jidx]
        o = j.opts[k]
        if j.total < j.max:
            fill(st, j, min(o.target - o.count, j.max - j.total), opts=(o,))
