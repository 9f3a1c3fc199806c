"""Run orchestration: the driver of one run's stages, the event stream, and the worker process.

A run is the stages :mod:`engine.pipeline` derives from its config (``train -> jacobian -> svd
-> spectrum``, then the snapshots and the analyses; ``train -> matfree`` for the matrix-free
spectrum), whose bodies are :mod:`engine.stages`. Each records its result in the session
directory as it finishes, so :func:`run_session` on a half-finished session skips what is done
and resumes the rest (the Jacobian at its first unfinished chunk). The driver holds the lock,
the manifest's status, the events and the errors; which stage runs again after what is the
table's rule, not the driver's.

Progress goes to ``events.jsonl`` (one JSON object per line) and to in-process listeners; the
TUI tails the file, ``tjac run`` listens in-process. The events and their fields are declared
in :mod:`engine.events` (docs/events.md).

``python -m engine.runner SESSION`` is the worker: it runs in its own process session, ignores
SIGHUP, and answers SIGTERM / SIGINT by finishing the current chunk, saving, and marking the
stage interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from . import __version__, device as device_mod, pipeline, plan as plan_mod, train
from .build import build
from .probe import DEVICE_PROBE_N, probe, svd_seconds  # noqa: F401 - (imported from here)
from .config import ConfigError
from .schema import one_line
from .sections import ANALYSES
from .session import CONFIG, MANIFEST, Session, SessionDamaged, SessionError, now_iso
from .stages import RunContext, Share, analysis
from .stages.jacobian import PrimalMismatch

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3

Listener = Callable[[dict], None]


def stored_init(session: Session) -> Path | None:
    """The session's ``theta0.npz`` when it is there and intact (a resume, a rank): the
    initialisation the training started from; else None (the model's own)."""
    if session.has("theta0.npz") and not session.verify(only={"theta0.npz"}):
        return session.path / "theta0.npz"
    return None


def failure_reason(e: BaseException) -> str:
    """The one line a user sees for a failure: the message alone for the errors tjac raises
    itself (invalid config, diverged training, unreadable data or model, a run that does not
    fit, a damaged session), else the exception's type and message."""
    lines = str(e).strip().splitlines()
    msg = one_line(lines[0]) if lines else ""
    if isinstance(e, (ConfigError, train.TrainingDiverged, ValueError, ArithmeticError,
                      MemoryError, PrimalMismatch, SessionError, device_mod.DeviceError)) and msg:
        return msg
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return f"{e.__class__.__name__}: {msg}" if msg else e.__class__.__name__


class Runner:
    """Runs (or resumes) one session's stages, emitting events. Nothing is read until
    :meth:`run` (or :meth:`setup`), so every failure, a broken ``config.toml`` included, is
    caught there and recorded in the session.

    Resuming trusts nothing it has not checked: every file a finished stage recorded is checked
    against its record first (sizes, checksums, the Jacobian's chunk digests), and a stage whose
    files are damaged runs again. A stage that runs again and reproduces its files bitwise (the
    run is deterministic) leaves the stages that need it as they are; one that does not makes
    them run again too (:func:`engine.pipeline.after_rerun`). ``share``: how the jacobian stage
    splits its chunks among processes (:class:`engine.stages.Share`)."""

    def __init__(self, session: Session, listeners: list[Listener] | None = None,
                 device: str | None = None, share: Share | None = None):
        self.session = session
        self.listeners = list(listeners or [])
        self.device_override = device
        self.share = share or Share()
        self.cfg = None
        self.ctx: RunContext | None = None  # the stages' context, once set up
        self.stop_requested = False
        self.rank, self.world = 0, 1  # engine.distributed: this process's rank, the ranks

    # ---- events ----------------------------------------------------------------------------
    def emit(self, event: str, **fields) -> None:
        """Record the event ``event`` (declared in :mod:`engine.events`, which checks its
        fields) in events.jsonl and hand its line to the listeners."""
        from . import events

        rec = events.encode(events.make(event, time=round(time.time(), 3), **fields))
        self.session.append_jsonl("events.jsonl", rec)
        for fn in self.listeners:
            fn(rec)

    def should_stop(self) -> bool:
        return self.stop_requested

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT ask this run to stop (the worker's way; a rank's too)."""
        def stop(signum, frame):
            self.stop_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    # ---- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Read the config, check that the run fits here, pick the device and build the data,
        model and training problem; record them in the manifest."""
        self.build()
        self.check_fits()
        cfg = self.cfg
        m = self.session.manifest()
        self.session.update_manifest(numerics=self.numerics,
                                     device_info=device_mod.describe(self.device))
        derived = dict(P=self.layout.size, layout=self.layout.to_json(), dtype=cfg.dtype,
                       data={"name": self.data.name, "n_train": len(self.data.x_train),
                             "n_test": len(self.data.x_test),
                             "n_features": self.data.n_features,
                             "n_classes": self.data.n_classes},
                       steps=self.problem.steps)
        if "P" not in m:
            self.session.update_manifest(
                **derived, device=str(self.device),
                environment=device_mod.environment(self.device, __version__))
            return
        for message in self.session.correct_claims(derived):  # (a manifest edited by hand)
            self.emit("warning", message=message)
        if m.get("device") != str(self.device):
            self.emit("warning", message=f"resuming on {self.device}; the session started on "
                                         f"{m.get('device')}: results may differ in the last bits")

    def build(self) -> None:
        """Read the config, pick the device, build the data, model and training problem (the
        stored initialisation when there is one: :func:`stored_init`), with the CPU threads the
        session started with; writes nothing but the warning that says so."""
        b = self.built = build(self.session.config(), self.device_override,
                               stored_init(self.session))
        self.cfg, self.device, self.numerics, self.dtype = b.cfg, b.device, b.numerics, b.dtype
        self.data, self.module, self.layout, self.plan = b.data, b.module, b.layout, b.plan
        self.problem, self.theta0 = b.problem, b.theta0
        threads = self.session.started_threads()
        if self.device.type == "cpu" and threads and threads != torch.get_num_threads():
            # J's bits depend on the thread count: a resume (every rank of one) computes with
            # the count the session started with
            self.emit("warning", message=f"computing with {threads} CPU threads as the session "
                                         f"started (not {torch.get_num_threads()}), so that "
                                         "its results do not depend on the resume")
            torch.set_num_threads(threads)

    def check_fits(self) -> None:
        """Refuse (PlanError) a run whose files or SVD do not fit here; a Jacobian file already
        in the session counts as written."""
        already = 0
        for rel in self.plan.disk:
            p = self.session.path / rel
            if p.is_file():
                already += min(p.stat().st_size, self.plan.disk[rel])
        plan_mod.check(self.plan, self.session.path, already, device=self.device.type)

    def context(self) -> RunContext:
        """The stages' context (built once :meth:`build` has run)."""
        if self.ctx is None:
            self.ctx = RunContext(self.session, self.built, self.device, self.emit,
                                  self.should_stop, self.stages(), rank=self.rank,
                                  world=self.world, share=self.share)
        return self.ctx

    # ---- driver ----------------------------------------------------------------------------
    def stages(self) -> list[str]:
        """The names of this run's stages, in order (:func:`engine.pipeline.stages_of`)."""
        return pipeline.names(pipeline.stages_of(self.cfg, self.plan.snapshots))

    def open_manifest(self) -> dict:
        """The manifest; a damaged one is set aside (``manifest.json.damaged``) and the session
        starts over from its config, since nothing it recorded can be trusted (every stage's
        partial state goes too)."""
        s = self.session
        try:
            return s.manifest()
        except SessionDamaged as e:
            reason = e.detail
            bad = s.path / "manifest.json"
            if bad.exists():
                os.replace(bad, s.path / "manifest.json.damaged")
            pipeline.reset_all(s.path)
            m = {"status": "created", "created": now_iso(), "preset": None, "stages": {},
                 "files": {}, "repaired": f"{reason}: started over from config.toml"}
            s.write_manifest(m)
            self.emit("warning", message=f"{reason}: the session starts over from its config "
                                         "(the old manifest is manifest.json.damaged)")
            return m

    def check_files(self, stages: list[str]) -> None:
        """Check every recorded file (contents, block digests); a damaged one sends the stage
        that wrote it back to pending (:func:`engine.pipeline.after_damage`)."""
        s = self.session
        for rel, why in s.verify(deep=True, refresh=True).items():
            if rel == CONFIG:  # (checked before setup; edited while it ran)
                raise SessionDamaged(s.path, {rel: why})
            if rel == MANIFEST:  # "done" with stages not done: they run now; claims edited
                continue  # by hand: setup corrects them
            stage = s.manifest()["files"][rel].get("stage")
            self.emit("warning", message=f"{rel}: {why}; stage {stage} runs again")
            pipeline.after_damage(s, rel, stages)
        for stage in stages:  # a finished stage must have left its files
            if s.stage_status(stage) == "done" and not any(
                    r.get("stage") == stage for r in s.manifest()["files"].values()):
                s.set_stage(stage, status="pending")

    def run_stage(self, stage: str, stages: list[str]) -> float:
        """Run one stage; if it had finished before (its files were damaged) and now writes
        different bytes, the stages that need it run again too. Returns the stage's seconds."""
        s, ctx = self.session, self.context()
        before = {k: v for k, v in s.manifest()["files"].items() if v.get("stage") == stage}
        prev = float(s.manifest()["stages"].get(stage, {}).get("seconds") or 0.0)
        s.set_stage(stage, status="running", started=now_iso())
        t0 = time.perf_counter()
        try:
            ctx.stage = stage
            pipeline.stage(stage).run(ctx)
        finally:  # time spent counts, also when interrupted or failed (resume adds)
            secs = round(prev + time.perf_counter() - t0, 3)
            s.set_stage(stage, seconds=secs)
        after = {k: v for k, v in s.manifest()["files"].items() if v.get("stage") == stage}
        changed = [k for k, v in before.items() if k in after and
                   (v.get("sha256"), v.get("blocks")) != (after[k].get("sha256"),
                                                          after[k].get("blocks"))]
        if changed:
            self.emit("warning", message=f"{stage}: {changed[0]} came out different; the "
                                         "later stages run again")
            pipeline.after_rerun(s, stage, stages)
        s.set_stage(stage, status="done", finished=now_iso())
        return secs

    def run(self) -> int:
        """Run the stages not done yet; returns the exit code (EXIT_OK, EXIT_FAILED,
        EXIT_INTERRUPTED). SessionError: the session is locked or is not one."""
        try:
            return self.drive()
        finally:
            self.share.done()

    def drive(self) -> int:
        s = self.session
        s.acquire()
        t_run = time.perf_counter()
        stage = "setup"
        try:
            m = self.open_manifest()
            s.check_intact(only={CONFIG})  # an edited config.toml is not what ran
            s.check_inputs()  # nor a data or model file changed since the session started
            s.update_manifest(status="running", pid=os.getpid(), error=None,
                              started=m.get("started") or now_iso())
            self.setup()
            stages = self.stages()
            self.emit("run_start", session=str(s.path), device=str(self.device),
                      dtype=self.cfg.dtype, threads=torch.get_num_threads(), P=self.layout.size,
                      stages=stages)
            self.check_files(stages)
            for stage in stages:
                if s.stage_status(stage) == "done":
                    self.emit("stage_skip", stage=stage)
                    continue
                if self.stop_requested:
                    raise KeyboardInterrupt
                self.emit("stage_start", stage=stage)
                secs = self.run_stage(stage, stages)
                self.emit("stage_end", stage=stage, seconds=secs)
            status, code = "done", EXIT_OK
        except KeyboardInterrupt:
            status, code = "interrupted", EXIT_INTERRUPTED
            self._record_end(stage, "interrupted")
            self._emit_quietly("interrupted", stage=stage)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - every failure is recorded in
            # the session (a user's model calling sys.exit too: its status would read as ours)
            msg = (f"the model's code called sys.exit({e.code}) during {stage}"
                   if isinstance(e, SystemExit) else failure_reason(e))
            status, code = "failed", EXIT_FAILED
            self._record_end(stage, "failed", error=msg, traceback=traceback.format_exc())
            self._emit_quietly("error", stage=stage, message=msg)
            self.failure = msg
        try:
            s.update_manifest(status=status, finished=now_iso(), pid=None)
        except (OSError, SessionError):  # e.g. the disk is full: the lock going says "stale"
            pass
        self._emit_quietly("run_end", status=status,
                           seconds=round(time.perf_counter() - t_run, 3))
        s.release()
        return code

    failure: str | None = None

    def _record_end(self, stage: str, status: str, **fields) -> None:
        """Mark the stage under way and the session; a disk that refuses even this (full,
        read-only) leaves the session 'stale' once the lock goes, which resume handles."""
        try:
            if stage != "setup":
                self.session.set_stage(stage, status=status,
                                       **({"error": fields["error"]} if "error" in fields else {}))
            if fields:
                self.session.update_manifest(**fields)
        except (OSError, SessionError):
            pass

    def _emit_quietly(self, event: str, **fields) -> None:
        try:
            self.emit(event, **fields)
        except OSError:
            from . import events

            rec = events.encode(events.make(event, time=round(time.time(), 3), **fields))
            for fn in self.listeners:
                fn(rec)

def run_session(path: str | Path, listeners: list[Listener] | None = None,
                device: str | None = None, handle_signals: bool = False) -> int:
    """Run or resume the session at ``path`` in this process; returns an exit code
    (0 done, 1 failed, 3 interrupted). With ``handle_signals``, SIGTERM and SIGINT ask the run
    to stop: the Jacobian within a training step, the SVD at once (it runs in a thread), an
    analysis at its next unit; the session is marked interrupted and stays resumable."""
    runner = Runner(Session(path), listeners, device)
    if handle_signals:
        runner.stop_on_signals()
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
        ctx, out = runner.context(), {}
        for name in names:
            analysis.run(ctx, name, cfgs.get(name) or ANALYSES[name].config_cls())
            out[name] = runner.session.read_json(f"analyses/{name}.json")
        return out
    finally:
        runner.session.release()


def main(argv: list[str] | None = None,
         listeners_for: Callable[[Path], list[Listener]] | None = None) -> int:
    """The worker: run or resume the session named on the command line, its events also to
    ``listeners_for(session path)`` (:mod:`engine.present.worker_main` keeps its report.md
    current with one)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m engine.runner",
                                 description="Run or resume a tjac session (the worker process).")
    ap.add_argument("session")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    listeners = listeners_for(Path(args.session)) if listeners_for else None
    try:
        code = run_session(args.session, listeners, device=args.device, handle_signals=True)
    except SessionError as e:  # another worker holds it, or it is not a session
        print(e, file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{args.session}: {e.strerror or e}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    if threading.active_count() > 1:  # an abandoned SVD thread: do not wait for it
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
