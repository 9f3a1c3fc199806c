"""What every analysis gets and the helpers they share.

:class:`Context` carries the session, the training problem, theta_0 and theta_T, the data, the
region tolerance and the event emitter; :func:`retrain` (training without the per-step
evaluation, bitwise equal to :func:`engine.train.train`), :func:`evaluate`, :func:`k_grid`,
:func:`progress`, :func:`check_stop`, :class:`Partial` (finished units kept across an
interruption) and :func:`region_summary` serve the analyses in ``engine/experiments/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .. import regions
from ..data import Dataset
from ..session import Session
from ..train import Problem, steps


@dataclass
class Context:
    """What an analysis gets: the session, the training problem (to retrain), theta_0 and
    theta_T as flat tensors on the run's device, the SVD (float64 numpy, loaded lazily) and the
    region tolerance every analysis uses."""

    session: Session
    problem: Problem
    theta0: torch.Tensor
    thetaT: torch.Tensor
    data: Dataset
    emit: Callable[..., None]  # emit(kind, **fields): an event of engine.events
    should_stop: Callable[[], bool]
    tol: float = regions.DEFAULT_TOL  # the region rule's tolerance (spectrum.bulk_tol)
    stage: str | None = None  # "analysis.NAME": the files written are recorded under it
    cache: dict = field(default_factory=dict)

    def write_npy(self, rel: str, arr: np.ndarray) -> None:
        """Save an array of the analysis (recorded in the manifest, checked on resume)."""
        self.session.write_npy(rel, arr, stage=self.stage)

    def svd_array(self, key: str) -> np.ndarray:
        if key not in self.cache:
            self.cache[key] = self.session.load_npy(f"svd/{key}.npy").astype(np.float64)
        return self.cache[key]

    @property
    def S(self) -> np.ndarray:
        return self.svd_array("S")

    @property
    def U(self) -> np.ndarray:
        return self.svd_array("U")

    @property
    def Vh(self) -> np.ndarray:
        return self.svd_array("Vh")

    @property
    def spectrum(self) -> dict:
        return self.session.spectrum()


# --------------------------------------------------------------------------------------------
# helpers shared by the analyses


def retrain(problem: Problem, theta0: torch.Tensor,
            should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """theta_T from ``theta0`` with the run's batches, schedule and optimizer, without the
    per-step evaluation of :func:`engine.train.train` (the same operations in the same order,
    so the result is bitwise equal to it). With running statistics (BatchNorm), evaluation
    uses those of this training from then on."""
    theta = theta0
    buffers = problem.initial_buffers()
    for _, theta in steps(problem, theta0, should_stop, buffers):
        pass
    problem.install_buffers(buffers)
    return theta


def evaluate(problem, theta: torch.Tensor, split: str = "test") -> dict:
    """{"loss", "acc"} of flat parameters on the train or test split."""
    x, y = (problem.x_test, problem.y_test) if split == "test" else \
        (problem.x_train, problem.y_train)
    loss, acc = problem.evaluate(theta, x, y)
    return {"loss": loss, "acc": acc}


def progress(ctx: "Context", name: str, done: int, total: int, unit: str | None = None) -> None:
    """``done`` of the analysis's ``total`` units (``unit``: what one is) are finished: an
    analysis_progress event (engine.events.AnalysisProgress), also with ``done = 0`` at the
    start."""
    ctx.emit("analysis_progress", name=name, done=int(done), total=int(total), unit=unit)


def check_stop(ctx: "Context") -> None:
    if ctx.should_stop():
        raise KeyboardInterrupt


def fingerprint(ctx: "Context", cfg: Any) -> str:
    """Identifies the inputs of an analysis: theta_T, the region tolerance and the analysis
    config."""
    h = hashlib.sha256()
    h.update(ctx.thetaT.detach().cpu().numpy().tobytes())
    h.update(json.dumps({"tol": ctx.tol, "cfg": dataclasses.asdict(cfg)},
                        sort_keys=True).encode())
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


def region_summary(values: np.ndarray, S: np.ndarray, tol: float,
                   idx: np.ndarray | None = None, log: bool = True) -> dict:
    """Per region (of the rule at ``tol``): count, median, geometric mean (``log``) or mean,
    min and max of ``values`` given at the indices ``idx`` (default: every index)."""
    values = np.asarray(values, dtype=np.float64)
    idx = np.arange(len(values)) if idx is None else np.asarray(idx)
    m = regions.masks(S, tol)
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
