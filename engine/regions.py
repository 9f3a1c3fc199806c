"""The region rule: which singular directions of J are chaotic, bulk or stable.

**The rule (one sentence).** With the tolerance ``tol`` (the preset key ``spectrum.bulk_tol``,
1e-3 unless a preset says otherwise), direction i is *bulk* when ``|s_i - 1| <= tol``, *chaotic*
when ``s_i > 1 + tol`` and *stable* when ``s_i < 1 - tol``.

Every part of tjac uses this module for it: ``spectrum.json``, every analysis, the study and
sweep tables, the report, the findings and the TUI. The distance from unity ``|s_i - 1|`` is
the quantity the paper plots (its finding 2); because S is sorted descending, each region is
one contiguous index range.

The same distance orders "the k bulk directions" used by the overlap, restricted-training and
parameter-function analyses: the k indices with the smallest ``|s_i - 1|`` (ties by index),
i.e. the k directions closest to s = 1 whatever the tolerance is.

Rather than trusting one tolerance, :func:`sensitivity_table` gives the region counts for
``tol`` in :data:`SENSITIVITY_TOLS` and the *elasticity* of the bulk count,
``d ln(bulk count) / d ln(tol)`` between neighbouring tolerances: a genuine plateau has
elasticity near 0 (the count hardly depends on the tolerance chosen), while a count that grows
in proportion to tol (elasticity ~1) means there is no plateau at that scale, only a smooth
passage of the spectrum through 1.

Directions with ``|s_i - 1| <= EXACT`` (1e-12) are ones training leaves untouched to machine
precision (on digits: the first-layer weights of the pixels that are zero in every training
image). They are bulk; :func:`bulk_middle` skips them when it picks a representative bulk
direction, and :func:`unity_counts` counts them apart from the values that are exactly 1.
"""

from __future__ import annotations

import math

import numpy as np

REGIONS = ("chaotic", "bulk", "stable")
DEFAULT_TOL = 1e-3
SENSITIVITY_TOLS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
EXACT = 1e-12  # |s - 1| at or below this: a direction training never touches


def rule_text(tol: float | None = None) -> str:
    """The rule in words, with the tolerance when given."""
    t = "tol" if tol is None else f"{tol:g}"
    return f"bulk: |s - 1| <= {t}; chaotic: s > 1 + {t}; stable: s < 1 - {t}"


RULE = rule_text()


def distance(S: np.ndarray) -> np.ndarray:
    """``|s_i - 1|`` in float64."""
    return np.abs(np.asarray(S, dtype=np.float64) - 1.0)


def masks(S: np.ndarray, tol: float = DEFAULT_TOL) -> dict[str, np.ndarray]:
    """Boolean masks of the three regions (any order of S)."""
    S = np.asarray(S, dtype=np.float64)
    return {"chaotic": S > 1 + tol, "bulk": np.abs(S - 1) <= tol, "stable": S < 1 - tol}


def counts(S: np.ndarray, tol: float = DEFAULT_TOL) -> dict[str, int]:
    return {k: int(m.sum()) for k, m in masks(S, tol).items()}


def slices(S: np.ndarray, tol: float = DEFAULT_TOL) -> dict[str, slice]:
    """Index ranges of the regions for *descending* S (then each region is contiguous)."""
    c = counts(S, tol)
    P = len(S)
    return {"chaotic": slice(0, c["chaotic"]),
            "bulk": slice(c["chaotic"], P - c["stable"]),
            "stable": slice(P - c["stable"], P)}


def closest_to_unity(S: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices ordered by ``|s_i - 1|`` ascending (ties by index); the first k if given."""
    order = np.argsort(distance(S), kind="stable")
    return order if k is None else order[:k]


def farthest_from_unity(S: np.ndarray, k: int | None = None) -> np.ndarray:
    """The reverse ordering: the k directions farthest from s = 1 (the complement of the
    (P - k) bulk directions)."""
    order = np.ascontiguousarray(closest_to_unity(S)[::-1])
    return order if k is None else order[:k]


def unity_counts(S: np.ndarray) -> dict[str, int]:
    """How many values are exactly 1, and how many are within :data:`EXACT` of 1."""
    d = distance(S)
    return {"exactly_1": int(np.sum(d == 0)), "within_exact": int(np.sum(d <= EXACT))}


def bulk_middle(S: np.ndarray, tol: float = DEFAULT_TOL, skip_exact: bool = True) -> int:
    """A representative bulk index: the middle of the bulk range (descending S), skipping the
    directions with ``|s - 1| <= EXACT`` when any other bulk direction exists; if the bulk is
    empty, the index closest to unity."""
    S = np.asarray(S, dtype=np.float64)
    sl = slices(S, tol)["bulk"]
    idx = np.arange(sl.start, sl.stop)
    if skip_exact:
        keep = idx[np.abs(S[idx] - 1.0) > EXACT]
        if keep.size:
            idx = keep
    if idx.size:
        return int(idx[(len(idx) - 1) // 2])
    return int(closest_to_unity(S, 1)[0])


def sensitivity_table(S: np.ndarray, tols=SENSITIVITY_TOLS) -> list[dict]:
    """One row per tolerance: counts per region, bulk fraction and index range (descending
    S), and the elasticity of the bulk count with respect to tol (from the previous row; None
    on the first)."""
    S = np.asarray(S, dtype=np.float64)
    P = len(S)
    rows = []
    prev = None
    for tol in tols:
        c = counts(S, tol)
        sl = slices(S, tol)["bulk"]
        el = None
        if prev is not None and prev[1] > 0 and c["bulk"] > 0:
            el = math.log(c["bulk"] / prev[1]) / math.log(tol / prev[0])
        rows.append({"tol": float(tol), "chaotic": c["chaotic"], "bulk": c["bulk"],
                     "stable": c["stable"], "bulk_fraction": c["bulk"] / P if P else 0.0,
                     "bulk_start": sl.start, "bulk_stop": sl.stop, "elasticity": el})
        prev = (tol, c["bulk"])
    return rows


def plateau_between(rows: list[dict]) -> list[float] | None:
    """The pair of neighbouring tolerances of a sensitivity table between which the bulk count
    changes least (smallest elasticity); None when the bulk is empty throughout."""
    best = None
    for prev, r in zip(rows, rows[1:]):
        if r["elasticity"] is None:
            continue
        if best is None or r["elasticity"] < best[0]:
            best = (r["elasticity"], [prev["tol"], r["tol"]])
    return None if best is None else best[1]
