"""The train stage: theta_0 and theta_T (``theta0.npz``, ``thetaT.npz``), the metrics of every
step (``metrics.jsonl``, a ``train_step`` event each) and the last of them in the manifest;
with BatchNorm in training mode, its running statistics after the last step
(``buffersT.npz``, which evaluation normalizes by)."""

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

    buffers = p.initial_buffers()
    theta_T = train.train(p, ctx.theta0, on_step, ctx.should_stop, buffers)
    if buffers is not None:
        s.write_npz("buffersT.npz", {k: v.detach().cpu().numpy() for k, v in
                                     p.statistics.unflatten(buffers).items()}, stage="train")
    s.write_npz("thetaT.npz", b.named(theta_T), stage="train")
    last = s.metrics()[-1]
    s.record_file("metrics.jsonl", "train")  # (the report plots it: checked like the rest)
    s.update_manifest(final_metrics=last)
