"""The svd and spectrum stages: the SVD of J into ``svd/`` by the route this device takes, and
its summary ``spectrum.json``.

:func:`compute` is the one place that picks the backend (:func:`engine.plan.svd_route`); each
backend writes S, U, Vh and the alignment into the session and returns an
:class:`engine.spectrum.SVDResult`, whose :meth:`~engine.spectrum.SVDResult.summary` is the
spectrum summary whatever the route. The svd stage keeps the result in the context's cache for
the spectrum stage, which lets its vectors go once the summary is written (on CUDA, 2 P^2
float64 of device memory the analyses then have).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch

from .. import files, plan as plan_mod, spectrum, svdjob
from ..spectrum import SVDResult
from . import RunContext

CACHE = "svd"  # the context's cache entry: the svd stage's SVDResult


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


def run(ctx: RunContext) -> None:
    """The SVD of J (:func:`compute`) into ``svd/``; the summary is the next stage."""
    ctx.cache[CACHE] = compute(ctx, "jacobian.npy", "svd", "svd")


def spectrum_stage(ctx: RunContext) -> None:
    """The summary, from the SVD of this process: when the SVD was finished by an earlier
    process (a kill between the two stages), it is computed again rather than read back
    from U and Vh rounded to the run's dtype, so a resumed run agrees bitwise with one that
    was never interrupted. The vectors are let go once it is written."""
    if ctx.cache.get(CACHE) is None:
        ctx.emit("warning", message="spectrum: computing the SVD again in "
                                    f"{ctx.cfg.spectrum.svd_dtype} (the stored U and Vh "
                                    "are rounded to the run's dtype)")
        run(ctx)
    result = ctx.cache.pop(CACHE)
    ctx.session.write_json("spectrum.json", summary_of(ctx, result), stage="spectrum")
    result.release()


def summary_of(ctx: RunContext, result: SVDResult) -> dict:
    """The spectrum summary of an SVD of this run (its bulk_tol; its svd_dtype noted)."""
    summary = result.summary(ctx.cfg.spectrum.bulk_tol)
    summary["svd_dtype"] = ctx.cfg.spectrum.svd_dtype
    return summary


def compute(ctx: RunContext, jrel: str, out: str, stage: str) -> SVDResult:
    """The SVD of the stored J ``jrel``, in float64 (``spectrum.svd_dtype``), its files
    written to ``out/`` (S, U, Vh, the alignment) and recorded for ``stage``, by the route
    :func:`engine.plan.svd_route` picks for this device: on the CPU by the Gram route in a child
    process (:mod:`engine.svdjob`, which also summarizes) or with LAPACK's gesdd (J whole in
    memory, as float64); on CUDA with torch on the device, by the Gram route
    (:func:`engine.spectrum.svd_gram_device`) or torch's direct SVD
    (:func:`engine.spectrum.svd_device`), J streamed there in column blocks of the file and U,
    Vh written back in row blocks, so host memory never holds a P x P matrix. U and Vh are
    stored in the run's dtype, S and the alignment in float64."""
    sp = ctx.cfg.spectrum
    route = plan_mod.svd_route(ctx.device.type, sp.svd_method, sp.svd_dtype)
    (ctx.session.path / out).mkdir(parents=True, exist_ok=True)
    keep = np.float64 if ctx.cfg.dtype == "float64" else np.float32
    return BACKENDS[route](ctx, jrel, out, stage, np.dtype(keep), route)


def gram_cpu(ctx: RunContext, jrel: str, out: str, stage: str, keep: np.dtype,
             route: str) -> SVDResult:
    """The CPU SVD by the Gram route (:mod:`engine.svdjob`), in a child process that also
    summarizes the spectrum from its float64 vectors; its files are moved into ``out/`` and
    recorded. The vectors stay in the child: the result carries its summary."""
    s, vectors, tol = ctx.session, ctx.cfg.spectrum.vectors, ctx.cfg.spectrum.bulk_tol
    for old in s.path.glob(".svdjob.*"):  # left by a killed run (its child died with it)
        shutil.rmtree(old, ignore_errors=True)
    release_memory()  # what the J stage freed goes back to the system, not to this heap
    work = s.path / f".svdjob.{os.getpid()}"
    summary = svdjob.run(s.path / jrel, work, tol, keep, vectors, ctx.should_stop)
    names = ["S.npy"] + (["U.npy", "Vh.npy", "alignment.npy"] if vectors else [])
    written = []
    for name in names:
        os.replace(work / name, s.path / out / name)
        s.record_file(f"{out}/{name}", stage)
        written.append(f"{out}/{name}")
    shutil.rmtree(work, ignore_errors=True)
    return SVDResult(s.load_npy(f"{out}/S.npy"), route, summarized=summary, summary_tol=tol,
                     files=written)


def on_device(ctx: RunContext, jrel: str, out: str, stage: str, keep: np.dtype,
              route: str) -> SVDResult:
    """The SVD on a CUDA device, by the Gram route or the direct one; U and Vh stay there
    (tensors) for the summary."""
    s, sp = ctx.session, ctx.cfg.spectrum
    J = s.load_npy(jrel, mmap=True)
    if route == "gram-cuda":
        U, S_t, Vh = spectrum.svd_gram_device(J, ctx.device, sp.vectors, ctx.should_stop)
    else:
        U, S_t, Vh = spectrum.svd_device(J, ctx.device, sp.vectors, ctx.should_stop,
                                         dtype=np.dtype(sp.svd_dtype))
    S = S_t.double().cpu().numpy()
    s.write_npy(f"{out}/S.npy", S, stage=stage)
    result = SVDResult(S, route, U, Vh, files=[f"{out}/S.npy"])
    if sp.vectors:
        P, tkeep = len(S), torch.float64 if keep == np.float64 else torch.float32
        for rel, M in ((f"{out}/U.npy", U), (f"{out}/Vh.npy", Vh)):
            # (rounded to the kept dtype on the device: a row block crosses once)
            rows = (M[a: a + 4096].to(tkeep).cpu().numpy() for a in range(0, P, 4096))
            files.atomic_save_npy_rows(s.path / rel, (P, P), keep, rows)
            s.record_file(rel, stage)
        result.alignment = torch.einsum("ij,ji->j", U, Vh).double().cpu().numpy()
        s.write_npy(f"{out}/alignment.npy", result.alignment, stage=stage)
        result.files += [f"{out}/U.npy", f"{out}/Vh.npy", f"{out}/alignment.npy"]
    return result


def direct_cpu(ctx: RunContext, jrel: str, out: str, stage: str, keep: np.dtype,
               route: str) -> SVDResult:
    """LAPACK's gesdd on J whole in memory (in ``spectrum.svd_dtype``); U and Vh stay here
    (numpy) for the summary."""
    s, sp = ctx.session, ctx.cfg.spectrum
    J, dt = s.load_npy(jrel, mmap=True), np.dtype(sp.svd_dtype)
    if sp.vectors:
        U, S, Vh = spectrum.svd(J, ctx.device, ctx.should_stop, dtype=dt)
    else:
        U = Vh = None
        S = spectrum.svdvals(J, ctx.should_stop, dtype=dt)
    s.write_npy(f"{out}/S.npy", S, stage=stage)
    result = SVDResult(S, route, U, Vh, files=[f"{out}/S.npy"])
    if sp.vectors:
        s.write_npy(f"{out}/U.npy", U.astype(keep, copy=False), stage=stage)
        s.write_npy(f"{out}/Vh.npy", Vh.astype(keep, copy=False), stage=stage)
        s.write_npy(f"{out}/alignment.npy", spectrum.alignment(U, Vh).astype(np.float64),
                    stage=stage)
        result.files += [f"{out}/U.npy", f"{out}/Vh.npy", f"{out}/alignment.npy"]
    return result


BACKENDS = {"gram-cpu": gram_cpu, "direct-cpu": direct_cpu, "gram-cuda": on_device,
            "direct-cuda": on_device}
