"""Run orchestration: the stages of one run, the event stream, and the worker process.

A run is the stages ``train -> jacobian -> svd -> spectrum``. Each records its result in the
session directory as it finishes, so :func:`run_session` on a half-finished session skips what
is done and resumes the rest (the Jacobian at its first unfinished chunk).

Progress goes to ``events.jsonl`` (one JSON object per line, each with ``event`` and ``time``)
and to in-process listeners; the TUI tails the file, ``tjac run`` listens in-process. Events:

* ``run_start`` {session, device, dtype, threads, P}       * ``run_end`` {status, seconds}
* ``stage_start`` / ``stage_end`` {stage, seconds}         * ``stage_skip`` {stage}
* ``train_step`` {step, steps, lr, train_loss, train_acc, test_loss, test_acc}
* ``jacobian_start`` {total, chunk, chunks, done}
* ``jacobian_chunk`` {chunk, done, total, rate, eta, primal_dev; on CUDA gpu_mem,
  gpu_mem_peak: bytes allocated by the worker's torch.cuda caching allocator}
* ``interrupted`` {stage}    * ``error`` {stage, message}

``python -m engine.runner SESSION`` is the worker: it runs in its own process session, ignores
SIGHUP, and answers SIGTERM / SIGINT by finishing the current chunk, saving, and marking the
stage interrupted.
"""

from __future__ import annotations

import importlib
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__, data as data_mod, jacobian as jac_mod, models, spectrum, train
from .config import ConfigError
from .experiments.common import Context
from .sections import ANALYSES
from .session import Session, now_iso

STAGES = ("train", "jacobian", "svd", "spectrum")
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3

Listener = Callable[[dict], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device = \"{name}\" but CUDA is not available on this machine")
    return dev


def environment(device: torch.device) -> dict:
    import scipy

    env = {"tjac": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "scipy": scipy.__version__, "host": platform.node(),
           "platform": platform.platform(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def failure_reason(e: BaseException) -> str:
    """The one line a user sees for a failure: the message alone for the errors tjac raises
    itself (invalid config, diverged training, unreadable data or model), else the exception's
    type and message."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (ConfigError, train.TrainingDiverged, ValueError)) and msg:
        return msg
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return f"{e.__class__.__name__}: {msg}" if msg else e.__class__.__name__


class Runner:
    """Runs (or resumes) one session's stages, emitting events. Nothing is read until
    :meth:`run` (or :meth:`setup`), so every failure, a broken ``config.toml`` included, is
    caught there and recorded in the session."""

    def __init__(self, session: Session, listeners: list[Listener] | None = None,
                 device: str | None = None):
        self.session = session
        self.listeners = list(listeners or [])
        self.device_override = device
        self.cfg = None
        self.stop_requested = False

    # ---- events ----------------------------------------------------------------------------
    def emit(self, event: str, **fields) -> None:
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        self.session.append_jsonl("events.jsonl", rec)
        for fn in self.listeners:
            fn(rec)

    def should_stop(self) -> bool:
        return self.stop_requested

    # ---- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Read the config, pick the device and build the data, model and training problem."""
        self.cfg = cfg = self.session.config()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(self.device_override or cfg.device)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.data = data_mod.load(cfg.data)
        self.module = models.build(cfg.model, self.data.n_features, self.data.n_classes,
                                   cfg.seed)
        self.layout = models.Layout.of(self.module)
        if self.session.has("theta0.npz"):  # resume: the stored init is the truth
            models.load_init(self.module, self.session.path / "theta0.npz")
        self.problem = train.make_problem(self.module, self.data, cfg.train, cfg.seed,
                                          self.device, self.dtype, cfg.jacobian.kernel)
        self.theta0 = train.initial_theta(self.module, self.device, self.dtype)
        m = self.session.manifest()
        if "P" not in m:
            self.session.update_manifest(
                P=self.layout.size, layout=self.layout.to_json(), device=str(self.device),
                dtype=cfg.dtype, environment=environment(self.device),
                data={"name": self.data.name, "n_train": len(self.data.x_train),
                      "n_test": len(self.data.x_test), "n_features": self.data.n_features,
                      "n_classes": self.data.n_classes},
                steps=self.problem.steps)
        elif m.get("device") != str(self.device):
            self.emit("warning", message=f"resuming on {self.device}; the session started on "
                                         f"{m.get('device')}: results may differ in the last bits")

    # ---- stages ----------------------------------------------------------------------------
    def stage_train(self) -> None:
        s, p = self.session, self.problem
        (s.path / "metrics.jsonl").unlink(missing_ok=True)
        (s.path / "jacobian.progress.json").unlink(missing_ok=True)  # J of a new theta_T
        s.write_npz("theta0.npz", self.layout.to_npz_dict(self.layout.unflatten(self.theta0)))

        def on_step(m: dict) -> None:
            s.append_jsonl("metrics.jsonl", m)
            self.emit("train_step", steps=p.steps, **m)

        theta_T = train.train(p, self.theta0, on_step, self.should_stop)
        s.write_npz("thetaT.npz", self.layout.to_npz_dict(self.layout.unflatten(theta_T)))
        last = s.metrics()[-1]
        s.update_manifest(final_metrics=last)

    def stage_jacobian(self) -> None:
        s, P = self.session, self.layout.size
        info = s.manifest().get("stages", {}).get("jacobian", {})
        chunk = info.get("chunk") or self.cfg.jacobian.chunk or jac_mod.auto_chunk(
            self.problem, self.device, self.dtype)
        s.set_stage("jacobian", chunk=chunk)
        store = jac_mod.JacobianStore(s.path, P, chunk, np.dtype(self.cfg.dtype))
        arrays = s.load_npz("thetaT.npz")
        thetaT = self.layout.flatten([torch.from_numpy(arrays[n]) for n in self.layout.names]
                                     ).to(self.device, self.dtype)
        self.emit("jacobian_start", total=P, chunk=chunk, chunks=len(store.ranges),
                  done=store.columns_done)
        t0, done0 = time.perf_counter(), store.columns_done
        worst = [float(info.get("primal_dev", 0.0))]

        def on_chunk(index: int, cols: range, theta_T: torch.Tensor) -> None:
            dev = float((theta_T - thetaT).abs().max())
            worst[0] = max(worst[0], dev)
            done = store.columns_done
            rate = (done - done0) / max(time.perf_counter() - t0, 1e-9)
            mem = {}
            if self.device.type == "cuda":  # the TUI is another process: report it here
                mem = {"gpu_mem": torch.cuda.memory_allocated(self.device),
                       "gpu_mem_peak": torch.cuda.max_memory_allocated(self.device)}
            self.emit("jacobian_chunk", chunk=index, done=done, total=P, rate=round(rate, 3),
                      eta=round((P - done) / rate, 1) if rate > 0 else None, primal_dev=dev,
                      **mem)

        try:
            jac_mod.compute_into(store, self.problem, self.theta0, on_chunk, self.should_stop)
        finally:
            store.close()
            s.set_stage("jacobian", primal_dev=worst[0], columns_done=store.columns_done)
        s.record_checksum("jacobian.npy")

    def stage_svd(self) -> None:
        s = self.session
        J = s.load_npy("jacobian.npy", mmap=True)
        U, S, Vh = spectrum.svd(J, self.device)
        keep = np.float64 if self.cfg.dtype == "float64" else np.float32
        s.write_npy("svd/S.npy", S)
        s.write_npy("svd/U.npy", U.astype(keep, copy=False))
        s.write_npy("svd/Vh.npy", Vh.astype(keep, copy=False))
        s.write_npy("svd/alignment.npy", spectrum.alignment(U, Vh))
        self._svd = (U, S, Vh)

    def stage_spectrum(self) -> None:
        s = self.session
        U, S, Vh = getattr(self, "_svd", None) or (
            s.load_npy("svd/U.npy").astype(np.float64), s.load_npy("svd/S.npy"),
            s.load_npy("svd/Vh.npy").astype(np.float64))
        summary = spectrum.summarize(S, U, Vh, self.cfg.spectrum.bulk_tol)
        s.write_json("spectrum.json", summary)
        s.record_checksum("spectrum.json")

    def run_analysis(self, name: str) -> None:
        impl = importlib.import_module(ANALYSES[name].module)
        s = self.session
        arrays = s.load_npz("thetaT.npz")
        thetaT = self.layout.flatten([torch.from_numpy(arrays[n]) for n in self.layout.names]
                                     ).to(self.device, self.dtype)
        ctx = Context(session=s, problem=self.problem, theta0=self.theta0, thetaT=thetaT,
                      data=self.data, emit=self.emit, should_stop=self.should_stop,
                      tol=self.cfg.spectrum.bulk_tol)
        (s.path / "analyses").mkdir(exist_ok=True)
        result = impl.run(ctx, self.cfg.analysis[name])
        s.write_json(f"analyses/{name}.json", result)
        s.record_checksum(f"analyses/{name}.json")

    # ---- driver ----------------------------------------------------------------------------
    def stages(self) -> list[str]:
        if not self.cfg.jacobian.enabled:
            return ["train"]
        if not self.cfg.jacobian.svd:
            return ["train", "jacobian"]
        return list(STAGES) + [f"analysis.{n}" for n in ANALYSES
                               if n in self.cfg.analysis and self.cfg.analysis[n].enabled]

    def run(self) -> int:
        s = self.session
        s.acquire()
        t_run = time.perf_counter()
        stage = "setup"
        try:
            s.update_manifest(status="running", pid=os.getpid(), error=None,
                              started=s.manifest().get("started") or now_iso())
            self.setup()
            self.emit("run_start", session=str(s.path), device=str(self.device),
                      dtype=self.cfg.dtype, threads=torch.get_num_threads(), P=self.layout.size,
                      stages=self.stages())
            for stage in self.stages():
                if s.stage_status(stage) == "done":
                    self.emit("stage_skip", stage=stage)
                    continue
                if stage == "train":  # later stages depend on theta_T: redo them
                    for later in self.stages()[1:]:
                        if s.stage_status(later) != "pending":
                            s.set_stage(later, status="pending")
                self.emit("stage_start", stage=stage)
                prev = s.manifest().get("stages", {}).get(stage, {}).get("seconds", 0.0)
                s.set_stage(stage, status="running", started=now_iso())
                t0 = time.perf_counter()
                try:
                    if stage.startswith("analysis."):
                        self.run_analysis(stage.split(".", 1)[1])
                    else:
                        getattr(self, f"stage_{stage}")()
                finally:  # time spent counts, also when interrupted or failed (resume adds)
                    secs = round(prev + time.perf_counter() - t0, 3)
                    s.set_stage(stage, seconds=secs)
                s.set_stage(stage, status="done", finished=now_iso())
                self.emit("stage_end", stage=stage, seconds=secs)
            status, code = "done", EXIT_OK
        except KeyboardInterrupt:
            if stage != "setup":
                s.set_stage(stage, status="interrupted")
            status, code = "interrupted", EXIT_INTERRUPTED
            self.emit("interrupted", stage=stage)
        except Exception as e:  # noqa: BLE001 - every failure is recorded in the session
            msg = failure_reason(e)
            if stage != "setup":
                s.set_stage(stage, status="failed", error=msg)
            s.update_manifest(error=msg, traceback=traceback.format_exc())
            self.emit("error", stage=stage, message=msg)
            status, code = "failed", EXIT_FAILED
        total = time.perf_counter() - t_run
        s.update_manifest(status=status, finished=now_iso(), pid=None)
        self.emit("run_end", status=status, seconds=round(total, 3))
        s.release()
        return code


def run_session(path: str | Path, listeners: list[Listener] | None = None,
                device: str | None = None, handle_signals: bool = False) -> int:
    """Run or resume the session at ``path`` in this process; returns an exit code
    (0 done, 1 failed, 3 interrupted)."""
    runner = Runner(Session(path), listeners, device)
    if handle_signals:
        def stop(signum, frame):
            runner.stop_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    return runner.run()


def run_on_session(path, names: list[str] | None = None, overrides: dict | None = None,
                   listeners: list | None = None) -> dict[str, dict]:
    """Run analyses on a finished session in this process (outside the stage machinery), with
    ``overrides`` {name: config} replacing the session's own configs; results are written under
    ``analyses/`` as the runner would. Returns {name: result}. For notebooks, benchmarks and
    tests."""
    runner = Runner(Session(path), listeners)
    runner.session.acquire()
    try:
        runner.setup()
        cfgs = dict(runner.cfg.analysis)
        cfgs.update(overrides or {})
        names = names or [n for n in ANALYSES if n in cfgs]
        out = {}
        for name in names:
            runner.cfg.analysis[name] = cfgs.get(name) or ANALYSES[name].config_cls()
            runner.run_analysis(name)
            out[name] = runner.session.read_json(f"analyses/{name}.json")
    finally:
        runner.session.release()
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m engine.runner",
                                 description="Run or resume a tjac session (the worker process).")
    ap.add_argument("session")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return run_session(args.session, device=args.device, handle_signals=True)


if __name__ == "__main__":
    sys.exit(main())
