"""``--log``: a run's metrics sent to TensorBoard, MLflow and Weights & Biases as it goes, each
checked with the real package (read back from what it wrote) against the session's own files;
a tracker that does not exist or is not installed is one line before anything is created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.session import Session
from tjac_tui.cli import main

QUICK = ["run", "quick", "-q"]


def finished(root: Path) -> Session:
    (path,) = [p for p in root.iterdir() if (p / "manifest.json").is_file()]
    s = Session(path)
    assert s.manifest()["status"] == "done"
    return s


def expected_train(s: Session) -> dict[str, dict[int, float]]:
    """The tracker's training series, from metrics.jsonl: {metric: {step: value}}."""
    out: dict[str, dict[int, float]] = {}
    for m in s.metrics():
        for key, field in (("train/loss", "train_loss"), ("test/loss", "test_loss"),
                           ("test/accuracy", "test_acc")):
            out.setdefault(key, {})[m["step"]] = m[field]
    return out


def test_a_tracker_that_is_unknown_or_missing_is_one_line_before_a_session(tmp_path, capsys,
                                                                          monkeypatch):
    import importlib.util

    sessions = tmp_path / "s"
    assert main(QUICK + ["--sessions", str(sessions), "--log", "neptune"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("--log neptune: no such tracker; choose tensorboard, mlflow, wandb (KIND or "
                   "KIND=WHERE)")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main(QUICK + ["--sessions", str(sessions), "--log", "mlflow"]) == 2
    assert capsys.readouterr().err.strip() == ("--log mlflow: the mlflow package is not "
                                               "installed (pip install mlflow)")
    assert main(QUICK + ["--sessions", str(sessions), "--log", "tensorboard", "--detach"]) == 2
    assert "--detach runs it in a worker" in capsys.readouterr().err
    assert not sessions.exists()  # nothing created


def test_tensorboard_gets_the_losses_the_rate_and_the_spectrum(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    assert main(QUICK + ["--sessions", str(tmp_path / "s"), "--log",
                         f"tensorboard={logdir}"]) == 0
    s = finished(tmp_path / "s")
    acc = EventAccumulator(str(logdir))
    acc.Reload()

    def series(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in acc.Scalars(tag)}

    for key, want in expected_train(s).items():
        assert series(key) == pytest.approx(want, rel=1e-6), key  # (TensorBoard keeps float32)
    P = s.manifest()["P"]
    done = series("jacobian/columns_done")
    assert max(done) == P and done[P] == P
    assert all(v > 0 for v in series("jacobian/columns_per_s").values())
    summary = s.spectrum()
    steps = s.manifest()["steps"]
    assert series("spectrum/s_max") == {steps: pytest.approx(summary["s_max"], rel=1e-6)}
    for name, r in summary["regions"].items():
        assert series(f"regions/{name}/count") == {steps: r["count"]}
    stages = s.manifest()["stages"]
    assert series("time/jacobian")[steps] == pytest.approx(stages["jacobian"]["seconds"],
                                                           rel=1e-3, abs=1e-3)
    (text,) = acc.Tensors("config/text_summary")  # the config, as TOML
    assert f"lr = {s.config().train.lr}" in text.tensor_proto.string_val[0].decode()


def test_mlflow_gets_a_run_with_the_config_and_the_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # (mlflow 3 refuses a new file store)
    assert main(QUICK + ["--sessions", str(tmp_path / "s"), "--log", f"mlflow={uri}"]) == 0
    s = finished(tmp_path / "s")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == s.path.name and run.info.status == "FINISHED"
    assert run.data.tags["tjac.session"] == str(s.path)
    cfg = s.config()
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    assert run.data.params["model.hidden.0"] == str(cfg.model.hidden[0])
    for key, want in expected_train(s).items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got == pytest.approx(want), key
    assert run.data.metrics["spectrum/s_max"] == pytest.approx(s.spectrum()["s_max"])
    assert run.data.metrics["regions/bulk/count"] == s.spectrum()["regions"]["bulk"]["count"]


def test_wandb_offline_gets_the_config_and_every_figure_on_its_axis(tmp_path, monkeypatch):
    """A real offline W&B run (its record file written, nothing sent anywhere); what reaches
    ``Run.log`` is read on the way (the offline file's format is wandb's internal one)."""
    import wandb.sdk.wandb_run as wandb_run

    logged, finished_with, configs = [], [], []
    real_log, real_finish = wandb_run.Run.log, wandb_run.Run.finish

    def log(self, data, *a, **k):
        logged.append(dict(data))
        return real_log(self, data, *a, **k)

    def finish(self, *a, **k):
        finished_with.append(k.get("exit_code"))
        configs.append(dict(self.config))
        return real_finish(self, *a, **k)

    monkeypatch.setattr(wandb_run.Run, "log", log)
    monkeypatch.setattr(wandb_run.Run, "finish", finish)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(QUICK + ["--sessions", str(tmp_path / "s"), "--log", "wandb=tjac-test"]) == 0
    s = finished(tmp_path / "s")
    (record,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert record.stat().st_size > 0 and finished_with == [0]
    assert configs[0]["train.lr"] == s.config().train.lr
    train = {d["train/step"]: d["train/loss"] for d in logged if "train/loss" in d}
    assert train == pytest.approx(expected_train(s)["train/loss"])
    cols = [d["jacobian/columns"] for d in logged if "jacobian/columns_done" in d]
    assert cols == sorted(cols) and cols[-1] == s.manifest()["P"]  # each axis increases
    (end,) = [d for d in logged if "spectrum/s_max" in d]
    assert end["spectrum/s_max"] == pytest.approx(s.spectrum()["s_max"])
    assert end["train/step"] == s.manifest()["steps"]


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_run_finishes(tmp_path, capsys,
                                                                      monkeypatch):
    """A tracker server gone (here: TensorBoard's writer refusing after its first figures)
    warns once and the run goes on to the end: its figures are all in the session anyway."""
    from engine import trackers

    sent = []

    def flaky(self, values, step, axis):
        if sent:
            raise OSError(28, "No space left on device")
        sent.append(values)

    monkeypatch.setattr(trackers.TensorBoard, "scalars", flaky)
    assert main(QUICK + ["--sessions", str(tmp_path / "s"), "--log",
                         f"tensorboard={tmp_path / 'tb'}"]) == 0
    finished(tmp_path / "s")
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "--log tensorboard" in ln]
    assert warnings == ["warning: --log tensorboard: OSError: [Errno 28] No space left on "
                        "device; no more metrics go to it (the session keeps them all)"]
    assert len(sent) == 1
