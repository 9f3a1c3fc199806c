"""The parameter-function Jacobian at initialisation and its null space vs the bulk (finding 9).

``Jf = d log p_theta(y | x) / d theta`` at theta_0, for every held-out input x and every class y:
an (N C, P) matrix, built row block by row block with ``torch.func.vmap`` over ``torch.func.vjp``
(float64). Its SVD gives the approximate null space: the right singular directions whose
singular value is below ``rtol * sigma_max``, plus the P - N C directions that no output depends
on at all. Perturbing theta_0 inside that space leaves the outputs on those inputs unchanged to
first order.

Overlap with the bulk, swept over k: the mean cosine of the principal angles (as
:func:`engine.subspace.principal_cosines` gives them) between the k right singular vectors of J
closest to s = 1 and the null space, against the same for random k-dimensional subspaces of R^P
(sampled; by rotation invariance a random subspace against the null space is a random subspace
against the first n coordinate axes). Computed block-wise from one product of the two bases
(:mod:`engine.subspace`), so the whole sweep costs about one P x P SVD.

Arrays: ``analyses/param_function_sv_<set>.npy`` (singular values of Jf),
``analyses/param_function_overlap.npy`` (sets x k x [k, bulk cosine, random cosine]).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vjp, vmap

from .. import interrupt, regions
from ..data import probe_sets
from ..sections import ParamFunctionConfig
from ..subspace import k_grid, mean_cos_block, principal_cosines, random_mean_cos
from .common import Context, Partial, check_stop, progress


def output_jacobian(module, layout, theta: torch.Tensor, x: torch.Tensor, chunk: int = 256
                    ) -> torch.Tensor:
    """d log_softmax(f(theta, x)) / d theta, rows ordered (example, class): (N C, P)."""
    names = layout.names

    def f(flat):
        params = dict(zip(names, layout.unflatten(flat)))
        return F.log_softmax(functional_call(module, params, (x,)), dim=-1).reshape(-1)

    out, pull = vjp(f, theta)
    M = out.numel()
    rows = []
    eye = torch.eye(M, dtype=theta.dtype, device=theta.device)
    for a in range(0, M, chunk):
        rows.append(vmap(pull)(eye[a: a + chunk])[0])
    return torch.cat(rows)


def null_space(Jf: np.ndarray, rtol: float, should_stop=None
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """(singular values, Bfull, rank) of Jf: Bfull (P, P) holds all right singular vectors as
    rows, reordered so that its first ``P - rank`` rows span the approximate null space
    (singular values below ``rtol * sigma_max``, and the directions no output depends on).
    The SVD (gesdd) runs where a stop request can cut it short (:mod:`engine.interrupt`)."""
    _, sv, Vh = interrupt.call(np.linalg.svd, Jf, full_matrices=True, should_stop=should_stop)
    rank = int(np.sum(sv >= rtol * sv[0])) if sv.size else 0
    return sv, np.concatenate([Vh[rank:], Vh[:rank]]), rank


def mean_cos(A: np.ndarray, B: np.ndarray) -> float:
    """Mean principal-angle cosine between span(A) and span(B) (orthonormal columns)."""
    c = principal_cosines(A, B)
    return float(c.mean()) if c.size else 0.0


def inputs_for(ctx: Context, name: str, n: int, seed: int) -> np.ndarray:
    if name == "uniform_noise":
        rng = np.random.default_rng(seed)
        return rng.uniform(0.0, 1.0, size=(n, ctx.data.n_features))
    return probe_sets(ctx.data, seed)[name][:n]


def run(ctx: Context, cfg: ParamFunctionConfig) -> dict:
    S, Vh = ctx.S, ctx.Vh
    P = len(S)
    ks = k_grid(cfg.k_min, cfg.k_max, cfg.n_k, P)
    n = cfg.n_inputs or len(ctx.data.x_test)
    module = copy.deepcopy(ctx.problem.module).to(torch.float64)
    theta = ctx.theta0.to(torch.float64)
    order = regions.closest_to_unity(S)
    part = Partial(ctx, "param_function", cfg)
    total = len(cfg.inputs) * (1 + len(ks))
    done = 0
    progress(ctx, "param_function", 0, total, "parts")
    out = {}
    overlap = np.zeros((len(cfg.inputs), len(ks), 3))
    random_cache: dict[tuple[int, int], float] = {}
    for j, name in enumerate(cfg.inputs):
        check_stop(ctx)
        x = torch.as_tensor(inputs_for(ctx, name, n, cfg.seed), dtype=torch.float64,
                            device=theta.device)
        Jf = output_jacobian(module, ctx.problem.layout, theta, x, cfg.chunk).cpu().numpy()
        sv, Bfull, rank = null_space(Jf, cfg.rtol, ctx.should_stop)
        del Jf
        ctx.write_npy(f"analyses/param_function_sv_{name}.npy", sv)
        nd = P - rank
        M = Vh[order] @ Bfull.T  # rows: J's directions closest to s = 1 first; cols: null first
        del Bfull
        done += 1
        progress(ctx, "param_function", done, total, "parts")
        rows = []
        for i, k in enumerate(ks):
            key = f"{name}:{k}"
            row = part.get(key)
            if row is None:
                check_stop(ctx)
                bulk = mean_cos_block(M, k, nd)
                if (nd, k) not in random_cache:  # its own stream: the same draws whichever
                    # units a resume restored (one shared stream moved with them)
                    rng = np.random.default_rng([cfg.seed, nd, k])
                    random_cache[(nd, k)] = random_mean_cos(P, k, nd, rng, cfg.random_samples)
                row = {"k": k, "bulk": bulk, "random": random_cache[(nd, k)]}
                part.put(key, row)
            rows.append(row)
            overlap[j, i] = [k, row["bulk"], row["random"]]
            done += 1
            progress(ctx, "param_function", done, total, "parts")
        out[name] = {"n_inputs": int(x.shape[0]), "outputs": int(x.shape[0]) *
                     int(ctx.data.n_classes), "rank": rank, "null_dim": nd,
                     "sigma_max": float(sv[0]) if sv.size else None,
                     "sigma_min": float(sv[-1]) if sv.size else None,
                     "sweep": rows}
    ctx.write_npy("analyses/param_function_overlap.npy", overlap)
    part.done()
    return {"ks": ks, "rtol": cfg.rtol, "inputs": list(cfg.inputs), "sets": out}
