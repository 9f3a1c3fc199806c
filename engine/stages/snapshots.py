"""The snapshots stage: each snapshot's SVD and summary (``snapshots/step_NNNNNN/svd/``,
``spectrum.json``), what ``jacobian.snapshot_keep`` does not keep deleted, and
``snapshots/summary.json``: one row per step, the final J's included
(:func:`engine.spectrum.through_training`)."""

from __future__ import annotations

import time

from .. import jacobian as jac_mod, plan as plan_mod, spectrum
from . import RunContext
from .jacobian import snapshot_analysed
from .svd import compute, summary_of


def run(ctx: RunContext) -> None:
    """A snapshot analysed before (its summary intact) is skipped."""
    s, steps = ctx.session, ctx.plan.snapshots
    for i, t in enumerate(steps):
        d = plan_mod.snapshot_dir(t)
        if snapshot_analysed(s, d):
            drop_unkept(ctx, d)  # (a kill may have come between the summary and this)
            continue
        ctx.check_stop()
        ctx.emit("snapshot_start", step=t, index=i, total=len(steps))
        t0 = time.perf_counter()
        result = compute(ctx, f"{d}/jacobian.npy", f"{d}/svd", "snapshots")
        summary = summary_of(ctx, result)
        result.release()
        summary["step"] = t
        s.write_json(f"{d}/spectrum.json", summary, stage="snapshots")
        drop_unkept(ctx, d)
        ctx.emit("snapshot_done", step=t, index=i, total=len(steps),
                 s_max=summary["s_max"], seconds=round(time.perf_counter() - t0, 3),
                 counts={k: r["count"] for k, r in summary["regions"].items()})
    s.write_json("snapshots/summary.json", spectrum.through_training(
        [(t, s.read_json(f"{plan_mod.snapshot_dir(t)}/spectrum.json")) for t in steps]
        + [(ctx.problem.steps, s.read_json("spectrum.json"))], ctx.problem.lrs),
        stage="snapshots")


def drop_unkept(ctx: RunContext, d: str) -> None:
    """Delete (and unrecord) what ``jacobian.snapshot_keep`` does not keep of snapshot
    folder ``d``, once it is analysed."""
    gone = {"jacobian": [], "svd": ["jacobian.npy", jac_mod.JacobianStore.PROGRESS],
            "spectrum": ["jacobian.npy", jac_mod.JacobianStore.PROGRESS, "svd/U.npy",
                         "svd/Vh.npy"]}[ctx.cfg.jacobian.snapshot_keep]
    for name in gone:
        (ctx.session.path / d / name).unlink(missing_ok=True)
    if gone:
        ctx.session.forget(lambda rel: rel in {f"{d}/{n}" for n in gone})
