"""The Jacobian's chunks on several processes: ``torch.distributed`` ranks started by torchrun.

    torchrun --standalone --nproc-per-node N -m engine.distributed SESSION     one box
    torchrun --nnodes M --nproc-per-node N --rdzv-endpoint HOST:PORT \\
             -m engine.distributed SESSION                                   several nodes
    tjac run PRESET --nproc N   /   tjac resume SESSION --nproc N            the same, started
                                                                             by tjac (launch())

The session directory must be on a filesystem every rank sees. On CUDA (``cuda``, ``cuda:N``, or
``auto`` where CUDA is available) the rank with LOCAL_RANK r computes on cuda:r, so a node needs
a GPU for each of its ranks: with fewer, every rank stops in one line naming the GPU count
before the session is created or touched (``tjac run --nproc N`` refuses it before it starts).

Rank 0 is the session's worker: it holds the session lock, trains (once), opens the Jacobian
store and those of the snapshots (``jacobian.snapshots``: J_{0->t} at steps t, written as the
training passes them; checking every chunk already recorded, merging what earlier ranks left),
and hands out the chunks that any of them lacks, round-robin. Every rank then computes its
share and writes each chunk into the shared, preallocated ``jacobian.npy`` and the snapshots'
files (distinct byte ranges: one ``pwrite`` each). Rank 0 records its chunks in
``jacobian.progress.json`` as a single process does; rank r > 0 records its own in
``jacobian.progress.rank<r>.json``, a file only it writes (atomically replaced), so no record is
ever written by two processes. Once every rank is through, rank 0 checks the other ranks' chunks
against their digests, merges their records into the main ones, and goes on with the SVDs and
the analyses alone.

A rank that dies loses only the chunks it had not recorded yet (the one under way, and the one
or two being written behind it, :class:`engine.jacobian.ChunkWriter`): torchrun then stops the others (rank 0 marks
the session interrupted, or it is left "stale" if it was killed), and ``tjac resume`` with any
number of processes, one included, merges the records the ranks left and computes what is
missing. The ranks exchange only small control messages (the share of each rank, "done"), over
gloo on every device: the Jacobian itself goes through the shared files, never through NCCL.

Events: every rank appends its ``jacobian_chunk`` events, with its ``rank``, to the session's
``events.jsonl`` (one line per ``write`` on a file opened for appending); ``done`` counts the
chunks recorded by all ranks at that moment, and the TUI sums the ranks' rates.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import device as device_mod, jacobian as jac_mod
from . import plan as plan_mod
from .runner import EXIT_INTERRUPTED, EXIT_OK, Runner
from .session import Session, SessionError
from .stages import RunContext, Share, jacobian as jacobian_stage
from .worker import boot, spawn

# a rank waits this long for rank 0 to finish training (and for the others to finish their
# chunks) before giving up; torchrun stops every rank at once when one of them dies
TIMEOUT = datetime.timedelta(hours=24)


def rank_device(cfg_device: str, local_rank: int) -> str | None:
    """The device of a rank: its own GPU (cuda:LOCAL_RANK) where the run is on CUDA, else the
    config's (None: the config decides)."""
    if cfg_device.startswith("cuda") or (cfg_device == "auto" and torch.cuda.is_available()):
        return f"cuda:{local_rank}"
    return None


def shares(pending: list[int], world: int) -> list[list[int]]:
    """The pending chunks of each rank: round-robin, so every rank gets ~the same work."""
    return [pending[r::world] for r in range(world)]


class RankShare(Share):
    """Rank 0's split of the jacobian stage among the ranks (:class:`engine.stages.Share`)."""

    def __init__(self, world: int):
        self.world = world
        self.released = False  # the other ranks have been told what to do

    def of(self, ctx: RunContext, store: jac_mod.JacobianStore,
           snapshots: dict[int, jac_mod.JacobianStore]) -> list[int]:
        """Every chunk that J or a snapshot still lacks, round-robin; the ranks are told the
        chunk size, their shares and which chunks each store has already."""
        everyone = [store, *snapshots.values()]
        parts = shares(sorted({i for st in everyone for i in st.pending}), self.world)
        send([{"go": True, "chunk": store.chunk, "shares": parts, "done": sorted(store.done),
               "snapshots": {t: sorted(st.done) for t, st in snapshots.items()}}])
        self.released = True
        ctx.emit("jacobian_ranks", ranks=self.world, shares=[len(p) for p in parts])
        return parts[0]

    def after(self, ctx: RunContext, store: jac_mod.JacobianStore,
              snapshots: dict[int, jac_mod.JacobianStore]) -> None:
        """Wait for every rank, then take their chunks into the main records of J and of
        each snapshot (each checked against its digest; a missing or damaged one is computed
        here)."""
        try:
            dist.barrier()
        except RuntimeError:  # a rank left: on a stop request, that is the stop (resumable)
            if ctx.should_stop():
                raise KeyboardInterrupt from None
            raise
        bad = [i for st in [store, *snapshots.values()] for i in st.merge_ranks()]
        if bad:
            ctx.emit("warning", message=f"jacobian: {len(bad)} chunk(s) of other ranks did not "
                                        "match their digests; computing them here")
        if any(st.pending for st in [store, *snapshots.values()]):
            jac_mod.compute_into(store, ctx.problem, ctx.theta0,
                                 should_stop=ctx.should_stop, snapshots=snapshots)

    def done(self) -> None:
        if not self.released:  # nothing to share (done already, or failed before)
            send([{"go": False}])


def distributed_runner(session: Session, world: int, device: str | None = None) -> Runner:
    """Rank 0: the session's worker, with the Jacobian stage shared among the ranks."""
    runner = Runner(session, device=device, share=RankShare(world))
    runner.world = world
    return runner


def send(msg: list) -> None:
    dist.broadcast_object_list(msg, src=0)


def rank_main(path: Path, rank: int, world: int, device: str | None) -> int:
    """A rank other than 0: build the training problem (read-only), wait for its share,
    compute it into the store."""
    runner = Runner(Session(path), device=device)
    runner.rank, runner.world = rank, world
    runner.stop_on_signals()
    msg: list = [None]
    dist.broadcast_object_list(msg, src=0)  # rank 0 has trained by now (or given up)
    if not msg[0]["go"]:
        return EXIT_OK
    runner.build()
    go, P, dtype = msg[0], runner.layout.size, np.dtype(runner.cfg.dtype)
    store = jac_mod.JacobianStore.for_rank(path, P, go["chunk"], dtype, rank, go["done"])
    snapshots = {t: jac_mod.JacobianStore.for_rank(path / plan_mod.snapshot_dir(t), P,
                                                   go["chunk"], dtype, rank, done)
                 for t, done in go["snapshots"].items()}
    try:
        jacobian_stage.compute(runner.context(), store, {}, go["shares"][rank], snapshots)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    dist.barrier()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m engine.distributed",
                                 description="One rank of a distributed tjac run (start it with "
                                             "torchrun).")
    ap.add_argument("session", help="the session directory (on a filesystem every rank sees)")
    ap.add_argument("--preset", help="create the session from this preset file if it does not "
                                     "exist yet (rank 0 does; every node runs the same command)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="with --preset: override a config key (repeatable)")
    args = ap.parse_args(argv)
    if "RANK" not in os.environ:
        print("engine.distributed: start it with torchrun (or `tjac run --nproc N`)",
              file=sys.stderr)
        return 2
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    path = Path(args.session)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # the ranks this node runs (torchrun sets LOCAL_WORLD_SIZE; a rank knows at least its own)
    here = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), local + 1)
    dist.init_process_group("gloo", timeout=TIMEOUT)
    code = 2
    try:
        cfg, why = run_config(path, args.preset, args.set) if rank == 0 else (None, None)
        msg = [(why, cfg.device if cfg is not None else None)]
        send(msg)  # every rank learns whether there is a session to run, and its device
        why, cfg_device = msg[0]
        if why is None:  # every rank has its GPU, or none goes on (nothing is created)
            found: list = [None] * world
            dist.all_gather_object(found, missing_gpu(cfg_device, local, here))
            why = next((w for w in found if w), None)
        if why is None:
            msg = [create(path, args.preset, cfg) if rank == 0 else None]
            send(msg)
            why = msg[0]
        if why is not None:
            print(f"{path}: {why}", file=sys.stderr)
            return 2
        device = rank_device(cfg_device, local)
        if device is not None:
            torch.cuda.set_device(local)
        if rank == 0:
            runner = distributed_runner(Session(path), world, device)
            runner.stop_on_signals()
            code = runner.run()
        else:
            code = rank_main(path, rank, world, device)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    if threading.active_count() > 1:  # an abandoned SVD thread: do not wait for it
        os._exit(code)
    return code


def run_config(path: Path, preset: str | None, overrides: list[str]):
    """Rank 0: (the config of the session at ``path``, or of the preset it is to be created
    from, None), or (None, why there is nothing to run: one line). Creates nothing."""
    from .config import ConfigError, load

    if Session(path).exists():
        try:
            return Session(path).config(), None
        except (SessionError, OSError, ValueError) as e:
            return None, str(e)
    if preset is None:
        return None, "no such session (pass --preset PRESET to create it)"
    try:
        return load(preset, overrides), None
    except ConfigError as e:
        return None, str(e)


def create(path: Path, preset: str | None, cfg) -> str | None:
    """Rank 0: the session at ``path`` made from ``cfg`` (the preset's) unless it exists;
    None, or why not."""
    if Session(path).exists():
        return None
    made = Session.create(path.parent, path.name, cfg, str(preset))
    if made.path != path:  # cannot happen: the name was free a moment ago
        return f"created as {made.path} instead"
    return None


def missing_gpu(cfg_device: str, local_rank: int, local_ranks: int) -> str | None:
    """Why this rank cannot compute on its GPU (cuda:LOCAL_RANK, where the run is on CUDA:
    :func:`rank_device`), in the words ``tjac run --nproc`` uses; None when it can, or runs
    on the CPU. ``local_ranks``: the ranks on this node."""
    if rank_device(cfg_device, local_rank) is None:
        return None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank < gpus:
        return None
    return device_mod.too_few_gpus(local_ranks, gpus, "--nproc-per-node")


def launch(path: str | Path, nproc: int) -> subprocess.Popen:
    """Start ``nproc`` ranks on this machine on the session (torchrun, standalone), in their
    own process session like a single worker (:func:`engine.worker.spawn`: the same
    environment, output to ``worker.log``, no module taken from the current directory)."""
    path = Path(path).absolute()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={int(nproc)}", "--no-python", sys.executable, "-c",
           boot("engine.distributed"), "--", str(path)]
    # the cores split among the ranks (torchrun would give each one thread); also what rank 0
    # computes the SVD with afterwards
    threads = str(max(1, (os.cpu_count() or 1) // int(nproc)))
    return spawn(cmd, path / "worker.log", {"OMP_NUM_THREADS": os.environ.get(
        "OMP_NUM_THREADS", threads)})


if __name__ == "__main__":
    sys.exit(main())
