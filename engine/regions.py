"""The region rule: which singular directions of J are chaotic, bulk or stable, without eyeballing.

**Rule (one sentence).** Direction i is *bulk* when ``|ln s_i| <= tau`` (training carries a
perturbation along v_i through scaled by a factor within ``e^(+-tau)`` of 1), *chaotic* when
``ln s_i > tau`` and *stable* when ``ln s_i < -tau``, with ``tau = 1e-3`` unless a preset says
otherwise.

Why the logarithm: ``|ln s|`` treats stretching by ``1 + x`` and shrinking by ``1 / (1 + x)`` as
equally far from unity, and it is the rate per unit "log gain" that a perturbation picks up over
training. For ``tau <= 1e-2`` it differs from the ``|s - 1| <= tol`` rule of
:mod:`engine.spectrum` only by ``O(tau^2)`` (``ln(1 + x) = x - x^2/2 + ...``), so at most the
one or two values sitting within ~tau^2 of a threshold change side; :func:`sensitivity_table`
reports both counts so the difference is visible rather than hidden.

The same ordering defines the "k bulk directions" used by the overlap, restricted-training and
parameter-function analyses: the k indices with the smallest ``|ln s_i|`` (ties by index), i.e.
the k directions closest to s = 1 whatever tau is.

The sensitivity table gives the region counts for ``tau`` in :data:`SENSITIVITY_TAUS` and the
*elasticity* of the bulk count, ``d ln(bulk count) / d ln(tau)`` between neighbouring
tolerances: a genuine plateau has elasticity near 0 (the count hardly depends on the tolerance
chosen), while a count that grows proportionally with tau (elasticity ~1) means there is no
plateau at that scale, only a smooth passage of the spectrum through 1.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_TAU = 1e-3
SENSITIVITY_TAUS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
REGIONS = ("chaotic", "bulk", "stable")

RULE = ("bulk = {i : |ln s_i| <= tau}, chaotic = {i : ln s_i > tau}, "
        "stable = {i : ln s_i < -tau}")


def log_distance(S: np.ndarray) -> np.ndarray:
    """``|ln s_i|`` (float64); a zero singular value is infinitely far from unity."""
    S = np.asarray(S, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.abs(np.log(np.where(S > 0, S, 0.0)))


def masks(S: np.ndarray, tau: float = DEFAULT_TAU) -> dict[str, np.ndarray]:
    """Boolean masks of the three regions (any order of S)."""
    S = np.asarray(S, dtype=np.float64)
    with np.errstate(divide="ignore"):
        ls = np.log(np.where(S > 0, S, 0.0))
    return {"chaotic": ls > tau, "bulk": np.abs(ls) <= tau, "stable": ls < -tau}


def counts(S: np.ndarray, tau: float = DEFAULT_TAU) -> dict[str, int]:
    return {k: int(m.sum()) for k, m in masks(S, tau).items()}


def slices(S: np.ndarray, tau: float = DEFAULT_TAU) -> dict[str, slice]:
    """Index ranges of the regions for *descending* S (then each region is contiguous)."""
    c = counts(S, tau)
    P = len(S)
    return {"chaotic": slice(0, c["chaotic"]),
            "bulk": slice(c["chaotic"], P - c["stable"]),
            "stable": slice(P - c["stable"], P)}


def closest_to_unity(S: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices ordered by ``|ln s_i|`` ascending (ties by index); the first k if given."""
    order = np.argsort(log_distance(S), kind="stable")
    return order if k is None else order[:k]


def farthest_from_unity(S: np.ndarray, k: int | None = None) -> np.ndarray:
    """The reverse ordering: the k directions farthest from s = 1 (the complement of the
    (P - k) bulk directions)."""
    order = np.ascontiguousarray(closest_to_unity(S)[::-1])
    return order if k is None else order[:k]


EXACT = 1e-12  # |s - 1| below this: a direction training never touches


def bulk_middle(S: np.ndarray, tau: float = DEFAULT_TAU, skip_exact: bool = True) -> int:
    """A representative bulk index: the middle of the bulk range (descending S), skipping the
    directions with s = 1 to machine precision (``|s - 1| <= EXACT``: directions training never
    touches at all, such as the first-layer weights of an input that is zero in every training
    row) when any other bulk direction exists; if the bulk is empty, the index closest to
    unity."""
    S = np.asarray(S, dtype=np.float64)
    sl = slices(S, tau)["bulk"]
    idx = np.arange(sl.start, sl.stop)
    if skip_exact:
        keep = idx[np.abs(S[idx] - 1.0) > EXACT]
        if keep.size:
            idx = keep
    if idx.size:
        return int(idx[(len(idx) - 1) // 2])
    return int(closest_to_unity(S, 1)[0])


def sensitivity_table(S: np.ndarray, taus=SENSITIVITY_TAUS) -> list[dict]:
    """One row per tolerance: counts per region, bulk fraction and index range (descending S),
    the bulk count under the ``|s - 1| <= tau`` rule for comparison, and the elasticity of the
    bulk count with respect to tau (from the previous row; None on the first)."""
    S = np.asarray(S, dtype=np.float64)
    P = len(S)
    rows = []
    prev = None
    for tau in taus:
        c = counts(S, tau)
        sl = slices(S, tau)["bulk"]
        lin = int(np.sum(np.abs(S - 1) <= tau))
        el = None
        if prev is not None and prev[1] > 0 and c["bulk"] > 0:
            el = math.log(c["bulk"] / prev[1]) / math.log(tau / prev[0])
        rows.append({"tau": float(tau), "chaotic": c["chaotic"], "bulk": c["bulk"],
                     "stable": c["stable"], "bulk_fraction": c["bulk"] / P if P else 0.0,
                     "bulk_start": sl.start, "bulk_stop": sl.stop,
                     "bulk_abs_rule": lin, "elasticity": el})
        prev = (tau, c["bulk"])
    return rows


def plateau_between(rows: list[dict]) -> list[float] | None:
    """The pair of neighbouring tolerances of a sensitivity table between which the bulk count
    changes least (smallest elasticity); None when the bulk is empty throughout."""
    best = None
    for prev, r in zip(rows, rows[1:]):
        if r["elasticity"] is None:
            continue
        if best is None or r["elasticity"] < best[0]:
            best = (r["elasticity"], [prev["tau"], r["tau"]])
    return None if best is None else best[1]
