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

Tangent (forward-over-reverse) for a direction (dW, db); ``d`` denotes the
directional derivative, ``dA_0 = 0``::

    dZ_l = dA_l @ W_l^T + a_l @ dW_l^T + db_l
    dA_{l+1} = act'(z_l) * dZ_l
    dG_{L-1} = p * (dZ_{L-1} - sum_c p dZ_{L-1}) / B,     p = softmax(z_{L-1})
    dgW_l = dG_l^T a_l + G_l^T dA_l,   dgb_l = sum_b dG_l
    dE_l  = dG_l @ W_l + G_l @ dW_l
    dG_{l-1} = dE_l * act'(z_{l-1}) + (E_l * act''(z_{l-1})) * dZ_{l-1}

``(dgW_l, dgb_l)`` is the Hessian of the loss applied to the direction.

Layout.  ``K`` tangent directions are processed at once.  Every tangent
activation (``dZ_l``, ``dA_l``, ``dG_l``, ``dE_l``) is stored as a contiguous
``(B, K, h)`` tensor, so that it is simultaneously

* a ``(B, K*h)`` matrix -- the layout of products with a shared *batch*
  operand: ``a_l @ dW_l^T`` for all k is ``a_l @ dW_l.view(K*m, n)^T``
  (``(B, n) @ (n, K*m)``), ``dG_l^T a_l`` for all k is
  ``dG_l.view(B, K*m)^T @ a_l`` -> ``(K*m, n)`` = ``(K, m, n)``, and
  ``G_l^T dA_l`` for all k is ``G_l^T @ dA_l.view(B, K*n)`` -> ``(m, K, n)``;
* a ``(B*K, h)`` matrix -- the layout of products with a shared *weight*:
  ``dA_l @ W_l^T`` and ``dG_l @ W_l``.

Each term is therefore a single large GEMM with one shared operand; no
per-direction batched products and no permuting copies of the big
``(B, K, h)`` tensors are needed.  The only rearrangements are the small
``(m, K, n) -> (K, m, n)`` add of the ``G^T dA`` term and the copy of the
(parameter-sized) ``dW_l`` into ``(m, K*n)`` for ``G_l @ dW_l``.  Element-wise
work is done in place on temporaries (``mul_``, ``addcmul_``).

Primal quantities (activations, ``act'``, ``E_l * act''``, ``G_l``, softmax)
are computed once per batch in :meth:`MLPKernel.primal` and can be reused for
any number of tangent chunks via :meth:`MLPKernel.tangent`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MLPKernel", "PrimalState", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "tanh", "gelu", "gelu_tanh")

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


def _act_value(name: str, z: Tensor) -> Tensor:
    """act(z), using torch's own implementation (so ``grad`` matches torch)."""
    if name == "relu":
        return torch.relu(z)
    if name == "tanh":
        return torch.tanh(z)
    if name == "gelu":
        return F.gelu(z)
    return F.gelu(z, approximate="tanh")


def _act_derivs(name: str, z: Tensor, second: bool) -> tuple[Tensor, Tensor | None]:
    """Analytic (act'(z), act''(z)); act'' is None when not requested or
    identically zero (relu)."""
    if name == "relu":
        # torch convention: relu'(0) = 0; relu'' = 0 everywhere.
        return (z > 0).to(z.dtype), None
    if name == "tanh":
        t = torch.tanh(z)
        d1 = 1.0 - t * t
        return d1, (-2.0 * t * d1 if second else None)
    if name == "gelu":
        # act = z Phi(z);  act' = Phi + z phi;  act'' = 2 phi + z phi' = (2 - z^2) phi
        phi = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
        Phi = 0.5 * (1.0 + torch.erf(z * _INV_SQRT2))
        d1 = Phi + z * phi
        return d1, ((2.0 - z * z) * phi if second else None)
    # gelu_tanh: act = z (1 + t) / 2, t = tanh(u), u = c (z + k z^3)
    #   u' = c (1 + 3 k z^2),  u'' = 6 c k z,  t' = (1 - t^2) u'
    #   act'  = (1 + t) / 2 + z (1 - t^2) u' / 2
    #   act'' = (1 - t^2) (u' - z t u'^2 + z u'' / 2)
    z2 = z * z
    t = torch.tanh(_SQRT_2_OVER_PI * z * (1.0 + _GELU_TANH_C * z2))
    s = 1.0 - t * t
    du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * z2)
    d1 = 0.5 * (1.0 + t) + 0.5 * z * s * du
    if not second:
        return d1, None
    d2 = s * (du - z * t * du * du + (3.0 * _SQRT_2_OVER_PI * _GELU_TANH_C) * z2)
    return d1, d2


@dataclass
class PrimalState:
    """Primal quantities of one batch, shared by all tangent chunks.

    ``L`` layers, batch ``B``, ``m_l = d_{l+1}``, ``n_l = d_l``.

    Attributes:
        params: the parameters ``(W_0, b_0, ..., W_{L-1}, b_{L-1})``.
        acts: ``acts[l] = a_l`` (B, n_l) -- the input of layer l (``acts[0] = x``).
        d1: ``d1[l] = act'(z_l)`` (B, m_l) for the hidden layers ``l < L-1``.
        h2: ``h2[l] = E_{l+1} * act''(z_l)`` (B, m_l) for ``l < L-1``, or
            ``None`` when act'' vanishes (relu).
        G: ``G[l] = d loss / d z_l`` (B, m_l).
        p_over_b: ``softmax(z_{L-1}) / B`` (B, d_L).
        p: ``softmax(z_{L-1})`` (B, d_L).
        grads: ``d loss / d params``, same shapes and order as ``params``.
    """

    params: tuple[Tensor, ...]
    acts: list[Tensor]
    d1: list[Tensor]
    h2: list[Tensor | None]
    G: list[Tensor]
    p: Tensor
    p_over_b: Tensor
    grads: tuple[Tensor, ...]


class MLPKernel:
    """Exact gradient and Hessian-vector products of an MLP's softmax-CE loss.

    Args:
        widths: ``[d_0, d_1, ..., d_L]`` (``L >= 1`` layers).
        activation: one of ``"relu"``, ``"tanh"``, ``"gelu"`` (exact erf),
            ``"gelu_tanh"`` (``F.gelu(approximate="tanh")``); applied after
            every layer but the last.

    Parameters are passed as ``(W_0, b_0, W_1, b_1, ...)`` with
    ``W_l: (d_{l+1}, d_l)``, ``b_l: (d_{l+1},)``; ``x: (B, d_0)`` float,
    ``y: (B,)`` int64 class indices.  Everything stays on the inputs'
    device and dtype, and no host synchronisation happens.
    """

    def __init__(self, widths: Sequence[int], activation: str):
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError("widths must have length >= 2")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.widths = widths
        self.activation = activation
        self.num_layers = len(widths) - 1

    # ------------------------------------------------------------------ primal
    def _primal(self, params: Sequence[Tensor], x: Tensor, y: Tensor, second: bool) -> PrimalState:
        """Forward + backward of the loss; the single code path for all grads."""
        L = self.num_layers
        if len(params) != 2 * L:
            raise ValueError(f"expected {2 * L} parameter tensors, got {len(params)}")
        act = self.activation
        acts = [x]
        d1: list[Tensor] = []
        d2: list[Tensor | None] = []
        a = x
        for l in range(L - 1):
            z = torch.addmm(params[2 * l + 1], a, params[2 * l].t())
            a = _act_value(act, z)
            g1, g2 = _act_derivs(act, z, second)
            acts.append(a)
            d1.append(g1)
            d2.append(g2)
        logits = torch.addmm(params[2 * L - 1], a, params[2 * L - 2].t())

        B = x.shape[0]
        p = torch.softmax(logits, dim=1)
        G = p.clone()
        G[torch.arange(B, device=x.device), y] -= 1.0
        G.div_(B)

        grads: list[Tensor] = [None] * (2 * L)  # type: ignore[list-item]
        Gs: list[Tensor] = [None] * L  # type: ignore[list-item]
        h2: list[Tensor | None] = [None] * (L - 1)
        for l in range(L - 1, -1, -1):
            Gs[l] = G
            grads[2 * l] = torch.mm(G.t(), acts[l])
            grads[2 * l + 1] = G.sum(0)
            if l > 0:
                E = torch.mm(G, params[2 * l])
                if d2[l - 1] is not None:
                    h2[l - 1] = E * d2[l - 1]
                G = E * d1[l - 1]
        return PrimalState(
            params=tuple(params),
            acts=acts,
            d1=d1,
            h2=h2,
            G=Gs,
            p=p,
            p_over_b=p / B,
            grads=tuple(grads),
        )

    def primal(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> PrimalState:
        """Primal pass for one batch, reusable by :meth:`tangent` for many chunks.

        ``primal(...).grads`` is bitwise equal to :meth:`grad`.
        """
        with torch.no_grad():
            return self._primal(params, x, y, second=True)

    def grad(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """``d loss / d params``, same shapes and order as ``params``."""
        with torch.no_grad():
            return self._primal(params, x, y, second=False).grads

    # ----------------------------------------------------------------- tangent
    def tangent(self, state: PrimalState, tangents: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Hessian-vector products for K directions at the state's point.

        Args:
            state: from :meth:`primal`.
            tangents: ``tangents[i]`` of shape ``(K, *params[i].shape)``.

        Returns:
            ``dgrads`` with ``dgrads[i]`` of shape ``(K, *params[i].shape)``:
            ``dgrads[i][k] = d/dt grad_i(params + t tangents[k])`` at ``t = 0``.
        """
        with torch.no_grad():
            return self._tangent(state, tangents)

    def _tangent(self, st: PrimalState, tangents: Sequence[Tensor]) -> tuple[Tensor, ...]:
        L = self.num_layers
        params = st.params
        K = tangents[0].shape[0]
        B = st.acts[0].shape[0]
        has_d2 = self.activation != "relu"

        # ---- forward tangent: dZ_l, dA_l in (B, K, h) layout
        dAs: list[Tensor | None] = [None]  # dA_0 = 0
        dZs: list[Tensor] = []
        dA: Tensor | None = None
        for l in range(L):
            W = params[2 * l]
            m, n = W.shape
            # a_l @ dW_l^T + db_l for all k:  (B, n) @ (n, K*m) -> (B, K*m)
            dZ = torch.addmm(tangents[2 * l + 1].reshape(K * m), st.acts[l],
                             tangents[2 * l].reshape(K * m, n).t())
            if dA is not None:
                # += dA_l @ W_l^T:  (B*K, n) @ (n, m)
                dZ.view(B * K, m).addmm_(dA.view(B * K, n), W.t())
            dZ = dZ.view(B, K, m)
            if l < L - 1:
                dA = dZ * st.d1[l].unsqueeze(1)
                dAs.append(dA)
                if has_d2:
                    dZs.append(dZ)

        # ---- softmax-CE tangent (in place on the last dZ)
        # dG = p * (dZ - <p, dZ>) / B
        s = torch.matmul(dZ, st.p.unsqueeze(2))  # (B, K, 1)
        dG = dZ.sub_(s).mul_(st.p_over_b.unsqueeze(1))

        # ---- backward tangent
        dgrads: list[Tensor] = [None] * (2 * L)  # type: ignore[list-item]
        for l in range(L - 1, -1, -1):
            W = params[2 * l]
            m, n = W.shape
            G = st.G[l]
            # dgW_l = dG_l^T a_l (+ G_l^T dA_l):  (K*m, B) @ (B, n) -> (K, m, n)
            dgW = torch.mm(dG.view(B, K * m).t(), st.acts[l]).view(K, m, n)
            if l > 0:
                dA = dAs[l]
                # G_l^T dA_l for all k: (m, B) @ (B, K*n) -> (m, K, n)
                dgW.add_(torch.mm(G.t(), dA.view(B, K * n)).view(m, K, n).transpose(0, 1))
            dgrads[2 * l] = dgW
            dgrads[2 * l + 1] = dG.sum(0)
            if l > 0:
                # dE_l = G_l @ dW_l + dG_l @ W_l  -> (B, K, n)
                dWp = tangents[2 * l].transpose(0, 1).reshape(m, K * n)
                dE = torch.mm(G, dWp)
                dE.view(B * K, n).addmm_(dG.view(B * K, m), W)
                dE = dE.view(B, K, n)
                dE.mul_(st.d1[l - 1].unsqueeze(1))
                if has_d2:
                    dE.addcmul_(st.h2[l - 1].unsqueeze(1), dZs[l - 1])
                dG = dE
        return tuple(dgrads)

    def grad_jvp(
        self,
        params: Sequence[Tensor],
        tangents: Sequence[Tensor],
        x: Tensor,
        y: Tensor,
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Gradient and its directional derivatives along K tangent directions.

        Args:
            params: ``(W_0, b_0, ...)``.
            tangents: ``tangents[i]`` of shape ``(K, *params[i].shape)``.
            x: ``(B, d_0)``;  y: ``(B,)`` int64.

        Returns:
            ``(grads, dgrads)``: ``grads`` bitwise equal to :meth:`grad`;
            ``dgrads[i]`` of shape ``(K, *params[i].shape)`` with
            ``dgrads[i][k] = (Hessian of the loss) @ tangents[.][k]``.
        """
        with torch.no_grad():
            st = self._primal(params, x, y, second=True)
            return st.grads, self._tangent(st, tangents)
