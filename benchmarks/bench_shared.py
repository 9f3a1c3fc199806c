"""J on a shared machine: a fixed small workload, idle and beside a CPU hog, under each thread
and OpenMP setting, in one run.

    python benchmarks/bench_shared.py                      # quick, cnn, lenet; hogs = CPUs
    python benchmarks/bench_shared.py --workloads quick --rounds 5
    python benchmarks/bench_shared.py --settings t0,t1,t0-passive,policy --hogs 4

Workloads (each timed after an untimed warm-up step, the trajectory recorded inside the timing,
as a session's Jacobian stage does it minus the disk writes):

* ``quick``: the quick preset's whole J (P = 1,210, 16 steps, chunks of 128);
* ``cnn``: the first 3 chunks of cnn-quick's J (32 columns each, 4 steps, P = 1,762);
* ``lenet``: 2 LeNet-5 steps of 2 tangent columns at batch 20 (P = 61,706).

A setting is a name of dash-separated parts, each run in a fresh process (OpenMP reads its
environment when torch loads it): ``tN`` torch threads (``t0``: torch's default, one per CPU
this process may use), ``passive`` / ``active`` (``OMP_WAIT_POLICY``), ``spinN``
(``GOMP_SPINCOUNT``); no wait part leaves the variables unset (libgomp spins ~300,000
iterations at every barrier before it sleeps). ``policy`` is what a run of a preset with
``threads = 0`` does (:func:`engine.device.worker_environment` and
:func:`engine.device.run_threads`).

Each round runs every setting idle (no hog of ours; the machine's own load average is
printed), then starts ``--hogs`` busy processes (each ends itself after ``--hog-seconds`` at
the latest; stopped at the end of the round) and runs every setting again beside them. Per
setting it prints the median wall seconds of each phase, the process CPU seconds (all threads:
a CPU time far above the wall time of one thread's work is threads spinning), the slowdown
(loaded / idle) and the fair slowdown for a process of n threads beside L busy processes on C
cores: max(1, (L + n) / C) / max(1, n / C). A setting that degrades in proportion to its share
has a slowdown near the fair one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORKLOADS = ("quick", "cnn", "lenet")
SETTINGS = "t0,t0-passive,t1,policy"
# the variables a setting may set; every child starts with them removed, so that the
# environment this script runs in does not decide what a setting measures
OMP_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


# ---- the child: one setting, every workload ---------------------------------------------------

def problem_of(preset: str, threads: int, overrides: list[str]):
    """(problem, theta0) of a preset on the CPU with ``threads`` (0: the run's policy), built
    as a run builds it."""
    from engine import config
    from engine.build import build

    b = build(config.load(REPO / "presets" / f"{preset}.toml",
                          ["device=cpu", f"threads={threads}", *overrides]))
    return b.problem, b.theta0


def workload(name: str, threads: int):
    """(problem, theta0, columns, chunk) of a workload: J's first ``columns`` columns."""
    if name == "quick":
        problem, theta0 = problem_of("quick", threads, [])
        return problem, theta0, 128, 128
    if name == "cnn":
        problem, theta0 = problem_of("cnn-quick", threads, [])
        return problem, theta0, 32, 32
    problem, theta0 = problem_of("lenet5-digits28", threads,
                                 ["train.batch_size=20", "data.n_train=40"])
    return problem.truncated(2), theta0, 2, 2


def time_workload(name: str, threads: int, reps: int) -> dict:
    """Wall and process CPU seconds of one workload's columns of J (the median of ``reps``
    timings, after an untimed warm-up)."""
    from engine import jacobian, train

    problem, theta0, columns, chunk = workload(name, threads)
    e = train.identity_columns(theta0.numel(), range(min(chunk, 4)), theta0.device,
                               theta0.dtype)
    train.train_tangents(problem.truncated(1), theta0, e)  # warm-up, untimed
    walls, cpus_ = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        traj = train.record_trajectory(problem, theta0)
        for cols in jacobian.chunk_ranges(theta0.numel(), chunk):
            if cols.start >= columns:
                break
            jacobian.jacobian_columns(problem, theta0, cols, trajectory=traj)
        walls.append(time.perf_counter() - t0)
        cpus_.append(time.process_time() - c0)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus_)}


def child(workloads: list[str], threads: int, reps: int) -> None:
    """Time each workload in this process with ``threads`` (0: the run's policy); prints one
    JSON line."""
    import torch

    out: dict = {"env": {k: os.environ[k] for k in OMP_VARS if k in os.environ}}
    for name in workloads:
        out[name] = time_workload(name, threads, reps)
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


# ---- the parent --------------------------------------------------------------------------------

def setting_env(name: str) -> tuple[dict[str, str], int]:
    """The environment variables and torch thread count (0: the run's policy) of a setting."""
    env: dict[str, str] = {}
    if name == "policy":
        from engine import device as device_mod

        return {k: v for k, v in device_mod.worker_environment().items()
                if k in device_mod.OPENMP_WAIT}, 0
    threads = 0
    for part in name.split("-"):
        if part.startswith("t") and part[1:].isdigit():
            threads = int(part[1:]) or cpus()  # t0: torch's default
        elif part in ("passive", "active"):
            env["OMP_WAIT_POLICY"] = part.upper()
        elif part.startswith("spin") and part[4:].isdigit():
            env["GOMP_SPINCOUNT"] = part[4:]
        else:
            raise SystemExit(f"{name}: unknown setting part {part!r}")
    return env, threads


def run_child(name: str, workloads: list[str], reps: int, timeout: float) -> dict:
    env, threads = setting_env(name)
    full = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    full.update(env)
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, __file__, "--child", ",".join(workloads),
                        "--threads", str(threads), "--reps", str(reps)],
                       env=full, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"{name}: child failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


HOG = ("import time\nend = time.monotonic() + {seconds}\n"
       "while time.monotonic() < end:\n    pass\n")


def start_hogs(n: int, seconds: float) -> list[subprocess.Popen]:
    """``n`` busy processes, each ending itself after ``seconds`` at the latest."""
    return [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=seconds)],
                             stdin=subprocess.DEVNULL) for _ in range(n)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for h in hogs:
        h.kill()
    for h in hogs:
        h.wait()


def fair(hogs: int, threads: int, cores: int) -> float:
    """The slowdown of a process of ``threads`` busy threads beside ``hogs`` busy processes on
    ``cores`` cores, if it got its share: max(1, (L + n) / C) over its idle max(1, n / C)."""
    return max(1.0, (hogs + threads) / cores) / max(1.0, threads / cores)


def phase_name(hogs: int) -> str:
    return "idle" if hogs == 0 else f"{hogs} hog" + ("s" if hogs > 1 else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--settings", default=SETTINGS)
    ap.add_argument("--rounds", type=int, default=2, help="medians over this many rounds")
    ap.add_argument("--hogs", default="1,2,4",
                    help="the numbers of busy processes of the loaded phases")
    ap.add_argument("--reps", type=int, default=3,
                    help="times each child times each workload (the median is kept)")
    ap.add_argument("--hog-seconds", type=float, default=900.0,
                    help="the longest a hog lives (each phase stops its hogs sooner)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a child may take")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child.split(","), args.threads, args.reps)
        return 0

    workloads = [w for w in args.workloads.split(",") if w]
    settings = [s for s in args.settings.split(",") if s]
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"{w}: not one of {', '.join(WORKLOADS)}")
    for s in settings:
        setting_env(s)
    levels = [0, *(int(k) for k in args.hogs.split(",") if k)]
    cores = cpus()
    runs: dict[tuple[str, int], list[dict]] = {}
    loads: dict[int, list[float]] = {k: [] for k in levels}
    for r in range(args.rounds):
        for k in levels:
            hogs = start_hogs(k, args.hog_seconds)
            try:
                if hogs:
                    time.sleep(1.0)  # the hogs are running before the first child starts
                for s in settings:
                    loads[k].append(os.getloadavg()[0])
                    res = run_child(s, workloads, args.reps, args.timeout)
                    runs.setdefault((s, k), []).append(res)
                    print(f"round {r + 1} {phase_name(k):7s} {s:14s} threads {res['threads']}  "
                          + "  ".join(f"{w} {res[w]['wall']:.3f} s" for w in workloads),
                          file=sys.stderr, flush=True)
            finally:
                stop_hogs(hogs)

    print(f"{cores} CPUs; {args.rounds} round(s), each child the median of {args.reps}; "
          "medians over the rounds. Load average (1 min) when the children started: " +
          ", ".join(f"{phase_name(k)} {min(loads[k]):.2f}-{max(loads[k]):.2f}"
                    for k in levels))
    print("Each cell: wall seconds, the slowdown against the same setting idle, and in "
          "brackets the fair slowdown (its share of the cores beside the hogs).")
    for w in workloads:
        print(f"\n{w}")
        print("| setting | threads | idle s (CPU s) | " +
              " | ".join(phase_name(k) for k in levels[1:]) + " |")
        print("| --- " * (3 + len(levels) - 1) + "|")
        for s in settings:
            n = runs[(s, 0)][0]["threads"]
            iw, ic = (statistics.median(x[w][key] for x in runs[(s, 0)])
                      for key in ("wall", "cpu"))
            cells = []
            for k in levels[1:]:
                bw = statistics.median(x[w]["wall"] for x in runs[(s, k)])
                cells.append(f"{bw:.3f} s, {bw / iw:.1f}x ({fair(k, n, cores):.1f}x)")
            print(f"| {s} | {n} | {iw:.3f} ({ic:.2f}) | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(
            {"cpus": cores, "levels": levels, "loads": loads,
             "runs": [{"setting": s, "hogs": k, "results": v} for (s, k), v in runs.items()]},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
