"""J without forming it: J v by forward mode through training, J^T u by reverse mode, J as a
scipy ``LinearOperator``, its top (or bottom) singular values, and the number of singular values
in [1 - tau, 1 + tau] estimated by stochastic Lanczos quadrature with an error bar.

    op = TrainingJacobian(problem, theta0)      J as an operator (float64)
    op.matmat(V)    (P, K) -> J V               one training run carrying K tangents
    op.rmatmat(U)   (P, K) -> J^T U             reverse mode through training, checkpointed
    op.jvp(V), op.vjp(U)   (K, P) torch tensors, kept on the problem's device (the GPU side:
                           scipy's solvers run on the host, the products where the problem is)
    top_singular_values(op, k, vectors=True)    scipy svds (ARPACK/PROPACK/LOBPCG) on J
    bulk_count(op, tols, probes, steps,         SLQ on J^T J: count, bounds, error bar
               deflate=(s, V))                  (the known top k projected out)
    StoredJacobian(J)                           the same operator side for a stored J
    estimate_seconds(problem, theta0, ...)      what a run will take: a few timed steps

Costs and memory (T training steps, P parameters, K vectors at once):
* ``matmat``: one training run with K tangents (the fused kernels of the exact J), memory
  ~(2 + optimizer state) x K x P floats.
* ``rmatmat`` with a fused kernel and a linear update (SGD, momentum, Nesterov, weight
  decay): per step back, the update's transpose and K Hessian-vector products by the fused
  kernel at that step's primal state, read from the recorded trajectory (which J v reads
  too; kept while it fits TRAJECTORY_FRACTION of the free memory: 1.0 GB on the 1M preset,
  where it makes one J v 2.2x and one J^T u 1.5x faster) or trained again segment by
  segment (L = ceil(sqrt(T)) steps) from checkpoints; memory ``(T / L) x (1 + optimizer
  state) x P`` floats of checkpoints and one segment's primal states.
* ``rmatmat`` otherwise (Adam, other modules): checkpoints as above; each segment is trained
  again with autograd on (torch.func gradients, whose graph holds L steps of the batch's
  activations and a few P-vectors per step) and differentiated for the K cotangents at once
  (one backward pass vmapped over K). About 3-4 training runs' work, plus one training run to
  lay the checkpoints down (once per operator).
* ``bulk_count``: ``probes`` Lanczos processes run in lockstep (their products batched: K =
  probes), each keeping its ``steps`` Lanczos vectors for full reorthogonalisation:
  probes x steps x P float64 in memory.

The bulk count is the integral of the indicator of [(1 - tau)^2, (1 + tau)^2] against the
spectral measure of J^T J seen from each probe vector; Gauss quadrature (the Lanczos nodes and
weights) gives the estimate, and the Chebyshev-Markov-Stieltjes inequalities give, for every
probe, rigorous lower and upper bounds on that measure's mass in the window (the nodes next to
the window's ends are counted out, then in). Averaged over probes (Rademacher vectors) and
scaled by P, the reported bar is [mean lower - 2 s.e., mean upper + 2 s.e.], s.e. the standard
error of the probes' estimates. Deflation by the top k singular vectors runs the same on J^T J
restricted to their complement (the probes projected, each scaled by its own |z|^2).

The bar's limit is the spectrum's shape, not the code: around 1 a training Jacobian's singular
values spread over many decades of |s - 1| with no gap, and resolving a window of width 2 tau inside
[0, s_1^2] takes a polynomial (Lanczos steps) of degree ~ s_1^2 / tau; at the paper's tau =
1e-3 no affordable number of products gives an informative bar (docs/matfree.md, "What the bar
can resolve"; ``benchmarks/matfree.py resolution`` measures it on a stored J).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator, svds

from .plan import available_memory
from .train import GenericKernel, Problem, Trajectory, record_trajectory, train_tangents

# the share of the memory free where the products run that the recorded trajectory may take
TRAJECTORY_FRACTION = 0.25


@dataclass
class OpStats:
    jvp_vectors: int = 0
    vjp_vectors: int = 0
    jvp_seconds: float = 0.0
    vjp_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    # how J^T u ran: "replay" (over the recorded trajectory), "replay, segments" (primal
    # states trained again from checkpoints) or "checkpointed" (autograd)
    reverse: str = ""
    trajectory_bytes: int = 0  # the recorded primal trajectory's (0: none, see _record)


class TrainingJacobian(LinearOperator):
    """J = d theta_T / d theta_0 of ``problem`` at ``theta0`` as a
    ``scipy.sparse.linalg.LinearOperator`` of shape (P, P), dtype float64 (products in
    ``dtype``, float64 by default; numpy float64 in and out): every scipy solver applies
    (``svds(op)``, ``lsqr(op, b)``, ``eigsh(op.gram())``), and ``op.H`` is Jᵀ. ``matmat`` and
    ``rmatmat`` also take a vector (P,). ``steps`` is the number of training steps T."""

    def __init__(self, problem: Problem, theta0: torch.Tensor, segment: int | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 dtype: torch.dtype = torch.float64,
                 on_product: Callable[[str, int], None] | None = None,
                 reverse: str = "auto", trajectory: bool | int = True):
        if getattr(problem.kernel, "random", False):
            raise ValueError("this training draws dropout masks per step, which the "
                             "matrix-free operator does not: compute J exactly "
                             "(engine.training_jacobian)")
        self.problem = problem.astype(dtype)
        self.theta0 = theta0.detach().to(dtype)
        self.on_product = on_product  # ("jvp" or "vjp", vectors) after every product
        self.P = self.theta0.numel()
        super().__init__(np.dtype(np.float64), (self.P, self.P))
        self.steps = self.problem.steps
        self.segment = int(segment or max(1, math.ceil(math.sqrt(self.steps))))
        self.should_stop = should_stop
        # the reverse pass differentiates the gradient itself: torch.func's, which autograd
        # can follow (the fused kernels compute their gradients outside autograd)
        # (with a generic problem's own loss: it was the cross-entropy, whatever the loss)
        # (on the training module: BatchNorm normalizing by the batch, as the kernel's does)
        self.reverse = dataclasses.replace(self.problem, kernel=GenericKernel(
            getattr(self.problem.kernel, "module", self.problem.module),
            getattr(self.problem.kernel, "loss_fn", None)))
        self._checkpoints: dict[bool, list] = {}  # see checkpoints(fused)
        # recorded at the first product when it fits (trajectory=False: never; the primal
        # is then trained again inside every product): in ``trajectory`` bytes, or with True
        # in TRAJECTORY_FRACTION of the memory free where the products run
        self._trajectory: Trajectory | None | bool = False if trajectory is not False else None
        self.trajectory_budget = None if isinstance(trajectory, bool) else int(trajectory)
        self.stats = OpStats()
        if reverse not in ("auto", "replay", "checkpointed"):
            raise ValueError(f"reverse must be auto, replay or checkpointed, got {reverse!r}")
        self.reverse_mode = reverse  # J^T u: see vjp

    def _record(self) -> Trajectory | None:
        """The primal trajectory every product reads (:func:`engine.train.record_trajectory`),
        or None when it does not fit the budget. The operator's own memory is a few K x P
        blocks, so the trajectory may take more than the exact J's (a fixed 384 MB beside
        its chunk): on the 1M-parameter preset it is ~1 GB, and without it every J v trains
        the primal again and every J^T u trains each segment again."""
        budget = self.trajectory_budget
        if budget is None:
            dev = self.theta0.device
            free = (torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda"
                    else available_memory())
            budget = int(TRAJECTORY_FRACTION * free)
        traj = record_trajectory(self.problem, self.theta0, budget)
        self.stats.trajectory_bytes = traj.nbytes if traj is not None else 0
        return traj

    # ---- J V -------------------------------------------------------------------------------
    def jvp(self, tangents: torch.Tensor) -> torch.Tensor:
        """J v for each row of ``tangents`` (K, P), on the problem's device: the torch side of
        the operator (the rows stay where they are computed)."""
        t0 = time.perf_counter()
        if self._trajectory is False:  # the primal once for every product (if it fits)
            self._trajectory = self._record()
        _, rows = train_tangents(self.problem, self.theta0,
                                 tangents.to(self.theta0.device, self.theta0.dtype),
                                 self.should_stop, trajectory=self._trajectory)
        self.stats.jvp_vectors += tangents.shape[0]
        self.stats.jvp_seconds += time.perf_counter() - t0
        if self.on_product is not None:
            self.on_product("jvp", tangents.shape[0])
        return rows

    @staticmethod
    def _on_columns(product: Callable[[torch.Tensor], torch.Tensor], X: np.ndarray
                    ) -> np.ndarray:
        """A product of rows (K, P) -> (K, P) applied to the columns of X (P, K) or to a
        vector (P,), in float64 numpy (what scipy's solvers pass and expect)."""
        X = np.asarray(X, dtype=np.float64)
        vec = X.ndim == 1
        out = product(torch.from_numpy(np.ascontiguousarray((X[:, None] if vec else X).T))
                      ).double().cpu().numpy().T
        return out[:, 0] if vec else out

    def matmat(self, V: np.ndarray) -> np.ndarray:
        """J V for V of shape (P, K) (or (P,)): one training run carrying K tangents."""
        return self._on_columns(self.jvp, V)

    _matmat = _matvec = matmat  # what LinearOperator's matvec, @ and dot call

    # ---- J^T U -----------------------------------------------------------------------------
    def _step(self, p: Problem, theta, state, t: int):
        x, y = p.batch(t)
        g = p.layout.flatten(p.kernel.grad(p.layout.unflatten(theta), x, y))
        return p.optimizer.update(theta, state, g, float(p.lrs[t]), t)

    def checkpoints(self, fused: bool = False
                    ) -> list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        """(theta, optimizer state) at the start of every segment, computed once: trained by
        torch.func's gradients (what the autograd reverse pass differentiates), or with
        ``fused`` by the fused kernel (J v's trajectory, bitwise: what the replay starts its
        segments from)."""
        if fused not in self._checkpoints:
            t0 = time.perf_counter()
            p = self.problem if fused else self.reverse
            theta, state = self.theta0.clone(), p.optimizer.init(self.theta0)
            out = []
            with torch.no_grad():
                for t in range(self.steps):
                    if t % self.segment == 0:
                        out.append((theta.clone(), tuple(s.clone() for s in state)))
                    theta, state = self._step(p, theta, state, t)
            self._checkpoints[fused] = out
            self.stats.checkpoint_seconds += time.perf_counter() - t0
        return self._checkpoints[fused]

    def rmatmat(self, U: np.ndarray) -> np.ndarray:
        """J^T U for U of shape (P, K) (or (P,))."""
        return self._on_columns(self.vjp, U)

    _rmatmat = _rmatvec = rmatmat

    def vjp(self, cotangents: torch.Tensor) -> torch.Tensor:
        """u^T J for each row of ``cotangents`` (K, P), on the problem's device: reverse mode
        through training. With a fused kernel and an optimizer whose update is linear (SGD,
        momentum, Nesterov, weight decay), each step back is the update's transpose and K
        Hessian-vector products by the fused kernel at that step's primal state (the loss
        Hessian is symmetric, so the gradient's vjp is its jvp): the states come from the
        recorded trajectory when it fits, else segment by segment from checkpoints.
        Otherwise (Adam, a module without a fused kernel) segment by segment from the last,
        each trained again from its checkpoint under autograd."""
        t0 = time.perf_counter()
        Ut = cotangents.to(self.theta0.device, self.theta0.dtype)
        K = Ut.shape[0]
        kernel = self.problem.kernel
        replay = (hasattr(kernel, "primal") and hasattr(kernel, "tangent")
                  and not self.problem.optimizer.tangent_reads_primal)
        if self.reverse_mode == "replay" and not replay:
            raise ValueError("reverse = replay needs a fused kernel and an optimizer linear in "
                             "its inputs (not Adam)")
        if replay and self.reverse_mode != "checkpointed":
            if self._trajectory is False:
                self._trajectory = self._record()
            self.stats.reverse = "replay" if self._trajectory is not None \
                else "replay, segments"
            out = self._vjp_replay(Ut)
        else:
            self.stats.reverse = "checkpointed"
            out = self._vjp_checkpointed(Ut)
        self.stats.vjp_vectors += K
        self.stats.vjp_seconds += time.perf_counter() - t0
        if self.on_product is not None:
            self.on_product("vjp", K)
        return out

    def _segment_states(self, i: int) -> list:
        """The fused kernel's primal states of segment i's steps, trained from its
        checkpoint."""
        p = self.problem
        theta, state = self.checkpoints(fused=True)[i]
        out = []
        for t in range(i * self.segment, min((i + 1) * self.segment, self.steps)):
            x, y = p.batch(t)
            st = p.kernel.primal(p.layout.unflatten(theta), x, y)
            out.append(st)
            theta, state = p.optimizer.update(theta, state, p.layout.flatten(st.grads),
                                              float(p.lrs[t]), t)
        return out

    def _vjp_replay(self, Ut: torch.Tensor) -> torch.Tensor:
        p, lay, traj = self.problem, self.problem.layout, self._trajectory
        zero = torch.zeros_like(self.theta0)
        state0 = tuple(torch.zeros_like(s) for s in p.optimizer.init(zero))
        cot_theta = Ut
        cot_state = tuple(torch.zeros_like(Ut) for _ in state0)
        if traj is not None:
            segments = [(0, traj.states)]
        else:
            n = math.ceil(self.steps / self.segment)
            segments = ((i * self.segment, None) for i in range(n - 1, -1, -1))
        for a, states in segments:
            if states is None:  # this segment's states, trained again from its checkpoint
                states = self._segment_states(a // self.segment)
            for t in range(a + len(states) - 1, a - 1, -1):
                if self.should_stop is not None and self.should_stop():
                    raise KeyboardInterrupt
                lr = float(p.lrs[t])
                # the update is linear in (theta, state, g) with no constant term: its vjp
                # at zero is its transpose
                _, back = torch.func.vjp(
                    lambda th, st, g: p.optimizer.update(th, st, g, lr, t), zero, state0, zero)
                c_theta, c_state, c_g = torch.func.vmap(back)((cot_theta, cot_state))
                hv = p.kernel.tangent(states[t - a],
                                      tuple(c.contiguous() for c in lay.unflatten(c_g)))
                cot_theta = c_theta + lay.flatten(hv)
                cot_state = c_state
        return cot_theta

    def _vjp_checkpointed(self, Ut: torch.Tensor) -> torch.Tensor:
        K = Ut.shape[0]
        p = self.reverse
        cps = self.checkpoints()
        # the K cotangents go back together: one backward pass per segment, vmapped over K
        # (autograd's is_grads_batched)
        cot_theta = Ut
        cot_state = tuple(torch.zeros((K, *s.shape), dtype=s.dtype, device=s.device)
                          for s in cps[0][1])
        for i in range(len(cps) - 1, -1, -1):
            if self.should_stop is not None and self.should_stop():
                raise KeyboardInterrupt
            a, b = i * self.segment, min((i + 1) * self.segment, self.steps)
            theta_s = cps[i][0].detach().requires_grad_(True)
            state_s = tuple(s.detach().requires_grad_(True) for s in cps[i][1])
            with torch.enable_grad():
                theta, state = theta_s, state_s
                for t in range(a, b):
                    theta, state = self._step(p, theta, state, t)
                grads = torch.autograd.grad((theta, *state), (theta_s, *state_s),
                                            (cot_theta, *cot_state), is_grads_batched=True,
                                            allow_unused=True)
            cot_theta = grads[0]
            cot_state = tuple(torch.zeros_like(c) if g is None else g
                              for g, c in zip(grads[1:], cot_state))
        # the optimizer's initial state does not depend on theta_0: its cotangent ends here
        return cot_theta

    def linear_operator(self) -> LinearOperator:
        return as_operator(self)

    def gram(self) -> LinearOperator:
        """J^T J (symmetric, positive semi-definite)."""
        return LinearOperator((self.P, self.P), matvec=lambda v: self.rmatmat(self.matmat(v)),
                              matmat=lambda V: self.rmatmat(self.matmat(V)),
                              dtype=np.float64)


def as_operator(op: "TrainingJacobian | StoredJacobian") -> LinearOperator:
    """J as a scipy LinearOperator through the object's own products (so that they can be
    counted, timed or stopped)."""
    return LinearOperator((op.P, op.P), matvec=op.matmat, rmatvec=op.rmatmat,
                          matmat=op.matmat, rmatmat=op.rmatmat, dtype=np.float64)


class StoredJacobian(LinearOperator):
    """A J held as a matrix, a ``LinearOperator`` (P, P) float64 like
    :class:`TrainingJacobian` (``P``, ``matmat``, ``rmatmat``, ``linear_operator``, ``gram``):
    the estimators below run on a stored J as well, where the exact SVD can check them (the
    tests, benchmarks/matfree.py), and a product costs a matrix multiply instead of a training
    run."""

    def __init__(self, J: np.ndarray):
        self.J = np.asarray(J, dtype=np.float64)
        self.P = self.J.shape[0]
        super().__init__(np.dtype(np.float64), (self.P, self.P))
        self._G: np.ndarray | None = None

    def matmat(self, V: np.ndarray) -> np.ndarray:
        """J V for V (P, K) or (P,)."""
        return self.J @ V

    def rmatmat(self, U: np.ndarray) -> np.ndarray:
        """J^T U for U (P, K) or (P,)."""
        return self.J.T @ U

    _matmat = _matvec = matmat
    _rmatmat = _rmatvec = rmatmat

    def linear_operator(self) -> LinearOperator:
        return as_operator(self)

    def gram(self) -> LinearOperator:
        if self._G is None:
            self._G = self.J.T @ self.J
        return aslinearoperator(self._G)


# --------------------------------------------------------------------------------------------
# the top (bottom) singular values


class TopKFailed(ArithmeticError):
    """The top-k solver returned right singular vectors that are not orthonormal: its values
    are not singular values of J."""


# the largest |V^T V - I| accepted of the returned right vectors. Measured: 1e-11 (float64
# products) and 5.8e-4 (PROPACK, float32 products, the 1M preset: its top 20 equal ARPACK's
# to 6 digits) when the values are right; 1.0, 4.7 and 5.9 for the spurious, repeated values
# PROPACK returned on a P = 610 run (float32 products; float64 ones at k = 300)
ORTHOGONALITY_TOL = 1e-2


def top_singular_values(op: TrainingJacobian | StoredJacobian, k: int, solver: str = "arpack",
                        which: str = "LM", tol: float = 1e-10, seed: int = 0,
                        maxiter: int | None = None, vectors: bool = False,
                        info: dict | None = None
                        ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (``which="SM"``: smallest) singular values of J, descending, by
    scipy's ``svds`` on the operator (ARPACK, PROPACK or LOBPCG); with ``vectors``, also the
    right singular vectors as the columns of a (P, k) array, in the same order.

    The right vectors are always computed and checked: PROPACK's partial
    reorthogonalisation assumes exact products, and with float32 products (or k near P/2)
    it returns spurious, repeated values whose vectors are far from orthonormal. Such a
    result is computed again by ARPACK; one that fails the check with any other solver
    raises :class:`TopKFailed`. ``info`` (a dict) receives the solver that gave the result,
    its vectors' orthogonality and why it fell back, if it did."""
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(op.P)
    kw = {"maxiter": maxiter} if maxiter else {}
    res = svds(op.linear_operator(), k=k, which=which, solver=solver, tol=tol,
               return_singular_vectors="vh", random_state=seed,
               v0=v0 if solver != "lobpcg" else None, **kw)
    s = np.asarray(res[1], dtype=np.float64)
    order = np.argsort(s)[::-1]
    V = np.ascontiguousarray(np.asarray(res[2], dtype=np.float64)[order].T)
    orth = float(np.abs(V.T @ V - np.eye(V.shape[1])).max()) if V.size else 0.0
    if orth > ORTHOGONALITY_TOL:
        why = (f"{solver}'s right vectors are not orthonormal (max |V^T V - I| = {orth:.2g}): "
               "its values are not singular values of J")
        if solver != "propack":
            raise TopKFailed(f"the top {k}: {why}; loosen spectrum.top_tol or lower "
                             "spectrum.k")
        out = top_singular_values(op, k, "arpack", which, tol, seed, maxiter, True, info)
        if info is not None:
            info["fallback"] = why
        return out if vectors else out[0]
    if info is not None:
        info.update(solver=solver, orthogonality=orth)
    return (s[order], V) if vectors else s[order]


# --------------------------------------------------------------------------------------------
# how many singular values lie in [1 - tau, 1 + tau]


@dataclass
class BulkEstimate:
    tol: float
    count: float  # the estimate
    lower: float  # the error bar: [lower, upper]
    upper: float
    stderr: float  # the probes' standard error (the statistical part of the bar)
    quadrature: tuple[float, float]  # mean CMS bounds x P (the quadrature part)
    per_probe: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def lanczos_lockstep(matmat: Callable[[np.ndarray], np.ndarray], Z: np.ndarray, steps: int
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``Z.shape[1]`` independent Lanczos processes on a symmetric operator, started at the
    columns of Z, their products computed together (one ``matmat`` per step); full
    reorthogonalisation. Returns (alpha, beta) of each process's tridiagonal matrix (a process
    that finds an invariant subspace stops early)."""
    n, K = Z.shape
    Q = [[] for _ in range(K)]
    alphas = [[] for _ in range(K)]
    betas = [[] for _ in range(K)]
    q = Z / np.linalg.norm(Z, axis=0)
    live = list(range(K))
    for _ in range(steps):
        if not live:
            break
        W = matmat(q[:, live])
        for c, k in enumerate(list(live)):
            w = W[:, c]
            Q[k].append(q[:, k].copy())
            a = float(q[:, k] @ w)
            alphas[k].append(a)
            Qk = np.array(Q[k]).T
            w = w - Qk @ (Qk.T @ w)  # full reorthogonalisation (twice is enough)
            w = w - Qk @ (Qk.T @ w)
            b = float(np.linalg.norm(w))
            if b < 1e-12 * max(1.0, abs(a)):
                live.remove(k)
                continue
            betas[k].append(b)
            q[:, k] = w / b
        live = [k for k in live if len(betas[k]) == len(alphas[k])]
    out = []
    for k in range(K):
        m = len(alphas[k])
        out.append((np.array(alphas[k]), np.array(betas[k][: m - 1])))
    return out


def window_mass(alpha: np.ndarray, beta: np.ndarray, lo: float, hi: float
                ) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the mass in [lo, hi] of the spectral measure whose Gauss
    quadrature is the tridiagonal (alpha, beta) (unit start vector): the estimate sums the
    weights of the nodes inside; the bounds follow Chebyshev-Markov-Stieltjes (the nodes next to
    each end counted out for the lower bound, in for the upper)."""
    from scipy.linalg import eigh_tridiagonal

    nodes, vecs = eigh_tridiagonal(alpha, beta)
    w = vecs[0] ** 2
    inside = (nodes >= lo) & (nodes <= hi)
    est = float(w[inside].sum())
    idx = np.arange(len(nodes))
    at_or_above_lo = idx[nodes >= lo]
    at_or_below_hi = idx[nodes <= hi]
    below_lo = idx[nodes < lo]
    if len(at_or_above_lo) == 0 or len(at_or_below_hi) == 0:
        lower = 0.0
    else:
        k1, kb = at_or_above_lo[0], at_or_below_hi[-1]
        lower = float(w[k1 + 1: kb].sum()) if kb > k1 + 1 else 0.0
    start = below_lo[-1] if len(below_lo) else 0
    stop = (at_or_below_hi[-1] + 1) if len(at_or_below_hi) else 0
    upper = float(w[start: min(stop + 1, len(w))].sum())
    return est, lower, min(1.0, upper)


def density_of_values(s: np.ndarray, grid: np.ndarray, width: float,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """A Gaussian-smoothed density of the singular values ``s`` (K,) over ``log10 s``: at each
    point of ``grid`` (log10 s, (G,)) the sum of ``weights`` (default 1/K each) times a normal
    density of std ``width`` (decades) centred on each log10 s. Integrates to the weights' sum
    (per decade). Values of 0 are left out."""
    s = np.asarray(s, dtype=np.float64)
    w = np.full(len(s), 1.0 / max(1, len(s))) if weights is None else np.asarray(weights)
    keep = s > 0
    x = np.log10(s[keep])[None, :]
    g = np.asarray(grid, dtype=np.float64)[:, None]
    k = np.exp(-0.5 * ((g - x) / width) ** 2) / (width * math.sqrt(2 * math.pi))
    return k @ w[keep]


def spectral_density(op: TrainingJacobian | StoredJacobian, grid: np.ndarray,
                     width: float = 0.05, probes: int = 8, steps: int = 60, seed: int = 0
                     ) -> np.ndarray:
    """The density of J's singular values over ``grid`` (log10 s, (G,)), smoothed as
    :func:`density_of_values` with std ``width`` decades, by stochastic Lanczos quadrature on
    JᵀJ (``probes`` Rademacher vectors, ``steps`` steps each, the probes' products batched):
    each probe's Gauss nodes θ (eigenvalues of JᵀJ, s = √θ) weighted by the squared first
    components of the Ritz vectors, averaged over the probes. With the exact S at hand,
    ``density_of_values(S, grid, width)`` is the curve it estimates."""
    from scipy.linalg import eigh_tridiagonal

    rng = np.random.default_rng(seed)
    Z = rng.choice([-1.0, 1.0], size=(op.P, probes))
    G = op.gram()
    out = np.zeros(len(grid))
    for alpha, beta in lanczos_lockstep(G.matmat, Z, steps):
        nodes, vecs = eigh_tridiagonal(alpha, beta)
        out += density_of_values(np.sqrt(np.clip(nodes, 0, None)), grid, width, vecs[0] ** 2)
    return out / probes


def quadrature_density(tri: list[tuple[np.ndarray, np.ndarray]], norms: np.ndarray,
                       known: np.ndarray, P: int, width: float = 0.05, points: int = 241
                       ) -> dict:
    """The density of J's singular values (per decade of s, integrating to 1 over log10 s)
    from stochastic Lanczos quadrature already run: each probe's tridiagonal (``tri``), its
    squared norm (``norms``: the share of the P values it stands for) and the values deflated
    out and known exactly (``known``, each 1/P). Smoothed as :func:`density_of_values` with
    std ``width`` decades, on ``points`` points from a few widths below the smallest node to
    a few above the largest. Returns {log10_s, per_decade, width} (lists, for matfree.json)."""
    from scipy.linalg import eigh_tridiagonal

    nodes, weights = [], []
    for (alpha, beta), n in zip(tri, norms):
        theta, vecs = eigh_tridiagonal(alpha, beta)
        nodes.append(np.sqrt(np.clip(theta, 0, None)))
        weights.append(vecs[0] ** 2 * n / P / len(tri))
    s = np.concatenate(nodes + [np.asarray(known, dtype=np.float64)])
    w = np.concatenate(weights + [np.full(len(known), 1.0 / P)])
    pos = s[s > 0]
    lo = math.log10(max(float(pos.min()), float(pos.max()) * 1e-8)) if pos.size else -1.0
    hi = math.log10(float(pos.max())) if pos.size else 1.0
    grid = np.linspace(lo - 4 * width, hi + 4 * width, points)
    keep = s >= 10.0 ** (lo - 4 * width)  # (values far below the grid would add nothing)
    return {"log10_s": grid.tolist(),
            "per_decade": density_of_values(s[keep], grid, width, w[keep]).tolist(),
            "width": width}


def bulk_count(op: TrainingJacobian | StoredJacobian, tols=(1e-3, 1e-2), probes: int = 8,
               steps: int = 60, seed: int = 0,
               deflate: tuple[np.ndarray, np.ndarray] | None = None,
               density: dict | None = None) -> list[BulkEstimate]:
    """How many singular values of J lie in [1 - tol, 1 + tol], for each tol: stochastic
    Lanczos quadrature on J^T J with ``probes`` Rademacher vectors and ``steps`` Lanczos steps
    each (2 x steps operator products, batched over the probes).

    ``deflate = (s, V)``: singular values already known with their right singular vectors
    (the columns of V, orthonormal; e.g. the top k from :func:`top_singular_values`). The
    quadrature then runs on J^T J restricted to the complement of V, whose spectrum is the
    rest: the top of the range the window has to be resolved within falls from s_1^2 to
    s_(k+1)^2, and the bounds close in after fewer steps. The known values are counted
    exactly (those inside the window), the rest estimated from the projected probes.

    ``density``: a dict to fill with the spectral density the same quadrature gives
    (:func:`quadrature_density`: no more products)."""
    rng = np.random.default_rng(seed)
    Z = rng.choice([-1.0, 1.0], size=(op.P, probes))
    gram = op.gram().matmat
    known = np.zeros(0)
    if deflate is not None:
        known, V = np.asarray(deflate[0], dtype=np.float64), deflate[1]

        def off_v(X: np.ndarray) -> np.ndarray:
            return X - V @ (V.T @ X)

        Z = off_v(Z)
        matmat = lambda X: off_v(gram(off_v(X)))  # noqa: E731
    else:
        matmat = gram
    # Hutchinson: E[z^T f(A) z] = tr f(A); each probe's quadrature gives the fraction of
    # |z|^2 (P for a Rademacher vector, about P - k once projected) in the window
    norms = (Z * Z).sum(axis=0)
    tri = lanczos_lockstep(matmat, Z, steps)
    if density is not None:  # the same quadrature, as a smoothed density over log10 s
        density.update(quadrature_density(tri, norms, known, op.P))
    out = []
    for tol in tols:
        lo, hi = (1 - tol) ** 2, (1 + tol) ** 2
        exact = float(((known >= 1 - tol) & (known <= 1 + tol)).sum())
        rows = np.array([window_mass(a, b, lo, hi) for a, b in tri]) * norms[:, None]
        est = exact + rows[:, 0]
        se = float(est.std(ddof=1) / math.sqrt(probes)) if probes > 1 else float("inf")
        qlo, qhi = exact + rows[:, 1].mean(), exact + rows[:, 2].mean()
        out.append(BulkEstimate(tol=tol, count=float(est.mean()), lower=max(0.0, qlo - 2 * se),
                                upper=min(float(op.P), qhi + 2 * se), stderr=se,
                                quadrature=(float(qlo), float(qhi)), per_probe=est.tolist()))
    return out


# --------------------------------------------------------------------------------------------
# what a matrix-free run will take, before it starts

# (J v, J^T u) pairs (their mean count) scipy's svds needed for the top k of the paper's J
# (P = 4,810) at tol 1e-4: `python benchmarks/matfree.py pairs sessions/paper-digits-sgd`
# counts them; a spectrum whose top decays more slowly needs more
SOLVER_PAIRS = {"propack": {5: 50, 10: 69, 20: 95, 50: 139, 100: 217},
                "arpack": {5: 74, 10: 87, 20: 120, 50: 179, 100: 303},
                "lobpcg": {5: 116, 10: 230, 20: 456, 50: 917, 100: 1544}}


def solver_pairs(solver: str, k: int) -> int:
    """About how many product pairs ``solver`` takes for the top ``k`` (linear in k between
    and beyond the measured points)."""
    pts = SOLVER_PAIRS[solver]
    ks = sorted(pts)
    if k >= ks[-1]:
        slope = (pts[ks[-1]] - pts[ks[-2]]) / (ks[-1] - ks[-2])
        return round(pts[ks[-1]] + slope * (k - ks[-1]))
    return round(float(np.interp(k, ks, [pts[x] for x in ks])))


def estimate_seconds(problem: Problem, theta0: torch.Tensor, k: int, solver: str,
                     probes: int, lanczos_steps: int, dtype: torch.dtype,
                     steps: int = 3) -> dict:
    """Times a few training steps of each product (one vector, and the probes' block), scales
    them to the whole run and counts the products the stage makes: the top k (about
    :func:`solver_pairs` pairs of one vector) and the bulk estimate (``lanczos_steps`` pairs of
    ``probes`` vectors). Each product is timed over ``steps`` and over 3 x ``steps`` training
    steps: the difference is the cost of a step, the rest the product's fixed cost (moving a
    P-vector between numpy and torch, recording the trajectory's first step...), which does
    not grow with the steps and so is not scaled with them. Plain data for ``tjac run
    --plan`` and the Setup pane."""
    rng = np.random.default_rng(0)
    P = problem.layout.size
    one, block = rng.standard_normal(P), rng.standard_normal((P, probes))

    def timed(n: int) -> tuple[float, float]:
        """(one pair, one block pair) over the first n steps, in seconds."""
        op = TrainingJacobian(problem.truncated(n), theta0, dtype=dtype)
        out = []
        for x in (one, block):
            op.rmatmat(op.matmat(x))  # warm: the trajectory, the checkpoints, K's workspace
            t0 = time.perf_counter()
            op.rmatmat(op.matmat(x))
            out.append(time.perf_counter() - t0)
        return out[0], out[1]

    T = problem.steps
    n1 = max(1, min(steps, T))
    n2 = min(3 * n1, T)
    a = timed(n1)
    if n2 > n1:
        b = timed(n2)
        per_step = [max(0.0, (y - x) / (n2 - n1)) for x, y in zip(a, b)]
        pair, block_pair = (x + p * (T - n1) for x, p in zip(a, per_step))
    else:
        pair, block_pair = a
    pairs = solver_pairs(solver, k)
    top_s, bulk_s = pairs * pair, lanczos_steps * block_pair
    return {"k": k, "probes": probes, "lanczos_steps": lanczos_steps, "pair_s": pair,
            "block_pair_s": block_pair, "top_pairs": pairs, "top_s": top_s, "bulk_s": bulk_s,
            "seconds": top_s + bulk_s}
