"""Exact-Jacobian benchmark: time, columns/s and peak memory, ours vs torch.func, per model size.

    python benchmarks/bench_jacobian.py                    # paper-digits SGD + Adam, sizes
    python benchmarks/bench_jacobian.py --cases paper-sgd --baseline-columns 0
    python benchmarks/bench_jacobian.py --device cuda --json out.json

Every case runs in a fresh subprocess (so peak RSS is that case's own), computes the training
(the paper's 625 steps unless the case says otherwise) and then J column chunk by column chunk,
exactly as a session does (``engine.jacobian.exact_jacobian`` minus the disk writes).

Two kernels are timed in the same run: ``mlp`` (the fused forward-over-reverse kernel, what
tjac uses for MLPs) and ``generic`` (torch.func: jvp of grad, vmapped over the chunk). The
baseline is slow, so by default it runs only the first ``--baseline-columns`` columns and its
full time is extrapolated from its columns/s (printed as such).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {
    # name: (preset, overrides)
    "quick": ("quick", []),
    "paper-sgd": ("paper-digits-sgd", []),
    "paper-adam": ("paper-digits-adam", []),
    "mlp-32": ("paper-digits-sgd", ["model.hidden=[32]"]),
    "mlp-128": ("paper-digits-sgd", ["model.hidden=[128]", "train.epochs=5"]),
    "mlp-64x64": ("paper-digits-sgd", ["model.hidden=[64, 64]", "train.epochs=5"]),
}


def one(case: str, kernel: str, columns: int, device: str, chunk: int, threads: int) -> dict:
    """Run inside the subprocess: time J (or its first ``columns`` columns)."""
    import torch

    from engine import config, data, jacobian, models, train
    from engine import device as device_mod

    if threads:
        torch.set_num_threads(threads)
    preset, overrides = CASES[case]
    cfg = config.load(REPO / "presets" / f"{preset}.toml", overrides + [f"device={device}"])
    dev = device_mod.resolve(cfg.device)
    device_mod.configure(dev)  # full float32, deterministic: what a session computes with
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    ds = data.load(cfg.data)
    module = models.build(cfg.model, ds.n_features, ds.n_classes, cfg.seed)
    problem = train.make_problem(module, ds, cfg.train, cfg.seed, dev, dtype, kernel)
    theta0 = train.initial_theta(module, dev, dtype)
    P = theta0.numel()
    chunk = chunk or jacobian.auto_chunk(problem, theta0, dev, dtype)
    ncols = P if columns <= 0 else min(columns, P)
    t0 = time.perf_counter()
    train.train(problem, theta0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter() - t0
    # warm-up outside the timing: the first call of torch.func imports and builds its machinery
    jacobian.jacobian_columns(problem, theta0, range(min(2, P)))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for start in range(0, ncols, chunk):
        _, block = jacobian.jacobian_columns(problem, theta0, range(start, min(start + chunk, ncols)))
        block.cpu()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_jac = time.perf_counter() - t0
    out = {"case": case, "kernel": kernel, "P": P, "steps": problem.steps, "chunk": chunk,
           "columns": ncols, "train_s": t_train, "jac_s": t_jac, "cols_per_s": ncols / t_jac,
           "full_jac_s": t_jac * P / ncols, "extrapolated": ncols < P, "device": str(dev),
           "threads": torch.get_num_threads(),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def spawn(case: str, kernel: str, columns: int, args) -> dict:
    """One case in a fresh process; a failure is a row with its error (the others still run)."""
    cmd = [sys.executable, __file__, "--one", case, "--kernel", kernel, "--columns", str(columns),
           "--device", args.device, "--chunk", str(args.chunk), "--threads", str(args.threads)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                           timeout=args.case_timeout or None)
    except subprocess.TimeoutExpired:
        return {"case": case, "kernel": kernel, "error": f"timed out after {args.case_timeout} s"}
    if r.returncode:
        tail = [line for line in r.stderr.strip().splitlines() if line.strip()][-1:] or ["?"]
        return {"case": case, "kernel": kernel, "error": f"exit {r.returncode}: {tail[0]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="paper-sgd,paper-adam,mlp-32,mlp-128,mlp-64x64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, default=0, help="0 = the engine's automatic choice")
    ap.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    ap.add_argument("--baseline-columns", type=int, default=256,
                    help="columns the torch.func baseline computes (0 = skip, -1 = all)")
    ap.add_argument("--json", help="also write the rows here, each as soon as it is measured "
                                   "(JSON lines)")
    ap.add_argument("--case-timeout", type=float, default=0,
                    help="seconds a case may take (0 = no limit); a case over it is a row "
                         "with its error")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--kernel", default="mlp", help=argparse.SUPPRESS)
    ap.add_argument("--columns", type=int, default=-1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.kernel, args.columns, args.device, args.chunk,
                             args.threads)))
        return 0

    import platform

    import torch

    print(f"# {platform.node()}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} cpus  torch {torch.__version__}  device {args.device}")
    rows = []
    head = (f"{'case':<11} {'kernel':<8} {'P':>6} {'steps':>5} {'chunk':>5} {'J time s':>9} "
            f"{'cols/s':>8} {'peak RSS MB':>11} {'vs generic':>10}")
    print(head)
    print("-" * len(head))
    out = open(args.json, "w") if args.json else None
    failed = 0

    def emit(r: dict, note: str = "") -> None:
        nonlocal failed
        rows.append(r)
        if out is not None:
            out.write(json.dumps(r) + "\n")
            out.flush()
        if "error" in r:
            failed += 1
            print(f"{r['case']:<11} {r['kernel']:<8} FAILED: {r['error']}", flush=True)
            return
        mark = "*" if r["extrapolated"] else " "
        print(f"{r['case']:<11} {r['kernel']:<8} {r['P']:>6} {r['steps']:>5} {r['chunk']:>5} "
              f"{r['full_jac_s']:>8.1f}{mark} {r['cols_per_s']:>8.1f} "
              f"{r['peak_rss_mb']:>11.0f} {note:>10}", flush=True)

    for case in [c for c in args.cases.split(",") if c]:
        ours = spawn(case, "mlp", -1, args)
        base = spawn(case, "generic", args.baseline_columns, args) \
            if args.baseline_columns else None
        ok = base is not None and "error" not in base and "error" not in ours
        emit(ours, f"{base['full_jac_s'] / ours['full_jac_s']:.2f}x" if ok else "-")
        if base is not None:
            emit(base)
    print("* extrapolated from the first columns' rate; 'vs generic' = generic time / mlp time")
    if out is not None:
        out.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
