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

import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__, data as data_mod, jacobian as jac_mod, models, spectrum, train
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


class Runner:
    """Runs (or resumes) one session's stages, emitting events."""

    def __init__(self, session: Session, listeners: list[Listener] | None = None,
                 device: str | None = None):
        self.session = session
        self.listeners = list(listeners or [])
        self.cfg = session.config()
        self.base = None
        preset = session.manifest().get("preset")
        if preset:
            self.base = Path(preset).parent
        self.device_name = device or self.cfg.device
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
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(self.device_name)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.data = data_mod.load(cfg.data, self.base)
        self.module = models.build(cfg.model, self.data.n_features, self.data.n_classes,
                                   cfg.seed, self.base)
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
        s.record_file("jacobian.npy")

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
        s.record_file("spectrum.json")

    def run_analysis(self, name: str) -> None:
        from .experiments import Context, load_all

        analysis = load_all()[name]
        s = self.session
        arrays = s.load_npz("thetaT.npz")
        thetaT = self.layout.flatten([torch.from_numpy(arrays[n]) for n in self.layout.names]
                                     ).to(self.device, self.dtype)
        ctx = Context(session=s, problem=self.problem, theta0=self.theta0, thetaT=thetaT,
                      data=self.data, emit=self.emit, should_stop=self.should_stop)
        (s.path / "analyses").mkdir(exist_ok=True)
        result = analysis.run(ctx, self.cfg.analysis[name])
        s.write_json(f"analyses/{name}.json", result)
        s.record_file(f"analyses/{name}.json")

    # ---- driver ----------------------------------------------------------------------------
    def stages(self) -> list[str]:
        from .experiments import MODULES

        if not self.cfg.jacobian.enabled:
            return ["train"]
        if not self.cfg.jacobian.svd:
            return ["train", "jacobian"]
        return list(STAGES) + [f"analysis.{n}" for n in MODULES
                               if n in self.cfg.analysis and self.cfg.analysis[n].enabled]

    def run(self) -> int:
        s = self.session
        s.acquire()
        t_run = time.perf_counter()
        stage = "setup"
        try:
            s.update_manifest(status="running", pid=os.getpid(), error=None,
                              started=s.manifest().get("started") or now_iso())
            self._setup()
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
        except Exception as e:  # noqa: BLE001 - reported in the session, re-raised for debugging
            msg = f"{e.__class__.__name__}: {e}" if not isinstance(e, train.TrainingDiverged) \
                else str(e)
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


def start_worker(path: str | Path, device: str | None = None) -> subprocess.Popen:
    """Start ``python -m engine.runner`` on the session in its own process session, so the run
    outlives the terminal that started it. Its stdout and stderr go to ``worker.log``."""
    path = Path(path)
    cmd = [sys.executable, "-m", "engine.runner", str(path)]
    if device:
        cmd += ["--device", device]
    log = open(path / "worker.log", "ab")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get(
        "PYTHONPATH") else root
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=os.getcwd())
    finally:
        log.close()


def request_stop(path: str | Path) -> bool:
    """Ask the worker running the session to stop (SIGTERM); False if none is running."""
    s = Session(path)
    pid = s.manifest().get("pid")
    if not pid or not s.is_locked():
        return False
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


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
