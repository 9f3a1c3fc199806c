"""Which directions matter to the trained network, in and out of distribution (finding 5).

For each probed right singular vector v_i, the trained parameters are moved to
``theta_T + scale * v_i`` and the output distribution is compared with the trained one by the
maximum over examples of ``KL(p_T(x) || p_perturbed(x))`` (nats), on each probe set of
:func:`engine.data.probe_sets`: the training inputs, the test inputs, Gaussian white noise
N(0, 1) and inverted images 1 - x.

Batched: ``chunk`` directions at once, the network evaluated with ``torch.func.vmap`` over
``functional_call`` with a leading direction axis on every parameter; in float64 by default
(KLs of 1e-7 are below float32's resolution of log-probabilities).

Arrays: ``analyses/ood_kl.npy`` ((probe sets, directions) max KL), ``analyses/ood_index.npy``
(the probed indices).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..data import probe_sets
from ..sections import OodConfig
from .common import Context, Partial, check_stop, progress, region_summary


def probe_indices(P: int, stride: int, max_directions: int) -> np.ndarray:
    idx = np.arange(0, P, stride)
    if max_directions and len(idx) > max_directions:
        idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, max_directions)).astype(int))]
    return idx


def max_kl(module, layout, theta: torch.Tensor, directions: torch.Tensor, x: torch.Tensor,
           ) -> torch.Tensor:
    """``max_n KL(p_theta(x_n) || p_{theta + d_k}(x_n))`` for each row d_k of ``directions``
    (K, P); returns (K,). Everything in the dtype of ``theta``."""
    names = layout.names

    def logp(params, xs):
        return F.log_softmax(functional_call(module, dict(zip(names, params)), (xs,)), dim=-1)

    base = logp(layout.unflatten(theta), x)  # (N, C)
    batched = layout.unflatten(theta.unsqueeze(0) + directions)  # each (K, *shape)
    pert = vmap(logp, in_dims=(0, None))(batched, x)  # (K, N, C)
    kl = (base.exp() * (base - pert)).sum(-1)  # (K, N)
    return kl.clamp_min(0).amax(-1)


def run(ctx: Context, cfg: OodConfig) -> dict:
    S, Vh = ctx.S, ctx.Vh
    P = len(S)
    idx = probe_indices(P, cfg.stride, cfg.max_directions)
    dtype = torch.float64 if cfg.precision == "float64" else ctx.thetaT.dtype
    dev = ctx.thetaT.device
    module = ctx.problem.module
    if next(module.parameters()).dtype != dtype:
        module = copy.deepcopy(module).to(dtype)
    layout = ctx.problem.layout
    theta = ctx.thetaT.to(dtype)
    probes = probe_sets(ctx.data, cfg.probe_seed)
    xs = {}
    for name in cfg.sets:
        a = probes[name][: cfg.n_inputs] if cfg.n_inputs else probes[name]
        xs[name] = torch.as_tensor(a, dtype=dtype, device=dev)
    part = Partial(ctx, "ood", cfg)
    kl = np.zeros((len(cfg.sets), len(idx)))
    starts = list(range(0, len(idx), cfg.chunk))
    progress(ctx, "ood", 0, len(idx), "dirs")
    for c, a in enumerate(starts):
        sel = idx[a: a + cfg.chunk]
        stored = part.get(str(a))
        if stored is not None:
            kl[:, a: a + len(sel)] = np.asarray(stored)
        else:
            check_stop(ctx)
            d = torch.as_tensor(Vh[sel] * cfg.scale, dtype=dtype, device=dev)
            with torch.no_grad():
                for j, name in enumerate(cfg.sets):
                    kl[j, a: a + len(sel)] = max_kl(module, layout, theta, d, xs[name]
                                                    ).cpu().numpy()
            part.put(str(a), kl[:, a: a + len(sel)].tolist())
        progress(ctx, "ood", min(a + cfg.chunk, len(idx)), len(idx), "dirs")
    ctx.write_npy("analyses/ood_kl.npy", kl)
    ctx.write_npy("analyses/ood_index.npy", idx.astype(np.int64))
    part.done()
    per_set = {}
    for j, name in enumerate(cfg.sets):
        per_set[name] = {"regions": region_summary(kl[j], S, ctx.tol, idx),
                         "median": float(np.median(kl[j])), "max": float(kl[j].max()),
                         "min": float(kl[j].min())}
    return {"sets": list(cfg.sets), "n_directions": int(len(idx)), "stride": cfg.stride,
            "scale": cfg.scale, "precision": cfg.precision, "tol": ctx.tol,
            "n_inputs": {k: int(v.shape[0]) for k, v in xs.items()}, "per_set": per_set}
