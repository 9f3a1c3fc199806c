"""Matrix-free spectra (engine/matfree.py) against the exact SVD, and their reach.

    python benchmarks/matfree.py agree SESSION [--k 50] [--probes 8] [--steps 60]
                                       [--tols 1e-3,1e-2,1e-1] [--no-deflate]
        SESSION: a finished exact session (e.g. sessions/paper-digits-sgd). Rebuilds its
        training in float64, computes the top k singular values (and vectors) with PROPACK
        through J v / J^T u products and the bulk-size estimates for each tau (the top k
        deflated unless --no-deflate), and prints them against svd/S.npy: the largest relative
        error of the top k, and each estimate with its error bar next to the exact count.

    python benchmarks/matfree.py resolution SESSION [--steps 60,150,300] [--deflate 0,50,500]
        How many Lanczos steps the bulk-size bar needs, on the session's stored J (J^T J as an
        explicit matrix, so thousands of steps cost seconds, not training runs): for each
        number of top singular vectors deflated (exact, from the SVD) and each step count, the
        bar of 8 probes next to the exact count for tau in {1e-3, 1e-2, 1e-1}.

    python benchmarks/matfree.py pairs SESSION [--k 5,10,20,50,100] [--tol 1e-4]
        How many J v / J^T u products scipy's svds takes for the top k of the session's stored
        J, per solver (counted on StoredJacobian: seconds, not training runs): the figures of
        engine/matfree.SOLVER_PAIRS, which the --plan time estimate uses.

    python benchmarks/matfree.py solvers [--preset quick] [--k 10]
        The top k by ARPACK, PROPACK and LOBPCG on a small run (P = 610, float64): seconds,
        products and the largest relative error of each against the exact SVD.

    python benchmarks/matfree.py reverse [--preset mlp1m-digits28-matfree] [--blocks 1,6]
        J^T u by its two passes, side by side in one run: the replay (the update's transpose
        and the fused kernel's Hessian-vector products) and the checkpointed autograd pass,
        for blocks of K vectors, with J v of the same block for scale; seconds and the largest
        relative difference of the two results.

    python benchmarks/matfree.py reach [--preset mlp1m-digits28-matfree]
        Runs the preset (spectrum.method = "matfree") as a session in a temporary folder and
        prints P, the stage times and the results.

Times are wall-clock seconds on this machine (say which when quoting them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import config, jacobian, regions, train  # noqa: E402
from engine.build import build  # noqa: E402
from engine.matfree import (StoredJacobian, TrainingJacobian, bulk_count,  # noqa: E402
                            top_singular_values)
from engine.session import Session  # noqa: E402


def operator_of(cfg, dtype=torch.float64) -> TrainingJacobian:
    """J of ``cfg`` as an operator on the CPU: the training problem and its products in
    ``dtype``, with the fused kernel where it applies (``jacobian.kernel = "auto"``)."""
    name = "float64" if dtype == torch.float64 else "float32"
    b = build(replace(cfg, dtype=name, jacobian=replace(cfg.jacobian, kernel="auto")), "cpu")
    return TrainingJacobian(b.problem, b.theta0, dtype=dtype)


def agree(a) -> None:
    s = Session(a.session)
    S = s.load_npy("svd/S.npy").astype(np.float64)
    op = operator_of(s.config())
    print(f"{s.path}: P = {op.P}, {op.steps} steps, {os.cpu_count()} cores; exact S from "
          f"svd/S.npy ({s.config().dtype} J)")
    t0 = time.perf_counter()
    top, V = top_singular_values(op, a.k, solver="propack", vectors=True)
    t_top = time.perf_counter() - t0
    rel = np.abs(top - S[: a.k]) / S[: a.k]
    print(f"top {a.k} (PROPACK): {t_top:.0f} s, {op.stats.jvp_vectors} J v + "
          f"{op.stats.vjp_vectors} J^T u; max relative error {rel.max():.2e} "
          f"(s_1 {top[0]:.7g} vs {S[0]:.7g}; s_{a.k} {top[-1]:.7g} vs {S[a.k - 1]:.7g})")
    t0 = time.perf_counter()
    tols = [float(x) for x in a.tols.split(",")]
    est = bulk_count(op, tols, probes=a.probes, steps=a.steps,
                     deflate=(top, V) if a.deflate else None)
    print(f"bulk ({a.probes} probes x {a.steps} Lanczos steps, "
          f"{f'top {a.k} deflated' if a.deflate else 'no deflation'}): "
          f"{time.perf_counter() - t0:.0f} s")
    for e in est:
        exact = regions.counts(S, e.tol)["bulk"]
        inside = e.lower <= exact <= e.upper
        print(f"  tau {e.tol:g}: exact {exact}, estimate {e.count:.0f} (s.e. {e.stderr:.0f}), "
              f"error bar [{e.lower:.0f}, {e.upper:.0f}] (quadrature "
              f"[{e.quadrature[0]:.0f}, {e.quadrature[1]:.0f}]): "
              f"{'inside' if inside else 'OUTSIDE'}")


def resolution(a) -> None:
    s = Session(a.session)
    J = s.load_npy("jacobian.npy").astype(np.float64)
    P = J.shape[0]
    _, S, Vt = np.linalg.svd(J)
    stored = StoredJacobian(J)
    tols = (1e-3, 1e-2, 1e-1)
    exact = {t: int(regions.counts(S, t)["bulk"]) for t in tols}
    print(f"{s.path}: P = {P}; exact bulk counts "
          + ", ".join(f"tau {t:g}: {c}" for t, c in exact.items()) + "; 8 probes")
    print("deflated  steps   " + "   ".join(f"tau {t:g}: bar (width)".ljust(28) for t in tols))
    for k in [int(x) for x in a.deflate.split(",")]:
        for steps in [int(x) for x in a.steps.split(",")]:
            d = (S[:k], Vt[:k].T) if k else None
            est = bulk_count(stored, tols, probes=8, steps=steps, deflate=d)
            cells = [f"[{e.lower:.0f}, {e.upper:.0f}] ({e.upper - e.lower:.0f})"
                     + ("" if e.lower <= exact[e.tol] <= e.upper else " OUTSIDE")
                     for e in est]
            print(f"{k:8d}  {steps:5d}   " + "   ".join(c.ljust(28) for c in cells), flush=True)


def pairs(a) -> None:
    import warnings

    s = Session(a.session)
    stored = StoredJacobian(s.load_npy("jacobian.npy"))
    print(f"{s.path}: P = {stored.P}; (J v, J^T u) products for the top k at tol {a.tol:g}")
    for solver in ("propack", "arpack", "lobpcg"):
        row = []
        for k in [int(x) for x in a.k.split(",")]:
            n = [0, 0]

            class Counted(StoredJacobian):
                def matmat(self, V):
                    n[0] += 1 if V.ndim == 1 else V.shape[1]
                    return super().matmat(V)

                def rmatmat(self, U):
                    n[1] += 1 if U.ndim == 1 else U.shape[1]
                    return super().rmatmat(U)

            op = Counted(stored.J)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # LOBPCG's accuracy warnings
                top_singular_values(op, k, solver=solver, tol=a.tol)
            row.append(f"k {k}: {n[0]}/{n[1]}")
        print(f"  {solver:8s} " + ", ".join(row), flush=True)


def solvers(a) -> None:
    cfg = config.load(REPO / "presets" / f"{a.preset}.toml",
                      ["model.hidden=[8]", 'dtype="float64"'])
    op = operator_of(cfg)
    J = jacobian.exact_jacobian(op.problem, op.theta0).numpy()
    S = np.linalg.svd(J, compute_uv=False)
    print(f"{a.preset} with hidden [8]: P = {op.P}, {op.steps} steps, float64")
    for solver in ("arpack", "propack", "lobpcg"):
        op.stats.__init__()
        t0 = time.perf_counter()
        top = top_singular_values(op, a.k, solver=solver)
        rel = np.abs(top - S[: a.k]) / S[: a.k]
        print(f"  {solver:8s} {time.perf_counter() - t0:6.1f} s  {op.stats.jvp_vectors:4d} J v "
              f"+ {op.stats.vjp_vectors:4d} J^T u  max rel. error {rel.max():.1e}")


def reverse(a) -> None:
    cfg = config.load(REPO / "presets" / f"{a.preset}.toml")
    dt = torch.float64 if cfg.spectrum.matfree_dtype == "float64" else torch.float32
    base = operator_of(cfg, dt)
    print(f"{a.preset}: P = {base.P:,}, {base.T} steps, {os.cpu_count()} cores, {dt}")
    rng = np.random.default_rng(0)
    for K in [int(x) for x in a.blocks.split(",")]:
        V = rng.standard_normal((base.P, K))
        out = {}
        print(f"K = {K}:")
        # autograd; the replay training each segment again; the replay over the recorded
        # trajectory (which J v reads too)
        for mode, traj in (("checkpointed", False), ("auto", False), ("auto", True)):
            op = TrainingJacobian(base.problem, base.theta0, dtype=dt, reverse=mode,
                                  trajectory=traj)
            op.rmatmat(V[:, :1])  # warm: the checkpoints (or trajectory), the allocator
            t0 = time.perf_counter()
            op.matmat(V)
            jv = time.perf_counter() - t0
            t0 = time.perf_counter()
            out[op.stats.reverse] = op.rmatmat(V)
            vj = time.perf_counter() - t0
            kept = op.stats.trajectory_bytes / 2**20
            print(f"  J^T u by {op.stats.reverse:16s} {vj:6.2f} s   J v {jv:6.2f} s"
                  f"   trajectory {kept:,.0f} MB")
        ref = out["checkpointed"]
        for k, v in out.items():
            if k != "checkpointed":
                print(f"  {k}: largest relative difference to autograd "
                      f"{np.abs(v - ref).max() / np.abs(ref).max():.1e}")


def reach(a) -> None:
    from engine.runner import run_session

    preset = REPO / "presets" / f"{a.preset}.toml"
    with tempfile.TemporaryDirectory() as tmp:
        s = Session.create(tmp, "reach", config.load(preset), str(preset))
        t0 = time.perf_counter()
        code = run_session(s.path)
        wall = time.perf_counter() - t0
        m = s.manifest()
        if code != 0:
            sys.exit(f"failed: {m.get('error')}")
        r = json.loads((s.path / "matfree.json").read_text())
    st = {k: v.get("seconds") for k, v in m["stages"].items()}
    print(f"{a.preset}: P = {r['P']:,}, {r['steps']} steps, {os.cpu_count()} cores, "
          f"products in {r['dtype']}")
    print(f"wall {wall:.0f} s (train {st['train']:.0f} s, matfree {st['matfree']:.0f} s: "
          f"top {r['top']['k']} {r['top']['seconds']:.0f} s from {r['top']['jvp_vectors']} J v "
          f"+ {r['top']['vjp_vectors']} J^T u, bulk {r['bulk']['seconds']:.0f} s from "
          f"{r['bulk']['probes']} probes x {r['bulk']['lanczos_steps']} Lanczos steps, top "
          f"{r['bulk'].get('deflated', 0)} deflated)")
    print("top singular values: " + ", ".join(f"{v:.5g}" for v in r["top"]["s"]))
    for e in r["bulk"]["estimates"]:
        print(f"bulk tau {e['tol']:g}: estimate {e['count']:.0f} of {r['P']:,} "
              f"({100 * e['count'] / r['P']:.1f}%), error bar [{e['lower']:.0f}, "
              f"{e['upper']:.0f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("agree")
    g.add_argument("session")
    g.add_argument("--k", type=int, default=50)
    g.add_argument("--probes", type=int, default=8)
    g.add_argument("--steps", type=int, default=60)
    g.add_argument("--tols", default="1e-3,1e-2,1e-1")
    g.add_argument("--no-deflate", dest="deflate", action="store_false",
                   help="the bulk estimate on J^T J itself (default: the top k projected out)")
    g.set_defaults(func=agree)
    z = sub.add_parser("resolution")
    z.add_argument("session")
    z.add_argument("--steps", default="60,150,300")
    z.add_argument("--deflate", default="0,50,500")
    z.set_defaults(func=resolution)
    q = sub.add_parser("pairs")
    q.add_argument("session")
    q.add_argument("--k", default="5,10,20,50,100")
    q.add_argument("--tol", type=float, default=1e-4)
    q.set_defaults(func=pairs)
    v = sub.add_parser("solvers")
    v.add_argument("--preset", default="quick")
    v.add_argument("--k", type=int, default=10)
    v.set_defaults(func=solvers)
    w = sub.add_parser("reverse")
    w.add_argument("--preset", default="mlp1m-digits28-matfree")
    w.add_argument("--blocks", default="1,6")
    w.set_defaults(func=reverse)
    r = sub.add_parser("reach")
    r.add_argument("--preset", default="mlp1m-digits28-matfree")
    r.set_defaults(func=reach)
    a = ap.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
