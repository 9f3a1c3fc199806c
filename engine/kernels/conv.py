"""Hand-derived forward-over-reverse kernel for a convolutional net with softmax cross-entropy.

The net (:class:`engine.models.ConvNet`): convolutions, each followed by the activation and a
2x2 pooling, then fully connected layers. For a batch ``x`` the kernel returns the gradient of
the mean cross-entropy and its directional derivatives along K tangent directions of the
parameters (Hessian-vector products), which is what one training step of the tangent loop
needs (:func:`engine.train.train_tangents`).

Notation, convolution l (input ``a_l`` (B, Ci, H, W), weight ``W_l`` (Co, Ci, k, k))::

    z_l = conv(a_l, W_l) + b_l,   h_l = act(z_l),   a_{l+1} = pool(h_l)

and the fully connected part as in :mod:`engine.kernels.mlp`. Reverse mode: ``G_l = dL/dz_l``,
``E_l = dL/da_l``. Forward-over-reverse along ``(dW, db)`` (``d`` marks a tangent, dA_0 = 0)::

    dZ_l = conv(dA_l, W_l) + conv(a_l, dW_l) + db_l
    dH_l = act'(z_l) dZ_l,                  dA_{l+1} = pool'(dH_l)     (pool is linear given
                                                                        the max's positions)
    dG_l = pool^T(dE_{l+1}) act'(z_l) + pool^T(E_{l+1}) act''(z_l) dZ_l
    dgW_l = corr(a_l, dG_l) + corr(dA_l, G_l),    dgb_l = sum dG_l
    dE_l  = conv^T(dG_l, W_l) + conv^T(G_l, dW_l)

How the K directions are batched, so that each term is one large convolution:

* a term with a shared weight (``conv(dA_l, W_l)``, ``conv^T(dG_l, W_l)``) runs on a batch of
  K*B images;
* a term with a shared input (``conv(a_l, dW_l)``) is one convolution with K*Co output
  channels (the K weight tangents stacked), and ``conv^T(G_l, dW_l)`` one with K*Ci;
* a weight-gradient term (``corr(a_l, dG_l)``, ``corr(dA_l, G_l)``) is one weight gradient with
  the K directions stacked along the output or the input channels.

The fully connected part batches the same way with matrix products. Everything stays on the
inputs' device and dtype; nothing synchronises with the host. The 2x2 windows do not overlap,
so max pooling's pool^T is a gather: each entry of the map takes its window's pooled value
where it holds the window's max, else a zero (the source of every entry made once per batch
from the pooling's indices by comparison with the positions), and the softmax-CE gradient's
one-hot is a comparison with the class numbers: no scatter or index_put, which on CUDA with
deterministic algorithms sort and wait for the host every step.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

from .workspace import Workspace

__all__ = ["ConvKernel", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "tanh", "gelu", "gelu_tanh")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def activation(name: str, z: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(act(z), act'(z), act''(z))``; act'' is None where it vanishes (relu)."""
    if name == "relu":
        return torch.relu(z), (z > 0).to(z.dtype), None
    if name == "tanh":
        t = torch.tanh(z)
        d1 = 1 - t * t
        return t, d1, -2 * t * d1
    if name == "gelu":
        phi = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
        Phi = 0.5 * (1 + torch.erf(z * _INV_SQRT2))
        return z * Phi, Phi + z * phi, (2 - z * z) * phi
    c, k = _SQRT_2_OVER_PI, 0.044715  # gelu_tanh
    z2 = z * z
    t = torch.tanh(c * z * (1 + k * z2))
    s = 1 - t * t
    du = c * (1 + 3 * k * z2)
    a = 0.5 * z * (1 + t)
    d1 = 0.5 * (1 + t + z * s * du)
    d2 = s * (c * (1 + 6 * k * z2) - z * t * du * du)
    return a, d1, d2


class ConvKernel:
    """Exact gradient and Hessian-vector products of a :class:`engine.models.ConvNet`'s
    softmax-CE loss.

    Args:
        in_shape: (C, H, W) of the images (the input comes flat, (B, C*H*W)).
        paddings: the zero padding of each convolution (square kernels, stride 1).
        n_fc: the number of fully connected layers.
        activation: relu, tanh, gelu or gelu_tanh, after every layer but the last.
        pooling: "max" or "avg" (2x2, stride 2, after every convolution's activation).

    Parameters come in ``named_parameters()`` order: ``(W_0, b_0, ...)`` for the convolutions,
    then the fully connected layers'. Tangents ``tangents[i]`` have shape
    ``(K, *params[i].shape)``.
    """

    # tangent columns per chunk on the CPU: LeNet-5 with batch 200 on 2 cores ran 47.6, 62.2
    # and 56.2 column-steps/s with chunks of 16, 32 and 64 (benchmarks/bench_jacobian.py)
    cpu_chunk = 32

    def __init__(self, in_shape: Sequence[int], paddings: Sequence[int], n_fc: int,
                 activation: str, pooling: str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be max or avg, got {pooling!r}")
        self.in_shape = tuple(int(d) for d in in_shape)
        self.paddings = [int(p) for p in paddings]
        self.n_conv, self.n_fc = len(self.paddings), int(n_fc)
        self.activation, self.pooling = activation, pooling
        # small constants made once per shape and device: class numbers, window positions
        self._consts: dict[tuple, Tensor] = {}
        self._ws = Workspace()  # the tangent pass's pooling transposes, reused across calls

    def release(self) -> None:
        """Free the reusable temporaries of every thread (those of the chunk size each ran
        last), e.g. before J is tried again in smaller chunks after running out of memory."""
        self._ws.release()

    @classmethod
    def of(cls, net) -> "ConvKernel":
        return cls(net.in_shape, [sp.padding for sp in net.specs], len(net.fcs),
                   net.activation, net.pooling)

    # ------------------------------------------------------------------ pooling
    def _pool(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.pooling == "max":
            return F.max_pool2d(h, 2, return_indices=True)
        return F.avg_pool2d(h, 2), None

    def _unpool_index(self, idx: Tensor, size: tuple[int, int]) -> Tensor:
        """Where each entry of a max-pooled map's transpose comes from, for :meth:`_pool_back`:
        idx (B, C, h, w), each 2x2 window's max as its flat position in the (H, W) = ``size``
        map, gives (1, B*C*H*W) int64 positions in the pooled maps with a zero appended to each
        (B*C rows of h*w + 1): entry (b, c, p) is row b*C + c's window q when p is that
        window's max, else the row's zero (the other three entries of a window, and the rows
        and columns no window covers when H or W is odd). Made once per batch by reading each
        entry's window's max and comparing it with the entry's position (no scatter); the K
        tangent images share it."""
        B, C, h, w = idx.shape
        H, W = size
        dev = idx.device
        hw = h * w
        key = ("windows", B, C, h, w, H, W, dev)
        got = self._consts.get(key)
        if got is None:  # made once per shape: each entry's window and position (-1: in no
            # window), (H*W,); its row's window and the row's zero, as positions in e's rows
            r = torch.arange(H, device=dev).view(H, 1)
            c = torch.arange(W, device=dev).view(1, W)
            inside = (r < 2 * h) & (c < 2 * w)
            win = torch.where(inside, (r // 2) * w + c // 2, 0).view(-1)
            pos = torch.where(inside, r * W + c, -1).view(-1)
            row = torch.arange(0, B * C * (hw + 1), hw + 1, device=dev).view(-1, 1)
            got = self._consts[key] = win, pos, win + row, row + hw
        win, pos, win_row, zero_row = got
        at = idx.view(B * C, hw).gather(1, win.expand(B * C, -1))  # the entry's window's max
        # written over ``at``: one fresh multi-MB tensor, not two (their page faults cost more
        # than the arithmetic)
        return torch.where(at == pos, win_row, zero_row, out=at).view(1, -1)

    def _classes(self, n: int, device: torch.device) -> Tensor:
        """Cached class numbers ``0 .. n-1`` (int64) on ``device``."""
        key = ("classes", n, device)
        c = self._consts.get(key)
        if c is None:
            c = self._consts[key] = torch.arange(n, device=device)
        return c

    def _pool_tangent(self, dh: Tensor, idx: Tensor | None, K: int) -> Tensor:
        """pool applied to the tangent dh (K*B, C, H, W) (linear given the max's positions)."""
        if idx is None:
            return F.avg_pool2d(dh, 2)
        n, c, hh, ww = dh.shape
        ind = idx.reshape(1, -1, idx.shape[2] * idx.shape[3]).expand(K, -1, -1)
        return dh.reshape(K, -1, hh * ww).gather(2, ind).reshape(n, c, *idx.shape[2:])

    def _pool_back(self, e: Tensor, src: Tensor | None, size: tuple[int, int],
                   into: object = None) -> Tensor:
        """The transpose of the pooling: e (n, C, h, w) back onto maps of ``size``; n is B
        or K*B (the B images' :meth:`_unpool_index` ``src`` is shared by the K directions).
        The 2x2 windows do not overlap (stride 2): average pooling's transpose is e upsampled
        by 2 times 1/4, max pooling's a gather of each entry from ``src`` (e at the window's
        max, +0 elsewhere), both padded with zeros to ``size`` when H or W is odd: the values
        a scatter into zeros would place, with no scatter (on CUDA with deterministic
        algorithms, a scatter sorts its indices and waits for the host). ``into``: max
        pooling's result is the workspace buffer of that name (valid until the next call
        with it), not a fresh tensor."""
        n, c, h, w = e.shape
        if src is None:
            up = torch.mul(e.view(n, c, h, 1, w, 1).expand(n, c, h, 2, w, 2), 0.25)
            up = up.reshape(n, c, 2 * h, 2 * w)
            if (2 * h, 2 * w) == tuple(size):
                return up
            return F.pad(up, (0, size[1] - 2 * w, 0, size[0] - 2 * h))
        K = n * c * size[0] * size[1] // src.shape[1]
        # e with a zero after each map, (K, B, C, h*w + 1), read from e as it lies (it may be
        # a permuted view) in the one copy
        e4 = e.unflatten(0, (K, n // K)).flatten(3)
        if into is None:
            ext = F.pad(e4, (0, 1)).view(K, -1)
            return ext.gather(1, src.expand(K, -1)).view(n, c, *size)
        ext = self._ws.buffer((into, "ext"), (*e4.shape[:3], h * w + 1), e)
        ext[..., h * w].zero_()
        ext[..., :h * w].copy_(e4)
        out = self._ws.buffer(into, (K, src.shape[1]), e)
        return torch.gather(ext.view(K, -1), 1, src.expand(K, -1), out=out).view(n, c, *size)

    def _select(self, cols: Tensor, idx: Tensor) -> Tensor:
        """Unfolded input columns at each output channel's pooled (max) positions: cols
        (B, R, HW) and idx (B, C, h, w) give (C, R, B*h*w), R = Ci*k*k."""
        B, R, _ = cols.shape
        C, hw = idx.shape[1], idx.shape[2] * idx.shape[3]
        ind = idx.reshape(B, C, 1, hw).expand(B, C, R, hw)
        sel = cols.unsqueeze(1).expand(B, C, R, cols.shape[2]).gather(3, ind)
        return sel.permute(1, 2, 0, 3).reshape(C, R, B * hw)

    @staticmethod
    def _at(t: Tensor, idx: Tensor) -> Tensor:
        """A primal map t (B, C, H, W) at the pooled positions, as (C, 1, B*h*w)."""
        B, C = idx.shape[:2]
        g = t.reshape(B, C, -1).gather(2, idx.reshape(B, C, -1))
        return g.transpose(0, 1).reshape(C, 1, -1)

    # ------------------------------------------------------------------ primal
    def _primal(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> dict:
        """Forward and backward of the loss; every quantity the tangent pass needs."""
        B = x.shape[0]
        L = self.n_conv
        st: dict = {"a": [x.reshape(B, *self.in_shape)], "z": [], "d1": [], "d2": [],
                    "idx": [], "src": [], "hsize": []}
        a = st["a"][0]
        for l in range(L):
            z = F.conv2d(a, params[2 * l], params[2 * l + 1], padding=self.paddings[l])
            h, d1, d2 = activation(self.activation, z)
            a, idx = self._pool(h)
            st["z"].append(z)
            st["d1"].append(d1)
            st["d2"].append(d2)
            st["idx"].append(idx)
            st["hsize"].append(tuple(h.shape[2:]))
            st["src"].append(None if idx is None else self._unpool_index(idx, h.shape[2:]))
            st["a"].append(a)
        st["pool_shape"] = tuple(a.shape[1:])
        u = a.reshape(B, -1)
        fc = params[2 * L:]
        us, vs, fd1, fd2 = [u], [], [], []
        for j in range(self.n_fc):
            v = torch.addmm(fc[2 * j + 1], u, fc[2 * j].t())
            vs.append(v)
            if j < self.n_fc - 1:
                u, d1, d2 = activation(self.activation, v)
                us.append(u)
                fd1.append(d1)
                fd2.append(d2)
        p = torch.softmax(v, dim=1)
        # (p - onehot(y)) / B, the one-hot by comparison (an index_put or F.one_hot would wait
        # for the host on CUDA)
        onehot = y.unsqueeze(1) == self._classes(p.shape[1], p.device)
        G = torch.sub(p, onehot.to(p.dtype)).div_(B)
        grads: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        Gs: list[Tensor] = [None] * self.n_fc  # type: ignore[list-item]
        Es: list[Tensor] = [None] * self.n_fc  # type: ignore[list-item]
        for j in range(self.n_fc - 1, -1, -1):
            Gs[j] = G
            grads[2 * L + 2 * j] = G.t() @ us[j]
            grads[2 * L + 2 * j + 1] = G.sum(0)
            E = G @ fc[2 * j]  # dL/du_j
            Es[j] = E
            if j > 0:
                G = E * fd1[j - 1]
        st.update(us=us, vs=vs, fd1=fd1, fd2=fd2, p=p, G_fc=Gs, E_fc=Es, B=B)
        E = Es[0].reshape(B, *st["pool_shape"])  # dL/da_L
        st["E_conv"] = [None] * (L + 1)
        st["E_conv"][L] = E
        st["G_conv"] = [None] * L
        st["Hb"] = [None] * L  # pool^T(E_{l+1}): dL/dh_l
        for l in range(L - 1, -1, -1):
            hb = self._pool_back(E, st["src"][l], st["hsize"][l])
            G = hb * st["d1"][l]
            st["Hb"][l], st["G_conv"][l] = hb, G
            W = params[2 * l]
            grads[2 * l] = conv2d_weight(st["a"][l], W.shape, G, padding=self.paddings[l])
            grads[2 * l + 1] = G.sum((0, 2, 3))
            if l > 0:
                E = conv2d_input(st["a"][l].shape, W, G, padding=self.paddings[l])
                st["E_conv"][l] = E
        return {"grads": tuple(grads), "st": st}

    def grad(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            return self._primal(params, x, y)["grads"]

    # ------------------------------------------------------------------ tangent
    def grad_jvp(self, params: Sequence[Tensor], tangents: Sequence[Tensor], x: Tensor,
                 y: Tensor, out: Sequence[Tensor] | None = None
                 ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """``(grads, dgrads)``: ``dgrads[i][k]`` is the Hessian of the loss applied to the
        direction ``(tangents[j][k])_j``, for each of the K directions. (``out`` is accepted
        for the loss-kernel protocol; this kernel returns fresh tensors.)"""
        with torch.no_grad():
            prim = self._primal(params, x, y)
            return prim["grads"], self._tangent(params, prim["st"], tangents)

    def _tangent(self, params, st: dict, tangents: Sequence[Tensor]) -> tuple[Tensor, ...]:
        self._ws.chunk(tangents[0].shape[0])
        if self.pooling == "max":
            return self._tangent_max(params, st, tangents)
        return self._tangent_dense(params, st, tangents)

    def _fc_tangent(self, params, st: dict, tangents: Sequence[Tensor], dA: Tensor,
                    out: list) -> Tensor:
        """The fully connected part: from the tangent of the flattened maps dA (K, B, ...) to
        the gradient tangents of the fc layers (into ``out``); returns dE, the tangent of
        dL/d(maps), shaped like dA."""
        L, B, K = self.n_conv, st["B"], dA.shape[0]
        fc, ft = params[2 * L:], tangents[2 * L:]
        us = st["us"]
        dU = dA.reshape(K, B, -1)
        dUs, dVs = [dU], []
        for j in range(self.n_fc):
            Wj, dWj, dbj = fc[2 * j], ft[2 * j], ft[2 * j + 1]
            dV = (dU.reshape(K * B, -1) @ Wj.t()).reshape(K, B, -1)
            dV += torch.matmul(us[j], dWj.transpose(1, 2))
            dV += dbj.unsqueeze(1)
            dVs.append(dV)
            if j < self.n_fc - 1:
                dU = dV * st["fd1"][j]
                dUs.append(dU)
        # softmax-CE: dG = p (dV - sum_c p dV) / B
        p = st["p"]
        q = dVs[-1] * p
        dG = (q - p * q.sum(2, keepdim=True)) / B
        for j in range(self.n_fc - 1, -1, -1):
            G, Wj, dWj = st["G_fc"][j], fc[2 * j], ft[2 * j]
            out[2 * L + 2 * j] = torch.matmul(dG.transpose(1, 2), us[j]) + \
                torch.matmul(G.t(), dUs[j])
            out[2 * L + 2 * j + 1] = dG.sum(1)
            dE = (dG.reshape(K * B, -1) @ Wj).reshape(K, B, -1) + torch.matmul(G, dWj)
            if j > 0:
                dG = dE * st["fd1"][j - 1]
                if st["fd2"][j - 1] is not None:
                    dG += st["E_fc"][j] * st["fd2"][j - 1] * dVs[j - 1]
        return dE.reshape(dA.shape)

    def _tangent_max(self, params, st: dict, tangents: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Max pooling: a pooled map depends on one position of its window, so every tangent
        quantity of a convolution is needed at the pooled positions only (a quarter of them).
        The terms with a shared input -- conv(a_l, dW_l) forward and corr(a_l, dG_l) back --
        are batched matrix products over the input columns at those positions, one per
        output channel; the others stay dense convolutions."""
        L, B = self.n_conv, st["B"]
        K = tangents[0].shape[0]
        out: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        sel, at1, at2, dZs, dAs = [], [], [], [], [None]
        dA = None
        for l in range(L):
            W, pad = params[2 * l], self.paddings[l]
            dW, db = tangents[2 * l], tangents[2 * l + 1]
            co, ci, k = W.shape[0], W.shape[1], W.shape[2]
            a, idx = st["a"][l], st["idx"][l]
            hw = idx.shape[2] * idx.shape[3]
            cs = self._select(F.unfold(a, k, padding=pad), idx)  # (Co, R, B*hw)
            sel.append(cs)
            dz = torch.bmm(dW.reshape(K, co, -1).transpose(0, 1), cs)  # (Co, K, B*hw)
            dz += db.t().unsqueeze(2)
            if dA is not None:
                t2 = F.conv2d(dA.reshape(K * B, ci, *a.shape[2:]), W, padding=pad)
                t2 = t2.reshape(K, B * co, -1).gather(
                    2, idx.reshape(1, B * co, hw).expand(K, -1, -1))
                dz += t2.reshape(K, B, co, hw).permute(2, 0, 1, 3).reshape(co, K, B * hw)
            dZs.append(dz)
            g1 = self._at(st["d1"][l], idx)
            at1.append(g1)
            at2.append(self._at(st["d2"][l], idx) if st["d2"][l] is not None else None)
            dA = (dz * g1).reshape(co, K, B, hw).permute(1, 2, 0, 3).reshape(
                K, B, co, *idx.shape[2:])
            dAs.append(dA)
        dE = self._fc_tangent(params, st, tangents, dA, out)
        for l in range(L - 1, -1, -1):
            W, pad = params[2 * l], self.paddings[l]
            dW = tangents[2 * l]
            co, ci = W.shape[:2]
            a, idx = st["a"][l], st["idx"][l]
            h, w = idx.shape[2:]
            # dG at the pooled positions: dE act' + E act'' dZ, (Co, K, B*h*w)
            dGp = dE.reshape(K, B, co, h * w).permute(2, 0, 1, 3).reshape(co, K, -1) * at1[l]
            if at2[l] is not None:
                E = st["E_conv"][l + 1].reshape(B, co, h * w).transpose(0, 1).reshape(co, 1, -1)
                dGp += E * at2[l] * dZs[l]
            dgW = torch.bmm(dGp, sel[l].transpose(1, 2)).transpose(0, 1)  # corr(a_l, dG_l)
            out[2 * l + 1] = dGp.sum(2).t()
            if l == 0:
                out[0] = dgW.reshape(K, *W.shape)
                break
            G = st["G_conv"][l]
            hs = st["hsize"][l]
            dAl = dAs[l].transpose(0, 1).reshape(B, K * ci, *a.shape[2:])
            g2 = conv2d_weight(dAl, (co, K * ci, *W.shape[2:]), G, padding=pad)
            out[2 * l] = dgW.reshape(K, *W.shape) + \
                g2.reshape(co, K, ci, *W.shape[2:]).transpose(0, 1)
            dG = self._pool_back(dGp.reshape(co, K, B, h, w).permute(1, 2, 0, 3, 4).reshape(
                K * B, co, h, w), st["src"][l], hs, into=("dG", l))
            e1 = conv2d_input((K * B, ci, *a.shape[2:]), W, dG, padding=pad)
            wk = dW.transpose(0, 1).reshape(co, K * ci, *W.shape[2:])
            e2 = conv2d_input((B, K * ci, *a.shape[2:]), wk, G, padding=pad)
            dE = e1.reshape(K, B, ci, *a.shape[2:]) + \
                e2.reshape(B, K, ci, *a.shape[2:]).transpose(0, 1)
        return tuple(out)

    def _tangent_dense(self, params, st: dict, tangents: Sequence[Tensor]
                       ) -> tuple[Tensor, ...]:
        """Average pooling: every position counts; dense convolutions throughout."""
        L, B = self.n_conv, st["B"]
        K = tangents[0].shape[0]
        out: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        # ---- forward through the convolutions: dA (K, B, C, H, W)
        dA = None
        dZs, dAs = [], [None]
        for l in range(L):
            W, pad = params[2 * l], self.paddings[l]
            dW, db = tangents[2 * l], tangents[2 * l + 1]
            co = W.shape[0]
            a = st["a"][l]
            t = F.conv2d(a, dW.reshape(K * co, *W.shape[1:]), padding=pad)  # (B, K*Co, h, w)
            dZ = t.reshape(B, K, co, *t.shape[2:]).transpose(0, 1).contiguous()
            if dA is not None:
                dZ += F.conv2d(dA.reshape(K * B, *dA.shape[2:]), W, padding=pad
                               ).reshape(dZ.shape)
            dZ += db.reshape(K, 1, co, 1, 1)
            dZs.append(dZ)
            dH = dZ * st["d1"][l]
            dA = self._pool_tangent(dH.reshape(K * B, *dH.shape[2:]), st["idx"][l], K
                                    ).reshape(K, B, co, *st["a"][l + 1].shape[2:])
            dAs.append(dA)
        dE = self._fc_tangent(params, st, tangents, dA, out)
        # ---- back through the convolutions
        for l in range(L - 1, -1, -1):
            W, pad = params[2 * l], self.paddings[l]
            dW = tangents[2 * l]
            co, ci = W.shape[:2]
            a, hs = st["a"][l], st["hsize"][l]
            dHb = self._pool_back(dE.reshape(K * B, *dE.shape[2:]), st["src"][l], hs,
                                  into=("dHb", l)).reshape(K, B, co, *hs)
            dG = dHb * st["d1"][l]
            if st["d2"][l] is not None:
                dG += st["Hb"][l] * st["d2"][l] * dZs[l]
            G = st["G_conv"][l]
            # corr(a_l, dG): one weight gradient with K*Co output channels
            g1 = dG.transpose(0, 1).reshape(B, K * co, *hs)
            dgW = conv2d_weight(a, (K * co, *W.shape[1:]), g1, padding=pad
                                ).reshape(K, *W.shape)
            if l > 0:  # corr(dA_l, G): one weight gradient with K*Ci input channels
                dAl = dAs[l].transpose(0, 1).reshape(B, K * ci, *a.shape[2:])
                g2 = conv2d_weight(dAl, (co, K * ci, *W.shape[2:]), G, padding=pad)
                dgW += g2.reshape(co, K, ci, *W.shape[2:]).transpose(0, 1)
            out[2 * l] = dgW
            out[2 * l + 1] = dG.sum((1, 3, 4))
            if l > 0:
                e1 = conv2d_input((K * B, ci, *a.shape[2:]), W,
                                  dG.reshape(K * B, co, *hs), padding=pad)
                wk = dW.transpose(0, 1).reshape(co, K * ci, *W.shape[2:])
                e2 = conv2d_input((B, K * ci, *a.shape[2:]), wk, G, padding=pad)
                dE = e1.reshape(K, B, ci, *a.shape[2:]) + \
                    e2.reshape(B, K, ci, *a.shape[2:]).transpose(0, 1)
        return tuple(out)
