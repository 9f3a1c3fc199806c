"""Experiment trackers: a run's figures sent to TensorBoard, MLflow or Weights & Biases as it goes.

``tjac run PRESET --log tensorboard`` (and ``resume``) adds a listener of the runner's events
(:mod:`engine.events`) that writes, as they come:

===========================  ==============================  ===============================
metric                       when                            its step
===========================  ==============================  ===============================
train/loss, train/accuracy,  each evaluated training step    the optimizer steps taken
test/loss, test/accuracy,    (``train.eval_every``)
train/lr
jacobian/columns_per_s,      each chunk of J written         J's columns done
jacobian/columns_done
time/<stage>                 each stage's end (seconds)      the training's steps
spectrum/s_max, s_min,       the end of a finished run that  the training's steps
regions/<r>/count,           has a spectrum (``<r>``:
regions/<r>/fraction,        chaotic, bulk, stable)
regions/bulk/uv_mean
===========================  ==============================  ===============================

and the run's config as its parameters (flattened keys, ``train.lr``...). ``--log`` takes
``tensorboard[=DIR]`` (default ``runs/<session name>``, TensorBoard's own convention),
``mlflow[=TRACKING_URI]`` (default: ``MLFLOW_TRACKING_URI``, else mlflow's own default) or
``wandb[=PROJECT]`` (default ``tjac``; ``WANDB_MODE=offline`` works as usual); it may be given
more than once. Each package is optional: it is imported only when chosen, and a missing one is
a one-line error before the session is created (:func:`check`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import events as ev_mod
from .files import one_reason
from .results import flatten
from .session import Session

KINDS = ("tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}  # kind -> (module to import, pip name)


class TrackerError(ValueError):
    """An unknown tracker, or its package missing; ``str()`` is the one-line message."""


def parse(spec: str) -> tuple[str, str | None]:
    """``"tensorboard=runs/x"`` -> ("tensorboard", "runs/x"); raises :class:`TrackerError`
    for a kind that is not one of :data:`KINDS`."""
    kind, _, arg = spec.partition("=")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise TrackerError(f"--log {spec}: no such tracker; choose {', '.join(KINDS)} "
                           "(KIND or KIND=WHERE)")
    return kind, (arg.strip() or None)


def check(specs: list[str]) -> list[tuple[str, str | None]]:
    """Every ``--log`` parsed and its package importable (found, not imported); raises
    :class:`TrackerError` naming the first that is not, with its pip command."""
    import importlib.util

    out = [parse(s) for s in specs]
    for kind, _ in out:
        module, pip = PACKAGES[kind]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(f"--log {kind}: the {module} package is not installed "
                               f"(pip install {pip})")
    return out


def open_trackers(specs: list[str], session: Session) -> list["Tracker"]:
    """A tracker a ``--log`` for the run of ``session`` (its config as the parameters)."""
    made: list[Tracker] = []
    try:
        for kind, where in check(specs):
            try:
                made.append({"tensorboard": TensorBoard, "mlflow": MLflow,
                             "wandb": WandB}[kind](session, where))
            except Exception as e:  # noqa: BLE001 - the package's own failure, in one line
                raise TrackerError(f"--log {kind}: {type(e).__name__}: {one_reason(e)}"
                                   ) from None
    except BaseException:
        for t in made:
            t.close("failed")
        raise
    return made


class Tracker:
    """A listener of a run's events (call it with each record) that sends the metrics of the
    module's table to a backend; :meth:`close` at the end (the run's status)."""

    kind = ""

    def __init__(self, session: Session):
        self.session = session
        self.steps = 0  # the training's steps (the step of the stage times and the spectrum)
        self.status: str | None = None
        self.broken = False

    # the backend's part
    def scalars(self, values: dict[str, float], step: int, axis: str) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The config's keys, flattened (``train.lr``: 0.1), lists as their text."""
        from .config import to_dict

        flat = flatten(to_dict(self.session.config()))
        return {k: v for k, v in flat.items() if v is not None}

    def __call__(self, rec: dict) -> None:
        """Send what ``rec`` carries; a tracker that fails (a server gone, a full disk) is
        dropped with one warning on stderr, and the run goes on."""
        if self.broken:
            return
        try:
            self._send(ev_mod.as_event(rec))
        except Exception as e:  # noqa: BLE001 - never the run's failure
            self.broken = True
            import sys

            print(f"warning: --log {self.kind}: {type(e).__name__}: {one_reason(e)}; no more "
                  "metrics go to it (the session keeps them all)", file=sys.stderr)

    def _send(self, ev: ev_mod.Event) -> None:
        match ev:
            case ev_mod.TrainStep():
                self.steps = ev.steps
                values = {"train/loss": ev.train_loss, "train/accuracy": ev.train_acc,
                          "test/loss": ev.test_loss, "test/accuracy": ev.test_acc}
                if ev.lr is not None:
                    values["train/lr"] = ev.lr
                self.scalars(values, ev.step, "train")
            case ev_mod.JacobianChunk():
                values = {"jacobian/columns_done": float(ev.done)}
                if ev.rate:
                    values["jacobian/columns_per_s"] = ev.rate
                self.scalars(values, ev.done, "jacobian")
            case ev_mod.StageEnd():
                self.scalars({f"time/{ev.stage}": ev.seconds}, self.steps, "end")
            case ev_mod.RunEnd():
                self.status = ev.status
                if ev.status == "done":
                    summary = self.session.spectrum()
                    if summary is not None:
                        self.scalars(spectrum_scalars(summary), self.steps, "end")

    def close(self, status: str | None = None) -> None:
        try:
            self.finish(status or self.status or "interrupted")
        except Exception:  # noqa: BLE001 - said once already, or the backend's own end
            if not self.broken:
                raise


def spectrum_scalars(summary: dict) -> dict[str, float]:
    """The figures of a ``spectrum.json`` summary a tracker logs at the end of a run."""
    out = {"spectrum/s_max": float(summary["s_max"]), "spectrum/s_min": float(summary["s_min"])}
    for name, r in summary["regions"].items():
        out[f"regions/{name}/count"] = float(r["count"])
        out[f"regions/{name}/fraction"] = float(r["count"]) / float(summary["P"])
    bulk = summary["regions"].get("bulk") or {}
    if bulk.get("align_mean") is not None:
        out["regions/bulk/uv_mean"] = float(bulk["align_mean"])
    return out


class TensorBoard(Tracker):
    """``torch.utils.tensorboard.SummaryWriter`` into ``where`` (default
    ``runs/<session name>``); the config as a text summary (TOML)."""

    kind = "tensorboard"

    def __init__(self, session: Session, where: str | None):
        super().__init__(session)
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(where) if where else Path("runs") / session.path.name
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        toml = (session.path / "config.toml").read_text(encoding="utf-8")
        self.writer.add_text("config", "```toml\n" + toml + "\n```", 0)

    def scalars(self, values: dict[str, float], step: int, axis: str) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status, self.steps)
        self.writer.close()


class MLflow(Tracker):
    """An MLflow run named after the session (its path as the tag ``tjac.session``), at
    ``where`` (a tracking URI) or mlflow's default; the config as its parameters."""

    kind = "mlflow"

    def __init__(self, session: Session, where: str | None):
        super().__init__(session)
        import mlflow

        self.mlflow = mlflow
        if where:
            mlflow.set_tracking_uri(where)
        self.run = mlflow.start_run(run_name=session.path.name,
                                    tags={"tjac.session": str(session.path)})
        mlflow.log_params({k: str(v)[:500] for k, v in self.params().items()})

    def scalars(self, values: dict[str, float], step: int, axis: str) -> None:
        self.mlflow.log_metrics(values, step=step)

    def finish(self, status: str) -> None:
        self.mlflow.end_run(status={"done": "FINISHED", "interrupted": "KILLED"}.get(
            status, "FAILED"))


class WandB(Tracker):
    """A Weights & Biases run in project ``where`` (default ``tjac``), named after the session;
    each group of metrics on its own step axis (``train/step``, ``jacobian/columns``), as W&B
    wants one increasing step per axis."""

    kind = "wandb"

    AXES = {"train": "train/step", "jacobian": "jacobian/columns", "end": "train/step"}

    def __init__(self, session: Session, where: str | None):
        super().__init__(session)
        import wandb

        self.run = wandb.init(project=where or os.environ.get("WANDB_PROJECT") or "tjac",
                              name=session.path.name, config=self.params(),
                              dir=os.environ.get("WANDB_DIR") or None, reinit=True)
        for axis in ("train/step", "jacobian/columns"):
            self.run.define_metric(axis)
        for pattern, axis in (("train/*", "train/step"), ("test/*", "train/step"),
                              ("time/*", "train/step"), ("spectrum/*", "train/step"),
                              ("regions/*", "train/step"), ("jacobian/*", "jacobian/columns")):
            self.run.define_metric(pattern, step_metric=axis)

    def scalars(self, values: dict[str, float], step: int, axis: str) -> None:
        self.run.log({**values, self.AXES[axis]: step})

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "done" else 1)
