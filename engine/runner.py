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
  gpu_mem_peak: bytes allocated by the worker's torch.cuda caching allocator; distributed
  (engine.distributed): rank, rank_done (that rank's columns), and rate is that rank's}
* ``jacobian_ranks`` {ranks, shares}: a distributed run's ranks and their chunk counts
* ``matfree_progress`` {phase, jvp, vjp}: products so far (at most one a second)
* ``matfree_done`` {s_max, k, bulk}: spectrum.method = "matfree"
* ``interrupted`` {stage}    * ``error`` {stage, message}

``python -m engine.runner SESSION`` is the worker: it runs in its own process session, ignores
SIGHUP, and answers SIGTERM / SIGINT by finishing the current chunk, saving, and marking the
stage interrupted.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import (__version__, device as device_mod, files, jacobian as jac_mod, plan as plan_mod,
               spectrum, svdjob, train)
from .build import build
from .probe import DEVICE_PROBE_N, probe, svd_seconds  # noqa: F401 - (imported from here)
from .config import ConfigError
from .schema import one_line
from .experiments.common import Context
from .sections import ANALYSES
from .session import CONFIG, MANIFEST, Session, SessionDamaged, SessionError, now_iso

STAGES = ("train", "jacobian", "svd", "spectrum")
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3

Listener = Callable[[dict], None]


# a chunk's theta_T may differ from thetaT.npz by at most this, relative to max(1, |theta_T|)
PRIMAL_DEV_FLOAT32 = 1e-4
PRIMAL_DEV_FLOAT64 = 1e-10


def stored_init(session: Session) -> Path | None:
    """The session's ``theta0.npz`` when it is there and intact (a resume, a rank): the
    initialisation the training started from; else None (the model's own)."""
    if session.has("theta0.npz") and not session.verify(only={"theta0.npz"}):
        return session.path / "theta0.npz"
    return None


class PrimalMismatch(RuntimeError):
    """The training inside the Jacobian does not reproduce the stored theta_T."""


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
    run is deterministic) leaves the later stages as they are; one that does not makes them run
    again too."""

    def __init__(self, session: Session, listeners: list[Listener] | None = None,
                 device: str | None = None):
        self.session = session
        self.listeners = list(listeners or [])
        self.device_override = device
        self.cfg = None
        self.stop_requested = False
        # (U, S, Vh) of the SVD stage, or the summary the Gram route's process made
        self.svd_result: tuple[np.ndarray, np.ndarray, np.ndarray] | dict | None = None
        self.rank, self.world = 0, 1  # engine.distributed: this process's rank, the ranks

    # ---- events ----------------------------------------------------------------------------
    def emit(self, event: str, **fields) -> None:
        rec = {"event": event, "time": round(time.time(), 3), **fields}
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
        if "P" not in m:
            self.session.update_manifest(
                P=self.layout.size, layout=self.layout.to_json(), device=str(self.device),
                dtype=cfg.dtype, environment=device_mod.environment(self.device, __version__),
                data={"name": self.data.name, "n_train": len(self.data.x_train),
                      "n_test": len(self.data.x_test), "n_features": self.data.n_features,
                      "n_classes": self.data.n_classes},
                steps=self.problem.steps)
        elif m.get("device") != str(self.device):
            self.emit("warning", message=f"resuming on {self.device}; the session started on "
                                         f"{m.get('device')}: results may differ in the last bits")

    def build(self) -> None:
        """Read the config, pick the device, build the data, model and training problem (the
        stored initialisation when there is one: :func:`stored_init`); writes nothing."""
        b = self.built = build(self.session.config(), self.device_override,
                               stored_init(self.session))
        self.cfg, self.device, self.numerics, self.dtype = b.cfg, b.device, b.numerics, b.dtype
        self.data, self.module, self.layout, self.plan = b.data, b.module, b.layout, b.plan
        self.problem, self.theta0 = b.problem, b.theta0

    def check_fits(self) -> None:
        """Refuse (PlanError) a run whose files or SVD do not fit here; a Jacobian file already
        in the session counts as written."""
        already = 0
        for rel in self.plan.disk:
            p = self.session.path / rel
            if p.is_file():
                already += min(p.stat().st_size, self.plan.disk[rel])
        plan_mod.check(self.plan, self.session.path, already, device=self.device.type)

    def thetaT(self) -> torch.Tensor:
        arrays = self.session.load_npz("thetaT.npz")
        return self.layout.flatten([torch.from_numpy(arrays[n]) for n in self.layout.names]
                                   ).to(self.device, self.dtype)

    # ---- stages ----------------------------------------------------------------------------
    def stage_train(self) -> None:
        s, p = self.session, self.problem
        (s.path / "metrics.jsonl").unlink(missing_ok=True)
        s.write_npz("theta0.npz", self.layout.to_npz_dict(self.layout.unflatten(self.theta0)),
                    stage="train")

        def on_step(m: dict) -> None:
            s.append_jsonl("metrics.jsonl", m)
            self.emit("train_step", steps=p.steps, **m)

        theta_T = train.train(p, self.theta0, on_step, self.should_stop)
        s.write_npz("thetaT.npz", self.layout.to_npz_dict(self.layout.unflatten(theta_T)),
                    stage="train")
        last = s.metrics()[-1]
        s.update_manifest(final_metrics=last)

    def primal_bound(self, thetaT: torch.Tensor) -> float:
        """How far a chunk's theta_T may be from the stored one: 0 in principle (the same
        operations on the same device), a few float32 ulps of amplification at most."""
        scale = max(1.0, float(thetaT.abs().max()))
        return (PRIMAL_DEV_FLOAT64 if self.dtype == torch.float64 else PRIMAL_DEV_FLOAT32) * scale

    def stage_jacobian(self) -> None:
        """J chunk by chunk into the store. The chunk size is the stored one (a resume), the
        preset's, or chosen on this device (:func:`engine.jacobian.auto_chunk`); while no chunk
        is finished, running out of memory halves it (recorded as ``chunk_fallbacks``)."""
        s, P = self.session, self.layout.size
        info = s.manifest().get("stages", {}).get("jacobian", {})
        chunk = info.get("chunk") or self.cfg.jacobian.chunk or jac_mod.auto_chunk(
            self.problem, self.theta0, self.device, self.dtype)
        fallbacks = list(info.get("chunk_fallbacks", []))
        while True:
            s.set_stage("jacobian", chunk=chunk)
            store = jac_mod.JacobianStore(s.path, P, chunk, np.dtype(self.cfg.dtype))
            snaps = self.snapshot_stores(chunk)
            try:
                self.compute_jacobian(store, info, snapshots=snaps)
                break
            except Exception as e:  # noqa: BLE001 - only running out of memory is handled
                if not jac_mod.is_out_of_memory(e):
                    raise
                if store.done or chunk == 1:
                    raise MemoryError(
                        f"out of memory computing J in chunks of {chunk} columns "
                        f"({len(store.done)} chunk(s) already done with that size): free "
                        "memory on the device, or start a new session with a smaller "
                        "jacobian.chunk") from None
            # out of the except clause, the error's traceback (whose frames held the failed
            # chunk's trajectory and tangents) is gone: free what the chunk size left behind
            jac_mod.release_chunk_memory(self.problem)
            new = max(1, chunk // 2)
            fallbacks.append({"from": chunk, "to": new})
            s.set_stage("jacobian", chunk_fallbacks=fallbacks)
            self.emit("warning", message=f"jacobian: out of memory with chunks of {chunk} "
                                         f"columns; trying {new}")
            chunk = new
        s.record_file("jacobian.npy", "jacobian", blocks=store.record())
        for t, st in snaps.items():
            s.record_file(f"{plan_mod.snapshot_dir(t)}/jacobian.npy", "jacobian",
                          blocks=st.record())

    def snapshot_stores(self, chunk: int) -> dict[int, jac_mod.JacobianStore]:
        """The stores of the snapshots whose J is wanted: every one with
        ``snapshot_keep = "jacobian"``, else those not analysed yet (a deleted J is not
        computed again). A store with chunks to compute makes its snapshot's analysis stale:
        that is forgotten, and the snapshots stage redoes it."""
        s, P, out = self.session, self.layout.size, {}
        keep_j = self.cfg.jacobian.snapshot_keep == "jacobian"
        for t in self.plan.snapshots:
            d = plan_mod.snapshot_dir(t)
            if not keep_j and self.snapshot_analysed(d):
                continue
            (s.path / d).mkdir(parents=True, exist_ok=True)
            st = out[t] = jac_mod.JacobianStore(s.path / d, P, chunk, np.dtype(self.cfg.dtype))
            if st.pending:  # its analysis is redone once the chunks are in
                s.forget(lambda rel, d=d: rel.startswith(d + "/") and rel != d + "/jacobian.npy")
                if s.stage_status("snapshots") == "done":
                    s.set_stage("snapshots", status="pending")
        return out

    def snapshot_analysed(self, d: str) -> bool:
        """Whether snapshot folder ``d`` has its summary recorded, and it and the SVD's files
        are intact."""
        files = self.session.manifest().get("files", {})
        mine = {rel for rel in files if rel.startswith(d + "/") and rel != f"{d}/jacobian.npy"}
        return f"{d}/spectrum.json" in mine and not self.session.verify(only=mine)

    def share_of(self, store: jac_mod.JacobianStore,
                 snapshots: dict[int, jac_mod.JacobianStore]) -> list[int] | None:
        """The chunks this process computes (engine.distributed splits them among ranks);
        None: every chunk that J or a snapshot still lacks."""
        return None

    def after_share(self, store: jac_mod.JacobianStore,
                    snapshots: dict[int, jac_mod.JacobianStore]) -> None:
        """Once this process's chunks are done (engine.distributed: wait for the others)."""

    def compute_jacobian(self, store: jac_mod.JacobianStore, info: dict,
                         indices: list[int] | None = None,
                         snapshots: dict[int, jac_mod.JacobianStore] | None = None) -> None:
        """Compute the chunks ``indices`` (default: this process's share of the pending ones),
        emitting an event per chunk and checking each chunk's theta_T against thetaT.npz."""
        s, P, lead = self.session, self.layout.size, self.rank == 0
        if store.damaged:
            self.emit("warning", message=f"jacobian.npy: {len(store.damaged)} chunk(s) did not "
                                         f"match their digests (first: {store.damaged[0]}); "
                                         "computing them again")
        thetaT = self.thetaT().cpu()  # (a chunk's theta_T comes to on_chunk on the host)
        bound = self.primal_bound(thetaT)
        if lead:
            self.emit("jacobian_start", total=P, chunk=store.chunk, chunks=len(store.ranges),
                      done=store.columns_done)
        snapshots = snapshots or {}
        if indices is None:
            indices = self.share_of(store, snapshots)
        t0, mine = time.perf_counter(), [0]
        worst = [float(info.get("primal_dev", 0.0))]
        ranked = {"rank": self.rank} if self.world > 1 else {}
        if ranked:
            ranked["rank_done"] = 0  # this rank's columns so far (of this attempt)

        def on_chunk(index: int, cols: range, theta_T: torch.Tensor) -> None:
            dev = float((theta_T - thetaT).abs().max())
            worst[0] = max(worst[0], dev)
            mine[0] += len(cols)
            if ranked:
                ranked["rank_done"] = mine[0]
            done = store.columns_done_all() if self.world > 1 else store.columns_done
            rate = mine[0] / max(time.perf_counter() - t0, 1e-9)  # this process's
            mem = {}
            if self.device.type == "cuda":  # the TUI is another process: report it here
                mem = {"gpu_mem": torch.cuda.memory_allocated(self.device),
                       "gpu_mem_peak": torch.cuda.max_memory_allocated(self.device)}
            self.emit("jacobian_chunk", chunk=index, done=done, total=P, rate=round(rate, 3),
                      eta=round((P - done) / (rate * self.world), 1) if rate > 0 else None,
                      primal_dev=dev, **ranked, **mem)
            if dev > bound:
                if lead:  # what the message promises: the next run trains again (and, if
                    # that changes thetaT.npz, computes J again)
                    s.set_stage("train", status="pending")
                raise PrimalMismatch(
                    f"the training inside the Jacobian reached a theta_T {dev:.3g} away from "
                    f"thetaT.npz (allowed: {bound:.3g}): thetaT.npz is not the training of "
                    "this config; `tjac resume` trains again")

        try:
            jac_mod.compute_into(store, self.problem, self.theta0, on_chunk, self.should_stop,
                                 indices, snapshots)
            if lead:
                self.after_share(store, snapshots)
        finally:
            if lead:  # the manifest is rank 0's alone
                s.set_stage("jacobian", primal_dev=worst[0], primal_bound=bound,
                            columns_done=store.columns_done)

    def stage_svd(self) -> None:
        """The SVD of J (:meth:`svd_of`) into ``svd/``; the summary is the next stage."""
        self.svd_result = self.svd_of("jacobian.npy", "svd", "svd")

    def svd_route(self) -> str:
        """The SVD's route here (:func:`engine.plan.svd_route`)."""
        sp = self.cfg.spectrum
        return plan_mod.svd_route(self.device.type, sp.svd_method, sp.svd_dtype)

    def svd_of(self, jrel: str, out: str, stage: str):
        """The SVD of the stored J ``jrel``, in float64 (``spectrum.svd_dtype``), its files
        written to ``out/`` (S, U, Vh, the alignment) and recorded for ``stage``, by the route
        of :meth:`svd_route`. On the CPU by the Gram route in a child process
        (:mod:`engine.svdjob`, which also summarizes: the summary is returned) or with LAPACK's
        gesdd (J whole in memory, as float64); on CUDA with torch on the device, by the Gram
        route (:func:`engine.spectrum.svd_gram_device`) or torch's direct SVD
        (:func:`engine.spectrum.svd_device`), J streamed there in column blocks of the file and
        U, Vh written back in row blocks, so host memory never holds a P x P matrix. U and Vh
        are stored in the run's dtype, S and the alignment in float64; otherwise returns
        (U, S, Vh) for :meth:`summary_of` (float64 vectors of this process, tensors on the
        device for CUDA)."""
        s, keep = self.session, (np.float64 if self.cfg.dtype == "float64" else np.float32)
        J = s.load_npy(jrel, mmap=True)
        vectors, dt = self.cfg.spectrum.vectors, np.dtype(self.cfg.spectrum.svd_dtype)
        (s.path / out).mkdir(parents=True, exist_ok=True)
        route = self.svd_route()
        if route == "gram-cpu":
            return self._svd_gram(jrel, out, stage, keep, vectors)
        if route in ("gram-cuda", "direct-cuda"):
            if route == "gram-cuda":
                U, S_t, Vh = spectrum.svd_gram_device(J, self.device, vectors, self.should_stop)
            else:
                U, S_t, Vh = spectrum.svd_device(J, self.device, vectors, self.should_stop,
                                                 dtype=dt)
            S = S_t.double().cpu().numpy()
            s.write_npy(f"{out}/S.npy", S, stage=stage)
            if vectors:
                P, tkeep = len(S), torch.float64 if keep is np.float64 else torch.float32
                for rel, M in ((f"{out}/U.npy", U), (f"{out}/Vh.npy", Vh)):
                    # (rounded to the kept dtype on the device: a row block crosses once)
                    rows = (M[a: a + 4096].to(tkeep).cpu().numpy() for a in range(0, P, 4096))
                    files.atomic_save_npy_rows(s.path / rel, (P, P), keep, rows)
                    s.record_file(rel, stage)
                a = torch.einsum("ij,ji->j", U, Vh).double().cpu().numpy()
                s.write_npy(f"{out}/alignment.npy", a, stage=stage)
        else:
            if vectors:
                U, S, Vh = spectrum.svd(J, self.device, self.should_stop, dtype=dt)
            else:
                U = Vh = None
                S = spectrum.svdvals(J, self.should_stop, dtype=dt)
            s.write_npy(f"{out}/S.npy", S, stage=stage)
            if vectors:
                s.write_npy(f"{out}/U.npy", U.astype(keep, copy=False), stage=stage)
                s.write_npy(f"{out}/Vh.npy", Vh.astype(keep, copy=False), stage=stage)
                s.write_npy(f"{out}/alignment.npy",
                            spectrum.alignment(U, Vh).astype(np.float64), stage=stage)
        return (U, S, Vh)

    def _svd_gram(self, jrel: str, out: str, stage: str, keep: type, vectors: bool) -> dict:
        """The CPU SVD by the Gram route (:mod:`engine.svdjob`), in a child process that also
        summarizes the spectrum from its float64 vectors; its files are moved into ``out/``
        and recorded. Returns the summary."""
        s = self.session
        for old in s.path.glob(".svdjob.*"):  # left by a killed run (its child died with it)
            shutil.rmtree(old, ignore_errors=True)
        release_memory()  # what the J stage freed goes back to the system, not to this heap
        work = s.path / f".svdjob.{os.getpid()}"
        summary = svdjob.run(s.path / jrel, work, self.cfg.spectrum.bulk_tol,
                             np.dtype(keep), vectors, self.should_stop)
        names = ["S.npy"] + (["U.npy", "Vh.npy", "alignment.npy"] if vectors else [])
        for name in names:
            os.replace(work / name, s.path / out / name)
            s.record_file(f"{out}/{name}", stage)
        shutil.rmtree(work, ignore_errors=True)
        return summary

    def summary_of(self, result, out: str) -> dict:
        """The spectrum summary of :meth:`svd_of`'s result (``out``: where its files are)."""
        if isinstance(result, dict):  # the Gram route summarized in its process
            summary = result
        else:
            U, S, Vh = result
            tol = self.cfg.spectrum.bulk_tol
            if U is None:
                summary = spectrum.summarize(S, tol=tol)
            elif isinstance(U, np.ndarray):
                summary = spectrum.summarize(S, U, Vh, tol)
            else:  # on the GPU: the alignment and the regions' cosines computed there
                summary = spectrum.summarize(S, tol=tol, align=self.session.load_npy(
                    f"{out}/alignment.npy"), cosines=spectrum.region_cosines(U, Vh, S, tol))
            if self.svd_route() == "gram-cuda":  # (engine.svdjob notes its own)
                spectrum.note_gram_resolution(summary, S)
        summary["svd_dtype"] = self.cfg.spectrum.svd_dtype
        return summary

    def stage_spectrum(self) -> None:
        """The summary, from the SVD of this process: when the SVD was finished by an earlier
        process (a kill between the two stages), it is computed again rather than read back
        from U and Vh rounded to the run's dtype, so a resumed run agrees bitwise with one that
        was never interrupted."""
        if self.svd_result is None:
            self.emit("warning", message="spectrum: computing the SVD again in "
                                         f"{self.cfg.spectrum.svd_dtype} (the stored U and Vh "
                                         "are rounded to the run's dtype)")
            self.stage_svd()
        self.session.write_json("spectrum.json", self.summary_of(self.svd_result, "svd"),
                                stage="spectrum")

    def stage_snapshots(self) -> None:
        """Each snapshot's SVD and summary (``snapshots/step_NNNNNN/svd/``, ``spectrum.json``),
        then what ``jacobian.snapshot_keep`` does not keep is deleted; a snapshot analysed
        before (its summary intact) is skipped. Then ``snapshots/summary.json``: one row per
        step, the final J's included (:func:`engine.spectrum.through_training`)."""
        s, steps = self.session, self.plan.snapshots
        for i, t in enumerate(steps):
            d = plan_mod.snapshot_dir(t)
            if self.snapshot_analysed(d):
                self.drop_unkept(d)  # (a kill may have come between the summary and this)
                continue
            if self.stop_requested:
                raise KeyboardInterrupt
            self.emit("snapshot_start", step=t, index=i, total=len(steps))
            t0 = time.perf_counter()
            summary = self.summary_of(self.svd_of(f"{d}/jacobian.npy", f"{d}/svd", "snapshots"),
                                      f"{d}/svd")
            summary["step"] = t
            s.write_json(f"{d}/spectrum.json", summary, stage="snapshots")
            self.drop_unkept(d)
            self.emit("snapshot_done", step=t, index=i, total=len(steps),
                      s_max=summary["s_max"], seconds=round(time.perf_counter() - t0, 3),
                      counts={k: r["count"] for k, r in summary["regions"].items()})
        s.write_json("snapshots/summary.json", spectrum.through_training(
            [(t, s.read_json(f"{plan_mod.snapshot_dir(t)}/spectrum.json")) for t in steps]
            + [(self.problem.steps, s.read_json("spectrum.json"))], self.problem.lrs),
            stage="snapshots")

    def drop_unkept(self, d: str) -> None:
        """Delete (and unrecord) what ``jacobian.snapshot_keep`` does not keep of snapshot
        folder ``d``, once it is analysed."""
        gone = {"jacobian": [], "svd": ["jacobian.npy", jac_mod.JacobianStore.PROGRESS],
                "spectrum": ["jacobian.npy", jac_mod.JacobianStore.PROGRESS, "svd/U.npy",
                             "svd/Vh.npy"]}[self.cfg.jacobian.snapshot_keep]
        for name in gone:
            (self.session.path / d / name).unlink(missing_ok=True)
        if gone:
            self.session.forget(lambda rel: rel in {f"{d}/{n}" for n in gone})

    def stage_matfree(self) -> None:
        """``spectrum.method = "matfree"``: the top k singular values of J (scipy svds on J as
        an operator) and the bulk-size estimates (stochastic Lanczos quadrature), J never
        formed (:mod:`engine.matfree`); written to matfree.json."""
        from . import matfree

        sp, P = self.cfg.spectrum, self.layout.size
        dt = torch.float64 if sp.matfree_dtype == "float64" else torch.float32
        phase, last = ["checkpoints"], [0.0]

        def on_product(kind: str, k: int) -> None:
            now = time.perf_counter()
            if now - last[0] > 1.0:
                last[0] = now
                st = op.stats
                self.emit("matfree_progress", phase=phase[0], jvp=st.jvp_vectors,
                          vjp=st.vjp_vectors)

        op = matfree.TrainingJacobian(self.problem, self.theta0, should_stop=self.should_stop,
                                      dtype=dt, on_product=on_product)
        k = min(sp.k, P - 1)
        t0 = time.perf_counter()
        phase[0] = "top-k"
        how: dict = {}
        try:
            top, V = matfree.top_singular_values(op, k, solver=sp.solver, seed=self.cfg.seed,
                                                 tol=sp.top_tol, vectors=True, info=how)
        except Exception:  # a stop inside PROPACK's Fortran comes out as a SystemError
            if self.stop_requested:
                raise KeyboardInterrupt from None
            raise
        if how.get("fallback"):
            self.emit("warning", message=f"matfree: {how['fallback']}; computed again by "
                                         f"{how['solver']}")
        t_top = time.perf_counter() - t0
        top_products = (op.stats.jvp_vectors, op.stats.vjp_vectors)
        phase[0] = "bulk"
        est = matfree.bulk_count(op, sp.count_tols, sp.probes, sp.lanczos_steps,
                                 seed=self.cfg.seed, deflate=(top, V) if sp.deflate else None)
        del V
        result = {
            "P": P, "dtype": sp.matfree_dtype, "segment": op.segment, "steps": op.T,
            "top": {"k": k, "solver": how["solver"], "orthogonality": how["orthogonality"],
                    **({"fallback": how["fallback"]} if how.get("fallback") else {}),
                    "tol": sp.top_tol, "s": top.tolist(),
                    "seconds": round(t_top, 3),
                    "jvp_vectors": top_products[0], "vjp_vectors": top_products[1]},
            "bulk": {"probes": sp.probes, "lanczos_steps": sp.lanczos_steps,
                     "deflated": k if sp.deflate else 0,
                     "seconds": round(time.perf_counter() - t0 - t_top, 3),
                     "estimates": [e.to_json() for e in est]},
            "stats": dataclasses.asdict(op.stats),
            "memory": self.plan.matfree,
        }
        self.session.write_json("matfree.json", result, stage="matfree")
        self.emit("matfree_done", s_max=float(top[0]), k=k,
                  bulk=[{"tol": e.tol, "count": e.count, "lower": e.lower, "upper": e.upper}
                        for e in est])

    def run_analysis(self, name: str) -> None:
        impl = importlib.import_module(ANALYSES[name].module)
        s = self.session
        ctx = Context(session=s, problem=self.problem, theta0=self.theta0,
                      thetaT=self.thetaT(), data=self.data, emit=self.emit,
                      should_stop=self.should_stop, tol=self.cfg.spectrum.bulk_tol,
                      stage=f"analysis.{name}")
        (s.path / "analyses").mkdir(exist_ok=True)
        result = impl.run(ctx, self.cfg.analysis[name])
        s.write_json(f"analyses/{name}.json", result, stage=f"analysis.{name}")

    # ---- driver ----------------------------------------------------------------------------
    def stages(self) -> list[str]:
        if not self.cfg.jacobian.enabled:
            return ["train"]
        if self.cfg.spectrum.method == "matfree":
            return ["train", "matfree"]
        if not self.cfg.jacobian.svd:
            return ["train", "jacobian"]
        snaps = ["snapshots"] if self.plan.snapshots else []
        return list(STAGES) + snaps + [f"analysis.{n}" for n in ANALYSES
                               if n in self.cfg.analysis and self.cfg.analysis[n].enabled]

    def open_manifest(self) -> dict:
        """The manifest; a damaged one is set aside (``manifest.json.damaged``) and the session
        starts over from its config, since nothing it recorded can be trusted."""
        s = self.session
        try:
            return s.manifest()
        except SessionDamaged as e:
            reason = e.detail
            bad = s.path / "manifest.json"
            if bad.exists():
                os.replace(bad, s.path / "manifest.json.damaged")
            for p in [s.path, *s.path.glob("snapshots/step_*")]:
                (p / jac_mod.JacobianStore.PROGRESS).unlink(missing_ok=True)
            m = {"status": "created", "created": now_iso(), "preset": None, "stages": {},
                 "files": {}, "repaired": f"{reason}: started over from config.toml"}
            s.write_manifest(m)
            self.emit("warning", message=f"{reason}: the session starts over from its config "
                                         "(the old manifest is manifest.json.damaged)")
            return m

    def check_files(self, stages: list[str]) -> None:
        """Check every recorded file (contents, block digests); a damaged one sends the stage
        that wrote it back to pending (it runs again)."""
        s = self.session
        for rel, why in s.verify(deep=True, refresh=True).items():
            if rel == CONFIG:  # (checked before setup; edited while it ran)
                raise SessionDamaged(s.path, {rel: why})
            if rel == MANIFEST:  # "done" with stages not done: they run now
                continue
            stage = s.manifest()["files"][rel].get("stage")
            self.emit("warning", message=f"{rel}: {why}; stage {stage} runs again")
            if stage in stages and s.stage_status(stage) == "done":
                s.set_stage(stage, status="pending")
            snap = "/".join(rel.split("/")[:2])
            if (rel.startswith("snapshots/step_") and not (s.path / snap / "jacobian.npy").exists()
                    and "jacobian" in stages and s.stage_status("jacobian") == "done"):
                # its J was not kept (jacobian.snapshot_keep): the pass computes it again
                s.set_stage("jacobian", status="pending")
        for stage in stages:  # a finished stage must have left its files
            if s.stage_status(stage) == "done" and not any(
                    r.get("stage") == stage for r in s.manifest()["files"].values()):
                s.set_stage(stage, status="pending")

    def run_stage(self, stage: str, stages: list[str]) -> float:
        """Run one stage; if it had finished before (its files were damaged) and now writes
        different bytes, the later stages run again too. Returns the stage's seconds."""
        s = self.session
        before = {k: v for k, v in s.manifest()["files"].items() if v.get("stage") == stage}
        prev = float(s.manifest()["stages"].get(stage, {}).get("seconds") or 0.0)
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
        after = {k: v for k, v in s.manifest()["files"].items() if v.get("stage") == stage}
        changed = [k for k, v in before.items() if k in after and
                   (v.get("sha256"), v.get("blocks")) != (after[k].get("sha256"),
                                                          after[k].get("blocks"))]
        if changed:
            later = stages[stages.index(stage) + 1:]
            self.emit("warning", message=f"{stage}: {changed[0]} came out different; the "
                                         "later stages run again")
            for st in later:
                s.set_stage(st, status="pending")
            if stage == "train":  # every J (and snapshot) is computed again
                for p in [s.path, *s.path.glob("snapshots/step_*")]:
                    (p / jac_mod.JacobianStore.PROGRESS).unlink(missing_ok=True)
        s.set_stage(stage, status="done", finished=now_iso())
        return secs

    def run(self) -> int:
        s = self.session
        s.acquire()
        t_run = time.perf_counter()
        stage = "setup"
        try:
            m = self.open_manifest()
            s.check_intact(only={CONFIG})  # an edited config.toml is not what ran
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
        except Exception as e:  # noqa: BLE001 - every failure is recorded in the session
            msg = failure_reason(e)
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
            for fn in self.listeners:
                fn({"event": event, "time": round(time.time(), 3), **fields})


def release_memory() -> None:
    """Return the memory this process has freed to the system (glibc keeps freed blocks in its
    heap): before the SVD's child process starts, the tangent buffers and the trajectory of the
    J stage are no longer counted against the machine."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


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
        out = {}
        for name in names:
            runner.cfg.analysis[name] = cfgs.get(name) or ANALYSES[name].config_cls()
            runner.run_analysis(name)
            out[name] = runner.session.read_json(f"analyses/{name}.json")
    finally:
        runner.session.release()
    return out


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
