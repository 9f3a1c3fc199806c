"""The CPU SVD of a stored J by the eigendecomposition of its Gram matrix, in a process of its own.

Route (``spectrum.svd_method = "gram"``, the default; this module is its CPU side, ``gram-cpu``
in :func:`engine.plan.svd_route`): ``G = J J^T`` in float64, built column block by column block
from ``jacobian.npy`` (column-major: a block is one contiguous read) with BLAS ``dsyrk``;
``G = U diag(s^2) U^T`` by LAPACK's MRRR eigensolver (``dsyevr``, O(P) workspace); then
``V = J^T U / s``, again block by block. Against LAPACK's direct SVD (``gesdd``) this is ~2x
faster on the paper's J and needs two P x P float64 arrays instead of nine (numpy's gesdd: J's
float64 copy, numpy's own copy of it, U and V^T in its buffer and again as its outputs, and a
workspace of 3 P^2: :data:`engine.plan.SVD_PHASES`). What it gives up: the singular values
carry an absolute error ~eps s_1^2 / s instead of ~eps s_1 (on the paper's J, s_1 = 19.4: they
agree with gesdd to 9.1e-15 for s in [0.5, 2] and to 5.7e-13 for s > 1e-3, every region count
at every tolerance from 1e-12 to 1e-2 identical), and a right vector ``J^T u_i / s_i`` loses
orthogonality to the others like eps s_1^2 / (s_i s_j): the right vectors of the singular
values below ``spectrum.SMALL * s_1`` = 1e-3 s_1 are orthonormalized against the rest (below
sqrt(eps) s_1 that only completes the subspace, whose basis no float64 SVD determines either) by
:func:`engine.spectrum.finish_right_vectors`, which the GPU's Gram route
(:func:`engine.spectrum.svd_gram_device`, torch) shares. Measured:
``python benchmarks/svd_precision.py SESSION --gram``.

It runs in a child process (``python -m engine.svdjob``) that imports numpy and scipy only:
its memory is not added to the torch process that computed J, and a stop request kills it at
once (scipy's LAPACK wrappers hold the GIL, so a thread could not be abandoned). The child
also computes the spectrum summary from its float64 vectors and writes everything to a work
directory: ``S.npy`` (float64), ``U.npy`` and ``Vh.npy`` (the run's dtype), ``alignment.npy``
and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.linalg
from scipy.linalg import blas

from . import files, spectrum
from .worker import boot, child_environment

BLOCK = 512  # columns of J read (and upcast to float64) at a time


def _header(path: Path) -> tuple[int, np.dtype, int]:
    """(P, dtype, data offset) of a stored J."""
    shape, fortran, dtype, offset = files.npy_header(path)
    if len(shape) != 2 or shape[0] != shape[1] or not fortran:
        raise ValueError(f"{path}: not a square column-major Jacobian")
    return shape[0], dtype, offset


def column_blocks(path: Path, block: int = BLOCK):
    """``(a, b, C)`` for consecutive column blocks of the stored J, C = J[:, a:b] as float64
    (P, b - a): read with plain reads, not a memory map, so no page of J stays resident."""
    P, dtype, offset = _header(path)
    with open(path, "rb") as f:
        for a in range(0, P, block):
            b = min(a + block, P)
            f.seek(offset + a * P * dtype.itemsize)
            raw = np.fromfile(f, dtype=dtype, count=(b - a) * P)
            if raw.size != (b - a) * P:
                raise ValueError(f"{path}: truncated at column {a}")
            C = raw.reshape(b - a, P).T.astype(np.float64)
            if not np.isfinite(C).all():
                raise ValueError("the Jacobian has non-finite entries: no SVD")
            yield a, b, C


def gram_svd(path: Path, vectors: bool = True, block: int = BLOCK
             ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(U (P, P), S (P,) descending, Vh (P, P)) of the J stored at ``path``, float64, by the
    Gram route of this module; ``(None, S, None)`` without ``vectors``."""
    P = _header(Path(path))[0]
    G = np.zeros((P, P), order="F")
    for _, _, C in column_blocks(path, block):  # G += C C^T (lower triangle)
        G = blas.dsyrk(1.0, C, beta=1.0, c=G, trans=0, lower=1, overwrite_c=1)
    if not vectors:
        w = scipy.linalg.eigh(G, lower=True, eigvals_only=True, overwrite_a=True,
                              check_finite=False, driver="evr")
        return None, np.sqrt(np.clip(w[::-1], 0.0, None)), None
    w, U = scipy.linalg.eigh(G, lower=True, overwrite_a=True, check_finite=False,
                             driver="evr")
    del G
    U = np.asfortranarray(U)
    for i in range(P // 2):  # descending order, in place (columns are contiguous)
        tmp = U[:, i].copy()
        U[:, i] = U[:, P - 1 - i]
        U[:, P - 1 - i] = tmp
    S = np.sqrt(np.clip(w[::-1], 0.0, None))
    V = np.empty((P, P))
    for a, b, C in column_blocks(path, block):
        np.matmul(C.T, U, out=V[a:b])
    spectrum.finish_right_vectors(V, S, block)  # (as spectrum.svd_gram_device does on a GPU)
    return U, S, V.T


# ---- the child process ---------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.svdjob")
    ap.add_argument("jacobian")
    ap.add_argument("out")
    ap.add_argument("--tol", type=float, required=True)
    ap.add_argument("--keep", default="float32", help="dtype of the stored U and Vh")
    ap.add_argument("--no-vectors", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    U, S, Vh = gram_svd(Path(a.jacobian), vectors=not a.no_vectors)
    files.atomic_save_npy(out / "S.npy", S)
    if U is None:
        summary = spectrum.summarize(S, tol=a.tol)
    else:
        summary = spectrum.summarize(S, U, Vh, a.tol)
        keep, P = np.dtype(a.keep), len(S)
        files.atomic_save_npy_rows(out / "U.npy", (P, P), keep,
                                   (U[r: r + 1024] for r in range(0, P, 1024)))
        files.atomic_save_npy_rows(out / "Vh.npy", (P, P), keep,
                                   (Vh[r: r + 1024] for r in range(0, P, 1024)))
        files.atomic_save_npy(out / "alignment.npy", spectrum.alignment(U, Vh))
    spectrum.note_gram_resolution(summary, S)
    files.atomic_write_json(out / "summary.json", summary)
    return 0


def _die_with_parent() -> None:
    """In the child, before it starts: a SIGKILL when the process that started it dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed run leaves no SVD running on."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def run(jacobian: Path, out: Path, tol: float, keep: np.dtype, vectors: bool = True,
        should_stop: Callable[[], bool] | None = None, poll: float = 0.1) -> dict:
    """Run :func:`main` in a child process (numpy and scipy only) and return its summary;
    the child is killed when ``should_stop()`` turns true (``KeyboardInterrupt``). A failed
    child raises ``RuntimeError`` with its last line of output."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", boot("engine.svdjob"), str(jacobian), str(out),
           "--tol", repr(float(tol)), "--keep", np.dtype(keep).name]
    if not vectors:
        cmd.append("--no-vectors")
    log = out / "svdjob.log"
    with open(log, "wb") as f:
        child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=child_environment(),
                                 preexec_fn=_die_with_parent)
        try:
            while child.poll() is None:
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt
                try:
                    child.wait(poll)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait()
    if child.returncode:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"svd: exit {child.returncode}")
    return json.loads((out / "summary.json").read_text())


if __name__ == "__main__":
    sys.exit(main())
