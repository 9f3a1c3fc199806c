"""What a float32 SVD of J would change: singular values and region counts vs float64.

tjac computes every SVD in float64. This script shows why, on a finished session's J: it
computes the singular values of the same stored J in float64 and in float32 (LAPACK gesdd via
numpy, as the CPU path does), and prints the largest change of s overall and near s = 1, and
the region counts under both for several bulk tolerances.

With ``--gram`` it compares instead the two float64 routes of the CPU SVD with vectors,
LAPACK's gesdd and the Gram route (``engine/svdjob.py``, the default): each in a fresh process
(time, peak memory), then the singular values by band, the region counts, the spectrum
summaries (alignment, the regions' subspace cosines) and the orthogonality of U and V.

Usage::

    tjac run paper-digits-sgd --skip-analyses
    python benchmarks/svd_precision.py sessions/paper-digits-sgd
    python benchmarks/svd_precision.py sessions/paper-digits-sgd --gram
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import regions  # noqa: E402
from engine.session import Session  # noqa: E402


def one_route(session: str, route: str, out: str) -> None:
    """In a fresh process: the SVD with vectors by ``route``; S, U, Vh and the time to ``out``
    (.npz)."""
    from pathlib import Path

    from engine import svdjob

    path = Path(session) / "jacobian.npy"
    t0 = time.perf_counter()
    if route == "gram":
        U, S, Vh = svdjob.gram_svd(path)
    else:
        U, S, Vh = np.linalg.svd(np.load(path).astype(np.float64))
    np.savez(out, S=S, U=U, Vh=Vh, seconds=time.perf_counter() - t0)


def compare_routes(session: str, tols: list[float]) -> None:
    from engine import spectrum

    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for route in ("gesdd", "gram"):
            out = os.path.join(tmp, f"{route}.npz")
            proc = subprocess.Popen([sys.executable, __file__, session, "--one", route, out])
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status):
                raise SystemExit(f"{route} failed")
            with np.load(out) as f:
                res[route] = {k: f[k] for k in f.files}
            res[route]["rss_mb"] = usage.ru_maxrss / 1024
    a, b = res["gesdd"], res["gram"]
    s0, s1 = a["S"], b["S"]
    P = len(s0)
    print(f"J: {P:,} x {P:,}; float64 SVD with vectors")
    print(f"{'':<28} {'gesdd':>12} {'gram':>12}")
    print(f"{'time (s)':<28} {float(a['seconds']):>12.1f} {float(b['seconds']):>12.1f}")
    print(f"{'peak RSS of the process (MB)':<28} {a['rss_mb']:>12.0f} {b['rss_mb']:>12.0f}")
    d = np.abs(s1 - s0)
    band = (s0 > 0.5) & (s0 < 2)
    print(f"max |s_gram - s_gesdd|: {d[band].max():.2e} for s in [0.5, 2], "
          f"{d[s0 > 1e-3].max():.2e} for s > 1e-3, {d.max():.2e} overall")
    for tol in tols:
        print(f"|s - 1| <= {tol:g}: {int((np.abs(s0 - 1) <= tol).sum()):,} (gesdd), "
              f"{int((np.abs(s1 - 1) <= tol).sum()):,} (gram)")
    eye = np.eye(P)
    print(f"orthogonality max|U^T U - I|, max|V^T V - I|: gram "
          f"{np.abs(b['U'].T @ b['U'] - eye).max():.1e}, {np.abs(b['Vh'] @ b['Vh'].T - eye).max():.1e}")
    sa = spectrum.summarize(s0, a["U"], a["Vh"], 1e-3)
    sb = spectrum.summarize(s1, b["U"], b["Vh"], 1e-3)
    for r in spectrum.REGIONS:
        ra, rb = sa["regions"][r], sb["regions"][r]
        diffs = ", ".join(f"{k} {abs(ra[k] - rb[k]):.1e}" for k in
                          ("align_mean", "subspace_cos_mean", "subspace_cos_min")
                          if ra.get(k) is not None)
        print(f"{r:<8} count {ra['count']:,} / {rb['count']:,}; |difference|: {diffs}")
    print("unity (gesdd / gram):", json.dumps(sa["unity"]), "/", json.dumps(sb["unity"]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("session", help="a session directory with a finished jacobian.npy")
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    ap.add_argument("--gram", action="store_true",
                    help="compare the CPU's two float64 routes (gesdd, Gram) instead")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return one_route(args.session, *args.one)
    if args.gram:
        return compare_routes(args.session, [1e-12, 1e-9, 1e-6, *args.tols])

    J = Session(args.session).load_npy("jacobian.npy", mmap=False)
    t0 = time.perf_counter()
    s64 = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    t64 = time.perf_counter() - t0
    t0 = time.perf_counter()
    s32 = np.linalg.svd(J.astype(np.float32), compute_uv=False).astype(np.float64)
    t32 = time.perf_counter() - t0
    near = np.abs(s64 - 1) <= 1e-2
    d = np.abs(s32 - s64)
    print(f"J: {J.shape[0]:,} x {J.shape[1]:,} stored as {J.dtype}; "
          f"float64 SVD {t64:.1f} s, float32 SVD {t32:.1f} s")
    print(f"max |s32 - s64|: {d.max():.2e} overall, {d[near].max():.2e} where |s - 1| <= 1e-2 "
          f"({int(near.sum()):,} values); median there {np.median(d[near]):.2e}")
    print(f"{'bulk_tol':>9} {'region':>8} {'float64':>8} {'float32':>8} {'moved':>6}")
    for tol in args.tols:
        c64, c32 = regions.counts(s64, tol), regions.counts(s32, tol)
        for name in c64:
            print(f"{tol:>9g} {name:>8} {c64[name]:>8,} {c32[name]:>8,} "
                  f"{c32[name] - c64[name]:>+6d}")


if __name__ == "__main__":
    main()
