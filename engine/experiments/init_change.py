"""How far training moves the parameters along each right singular direction (finding 6).

``c_i = |v_i . (theta_T - theta_0)|`` for every i (float64), i.e. ``|V^T (theta_T - theta_0)|``.
The paper finds it smallest (~1e-4) in the bulk: training barely moves the parameters along the
directions it carries through unchanged.

Array: ``analyses/init_change.npy`` ((P,)).
"""

from __future__ import annotations

import numpy as np

from .. import regions
from ..sections import InitChangeConfig
from .common import Context, progress, region_summary


def projections(Vh: np.ndarray, theta0, thetaT) -> np.ndarray:
    """``|Vh @ (theta_T - theta_0)|`` in float64, shape (P,)."""
    d = np.asarray(_np(thetaT), dtype=np.float64) - np.asarray(_np(theta0), dtype=np.float64)
    return np.abs(Vh @ d)


def _np(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else t


def run(ctx: Context, cfg: InitChangeConfig) -> dict:
    S = ctx.S
    progress(ctx, "init_change", 0, 1)
    c = projections(ctx.Vh, ctx.theta0, ctx.thetaT)
    ctx.write_npy("analyses/init_change.npy", c)
    total = float(np.linalg.norm(_np(ctx.thetaT).astype(np.float64) -
                                 _np(ctx.theta0).astype(np.float64)))
    per = region_summary(c, S, ctx.tol)
    m = regions.masks(S, ctx.tol)
    share = {k: float(np.sum(c[v] ** 2) / max(total ** 2, 1e-300)) for k, v in m.items()}
    progress(ctx, "init_change", 1, 1)
    return {"tol": ctx.tol, "norm_total": total, "regions": per,
            "energy_share": share,  # fraction of ||theta_T - theta_0||^2 in each region
            "min": float(c.min()), "argmin": int(c.argmin()),
            "max": float(c.max()), "argmax": int(c.argmax())}
