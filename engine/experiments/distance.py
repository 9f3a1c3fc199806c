"""Distance from unity and alignment (paper findings 2 and 3), and the region sensitivity table.

Per index i (singular values descending): ``|s_i - 1|`` and the alignment ``a_i = u_i . v_i``
(``svd/alignment.npy``). Summarised per region of the rule in :mod:`engine.regions`, per tenth of
the index range, and per subspace (cosines of the principal angles between span(U_region) and
span(V_region), the measure that stays well posed inside the near-degenerate bulk).

Arrays: ``analyses/distance_abs.npy`` (|s - 1|, (P,)), ``analyses/distance_alignment.npy``
(u_i . v_i, (P,)).
"""

from __future__ import annotations

import numpy as np

from .. import regions
from ..sections import DistanceConfig
from ..spectrum import alignment as alignment_of
from ..subspace import cosines
from .common import Context, progress


THRESHOLDS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)


def run(ctx: Context, cfg: DistanceConfig) -> dict:
    S = ctx.S
    P = len(S)
    dist = np.abs(S - 1.0)
    if ctx.session.has("svd/alignment.npy"):
        a = ctx.session.load_npy("svd/alignment.npy").astype(np.float64)
    else:
        a = alignment_of(ctx.U, ctx.Vh)
    ctx.write_npy("analyses/distance_abs.npy", dist)
    ctx.write_npy("analyses/distance_alignment.npy", a)

    sl = regions.slices(S, ctx.tol)
    per_region = {}
    progress(ctx, "distance", 0, len(regions.REGIONS), "regions")
    for name in regions.REGIONS:
        r = sl[name]
        n = r.stop - r.start
        row = {"count": n, "start": r.start, "stop": r.stop,
               "dist_median": float(np.median(dist[r])) if n else None,
               "dist_min": float(dist[r].min()) if n else None,
               "align_mean": float(a[r].mean()) if n else None,
               "align_median": float(np.median(a[r])) if n else None,
               "align_min": float(a[r].min()) if n else None}
        if cfg.subspaces and n:
            cos = cosines(ctx.U[:, r].T @ ctx.Vh[r].T)
            row["subspace_cos_mean"] = float(cos.mean())
            row["subspace_cos_min"] = float(cos.min())
        per_region[name] = row
        progress(ctx, "distance", len(per_region), len(regions.REGIONS), "regions")

    deciles = []
    edges = np.linspace(0, P, 11).round().astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        deciles.append({"start": int(lo), "stop": int(hi), "s_max": float(S[lo]),
                        "s_min": float(S[hi - 1]),
                        "dist_median": float(np.median(dist[lo:hi])),
                        "align_mean": float(a[lo:hi].mean())})

    tail_start = int(round(P * (1 - cfg.tail_fraction)))
    tail = a[tail_start:]
    chaotic = a[sl["chaotic"]]
    rows = regions.sensitivity_table(S)
    return {
        "P": P,
        "rule": regions.rule_text(ctx.tol),
        "tol": ctx.tol,
        "min_dist": float(dist.min()) if P else None,
        "argmin_dist": int(dist.argmin()) if P else None,
        "count_below": {f"{t:g}": int(np.sum(dist < t)) for t in THRESHOLDS},
        "regions": per_region,
        "deciles": deciles,
        "tail": {"start": tail_start, "count": int(tail.size),
                 "align_mean": float(tail.mean()) if tail.size else None,
                 "align_abs_mean": float(np.abs(tail).mean()) if tail.size else None,
                 "fraction_within_0.2": float(np.mean(np.abs(tail) <= 0.2)) if tail.size
                 else None},
        "chaotic_fraction_align_0.8_0.95": float(np.mean((chaotic >= 0.8) & (chaotic <= 0.95)))
        if chaotic.size else None,
        "sensitivity": rows,
        "plateau_between": regions.plateau_between(rows),
    }

