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

Each k then costs an SVD of the smaller of the two blocks. The mean cosine divides the sum by
``min(k, n)``, the number of principal angles, as :func:`engine.spectrum.subspace_cosines` would
(which these functions are tested against).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def _sum_svals(block: np.ndarray) -> float:
    if block.size == 0:
        return 0.0
    return float(np.clip(scipy.linalg.svdvals(block), 0.0, 1.0).sum())


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
            Q, _ = np.linalg.qr(rng.standard_normal((P, k)))
            s = _sum_svals(Q[:n])
        else:  # the complement of a random k-subspace is a random (P - k)-subspace
            Q, _ = np.linalg.qr(rng.standard_normal((P, P - k)))
            s = (k + n - P) + _sum_svals(Q[n:])
        vals.append(np.clip(s / m, 0.0, 1.0))
    return float(np.mean(vals))
