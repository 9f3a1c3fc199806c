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
the order of :data:`MODULES`, so analyses resume like any stage. A long analysis also keeps a
:class:`Partial` checkpoint (``analyses/.NAME.partial.json``) so an interrupted stage picks up
where it stopped instead of starting over.

Helpers shared by the analyses live here: :func:`retrain` (training without the per-step
evaluation, bitwise equal to :func:`engine.train.train`), :func:`evaluate`, :func:`k_grid`,
:func:`progress` and :func:`run_on_session` (run analyses on a finished session outside the
runner: notebooks, benchmarks, tests).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

# analysis modules, in the order they run (each registers itself on import): cheap ones first
MODULES: tuple[str, ...] = ("distance", "init_change", "perturbation", "ood", "restricted",
                            "param_function")


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


# --------------------------------------------------------------------------------------------
# helpers shared by the analyses


def retrain(problem, theta0: torch.Tensor, should_stop: Callable[[], bool] | None = None
            ) -> torch.Tensor:
    """theta_T from ``theta0`` with the run's batches, schedule and optimizer, without the
    per-step evaluation of :func:`engine.train.train` (the same operations in the same order,
    so the result is bitwise equal to it)."""
    from ..train import steps

    theta = theta0
    for _, theta in steps(problem, theta0, should_stop):
        pass
    return theta


def evaluate(problem, theta: torch.Tensor, split: str = "test") -> dict:
    """{"loss", "acc"} of flat parameters on the train or test split."""
    x, y = (problem.x_test, problem.y_test) if split == "test" else \
        (problem.x_train, problem.y_train)
    loss, acc = problem.evaluate(theta, x, y)
    return {"loss": loss, "acc": acc}


def k_grid(k_min: int, k_max: int, n: int, P: int) -> list[int]:
    """``n`` subspace sizes from ``k_min`` to ``k_max`` (0 = P), evenly spaced, rounded to
    integers, clipped to [1, P], without repeats."""
    hi = P if k_max <= 0 else min(k_max, P)
    lo = max(1, min(k_min, hi))
    ks = np.unique(np.round(np.linspace(lo, hi, max(1, n))).astype(int))
    return [int(k) for k in ks]


def progress(ctx: "Context", name: str, done: int, total: int, **extra) -> None:
    ctx.emit("analysis_progress", name=name, done=int(done), total=int(total), **extra)


def check_stop(ctx: "Context") -> None:
    if ctx.should_stop():
        raise KeyboardInterrupt


def fingerprint(ctx: "Context", cfg: Any) -> str:
    """Identifies the inputs of an analysis: theta_T and the analysis config."""
    import dataclasses
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(ctx.thetaT.detach().cpu().numpy().tobytes())
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    return h.hexdigest()[:16]


class Partial:
    """Results of the finished units of an analysis, kept across an interruption.

    ``get(key)`` returns a stored unit (or None), ``put(key, value)`` stores one (JSON) and
    rewrites the file atomically, ``done()`` removes the file. A file from other inputs (another
    theta_T or config) is ignored."""

    def __init__(self, ctx: "Context", name: str, cfg: Any):
        self.session = ctx.session
        self.rel = f"analyses/.{name}.partial.json"
        self.fp = fingerprint(ctx, cfg)
        self.units: dict = {}
        if self.session.has(self.rel):
            try:
                stored = self.session.read_json(self.rel)
            except ValueError:
                stored = {}
            if stored.get("fingerprint") == self.fp:
                self.units = stored.get("units", {})

    def get(self, key: str):
        return self.units.get(key)

    def put(self, key: str, value) -> None:
        self.units[key] = value
        self.session.write_json(self.rel, {"fingerprint": self.fp, "units": self.units})

    def done(self) -> None:
        (self.session.path / self.rel).unlink(missing_ok=True)


def regions_of(S: np.ndarray, tau: float) -> dict[str, slice]:
    from .. import regions

    return regions.slices(S, tau)


def region_summary(values: np.ndarray, S: np.ndarray, tau: float, idx: np.ndarray | None = None,
                   log: bool = True) -> dict:
    """Per region (of the rule at ``tau``): count, median, geometric mean (``log``) or mean,
    min and max of ``values`` given at the indices ``idx`` (default: every index)."""
    from .. import regions

    values = np.asarray(values, dtype=np.float64)
    idx = np.arange(len(values)) if idx is None else np.asarray(idx)
    m = regions.masks(S, tau)
    out = {}
    for name in regions.REGIONS:
        v = values[m[name][idx]]
        v = v[np.isfinite(v)]
        if v.size == 0:
            out[name] = {"count": 0, "median": None, "center": None, "min": None, "max": None}
            continue
        if log:
            pos = v[v > 0]
            center = float(np.exp(np.mean(np.log(pos)))) if pos.size else 0.0
        else:
            center = float(v.mean())
        out[name] = {"count": int(v.size), "median": float(np.median(v)), "center": center,
                     "min": float(v.min()), "max": float(v.max())}
    return out


def run_on_session(path, names: list[str] | None = None, overrides: dict | None = None,
                   listeners: list | None = None) -> dict[str, dict]:
    """Run analyses on a finished session in this process (outside the stage machinery), with
    ``overrides`` {name: Config} replacing the session's own configs; results are written under
    ``analyses/`` as the runner would. Returns {name: result}."""
    from ..runner import Runner
    from ..session import Session

    registry = load_all()
    runner = Runner(Session(path), listeners)
    cfgs = dict(runner.cfg.analysis)
    cfgs.update(overrides or {})
    names = names or [n for n in MODULES if n in cfgs]
    runner.session.acquire()
    try:
        runner._setup()
        out = {}
        for name in names:
            runner.cfg.analysis[name] = cfgs.get(name) or registry[name].config_cls()
            runner.run_analysis(name)
            out[name] = runner.session.read_json(f"analyses/{name}.json")
    finally:
        runner.session.release()
    return out
