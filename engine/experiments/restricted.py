"""Training restricted to a subspace of singular directions (finding 10).

``theta = theta_0 + B^T c`` with c starting at 0 and B (k, P) a set of k right singular vectors;
c is trained with the run's optimizer, schedule and batches, the gradient with respect to c
being ``B grad L(theta)`` (the chain rule through theta = theta_0 + B^T c; an L2 penalty of the run
acts on theta, as in the unrestricted run). Families of k directions:

* ``bulk``       the k directions closest to s = 1 (smallest |s - 1|, :mod:`engine.regions`)
* ``complement`` the k directions farthest from s = 1, i.e. the orthogonal complement of the
  (P - k) bulk directions
* ``top``        v_1 .. v_k (largest s, chaotic first)
* ``bottom``     the k smallest s (stable)

Every (family, k) run is the same computation in the full basis V with the coordinates outside
the chosen set masked to zero, so all runs are trained together as one batch: per step
``Theta = theta_0 + C V`` (runs x P), the gradients of all runs with ``torch.func.vmap`` over
``torch.func.grad``, ``G_c = (G V^T) * mask``, and one optimizer update over C (the optimizers
act elementwise, so a masked coordinate with zero gradient never moves). With V = I and the
full mask this is ordinary training.

Arrays: ``analyses/restricted.npy`` (families x k x [k, test_loss, test_acc, train_loss]).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .. import regions
from ..files import atomic_save_npz
from ..sections import RestrictedConfig
from ..subspace import k_grid
from ..train import Optimizer
from .common import Context, Partial, check_stop, progress


def family_indices(family: str, S: np.ndarray, k: int) -> np.ndarray:
    P = len(S)
    if family == "bulk":
        return regions.closest_to_unity(S, k)
    if family == "complement":
        return regions.farthest_from_unity(S, k)
    if family == "top":
        return np.arange(k)
    if family == "bottom":
        return np.arange(P - k, P)
    raise ValueError(family)


def batched_grad(problem):
    """(R, P) parameters -> (R, P) gradients of the mean cross-entropy on one batch."""
    module, layout = problem.module, problem.layout

    def loss(flat, x, y):
        params = dict(zip(layout.names, layout.unflatten(flat)))
        return F.cross_entropy(functional_call(module, params, (x,)), y)

    return vmap(grad(loss), in_dims=(0, None, None))


def restricted_train(problem, theta0: torch.Tensor, basis: torch.Tensor, mask: torch.Tensor,
                     should_stop=None, start: tuple | None = None, checkpoint=None,
                     every: int = 50) -> torch.Tensor:
    """Train R restricted runs together: run r is ``theta_0 + basis^T c_r`` with c_r
    supported on ``mask[r]``. ``basis`` (P, P) has orthonormal rows (V^T), ``mask`` (R, P) is
    0/1. Returns the final parameters (R, P). ``start = (t, C, state)`` continues from a
    checkpoint; ``checkpoint(t, C, state)`` is called every ``every`` steps."""
    p = problem
    cfg = p.optimizer.cfg
    wd = cfg.weight_decay
    opt = Optimizer(dataclasses.replace(cfg, weight_decay=0.0))
    mask = mask.to(theta0.dtype)
    C = torch.zeros(mask.shape, dtype=theta0.dtype, device=theta0.device)
    state = opt.init(C)
    t0 = 0
    if start is not None:
        t0, C, state = start
    gfun = batched_grad(p)
    for t in range(t0, p.steps):
        if checkpoint is not None and t > t0 and t % every == 0:
            checkpoint(t, C, state)
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        x, y = p.batch(t)
        theta = theta0 + C @ basis
        G = gfun(theta, x, y)
        if wd:
            G = G + wd * theta
        C, state = opt.update(C, state, (G @ basis.T) * mask, float(p.lrs[t]), t)
    return theta0 + C @ basis


def run(ctx: Context, cfg: RestrictedConfig) -> dict:
    if ctx.problem.statistics is not None or getattr(ctx.problem.kernel, "random", False):
        # its batched gradient runs the module outside the kernel, which carries BatchNorm's
        # statistics and dropout's masks per run
        raise ValueError("analysis.restricted does not train models with BatchNorm or dropout "
                         "in training mode yet: disable it for this model")
    S = ctx.S
    P = len(S)
    ks = k_grid(cfg.k_min, cfg.k_max, cfg.n_k, P)
    dt, dev = ctx.theta0.dtype, ctx.theta0.device
    basis = torch.as_tensor(ctx.Vh, dtype=dt, device=dev)
    runs = [(f, k) for f in cfg.families for k in ks]
    part = Partial(ctx, "restricted", cfg)
    results: dict[str, dict] = {}
    progress(ctx, "restricted", 0, len(runs), "runs")
    for a in range(0, len(runs), cfg.batch_runs):
        batch = runs[a: a + cfg.batch_runs]
        keys = [f"{f}:{k}" for f, k in batch]
        if all(part.get(key) is not None for key in keys):
            results.update({key: part.get(key) for key in keys})
        else:
            check_stop(ctx)
            mask = torch.zeros(len(batch), P, dtype=dt, device=dev)
            for r, (f, k) in enumerate(batch):
                mask[r, torch.as_tensor(family_indices(f, S, k), device=dev)] = 1
            ck = Checkpoint(ctx, part.fp, a, dt, dev)
            with torch.no_grad():
                thetas = restricted_train(ctx.problem, ctx.theta0, basis, mask, ctx.should_stop,
                                          start=ck.load(), checkpoint=ck.save)
            for key, th in zip(keys, thetas):
                te = ctx.problem.evaluate(th, ctx.problem.x_test, ctx.problem.y_test)
                tr = ctx.problem.evaluate(th, ctx.problem.x_train, ctx.problem.y_train)
                row = {"test_loss": te[0], "test_acc": te[1], "train_loss": tr[0],
                       "train_acc": tr[1]}
                part.put(key, row)
                results[key] = row
        progress(ctx, "restricted", min(a + cfg.batch_runs, len(runs)), len(runs), "runs")
    arr = np.array([[[k, results[f"{f}:{k}"]["test_loss"], results[f"{f}:{k}"]["test_acc"],
                      results[f"{f}:{k}"]["train_loss"]] for k in ks] for f in cfg.families])
    ctx.write_npy("analyses/restricted.npy", arr)
    part.done()
    (ctx.session.path / Checkpoint.REL).unlink(missing_ok=True)
    full = ctx.problem.evaluate(ctx.thetaT, ctx.problem.x_test, ctx.problem.y_test)
    return {"ks": ks, "families": list(cfg.families),
            "test_loss": {f: [results[f"{f}:{k}"]["test_loss"] for k in ks]
                          for f in cfg.families},
            "test_acc": {f: [results[f"{f}:{k}"]["test_acc"] for k in ks] for f in cfg.families},
            "train_loss": {f: [results[f"{f}:{k}"]["train_loss"] for k in ks]
                           for f in cfg.families},
            "full_test_loss": full[0], "full_test_acc": full[1]}


class Checkpoint:
    """The optimizer state of the batch in training (``analyses/.restricted.ckpt.npz``), so an
    interrupted analysis resumes at its last checkpoint step instead of the batch's start."""

    REL = "analyses/.restricted.ckpt.npz"

    def __init__(self, ctx: Context, fp: str, batch: int, dtype, device):
        self.path = ctx.session.path / self.REL
        self.key = f"{fp}:{batch}"
        self.dtype, self.device = dtype, device

    def load(self):
        if not self.path.is_file():
            return None
        with np.load(self.path, allow_pickle=False) as f:
            if str(f["key"]) != self.key:
                return None
            n = int(f["n_state"])
            t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
            return int(f["t"]), t(f["C"]), tuple(t(f[f"s{i}"]) for i in range(n))

    def save(self, step: int, C: torch.Tensor, state: tuple) -> None:
        arrays = {f"s{i}": s.detach().cpu().numpy() for i, s in enumerate(state)}
        atomic_save_npz(self.path, {"key": np.array(self.key), "t": np.array(step),
                                    "n_state": np.array(len(state)),
                                    "C": C.detach().cpu().numpy(), **arrays})
