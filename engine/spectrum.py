"""SVD of the training Jacobian, its three regions and the alignment of its singular vectors.

Regions follow the one rule of :mod:`engine.regions` (bulk ``|s - 1| <= tol``, chaotic above,
stable below, ``tol = spectrum.bulk_tol``). Because s is sorted, each region is one contiguous
index range. The SVD is computed in float64 whatever the run's dtype unless
``spectrum.svd_dtype = "float32"``, whose error bound is a small multiple of 6e-8 x s_1 (on the
paper MLP's J, s_1 = 19.4, the observed change is at most 6e-8 near s = 1 and no region count
moves: ``benchmarks/svd_precision.py``); it matters when s_1 is large or bulk_tol small.

Routes (which one runs is :func:`engine.plan.svd_route`, from the device, ``spectrum.svd_method``
and ``spectrum.svd_dtype``). The float64 default is the Gram route: ``G = J J^T`` from column
blocks of the stored J, ``G = U diag(s^2) U^T`` by a symmetric eigensolver, ``V = J^T U / s``,
the right vectors of the small singular values orthonormalized (:func:`finish_right_vectors`).
On the CPU it runs in a numpy/scipy child process (:mod:`engine.svdjob`); on a GPU in torch,
:func:`svd_gram_device` (cuSOLVER's syevd). Otherwise the SVD is direct: LAPACK's gesdd
(:func:`svd`, :func:`svdvals`) or ``torch.linalg.svd`` on the device (:func:`svd_device`,
cuSOLVER's gesvdj). The Gram route's singular values carry an absolute error ~eps s_1^2 / s
instead of ~eps s_1: below ~sqrt(eps) s_1 they are not resolved (:func:`note_gram_resolution`).
Whichever route ran, a run holds its SVD as one :class:`SVDResult` (the backends:
:mod:`engine.stages.svd`), whose ``summary(tol)`` is the summary below.

Alignment. Per index, a_i = u_i . v_i (1 when the direction comes back unrotated). Inside the
bulk the singular values are nearly degenerate, so individual u_i and v_i are ill-defined
(any rotation within the plateau is an equally valid SVD) and a_i can be far from 1 even when the
*subspaces* agree. The well-posed measure is the principal angles between span(U_region) and
span(V_region): both are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

from . import interrupt, regions
from .device import DeviceError
from .schema import one_line
from .subspace import principal_cosines

REGIONS = regions.REGIONS

# the Gram route: right vectors of singular values below SMALL * s_1 are orthonormalized against
# the others (J^T u / s loses orthogonality like eps s_1^2 / (s_i s_j))
SMALL = 1e-3

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
    if not np.isfinite(np.asarray(J)).all():  # (before the copy: the two are not held at once)
        raise ValueError("the Jacobian has non-finite entries: no SVD")
    A = np.asarray(J, dtype=dtype)
    return interrupt.call(np.linalg.svd, A, compute_uv=False,
                          should_stop=should_stop).astype(np.float64)


def _torch_dtype(dtype):
    import torch

    return torch.float32 if np.dtype(dtype) == np.float32 else torch.float64


def column_rows(J, a: int, b: int) -> np.ndarray:
    """``J[:, a:b]`` transposed, (b - a, P), a C-contiguous copy in J's dtype: one contiguous
    read of a column-major J (a memory map of jacobian.npy); ValueError when it is not
    finite."""
    rows = np.array(J[:, a:b].T, order="C")
    if not np.isfinite(rows).all():
        raise ValueError("the Jacobian has non-finite entries: no SVD")
    return rows


def svd_device(J, device, vectors: bool = True, should_stop=None, block: int = 2048,
               dtype=np.float64):
    """The direct SVD (in ``dtype``) on a torch device (a GPU), for a J that need not fit in
    host memory: the matrix is assembled on the device from column blocks of ``J`` (a
    memory-mapped column-major array: each block is one contiguous read), so the host holds one
    block at a time. Returns torch tensors on the device, ``(U, S, Vh)``, or ``(None, S, None)``
    without ``vectors`` (``torch.linalg.svdvals``).

    Memory (P^2 numbers of ``dtype``; :data:`engine.plan.SVD_PHASES`): A, torch's column-major
    copy of it that cuSOLVER's gesvdj overwrites, U and V, plus gesvdj's workspace; when gesvdj
    does not converge, torch runs gesvd on a new copy with a V^H buffer of its own (5 P^2).
    Without vectors torch still allocates U and V for gesvdj (4 P^2)."""
    import torch

    P, tdt = J.shape[0], _torch_dtype(dtype)
    A = torch.empty(P, P, dtype=tdt, device=device)
    for a in range(0, P, block):
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        A[:, a: a + block] = torch.from_numpy(column_rows(J, a, a + block)).to(
            device=device, dtype=tdt).T
    if not vectors:
        return None, interrupt.call(torch.linalg.svdvals, A, should_stop=should_stop), None
    U, S, Vh = interrupt.call(torch.linalg.svd, A, should_stop=should_stop)
    del A
    return U, S, Vh


def svd_gram_device(J, device, vectors: bool = True, should_stop=None, block: int = 2048):
    """The float64 SVD of J by the Gram route, in torch on ``device`` (a GPU; any torch device
    works): ``(U (P, P), S (P,) float64 descending, Vh (P, P))`` as tensors there, or
    ``(None, S, None)`` without ``vectors``.

    ``J`` is a (P, P) numpy array or memory map, column-major as jacobian.npy is (a column
    block is one contiguous read); it is streamed to the device in blocks of ``block``
    columns, each checked finite (ValueError otherwise) and upcast to float64 there, so the host
    holds one block at a time. ``G = -J J^T`` is accumulated on the device (negated, so that the
    eigensolver's ascending order is the descending order of s and no column of U moves);
    ``torch.linalg.eigh`` (cuSOLVER's syevd, through its 64-bit API) overwrites G with its
    eigenvectors U, in place; ``s = sqrt(max(-w, 0))``; ``V = J^T U / s`` from a second pass over
    the blocks, whose right vectors of the singular values below ``SMALL * s_1`` are then
    orthonormalized against the others (:func:`finish_right_vectors`, what engine.svdjob does).
    ``Vh`` is the transposed view of V. ``should_stop()`` is honoured between blocks and during
    the eigensolver (:mod:`engine.interrupt`).

    Live at the peak (float64; :data:`engine.plan.SVD_PHASES`): with vectors, during the
    eigensolver G = U (P^2: in place) and the eigenvalues, plus the solver's workspace
    (cuSOLVER's syevd documents no size: about 3 P^2; LAPACK's dsyevd on the CPU 2 P^2 + 6 P + 1);
    during the second pass U and V (2 P^2, G was overwritten by U) and one column block (P x
    block in J's dtype and as float64); during the orthonormalization U, V and a few P x block
    temporaries. Without vectors: G (P^2), the copy of it that torch's eigvalsh makes inside
    (P^2) and the solver's workspace (syevd without vectors: O(P) in LAPACK)."""
    import torch

    P = J.shape[0]
    f64 = torch.float64
    G = torch.zeros(P, P, dtype=f64, device=device).T  # column-major: eigh works in place

    def blocks():
        for a in range(0, P, block):
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            b = min(a + block, P)
            yield a, b, torch.from_numpy(column_rows(J, a, b)).to(device).to(f64)

    for _, _, Ct in blocks():  # Ct = J[:, a:b]^T, (b - a, P)
        G.addmm_(Ct.T, Ct, alpha=-1.0)
        del Ct
    try:
        if not vectors:
            w = interrupt.call(torch.linalg.eigvalsh, G, should_stop=should_stop)
            del G
            return None, torch.sqrt(torch.clamp(-w, min=0.0)), None
        w = torch.empty(P, dtype=f64, device=device)
        interrupt.call(torch.linalg.eigh, G, out=(w, G), should_stop=should_stop)
    except RuntimeError as e:  # (a stop is a KeyboardInterrupt, running out of memory says so)
        if "CUSOLVER" not in str(e).upper():
            raise
        why = one_line(str(e).strip().splitlines()[0])
        raise DeviceError(
            f"cuSOLVER's eigensolver failed on the {P:,} x {P:,} Gram matrix ({why}); before "
            f"CUDA 13.0 its syevd is reported to refuse n above about 26,000 (this torch: CUDA "
            f'{torch.version.cuda}): run it with a torch built for CUDA 13, on the CPU (device '
            '= "cpu"), or with spectrum.svd_method = "gesdd"') from None
    U, S = G, torch.sqrt(torch.clamp(-w, min=0.0))
    del G, w
    V = torch.empty(P, P, dtype=f64, device=device)
    for a, b, Ct in blocks():
        torch.matmul(Ct, U, out=V[a:b])  # rows a:b of J^T U
        del Ct
    finish_right_vectors(V, S, block)
    return U, S, V.T


def finish_right_vectors(V, S, block: int = 512) -> None:
    """In place, the Gram route's last step (numpy arrays or torch tensors alike): ``V = J^T U``
    (P, P), its columns in the order of the descending float64 ``S``, becomes the right
    singular vectors: each column divided by its s, then those of the singular values below
    ``SMALL * s_1`` (the trailing columns, whose ``J^T u / s`` are the less accurate the smaller
    s is, and of no accuracy below sqrt(eps) s_1, where only the subspace they complete is
    determined) made orthonormal and orthogonal to all the columns before them: ``block``
    columns at a time, projected out twice ("twice is enough", Kahan and Parlett), then a QR
    with its signs kept. Extra memory: a few P x block arrays."""
    if isinstance(V, np.ndarray):
        qr = np.linalg.qr
    else:
        import torch

        qr = torch.linalg.qr
    P = len(S)
    n = int((S >= SMALL * S[0]).sum()) if P else 0
    V /= S.clip(1e-300)
    for a in range(n, P, block):
        Q, X = V[:, :a], V[:, a: a + block]  # views: X is written in place
        for _ in range(2):
            X -= Q @ (Q.T @ X)
        Qx, R = qr(X)
        X[...] = Qx * (1 - 2 * (R.diagonal() < 0))


def note_gram_resolution(summary: dict, S: np.ndarray) -> dict:
    """The Gram route's notes on a summary of :func:`summarize` (float64 S, descending):
    ``svd_method`` "gram", ``s_resolution`` (~sqrt(eps) s_1: singular values below it carry an
    error as large as themselves) and no determinant when the smallest is below it."""
    summary["svd_method"] = "gram"
    floor = float(np.sqrt(np.finfo(np.float64).eps) * (S[0] if len(S) else 0.0))
    summary["s_resolution"] = floor
    if len(S) and S[-1] < floor:
        summary["log10_det"] = None
    return summary


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
            out[name] = device_cosines(U[:, sl], Vh[sl].T).cpu().numpy()
    return out


def device_cosines(A, B):
    """The cosines of the principal angles between span(A) and span(B), A and B torch tensors
    (P, k) with orthonormal columns, computed where they are (a GPU), descending: the square
    roots of the eigenvalues of ``M^T M``, ``M = A^T B`` (k, k), clamped to [0, 1]. Only k x k
    matrices are allocated (M, M^T M, the eigensolver's copy of it): ``svdvals`` of M on CUDA
    would allocate its U and V too (gesvdj). Cosines near 0 carry an absolute error of
    ~sqrt(eps) (their squares come from eigenvalues near the rounding level); the others agree
    with the singular values of M to float64 rounding."""
    import torch

    M = A.T @ B
    G = M.T @ M
    del M
    w = torch.linalg.eigvalsh(G)  # ascending
    del G
    return torch.sqrt(w.clamp(0.0, 1.0)).flip(0)


@dataclass
class SVDResult:
    """The SVD of one J, whatever route computed it (:func:`engine.plan.svd_route`).

    ``S``: (P,) float64, descending. ``U``, ``Vh``: (P, P), numpy arrays in the SVD's dtype (the
    direct CPU route), torch tensors on the device (the CUDA routes), or None (without vectors,
    the CPU Gram route whose vectors stayed in its process, or after :meth:`release`).
    ``alignment``: the (P,) float64 u_i . v_i written, where it was computed on the device.
    ``summarized``: the summary the CPU Gram route's process made from its float64 vectors
    (:mod:`engine.svdjob`), with ``summary_tol`` its tolerance. ``files``: what was written,
    relative to the session. ``route``: the route that ran."""

    S: np.ndarray
    route: str
    U: Any = None
    Vh: Any = None
    alignment: np.ndarray | None = None
    summarized: dict | None = None
    summary_tol: float | None = None
    files: list[str] = field(default_factory=list)

    def summary(self, tol: float) -> dict:
        """The spectrum summary (:func:`summarize`) with the region tolerance ``tol``: from the
        vectors where they are (numpy here, the alignment and the regions' cosines computed on
        the device for tensors), the singular values alone without them; the Gram route's
        notes (:func:`note_gram_resolution`) on its results."""
        if self.summarized is not None:
            if tol != self.summary_tol:
                raise ValueError(f"this SVD was summarized with tol {self.summary_tol}, not "
                                 f"{tol}")
            return dict(self.summarized)
        S = self.S
        if self.U is None:
            out = summarize(S, tol=tol)
        elif isinstance(self.U, np.ndarray):
            out = summarize(S, self.U, self.Vh, tol)
        else:
            out = summarize(S, tol=tol, align=self.alignment,
                            cosines=region_cosines(self.U, self.Vh, S, tol))
        if self.route.startswith("gram"):
            note_gram_resolution(out, S)
        return out

    def release(self) -> None:
        """Let the vectors go (2 P^2 numbers: on CUDA, the device memory is returned to the
        driver, so the stages after this one have it)."""
        on_cuda = getattr(self.U, "is_cuda", False)
        self.U = self.Vh = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()


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
