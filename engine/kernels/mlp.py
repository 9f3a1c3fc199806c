"""Hand-derived forward-over-reverse kernel for an MLP with softmax cross-entropy.

Model (``torch.nn.Linear`` convention, ``L = len(widths) - 1`` layers)::

    a_0 = x                                  (B, d_0)
    z_l = a_l @ W_l^T + b_l                  (B, d_{l+1}),   W_l: (d_{l+1}, d_l)
    a_{l+1} = act(z_l)                       for l < L - 1
    loss = cross_entropy(z_{L-1}, y)         (mean over the batch)

Primal gradient (reverse mode); ``G_l = d loss / d z_l``::

    G_{L-1} = (softmax(z_{L-1}) - onehot(y)) / B
    gW_l = G_l^T a_l,    gb_l = sum_b G_l
    E_l  = G_l @ W_l                         (= d loss / d a_l, l > 0)
    G_{l-1} = E_l * act'(z_{l-1})

Tangent (forward-over-reverse) along a direction ``(dW, db)``; ``d`` denotes
the directional derivative and ``dA_0 = 0``::

    dZ_l = dA_l @ W_l^T + a_l @ dW_l^T + db_l
    dA_{l+1} = act'(z_l) * dZ_l
    dG_{L-1} = p * (dZ_{L-1} - sum_c p dZ_{L-1}) / B,     p = softmax(z_{L-1})
    dgW_l = dG_l^T a_l + G_l^T dA_l,   dgb_l = sum_b dG_l
    dE_l  = dG_l @ W_l + G_l @ dW_l
    dG_{l-1} = dE_l * act'(z_{l-1}) + (E_l * act''(z_{l-1})) * dZ_{l-1}

``(dgW_l, dgb_l)`` is the Hessian of the loss applied to the direction.

Layout.  ``K`` directions are processed at once.  Parameter tangents come as
``dW_l: (K, m, n)`` (``m = d_{l+1}``, ``n = d_l``).  Every tangent activation
(``dZ_l``, ``dA_l``, ``dG_l``, ``dE_l``) is kept *transposed*, as a contiguous
``(K, h, B)`` tensor (direction, unit, sample), i.e. the stack of the
per-direction ``dZ^T``.  Then the dominant products -- those with a shared
batch operand, whose other operand is the parameter tangent -- are single
large GEMMs with no rearrangement at all::

    dZ_l^T   += dW_l.view(K*m, n) @ a_l^T          (K*m, n) @ (n, B)
    dgW_l     = dG_l^T.view(K*m, B) @ a_l          (K*m, B) @ (B, n)

and the bias terms are a broadcast add / a reduction over the contiguous last
axis.  (This orientation is up to ~2x faster with MKL than the ``(B, K*h)``
orientation, whose outputs have only ``B`` rows.)  Non-contiguous parameter
tangents (e.g. views into a flat ``(K, P)`` buffer) are read in place by a
batched GEMM instead of being copied.  Products with a shared
*weight* or a shared ``G`` contract a per-direction ``(h, B)`` block and are
done as one strided batched GEMM each, with the shared operand broadcast by
a stride-0 ``expand`` (no copies)::

    dZ_l^T[k]  += W_l @ dA_l^T[k]                  (m, n) @ (n, B)
    dgW_l[k]   += G_l^T @ dA_l^T[k]^T              (m, B) @ (B, n)
    dE_l^T[k]   = dW_l[k]^T @ G_l^T                (n, m) @ (m, B)
    dE_l^T[k]  += W_l^T @ dG_l^T[k]                (n, m) @ (m, B)

Element-wise work (``act'``/``act''`` products, the softmax tangent) is
done in place or with ``out=`` into per-thread workspace buffers that are
reused across calls, so the hot loop performs no large allocations (fresh
multi-MB tensors cost page faults that dominated an allocating version);
``dE_l`` is written into the (then dead) buffer of ``dA_l``.

All primal quantities the tangent pass needs (activations, transposed
``act'``, ``E * act''``, ``G`` and softmax) are computed once per batch by
:meth:`MLPKernel.primal` and reused by :meth:`MLPKernel.tangent` for any
number of tangent chunks; :meth:`MLPKernel.grad_jvp` is the two in one call.
The primal pass costs ~0.2-0.3 ms on the paper's net (per-op overhead of ~40
tiny ops), so sharing it across the chunks of a step pays when chunks are
small.  On the 2-core CPU, chunks of ``K`` ~ 96-128 directions are fastest
(the workspace stays in cache; larger chunks spill it, smaller ones pay more
per-op overhead): ~80-110 ms per training step for all 4810 columns of the
paper's 64-64-10 net, float32 -- see ``benchmarks/bench_tangent_step.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .workspace import Workspace

__all__ = ["MLPKernel", "PrimalState", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "tanh", "gelu", "gelu_tanh")

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


def _activation(
    name: str, z: Tensor, want_d2: bool, const: Callable[[float], Tensor]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(act(z), act'(z), act''(z))``, element-wise, with few ops.

    The derivatives are analytic; ``act''`` is ``None`` when not wanted or
    identically zero (relu).  The GELUs are evaluated from the intermediates
    of their derivatives (``z Phi``, ``z (1 + t) / 2``), which agree with
    ``F.gelu`` to rounding and save a transcendental pass.
    ``const(v)`` is the constant ``v`` as a 0-d tensor of ``z``'s dtype and
    device (a Python scalar operand costs an extra conversion op per use in
    eager PyTorch).
    """
    if name == "relu":
        # torch convention: relu'(0) = 0; relu'' = 0 everywhere.
        return torch.relu(z), torch.heaviside(z, const(0.0)), None
    if name == "tanh":
        # act' = 1 - t^2;  act'' = -2 t (1 - t^2)
        t = torch.tanh(z)
        d1 = torch.addcmul(const(1.0), t, t, value=-1.0)
        return t, d1, (torch.mul(t, d1).mul_(const(-2.0)) if want_d2 else None)
    if name == "gelu":
        # act = z Phi(z);  act' = Phi + z phi;  act'' = 2 phi + z phi' = (2 - z^2) phi
        z2 = z * z
        phi = torch.mul(z2, const(-0.5)).exp_().mul_(const(_INV_SQRT_2PI))
        Phi = torch.mul(z, const(_INV_SQRT2)).erf_().add_(const(1.0)).mul_(const(0.5))
        a = z * Phi
        d1 = Phi.addcmul_(z, phi)
        return a, d1, (torch.sub(const(2.0), z2).mul_(phi) if want_d2 else None)
    # gelu_tanh: act = z (1 + t) / 2,  t = tanh(u),  u = z (c + c k z^2)
    #   u' = c + 3 c k z^2,  u'' = 6 c k z,  t' = (1 - t^2) u'
    #   act'  = (1 + t + z (1 - t^2) u') / 2
    #   act'' = (1 - t^2) (u' - z t u'^2 + z u'' / 2)
    #         = (c + 6 c k z^2) (1 - t^2) - z (1 - t^2) t u'^2
    c = _SQRT_2_OVER_PI
    ck = c * _GELU_TANH_C
    z2 = z * z
    t = torch.add(const(c), z2, alpha=ck).mul_(z).tanh_()
    a = torch.addcmul(z, z, t).mul_(const(0.5))
    s = torch.addcmul(const(1.0), t, t, value=-1.0)
    du = torch.add(const(c), z2, alpha=3.0 * ck)
    zs = z * s
    d1 = torch.addcmul(t, zs, du).add_(const(1.0)).mul_(const(0.5))
    if not want_d2:
        return a, d1, None
    d2 = torch.add(const(c), z2, alpha=6.0 * ck).mul_(s).addcmul_(zs.mul_(t), du.mul_(du), value=-1.0)
    return a, d1, d2


@dataclass(eq=False)
class PrimalState:
    """Primal quantities of one batch, shared by all tangent chunks.

    ``L`` layers, batch ``B``, layer ``l`` maps ``n_l = d_l`` to ``m_l = d_{l+1}``.
    The state references the weights and ``x`` it was built from: do not
    modify those in place while the state is in use.  It holds about
    ``4 B (d_1 + ... + d_{L-1}) + 3 B d_L + P`` numbers (~92 KB for the
    paper's float32 64-64-10 net, B = 64): small enough to keep one per
    training step for a whole run.

    Attributes:
        grads: ``d loss / d params``, same shapes and order as the params.
        weights: ``weights[l] = W_l`` (m_l, n_l).
        actsT: ``actsT[l] = a_l^T`` (n_l, B), the input of layer l
            (``actsT[0] = x.t()``, a view).
        d1T: ``d1T[l] = act'(z_l)^T`` (m_l, B) for the hidden layers ``l < L-1``.
        h2T: ``h2T[l] = (E_{l+1} * act''(z_l))^T`` (m_l, B) for ``l < L-1``,
            or ``None`` when ``act''`` vanishes (relu).
        GT: ``GT[l] = (d loss / d z_l)^T`` (m_l, B).
        pT: ``softmax(z_{L-1})^T`` (d_L, B).
        pT_over_b: ``pT / B``.
    """

    grads: tuple[Tensor, ...]
    weights: tuple[Tensor, ...]
    actsT: tuple[Tensor, ...]
    d1T: tuple[Tensor, ...]
    h2T: tuple[Tensor | None, ...]
    GT: tuple[Tensor, ...]
    pT: Tensor
    pT_over_b: Tensor


class MLPKernel:
    """Exact gradient and Hessian-vector products of an MLP's softmax-CE loss.

    Args:
        widths: ``[d_0, d_1, ..., d_L]`` (``L >= 1`` layers).
        activation: one of ``"relu"``, ``"tanh"``, ``"gelu"`` (exact erf),
            ``"gelu_tanh"`` (``F.gelu(approximate="tanh")``); applied after
            every layer but the last.

    Parameters are passed as ``(W_0, b_0, W_1, b_1, ...)`` with
    ``W_l: (d_{l+1}, d_l)``, ``b_l: (d_{l+1},)``; ``x: (B, d_0)`` float,
    ``y: (B,)`` int64 class indices.  Everything stays on the inputs' device
    and dtype, and no host synchronisation happens.  The kernel keeps
    per-thread workspace buffers: those of the chunk size ``K`` it ran last
    (one set per batch size, dtype and device; a call with another ``K``
    frees them first); :meth:`release` frees them.
    Concurrent calls from different threads are safe.
    """

    # tangent()/grad_jvp() can accumulate into ``out`` (``beta``): engine.train fuses SGD
    # momentum's tangent update into the kernel's GEMMs
    accumulates = True
    # tangent columns per chunk on the CPU: on the paper's net (2 cores, replaying a recorded
    # trajectory, momentum fused) 128 columns ran the J in 69 s, 256 in 84 s: the workspace
    # of 128 stays in cache (`benchmarks/bench_jacobian.py --cases paper-sgd --chunk N`)
    cpu_chunk = 128

    def __init__(self, widths: Sequence[int], activation: str):
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError("widths must have length >= 2")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.widths = widths
        self.activation = activation
        self.num_layers = len(widths) - 1
        self._has_d2 = activation != "relu"
        self._ws = Workspace()
        self._consts: dict[tuple, Tensor] = {}

    # ------------------------------------------------------------------ public
    def grad(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """``d loss / d params``, same shapes and order as ``params``."""
        with torch.no_grad():
            return self._primal(params, x, y, for_tangent=False)[0]

    def primal(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> PrimalState:
        """Primal pass for one batch, reusable by :meth:`tangent` for many chunks.

        ``primal(...).grads`` is bitwise equal to :meth:`grad`.
        """
        with torch.no_grad():
            return self._primal(params, x, y, for_tangent=True)[1]

    def tangent(
        self,
        state: PrimalState,
        tangents: Sequence[Tensor],
        out: Sequence[Tensor] | None = None,
        beta: float = 0.0,
    ) -> tuple[Tensor, ...]:
        """Hessian-vector products for K directions at the state's point.

        Args:
            state: from :meth:`primal`.
            tangents: ``tangents[i]`` of shape ``(K, *params[i].shape)``.
            out: optional preallocated contiguous results, same shapes as
                ``tangents`` (must not alias them); fresh tensors otherwise.
            beta: with ``out``, accumulate: ``out = beta * out + H tangents``
                (the weight terms in the GEMM's own ``beta``, no extra pass):
                SGD momentum's tangent ``dm = mu dm + dg`` written in place.

        Returns:
            ``dgrads`` with ``dgrads[i]`` of shape ``(K, *params[i].shape)``:
            ``dgrads[i][k] = d/dt grad_i(params + t tangents[k])`` at ``t = 0``.
        """
        with torch.no_grad():
            return self._tangent(state, tangents, out, beta)

    def grad_jvp(
        self,
        params: Sequence[Tensor],
        tangents: Sequence[Tensor],
        x: Tensor,
        y: Tensor,
        out: Sequence[Tensor] | None = None,
        beta: float = 0.0,
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Gradient and its directional derivatives along K tangent directions.

        Args:
            params: ``(W_0, b_0, ...)``.
            tangents: ``tangents[i]`` of shape ``(K, *params[i].shape)``.
            x: ``(B, d_0)``;  y: ``(B,)`` int64.
            out, beta: optional preallocated results (accumulated into with
                ``beta``), as for :meth:`tangent`.

        Returns:
            ``(grads, dgrads)``: ``grads`` bitwise equal to :meth:`grad`;
            ``dgrads[i]`` of shape ``(K, *params[i].shape)`` with
            ``dgrads[i][k] = (Hessian of the loss) @ (tangents[j][k])_j``.
        """
        with torch.no_grad():
            grads, st = self._primal(params, x, y, for_tangent=True)
            return grads, self._tangent(st, tangents, out, beta)

    def release(self) -> None:
        """Free the cached temporaries of every thread (the (K, h, B) buffers of the chunk
        size K each ran last): what a chunk of K columns leaves allocated, e.g. before J is
        tried again in smaller chunks after running out of memory."""
        self._ws.release()

    # ----------------------------------------------------------------- primal
    def _primal(
        self, params: Sequence[Tensor], x: Tensor, y: Tensor, for_tangent: bool
    ) -> tuple[tuple[Tensor, ...], PrimalState | None]:
        """Forward + backward of the loss: the single code path for all grads.

        Computed in the transposed orientation (``z_l^T = W_l a_l^T + b_l``,
        ``(m, B)``), which is what the tangent pass consumes.  Returns
        ``(grads, state)``; ``state`` (whose extra entries -- ``act'``,
        ``E act''``, ``softmax / B`` -- do not influence ``grads``) is built
        only when ``for_tangent``.
        """
        L = self.num_layers
        if len(params) != 2 * L:
            raise ValueError(f"expected {2 * L} parameter tensors, got {len(params)}")
        want_d2 = for_tangent and self._has_d2
        B = x.shape[0]
        const = lambda v: self._const(v, x)  # noqa: E731  (cached 0-d tensors)
        aT = x.t()
        actsT = [aT]
        d1T: list[Tensor] = []
        d2T: list[Tensor | None] = []
        for l in range(L - 1):
            zT = torch.addmm(params[2 * l + 1].unsqueeze(1), params[2 * l], aT)
            aT, g1, g2 = _activation(self.activation, zT, want_d2, const)
            actsT.append(aT)
            d1T.append(g1)
            d2T.append(g2)
        logitsT = torch.addmm(params[2 * L - 1].unsqueeze(1), params[2 * L - 2], aT)

        # G^T = (softmax - onehot)^T / B, classes along dim 0; the one-hot by comparison with
        # the class numbers (a scatter would sort and wait for the host on CUDA)
        pT = torch.softmax(logitsT, dim=0)
        onehot = (y.view(1, B) == self._classes(pT.shape[0], y)).to(pT.dtype)
        GT = torch.sub(pT, onehot).div_(const(B))

        grads: list[Tensor] = [None] * (2 * L)  # type: ignore[list-item]
        GTs: list[Tensor] = [None] * L  # type: ignore[list-item]
        h2T: list[Tensor | None] = [None] * (L - 1)
        for l in range(L - 1, -1, -1):
            GTs[l] = GT
            grads[2 * l] = torch.mm(GT, actsT[l].t())
            grads[2 * l + 1] = GT.sum(1)
            if l > 0:
                ET = torch.mm(params[2 * l].t(), GT)  # (d loss / d a_l)^T
                if want_d2:
                    h2T[l - 1] = ET * d2T[l - 1]
                GT = ET.mul_(d1T[l - 1])
        if not for_tangent:
            return tuple(grads), None
        return tuple(grads), PrimalState(
            grads=tuple(grads),
            weights=tuple(params[0::2]),
            actsT=tuple(actsT),
            d1T=tuple(d1T),
            h2T=tuple(h2T),
            GT=tuple(GTs),
            pT=pT,
            pT_over_b=torch.div(pT, const(B)),
        )

    def _classes(self, n: int, like: Tensor) -> Tensor:
        """Cached class numbers ``0 .. n-1`` as an (n, 1) int64 column on ``like``'s device."""
        key = ("classes", n, like.device)
        c = self._consts.get(key)
        if c is None:
            c = self._consts[key] = torch.arange(n, device=like.device).view(n, 1)
        return c

    def _const(self, value: float, like: Tensor) -> Tensor:
        """Cached 0-d constant tensor (read-only) of ``like``'s dtype and device."""
        key = (value, like.dtype, like.device)
        c = self._consts.get(key)
        if c is None:
            c = torch.full((), value, dtype=like.dtype, device=like.device)
            self._consts[key] = c
        return c

    # ---------------------------------------------------------------- tangent
    def _buffer(self, name: object, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Reusable per-thread temporary (contents undefined)."""
        return self._ws.buffer(name, shape, like)

    def _tangent(
        self, st: PrimalState, tangents: Sequence[Tensor], out: Sequence[Tensor] | None,
        beta: float = 0.0,
    ) -> tuple[Tensor, ...]:
        """Tangent forward + backward; activations in ``(K, h, B)`` layout."""
        L = self.num_layers
        if len(tangents) != 2 * L:
            raise ValueError(f"expected {2 * L} tangent tensors, got {len(tangents)}")
        K = tangents[0].shape[0]
        x = st.actsT[0]
        B = x.shape[1]
        has_d2 = self._has_d2
        self._ws.chunk(K)  # the buffers of one chunk size at a time

        # ---- forward: dZ_l^T and dA_l^T, each (K, h, B)
        dAs: list[Tensor | None] = [None] * L  # dA_l^T for l >= 1
        dZs: list[Tensor | None] = [None] * L  # dZ_l^T kept for the act'' term
        dA: Tensor | None = None
        for l in range(L):
            W = st.weights[l]
            m, n = W.shape
            dZ = self._buffer(("dZ", l), (K, m, B), x)
            dW, db = tangents[2 * l], tangents[2 * l + 1]
            if dW.is_contiguous():
                # a_l @ dW_l^T + db_l for all k:  (K*m, n) @ (n, B) + db
                torch.addmm(db.reshape(K * m, 1), dW.view(K * m, n), st.actsT[l],
                            out=dZ.view(K * m, B))
            else:
                # e.g. views into a flat (K, P) buffer: a batched GEMM reads them
                # in place, cheaper than copying to make the flat GEMM possible
                torch.baddbmm(db.unsqueeze(2), dW, st.actsT[l].expand(K, n, B), out=dZ)
            if dA is not None:
                dZ.baddbmm_(W.expand(K, m, n), dA)  # += W_l @ dA_l^T[k]
            if l < L - 1:
                if has_d2:
                    dA = torch.mul(dZ, st.d1T[l], out=self._buffer(("dA", l + 1), (K, m, B), x))
                    dZs[l] = dZ
                else:
                    dA = dZ.mul_(st.d1T[l])  # relu: dZ_l is not needed later
                dAs[l + 1] = dA

        # ---- softmax-CE tangent, in place on the last dZ:
        #      dG = p * (dZ - sum_c p dZ) / B = q - p * sum_c q,   q = dZ * p / B
        q = dZ.mul_(st.pT_over_b)
        s = torch.sum(q, 1, keepdim=True, out=self._buffer("s", (K, 1, B), x))
        dG = q.addcmul_(st.pT, s, value=-1.0)

        # ---- backward
        if out is None:
            out, beta = tuple(
                torch.empty(t.shape, dtype=x.dtype, device=x.device) for t in tangents
            ), 0.0
        for l in range(L - 1, -1, -1):
            W = st.weights[l]
            m, n = W.shape
            dgW = out[2 * l]
            # dgW_l = dG_l^T a_l:  (K*m, B) @ (B, n)   (+ beta dgW_l, in the same GEMM)
            if beta:
                dgW.view(K * m, n).addmm_(dG.view(K * m, B), st.actsT[l].t(), beta=beta)
            else:
                torch.mm(dG.view(K * m, B), st.actsT[l].t(), out=dgW.view(K * m, n))
            if l > 0:
                # += G_l^T @ dA_l[k]
                dgW.baddbmm_(st.GT[l].expand(K, m, B), dAs[l].transpose(1, 2))
            if beta:
                out[2 * l + 1].mul_(beta).add_(
                    torch.sum(dG, 2, out=self._buffer(("db", l), (K, m), x)))
            else:
                torch.sum(dG, 2, out=out[2 * l + 1])
            if l > 0:
                dE = dAs[l]  # dA_l is dead: reuse its buffer for dE_l^T
                torch.bmm(tangents[2 * l].transpose(1, 2), st.GT[l].expand(K, m, B), out=dE)
                dE.baddbmm_(W.t().expand(K, n, m), dG)
                dE.mul_(st.d1T[l - 1])
                if has_d2:
                    dE.addcmul_(st.h2T[l - 1], dZs[l - 1])
                dG = dE
        return tuple(out)
