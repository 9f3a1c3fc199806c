"""The jacobian stage: J (and the snapshots' J_{0->t}) chunk by chunk into the stores, each
chunk's theta_T checked against thetaT.npz. How the chunks are split among processes is the
context's :class:`engine.stages.Share` (:mod:`engine.distributed` has the ranks' own)."""

from __future__ import annotations

import time

import numpy as np
import torch

from .. import jacobian as jac_mod, plan as plan_mod
from ..session import Session
from . import RunContext

# a chunk's theta_T may differ from thetaT.npz by at most this, relative to max(1, |theta_T|)
PRIMAL_DEV_FLOAT32 = 1e-4
PRIMAL_DEV_FLOAT64 = 1e-10


class PrimalMismatch(RuntimeError):
    """The training inside the Jacobian does not reproduce the stored theta_T."""


def primal_bound(thetaT: torch.Tensor, dtype: torch.dtype) -> float:
    """How far a chunk's theta_T may be from the stored one: 0 in principle (the same
    operations on the same device), a few float32 ulps of amplification at most."""
    scale = max(1.0, float(thetaT.abs().max()))
    return (PRIMAL_DEV_FLOAT64 if dtype == torch.float64 else PRIMAL_DEV_FLOAT32) * scale


def run(ctx: RunContext) -> None:
    """J chunk by chunk into the store. The chunk size is the stored one (a resume), the
    preset's, or chosen on this device (:func:`engine.jacobian.auto_chunk`); while no chunk
    is finished, running out of memory halves it (recorded as ``chunk_fallbacks``)."""
    s, P, cfg = ctx.session, ctx.layout.size, ctx.cfg
    info = s.manifest().get("stages", {}).get("jacobian", {})
    chunk = info.get("chunk") or cfg.jacobian.chunk or jac_mod.auto_chunk(
        ctx.problem, ctx.theta0, ctx.device, ctx.dtype)
    fallbacks = list(info.get("chunk_fallbacks", []))
    while True:
        s.set_stage("jacobian", chunk=chunk)
        store = jac_mod.JacobianStore(s.path, P, chunk, np.dtype(cfg.dtype))
        snaps = snapshot_stores(ctx, chunk)
        try:
            compute(ctx, store, info, snapshots=snaps)
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
        jac_mod.release_chunk_memory(ctx.problem)
        new = max(1, chunk // 2)
        fallbacks.append({"from": chunk, "to": new})
        s.set_stage("jacobian", chunk_fallbacks=fallbacks)
        ctx.emit("warning", message=f"jacobian: out of memory with chunks of {chunk} "
                                    f"columns; trying {new}")
        chunk = new
    s.record_file("jacobian.npy", "jacobian", blocks=store.record())
    for t, st in snaps.items():
        s.record_file(f"{plan_mod.snapshot_dir(t)}/jacobian.npy", "jacobian",
                      blocks=st.record())


def snapshot_stores(ctx: RunContext, chunk: int) -> dict[int, jac_mod.JacobianStore]:
    """The stores of the snapshots whose J is wanted: every one with
    ``snapshot_keep = "jacobian"``, else those not analysed yet (a deleted J is not
    computed again). A store with chunks to compute makes what was computed from that
    snapshot's J stale (:meth:`RunContext.stale`): it is done again."""
    s, P, out = ctx.session, ctx.layout.size, {}
    keep_j = ctx.cfg.jacobian.snapshot_keep == "jacobian"
    for t in ctx.plan.snapshots:
        d = plan_mod.snapshot_dir(t)
        if not keep_j and snapshot_analysed(s, d):
            continue
        (s.path / d).mkdir(parents=True, exist_ok=True)
        st = out[t] = jac_mod.JacobianStore(s.path / d, P, chunk, np.dtype(ctx.cfg.dtype))
        if st.pending:  # what its J gave is computed again once the chunks are in
            ctx.stale(lambda rel, d=d: rel.startswith(d + "/") and rel != d + "/jacobian.npy")
    return out


def snapshot_analysed(session: Session, d: str) -> bool:
    """Whether snapshot folder ``d`` has its summary recorded, and it and the SVD's files
    are intact."""
    files = session.manifest().get("files", {})
    mine = {rel for rel in files if rel.startswith(d + "/") and rel != f"{d}/jacobian.npy"}
    return f"{d}/spectrum.json" in mine and not session.verify(only=mine)


def compute(ctx: RunContext, store: jac_mod.JacobianStore, info: dict,
            indices: list[int] | None = None,
            snapshots: dict[int, jac_mod.JacobianStore] | None = None) -> None:
    """Compute the chunks ``indices`` (default: this process's share of the pending ones,
    :meth:`engine.stages.Share.of`), emitting an event per chunk and checking each chunk's
    theta_T against thetaT.npz."""
    s, P, lead, world = ctx.session, ctx.layout.size, ctx.rank == 0, ctx.world
    if store.damaged:
        ctx.emit("warning", message=f"jacobian.npy: {len(store.damaged)} chunk(s) did not "
                                    f"match their digests (first: {store.damaged[0]}); "
                                    "computing them again")
    thetaT = ctx.thetaT().cpu()  # (a chunk's theta_T comes to on_chunk on the host)
    bound = primal_bound(thetaT, ctx.dtype)
    if lead:
        ctx.emit("jacobian_start", total=P, chunk=store.chunk, chunks=len(store.ranges),
                 done=store.columns_done)
    snapshots = snapshots or {}
    if indices is None:
        indices = ctx.share.of(ctx, store, snapshots)
    t0, mine = time.perf_counter(), [0]
    worst = [float(info.get("primal_dev", 0.0))]
    ranked = {"rank": ctx.rank} if world > 1 else {}
    if ranked:
        ranked["rank_done"] = 0  # this rank's columns so far (of this attempt)

    def on_chunk(index: int, cols: range, theta_T: torch.Tensor) -> None:
        dev = float((theta_T - thetaT).abs().max())
        worst[0] = max(worst[0], dev)
        mine[0] += len(cols)
        if ranked:
            ranked["rank_done"] = mine[0]
        done = store.columns_done_all() if world > 1 else store.columns_done
        rate = mine[0] / max(time.perf_counter() - t0, 1e-9)  # this process's
        mem = {}
        if ctx.device.type == "cuda":  # the TUI is another process: report it here
            mem = {"gpu_mem": torch.cuda.memory_allocated(ctx.device),
                   "gpu_mem_peak": torch.cuda.max_memory_allocated(ctx.device)}
        ctx.emit("jacobian_chunk", chunk=index, done=done, total=P, rate=round(rate, 3),
                 eta=round((P - done) / (rate * world), 1) if rate > 0 else None,
                 primal_dev=dev, **ranked, **mem)
        if dev > bound:
            if lead:  # what the message promises: the next run trains again (and, if
                # that changes thetaT.npz, computes J again)
                ctx.rerun_writer_of("thetaT.npz")
            raise PrimalMismatch(
                f"the training inside the Jacobian reached a theta_T {dev:.3g} away from "
                f"thetaT.npz (allowed: {bound:.3g}): thetaT.npz is not the training of "
                "this config; `tjac resume` trains again")

    try:
        jac_mod.compute_into(store, ctx.problem, ctx.theta0, on_chunk, ctx.should_stop,
                             indices, snapshots)
        if lead:
            ctx.share.after(ctx, store, snapshots)
    finally:
        if lead:  # the manifest is rank 0's alone
            s.set_stage("jacobian", primal_dev=worst[0], primal_bound=bound,
                        columns_done=store.columns_done)
