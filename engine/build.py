"""What a run computes with, built from its config in one place: device, data, model, problem.

:func:`build` is the one sequence ``config -> device -> data -> model -> plan -> problem ->
theta_0`` of the project: the runner, :func:`engine.probe.probe`, the ranks of
:mod:`engine.distributed`, the tests, the benchmarks and notebooks all call it, so that every one
of them trains the same problem from the same random draws (the model's initialisation from
``cfg.seed``, then the batch order from ``cfg.seed``). It writes nothing.

    from engine import config
    from engine.build import build

    b = build(config.load("presets/quick.toml"))
    b.problem, b.theta0          # the training problem and theta_0 (P,) on b.device
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data as data_mod, device as device_mod, models, plan as plan_mod, train
from .config import RunConfig


@dataclass
class Built:
    """A config built on a device. ``dtype``: the run's (float32 or float64); ``numerics``: the
    settings :func:`engine.device.configure` put in effect; ``layout``: the flat order of the
    parameters (P = ``layout.size``); ``plan``: the run's sizes (:func:`engine.plan.make_plan`);
    ``theta0``: the initial parameters, flat (P,), in ``dtype`` on ``device``."""

    cfg: RunConfig
    device: torch.device
    dtype: torch.dtype
    numerics: dict
    data: data_mod.Dataset
    module: nn.Module
    layout: models.Layout
    plan: plan_mod.Plan
    problem: train.Problem
    theta0: torch.Tensor

    @property
    def P(self) -> int:
        return self.layout.size

    def flat(self, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        """Named parameter arrays (a session's ``theta0.npz`` / ``thetaT.npz``) as one flat
        (P,) tensor in the run's dtype on its device."""
        return self.layout.flatten([torch.from_numpy(arrays[n]) for n in self.layout.names]
                                   ).to(self.device, self.dtype)

    def named(self, theta: torch.Tensor) -> dict[str, np.ndarray]:
        """A flat (P,) tensor as the named arrays a session stores (the inverse of
        :meth:`flat`)."""
        return self.layout.to_npz_dict(self.layout.unflatten(theta))


def run_dtype(cfg: RunConfig) -> torch.dtype:
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def build(cfg: RunConfig, device: str | torch.device | None = None,
          init: str | Path | None = None) -> Built:
    """Build ``cfg`` on ``device`` (default ``cfg.device``; "auto" resolves here): set torch's
    threads (``cfg.threads``, else one per available CPU: :func:`engine.device.run_threads`) and the numerics (:func:`engine.device.configure`), load the
    data, build the model (``cfg.seed``), make the plan, set the parameters from ``init`` (a
    ``theta0.npz`` path: a session's stored initialisation) when given, make the training
    problem (``cfg.jacobian.kernel``) and theta_0. Raises ValueError when theta_0 is not
    finite, and what the parts raise (a DeviceError for a device that is not here, a
    ConfigError or ValueError for data or a model that cannot be read)."""
    torch.set_num_threads(device_mod.run_threads(cfg.threads))
    dev = device_mod.resolve(str(device) if device else cfg.device)
    numerics = device_mod.configure(dev, cfg.tf32)
    dtype = run_dtype(cfg)
    ds = data_mod.load(cfg.data)
    module = models.build(cfg.model, ds.n_features, ds.n_classes, cfg.seed, ds.image_shape)
    layout = models.Layout.of(module)
    plan = plan_mod.make_plan(cfg, ds, layout.size)
    if init is not None:
        models.load_init(module, Path(init))
    problem = train.make_problem(module, ds, cfg.train, cfg.seed, dev, dtype,
                                 cfg.jacobian.kernel)
    theta0 = train.initial_theta(module, dev, dtype)
    if dev.type != "meta" and not bool(torch.isfinite(theta0).all()):  # (meta: no values)
        raise ValueError("the initial parameters are not finite (model.init or model.build)")
    return Built(cfg=cfg, device=dev, dtype=dtype, numerics=numerics, data=ds, module=module,
                 layout=layout, plan=plan, problem=problem, theta0=theta0)
