"""The public API: the exact training Jacobian of any ``nn.Module``, from a notebook or a script.

    import torch
    import engine

    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    X, y = torch.randn(64, 3), torch.randn(64, 1)
    J = engine.training_jacobian(model, (X, y), loss=torch.nn.functional.mse_loss,
                                 optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16)
    J.shape                      # (P, P) float64: J[i, j] = d theta_T[i] / d theta_0[j]

:func:`training_jacobian` trains a copy of the module by the pure, deterministic loop of
:mod:`engine.train` (the optimizers and schedules of :class:`engine.config.TrainConfig`) while
pushing the P basis directions of theta_0 through every step (forward-mode autodiff, the
generic torch.func path). The parameter order is ``torch.nn.utils.parameters_to_vector(
module.parameters())``'s: ``named_parameters()`` order, each tensor flattened row-major.

A run described by a preset (the built-in models and data, sessions on disk) goes through
:func:`engine.build.build` and :mod:`engine.runner` instead; this module re-exports the config
classes, whose constructors validate like the TOML loader.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Union

import numpy as np
import torch
from torch import nn

from . import schema
from .build import Built, build
from .config import (ConfigError, DataConfig, JacobianConfig, ModelConfig, RunConfig,
                     SpectrumConfig, TrainConfig, load, loads)
from .jacobian import auto_chunk, exact_jacobian
from .models import stateful_layer
from .train import (OPTIMIZER_KEYS, Loss, Update, UpdateFunction, batch_order,
                    generic_problem, initial_theta)

__all__ = ["training_jacobian", "build", "Built", "load", "loads", "ConfigError", "RunConfig",
           "DataConfig", "ModelConfig", "TrainConfig", "JacobianConfig", "SpectrumConfig"]

Batch = tuple[Any, Any]
Data = Union[Batch, Iterable[Batch], Callable[[], Iterable[Batch]]]

# TrainConfig's keys that only say how tensors (X, y) are cut into batches
BATCHING = ("batch_size", "shuffle", "drop_last")


def _pair(b: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(b, (tuple, list)) and len(b) == 2):
        raise ValueError(f"{where}: expected a pair (inputs, targets), got "
                         f"{type(b).__name__}")
    x, y = (torch.as_tensor(v) for v in b)
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise ValueError(f"{where}: inputs {tuple(x.shape)} and targets {tuple(y.shape)} do "
                         "not have the same number of rows")
    return x, y


def _is_pair_of_arrays(data: Any) -> bool:
    return (isinstance(data, tuple) and len(data) == 2 and
            all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data))


def read_batches(data: Data, epochs: int) -> tuple[torch.Tensor, torch.Tensor,
                                                   list[np.ndarray]]:
    """The steps' batches of an iterable source, read once: (x, y, order) with the distinct
    batches' rows concatenated (x (N, ...), y (N, ...)) and ``order[t]`` the rows of step t's
    batch. ``data`` is an iterable of (inputs, targets) pairs (a list, a DataLoader, a
    generator) or a callable returning one; each epoch is one pass over it (a callable is
    called once per epoch), so ``epochs`` > 1 needs a source that can be iterated again (a
    list, a DataLoader or a callable; a one-shot generator cannot). Reading every batch once
    and keeping it is what makes each chunk of J train the same trajectory (a DataLoader that
    reshuffles on every pass would give each chunk another one)."""
    if epochs > 1 and not callable(data) and iter(data) is data:
        raise ValueError(f"epochs = {epochs} needs batches that can be read again: a list, a "
                         "DataLoader or a function returning an iterator, not a one-shot "
                         "iterator")
    xs, ys, order, seen, n = [], [], [], {}, 0
    for epoch in range(epochs):
        count = 0
        for b in (data() if callable(data) else data):
            pair = isinstance(b, (tuple, list)) and len(b) == 2
            key = (id(b[0]), id(b[1])) if pair else id(b)
            if key not in seen:  # the same tensors in every epoch (a list): kept once
                x, y = _pair(b, f"batch {len(order)}")
                if xs and (x.shape[1:] != xs[0].shape[1:] or y.shape[1:] != ys[0].shape[1:]):
                    raise ValueError(
                        f"batch {len(order)}: inputs {tuple(x.shape)} and targets "
                        f"{tuple(y.shape)} after batches of {tuple(xs[0].shape)} and "
                        f"{tuple(ys[0].shape)}: every batch needs the same row shape")
                seen[key] = (b, np.arange(n, n + len(x)))
                xs.append(x)
                ys.append(y)
                n += len(x)
            order.append(seen[key][1])
            count += 1
        if count == 0:
            raise ValueError(f"the batches gave no batch in epoch {epoch + 1}"
                             + (": a one-shot iterator cannot be read again" if epoch else ""))
    return torch.cat(xs), torch.cat(ys), order


def check_module(module: nn.Module) -> None:
    """Refuse, in one line naming the layer, what the generic path cannot differentiate yet:
    a layer other than BatchNorm that updates buffers in its forward, and random layers in
    training mode other than ``nn.Dropout``, which torch.func reports as a long traceback about
    in-place mutation or randomness (:func:`engine.models.stateful_layer`)."""
    why = stateful_layer(module, allow_batchnorm=True, allow_dropout=True)
    if why is not None:
        raise ValueError(f"{why}, which training_jacobian does not support: call "
                         "module.eval() first (statistics held, no dropout) or leave the "
                         "layer out")


def training_jacobian(module: nn.Module, data: Data, *, loss: Loss | None = None,
                      train: TrainConfig | None = None, steps: int | None = None,
                      seed: int = 0, chunk: int | None = None,
                      dtype: torch.dtype = torch.float64,
                      device: str | torch.device | None = None, statistics: bool = False,
                      update: Update | None = None, init: Callable | None = None,
                      **options: Any) -> torch.Tensor:
    """The exact training Jacobian J = d theta_T / d theta_0 of training ``module``: a (P, P)
    tensor of ``dtype`` on ``device``, J[i, j] = d theta_T[i] / d theta_0[j], where theta is
    the flat parameter vector in ``torch.nn.utils.parameters_to_vector(module.parameters())``
    order (P = its length) and theta_0 the module's parameters now.

    ``data``: tensors ``(X, y)`` (X (N, ...), y (N,) class indices or (N, ...) regression
    targets; numpy arrays too), cut into batches by ``batch_size`` (0 = full batch),
    ``shuffle`` (from ``seed``) and ``drop_last`` for ``epochs`` passes, as a preset's run
    does; or an iterable of (inputs, targets) batches, one per step, or a callable returning
    one (see :func:`read_batches`: read once; epochs > 1 passes over it again). ``steps``: only
    the first ``steps`` optimizer steps (the schedule spans them).

    ``loss(output, target)``: the batch's scalar loss, a differentiable torch function
    (default ``torch.nn.functional.cross_entropy``; e.g. ``mse_loss`` for regression).
    ``options``: the optimizer and schedule, keywords of :class:`engine.config.TrainConfig`
    (optimizer "sgd" or "adam", lr, momentum, nesterov, weight_decay, beta1, beta2, eps,
    eps_root, schedule, warmup_steps, final_lr, batch_size, epochs, shuffle, drop_last),
    checked as a preset's [train] is (a :class:`ConfigError` with the same one-line message);
    or ``train``, a TrainConfig.

    ``update(theta, state, g, lr, t) -> (theta, state)`` with ``init(theta) -> state``: one's
    own optimizer in place of the built-in ones, over flat tensors (theta and the gradient g
    (P,), state a tuple of tensors shaped like theta, lr the schedule's rate of step t); pure
    torch functions, whose tangent is ``torch.func.jvp`` of ``update``
    (:class:`engine.train.UpdateFunction`). The schedule and batch keywords still apply; the
    built-in optimizers' (momentum, weight_decay, ...) are refused beside it (a ``train``
    TrainConfig's are not used).

    ``chunk``: tangent columns per pass (default: all P where the memory allows,
    :func:`engine.jacobian.auto_chunk`). ``device``: default that of the module's parameters.
    The caller's module is not changed (its dtype, parameters and buffers): a copy trains.
    BatchNorm in training mode normalizes each batch by its own statistics, as in training,
    and its running statistics (which never enter theta_T) follow PyTorch's update; in eval
    mode it normalizes by its running statistics, held fixed. ``statistics=True`` returns
    their rows too: a (P + B, P) tensor whose rows past P are d buffers_T / d theta_0 for the
    B running statistics of the BatchNorm layers in training mode that track them
    (``named_buffers()`` order: each layer's running_mean, then its running_var;
    :class:`engine.train.RunningStats`). ``nn.Dropout`` in training mode draws a mask per
    step from ``seed`` (:class:`engine.train.GenericKernel`); other random layers are refused
    (call ``.eval()`` on them first)."""
    if train is not None and options:
        raise TypeError("give the optimizer either as train=TrainConfig(...) or as keywords, "
                        "not both")
    check_module(module)
    optimizer = None
    if update is not None or init is not None:
        if update is None:
            raise TypeError("init= is the state of an update= function; give update too")
        mixed = [k for k in OPTIMIZER_KEYS if k in options]
        if mixed:
            raise TypeError(f"{mixed[0]} configures the built-in optimizers; update= is given "
                            "and replaces them")
        optimizer = UpdateFunction(update, init)
    # the keywords as a preset's [train] table: an unknown one is refused like an unknown key
    cfg = train if train is not None else schema.build(TrainConfig, dict(options), "",
                                                       TrainConfig.PREFIX)
    RunConfig(train=cfg)  # the preset's rules across keys (Adam's J needs eps_root > 0)
    if device is None:
        first = next(module.parameters(), None)
        device = first.device if first is not None else "cpu"
    dev = torch.device(device)
    if _is_pair_of_arrays(data):
        x, y = _pair(data, "data")
        order = batch_order(len(x), cfg, seed)
    else:
        given = [k for k in BATCHING if k in options]
        if given:
            raise ValueError(f"{given[0]} applies to tensors (X, y); an iterable of batches "
                             "gives its own")
        x, y, order = read_batches(data, cfg.epochs)
    if steps is not None:
        if not 1 <= steps <= len(order):
            raise ValueError(f"steps = {steps}: expected 1 to {len(order)} (the steps of "
                             f"{cfg.epochs} epoch(s) of these batches)")
        order = order[:steps]
    problem = generic_problem(module, x, y, cfg, dev, dtype, seed=seed, order=order, loss=loss,
                              optimizer=optimizer)
    theta0 = initial_theta(problem.module, dev, dtype)
    if chunk is None:
        chunk = auto_chunk(problem, theta0, dev, dtype)
    return exact_jacobian(problem, theta0, chunk, statistics=statistics)
