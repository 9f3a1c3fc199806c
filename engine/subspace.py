"""Mean principal-angle cosines between growing subspaces, cheaply and exactly.

The overlap sweeps (bulk vs bulk across runs, bulk vs the parameter-function null space) compare
A_k = span of the first k rows of an orthonormal basis Q (P, P) with a subspace B, for many k.
Two facts keep this cheap:

* with ``M = Q @ Bfull.T`` computed once, where Bfull (P, P) is an orthonormal basis whose first
  n rows span B and whose other rows span its complement, the cosines of the principal angles
  between A_k and B are the singular values of ``M[:k, :n]``;
* the principal angles strictly between 0 and pi/2 of (A, B) and of their orthogonal
  complements (A', B') are the same, and ``dim(A & B) = k + n - P + dim(A' & B')``, so the
  *sum* of the cosines satisfies ``sum cos(A, B) = k + n - P + sum cos(A', B')``, and the
  complement side is the block ``M[k:, n:]``.

Each k then costs one block, whichever is smaller. The sum of the cosines of a block B is the sum
of the square roots of the eigenvalues of its smaller Gram matrix (B B^T or B^T B): several
times faster than its singular values, and exact to ~1e-8 per cosine (cosines near 0 come from
eigenvalues near the rounding level). The mean cosine divides the sum by ``min(k, n)``, the
number of principal angles, as :func:`principal_cosines` would (which these functions are
tested against).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def principal_cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between span(A) and span(B), for A and B with
    orthonormal columns (descending): the singular values of ``A^T B``. Empty when either is
    empty."""
    if A.shape[1] == 0 or B.shape[1] == 0:
        return np.zeros(0)
    return np.clip(scipy.linalg.svdvals(A.T @ B), 0.0, 1.0)


def cosines(block: np.ndarray) -> np.ndarray:
    """The singular values (descending, in [0, 1]) of ``block = A^T B`` for orthonormal columns
    A, B, i.e. the principal-angle cosines, from the smaller Gram matrix."""
    if block.size == 0:
        return np.zeros(0)
    G = block @ block.T if block.shape[0] <= block.shape[1] else block.T @ block
    ev = scipy.linalg.eigvalsh(G, check_finite=False)
    return np.sqrt(np.clip(ev, 0.0, 1.0))[::-1]


def _sum_svals(block: np.ndarray) -> float:
    """Sum of the singular values of a block of an orthogonal matrix (each in [0, 1])."""
    return float(cosines(block).sum())


def _random_sum_cos(P: int, k: int, n: int, rng: np.random.Generator) -> float:
    """Sum of the principal-angle cosines between span(X) for a Gaussian X (P, k), a uniformly
    random k-subspace, and the first n axes: the squared cosines are the generalized
    eigenvalues of (X[:n]^T X[:n], X^T X)."""
    X = rng.standard_normal((P, k))
    G1 = X[:n].T @ X[:n]
    G = G1 + X[n:].T @ X[n:]
    ev = scipy.linalg.eigh(G1, G, eigvals_only=True, check_finite=False)
    return float(np.sqrt(np.clip(ev, 0.0, 1.0)).sum())


def mean_cos_block(M: np.ndarray, k: int, n: int) -> float:
    """Mean principal-angle cosine between span(Q[:k]) and span(Bfull[:n]) given
    ``M = Q @ Bfull.T`` (both orthonormal bases of R^P)."""
    P = M.shape[0]
    m = min(k, n)
    if m == 0:
        return 0.0
    direct = k * n * m
    kc, nc = P - k, P - n
    comp = kc * nc * min(kc, nc)
    if direct <= comp:
        s = _sum_svals(M[:k, :n])
    else:
        s = (k + n - P) + _sum_svals(M[k:, n:])
    return float(np.clip(s / m, 0.0, 1.0))


def random_mean_cos(P: int, k: int, n: int, rng: np.random.Generator, samples: int = 1) -> float:
    """Mean principal-angle cosine between a uniformly random k-dimensional subspace of R^P and
    a fixed n-dimensional one, averaged over ``samples`` draws. By rotation invariance the fixed
    subspace is the first n axes; the complement identity above halves the work for k > P/2."""
    m = min(k, n)
    if m == 0:
        return 0.0
    vals = []
    for _ in range(max(1, samples)):
        if k <= P - k:
            s = _random_sum_cos(P, k, n, rng)
        elif k == P:
            s = float(n)
        else:  # the complement of a random k-subspace is a random (P - k)-subspace; its
            # cosines with the complement of the first n axes (the last P - n axes)
            s = (k + n - P) + (_random_sum_cos(P, P - k, P - n, rng) if n < P else 0.0)
        vals.append(np.clip(s / m, 0.0, 1.0))
    return float(np.mean(vals))


def k_grid(k_min: int, k_max: int, n: int, P: int) -> list[int]:
    """``n`` subspace sizes from ``k_min`` to ``k_max`` (0 = P), evenly spaced, rounded to
    integers, clipped to [1, P], without repeats."""
    hi = P if k_max <= 0 else min(k_max, P)
    lo = max(1, min(k_min, hi))
    ks = np.unique(np.round(np.linspace(lo, hi, max(1, n))).astype(int))
    return [int(k) for k in ks]
