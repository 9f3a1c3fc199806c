"""The matfree stage (``spectrum.method = "matfree"``): the top k singular values of J (scipy
svds on J as an operator) and the bulk-size estimates (stochastic Lanczos quadrature), J never
formed (:mod:`engine.matfree`); written to matfree.json."""

from __future__ import annotations

import dataclasses
import time

import torch

from .. import matfree
from . import RunContext


def run(ctx: RunContext) -> None:
    sp, P, cfg = ctx.cfg.spectrum, ctx.layout.size, ctx.cfg
    dt = torch.float64 if sp.matfree_dtype == "float64" else torch.float32
    phase, last = ["checkpoints"], [0.0]

    def on_product(kind: str, k: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 1.0:
            last[0] = now
            st = op.stats
            ctx.emit("matfree_progress", phase=phase[0], jvp=st.jvp_vectors,
                     vjp=st.vjp_vectors)

    op = matfree.TrainingJacobian(ctx.problem, ctx.theta0, should_stop=ctx.should_stop,
                                  dtype=dt, on_product=on_product)
    k = min(sp.k, P - 1)
    t0 = time.perf_counter()
    phase[0] = "top-k"
    how: dict = {}
    try:
        top, V = matfree.top_singular_values(op, k, solver=sp.solver, seed=cfg.seed,
                                             tol=sp.top_tol, vectors=True, info=how)
    except Exception:  # a stop inside PROPACK's Fortran comes out as a SystemError
        if ctx.should_stop():
            raise KeyboardInterrupt from None
        raise
    if how.get("fallback"):
        ctx.emit("warning", message=f"matfree: {how['fallback']}; computed again by "
                                    f"{how['solver']}")
    t_top = time.perf_counter() - t0
    top_products = (op.stats.jvp_vectors, op.stats.vjp_vectors)
    phase[0] = "bulk"
    density: dict = {}
    est = matfree.bulk_count(op, sp.count_tols, sp.probes, sp.lanczos_steps,
                             seed=cfg.seed, deflate=(top, V) if sp.deflate else None,
                             density=density)
    del V
    result = {
        "P": P, "dtype": sp.matfree_dtype, "segment": op.segment, "steps": op.steps,
        "top": {"k": k, "solver": how["solver"], "orthogonality": how["orthogonality"],
                **({"fallback": how["fallback"]} if how.get("fallback") else {}),
                "tol": sp.top_tol, "s": top.tolist(),
                "seconds": round(t_top, 3),
                "jvp_vectors": top_products[0], "vjp_vectors": top_products[1]},
        "bulk": {"probes": sp.probes, "lanczos_steps": sp.lanczos_steps,
                 "deflated": k if sp.deflate else 0,
                 "seconds": round(time.perf_counter() - t0 - t_top, 3),
                 "estimates": [e.to_json() for e in est], "density": density},
        "stats": dataclasses.asdict(op.stats),
        "memory": ctx.plan.matfree,
    }
    ctx.session.write_json("matfree.json", result, stage="matfree")
    ctx.emit("matfree_done", s_max=float(top[0]), k=k,
             bulk=[{"tol": e.tol, "count": e.count, "lower": e.lower, "upper": e.upper}
                   for e in est])
