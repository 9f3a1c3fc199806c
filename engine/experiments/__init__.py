"""The paper's analyses as plug-ins over a finished session.

Each analysis is a module here that registers itself with :func:`register`::

    @dataclass
    class Config:                      # its [analysis.NAME] preset section, validated strictly
        enabled: bool = _f(True, _boolean, "run this analysis")
        ...

    @register("name", Config, "Title for tables and the report")
    def run(ctx: Context, cfg: Config) -> dict:
        ...                            # save arrays with ctx.session.write_npy("analyses/name_x.npy", a)
        return {...}                   # stored as analyses/NAME.json

The runner runs every configured analysis as a stage ``analysis.NAME`` after the spectrum, in
the order of :data:`ORDER`, so analyses resume like any stage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

# analysis modules, in the order they run (each registers itself on import)
MODULES: tuple[str, ...] = ()


@dataclass
class Analysis:
    name: str
    config_cls: type
    run: Callable[["Context", Any], dict]
    title: str


REGISTRY: dict[str, Analysis] = {}


def register(name: str, config_cls: type, title: str):
    def deco(fn):
        REGISTRY[name] = Analysis(name, config_cls, fn, title)
        return fn
    return deco


def load_all() -> dict[str, Analysis]:
    for mod in MODULES:
        importlib.import_module(f"{__name__}.{mod}")
    return REGISTRY


@dataclass
class Context:
    """What an analysis gets: the session, the training problem (to retrain), theta_0 and
    theta_T as flat tensors on the run's device, and the SVD (float64 numpy, loaded lazily)."""

    session: Any  # engine.session.Session
    problem: Any  # engine.train.Problem
    theta0: torch.Tensor
    thetaT: torch.Tensor
    data: Any  # engine.data.Dataset
    emit: Callable[..., None]  # emit("analysis_progress", name=..., done=..., total=...)
    should_stop: Callable[[], bool]
    _cache: dict = field(default_factory=dict)

    def _svd(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self.session.load_npy(f"svd/{key}.npy").astype(np.float64)
        return self._cache[key]

    @property
    def S(self) -> np.ndarray:
        return self._svd("S")

    @property
    def U(self) -> np.ndarray:
        return self._svd("U")

    @property
    def Vh(self) -> np.ndarray:
        return self._svd("Vh")

    @property
    def spectrum(self) -> dict:
        return self.session.spectrum()
