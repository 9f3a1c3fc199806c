"""The train stage: theta_0 and theta_T (``theta0.npz``, ``thetaT.npz``), the metrics of every
step (``metrics.jsonl``, a ``train_step`` event each) and the last of them in the manifest."""

from __future__ import annotations

from .. import train
from . import RunContext


def run(ctx: RunContext) -> None:
    s, p, b = ctx.session, ctx.problem, ctx.built
    (s.path / "metrics.jsonl").unlink(missing_ok=True)
    s.write_npz("theta0.npz", b.named(ctx.theta0), stage="train")

    def on_step(m: dict) -> None:
        s.append_jsonl("metrics.jsonl", m)
        ctx.emit("train_step", steps=p.steps, **m)

    theta_T = train.train(p, ctx.theta0, on_step, ctx.should_stop)
    s.write_npz("thetaT.npz", b.named(theta_T), stage="train")
    last = s.metrics()[-1]
    s.record_file("metrics.jsonl", "train")  # (the report plots it: checked like the rest)
    s.update_manifest(final_metrics=last)
