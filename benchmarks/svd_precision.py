"""What a float32 SVD of J would change: singular values and region counts vs float64.

tjac computes every SVD in float64. This script shows why, on a finished session's J: it
computes the singular values of the same stored J in float64 and in float32 (LAPACK gesdd via
numpy, as the CPU path does), and prints the largest change of s overall and near s = 1, and
the region counts under both for several bulk tolerances.

Usage::

    tjac run paper-digits-sgd --skip-analyses
    python benchmarks/svd_precision.py sessions/paper-digits-sgd
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import regions  # noqa: E402
from engine.session import Session  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("session", help="a session directory with a finished jacobian.npy")
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    args = ap.parse_args(argv)

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
