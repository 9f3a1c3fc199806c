"""Deterministic, functional training, with or without tangents carried alongside.

The whole run is a pure function of theta_0: a fixed batch order (a function of the seed), a
learning-rate schedule, and an optimizer written as a pure update over flat tensors::

    g      = grad L(theta_t; batch_t)                      (a LossKernel)
    theta_{t+1}, state_{t+1} = update(theta_t, state_t, g, lr_t, t)

:func:`train` runs it; :func:`train_tangents` runs it while pushing K tangent directions of
theta_0 through every step (forward-mode autodiff): the gradient's tangent is the kernel's
``grad_jvp`` (a Hessian-vector product per direction), the optimizer's tangent is
:meth:`Optimizer.tangent` (checked against ``torch.func.jvp`` of ``update`` in the tests), run
in place as :meth:`Optimizer.tangent_`. Every chunk of J trains the same trajectory: with a
kernel that splits a step into primal and tangent (the MLP's), :func:`record_trajectory` keeps
the primal of every step once and the chunks replay only their tangents.

Conventions: parameters are one flat vector ``theta`` (P,) in :class:`engine.models.Layout`
order; tangents are (K, P); optimizer state is a tuple of (P,) tensors (tangents (K, P)).

On CUDA the steps of a chunk are queued without a host round trip: the loops and the kernels
run no op that needs a value on the host, copies between host and device, or scatters (a
sorted index_put that waits for the host under deterministic algorithms); the list is
:data:`engine.opcheck.SYNCING`, and the tests check the loops against it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vmap

from .config import TrainConfig
from .kernels.conv import ConvKernel
from .kernels.mlp import MLPKernel
from .models import MLP, ConvNet, Layout


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------------------------
# loss kernels: grad and grad-jvp of the mean softmax cross-entropy


class LossKernel(Protocol):
    def grad(self, params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, ...]: ...

    def grad_jvp(self, params: tuple[torch.Tensor, ...], tangents: tuple[torch.Tensor, ...],
                 x: torch.Tensor, y: torch.Tensor, out: tuple[torch.Tensor, ...] | None = None
                 ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """``(grads, dgrads)``; the kernel may write ``dgrads`` into ``out`` (buffers shaped
        like ``tangents``, not aliasing them) and return those."""


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def math_attention():
    """``scaled_dot_product_attention`` (``nn.MultiheadAttention``, a transformer layer) by its
    composite math backend inside the transforms: the fused CPU and CUDA kernels it picks
    otherwise have no forward-mode derivative ("Trying to use forward AD with
    _scaled_dot_product_flash_attention_for_cpu"), which J's tangents need."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class StepMask(nn.Module):
    """A dropout layer whose mask is set from outside for each training step (:class:`GenericKernel`
    with ``seed``): ``x * mask`` with the mask a constant of the step, so that the step's
    forward, its gradient and every tangent of every chunk see the same mask; identity while
    no mask is set (evaluation). Stands in for an ``nn.Dropout`` of probability ``p``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.mask: torch.Tensor | None = None
        self.shape: torch.Size | None = None  # the input's shape, learnt by a first forward

    def forward(self, x):
        if self.mask is None:
            if self.shape is None:
                self.shape = x.shape
            return x
        return x * self.mask


def step_masks(module: nn.Module, seed: int) -> list[StepMask]:
    """Replace, in place, each dropout of ``module`` in training mode (p > 0) by a
    :class:`StepMask`; the replacements, in module order."""
    from torch.nn.modules.dropout import _DropoutNd

    out = []
    for name, sub in list(module.named_modules()):
        for child_name, child in list(sub.named_children()):
            if isinstance(child, _DropoutNd) and child.training and child.p > 0:
                if type(child) is not nn.Dropout:
                    raise ValueError(f"{name + '.' if name else ''}{child_name} "
                                     f"({type(child).__name__}): only nn.Dropout's elementwise "
                                     "masks are drawn per step (call .eval() on it first)")
                m = StepMask(child.p)
                setattr(sub, child_name, m)
                out.append(m)
    return out


class RunningStats:
    """BatchNorm's running statistics as training state: the running means and variances of a
    module's BatchNorm layers in training mode that track them, one flat vector ``buffers``
    (B,) in ``named_buffers()`` order (each layer's ``running_mean``, then its
    ``running_var``; :attr:`names`), carried through training beside theta, tangents and all.

    PyTorch's update, step by step: each layer's batch mean and unbiased variance over all
    dimensions but the channel's (dimension 1), ``buffers = (1 - f) buffers + f batch``, with
    f the layer's ``momentum``, or 1 / (n0 + t + 1) for ``momentum=None`` (a cumulative
    average; n0 the layer's ``num_batches_tracked`` when the run starts). The update is linear,
    so the tangent of the statistics obeys the same recursion, fed by the batch statistics'
    own tangents (their directional derivatives through theta_t).

    Made from the kernel's training module, which it changes in place: the layers keep no
    statistics of their own (as ``torch.func.replace_all_batch_norm_modules_`` does), so no
    forward writes into a buffer (which torch.func cannot transform) and a training-mode
    forward normalizes by the batch's statistics exactly as before; a forward pre-hook on each
    layer records the batch statistics while :attr:`record` is a list. They never enter a
    training step: theta_T and its J are the same with or without them; the statistics are
    what evaluation (``module.eval()``) normalizes by."""

    def __init__(self, module: nn.Module):
        from torch.nn.modules.batchnorm import _BatchNorm

        self.names: list[str] = []
        self.layers: list[tuple[str, float | None, int, int]] = []  # name, momentum, n0, C
        init = []
        for name, m in module.named_modules():
            if not (isinstance(m, _BatchNorm) and m.training and m.track_running_stats):
                continue
            i = len(self.layers)
            n0 = int(m.num_batches_tracked) if m.num_batches_tracked is not None else 0
            self.layers.append((name, m.momentum, n0, m.num_features))
            prefix = f"{name}." if name else ""
            self.names += [f"{prefix}running_mean", f"{prefix}running_var"]
            init += [m.running_mean.detach().clone(), m.running_var.detach().clone()]
            m.running_mean = m.running_var = m.num_batches_tracked = None
            m.track_running_stats = False
            m.register_forward_pre_hook(self._hook(i))
        self.init = torch.cat(init) if init else None
        self.size = 0 if self.init is None else self.init.numel()
        self.record: list | None = None

    def __bool__(self) -> bool:
        return bool(self.layers)

    def _hook(self, i: int):
        def hook(mod, args):
            if self.record is None:
                return
            if self.record[i] is not None:
                raise ValueError(f"{self.layers[i][0]} ({type(mod).__name__}) runs twice in "
                                 "one forward: its running statistics would be updated twice "
                                 "per step, which tjac does not carry")
            x = args[0]
            dims = [d for d in range(x.dim()) if d != 1]
            self.record[i] = (x.mean(dims), x.var(dims, correction=1))
        return hook

    def start(self) -> None:
        self.record = [None] * len(self.layers)

    def collect(self) -> torch.Tensor:
        """The batch statistics the forward since :meth:`start` recorded, flat (B,)."""
        rec, self.record = self.record, None
        missing = [self.layers[i][0] for i, r in enumerate(rec) if r is None]
        if missing:
            raise ValueError(f"{missing[0]}: a BatchNorm layer in training mode that the "
                             "forward did not call, whose running statistics are undefined")
        return torch.cat([t for r in rec for t in r])

    def update_(self, buffers: torch.Tensor, batch: torch.Tensor, t: int) -> None:
        """Step t's update of ``buffers`` (..., B) towards the batch statistics ``batch``
        (..., B), in place; on tangents (K, B) too, the update being linear."""
        a = 0
        for _, momentum, n0, c in self.layers:
            f = momentum if momentum is not None else 1.0 / (n0 + t + 1)
            buffers[..., a: a + 2 * c].lerp_(batch[..., a: a + 2 * c], f)
            a += 2 * c

    def install(self, module: nn.Module, buffers: torch.Tensor, steps: int) -> None:
        """Write ``buffers`` (B,) into the same layers of ``module`` (an evaluation copy of
        the training module, its statistics intact), counted as ``steps`` more batches."""
        with torch.no_grad():
            for name, value in self.unflatten(buffers).items():
                module.get_buffer(name).copy_(value)
            for name, _, n0, _ in self.layers:
                m = module.get_submodule(name)
                if m.num_batches_tracked is not None:
                    m.num_batches_tracked.fill_(n0 + steps)

    def unflatten(self, buffers: torch.Tensor) -> dict[str, torch.Tensor]:
        out, a = {}, 0
        for name, _, _, c in self.layers:
            prefix = f"{name}." if name else ""
            out[f"{prefix}running_mean"] = buffers[a: a + c]
            out[f"{prefix}running_var"] = buffers[a + c: a + 2 * c]
            a += 2 * c
        return out


def evaluation_twin(module: nn.Module) -> nn.Module:
    """The module evaluation calls: ``module`` itself, or, when it has BatchNorm that tracks
    statistics or dropout in training mode (which its training kernel changes), a copy of it
    in eval mode (running statistics, no dropout), made before the kernel changes it."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    if any(m.training and ((isinstance(m, _BatchNorm) and m.track_running_stats) or
                           (isinstance(m, _DropoutNd) and m.p > 0))
           for m in module.modules()):
        return copy.deepcopy(module).eval()
    return module


class GenericKernel:
    """torch.func for any module: ``grad`` of the loss, and ``jvp`` of that gradient vmapped
    over the tangent directions (forward-over-reverse). ``loss(output, target)`` returns the
    batch's scalar loss (default: the mean softmax cross-entropy of logits against class
    indices); the module is called through ``functional_call``, its own parameters unused.

    Dropout (``nn.Dropout`` in training mode): each step's masks are drawn outside the
    transforms from a generator seeded by (``seed``, the step, the layer), elementwise
    Bernoulli(1 - p) / (1 - p) over the layer's input shape, and held as constants of the step
    (:class:`StepMask`): the forward, its gradient and every tangent column of every chunk
    see the same masks, so J is the derivative of that training. Callers pass the step
    (``step=``) when :attr:`random` is true.

    BatchNorm in training mode that tracks running statistics: :attr:`stats`, a
    :class:`RunningStats` (else None). Each ``grad`` leaves the step's batch statistics (B,) in
    :attr:`batch_stats`, each ``grad_jvp`` those and their tangents (K, B) in
    :attr:`batch_stats_tangent`, for the loops to carry (:func:`steps`, :func:`train_tangents`).

    The kernel changes ``module`` in place (dropout layers, BatchNorm's buffers): give it a
    module of its own (:func:`make_problem` and :func:`generic_problem` give it a copy)."""

    # Columns per chunk on the CPU: all P (capped by memory, :func:`engine.jacobian.auto_chunk`).
    # Each chunk is one vmapped call per step whose overhead does not shrink with the chunk, so
    # fewer, larger chunks are faster here (the fused kernels' limit is about cache size).
    cpu_chunk = 2**62

    def __init__(self, module: nn.Module, loss: Loss | None = None, seed: int = 0):
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.loss_fn = F.cross_entropy if loss is None else loss
        self.masks = step_masks(module, seed)
        self.random = bool(self.masks)
        self.seed = seed
        stats = RunningStats(module)
        self.stats = stats if stats else None
        self.batch_stats: torch.Tensor | None = None
        self.batch_stats_tangent: torch.Tensor | None = None

        def loss(params, x, y):
            out = functional_call(module, dict(zip(self.names, params)), (x,))
            return self.loss_fn(out, y)

        def loss_and_stats(params, x, y):
            stats.start()
            try:
                out = functional_call(module, dict(zip(self.names, params)), (x,))
                return self.loss_fn(out, y), stats.collect()
            finally:
                stats.record = None

        # with statistics: (grads, batch statistics), the statistics an output of the
        # gradient's function, so that its jvp carries their tangents too
        self._grad = (torch.func.grad(loss_and_stats, has_aux=True) if self.stats else
                      torch.func.grad(loss))

    def set_masks(self, params, x, step: int | None) -> None:
        """The dropout masks of step ``step`` for the batch ``x`` (no-op without dropout)."""
        if not self.random:
            return
        if step is None:
            raise ValueError("a model with dropout needs each call's training step (step=)")
        if any(m.shape is None or m.shape[0] != x.shape[0] for m in self.masks):
            for m in self.masks:  # learn each layer's input shape: one forward, no masks
                m.mask, m.shape = None, None
            with torch.no_grad():
                functional_call(self.module, dict(zip(self.names, params)), (x,))
        for i, m in enumerate(self.masks):
            g = torch.Generator(device=x.device).manual_seed(
                (self.seed * 1_000_003 + step) * 1_009 + i)
            keep = torch.rand(m.shape, generator=g, device=x.device) >= m.p
            m.mask = keep.to(x.dtype) / (1 - m.p)

    def clear_masks(self) -> None:
        for m in self.masks:
            m.mask = None

    def grad(self, params, x, y, step: int | None = None):
        self.set_masks(params, x, step)
        try:
            with math_attention():
                g = self._grad(params, x, y)
        finally:
            self.clear_masks()
        if self.stats:
            g, self.batch_stats = g
        return g

    def grad_jvp(self, params, tangents, x, y, out=None, step: int | None = None):
        self.set_masks(params, x, step)
        try:
            with math_attention():
                g, dg = self._grad_jvp(params, tangents, x, y)
        finally:
            self.clear_masks()
        if self.stats:
            (g, self.batch_stats), (dg, self.batch_stats_tangent) = g, dg
        return g, dg

    def _grad_jvp(self, params, tangents, x, y):
        g = self._grad(params, x, y)
        if y.dtype.is_floating_point:
            # a regression target enters with an explicit zero tangent: left implicit, it is a
            # ZeroTensor that mse_loss's double backward under forward AD tries to write into
            # ("ZeroTensors are immutable"); the numbers are the same
            dy = torch.zeros_like(y)

            def one(t):
                return jvp(lambda p, yy: self._grad(p, x, yy), (params, y), (t, dy))[1]

            return g, vmap(one)(tangents)

        def one(t):
            return jvp(lambda p: self._grad(p, x, y), (params,), (t,))[1]

        return g, vmap(one)(tangents)


def make_kernel(module: nn.Module, kind: str = "auto", seed: int = 0) -> LossKernel:
    """The fused kernel of the built-in models (``kind`` auto or fused): MLPKernel for the MLP,
    ConvKernel for the conv nets; torch.func (GenericKernel, on a copy of ``module``, its
    dropout masks drawn from ``seed``) otherwise."""
    if kind != "generic" and isinstance(module, MLP):
        return MLPKernel(module.widths, module.activation)
    if kind != "generic" and isinstance(module, ConvNet):
        return ConvKernel.of(module)
    if kind == "fused":
        raise ValueError('jacobian.kernel = "fused" needs a built-in model (mlp, lenet5, cnn)')
    return GenericKernel(copy.deepcopy(module), seed=seed)


# --------------------------------------------------------------------------------------------
# schedules and batch order


def lr_schedule(cfg: TrainConfig, total_steps: int) -> np.ndarray:
    """Learning rate of each step t = 0 .. T-1: linear warmup from 0 (lr (t+1)/W for t < W), then
    constant, or cosine / linear decay from lr to final_lr over the remaining steps (the first
    decay step uses lr itself, as optax's schedules do)."""
    lrs = np.empty(total_steps)
    w = min(cfg.warmup_steps, total_steps)
    lrs[:w] = cfg.lr * (np.arange(w) + 1) / max(w, 1)
    n = total_steps - w
    frac = np.arange(n) / max(n, 1)
    if cfg.schedule == "constant":
        lrs[w:] = cfg.lr
    elif cfg.schedule == "cosine":
        lrs[w:] = cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1 + np.cos(np.pi * frac))
    else:  # linear
        lrs[w:] = cfg.lr + (cfg.final_lr - cfg.lr) * frac
    return lrs


def batch_order(n: int, cfg: TrainConfig, seed: int) -> list[np.ndarray]:
    """Row indices of every step's batch. Fixed order: batches are consecutive slices of the
    training set, the same every epoch (the paper). Shuffled: a fresh permutation each epoch
    drawn from ``seed``."""
    bs = cfg.batch_size or n
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(cfg.epochs):
        perm = rng.permutation(n) if cfg.shuffle else np.arange(n)
        for start in range(0, n, bs):
            idx = perm[start: start + bs]
            if len(idx) < bs and cfg.drop_last:
                break
            out.append(idx)
    if not out:
        raise ValueError(f"train.batch_size = {bs} with drop_last leaves no batch of {n} rows")
    return out


# --------------------------------------------------------------------------------------------
# optimizers: pure updates over flat tensors


class Optimizer:
    """``update(theta, state, g, lr, t) -> (theta, state)``; t is the 0-based step."""

    by_jvp = False  # its tangent is written by hand (:class:`UpdateFunction`'s is a jvp)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def init(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.cfg.optimizer == "adam":
            return (torch.zeros_like(theta), torch.zeros_like(theta))
        if self.cfg.momentum > 0:
            return (torch.zeros_like(theta),)
        return ()

    def update(self, theta, state, g, lr: float, t: int):
        c = self.cfg
        if c.weight_decay:
            g = g + c.weight_decay * theta
        if c.optimizer == "adam":
            m, v = state
            m = c.beta1 * m + (1 - c.beta1) * g
            v = c.beta2 * v + (1 - c.beta2) * g * g
            m_hat = m / (1 - c.beta1 ** (t + 1))
            v_hat = v / (1 - c.beta2 ** (t + 1))
            return theta - lr * m_hat / (torch.sqrt(v_hat + c.eps_root) + c.eps), (m, v)
        if c.momentum > 0:
            (m,) = state
            m = c.momentum * m + g
            d = g + c.momentum * m if c.nesterov else m
            return theta - lr * d, (m,)
        return theta - lr * g, ()

    def tangent(self, theta, state, g, dtheta, dstate, dg, lr: float, t: int):
        """The update's directional derivative: (dtheta', dstate') for tangents of shape
        (K, *theta.shape) against primals (theta, state, g) of shape theta.shape (broadcast).

        SGD, momentum, Nesterov and weight decay are linear without constant terms, so their
        tangent is ``update`` itself applied to the tangents. Adam is linearised by hand.
        ``torch.func.jvp`` of ``update`` vmapped over K gives the same numbers (the tests
        check it) but cost 3x the kernel's time on the paper's run: it copies every tangent
        into a dual tensor on every call."""
        c = self.cfg
        if c.optimizer != "adam":
            return self.update(dtheta, dstate, dg, lr, t)
        if c.weight_decay:
            g = g + c.weight_decay * theta
            dg = dg + c.weight_decay * dtheta
        m, v = state
        dm, dv = dstate
        m = c.beta1 * m + (1 - c.beta1) * g
        v = c.beta2 * v + (1 - c.beta2) * g * g
        dm = c.beta1 * dm + (1 - c.beta1) * dg
        dv = c.beta2 * dv + (2 * (1 - c.beta2)) * g * dg
        c1, c2 = 1 - c.beta1 ** (t + 1), 1 - c.beta2 ** (t + 1)
        root = torch.sqrt(v / c2 + c.eps_root)
        den = root + c.eps
        # u = (m / c1) / den;  du = (dm / c1) / den - (m / c1) (dv / c2) / (2 root den^2)
        du = (dm / c1 - (m / c1) * (dv / c2) / (2 * root * den)) / den
        return dtheta - lr * du, (dm, dv)

    @property
    def tangent_reads_primal(self) -> bool:
        """Whether the tangent update reads theta, the state or g (Adam) or is linear in the
        tangents alone (SGD, momentum, Nesterov, weight decay): then :meth:`tangent_` may be
        given None for those."""
        return self.cfg.optimizer == "adam"

    @property
    def fused_momentum(self) -> float:
        """mu when the momentum tangent ``dm = mu dm + dg`` can be accumulated by the kernel
        itself (SGD with momentum, not Nesterov, whose step needs dg apart), else 0."""
        c = self.cfg
        return c.momentum if (c.optimizer == "sgd" and c.momentum > 0 and not c.nesterov) else 0

    def tangent_after_fused_(self, dtheta, dm, lr: float) -> None:
        """The rest of SGD momentum's tangent once the kernel has accumulated
        ``dm = mu dm + H dtheta`` (:attr:`fused_momentum`): weight decay's ``wd dtheta`` into dm,
        then ``dtheta -= lr dm``; in place. (:meth:`tangent_` gives the same numbers to
        rounding; the tests check.)"""
        if self.cfg.weight_decay:
            dm.add_(dtheta, alpha=self.cfg.weight_decay)
        dtheta.add_(dm, alpha=-lr)

    def tangent_(self, theta, state, g, dtheta, dstate, dg, lr: float, t: int) -> None:
        """:meth:`tangent` in place: ``dtheta`` and the tensors of ``dstate`` (each
        (K, *theta.shape)) are updated where they lie, and ``dg`` is used as scratch. No
        (K, ...) tensor is allocated, so a chunk's loop runs in the same few buffers from its
        first step to its last (a fresh multi-MB result per step and tensor cost more in page
        faults than the arithmetic did). The primal operands are the state *before* the step,
        as in :meth:`tangent`, whose numbers this reproduces to rounding (the tests check);
        Adam's primal enters through :meth:`adam_factors` only."""
        if self.cfg.optimizer == "adam":
            self.adam_tangent_(dtheta, dstate, dg, self.adam_factors(theta, state, g, t), lr)
            return
        c = self.cfg
        if c.weight_decay:
            dg.add_(dtheta, alpha=c.weight_decay)
        if c.momentum > 0:
            (dm,) = dstate
            dm.mul_(c.momentum).add_(dg)
            if c.nesterov:
                dtheta.add_(dg.add_(dm, alpha=c.momentum), alpha=-lr)
            else:
                dtheta.add_(dm, alpha=-lr)
            return
        dtheta.add_(dg, alpha=-lr)

    def adam_factors(self, theta, state, g, t: int) -> tuple[torch.Tensor, ...]:
        """The primal factors of Adam's tangent at step t, each shaped like theta: ``(c, a,
        b)`` with ``dv' = beta2 dv + c dg`` and ``du = a dm' - b dv'``, i.e. c = 2 (1 - beta2)
        g, a = 1 / (c1 den), b = m' / (2 c1 c2 root den^2) (m', v' after the step, root =
        sqrt(v' / c2 + eps_root), den = root + eps). Element-wise, so the factors of the flat
        vector are those of each parameter tensor; computed once per step (a recorded
        trajectory keeps them) instead of once per chunk and tensor."""
        c = self.cfg
        if c.weight_decay:
            g = g + c.weight_decay * theta
        m, v = state
        m = c.beta1 * m + (1 - c.beta1) * g
        v = c.beta2 * v + (1 - c.beta2) * g * g
        c1, c2 = 1 - c.beta1 ** (t + 1), 1 - c.beta2 ** (t + 1)
        root = torch.sqrt(v / c2 + c.eps_root)
        den = root + c.eps
        return (g.mul(2 * (1 - c.beta2)), (c1 * den).reciprocal_(),
                m / (2 * c1 * c2 * root * den * den))

    def adam_tangent_(self, dtheta, dstate, dg, factors, lr: float) -> None:
        """Adam's tangent update in place from the step's :meth:`adam_factors`."""
        c = self.cfg
        cg, a, b = factors
        dm, dv = dstate
        if c.weight_decay:
            dg.add_(dtheta, alpha=c.weight_decay)
        dm.mul_(c.beta1).add_(dg, alpha=1 - c.beta1)
        dv.mul_(c.beta2).addcmul_(cg, dg)
        dtheta.addcmul_(dm, a, value=-lr).addcmul_(dv, b, value=lr)


Update = Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]]

# TrainConfig's keys that configure the built-in optimizers (not the schedule or the batches)
OPTIMIZER_KEYS = ("optimizer", "momentum", "nesterov", "weight_decay", "beta1", "beta2", "eps",
                  "eps_root")


class UpdateFunction:
    """A caller's optimizer, given as functions over flat tensors, in :class:`Optimizer`'s
    place: ``update(theta, state, g, lr, t) -> (theta', state')`` (theta and g (P,), state a
    tuple of tensors shaped like theta, lr the schedule's rate of step t, t the 0-based step)
    and ``init(theta) -> state`` (default: no state). Both must be pure torch functions: no
    in-place change of their inputs, no ``.item()`` or Python branch on a tensor's value.

    Its tangent is ``torch.func.jvp`` of ``update``, vmapped over the K tangent columns: exact
    for any differentiable update, at the cost of a dual-tensor copy of every tangent per step
    (the built-in optimizers' hand-written tangents avoid it)."""

    by_jvp = True
    tangent_reads_primal = True  # (in general: a recorded trajectory is not used with it)
    fused_momentum = 0.0

    def __init__(self, update: Update, init: Callable[[torch.Tensor], Any] | None = None):
        if not callable(update):
            raise TypeError(f"update must be a function (theta, state, g, lr, t) -> "
                            f"(theta, state), not {type(update).__name__}")
        if init is not None and not callable(init):
            raise TypeError(f"init must be a function theta -> state, not "
                            f"{type(init).__name__}")
        self.fn, self.init_fn = update, init
        self._traced = False

    def init(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = () if self.init_fn is None else self.init_fn(theta)
        if isinstance(state, torch.Tensor):
            state = (state,)
        state = tuple(state)
        for i, s in enumerate(state):
            if not isinstance(s, torch.Tensor) or s.shape != theta.shape:
                what = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"init(theta) gave state[{i}] of {what}: each state entry "
                                 f"must be a tensor shaped like theta, {tuple(theta.shape)}")
        return state

    @staticmethod
    def _versions(theta, state, g) -> list[int]:
        return [v._version for v in (theta, *state, g)]

    def _unchanged(self, before: list[int], theta, state, g) -> None:
        if self._versions(theta, state, g) != before:
            raise ValueError("the update function changed its inputs in place (theta, a state "
                             "tensor or g): it must return new tensors (theta - lr * g, not "
                             "theta.sub_(lr * g)), or J would be silently wrong")

    def update(self, theta, state, g, lr: float, t: int):
        before = self._versions(theta, state, g)
        out = self.fn(theta, state, g, lr, t)
        self._unchanged(before, theta, state, g)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)):
            raise ValueError("update(theta, state, g, lr, t) must return (theta, state), the "
                             f"new parameters and a tuple of state tensors; it gave "
                             f"{type(out).__name__}")
        new_state = (out[1],) if isinstance(out[1], torch.Tensor) else tuple(out[1])
        if len(new_state) != len(state):
            raise ValueError(f"update gave {len(new_state)} state tensor(s) for the "
                             f"{len(state)} of init(theta)")
        return out[0], new_state

    def tangent(self, theta, state, g, dtheta, dstate, dg, lr: float, t: int):
        """(dtheta', dstate') for tangents (K, P) against the primal (theta, state, g) before
        the step: ``torch.func.jvp`` of :meth:`update` per column."""
        def step(th, st, gg):
            return self.update(th, st, gg, lr, t)

        def column(dth, dst, dgg):
            return jvp(step, (theta, state, g), (dth, dst, dgg))[1]

        before = self._versions(theta, state, g)
        try:
            if not self._traced:  # once: jvp reads a tensor's value through .item() or a
                # Python branch silently (its tangent lost); vmap over the primal refuses it
                vmap(step)(theta[None], tuple(v[None] for v in state), g[None])
                self._traced = True
            out = vmap(column)(dtheta, tuple(dstate), dg)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"the update function's tangent (torch.func.jvp) failed at step "
                             f"{t}: {first}; the update must be a pure torch function (no "
                             "in-place change of its inputs, no .item() or branch on a "
                             "tensor's value)") from e
        self._unchanged(before, theta, state, g)
        return out

    def tangent_flat_(self, layout: Layout, theta, state, g, dtheta, dstate, dg, lr: float,
                      t: int) -> None:
        """:meth:`tangent` into :func:`train_tangents`' per-tensor buffers, in place:
        ``dtheta`` and ``dstate`` ([state][param], each (K, *shape)) are overwritten."""
        new_dtheta, new_dstate = self.tangent(
            theta, state, g, layout.flatten(dtheta), tuple(layout.flatten(ds) for ds in dstate),
            layout.flatten(dg), lr, t)
        for old, new in zip(dtheta, layout.unflatten(new_dtheta)):
            old.copy_(new)
        for olds, news in zip(dstate, new_dstate):
            for old, new in zip(olds, layout.unflatten(news)):
                old.copy_(new)


# --------------------------------------------------------------------------------------------
# the problem: everything training needs, on one device and dtype


@dataclass
class Problem:
    kernel: LossKernel
    # for evaluation (functional_call; its own parameters are not used): the training module,
    # or its copy in eval mode when it has BatchNorm or dropout (:func:`evaluation_twin`)
    module: nn.Module
    layout: Layout
    optimizer: Optimizer | UpdateFunction
    lrs: np.ndarray  # (T,)
    batches: list[torch.Tensor]  # T index tensors on the device
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = None  # None: no test set (the metrics are the train set's)
    y_test: torch.Tensor | None = None
    eval_every: int = 1
    _gathered: dict = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> int:
        return len(self.batches)

    @property
    def statistics(self) -> RunningStats | None:
        """The running statistics training carries (BatchNorm), or None."""
        return getattr(self.kernel, "stats", None)

    def initial_buffers(self) -> torch.Tensor | None:
        """The running statistics before the first step (B,), a copy; None without any."""
        st = self.statistics
        return None if st is None else st.init.to(self.x_train.dtype, copy=True)

    def install_buffers(self, buffers: torch.Tensor | None, steps: int | None = None) -> None:
        """Evaluate with these running statistics (B,) from now on (``steps``: the batches
        they count, default all of the training's)."""
        if buffers is not None and self.statistics is not None:
            self.statistics.install(self.module, buffers.to(self.x_train.dtype),
                                    self.steps if steps is None else steps)

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of step t. Distinct batches are gathered once and kept (with a fixed order,
        25 tensors serve all 625 steps of the paper's run) while they fit in 256 MB. A batch is
        known by its index tensor (:func:`make_problem` gives every epoch's same batch the same
        one), which the cache holds so that its id stays its own (not by its data's address:
        tensors with no data, on the meta device, all have address 0)."""
        idx = self.batches[t]
        hit = self._gathered.get(id(idx))
        if hit is not None:
            return hit[1]
        xy = self.x_train[idx], self.y_train[idx]
        if len(self._gathered) * xy[0].numel() * xy[0].element_size() < 256 * 2**20:
            self._gathered[id(idx)] = (idx, xy)
        return xy

    def astype(self, dtype: torch.dtype) -> "Problem":
        """The same training problem in another dtype: a copy with its own module and its own
        batch cache (a cache shared with the original would hand it batches of the old dtype)."""
        if self.x_train.dtype == dtype:
            return self
        y = self.y_train.dtype.is_floating_point  # regression targets follow the dtype
        return dataclasses.replace(
            self, module=copy.deepcopy(self.module).to(dtype), x_train=self.x_train.to(dtype),
            y_train=self.y_train.to(dtype) if y else self.y_train,
            x_test=None if self.x_test is None else self.x_test.to(dtype),
            y_test=self.y_test.to(dtype) if y and self.y_test is not None else self.y_test,
            _gathered={})

    def truncated(self, steps: int) -> "Problem":
        """The first ``steps`` steps of this training (the same schedule, step by step)."""
        return dataclasses.replace(self, batches=self.batches[:steps], lrs=self.lrs[:steps])

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[float, float]:
        """(loss, accuracy) of the parameters on (x, y): the kernel's loss (the mean
        cross-entropy unless a generic kernel was given another), and the fraction of argmax
        predictions equal to y for class labels (NaN for regression targets)."""
        params = dict(zip(self.layout.names, self.layout.unflatten(theta)))
        logits = functional_call(self.module, params, (x,))
        loss = getattr(self.kernel, "loss_fn", F.cross_entropy)(logits, y)
        if y.dtype.is_floating_point or logits.dim() != 2:
            acc = torch.full((), math.nan, dtype=loss.dtype, device=loss.device)
        else:
            acc = (logits.argmax(-1) == y).to(logits.dtype).mean()
        both = torch.stack([loss, acc]).tolist()
        return both[0], both[1]


def make_problem(module: nn.Module, data, cfg: TrainConfig, seed: int, device: torch.device,
                 dtype: torch.dtype, kernel: str = "auto") -> Problem:
    """The training of a preset (``data``, a :class:`engine.data.Dataset`); ``module`` is
    moved to ``device`` and ``dtype`` in place (the session's own, built for it); the
    kernel's (:func:`make_kernel`) and evaluation's (:func:`evaluation_twin`) modules are
    copies of it where they differ. ``seed`` orders the batches and draws dropout masks."""
    module = module.to(device=device, dtype=dtype)
    layout = Layout.of(module)
    order = batch_order(len(data.x_train), cfg, seed)

    def t(a, dt):
        return torch.as_tensor(a, dtype=dt, device=device)

    # the same batch in every epoch is one tensor, so Problem.batch gathers it once
    distinct: dict[bytes, torch.Tensor] = {}
    batches = [distinct.setdefault(b.tobytes(), t(b, torch.long)) for b in order]

    return Problem(
        kernel=make_kernel(module, kernel, seed), module=evaluation_twin(module), layout=layout,
        optimizer=Optimizer(cfg), lrs=lr_schedule(cfg, len(order)),
        batches=batches,
        x_train=t(data.x_train, dtype), y_train=t(data.y_train, torch.long),
        x_test=t(data.x_test, dtype), y_test=t(data.y_test, torch.long),
        eval_every=cfg.eval_every)


def generic_problem(module: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                    device: torch.device, dtype: torch.dtype, *, seed: int = 0,
                    order: list[np.ndarray] | None = None, loss: Loss | None = None,
                    optimizer: UpdateFunction | None = None) -> Problem:
    """The training of any module on tensors, through torch.func (:class:`GenericKernel`),
    with no test set. ``x`` (N, ...) inputs; ``y`` (N,) class indices or (N, ...) regression
    targets (floating ``y`` is cast to ``dtype``, integer ``y`` to int64); ``order``: the row
    indices of every step's batch (default :func:`batch_order` of ``cfg`` and ``seed``);
    ``loss(output, target)``: the
    batch's scalar loss (default the mean cross-entropy); ``seed`` also draws the dropout
    masks (:class:`GenericKernel`); ``optimizer``: a caller's update function in place of
    ``cfg``'s optimizer (whose schedule still gives the rates). The problem trains its own copy of
    ``module`` in ``dtype`` on ``device``: the caller's module, its parameters and buffers are
    left as they were."""
    module = copy.deepcopy(module).to(device=device, dtype=dtype)
    evaluation = evaluation_twin(module)  # (before the kernel changes its module)
    if order is None:
        order = batch_order(len(x), cfg, seed)
    distinct: dict[bytes, torch.Tensor] = {}  # the same rows are one tensor (gathered once)
    batches = [distinct.setdefault(np.asarray(b).tobytes(),
                                   torch.as_tensor(b, dtype=torch.long, device=device))
               for b in order]
    y_dtype = dtype if y.dtype.is_floating_point else torch.long
    return Problem(kernel=GenericKernel(module, loss, seed), module=evaluation,
                   layout=Layout.of(module),
                   optimizer=optimizer if optimizer is not None else Optimizer(cfg),
                   lrs=lr_schedule(cfg, len(order)), batches=batches,
                   x_train=torch.as_tensor(x).to(device=device, dtype=dtype),
                   y_train=torch.as_tensor(y).to(device=device, dtype=y_dtype),
                   eval_every=cfg.eval_every)


def initial_theta(module: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    layout = Layout.of(module)
    return layout.flatten([p.detach() for _, p in module.named_parameters()]).to(device, dtype)


# --------------------------------------------------------------------------------------------
# the loops


StepCallback = Callable[[dict], None]


def at_step(p: Problem, t: int) -> dict:
    """The kernel's keywords for step ``t``: ``step=t`` for a kernel that draws per step
    (:attr:`GenericKernel.random`: dropout), else none."""
    return {"step": t} if getattr(p.kernel, "random", False) else {}


def steps(problem: Problem, theta0: torch.Tensor,
          should_stop: Callable[[], bool] | None = None,
          buffers: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """The bare training loop: yields (t, theta_{t+1}) after each step t; raises
    ``KeyboardInterrupt`` when ``should_stop()`` turns true. ``buffers``: the running
    statistics (:attr:`Problem.statistics`, (B,), from :meth:`Problem.initial_buffers`),
    updated in place by every step (at each yield, those after step t)."""
    p = problem
    st = p.statistics
    theta, state = theta0.clone(), p.optimizer.init(theta0)
    for t in range(p.steps):
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        x, y = p.batch(t)
        g = p.layout.flatten(p.kernel.grad(p.layout.unflatten(theta), x, y, **at_step(p, t)))
        if st is not None and buffers is not None:
            st.update_(buffers, p.kernel.batch_stats, t)
        theta, state = p.optimizer.update(theta, state, g, float(p.lrs[t]), t)
        yield t, theta


def train(problem: Problem, theta0: torch.Tensor, on_step: StepCallback | None = None,
          should_stop: Callable[[], bool] | None = None,
          buffers: torch.Tensor | None = None) -> torch.Tensor:
    """Run the training; returns theta_T (P,). ``on_step`` receives a metrics dict after every
    evaluated step (step 0 is the initialisation). Raises :class:`TrainingDiverged` on a NaN or
    infinite loss, and ``KeyboardInterrupt`` when ``should_stop()`` turns true.

    With running statistics (:attr:`Problem.statistics`) every evaluation uses those of its
    step (installed into the problem's evaluation module, where they stay after the run);
    ``buffers`` (B,), when given, are those to start from (:meth:`Problem.initial_buffers`),
    updated in place (those after the last step at the end)."""
    p = problem
    theta = theta0
    if p.statistics is not None:
        if buffers is None:
            buffers = p.initial_buffers()
        p.install_buffers(buffers, 0)
    m0 = _metrics(p, theta, 0, None)
    if on_step is not None:
        on_step(m0)
    if not (math.isfinite(m0["train_loss"]) and math.isfinite(m0.get("test_loss", 0.0))):
        raise TrainingDiverged(f"the loss is {m0['train_loss']} at initialisation, before any "
                               "step: the initial parameters or the data give non-finite "
                               "outputs")
    for t, theta in steps(p, theta0, should_stop, buffers):
        if (t + 1) % p.eval_every and t != p.steps - 1:
            continue
        p.install_buffers(buffers, t + 1)
        m = _metrics(p, theta, t + 1, float(p.lrs[t]))
        if on_step is not None:
            on_step(m)
        if not (math.isfinite(m["train_loss"]) and math.isfinite(m.get("test_loss", 0.0))):
            raise TrainingDiverged(f"the loss became {m['train_loss']} at step {t + 1} "
                                   f"(learning rate {p.lrs[t]:.3g}); lower train.lr")
    return theta


def _metrics(p: Problem, theta: torch.Tensor, step: int, lr: float | None) -> dict:
    tr_loss, tr_acc = p.evaluate(theta, p.x_train, p.y_train)
    out = {"step": step, "lr": lr, "train_loss": tr_loss, "train_acc": tr_acc}
    if p.x_test is not None:
        out["test_loss"], out["test_acc"] = p.evaluate(theta, p.x_test, p.y_test)
    return out


TangentStep = Callable[[int, torch.Tensor, tuple[torch.Tensor, ...]], None]


# A recorded trajectory is kept only while it takes at most this much memory (and at most an
# eighth of the memory available when it is recorded); past that, chunks recompute the primal.
TRAJECTORY_BUDGET = 384 * 2**20


@dataclass(eq=False)
class Trajectory:
    """The primal side of one training run, step by step, for kernels that split a step into
    ``primal`` (forward and backward of the batch) and ``tangent`` (the K Hessian-vector
    products at that point): every chunk of J trains the same trajectory, so it is computed
    once and each chunk runs only its tangents. The tangents are bitwise those of a chunk that
    recomputes the primal (the same kernel code, run once instead of once per chunk).

    ``states[t]`` is the kernel's primal state of step t, ``thetas[t]`` the flat parameters
    before step t (``thetas[T]`` is theta_T); for an optimizer whose tangent reads the primal
    (Adam), ``factors[t]`` are the step's :meth:`Optimizer.adam_factors`, flat."""

    states: list
    thetas: list[torch.Tensor]
    factors: list[tuple[torch.Tensor, ...]] | None
    nbytes: int

    @property
    def theta_T(self) -> torch.Tensor:
        return self.thetas[-1]


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) kernel state, each storage counted once (known by
    its object, which views share and which is held here so that its id stays its own; not by
    its data's address, which is 0 for every tensor on the meta device)."""
    seen: dict[int, tuple] = {}

    def walk(o):
        if isinstance(o, torch.Tensor):
            s = o.untyped_storage()
            seen[id(s)] = (s, s.nbytes())
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif dataclasses.is_dataclass(o):
            for f in dataclasses.fields(o):
                walk(getattr(o, f.name))

    walk(obj)
    return sum(n for _, n in seen.values())


def record_trajectory(problem: Problem, theta0: torch.Tensor,
                      budget: int | None = None) -> Trajectory | None:
    """Train once, keeping what every tangent chunk needs at every step (:class:`Trajectory`),
    or None when the kernel has no primal/tangent split or the trajectory would take more than
    ``budget`` bytes (default: :data:`TRAJECTORY_BUDGET`, at most an eighth of the available
    memory; measured on the first step, before the rest is trained). The parameters follow
    :func:`train`'s trajectory bitwise."""
    p = problem
    split = hasattr(p.kernel, "primal") and hasattr(p.kernel, "tangent")
    if not split or p.optimizer.by_jvp:
        return None
    if budget is None:
        budget = TRAJECTORY_BUDGET
        if theta0.device.type == "cpu":
            budget = min(budget, os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8)
    keep = p.optimizer.tangent_reads_primal
    theta, state = theta0.clone(), p.optimizer.init(theta0)
    traj = Trajectory([], [], [] if keep else None, 0)
    for t in range(p.steps):
        x, y = p.batch(t)
        st = p.kernel.primal(p.layout.unflatten(theta), x, y)
        g = p.layout.flatten(st.grads)
        if dataclasses.is_dataclass(st) and hasattr(st, "grads"):
            st = dataclasses.replace(st, grads=())  # the tangents never read it: not kept
        traj.states.append(st)
        traj.thetas.append(theta)
        if keep:
            traj.factors.append(p.optimizer.adam_factors(theta, state, g, t))
        if t == 0:  # what one step keeps, each storage once (the state's weights are views
            # of theta)
            per_step = _tensor_bytes([st, theta, traj.factors[0] if keep else ()])
            traj.nbytes = per_step * p.steps
            if traj.nbytes > budget:
                return None
        theta, state = p.optimizer.update(theta, state, g, float(p.lrs[t]), t)
    traj.thetas.append(theta)
    return traj



def train_tangents(problem: Problem, theta0: torch.Tensor, tangents0: torch.Tensor,
                   should_stop: Callable[[], bool] | None = None,
                   on_step: TangentStep | None = None,
                   trajectory: Trajectory | None = None,
                   statistics: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Train from ``theta0`` (P,) while pushing the tangent directions ``tangents0`` (K, P)
    through every step. Returns (theta_T (P,), d theta_T (K, P)): row k of the second is the
    directional derivative of theta_T along tangents0[k], i.e. ``J @ tangents0[k]``.
    ``on_step(t, theta, dtheta)`` sees the state after each step t (tangents per parameter
    tensor, (K, *shape)).

    The primal runs exactly as in :func:`train` (flat tensors, bitwise the same trajectory).
    Tangents are kept per parameter tensor, (K, *shape) and contiguous, which is the layout the
    kernels' matrix products want, in buffers allocated once per call: the kernel writes the
    gradient's tangent into the same scratch every step and the optimizer's tangent update
    (:meth:`Optimizer.tangent_`) runs in place. ``on_step`` therefore sees those buffers: copy
    what you keep. With a ``trajectory`` of this problem and theta0 (:func:`record_trajectory`)
    the primal is read from it instead of computed: the same numbers, bitwise, in less time.

    ``statistics``: return the running statistics too (:attr:`Problem.statistics`, B of
    them; none without BatchNorm): (state_T (P + B,), d state_T (K, P + B)), theta then the
    statistics, their tangents carried by the same linear recursion as their values."""
    p = problem
    lay = p.layout
    st = p.statistics if statistics else None
    if st is not None and trajectory is not None:
        raise ValueError("running statistics come from the generic kernel, which records no "
                         "trajectory")
    buf = p.initial_buffers() if st is not None else None
    dbuf = (torch.zeros(len(tangents0), st.size, dtype=tangents0.dtype,
                        device=tangents0.device) if st is not None else None)
    theta, state = theta0.clone(), p.optimizer.init(theta0)
    dtheta = tuple(t.clone(memory_format=torch.contiguous_format)
                   for t in lay.unflatten(tangents0))
    dstate = tuple(tuple(torch.zeros_like(d) for d in dtheta) for _ in state)  # [state][param]
    scratch = tuple(torch.empty_like(d) for d in dtheta)
    mu = p.optimizer.fused_momentum if getattr(p.kernel, "accumulates", False) else 0
    # where the kernel writes: momentum's dm (accumulated, ``beta = mu``) or the scratch
    into = {"out": dstate[0], "beta": mu} if mu else {"out": scratch}
    if trajectory is not None:
        return _replay_tangents(p, trajectory, dtheta, dstate, into, mu, should_stop, on_step)
    for t in range(p.steps):
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        x, y = p.batch(t)
        lr = float(p.lrs[t])
        g, dg = p.kernel.grad_jvp(lay.unflatten(theta), dtheta, x, y, **into, **at_step(p, t))
        g = lay.flatten(g)
        if st is not None:
            st.update_(buf, p.kernel.batch_stats, t)
            st.update_(dbuf, p.kernel.batch_stats_tangent, t)
        if p.optimizer.by_jvp:
            p.optimizer.tangent_flat_(lay, theta, state, g, dtheta, dstate, dg, lr, t)
        else:
            factors = (p.optimizer.adam_factors(theta, state, g, t)
                       if p.optimizer.tangent_reads_primal else None)
            _tangent_update(p, mu, factors, dtheta, dstate, dg, lr, t)
        theta, state = p.optimizer.update(theta, state, g, lr, t)
        if on_step is not None:
            on_step(t, theta, dtheta)
    if st is not None:
        return torch.cat([theta, buf]), torch.cat([lay.flatten(dtheta), dbuf], dim=1)
    return theta, lay.flatten(dtheta)


def _tangent_update(p: Problem, mu: float, factors, dtheta, dstate, dg, lr: float, t: int
                    ) -> None:
    """The optimizer's tangent update of every parameter tensor, in place, after the kernel
    wrote ``dg``: with ``mu``, momentum's dm already accumulated there (``dg`` is dm); for Adam
    from the step's flat :meth:`Optimizer.adam_factors` (``factors``), else None."""
    lay = p.layout
    if mu:
        for dth, dm in zip(dtheta, dg):
            p.optimizer.tangent_after_fused_(dth, dm, lr)
    elif factors is not None:
        views = [lay.unflatten(f) for f in factors]
        for i in range(len(dtheta)):
            p.optimizer.adam_tangent_(dtheta[i], tuple(ds[i] for ds in dstate), dg[i],
                                      tuple(v[i] for v in views), lr)
    else:
        for i in range(len(dtheta)):
            p.optimizer.tangent_(None, (), None, dtheta[i], tuple(ds[i] for ds in dstate),
                                 dg[i], lr, t)


def _replay_tangents(p: Problem, traj: Trajectory, dtheta, dstate, into: dict, mu: float,
                     should_stop: Callable[[], bool] | None, on_step: TangentStep | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_tangents`' loop over a recorded trajectory: tangents only (``into``: where
    the kernel writes; ``mu``: the momentum it accumulates, or 0)."""
    reads = p.optimizer.tangent_reads_primal
    for t in range(p.steps):
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        lr = float(p.lrs[t])
        dg = p.kernel.tangent(traj.states[t], dtheta, **into)
        _tangent_update(p, mu, traj.factors[t] if reads else None, dtheta, dstate, dg, lr, t)
        if on_step is not None:
            on_step(t, traj.thetas[t + 1], dtheta)
    return traj.theta_T, p.layout.flatten(dtheta)


def identity_columns(P: int, cols: Iterable[int], device, dtype) -> torch.Tensor:
    """Tangent directions e_j for j in cols, as (K, P). With no scatter (on CUDA with
    deterministic algorithms an index_put waits for the host): a range (a chunk's columns) is
    a strided view of zeros filled with ones, entry (k, start + k step) at flat position
    start + k (P + step), made on the device itself; other columns a comparison with the
    positions (a list goes through host memory: a copy that synchronises with the GPU)."""
    if isinstance(cols, range) and cols.step > 0:
        e = torch.zeros(len(cols), P, device=device, dtype=dtype)
        e.view(-1)[cols.start::P + cols.step][:len(cols)].fill_(1)
        return e
    j = torch.as_tensor(list(cols), dtype=torch.long, device=device)
    return (j.unsqueeze(1) == torch.arange(P, device=device)).to(dtype)
