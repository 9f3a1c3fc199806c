"""The stage bodies of a run (:mod:`engine.pipeline` declares them), and what each gets.

A body is a plain function of a :class:`RunContext`: the session, the built problem
(:func:`engine.build.build`), the event sink, the stop request, the rank of this process and the
number of ranks, and a cache the stages of one process share (the SVD's result, from the svd
stage to the spectrum stage). ``engine.stages.train``, ``jacobian``, ``svd`` (the svd and
spectrum stages), ``snapshots``, ``matfree`` and ``analysis`` hold them; the driver that runs
them is :class:`engine.runner.Runner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import pipeline
from ..build import Built
from ..session import Session


class Share:
    """The jacobian stage's hooks for splitting its chunks among processes; this one, a single
    process's, computes every chunk (:mod:`engine.distributed` has the ranks' own)."""

    def of(self, ctx: "RunContext", store, snapshots: dict) -> list[int] | None:
        """The chunks this process computes; None: every chunk J or a snapshot still lacks."""
        return None

    def after(self, ctx: "RunContext", store, snapshots: dict) -> None:
        """Once this process's chunks are done (the ranks': wait for the others)."""

    def done(self) -> None:
        """The run is over (the ranks': release those still waiting)."""


@dataclass
class RunContext:
    """What a stage body gets. ``device`` is the one the run computes on (``built.device``
    unless the driver says otherwise); ``stages``: the names of this run's stages, the scope
    of the table's rules; ``stage``: the one under way; ``cache``: results kept in this process between stages."""

    session: Session
    built: Built
    device: torch.device
    emit: Callable[..., None]
    should_stop: Callable[[], bool]
    stages: list[str]
    stage: str = ""  # the stage under way
    rank: int = 0
    world: int = 1
    share: Share = field(default_factory=Share)
    cache: dict = field(default_factory=dict)

    @property
    def cfg(self):
        return self.built.cfg

    @property
    def dtype(self) -> torch.dtype:
        return self.built.dtype

    @property
    def layout(self):
        return self.built.layout

    @property
    def problem(self):
        return self.built.problem

    @property
    def theta0(self) -> torch.Tensor:
        return self.built.theta0

    @property
    def plan(self):
        return self.built.plan

    def thetaT(self) -> torch.Tensor:
        """theta_T of thetaT.npz, flat (P,), in the run's dtype on the built device."""
        return self.built.flat(self.session.load_npz("thetaT.npz"))

    def install_buffersT(self) -> None:
        """Evaluate with the running statistics of the session's training (``buffersT.npz``;
        nothing without BatchNorm in training mode)."""
        st = self.problem.statistics
        if st is None:
            return
        arrays = self.session.load_npz("buffersT.npz")
        flat = torch.cat([torch.as_tensor(arrays[n]).reshape(-1) for n in st.names])
        self.problem.install_buffers(flat.to(self.theta0.device))

    def stale(self, which: Callable[[str], bool]) -> None:
        """The recorded files ``which`` names no longer hold (:func:`engine.pipeline.stale`)."""
        pipeline.stale(self.session, which, self.stages)

    def rerun_writer_of(self, rel: str) -> None:
        """The stage that recorded ``rel`` runs again (:func:`engine.pipeline.rerun_writer_of`)."""
        pipeline.rerun_writer_of(self.session, rel, self.stages)

    def check_stop(self) -> None:
        if self.should_stop():
            raise KeyboardInterrupt
