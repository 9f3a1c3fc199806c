"""Exact-Jacobian benchmark: time, column-steps/s and peak memory, the fused kernel vs torch.func.

    python benchmarks/bench_jacobian.py                    # paper-digits SGD + Adam, sizes
    python benchmarks/bench_jacobian.py --ladder           # P = 4.8k, 15k, 61,706 (LeNet-5)
    python benchmarks/bench_jacobian.py --cases paper-sgd --baseline-columns 0
    python benchmarks/bench_jacobian.py --device cuda --json out.jsonl

Every case runs in a fresh subprocess (so peak RSS is that case's own), computes the training
and then J column chunk by column chunk, exactly as a session does (``engine.jacobian`` minus
the disk writes), in full float32 with deterministic algorithms (``engine.device.configure``).

Two kernels are timed in the same run: ``fused`` (the hand-derived forward-over-reverse kernel
of the built-in MLP or conv net) and ``generic`` (torch.func: jvp of grad, vmapped over the
chunk). A case may compute only its first columns (``--columns``, the generic baseline
``--baseline-columns``): the full J time is then extrapolated from its rate, and marked so.
Rates are column-steps per second (one tangent column carried through one training step), so
that cases of different step counts compare; a case with a target step count (LeNet-5 at a
reduced number of steps) also extrapolates to it (the appendix's 900 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Case:
    preset: str
    overrides: list[str] = field(default_factory=list)
    columns: int = -1  # fused-kernel columns to compute (-1: all)
    target_steps: int | None = None  # also extrapolate J to this many steps


CASES = {
    "quick": Case("quick"),
    "cnn-quick": Case("cnn-quick"),
    "paper-sgd": Case("paper-digits-sgd"),
    "paper-adam": Case("paper-digits-adam"),
    "mlp-32": Case("paper-digits-sgd", ["model.hidden=[32]"]),
    "mlp-128": Case("paper-digits-sgd", ["model.hidden=[128]", "train.epochs=5"]),
    "mlp-64x64": Case("paper-digits-sgd", ["model.hidden=[64, 64]", "train.epochs=5"]),
    # the ladder: P = 4,810, 15,010 and 61,706
    "ladder-4.8k": Case("paper-digits-sgd", [], columns=1024),
    "ladder-15k": Case("paper-digits-sgd", ["model.hidden=[200]", "train.epochs=1"],
                       columns=1024),
    "ladder-lenet5": Case("lenet5-digits28", ["train.epochs=1"], columns=256, target_steps=900),
}
LADDER = ["ladder-4.8k", "ladder-15k", "ladder-lenet5"]


def one(case: str, kernel: str, columns: int, device: str, chunk: int, threads: int) -> dict:
    """Run inside the subprocess: time J (or its first ``columns`` columns)."""
    import torch

    from engine import config, data, jacobian, models, train
    from engine import device as device_mod

    if threads:
        torch.set_num_threads(threads)
    c = CASES[case]
    cfg = config.load(REPO / "presets" / f"{c.preset}.toml", c.overrides + [f"device={device}"])
    dev = device_mod.resolve(cfg.device)
    device_mod.configure(dev)  # full float32, deterministic: what a session computes with
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    ds = data.load(cfg.data)
    module = models.build(cfg.model, ds.n_features, ds.n_classes, cfg.seed, ds.image_shape)
    problem = train.make_problem(module, ds, cfg.train, cfg.seed, dev, dtype, kernel)
    theta0 = train.initial_theta(module, dev, dtype)
    P = theta0.numel()
    chunk = chunk or jacobian.auto_chunk(problem, theta0, dev, dtype)
    if columns == 0:
        columns = c.columns
    ncols = P if columns < 0 else min(columns, P)
    t0 = time.perf_counter()
    train.train(problem, theta0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter() - t0
    # warm-up outside the timing: the first call of torch.func imports and builds its machinery
    jacobian.jacobian_columns(problem.truncated(1), theta0, range(min(2, P)))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for start in range(0, ncols, chunk):
        _, block = jacobian.jacobian_columns(problem, theta0,
                                             range(start, min(start + chunk, ncols)))
        block.cpu()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_jac = time.perf_counter() - t0
    rate = ncols * problem.steps / t_jac
    out = {"case": case, "kernel": kernel, "P": P, "steps": problem.steps, "chunk": chunk,
           "columns": ncols, "train_s": t_train, "jac_s": t_jac, "cols_per_s": ncols / t_jac,
           "col_steps_per_s": rate, "full_jac_s": P * problem.steps / rate,
           "extrapolated": ncols < P, "device": str(dev), "threads": torch.get_num_threads(),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if c.target_steps:
        out["target_steps"] = c.target_steps
        out["target_jac_s"] = P * c.target_steps / rate
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


def fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="paper-sgd,paper-adam,mlp-32,mlp-128,mlp-64x64")
    ap.add_argument("--ladder", action="store_true",
                    help="the cases " + ", ".join(LADDER) + " (P = 4.8k, 15k, 61,706)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, default=0, help="0 = the engine's automatic choice")
    ap.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    ap.add_argument("--columns", type=int, default=0,
                    help="columns of the fused kernel (0 = the case's own; -1 = all)")
    ap.add_argument("--baseline-columns", type=int, default=256,
                    help="columns the torch.func baseline computes (0 = skip, -1 = all)")
    ap.add_argument("--json", help="also write the rows here, each as soon as it is measured "
                                   "(JSON lines)")
    ap.add_argument("--case-timeout", type=float, default=0,
                    help="seconds a case may take (0 = no limit); a case over it is a row "
                         "with its error")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--kernel", default="fused", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.kernel, args.columns, args.device, args.chunk,
                             args.threads)))
        return 0

    import platform

    import torch

    print(f"# {platform.node()}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} cpus  load {os.getloadavg()[0]:.2f}  torch {torch.__version__}  "
          f"device {args.device}")
    head = (f"{'case':<14} {'kernel':<8} {'P':>6} {'steps':>5} {'chunk':>5} {'cols':>5} "
            f"{'col*step/s':>10} {'full J':>9} {'peak RSS MB':>11} {'fused vs generic':>16}")
    print(head)
    print("-" * len(head))
    out = open(args.json, "w") if args.json else None
    failed = 0
    targets = []

    def emit(r: dict, note: str = "") -> None:
        nonlocal failed
        if out is not None:
            out.write(json.dumps(r) + "\n")
            out.flush()
        if "error" in r:
            failed += 1
            print(f"{r['case']:<14} {r['kernel']:<8} FAILED: {r['error']}", flush=True)
            return
        mark = "*" if r["extrapolated"] else " "
        print(f"{r['case']:<14} {r['kernel']:<8} {r['P']:>6} {r['steps']:>5} {r['chunk']:>5} "
              f"{r['columns']:>5} {r['col_steps_per_s']:>10.1f} {fmt_s(r['full_jac_s']):>8}"
              f"{mark} {r['peak_rss_mb']:>11.0f} {note:>16}", flush=True)
        if "target_jac_s" in r:
            targets.append(r)

    cases = LADDER if args.ladder else [c for c in args.cases.split(",") if c]
    for case in cases:
        ours = spawn(case, "fused", args.columns, args)
        base = spawn(case, "generic", args.baseline_columns, args) \
            if args.baseline_columns else None
        ok = base is not None and "error" not in base and "error" not in ours
        emit(ours, f"{ours['col_steps_per_s'] / base['col_steps_per_s']:.2f}x" if ok else "-")
        if base is not None:
            emit(base)
    print("* extrapolated from the first columns' rate; 'fused vs generic' = the ratio of "
          "their column-steps/s, measured in this run")
    for r in targets:
        print(f"{r['case']} ({r['kernel']}): {r['P']:,} columns x {r['target_steps']} steps "
              f"would take {fmt_s(r['target_jac_s'])} at {r['col_steps_per_s']:.1f} "
              f"column-steps/s on {r['device']} ({r['threads']} threads)")
    if out is not None:
        out.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
