"""The float64 SVD of a stored J by each route, on this machine's CPU: time and peak memory.

Routes (engine.plan.svd_route): LAPACK's gesdd through numpy (direct-cpu), the CPU's Gram route
(engine.svdjob.gram_svd, and its child process end to end: ``svdjob.run``, which also
summarizes and writes the files), and the GPU's Gram route (engine.spectrum.svd_gram_device),
run here with torch on the CPU. Each runs in a fresh process; its time and the growth of its
resident memory during the SVD (peak RSS minus the RSS before it, in P^2 float64; for P^2
below glibc's largest mmap threshold, 32 MB, freed blocks stay resident and this overstates)
are printed beside the plan's figure for the route (engine.plan.svd_bytes: arrays, library
copies and workspace; on the GPU the workspace is cuSOLVER's, here LAPACK's), and the ratios of
the times to gesdd's, all in one run.

With ``--device cuda`` it measures the GPU's routes instead, in this process, on random n x n
J (float32, column-major, as stored) for each n of ``--sizes``: the seconds of
``svd_gram_device`` with and without vectors and of the direct ``svd_device`` (n up to 8,192),
and each one's peak of ``torch.cuda.max_memory_allocated`` (which counts cuSOLVER's workspace:
torch allocates it), in P^2 float64 beside the plan's figure; the peak minus the plan's arrays
and copies is the solver's workspace, which cuSOLVER does not document (benchmarks/gpu_check.sh
runs this; ``--device cpu`` runs the same steps, times only).

Usage::

    tjac run quick --skip-analyses                              # P = 1,210
    tjac run quick --skip-analyses --name quick40 --set "model.hidden=[40]"  # P = 3,010
    python benchmarks/svd_routes.py sessions/quick sessions/quick40 --threads 1
    python benchmarks/svd_routes.py --device cuda --sizes 4096 8192 16384
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ROUTES = ("gesdd", "svdjob.gram_svd", "svdjob child", "svd_gram_device (torch, CPU)")
PLAN_ROUTE = {"gesdd": "direct-cpu", "svdjob.gram_svd": "gram-cpu", "svdjob child": "gram-cpu",
              "svd_gram_device (torch, CPU)": "gram-cuda"}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(route: str, path: str) -> dict:
    """In a fresh process: the SVD with vectors of the J at ``path`` by ``route``."""
    from engine import spectrum, svdjob

    if route.startswith("svd_gram_device"):
        import torch

        torch.linalg.eigh(torch.eye(8, dtype=torch.float64))  # (load LAPACK before timing)
    J = np.load(path, mmap_mode="r")
    before = rss()
    t0 = time.perf_counter()
    if route == "gesdd":
        np.linalg.svd(np.asarray(J, dtype=np.float64))
    elif route == "svdjob.gram_svd":
        svdjob.gram_svd(Path(path))
    elif route == "svdjob child":
        with tempfile.TemporaryDirectory() as work:
            svdjob.run(Path(path), Path(work), 1e-3, np.dtype(np.float32))
    else:
        import torch

        spectrum.svd_gram_device(J, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if route == "svdjob child":  # (its own process, imports included: not comparable)
        return {"seconds": seconds, "grew": None}
    return {"seconds": seconds, "grew": max(0, peak - before)}


def compare(path: Path, label: str, threads: int | None = None) -> None:
    from engine import plan

    env = dict(os.environ)
    if threads:  # BLAS/LAPACK threads of every route's process (numpy's OpenBLAS, torch's MKL)
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                              "MKL_NUM_THREADS")})

    P = np.load(path, mmap_mode="r").shape[0]
    res = {}
    for route in ROUTES:
        out = subprocess.run([sys.executable, __file__, "--one", route, str(path)],
                             capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"{route}: {out.stderr.strip().splitlines()[-1]}")
        res[route] = json.loads(out.stdout.strip().splitlines()[-1])
    base = res["gesdd"]["seconds"]
    unit = 8 * P * P
    print(f"{label}: P = {P:,}, float64 SVD with vectors, {os.cpu_count()} CPUs, "
          f"{threads or 'default'} thread(s)")
    print(f"{'route':<30} {'seconds':>8} {'/ gesdd':>8} {'RSS grew (P^2)':>15} "
          f"{'plan (P^2)':>11}")
    for route, r in res.items():
        figure = plan.svd_bytes(PLAN_ROUTE[route], P, True) / unit
        grew = "-" if r["grew"] is None else f"{r['grew'] / unit:.2f}"
        print(f"{route:<30} {r['seconds']:>8.2f} {r['seconds'] / base:>8.2f} {grew:>15} "
              f"{figure:>11.2f}")
    print()


def on_device(device: str, sizes: list[int]) -> None:
    """The GPU's routes on ``device``: seconds and peak device memory per size (see above)."""
    import torch

    from engine import plan, spectrum

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    spectrum.svd_gram_device(np.asfortranarray(np.eye(64)), dev)  # (set-up, untimed)
    print(f"{device}: " + (torch.cuda.get_device_name(dev) + f", torch {torch.__version__}, "
                           f"CUDA {torch.version.cuda}" if cuda else "times only"))
    print(f"{'n':>7} {'route':<24} {'seconds':>8} {'peak (P^2)':>11} {'plan (P^2)':>11}")
    rng = np.random.default_rng(0)
    for n in sizes:
        J = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
        unit = 8 * n * n
        runs = [("gram, vectors", "gram-cuda", True), ("gram, values", "gram-cuda", False)]
        if n <= 8192:
            runs.append(("direct, vectors", "direct-cuda", True))
        for name, route, vectors in runs:
            fn = spectrum.svd_gram_device if route == "gram-cuda" else spectrum.svd_device
            if cuda:
                torch.cuda.synchronize(dev)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            try:
                out = fn(J, dev, vectors)
                if cuda:
                    torch.cuda.synchronize(dev)
            except (RuntimeError, ValueError) as e:  # e.g. cuSOLVER refusing a size
                print(f"{n:>7,} {name:<24} failed: {str(e).strip().splitlines()[0]}",
                      flush=True)
                continue
            seconds = time.perf_counter() - t0
            peak = (torch.cuda.max_memory_allocated(dev) - base) / unit if cuda else float("nan")
            del out
            figure = plan.svd_bytes(route, n, vectors) / unit
            print(f"{n:>7,} {name:<24} {seconds:>8.2f} {peak:>11.2f} {figure:>11.2f}",
                  flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sessions", nargs="*", help="session directories with a jacobian.npy")
    ap.add_argument("--threads", type=int, help="BLAS threads of each route's process")
    ap.add_argument("--device", help="measure the GPU's routes on this torch device instead")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    if args.device:
        return on_device(args.device, args.sizes)
    for s in args.sessions:
        compare(Path(s) / "jacobian.npy", s, args.threads)


if __name__ == "__main__":
    main()
