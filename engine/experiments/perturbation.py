"""Finite perturbations of the initialisation along singular directions (finding 4).

For a direction v_i and a stimulus eps, retrain from ``theta_0 + eps v_i`` (same batches,
schedule and optimizer) and compare ``delta = theta_T(eps) - theta_T`` with the Jacobian's linear
prediction ``J (eps v_i) = s_i eps u_i``:

* ``response``   = u_i . delta           (the linear prediction is s_i eps)
* ``rel_error``  = |response - s_i eps| / (s_i eps)
* ``complement`` = || delta - response u_i ||  (0 for a linear response)
* the test loss and accuracy of theta_T(eps).

Directions: an index, ``"top"`` (v_1), ``"bulk"`` (the middle of the bulk range of the region
rule, skipping directions with s = 1 to machine precision, which training never touches:
:func:`engine.regions.bulk_middle`), ``"bottom"`` (v_P). Stimuli: ``n_eps`` points
log-spaced over [eps_min, eps_max].

Arrays: ``analyses/perturbation.npy`` (directions x stimuli x [eps, response, linear,
complement, test_loss, test_acc]).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import regions
from ..sections import PerturbationConfig
from .common import Context, Partial, check_stop, evaluate, progress, retrain


def resolve_direction(d, S: np.ndarray, tol: float) -> int:
    P = len(S)
    if d == "top":
        return 0
    if d == "bottom":
        return P - 1
    if d == "bulk":
        return regions.bulk_middle(S, tol)
    if d >= P:
        raise ValueError(f"analysis.perturbation.directions: index {d} is out of range "
                         f"(P = {P})")
    return int(d)


def eps_grid(cfg: PerturbationConfig) -> np.ndarray:
    if cfg.n_eps == 1:
        return np.array([cfg.eps_min])
    return np.geomspace(cfg.eps_min, cfg.eps_max, cfg.n_eps)


def response(problem, theta0: torch.Tensor, thetaT: torch.Tensor, u: np.ndarray,
             v: np.ndarray, s: float, eps: float, should_stop=None) -> dict:
    """Retrain from theta0 + eps v and measure the response along u (see the module doc)."""
    dt = theta0.dtype
    vt = torch.as_tensor(v, dtype=dt, device=theta0.device)
    th = retrain(problem, theta0 + eps * vt, should_stop)
    delta = th.detach().cpu().numpy().astype(np.float64) - \
        thetaT.detach().cpu().numpy().astype(np.float64)
    r = float(u @ delta)
    comp = float(np.linalg.norm(delta - r * u))
    ev = evaluate(problem, th, "test")
    lin = s * eps
    return {"eps": float(eps), "response": r, "linear": lin,
            "rel_error": abs(r - lin) / abs(lin) if lin else None,
            "complement": comp, "test_loss": ev["loss"], "test_acc": ev["acc"]}


def run(ctx: Context, cfg: PerturbationConfig) -> dict:
    S, U, Vh = ctx.S, ctx.U, ctx.Vh
    grid = eps_grid(cfg)
    dirs = [resolve_direction(d, S, ctx.tol) for d in cfg.directions]
    problem, theta0, thetaT = ctx.problem, ctx.theta0, ctx.thetaT
    if cfg.precision == "float64" and theta0.dtype != torch.float64:
        problem = problem.astype(torch.float64)
        theta0 = theta0.to(torch.float64)
        thetaT = retrain(problem, theta0, ctx.should_stop)  # the float64 reference theta_T
    base = evaluate(problem, thetaT, "test")
    part = Partial(ctx, "perturbation", cfg)
    out, table = [], []
    total, done = len(dirs) * len(grid), 0
    progress(ctx, "perturbation", 0, total, "runs")
    for name, i in zip(cfg.directions, dirs):
        rows = []
        for eps in grid:
            key = f"{i}:{eps!r}"
            row = part.get(key)
            if row is None:
                check_stop(ctx)
                row = response(problem, theta0, thetaT, U[:, i], Vh[i], float(S[i]), float(eps),
                               ctx.should_stop)
                part.put(key, row)
            rows.append(row)
            done += 1
            progress(ctx, "perturbation", done, total, "runs")
        out.append({"direction": name, "index": i, "s": float(S[i]),
                    "exact_unity": bool(abs(S[i] - 1.0) <= regions.EXACT),
                    "align": float(U[:, i] @ Vh[i]), "rows": rows,
                    "linear_up_to": _linear_up_to(rows)})
        table.append([[r["eps"], r["response"], r["linear"], r["complement"], r["test_loss"],
                       r["test_acc"]] for r in rows])
    ctx.write_npy("analyses/perturbation.npy", np.asarray(table, dtype=np.float64))
    part.done()
    return {"eps": [float(e) for e in grid], "precision": cfg.precision,
            "base_test_loss": base["loss"], "base_test_acc": base["acc"], "directions": out}


def _linear_up_to(rows: list[dict], tol: float = 0.1) -> float | None:
    """The largest stimulus up to which every response is within ``tol`` (relative) of the
    linear prediction (None if even the smallest is not)."""
    best = None
    for r in rows:
        if r["rel_error"] is None or r["rel_error"] > tol:
            break
        best = r["eps"]
    return best
