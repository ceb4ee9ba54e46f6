"""Pricing: step 3 of ``plan``, shadow prices of accelerators and the LP's target counts per job and type.

Shadow prices are computed from the Lagrangian dual of the aggregated throughput LP of the admitted jobs
(projected subgradient, fixed round count), twice: with one capacity row per accelerator type, and with
one per type and worker size (:func:`solve_prices`).  :func:`price` computes both and uses the per-type one;
:func:`use` switches the state to a pricing (its prices, and each option's target count).
"""

from __future__ import annotations

from .state import INF, OptionState, Pricing, State

__all__ = ["price", "solve_prices", "use"]

_PRICE_ROUNDS = 200

# An admitted job's row of the LP: (min, max, [(type, per worker, throughput, cap, option)]), net of kept workers.
_Row = tuple[int, int, list[tuple[str, int, float, int, OptionState]]]


def price(st: State) -> None:
    """Compute both pricings (see ``solve_prices``) and use the per-type one."""
    st.pricings = [solve_prices(st, by_size=False), solve_prices(st, by_size=True)]
    use(st, st.pricings[0])


def use(st: State, pricing: Pricing) -> None:
    st.prices = pricing[0]
    for j in st.jobs:
        for o in j.opts:
            o.target = pricing[1].get((j.idx, o.rank), -1)


def solve_prices(st: State, by_size: bool) -> Pricing:
    """Shadow prices of accelerators, from the dual of the aggregated throughput LP, and its primal.

    The LP: maximise sum r[j,t] x[j,t] subject to, per type t, sum_j p[j,t] x[j,t] <= free
    accelerators of t (``by_size``: one such row per type t and worker size q that admitted jobs ask of
    t, over the options whose worker size p is a multiple of q, against the accelerators workers of
    size q can use: sum over nodes of floor(free / q) * q, since an 8-accelerator worker needs a node
    with 8 free and the 2 free on a half-used node are no use to it); and, per admitted job,
    min <= sum_t x[j,t] <= max and x[j,t] <= cap[j,t] (all net of kept workers).  Its Lagrangian dual over the capacity rows is minimised by projected subgradient descent
    over a fixed number of rounds (the best iterate wins).  The price of one accelerator for a worker of
    size p on type t is the sum of the multipliers of the rows it is in; a job's "reduced value" of a
    worker of type t is then r[j,t] - price * p: what it gains minus what the accelerators are worth to
    others.
    """
    free_by_type = _free_by_type(st)
    rows, sizes = _rows(st, free_by_type)
    if not rows:
        return {}, {}
    # Capacity rows (type, size q), and per (type, worker size p) the rows such a worker is in.
    classes = sizes if by_size else {t: {1} for t in sizes}
    keys = sorted((t, q) for t, qs in classes.items() for q in qs)
    kix = {k: i for i, k in enumerate(keys)}
    cap = [float(sum(f // q * q for f in free_by_type[t])) or 1.0 for t, q in keys]
    member = {
        (t, p): [kix[(t, q)] for q in sorted(classes[t]) if p % q == 0] for t, ps in sizes.items() for p in ps
    }
    scale = [1e-6] * len(keys)
    for _, _, opts in rows:
        for t, p, r, _, _ in opts:
            for i in member[(t, p)]:
                scale[i] = max(scale[i], r / p)
    takes, rounds, best = _descend(rows, cap, member, scale)
    prices = {tp: sum(best[i] for i in rs) for tp, rs in member.items()}
    targets: dict[tuple[int, int], int] = {}
    for j in st.jobs:
        for o in j.opts:
            if id(o) in takes:
                kept = o.count - sum(o.new_nodes.values())
                targets[(j.idx, o.rank)] = kept + int(takes[id(o)] / rounds + 0.5)
    return prices, targets


def _free_by_type(st: State) -> dict[str, list[int]]:
    # Free accelerators per node, with the workers placed in this round lifted (reseat re-places them).
    free_by_type: dict[str, list[int]] = {}
    for pool in st.pools:
        lst = free_by_type.setdefault(pool.accelerator, [])
        for i in pool.nodes:
            n = st.nodes[i]
            f = n.acc + n.new_acc
            if f > 0:
                lst.append(f)
    return free_by_type


def _rows(st: State, free_by_type: dict[str, list[int]]) -> tuple[list[_Row], dict[str, set[int]]]:
    """The LP's rows of the admitted jobs, and per type the worker sizes they ask of it."""
    rows: list[_Row] = []
    sizes: dict[str, set[int]] = {}
    for j in st.jobs:
        if not j.admitted:
            continue
        kept = sum(j.kept.values())
        hi = j.max - kept
        if hi <= 0:
            continue
        lo = max(0, j.min - kept)
        opts: list[tuple[str, int, float, int, OptionState]] = []
        for o in j.opts:
            c = o.cap - (o.count - sum(o.new_nodes.values()))
            if o.pool_set and free_by_type.get(o.type) and c > 0:
                opts.append((o.type, o.p, o.r, c, o))
                sizes.setdefault(o.type, set()).add(o.p)
        if opts:
            rows.append((lo, hi, opts))
    return rows, sizes


def _descend(
    rows: list[_Row], cap: list[float], member: dict[tuple[str, int], list[int]], scale: list[float]
) -> tuple[dict[int, float], int, list[float]]:
    """Projected subgradient descent on the Lagrangian dual over the capacity rows ``cap``.

    Returns the workers each option (by ``id``) took, summed over the rounds; the number of rounds; and
    the multipliers of the best (lowest dual) round.
    """
    # Primal recovery: the average over the rounds of each round's Lagrangian maximiser converges to a
    # primal optimum (ergodic averaging); it breaks the ties that exact prices leave at the margin.
    takes: dict[int, float] = {}
    rounds = 0
    lam = [0.0] * len(cap)
    best = (INF, list(lam))
    stall = 0
    for k in range(_PRICE_ROUNDS):
        dual = sum(c * x for c, x in zip(cap, lam, strict=True))
        dem = [0.0] * len(cap)
        unit = {tp: sum(lam[i] for i in rs) for tp, rs in member.items()}
        for lo, hi, opts in rows:
            ranked = sorted(opts, key=lambda o: o[2] - unit[(o[0], o[1])] * o[1], reverse=True)
            tot = 0
            for t, p, r, c, ref in ranked:
                if tot >= hi:
                    break
                rho = r - unit[(t, p)] * p
                if rho > 0:
                    take = min(c, hi - tot)
                elif tot < lo:
                    take = min(c, lo - tot)
                else:
                    break
                dual += take * rho
                for i in member[(t, p)]:
                    dem[i] += take * p
                tot += take
                takes[id(ref)] = takes.get(id(ref), 0.0) + take
        rounds += 1
        if dual < best[0] - 1e-12:
            best = (dual, list(lam))
            stall = 0
        else:
            stall += 1
            if stall > 40:
                break
        step = 0.5 / (k + 1) ** 0.5
        for i in range(len(cap)):
            lam[i] = max(0.0, lam[i] - step * scale[i] * (cap[i] - dem[i]) / cap[i])
    return takes, rounds, best[1]
