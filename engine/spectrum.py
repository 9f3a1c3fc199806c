"""SVD of the training Jacobian, its three regions and the alignment of its singular vectors.

Regions follow the one rule of :mod:`engine.regions` (bulk ``|s - 1| <= tol``, chaotic above,
stable below, ``tol = spectrum.bulk_tol``). Because s is sorted, each region is one contiguous
index range. The SVD is computed in float64 whatever the run's dtype unless
``spectrum.svd_dtype = "float32"``, whose error bound is a small multiple of 6e-8 x s_1 (on the
paper MLP's J, s_1 = 19.4, the observed change is at most 6e-8 near s = 1 and no region count
moves: ``benchmarks/svd_precision.py``); it matters when s_1 is large or bulk_tol small.

Alignment. Per index, a_i = u_i . v_i (1 when the direction comes back unrotated). Inside the
bulk the singular values are nearly degenerate, so individual u_i and v_i are ill-defined
(any rotation within the plateau is an equally valid SVD) and a_i can be far from 1 even when the
*subspaces* agree. The well-posed measure is the principal angles between span(U_region) and
span(V_region): both are reported.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from . import interrupt, regions
from .subspace import principal_cosines

REGIONS = regions.REGIONS

ALIGNMENT_NOTE = ("u.v mean is the mean of the per-index u_i . v_i, ill-posed inside a "
                  "near-degenerate plateau; subspace cos is the mean cosine of the principal "
                  "angles between span(U_region) and span(V_region), the well-posed measure.")


def svd(J, device="cpu", should_stop=None, dtype=np.float64
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full SVD in ``dtype`` (float64 unless asked): (U (P, P), S (P,) descending, float64,
    Vh (P, P)), as numpy arrays. On CUDA
    it runs on the device (torch); on the CPU with LAPACK's gesdd (numpy), falling back to
    gesvd (scipy) if gesdd does not converge. Both run in a thread that ``should_stop()`` can
    abandon (:mod:`engine.interrupt`): a stop request does not wait for the SVD to end."""
    if not np.isfinite(np.asarray(J)).all():
        raise ValueError("the Jacobian has non-finite entries: no SVD")
    if str(device).startswith("cuda"):
        import torch

        def run_cuda():
            Jt = torch.as_tensor(np.asarray(J)).to(device=device, dtype=_torch_dtype(dtype))
            U, S, Vh = torch.linalg.svd(Jt)
            return U.cpu().numpy(), S.double().cpu().numpy(), Vh.cpu().numpy()

        return interrupt.call(run_cuda, should_stop=should_stop)
    A = np.asarray(J, dtype=dtype)
    try:
        U, S, Vh = interrupt.call(np.linalg.svd, A, should_stop=should_stop)
    except np.linalg.LinAlgError:
        U, S, Vh = scipy.linalg.svd(A, lapack_driver="gesvd", check_finite=False)
    return U, S.astype(np.float64), Vh


def svdvals(J, should_stop=None, dtype=np.float64) -> np.ndarray:
    """The singular values alone, descending, returned as float64 (gesdd without vectors on a
    ``dtype`` copy of J and a small workspace)."""
    A = np.asarray(J, dtype=dtype)
    if not np.isfinite(A).all():
        raise ValueError("the Jacobian has non-finite entries: no SVD")
    return interrupt.call(np.linalg.svd, A, compute_uv=False,
                          should_stop=should_stop).astype(np.float64)


def _torch_dtype(dtype):
    import torch

    return torch.float32 if np.dtype(dtype) == np.float32 else torch.float64


def svd_device(J, device, vectors: bool = True, should_stop=None, block: int = 2048,
               dtype=np.float64):
    """The SVD (in ``dtype``) on a torch device (a GPU), for a J that need not fit in host memory: the
    matrix is assembled on the device from column blocks of ``J`` (a memory-mapped
    column-major array: each block is one contiguous read), so the host holds one block at a
    time. Returns torch tensors on the device, ``(U, S, Vh)``, or ``(None, S, None)`` without
    ``vectors`` (``torch.linalg.svdvals``: no U, V and a fraction of the memory)."""
    import torch

    P, tdt = J.shape[0], _torch_dtype(dtype)
    A = torch.empty(P, P, dtype=tdt, device=device)
    for a in range(0, P, block):
        blk = np.ascontiguousarray(J[:, a: a + block])
        if not np.isfinite(blk).all():
            raise ValueError("the Jacobian has non-finite entries: no SVD")
        A[:, a: a + block] = torch.from_numpy(blk).to(device=device, dtype=tdt)
    if not vectors:
        return None, interrupt.call(torch.linalg.svdvals, A, should_stop=should_stop), None
    U, S, Vh = interrupt.call(torch.linalg.svd, A, should_stop=should_stop)
    del A
    return U, S, Vh


def region_cosines(U, Vh, S: np.ndarray, tol: float) -> dict[str, np.ndarray]:
    """Per region, the cosines of the principal angles between span(U_region) and
    span(V_region); U and Vh numpy arrays or torch tensors (computed where they are)."""
    out = {}
    for name, sl in regions.slices(S, tol).items():
        if sl.stop <= sl.start:
            out[name] = np.zeros(0)
        elif isinstance(U, np.ndarray):
            out[name] = principal_cosines(U[:, sl], Vh[sl].T)
        else:
            import torch

            c = torch.linalg.svdvals(U[:, sl].T @ Vh[sl].T).clamp(0.0, 1.0)
            out[name] = c.cpu().numpy()
    return out


def alignment(U: np.ndarray, Vh: np.ndarray) -> np.ndarray:
    """Per-index u_i . v_i, shape (P,)."""
    return np.einsum("ij,ji->j", U, Vh, optimize=True)


def summarize(S: np.ndarray, U: np.ndarray | None = None, Vh: np.ndarray | None = None,
              tol: float = regions.DEFAULT_TOL, align: np.ndarray | None = None,
              cosines: dict[str, np.ndarray] | None = None) -> dict:
    """The spectrum summary stored as ``spectrum.json``: P, s_max, s_min, and per region its
    count, index range [start, stop), singular-value range, fraction of P, threshold rule and
    (with U and Vh, or the alignment and region cosines computed elsewhere: on the GPU)
    alignment per index and as subspaces."""
    S = np.asarray(S, dtype=np.float64)
    P = len(S)
    slices = regions.slices(S, tol)
    rules = {"chaotic": f"s > 1 + {tol:g}", "bulk": f"|s - 1| <= {tol:g}",
             "stable": f"s < 1 - {tol:g}"}
    a = align if align is not None else (alignment(U, Vh) if U is not None and Vh is not None
                                         else None)
    if a is not None and cosines is None:
        cosines = region_cosines(U, Vh, S, tol)
    out_regions = {}
    for name in REGIONS:
        sl = slices[name]
        n = sl.stop - sl.start
        r = {"count": n, "start": sl.start, "stop": sl.stop, "fraction": n / P if P else 0.0,
             "rule": rules[name],
             "s_max": float(S[sl].max()) if n else None,
             "s_min": float(S[sl].min()) if n else None}
        if a is not None:
            cos = cosines[name]
            r["align_mean"] = float(a[sl].mean()) if n else None
            r["align_min"] = float(a[sl].min()) if n else None
            r["subspace_cos_mean"] = float(cos.mean()) if n else None
            r["subspace_cos_min"] = float(cos.min()) if n else None
        out_regions[name] = r
    dist = regions.distance(S)
    out = {
        "P": P, "s_max": float(S[0]) if P else None, "s_min": float(S[-1]) if P else None,
        "bulk_tol": tol, "rule": regions.rule_text(tol), "regions": out_regions,
        "min_abs_s_minus_1": float(dist.min()) if P else None,
        "argmin_abs_s_minus_1": int(dist.argmin()) if P else None,
        "unity": regions.unity_counts(S),
        "log10_det": float(np.sum(np.log10(np.maximum(S, 1e-300)))),
        "thresholds": {"chaotic_above": 1 + tol, "stable_below": 1 - tol},
    }
    if a is not None:
        out["alignment_note"] = ALIGNMENT_NOTE
    return out


def through_training(summaries: list[tuple[int, dict]], lrs=None) -> dict:
    """The spectrum through training: one row per step t (J_{0->t}) from each summary of
    :func:`summarize` ({t: summary}, the final J's included): s_1, the regions' counts and
    fractions at the summaries' tolerance, and the bulk's alignment (mean u.v and mean cosine
    of its principal angles, when the vectors were computed); ``lrs``: the schedule, for the
    learning rate at each step."""
    rows = []
    for t, sm in sorted(summaries, key=lambda x: x[0]):
        reg, bulk = sm["regions"], sm["regions"]["bulk"]
        rows.append({
            "step": int(t), "lr": float(lrs[t - 1]) if lrs is not None and t >= 1 else None,
            "P": sm["P"], "s_max": sm["s_max"], "s_min": sm["s_min"],
            "counts": {k: reg[k]["count"] for k in REGIONS},
            "fractions": {k: reg[k]["fraction"] for k in REGIONS},
            "bulk_align_mean": bulk.get("align_mean"),
            "bulk_subspace_cos": bulk.get("subspace_cos_mean"),
            "min_abs_s_minus_1": sm.get("min_abs_s_minus_1")})
    tol = summaries[0][1]["bulk_tol"] if summaries else None
    return {"bulk_tol": tol, "rows": rows}


def fmt_near_one(v: float) -> str:
    """``v`` with 6 significant digits, or as many as show 3 of ``v - 1`` (the bulk's top,
    1.0009966 at tol 1e-3, read "1.001": the threshold itself)."""
    d = abs(v - 1.0)
    digits = 6 if d == 0 or d >= 1e-2 else min(17, 3 + math.ceil(-math.log10(d)))
    return f"{v:.{digits}g}"


def fmt_range(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "-"
    return f"{fmt_near_one(lo)} .. {fmt_near_one(hi)}"


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def region_rows(summary: dict) -> list[dict]:
    """Rows of the regions table (shared by the CLI, the TUI and the report)."""
    rows = []
    for name in REGIONS:
        r = summary["regions"][name]
        rows.append({
            "region": name,
            "count": r["count"],
            "indices": f"{r['start']}..{r['stop'] - 1}" if r["count"] else "-",
            "s range": fmt_range(r["s_min"], r["s_max"]),
            "fraction": f"{100 * r['fraction']:.1f}%",
            "rule": r["rule"],
            "u.v mean": _fmt(r.get("align_mean")),
            "subspace cos": _fmt(r.get("subspace_cos_mean")),
        })
    return rows
