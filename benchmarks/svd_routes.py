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

With ``--device cuda`` it measures the GPU's routes instead: the float64 SVD with vectors by
the Gram route (``svd_gram_device``) and by the direct one (``svd_device``, torch.linalg.svd)
of a random J-like n x n matrix (:data:`J_LIKE`; float32, column-major, as stored) for each n of
``--sizes``, each (route, n) in a process of its own under ``--timeout`` (and ``--budget`` for
all): the seconds (synchronised, after an untimed run at n = 64), the solver call's seconds,
and the peak of ``torch.cuda.max_memory_allocated`` (which counts cuSOLVER's workspace: torch
allocates it) for the whole route and inside the solver call alone, in P^2 float64 beside the
plan's figures (engine.plan.svd_phases); the solver call's extra memory less the arrays the
plan counts new in that phase is the solver's workspace, which cuSOLVER does not document. Then
the least-squares fit t = c n^3 per route, extrapolated to ``--target`` (LeNet-5's P = 61,706).
``--json`` is rewritten after each row (benchmarks/gpu_check.sh runs this; ``--device cpu``
runs the same steps, times only).

Usage::

    tjac run quick --skip-analyses                              # P = 1,210
    tjac run quick --skip-analyses --name quick40 --set "model.hidden=[40]"  # P = 3,010
    python benchmarks/svd_routes.py sessions/quick sessions/quick40 --threads 1
    python benchmarks/svd_routes.py --device cuda --sizes 4096 8192 16384 --json svd.json
"""

from __future__ import annotations

import argparse
import json
import math
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


# the random J-like matrix of the device mode (float32, column-major, as a session stores J)
J_LIKE = ("I + 0.1 n^-1/2 G + (20 / n) X Y^T: G n x n, X and Y n x 8, standard normal entries "
          "(a bulk of singular values around 1 and 8 chaotic ones near 20), float32, "
          "column-major")
# the GPU's routes (engine.plan.svd_route), the function of each and the solver call in it
DEVICE_ROUTES = {"gram-cuda": ("svd_gram_device", "eigh"), "direct-cuda": ("svd_device", "svd")}
SOLVER_PHASE = {"gram-cuda": "eigh (syevd, in place)", "direct-cuda": "gesvdj"}


def j_like(n: int, seed: int = 0) -> np.ndarray:
    """An n x n J-like matrix (:data:`J_LIKE`), column-major float32."""
    rng = np.random.default_rng(seed)
    Jt = rng.standard_normal((n, n), dtype=np.float32)  # J^T, row-major: J column-major
    Jt *= 0.1 / np.sqrt(n)
    Jt[np.diag_indices(n)] += 1
    X, Y = (rng.standard_normal((n, 8), dtype=np.float32) for _ in range(2))
    Jt += (20 / n) * (Y @ X.T)
    return Jt.T


def device_one(route: str, n: int, device: str) -> dict:
    """In a fresh process: the SVD with vectors of :func:`j_like` (n) by the GPU's ``route``
    on ``device``, after an untimed run at n = 64 (CUDA's and cuSOLVER's set-up): its seconds
    (synchronised) and, on CUDA, the peak of torch.cuda.max_memory_allocated above what was
    allocated before, and the same inside the solver call alone (the library's workspace and
    its outputs and copies)."""
    import torch

    from engine import device as device_mod, spectrum

    dev = device_mod.resolve(device)
    device_mod.configure(dev)  # (what a worker sets before its first CUDA call)
    cuda = dev.type == "cuda"
    func, solver = DEVICE_ROUTES[route]
    fn, real = getattr(spectrum, func), getattr(torch.linalg, solver)
    box: dict = {}

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def timed(*a, **k):  # the solver call, timed and measured on its own
        sync()
        if cuda:
            box["peak_before"] = torch.cuda.max_memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
        t0 = time.perf_counter()
        out = real(*a, **k)
        sync()
        box["solver_s"] = time.perf_counter() - t0
        if cuda:
            box["solver_extra"] = torch.cuda.max_memory_allocated(dev) - before
        return out

    fn(np.asfortranarray(np.eye(64)), dev, True)  # (set-up, untimed)
    t0 = time.perf_counter()
    J = j_like(n)
    make_s = time.perf_counter() - t0
    sync()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    setattr(torch.linalg, solver, timed)
    try:
        t0 = time.perf_counter()
        out = fn(J, dev, True)
        sync()
        seconds = time.perf_counter() - t0
    finally:
        setattr(torch.linalg, solver, real)
    row = {"n": n, "route": route, "function": f"engine.spectrum.{func}", "device": str(dev),
           "seconds": seconds, "solver_s": box.get("solver_s"), "matrix_s": make_s}
    if cuda:
        peak = max(box["peak_before"], torch.cuda.max_memory_allocated(dev)) - base
        row.update(peak_bytes=int(peak), solver_extra_bytes=int(box["solver_extra"]),
                   gpu=torch.cuda.get_device_name(dev), torch=torch.__version__,
                   cuda=torch.version.cuda)
    del out
    return row


def memory_figures(row: dict) -> dict:
    """A measured row's memory in P^2 float64 beside the plan's (engine.plan.svd_phases): the
    whole route's peak, and the solver call's extra memory with the workspace it implies (the
    extra minus the arrays and copies the plan counts new in that phase)."""
    from engine import plan

    n, route = row["n"], row["route"]
    unit = 8 * n * n
    phase = dict(plan.svd_phases(route, n, True))[SOLVER_PHASE[route]]
    new = (phase["held"] + phase["inside"]) / unit - 1  # (its input, G or A, existed before)
    out = {"plan_peak_P2": plan.svd_bytes(route, n, True) / unit,
           "plan_solver_workspace_P2": phase["workspace"] / unit}
    if row.get("peak_bytes") is not None:
        out.update(peak_P2=row["peak_bytes"] / unit,
                   solver_extra_P2=row["solver_extra_bytes"] / unit,
                   solver_workspace_P2=row["solver_extra_bytes"] / unit - new)
    return out


def fit(rows: list[dict], target: int) -> dict:
    """Per route, the least-squares fit t = c n^3 over its measured rows (c = sum t n^3 /
    sum n^6), extrapolated to n = ``target``; the exponent the two largest sizes give (3 where
    the cubic model holds); the peak memory in P^2 at the largest size, at ``target``."""
    out = {}
    for route in DEVICE_ROUTES:
        ok = sorted((r for r in rows if r["route"] == route and r.get("seconds")),
                    key=lambda r: r["n"])
        if not ok:
            continue
        c = sum(r["seconds"] * r["n"] ** 3 for r in ok) / sum(float(r["n"]) ** 6 for r in ok)
        sizes = [r["n"] for r in ok]
        f = {"c": c, "sizes": sizes, "target_n": target, "seconds": c * target ** 3,
             "formula": f"extrapolated: t = c n^3, c = {c:.4g} s (least squares over n = "
                        f"{', '.join(f'{n:,}' for n in sizes)}), t({target:,}) = "
                        f"{c * target ** 3:.4g} s",
             "exponent_last_two": (math.log(ok[-1]["seconds"] / ok[-2]["seconds"]) /
                                   math.log(ok[-1]["n"] / ok[-2]["n"])
                                   if len(ok) > 1 and ok[-2]["seconds"] > 0 else None),
             "peak_P2": ok[-1].get("peak_P2")}
        if f["peak_P2"] is not None:
            f["peak_bytes_at_target"] = f["peak_P2"] * 8 * target * target
        out[route] = f
    return out


def on_device(device: str, sizes: list[int], json_path: Path | None = None,
              timeout: float = 300, budget: float | None = None, target: int = 61706) -> dict:
    """The GPU's routes on ``device`` at each n of ``sizes``, each (route, n) in a process of
    its own under ``timeout`` seconds (and what is left of ``budget``): a hung or failed
    cuSOLVER call costs its row, not the rest. A route that failed or timed out at some n is
    not tried at larger ones; a row the fit so far predicts to take longer than the time left
    is skipped. After each row the table line is printed and ``json_path`` rewritten (rows,
    fit)."""
    t_start = time.perf_counter()
    doc = {"what": "float64 SVD with vectors by the GPU's routes, seconds and peak device "
                   "memory per size, and the fit t = c n^3", "device": device,
           "matrix": J_LIKE, "sizes": sizes, "timeout_s": timeout, "budget_s": budget,
           "memory_unit": "P^2 float64 numbers (8 n^2 bytes)", "rows": [], "fit": {}}
    print(f"{device}: float64 SVD with vectors of a J-like n x n matrix, each in its own "
          f"process (timeout {timeout:g} s)")
    print(f"{'n':>7} {'route':<12} {'seconds':>8} {'solver s':>9} {'peak (P^2)':>11} "
          f"{'plan (P^2)':>11} {'syevd/gesvdj extra (P^2)':>25}", flush=True)
    failed: dict[str, int] = {}
    for n in sizes:
        for route in DEVICE_ROUTES:
            left = math.inf if budget is None else budget - (time.perf_counter() - t_start)
            row: dict = {"n": n, "route": route}
            f = doc["fit"].get(route)
            if route in failed:
                row["skipped"] = f"failed at n = {failed[route]:,}"
            elif f and f["c"] * n ** 3 > left:
                row["skipped"] = (f"t = c n^3 predicts {f['c'] * n ** 3:.0f} s, "
                                  f"{max(left, 0):.0f} s left")
            elif left < 1:
                row["skipped"] = "budget spent"
            else:
                cap = min(timeout, left)
                try:
                    r = subprocess.run([sys.executable, os.path.abspath(__file__),
                                        "--device-one", route, str(n), device],
                                       capture_output=True, text=True, timeout=cap)
                    if r.returncode:
                        err = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
                        row["error"] = err
                    else:
                        row.update(json.loads(r.stdout.strip().splitlines()[-1]))
                        row.update(memory_figures(row))
                except subprocess.TimeoutExpired:
                    row["error"] = f"timed out after {cap:g} s"
                if "error" in row:
                    failed[route] = n
            doc["rows"].append(row)
            doc["fit"] = fit(doc["rows"], target)
            if json_path is not None:
                from engine.files import atomic_write_json

                atomic_write_json(json_path, doc)
            print(row_line(row), flush=True)
    for route, f in doc["fit"].items():
        print(f"{route}: {f['formula']}")
    return doc


def row_line(row: dict) -> str:
    """A row of :func:`on_device` as a line of its table."""
    head = f"{row['n']:>7,} {row['route']:<12}"
    if "seconds" not in row:
        return f"{head} {row.get('skipped') and 'skipped: ' + row['skipped'] or row['error']}"

    def p2(key):
        v = row.get(key)
        return "-" if v is None else f"{v:.2f}"

    return (f"{head} {row['seconds']:>8.2f} {row['solver_s']:>9.2f} {p2('peak_P2'):>11} "
            f"{p2('plan_peak_P2'):>11} {p2('solver_extra_P2'):>25}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sessions", nargs="*", help="session directories with a jacobian.npy")
    ap.add_argument("--threads", type=int, help="BLAS threads of each route's process")
    ap.add_argument("--device", help="measure the GPU's routes on this torch device instead")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--timeout", type=float, default=300, help="seconds for each (route, n)")
    ap.add_argument("--budget", type=float, help="seconds for all of them")
    ap.add_argument("--target", type=int, default=61706,
                    help="the n the fit is extrapolated to (default LeNet-5's P)")
    ap.add_argument("--json", type=Path, help="write the rows and the fit here (after each)")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--device-one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    if args.device_one:
        route, n, device = args.device_one
        print(json.dumps(device_one(route, int(n), device)))
        return
    if args.device:
        doc = on_device(args.device, args.sizes, args.json, args.timeout, args.budget,
                        args.target)
        if not any("seconds" in r for r in doc["rows"]):
            raise SystemExit("no size was measured")
        return
    for s in args.sessions:
        compare(Path(s) / "jacobian.npy", s, args.threads)


if __name__ == "__main__":
    main()
