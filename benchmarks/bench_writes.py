"""Chunk writes behind the computation: the Jacobian stage of a preset with each chunk written
before the next one computes (as it was done before engine.jacobian.ChunkWriter) against
``compute_into``, which writes each chunk on a thread while the next one trains.

    python benchmarks/bench_writes.py                           # paper-digits-sgd, 3 chunks
    python benchmarks/bench_writes.py --device cuda --chunks 0  # every chunk, on the GPU
    python benchmarks/bench_writes.py --dir /scratch/tjac       # on the sessions' disk

Both ways compute the same chunks from the same recorded trajectory into stores of their own
in ``--dir`` (a temporary folder by default, removed afterwards): it prints the seconds of each
way and their ratio, the seconds the writes took in the first way (copy to the host, pwrite,
fdatasync, digest, progress record), and checks that the two files are bitwise equal. The
saving is at most the writes' share: small on the CPU, where a chunk takes seconds to compute
and milliseconds to write; the point is a GPU, where the two are of the same order.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    import numpy as np
    import torch

    from engine import config, jacobian, train
    from engine.build import build

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper-digits-sgd")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, default=0, help="0 = the engine's automatic choice")
    ap.add_argument("--chunks", type=int, default=3, help="chunks to compute (0: all)")
    ap.add_argument("--dir", type=Path, help="where the two stores go (default: a temporary "
                                             "folder)")
    args = ap.parse_args()

    cfg = config.load(REPO / "presets" / f"{args.preset}.toml", [f"device={args.device}"])
    b = build(cfg)
    dev, dtype, problem, theta0 = b.device, b.dtype, b.problem, b.theta0
    P = theta0.numel()
    chunk = args.chunk or jacobian.auto_chunk(problem, theta0, dev, dtype)
    ranges = jacobian.chunk_ranges(P, chunk)
    todo = list(range(len(ranges) if args.chunks <= 0 else min(args.chunks, len(ranges))))
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-writes-"))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    try:
        (root / "in-turn").mkdir()
        (root / "behind").mkdir()
        turn = jacobian.JacobianStore(root / "in-turn", P, chunk, np.dtype(cfg.dtype))
        behind = jacobian.JacobianStore(root / "behind", P, chunk, np.dtype(cfg.dtype))
        jacobian.jacobian_columns(problem.truncated(1), theta0, range(min(2, P)))  # warm-up
        sync()
        t0 = time.perf_counter()
        traj = train.record_trajectory(problem, theta0)
        writes = 0.0
        for i in todo:
            _, block = jacobian.jacobian_columns(problem, theta0, ranges[i], trajectory=traj)
            sync()
            w0 = time.perf_counter()
            turn.write(i, block.T.cpu().numpy())
            writes += time.perf_counter() - w0
        t_turn = time.perf_counter() - t0
        t0 = time.perf_counter()
        jacobian.compute_into(behind, problem, theta0, indices=todo)
        sync()
        t_behind = time.perf_counter() - t0
        ncols = ranges[todo[-1]].stop
        same = np.array_equal(np.load(turn.path, mmap_mode="r")[:, :ncols],
                              np.load(behind.path, mmap_mode="r")[:, :ncols])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.preset} on {dev}: P = {P:,}, {problem.steps} steps, {len(todo)} chunk(s) of "
          f"{chunk} columns ({chunk * P * np.dtype(cfg.dtype).itemsize / 1e6:.1f} MB each)")
    print(f"each chunk written before the next computes: {t_turn:.2f} s (writes {writes:.2f} s)")
    print(f"written behind the computation:              {t_behind:.2f} s")
    print(f"ratio {t_turn / t_behind:.3f}; files bitwise equal: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
