"""The stage of a registered analysis (``analysis.NAME``, :data:`engine.sections.ANALYSES`):
its module's ``run(ctx, cfg)`` on an :class:`engine.experiments.common.Context`, the result
written to ``analyses/NAME.json``."""

from __future__ import annotations

import importlib

from ..experiments.common import Context
from ..sections import ANALYSES
from . import RunContext


def run(ctx: RunContext, name: str | None = None, cfg=None) -> dict:
    """Run the analysis ``name`` (default: the one of the stage under way, ``ctx.stage``) with
    ``cfg`` (default: the run's ``[analysis.NAME]``); returns its result."""
    name = name or ctx.stage.removeprefix("analysis.")
    impl = importlib.import_module(ANALYSES[name].module)
    s = ctx.session
    ctx.install_buffersT()  # (an analysis before it may have evaluated another training's)
    actx = Context(session=s, problem=ctx.problem, theta0=ctx.theta0, thetaT=ctx.thetaT(),
                   data=ctx.built.data, emit=ctx.emit, should_stop=ctx.should_stop,
                   tol=ctx.cfg.spectrum.bulk_tol, stage=f"analysis.{name}")
    (s.path / "analyses").mkdir(exist_ok=True)
    result = impl.run(actx, ctx.cfg.analysis[name] if cfg is None else cfg)
    s.write_json(f"analyses/{name}.json", result, stage=f"analysis.{name}")
    return result
