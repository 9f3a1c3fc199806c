"""The parts of benchmarks/gpu_check.sh written in Python: the machine's report, a session
gathered into one JSON file, and the key figures of each step for the summary.

    python benchmarks/gpu_check.py env --device cuda --sessions DIR [--install-log FILE]
    python benchmarks/gpu_check.py session --sessions DIR --json OUT.json --wall S --rc N \\
        [--target jacobian_s<=1 ...]
    python benchmarks/gpu_check.py figures paper|svd|lenet|lenet_run OUT_DIR

``env`` prints what the CUDA path depends on: the GPU (nvidia-smi when there is one, else
torch's device properties), torch, CUDA, cuDNN and cuSOLVER versions, free disk and memory,
what :func:`engine.device.cuda_missing` looked at and said, the numerics settings
:func:`engine.device.configure` sets, and which of the packages the steps need are missing.
``session`` writes a session's manifest.json, spectrum.json and every event of events.jsonl
(stage times, per-chunk rates, gpu_mem) into one file with the figures read off them and each
``--target`` checked (PASS/FAIL on CUDA; "n/a" elsewhere). ``figures`` prints a step's key
figures as summary lines. Imports torch only for ``env``.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# what each step imports beyond the standard library (the CUDA image has all but tomli_w)
NEEDED = {"torch": "every step", "numpy": "every step", "scipy": "every step",
          "tomli_w": "sessions (engine.config.dumps)", "rich": "tjac run's output",
          "sklearn": "the digits data (its bundled file)", "pytest": "the gpu tests",
          "pytest_timeout": "the gpu tests' per-test timeout"}
NOT_NEEDED = ("textual", "plotext", "matplotlib")  # the TUI and the figures: no step imports them
EVENTS_MAX = 20000  # events kept in a session's JSON (the first and last halves beyond this)
NA = "n/a (not a GPU: the targets are for one H200)"


# ---- env -----------------------------------------------------------------------------------

def _run(cmd: list[str], timeout: float = 20) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({cmd[0]}: {e})"


def _version(module: str) -> str:
    dist = {"sklearn": "scikit-learn", "pytest_timeout": "pytest-timeout"}.get(module, module)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _found(module: str) -> str | None:
    """Where ``module`` would be imported from, or None (an import hook refusing it counts as
    missing)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return None if spec is None else str(spec.origin or spec.submodule_search_locations)


def cusolver_version() -> str:
    """cuSOLVER's version from the library this process loaded (torch does not expose it)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "libcusolver" in ln
                            and ln.split()[-1].startswith("/")})
    except OSError:
        paths = []
    if not paths:
        return "not loaded (torch has not opened libcusolver)"
    try:
        v = ctypes.c_int()
        ctypes.CDLL(paths[0]).cusolverGetVersion(ctypes.byref(v))
        major, minor, patch = v.value // 1000, v.value % 1000 // 100, v.value % 100
        return f"{major}.{minor}.{patch} ({v.value}; {paths[0]})"
    except (OSError, AttributeError) as e:
        return f"? ({paths[0]}: {e})"


def env_lines(device: str, sessions: Path, install_log: Path | None = None) -> list[str]:
    """The machine's report (see the module docstring), as lines."""
    from engine import device as device_mod, plan as plan_mod

    out = [f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}", f"host: {platform.node()}",
           f"platform: {platform.platform()}",
           f"python: {platform.python_version()} ({sys.executable})", ""]
    smi = shutil.which("nvidia-smi")
    out.append("nvidia-smi:" if smi else "nvidia-smi: not found")
    if smi:
        q = ("name,uuid,memory.total,memory.used,memory.free,driver_version,pstate,"
             "clocks.sm,clocks.mem,compute_mode,mig.mode.current")
        out += ["  " + ln for ln in _run([smi, f"--query-gpu={q}", "--format=csv"]).splitlines()]
    # what engine.device.cuda_missing looks at, before torch is imported
    out += ["", f"engine.device.cuda_missing(): {device_mod.cuda_missing()!r}"]
    drv = Path(device_mod.NVIDIA_DRIVER)
    first = drv.read_text(errors="replace").splitlines()[:1] if drv.is_file() else []
    out.append(f"  {drv}: {(first or ['present, empty'])[0] if drv.exists() else 'absent'}")
    nodes = sorted(glob.glob(os.path.join(device_mod.DEVICE_DIR, "nvidia*")) +
                   glob.glob(os.path.join(device_mod.DEVICE_DIR, "dxg")))
    out.append(f"  device nodes: {' '.join(nodes) or 'none'} (a GPU: "
               f"{', '.join(device_mod.GPU_NODES)} in {device_mod.DEVICE_DIR})")
    visible = sorted(k for k in os.environ if k.endswith("_VISIBLE_DEVICES"))
    out += [f"  {k}={os.environ[k]!r}" for k in visible] or ["  *_VISIBLE_DEVICES: none set"]
    for k in (*device_mod.ENV_FULL_FP32, *device_mod.ENV_DETERMINISTIC):
        out.append(f"  {k} before configure: {os.environ.get(k)!r}")

    out += ["", "packages:"]
    for m, why in NEEDED.items():
        where = _found(m)
        out.append(f"  {m}: {_version(m) + ' ' + where if where else 'MISSING'} ({why})")
    for m in NOT_NEEDED:
        out.append(f"  {m}: {'present' if _found(m) else 'absent'} (not needed by any step)")
    if install_log is not None and install_log.is_file():
        out += ["", "wheels from .whl/:"]
        out += ["  " + ln for ln in install_log.read_text().splitlines()] or ["  none"]

    import torch

    out += ["", f"torch: {torch.__version__}, CUDA {torch.version.cuda}, "
                f"cuda available: {torch.cuda.is_available()}, "
                f"devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}"]
    dev = device_mod.resolve(device)
    numerics = device_mod.configure(dev)
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        torch.linalg.eigh(torch.eye(4, dtype=torch.float64, device=dev))  # (loads cuSOLVER)
        out += [f"device: {json.dumps(device_mod.describe(dev))}",
                f"  multiprocessors: {p.multi_processor_count}",
                f"  device memory: {free / 1e9:.2f} GB free of {total / 1e9:.2f} GB",
                f"  cuDNN: {torch.backends.cudnn.version()}",
                f"  cuSOLVER: {cusolver_version()}"]
    else:
        out.append(f"device: {dev} (no CUDA device used)")
    out.append(f"numerics (engine.device.configure): {json.dumps(numerics)}")
    out += ["", f"host memory available: {plan_mod.fmt_bytes(plan_mod.available_memory())}"]
    for where in (sessions, Path.cwd(), Path("/tmp")):
        out.append(f"free disk at {where}: {plan_mod.fmt_bytes(plan_mod.free_disk(where))}")
    return out


# ---- session -------------------------------------------------------------------------------

def find_session(root: Path) -> Path | None:
    """The session under ``root`` (the newest, if there are several)."""
    found = sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def session_figures(manifest: dict, events: list[dict], wall: float | None) -> dict:
    """The figures of a session: stage seconds, the run's seconds (its run_end event), the
    process's wall time, the chunk, the last chunk's rate and the peak GPU memory."""
    stages = manifest.get("stages", {})
    secs = {f"{k}_s": v.get("seconds") for k, v in stages.items()}
    chunks = [e for e in events if e.get("event") == "jacobian_chunk"]
    ends = [e for e in events if e.get("event") == "run_end"]
    fig = {"status": manifest.get("status"), "device": manifest.get("device"),
           "P": manifest.get("P"), "steps": manifest.get("steps"), **secs,
           "run_s": ends[-1].get("seconds") if ends else None, "wall_s": wall,
           "chunk": stages.get("jacobian", {}).get("chunk"), "chunks_done": len(chunks)}
    if all(fig.get(k) is not None for k in ("jacobian_s", "svd_s", "spectrum_s")):
        fig["j_svd_spectrum_s"] = fig["jacobian_s"] + fig["svd_s"] + fig["spectrum_s"]
    if chunks:
        last = chunks[-1]
        fig.update(columns_per_s=last.get("rate"), columns_done=last.get("done"),
                   eta_s=last.get("eta"), primal_dev=max(e.get("primal_dev", 0) for e in chunks))
        mem = [e["gpu_mem_peak"] for e in chunks if e.get("gpu_mem_peak") is not None]
        if mem:
            fig["gpu_mem_peak"] = max(mem)
    return fig


def check_targets(fig: dict, targets: list[str]) -> list[dict]:
    """Each ``NAME<=SECONDS`` against the figure NAME: PASS/FAIL on CUDA, n/a elsewhere."""
    out = []
    for t in targets:
        name, limit = t.split("<=")
        value, limit = fig.get(name), float(limit)
        if not str(fig.get("device") or "").startswith("cuda"):
            verdict = NA
        elif value is None:
            verdict = f"FAIL (no {name}: the session is {fig.get('status')})"
        else:
            verdict = "PASS" if value <= limit else "FAIL"
        out.append({"figure": name, "value": value, "limit": limit, "verdict": verdict})
    return out


def gather(root: Path, wall: float | None, rc: int | None, targets: list[str],
           command: str = "") -> dict:
    """The session under ``root`` as one JSON-ready object (manifest, spectrum, events,
    figures, targets)."""
    from engine.files import read_jsonl

    path = find_session(root)
    doc: dict = {"command": command, "rc": rc, "wall_s": wall, "session": str(path)}
    if path is None:
        doc.update(error=f"no session under {root}", targets=check_targets({}, targets))
        return doc
    manifest = json.loads((path / "manifest.json").read_text())
    spec = path / "spectrum.json"
    events = read_jsonl(path / "events.jsonl")[0]
    if len(events) > EVENTS_MAX:
        doc["events_left_out"] = len(events) - EVENTS_MAX
        events = events[: EVENTS_MAX // 2] + events[-EVENTS_MAX // 2:]
    fig = session_figures(manifest, events, wall)
    doc.update(figures=fig, targets=check_targets(fig, targets), manifest=manifest,
               spectrum=json.loads(spec.read_text()) if spec.is_file() else None,
               events=events)
    return doc


# ---- figures -------------------------------------------------------------------------------

def _s(v) -> str:
    return "-" if v is None else f"{v:.4g} s"


def figure_lines(step: str, out: Path) -> list[str]:
    """The key figures of ``step`` from its file in ``out``, as summary lines."""
    name = {"paper": "paper.json", "svd": "svd.json", "lenet": "lenet.json",
            "lenet_run": "lenet_run.json"}[step]
    path = out / name
    if not path.is_file():
        return [f"figure  {step}: no {name}"]
    doc = json.loads(path.read_text())
    lines = []
    if step in ("paper", "lenet_run"):
        fig = doc.get("figures", {})
        label = Path(doc.get("session") or step).name
        for t in doc.get("targets", []):
            lines.append(f"figure  {label} {t['figure']} = {_s(t['value'])} (target <= "
                         f"{t['limit']:g} s): {t['verdict']}")
        lines.append(f"figure  {label} stages: train {_s(fig.get('train_s'))}, J "
                     f"{_s(fig.get('jacobian_s'))}, SVD {_s(fig.get('svd_s'))}, spectrum "
                     f"{_s(fig.get('spectrum_s'))}; run {_s(fig.get('run_s'))} (run_end), "
                     f"process wall {_s(fig.get('wall_s'))}; chunk {fig.get('chunk')}, "
                     f"status {fig.get('status')}")
        if fig.get("status") != "done" and fig.get("columns_per_s"):
            lines.append(f"figure  {label} J from the chunks done: P / rate = {fig['P']:,} / "
                         f"{fig['columns_per_s']:.4g} columns/s = "
                         f"{_s(fig['P'] / fig['columns_per_s'])} (extrapolated from "
                         f"{fig['columns_done']:,} columns)")
    elif step == "svd":
        seen: set[str] = set()
        for route, f in doc.get("fit", {}).items():
            mem = ""
            if f.get("peak_bytes_at_target") is not None:
                mem = (f"; peak {f['peak_P2']:.2f} P^2 at n = {f['sizes'][-1]:,} -> "
                       f"{f['peak_bytes_at_target'] / 1e9:.1f} GB at n = {f['target_n']:,}")
            b = f.get("exponent_last_two")
            lines.append(f"figure  SVD {route} at n = {f['target_n']:,}: {_s(f['seconds'])} "
                         f"({f['formula']}; exponent of the two largest sizes "
                         f"{'-' if b is None else f'{b:.2f}'}){mem}")
        for r in doc.get("rows", [])[::-1]:  # the largest measured size of each route
            if r.get("solver_workspace_P2") is not None and r["route"] not in seen:
                seen.add(r["route"])
                lines.append(f"figure  SVD {r['route']} n = {r['n']:,}: "
                             f"{_s(r['seconds'])}, peak {r['peak_P2']:.2f} P^2 (plan "
                             f"{r['plan_peak_P2']:.2f}); the solver's workspace "
                             f"{r['solver_workspace_P2']:.2f} P^2 (plan "
                             f"{r['plan_solver_workspace_P2']:.2f}; measured: its extra "
                             f"memory {r['solver_extra_P2']:.2f} P^2 less the arrays the "
                             "plan counts new)")
        for r in doc.get("rows", []):
            if "seconds" not in r:
                lines.append(f"figure  SVD {r['route']} n = {r['n']:,}: "
                             f"{r.get('error') or 'skipped: ' + r.get('skipped', '?')}")
    else:
        t, ex, svd = doc.get("timing", {}), doc.get("extrapolation", {}), doc.get("svd", {})
        if t:
            lines.append(f"figure  LeNet-5 step: {t['steps']} steps of {t['chunk']:,} tangents "
                         f"in {_s(t['seconds'])} (measured), {_s(t['step_s'])} a step after "
                         "the first")
        mem, prof = t.get("memory"), doc.get("profile")
        if mem:
            lines.append(f"figure  LeNet-5 step: peak device memory "
                         f"{mem['peak_allocated'] / 1e9:.1f} GB of {mem['total'] / 1e9:.1f} GB "
                         f"(chunk {doc['chunk']['value']:,} by auto_chunk)")
        if prof and prof.get("kernel_launches") is not None:
            busy = prof.get("device_busy")
            lines.append(f"figure  LeNet-5 profile: {prof['kernel_launches_per_step']:.0f} "
                         f"kernel launches and {prof['sync_calls_per_step']:.1f} host "
                         f"synchronisations a step; kernels busy "
                         f"{'-' if busy is None else f'{100 * busy:.0f}%'} of the wall")
        if ex:
            lines.append(f"figure  LeNet-5 J = {_s(ex['jacobian_s'])} ({ex['formula']})")
            if ex.get("write_s") is not None:
                lines.append(f"figure  LeNet-5 J's writes = {_s(ex['write_s'])} "
                             f"({ex['write_formula']})")
        if svd:
            lines.append(f"figure  LeNet-5 float64 SVD ({svd.get('route')}) = "
                         f"{_s(svd.get('seconds'))} ({svd.get('formula') or svd.get('note')})")
            if svd.get("fits_device") is not None:
                lines.append(f"figure  LeNet-5 float64 SVD memory = "
                             f"{svd['peak_bytes'] / 1e9:.1f} GB ({svd['peak_note']}): "
                             f"{'fits' if svd['fits_device'] else 'does NOT fit'} in "
                             f"{svd['device_memory'] / 1e9:.1f} GB")
        tg = doc.get("target")
        if tg:
            lines.append(f"figure  LeNet-5 J + SVD = {_s(tg['value_s'])} (target <= "
                         f"{tg['seconds']} s): {tg['verdict']}")
        if not (t and ex):
            lines.append("figure  LeNet-5: unfinished (see log.txt)")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--device", default="cuda")
    e.add_argument("--sessions", type=Path, default=Path("."))
    e.add_argument("--install-log", type=Path)
    s = sub.add_parser("session")
    s.add_argument("--sessions", type=Path, required=True)
    s.add_argument("--json", type=Path, required=True)
    s.add_argument("--wall", type=float)
    s.add_argument("--rc", type=int)
    s.add_argument("--command", default="")
    s.add_argument("--target", action="append", default=[], metavar="FIGURE<=SECONDS")
    f = sub.add_parser("figures")
    f.add_argument("step", choices=["paper", "svd", "lenet", "lenet_run"])
    f.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "env":
        print("\n".join(env_lines(args.device, args.sessions, args.install_log)))
        return 0
    if args.cmd == "session":
        from engine.files import atomic_write_json

        doc = gather(args.sessions, args.wall, args.rc, args.target, args.command)
        atomic_write_json(args.json, doc)
        return 0 if doc.get("figures", {}).get("status") == "done" else 1
    print("\n".join(figure_lines(args.step, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
