"""LeNet-5's appendix run on one device, measured in part and extrapolated to the whole run.

The problem is the one ``tjac run lenet5-digits28`` trains (P = 61,706, 900 steps of batch 200,
float32), built as a session's worker builds it (:func:`engine.build.build`), on ``--device``.
Measured, in this order (``--json`` is rewritten after each part, so a run stopped later keeps
what finished):

* the chunk: :func:`engine.jacobian.auto_chunk` on the device (on CUDA 60% of the free memory
  over the measured memory of one column; both inputs are recorded);
* the Jacobian's step: ``--steps`` training steps (default 10) of one chunk of tangents, as
  :func:`engine.jacobian.compute_into` runs them (the recorded primal trajectory where a full
  run would keep one), after a one-step warm-up, each step timed by CUDA events (on the CPU by
  the clock); the peak device memory over those steps (``torch.cuda.max_memory_allocated``,
  reset before). Running out of memory halves the chunk, as the runner does;
* a 2-step ``torch.profiler`` profile of the same chunk: the top kernels by device time (name,
  calls, ms), kernel launches, and the host-device synchronisations the CPU side made
  (cudaStreamSynchronize, cudaMemcpy, ... and aten::_local_scalar_dense, a tensor read on the
  host);
* the write rate of the sessions disk (``--disk-bytes`` written with pwrite and fdatasync, as a
  chunk is written).

Extrapolated (each labelled with its formula): the whole J, ceil(P / K) chunks of all the
steps, ``chunks x (T_n + (steps - n) x t_step)`` where T_n is the measured time of the n timed
steps and t_step their mean after the first; the writes, P^2 x 4 bytes over the measured rate
(they overlap the computation, so J takes the larger of the two); and, with ``--svd-json``
(benchmarks/svd_routes.py's file), the float64 SVD by the route a CUDA run takes, from that
file's fit t = c n^3 at n = P. Verdict: PASS when J + SVD <= 30 minutes, the target for one
H200; on a CPU the verdict is "n/a".

Usage::

    python benchmarks/gpu_lenet.py --device cuda --json lenet.json --svd-json svd.json
    python benchmarks/gpu_lenet.py --device cpu --set data.n_train=40 --set train.batch_size=20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PRESET = "lenet5-digits28"
TARGET_S = 30 * 60  # the LeNet-5 appendix J + float64 spectrum on one H200
# the profiler's CPU-side events that wait for the device (or read a tensor on the host), and
# those that launch a kernel: name prefixes (CUPTI may add a version suffix, "_v7000")
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
               "cudaMemcpy", "aten::_local_scalar_dense")  # (cudaMemcpy: and ...Async)
LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchCooperativeKernel")
API_CALL = re.compile(r"^cu(da)?[A-Z]")  # a CUDA runtime or driver API call


def build_preset(preset: str, overrides: list[str], device: str):
    """The run of ``preset`` built on ``device`` as a session's worker builds it
    (:func:`engine.build.build`: device, numerics, data, model, plan, training problem)."""
    from engine import config
    from engine.build import build
    from tjac_tui.locations import find_preset

    return build(config.load(find_preset(preset), list(overrides)), device)


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def choose_chunk(built) -> dict:
    """The chunk a run of this problem takes here, with what it was computed from."""
    import torch

    from engine import jacobian as jac

    p, th, dev = built.problem, built.theta0, built.device
    if dev.type != "cuda":
        return {"value": jac.auto_chunk(p, th, dev, built.dtype),
                "how": "engine.jacobian.auto_chunk on the CPU (the kernel's cpu_chunk, capped "
                       "by memory)"}
    free = int(torch.cuda.mem_get_info(dev)[0])
    per = jac.probe_column_bytes(p, th)
    k = jac.auto_chunk(p, th, dev, built.dtype, free_bytes=lambda: free,
                       column_bytes=lambda: per)
    return {"value": k, "free_bytes": free, "column_bytes": per,
            "how": f"engine.jacobian.auto_chunk on {dev}: {jac.CUDA_FRACTION} x free bytes / "
                   "measured bytes per column (probe_column_bytes)"}


def trajectory_of(built, steps: int):
    """The recorded primal of the first ``steps`` steps where a full run keeps one (its budget
    scaled to these steps: the full run's per-step size against engine.train's budget), else
    None; and the seconds it took."""
    from engine import train

    p = built.problem
    sub = p.truncated(steps)
    budget = train.TRAJECTORY_BUDGET * sub.steps // p.steps
    sync(built.device)
    t0 = time.perf_counter()
    traj = train.record_trajectory(sub, built.theta0, budget=budget)
    sync(built.device)
    return traj, time.perf_counter() - t0


def time_steps(built, K: int, steps: int, seconds: float | None = None,
               on_warmup=None) -> dict:
    """``steps`` training steps of one chunk of K tangents (after a warm-up step), each timed;
    the peak device memory over them. With ``seconds``, fewer steps (at least 2) when the
    warm-up step says that many would take longer; ``on_warmup(seconds)`` is told the warm-up
    step's time."""
    import torch

    from engine import train

    p, th, dev = built.problem, built.theta0, built.device
    cuda = dev.type == "cuda"
    e = train.identity_columns(th.numel(), range(K), dev, th.dtype)
    sync(dev)
    t0 = time.perf_counter()
    train.train_tangents(p.truncated(1), th, e)  # warm-up (timed only to size the rest)
    sync(dev)
    warm = time.perf_counter() - t0
    if on_warmup is not None:
        on_warmup(warm)
    asked = steps
    if seconds is not None and warm * steps > seconds:
        steps = max(2, int(seconds / max(warm, 1e-9)))
    sub = p.truncated(steps)
    traj, record_s = trajectory_of(built, steps)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        start = torch.cuda.Event(enable_timing=True)
    marks = []

    def on_step(t, theta, dtheta):
        if cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks.append(ev)
        else:
            marks.append(time.perf_counter())

    t0 = time.perf_counter()
    if cuda:
        start.record()
    train.train_tangents(sub, th, e, should_stop=lambda: False, on_step=on_step,
                         trajectory=traj)
    sync(dev)
    wall = time.perf_counter() - t0
    if cuda:
        ends = [start.elapsed_time(marks[0])] + [marks[i - 1].elapsed_time(marks[i])
                                                 for i in range(1, len(marks))]
        per_step = [ms / 1000 for ms in ends]
    else:
        per_step = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    total = sum(per_step)
    steady = (total - per_step[0]) / (len(per_step) - 1) if len(per_step) > 1 else total
    out = {"steps": sub.steps, "chunk": K, "warmup_steps": 1, "warmup_s": warm,
           "seconds": total,
           "wall_s": wall, "per_step_s": per_step, "step_s": steady,
           "column_steps_per_s": K * sub.steps / total,
           "trajectory": ({"kept": True, "record_s": record_s,
                           "record_s_per_step": record_s / sub.steps}
                          if traj is not None else
                          {"kept": False, "note": "the primal is computed again in every "
                           "chunk's steps (no primal/tangent split in this kernel, or a "
                           "trajectory over its budget): it is inside the step times"}),
           "how": ("CUDA events recorded after each step (train_tangents' on_step), the first "
                   "from an event before the call" if cuda else
                   "time.perf_counter after each step")}
    if sub.steps < asked:
        out["note"] = (f"{sub.steps} steps timed, not {asked}: the warm-up step took "
                       f"{warm:.3g} s and {seconds:.0f} s were left for them")
    if cuda:
        out["memory"] = {"peak_allocated": int(torch.cuda.max_memory_allocated(dev)),
                         "peak_above_before": int(torch.cuda.max_memory_allocated(dev) - base),
                         "peak_reserved": int(torch.cuda.max_memory_reserved(dev)),
                         "total": int(torch.cuda.get_device_properties(dev).total_memory),
                         "how": "torch.cuda.max_memory_allocated over the timed steps, "
                                "reset before them"}
    return out


def profile_steps(built, K: int, steps: int = 2, top: int = 15) -> dict:
    """A ``torch.profiler`` profile of ``steps`` steps of one chunk: the top kernels by device
    time (ops by CPU time where there is no CUDA), launches and synchronisations per step."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from engine import train

    p, th, dev = built.problem, built.theta0, built.device
    cuda = dev.type == "cuda"
    sub = p.truncated(steps)
    traj, _ = trajectory_of(built, steps)
    e = train.identity_columns(th.numel(), range(K), dev, th.dtype)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(dev)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        train.train_tangents(sub, th, e, should_stop=lambda: False, trajectory=traj)
        sync(dev)
        wall = time.perf_counter() - t0
    avgs = prof.key_averages()
    what = "CUDA kernels by self device time"
    if cuda:
        key = "self_device_time_total"
        rows = [a for a in avgs if getattr(a, "device_type", None) == DeviceType.CUDA]
        if not rows:  # (no kernel events reported: the ops, by the kernel time under them)
            rows, what = list(avgs), "ops by self device time (no kernel events reported)"
    else:
        rows, what, key = list(avgs), "ops by self CPU time (no CUDA here)", "self_cpu_time_total"
    rows.sort(key=lambda a: getattr(a, key, 0.0), reverse=True)
    counts = {a.key: a.count for a in avgs}

    def calls(prefixes):
        return {k: n for k, n in counts.items() if k.startswith(prefixes)}

    total_ms = sum(getattr(a, key, 0.0) for a in rows) / 1000
    out = {"steps": sub.steps, "chunk": K, "wall_s": wall, "what": what,
           "top": [{"name": a.key, "ms": getattr(a, key, 0.0) / 1000, "calls": a.count}
                   for a in rows[:top]],
           "total_ms": total_ms,
           "sync_calls": calls(SYNC_EVENTS),
           "sync_calls_per_step": sum(calls(SYNC_EVENTS).values()) / sub.steps,
           "api_calls": {k: n for k, n in counts.items() if API_CALL.match(k)}}
    if cuda:
        launches = sum(calls(LAUNCH_EVENTS).values())
        out.update(kernel_launches=launches, kernel_launches_per_step=launches / sub.steps,
                   device_busy=total_ms / 1000 / wall if wall > 0 else None,
                   device_busy_note="the kernels' device time over the profiled wall time "
                                    "(the profiler's own overhead is in the wall)")
    return out


def disk_rate(directory: Path, nbytes: int) -> dict:
    """Bytes per second written to ``directory`` by pwrite + fdatasync (JacobianStore's
    write), from ``nbytes`` in blocks of 64 MiB."""
    import numpy as np

    block = np.ones(min(nbytes, 64 << 20) // 4, dtype=np.float32).tobytes()
    path = directory / ".gpu_lenet.disk"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0, done = time.perf_counter(), 0
        while done < nbytes:
            done += os.pwrite(fd, block[: nbytes - done], done)
        os.fdatasync(fd)
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"path": str(directory), "bytes": done, "seconds": seconds,
            "bytes_per_s": done / seconds if seconds > 0 else None}


def svd_estimate(svd_json: Path | None, route: str, P: int) -> dict:
    """The SVD's seconds at n = P from benchmarks/svd_routes.py's fit for ``route``."""
    if svd_json is None or not Path(svd_json).is_file():
        where = svd_json or "no --svd-json"
        return {"route": route, "seconds": None, "note": f"no SVD fit ({where}): run "
                "benchmarks/svd_routes.py --device cuda --json FILE"}
    doc = json.loads(Path(svd_json).read_text())
    fit = doc.get("fit", {}).get(route)
    if not fit or fit.get("c") is None:
        return {"route": route, "seconds": None, "note": f"{svd_json} has no fit for {route}"}
    c = fit["c"]
    out = {"route": route, "seconds": c * P ** 3, "c": c, "sizes": fit.get("sizes"),
           "device": doc.get("device"),
           "formula": f"extrapolated: t = c n^3 at n = {P:,}, c = {c:.4g} s (least squares "
                      f"over n = {', '.join(f'{n:,}' for n in fit.get('sizes', []))}, "
                      f"{svd_json})"}
    if fit.get("peak_P2") is not None:
        out["peak_bytes"] = fit["peak_P2"] * 8 * P * P
        out["peak_note"] = (f"extrapolated: {fit['peak_P2']:.2f} P^2 float64 (measured at "
                            f"n = {fit['sizes'][-1]:,}) x 8 P^2 bytes")
    return out


def extrapolate(timing: dict, P: int, steps: int, itemsize: int, disk: dict | None) -> dict:
    """The whole J from the timed steps of one chunk (formulas in the docstring)."""
    K, n = timing["chunk"], timing["steps"]
    chunks = math.ceil(P / K)
    chunk_s = timing["seconds"] + (steps - n) * timing["step_s"]
    compute = chunks * chunk_s
    formula = (f"extrapolated: ceil(P / K) x (T_{n} + (steps - {n}) x t_step) = {chunks} x "
               f"({timing['seconds']:.4g} + {steps - n} x {timing['step_s']:.4g}) s "
               f"(P = {P:,}, K = {K:,}, {steps} steps; the last, partial chunk counted whole)")
    traj = timing["trajectory"]
    if traj.get("kept"):
        compute += steps * traj["record_s_per_step"]
        formula += f" + {steps} x {traj['record_s_per_step']:.4g} s (the primal, recorded once)"
    out = {"compute_s": compute, "chunks": chunks, "chunk_s": chunk_s, "formula": formula}
    seconds = compute
    if disk and disk.get("bytes_per_s"):
        write = P * P * itemsize / disk["bytes_per_s"]
        out["write_s"] = write
        out["write_formula"] = (f"extrapolated: P^2 x {itemsize} bytes / "
                                f"{disk['bytes_per_s'] / 1e9:.3g} GB/s measured")
        seconds = max(compute, write)
    out["jacobian_s"] = seconds
    out["note"] = ("J takes the larger of the computation and the writes (a writer thread "
                   "writes each chunk while the next computes); each chunk's finite check and "
                   "copy to the host are not counted")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default=PRESET)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a preset key (a tiny problem for a check on the CPU)")
    ap.add_argument("--chunk", type=int, help="columns per chunk (default: auto_chunk's)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--disk-bytes", type=int, default=1 << 30,
                    help="bytes written to time the disk (0: not timed)")
    ap.add_argument("--sessions", type=Path, help="the disk whose write rate is timed (default: "
                    "a temporary folder)")
    ap.add_argument("--svd-json", type=Path, help="benchmarks/svd_routes.py's --json file")
    ap.add_argument("--json", type=Path, help="write the results here (after each part)")
    ap.add_argument("--budget", type=float, help="seconds for it all: fewer timed steps, and "
                    "no profile or disk probe, when the warm-up says they would not fit")
    args = ap.parse_args(argv)

    import torch

    from engine import device as device_mod, jacobian as jac, plan as plan_mod
    from engine.files import atomic_write_json

    root = args.sessions or Path(tempfile.mkdtemp(prefix="gpu-lenet."))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    built = build_preset(args.preset, args.set, args.device)
    dev, P, steps = built.device, built.layout.size, built.problem.steps
    pl = built.plan
    doc: dict = {
        "what": f"{args.preset} measured in part on {dev} and extrapolated to the whole run",
        "preset": args.preset, "overrides": args.set, "device": str(dev),
        "device_info": device_mod.describe(dev), "numerics": built.numerics,
        "torch": torch.__version__, "cuda": torch.version.cuda, "P": P, "steps": steps,
        "dtype": built.cfg.dtype, "kernel": type(built.problem.kernel).__name__,
        "build_s": time.perf_counter() - t0,
        "plan": {"disk_bytes": pl.disk_total, "free_disk": plan_mod.free_disk(root),
                 "svd_route_cuda": pl.svd_route("cuda"),
                 "svd_memory_cuda": pl.svd_memory("cuda"),
                 "svd_memory_text": pl.svd_memory_text("cuda")},
    }

    def save():
        if args.json:
            atomic_write_json(args.json, doc)

    save()
    chunk = choose_chunk(built)
    if args.chunk:
        chunk.update(value=args.chunk, how=f"--chunk {args.chunk} (auto_chunk said "
                                           f"{chunk['value']})")
    doc["chunk"] = chunk
    save()

    def left():
        return None if args.budget is None else args.budget - (time.perf_counter() - t0)

    K, fallbacks = chunk["value"], []
    while True:
        try:  # (the profile's steps and the disk probe are kept room for)
            room = left()
            timing = time_steps(built, K, args.steps, None if room is None else
                                room / (1 + args.profile_steps / args.steps) - 10,
                                lambda w: (chunk.update(warmup_s=w, warmup_chunk=K), save()))
            break
        except Exception as e:  # noqa: BLE001 - a failed allocation halves, as the runner does
            if not jac.is_out_of_memory(e) or K == 1:
                raise
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            fallbacks.append({"from": K, "to": max(1, K // 2)})
            K = max(1, K // 2)
    chunk["fallbacks"] = fallbacks
    doc["timing"] = timing
    print(f"{P:,} parameters, {steps} steps, chunk {K:,}: {timing['steps']} steps in "
          f"{timing['seconds']:.4g} s ({timing['step_s']:.4g} s a step after the first)",
          flush=True)
    save()
    skipped = []
    if args.profile_steps and (left() is None or
                               left() > 10 + 1.5 * args.profile_steps * timing["warmup_s"]):
        doc["profile"] = profile_steps(built, K, args.profile_steps)
        save()
    elif args.profile_steps:
        skipped.append("profile")
    if args.disk_bytes and left() is not None and left() < 10:
        skipped.append("disk")
    elif args.disk_bytes:
        doc["disk"] = disk_rate(root, args.disk_bytes)
        save()
    if skipped:
        doc["skipped"] = f"{' and '.join(skipped)}: --budget {args.budget:g} s spent"
    itemsize = 8 if built.cfg.dtype == "float64" else 4
    doc["extrapolation"] = ex = extrapolate(timing, P, steps, itemsize, doc.get("disk"))
    svd = doc["svd"] = svd_estimate(args.svd_json, pl.svd_route("cuda"), P)
    on_gpu = dev.type == "cuda"
    if on_gpu and svd.get("peak_bytes") is not None:
        total_mem = torch.cuda.get_device_properties(dev).total_memory
        svd["fits_device"] = svd["peak_bytes"] <= total_mem
        svd["device_memory"] = int(total_mem)
    total = None if svd["seconds"] is None else ex["jacobian_s"] + svd["seconds"]
    verdict = ("n/a (not a GPU: the target is for one H200)" if not on_gpu else
               "FAIL (no SVD estimate)" if total is None else
               "PASS" if total <= TARGET_S else "FAIL")
    doc["target"] = {"what": "LeNet-5 appendix J + float64 spectrum <= 30 min on one H200",
                     "seconds": TARGET_S, "value_s": total, "verdict": verdict,
                     "formula": "extrapolation.jacobian_s + svd.seconds"}
    save()
    print(f"J extrapolated: {ex['jacobian_s']:.4g} s ({ex['formula']})")
    if svd["seconds"] is not None:
        print(f"float64 SVD extrapolated: {svd['seconds']:.4g} s ({svd['formula']})")
    print(f"target J + SVD <= {TARGET_S} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
