"""Exact-Jacobian benchmark: time, column-steps/s and peak memory, the fused kernel vs torch.func.

    python benchmarks/bench_jacobian.py                    # paper-digits SGD + Adam, sizes
    python benchmarks/bench_jacobian.py --ladder           # P = 4.8k, 15k, 61,706 (LeNet-5)
    python benchmarks/bench_jacobian.py --cases paper-sgd --baseline-columns 0
    python benchmarks/bench_jacobian.py --device cuda --json out.jsonl
    python benchmarks/bench_jacobian.py --against-jax --reference PATH   # vs the JAX reference

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

    from engine import config, jacobian, train
    from engine.build import build

    if threads:
        torch.set_num_threads(threads)
    c = CASES[case]
    cfg = config.load(REPO / "presets" / f"{c.preset}.toml",
                      c.overrides + [f"device={device}", f'jacobian.kernel="{kernel}"'])
    # full float32, deterministic (engine.device.configure): what a session computes with
    b = build(cfg)
    dev, dtype, problem, theta0 = b.device, b.dtype, b.problem, b.theta0
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
    traj = train.record_trajectory(problem, theta0)  # as a session's J stage does
    for start in range(0, ncols, chunk):
        _, block = jacobian.jacobian_columns(problem, theta0,
                                             range(start, min(start + chunk, ncols)),
                                             trajectory=traj)
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


# ---- side by side with the independent JAX reference ---------------------------------------

def _tree_rss_kb(root: int) -> int:
    """Resident memory (kB) of ``root`` and all its descendants, from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            pass
    return total


def measured(cmd: list[str], cwd: Path | None = None) -> dict:
    """Run ``cmd``; its wall time, exit code, output, the peak RSS of its largest process
    (what GNU time reports: wait4's ru_maxrss, which covers the processes it waited for) and the
    peak of the summed RSS of its process tree, sampled every 0.1 s."""
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                            text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    th.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - t0, "rc": proc.returncode, "out": out,
            "max_rss_mb": usage.ru_maxrss / 1024, "tree_rss_mb": peak[0] / 1024}


def against_jax(opts: list[str], reference: Path | None, keep: Path | None) -> int:
    """The JAX reference and ``tjac run PRESET --skip-analyses`` one after the other, in
    fresh processes, on the same idle machine: J, the whole run and peak memory, with ratios."""
    import re
    import shutil
    import tempfile

    if reference is None or not reference.is_file():
        where = f": no file {reference}" if reference else ""
        print("--against-jax needs --reference PATH, the JAX reference script (not part of this "
              f"repository){where}")
        return 2
    rows = []
    for opt in opts:
        load0 = os.getloadavg()[0]
        ref = measured([sys.executable, str(reference), "--opt", opt, "--reps", "0"])
        if ref["rc"]:
            print(f"the JAX reference failed ({opt}; JAX is installed for this benchmark only: "
                  f"pip install jax scikit-learn):\n{ref['out'][-2000:]}")
            return 1
        t = {k: float(v) for k, v in re.findall(r"time_(\w+): ([0-9.]+) s", ref["out"])}
        sessions = Path(tempfile.mkdtemp(prefix="tjac-bench-"))
        try:
            ours = measured([sys.executable, "-m", "tjac_tui.cli", "run",
                             f"paper-digits-{opt}", "--skip-analyses", "--sessions",
                             str(sessions), "-q"], cwd=REPO)
            if ours["rc"]:
                print(f"tjac run failed ({opt}):\n{ours['out'][-2000:]}")
                return 1
            sess = sessions / f"paper-digits-{opt}"
            stages = json.loads((sess / "manifest.json").read_text())["stages"]
            spec = json.loads((sess / "spectrum.json").read_text())
            if keep is not None:
                shutil.copytree(sess, keep / f"paper-digits-{opt}", dirs_exist_ok=True)
        finally:
            shutil.rmtree(sessions, ignore_errors=True)
        sec = {k: v.get("seconds", 0.0) for k, v in stages.items()}
        ref_whole = t["train"] + t["jac_run_first"] + t["svd_first"]
        ours_whole = sum(sec.get(k, 0.0) for k in ("train", "jacobian", "svd", "spectrum"))
        rows.append((opt, load0, t, ref, ours, sec, ref_whole, ours_whole, spec,
                     stages["jacobian"].get("chunk")))
    print(f"\n# {os.cpu_count()} cpus; every figure from one run of each, in this order "
          "(the reference first)")
    for opt, load0, t, ref, ours, sec, ref_whole, ours_whole, spec, chunk in rows:
        print(f"\n## paper-digits-{opt} (load average {load0:.2f} before the pair)")
        print(f"{'':<34} {'tjac':>10} {'JAX ref':>10} {'ratio':>7}")
        line = "{:<34} {:>9.1f}s {:>9.1f}s {:>6.2f}x"
        print(line.format(f"J (float32; chunk {chunk})", sec["jacobian"], t["jac_run_first"],
                          sec["jacobian"] / t["jac_run_first"]))
        print(line.format("SVD (ours: float64 + spectrum)", sec.get("svd", 0) +
                          sec.get("spectrum", 0), t["svd_first"],
                          (sec.get("svd", 0) + sec.get("spectrum", 0)) / t["svd_first"]))
        print(line.format("train + J + SVD (+ spectrum)", ours_whole, ref_whole,
                          ours_whole / ref_whole))
        print(line.format("whole process, wall", ours["wall_s"], ref["wall_s"],
                          ours["wall_s"] / ref["wall_s"]))
        print("{:<34} {:>8.0f}MB {:>8.0f}MB {:>6.2f}x".format(
            "peak RSS, largest process", ours["max_rss_mb"], ref["max_rss_mb"],
            ours["max_rss_mb"] / ref["max_rss_mb"]))
        print("{:<34} {:>8.0f}MB {:>8.0f}MB {:>6.2f}x".format(
            "peak RSS, process tree (sampled)", ours["tree_rss_mb"], ref["tree_rss_mb"],
            ours["tree_rss_mb"] / ref["tree_rss_mb"]))
        r = spec["regions"]
        print(f"regions (bulk_tol {spec['bulk_tol']:g}): chaotic {r['chaotic']['count']}, bulk "
              f"{r['bulk']['count']}, stable {r['stable']['count']}; SVD "
              f"{spec.get('svd_method', 'gesdd')} in {spec.get('svd_dtype')}")
    return 0


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
    ap.add_argument("--against-jax", action="store_true",
                    help="the paper runs side by side with the JAX reference (--reference; JAX "
                         "installed for this benchmark only): J, the whole run and peak memory")
    ap.add_argument("--opts", default="sgd,adam", help="with --against-jax: sgd, adam or both")
    ap.add_argument("--reference", type=Path, metavar="PATH",
                    help="with --against-jax: the JAX reference script, an independent "
                         "implementation of the paper's setup (jax.jacfwd through the whole "
                         "lax.scan training; not part of this repository)")
    ap.add_argument("--keep", type=Path, help="with --against-jax: copy the sessions here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--kernel", default="fused", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.kernel, args.columns, args.device, args.chunk,
                             args.threads)))
        return 0

    if args.against_jax:
        return against_jax([o for o in args.opts.split(",") if o], args.reference, args.keep)

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
