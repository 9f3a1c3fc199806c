"""Sweeps: several runs (points) of one preset that share a directory, compared.

A preset with a ``[sweep]`` section describes the points as ``--set``-style overrides of
itself: a grid over config keys (or, with ``zip = true``, paired lists), named points, and
optionally the preset itself (``include_base``, the point "base")::

    [sweep]
    zip = false
    [sweep.values]
    model.hidden = [[16], [32], [64]]      # every combination is a point:
    train.lr = [0.03, 0.1]                 #   hidden-16_lr-0.03, hidden-16_lr-0.1, ...

    [sweep]                                # or named points (the paper's study):
    include_base = true
    overlap = true
    points = [{ name = "seed1", set = ["seed=1"] },
              { name = "shuffled", set = ['data.variant="shuffled_labels"'] }]

Every point is an ordinary session in ``<sweep>/runs/<name>/`` (its config is the preset with
the point's overrides and without ``[sweep]``), so it is run, resumed and reported like any
other. Every point's config is validated, and its files and SVD sized (:func:`engine.plan.
check_all`), before any starts.

``tjac sweep PRESET`` creates the directory and runs the points, one after the other or
``sweep.parallel`` at once (each in its own worker process; ``sweep.devices`` spreads them over
devices); ``tjac sweep DIR`` resumes (finished points are skipped, an interrupted one resumes at
its stage). Then the comparison (:func:`compare`): one row per point (its swept values, P,
steps, test accuracy, s_1, the chaotic / bulk / stable counts and fractions at the preset's
``spectrum.bulk_tol``, the bulk alignment, time) in ``<sweep>/analyses/sweep.json``; with
``overlap = true`` also the bulk-subspace overlap of each point with the reference point (the
mean cosine of the principal angles between their k right singular vectors closest to s = 1,
swept over k) against random k-dimensional subspaces of R^P (``sweep_overlap.npy``). The report
(``<sweep>/report.md``) is written by the caller: :func:`engine.present.findings.
write_sweep_report`.

Directory::

    <sweep>/sweep.json        manifest: preset, points (name, overrides, values), axes,
                              reference, status, and the records (engine.manifest.FileRecord)
                              of sweep.toml and the comparison's files, checked when read: a
                              damaged one is named (:class:`SweepDamaged`), never a traceback
    <sweep>/sweep.toml        the resolved preset, [sweep] included
    <sweep>/events.jsonl      sweep events (sweep_start, sweep_point, sweep_point_end,
                              compare_start, compare_end, sweep_end); each session keeps its own
    <sweep>/runs/<name>/      the sessions
    <sweep>/analyses/         sweep.json (the comparison), sweep_overlap.npy
    <sweep>/report.md
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import config as config_mod, regions
from .config import ConfigError
from .files import (append_jsonl, atomic_save_npy, atomic_write, atomic_write_json,
                    publish_dir, read_jsonl)
from .schema import Invalid
from .schema import name as name_check
from .manifest import FORMAT_VERSION, FileRecord, check_file
from .session import Session, SessionDamaged, now_iso
from .subspace import k_grid, mean_cos_block, random_mean_cos


@dataclass
class Point:
    name: str
    set: list[str]
    config: config_mod.RunConfig
    values: dict = field(default_factory=dict)  # the swept keys' values (grid points)


def plan(preset: str | Path, overrides: list[str] | None = None, parallel: int | None = None
         ) -> tuple[config_mod.RunConfig, list[Point]]:
    """The base config and every point's config, all validated (a bad override names its
    point). ``sweep.devices`` sets each point's device; running ``parallel`` points at once
    (default ``sweep.parallel``) on the CPU gives each its share of the cores (``threads``)
    unless the preset sets it."""
    preset = Path(preset)
    base = config_mod.load(preset, overrides)
    if base.sweep is None:
        raise ConfigError(f"{preset}: sweep: expected a [sweep] section (values or points)")
    return base, points_of(base, str(preset), parallel)


def points_of(base: config_mod.RunConfig, where: str = "<config>",
              parallel: int | None = None) -> list[Point]:
    """Every point of the config ``base`` (which has a [sweep]): ``base`` with the point's
    overrides and without [sweep], validated (a bad override names the point and ``where``);
    devices and threads as in :func:`plan`. The Setup pane plans an edited config with it."""
    sw = base.sweep
    table = config_mod.to_dict(base)
    points = []
    for i, spec in enumerate(sw.expand()):
        try:
            cfg = config_mod.from_dict(config_mod.apply_overrides(table, spec["set"]), where)
        except ConfigError as e:
            raise ConfigError(f"{where}: sweep point {spec['name']}: {e}") from None
        cfg.sweep = None
        if sw.devices:
            cfg.device = sw.devices[i % len(sw.devices)]
        n = parallel or sw.parallel
        if n > 1 and not cfg.threads and not cfg.device.startswith("cuda"):
            cfg.threads = max(1, (os.cpu_count() or 1) // n)
        points.append(Point(spec["name"], spec["set"], cfg, spec["values"]))
    return points


# --------------------------------------------------------------------------------------------
# the sweep directory


SWEEP_JSON, SWEEP_TOML = "sweep.json", "sweep.toml"
COMPARISON, OVERLAP = "analyses/sweep.json", "analyses/sweep_overlap.npy"


class SweepDamaged(SessionDamaged):
    """A file of a sweep does not match its record or is not what it should be: ``str()`` is
    one line naming it and saying what to do."""

    def __init__(self, path: Path, rel: str, why: str):
        self.problems, self.detail = {rel: why}, f"{rel}: {why}"
        hint = ("`tjac sweep` compares the points again" if rel in (COMPARISON, OVERLAP) else
                "its points are sessions that `tjac resume` and `tjac report` still read; "
                "start a new sweep from its preset to run it again")
        Exception.__init__(self, f"{path}: damaged sweep: {self.detail}; {hint}")


def check_points(m) -> str | None:
    """Why ``m`` (sweep.json's contents) is not a sweep manifest, or None."""
    if not isinstance(m, dict):
        return "not a sweep manifest (not an object)"
    points = m.get("points")
    if not (isinstance(points, list) and points and all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"]
            and "/" not in p["name"] and p["name"] not in (".", "..")
            and isinstance(p.get("set", []), list) for p in points)):
        return "not a sweep manifest (points: expected a list of {name, set, values})"
    if not isinstance(m.get("files", {}), dict) or not isinstance(m.get("reference"), str):
        return "not a sweep manifest (files, reference)"
    return None


class Sweep:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return (self.path / SWEEP_JSON).is_file()

    def manifest(self) -> dict:
        """sweep.json; :class:`SweepDamaged` when it is missing, not JSON or not a sweep's."""
        try:
            m = json.loads((self.path / SWEEP_JSON).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SweepDamaged(self.path, SWEEP_JSON, "missing") from None
        except (ValueError, UnicodeDecodeError):
            raise SweepDamaged(self.path, SWEEP_JSON, "not valid JSON") from None
        why = check_points(m)
        if why:
            raise SweepDamaged(self.path, SWEEP_JSON, why)
        return m

    def update(self, **changes) -> dict:
        m = self.manifest()
        m.update(changes)
        atomic_write_json(self.path / SWEEP_JSON, m)
        return m

    def record_file(self, rel: str) -> None:
        """Record a file of the sweep as it is now (its sha256), in sweep.json."""
        rec = FileRecord.of(self.path / rel, "sweep").to_json()
        m = self.manifest()
        self.update(files={**m.get("files", {}), rel: rec})

    def check(self, rel: str) -> None:
        """:class:`SweepDamaged` unless ``rel`` matches its record (by contents; a file
        recorded by no record, as in a sweep made before they were kept, passes)."""
        rec = self.manifest().get("files", {}).get(rel)
        if rec is None:
            return
        try:
            why = check_file(self.path / rel, FileRecord.from_json(rec, f"files.{rel}."))
        except (ValueError, KeyError, TypeError) as e:  # (a record that is not one)
            why = f"its record in sweep.json is not one ({e})"
        if why:
            raise SweepDamaged(self.path, rel, why)

    def verify(self) -> dict[str, str]:
        """Every damaged file of the sweep's own (not its points'): {rel: why}."""
        try:
            files = self.manifest().get("files", {})
        except SweepDamaged as e:
            return dict(e.problems)
        out = {}
        for rel in files:
            try:
                self.check(rel)
            except SweepDamaged as e:
                out.update(e.problems)
        return out

    def config(self) -> config_mod.RunConfig:
        self.check(SWEEP_TOML)
        p = self.path / SWEEP_TOML
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SweepDamaged(self.path, SWEEP_TOML, "missing") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SweepDamaged(self.path, SWEEP_TOML, f"cannot be read "
                               f"({getattr(e, 'strerror', None) or e})") from None
        cfg = config_mod.loads(text, str(p))
        if cfg.sweep is None:
            raise SweepDamaged(self.path, SWEEP_TOML, "has no [sweep] section")
        return cfg

    def session(self, name: str) -> Session:
        return Session(self.path / "runs" / name)

    def sessions(self) -> list[tuple[str, Session]]:
        return [(p["name"], self.session(p["name"])) for p in self.manifest()["points"]]

    def comparison(self) -> dict | None:
        """The comparison (analyses/sweep.json), None before it is made; :class:`SweepDamaged`
        when it does not match its record or is not one."""
        p = self.path / COMPARISON
        if not p.is_file():
            return None
        self.check(COMPARISON)
        try:
            out = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise SweepDamaged(self.path, COMPARISON, "not valid JSON") from None
        if not (isinstance(out, dict) and isinstance(out.get("points"), list)
                and all(isinstance(r, dict) for r in out["points"])):
            raise SweepDamaged(self.path, COMPARISON, "not a sweep comparison")
        return out

    def events(self, start: int = 0) -> tuple[list[dict], int]:
        return read_jsonl(self.path / "events.jsonl", start)

    def emit(self, listeners, event: str, **fields) -> None:
        """Record the sweep event ``event`` (declared in :mod:`engine.events`) and hand its
        line to ``listeners``."""
        from . import events

        rec = events.encode(events.make(event, time=round(time.time(), 3), **fields))
        append_jsonl(self.path / "events.jsonl", rec)
        for fn in listeners or []:
            fn(rec)


def point_status(s: Session) -> str:
    """A point's status; "damaged" for a manifest that cannot be read (its run starts over)."""
    try:
        return s.manifest().get("status")
    except SessionDamaged:
        return "damaged"


def is_sweep(path: str | Path) -> bool:
    return (Path(path) / "sweep.json").is_file()


def sweep_of(session_path: str | Path) -> Path | None:
    """The sweep directory a session belongs to (its points live in ``<sweep>/runs/``)."""
    parent = Path(session_path).resolve().parent
    if parent.name == "runs" and is_sweep(parent.parent):
        return parent.parent
    return None


def point_plans(points: list[Point]) -> list:
    """Every point's :class:`engine.plan.Plan` (its P, snapshot steps, files and SVD memory);
    a point whose plan cannot be made is a ConfigError naming it."""
    from . import plan as plan_mod

    plans = []
    for p in points:
        try:
            plans.append(plan_mod.make_plan(p.config))
        except ConfigError as e:
            raise ConfigError(f"sweep point {p.name}: {e}") from None
    return plans


def list_sweeps(root: str | Path) -> list[Path]:
    """The sweep directories in ``root`` (their points are sessions in ``<sweep>/runs``), by
    name."""
    try:
        return sorted(p for p in Path(root).iterdir() if p.is_dir() and is_sweep(p))
    except OSError:
        return []


def describe_sweep(path: str | Path) -> dict:
    """One sweep for ``tjac ls`` and the Sessions pane: {name, path, status, preset, created,
    done, total, seconds, points}, ``points`` the rows of its sessions
    (:func:`engine.session.describe`) in the sweep's order. The status is the manifest's, but
    a sweep recorded as running none of whose points a live process holds is "stale" (its
    process was killed: ``tjac sweep DIR`` resumes it); an unreadable manifest, "damaged"."""
    from .session import describe

    sw = Sweep(path)
    row = {"name": sw.path.name, "path": str(sw.path), "status": "damaged", "preset": None,
           "created": "", "done": 0, "total": 0, "seconds": 0.0, "points": [],
           "problem": None}
    try:
        m = sw.manifest()
        names = [p["name"] for p in m["points"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        row["problem"] = f"sweep.json: {e}"
        return row
    points = [describe(sw.session(n)) for n in names]
    status = str(m.get("status", "?"))
    if status == "running" and not any(p["status"] == "running" for p in points):
        status = "stale"
    row.update(status=status, preset=m.get("preset"), created=str(m.get("created", "")),
               done=sum(p["status"] == "done" for p in points), total=len(points),
               seconds=sum(p["seconds"] for p in points), points=points)
    return row


def check(points: list[Point], root: str | Path, device: str, plans: list | None = None
          ) -> None:
    """Every point's plan (:func:`point_plans`, or ``plans`` when made already) checked
    against the disk under ``root`` and this machine, together (:func:`engine.plan.check_all`),
    before any point starts: a ConfigError or PlanError names the point that does not fit
    ("sweep point hidden-256: the float64 SVD ... needs ...")."""
    from . import plan as plan_mod

    plans = point_plans(points) if plans is None else plans
    plan_mod.check_all(plans, Path(root), device=plan_mod.where_svd_runs(device),
                       names=[f"sweep point {p.name}" for p in points])


def create(root: str | Path, preset: str | Path, overrides: list[str] | None = None,
           name: str | None = None, parallel: int | None = None,
           label: str | None = None) -> Sweep:
    """Validate the preset's sweep and create its directory ``root/<name>`` (``-2``, ``-3``...
    if taken) with one session per point (not started), whole: a process killed while creating
    it leaves nothing behind (:func:`engine.files.publish_dir`). ``parallel``: points at once
    (default ``sweep.parallel``), recorded as the sweep's default when it resumes; ``label``:
    what the manifest and messages name as the preset (default its path). Every point is
    validated and sized (:func:`check`) before anything is created: a point that cannot run
    here raises ConfigError (or PlanError) naming it."""
    base, points = plan(preset, overrides, parallel)
    try:
        check(points, root, base.device)
    except ConfigError as e:
        raise ConfigError(f"{label or preset}: {e}") from None
    if name is not None:
        try:
            name = name_check()(name)
        except Invalid as e:
            raise ConfigError(f"--name {name!r}: expected {e}") from None

    def fill(tmp: Path) -> None:
        atomic_write(tmp / SWEEP_TOML, config_mod.dumps(base).encode())
        atomic_write_json(tmp / SWEEP_JSON, {
            "format_version": FORMAT_VERSION,
            "files": {SWEEP_TOML: FileRecord.of(tmp / SWEEP_TOML, "sweep").to_json()},
            "kind": "sweep", "preset": label or str(preset), "overrides": list(overrides or []),
            "created": now_iso(), "status": "created",
            "reference": base.sweep.reference_name(), "axes": list(base.sweep.values),
            "zip": base.sweep.zip, "parallel": parallel or base.sweep.parallel,
            "points": [{"name": p.name, "set": p.set, "values": p.values} for p in points]})
        (tmp / "runs").mkdir()
        for p in points:
            s = Session.create(tmp / "runs", p.name, p.config, label or str(preset))
            assert s.path.name == p.name

    return Sweep(publish_dir(root, name or base.name, fill))


def run(sweep_dir: str | Path, listeners: list[Callable[[dict], None]] | None = None,
        handle_signals: bool = False, run_session: Callable | None = None,
        parallel: int | None = None, poll: float = 0.5) -> int:
    """Run (or resume) every point of the sweep, then the comparison (the caller writes the
    report: :func:`engine.present.findings.write_sweep_report`). ``parallel`` (default: the
    sweep's, as created): points at once; 1 runs them in this process one after the
    other (``run_session``), more start worker processes. A point that fails (a diverging
    learning rate, say) is recorded and the others go on; the comparison then shows it as
    failed. Returns 0 when every point is done, 1 when some failed (the comparison and report
    are still made), 3 when the sweep was interrupted (resumable: finished points are
    skipped, failed ones tried again)."""
    from . import runner

    sw = Sweep(sweep_dir)
    base = sw.config()  # (damaged records are named before anything runs)
    parallel = parallel or sw.manifest().get("parallel") or base.sweep.parallel
    m = sw.update(status="running", started=sw.manifest().get("started") or now_iso())
    names = [p["name"] for p in m["points"]]
    sw.emit(listeners, "sweep_start", sweep=str(sw.path), points=names, parallel=parallel)
    t0 = time.perf_counter()
    todo = []
    for i, n in enumerate(names):
        status = point_status(sw.session(n))
        if status == "done":
            sw.emit(listeners, "sweep_point", name=n, index=i, total=len(names), status=status)
        else:
            todo.append((i, n))
    if parallel > 1:
        code, failed = _run_workers(sw, todo, len(names), parallel, listeners, handle_signals,
                                    poll)
    else:
        code, failed = runner.EXIT_OK, []
        for i, n in todo:
            sw.emit(listeners, "sweep_point", name=n, index=i, total=len(names),
                    status=point_status(sw.session(n)))
            c = (run_session or runner.run_session)(sw.session(n).path, listeners,
                                                    handle_signals=handle_signals)
            sw.emit(listeners, "sweep_point_end", name=n, index=i, total=len(names),
                    status=point_status(sw.session(n)))
            if c == runner.EXIT_INTERRUPTED:
                code = c
                break
            if c != runner.EXIT_OK:  # a point that fails (e.g. a diverging lr) is a result
                failed.append(n)
    if code == runner.EXIT_INTERRUPTED:
        sw.update(status="interrupted", error=None)
        sw.emit(listeners, "sweep_end", status="interrupted")
        return code
    try:
        result = sw.comparison()
    except SweepDamaged as e:  # made again from the points
        sw.emit(listeners, "warning", message=f"{e.detail}; comparing the points again")
        result = None
    if result is None or result.get("fingerprint") != _fingerprint(sw):
        sw.emit(listeners, "compare_start")
        t = time.perf_counter()
        result = compare(sw, lambda **kw: sw.emit(listeners, "compare_progress", **kw))
        sw.emit(listeners, "compare_end", seconds=round(time.perf_counter() - t, 3))
    status = "done" if not failed else "failed"
    error = None if not failed else (f"{len(failed)} point(s) failed: " + ", ".join(
        f"{n} ({sw.session(n).manifest().get('error')})" for n in failed))
    sw.update(status=status, finished=now_iso(), error=error, failed=failed)
    sw.emit(listeners, "sweep_end", status=status, failed=failed,
            seconds=round(time.perf_counter() - t0, 3))
    return runner.EXIT_OK if not failed else runner.EXIT_FAILED


def _run_workers(sw: Sweep, todo: list[tuple[int, str]], total: int, parallel: int,
                 listeners, handle_signals: bool, poll: float) -> tuple[int, list[str]]:
    """The points ``todo`` in worker processes, ``parallel`` at once. A stop (SIGINT/SIGTERM
    with ``handle_signals``) asks every running worker to stop (each finishes its chunk and
    marks its session interrupted) and starts no more. Returns (exit code: interrupted or 0,
    the points that failed)."""
    from . import runner
    from .worker import start_worker

    stop = {"now": False}
    if handle_signals:
        def on_signal(signum, frame):
            stop["now"] = True
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    running: dict[str, tuple[int, object]] = {}
    queue = list(todo)
    failed: list[str] = []
    asked = False
    try:
        while (queue and not stop["now"]) or running:
            while queue and len(running) < parallel and not stop["now"]:
                i, n = queue.pop(0)
                sw.emit(listeners, "sweep_point", name=n, index=i, total=total,
                        status=point_status(sw.session(n)))
                running[n] = (i, start_worker(sw.session(n).path))
            if stop["now"] and not asked:
                asked = True
                for _, proc in running.values():
                    proc.send_signal(signal.SIGTERM)  # (a worker too young to have its
                    # handler dies of it: its session resumes like an interrupted one)
            for n, (i, proc) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[n]
                status = point_status(sw.session(n))
                sw.emit(listeners, "sweep_point_end", name=n, index=i, total=total,
                        status=status)
                if status == "failed":
                    failed.append(n)
            time.sleep(poll if running else 0)
    finally:
        if handle_signals:
            for s, h in old.items():
                signal.signal(s, h)
    unfinished = [n for _, n in todo if point_status(sw.session(n)) not in
                  ("done", "failed")]
    return (runner.EXIT_INTERRUPTED if unfinished else runner.EXIT_OK), failed


def _fingerprint(sw: Sweep) -> str:
    """The comparison depends on every point's spectrum and files, and the sweep settings."""
    h = hashlib.sha256()
    for _, s in sw.sessions():
        files = s.manifest().get("files", {})
        for rel in ("svd/S.npy", "svd/Vh.npy", "spectrum.json"):
            h.update(str(files.get(rel, {}).get("sha256")).encode())
    h.update((sw.path / "sweep.toml").read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# the comparison


def point_row(point: dict, s: Session, tol: float) -> dict:
    """One point of the comparison: what it sets, its training and its spectrum at ``tol``."""
    m = s.manifest() if s.exists() else {}
    fm = m.get("final_metrics") or {}
    row = {"name": point["name"], "set": point["set"], "values": point.get("values") or {},
           "status": m.get("status"), "P": m.get("P"), "steps": m.get("steps"),
           "test_loss": fm.get("test_loss"), "test_acc": fm.get("test_acc"),
           "seconds": round(sum(float(st.get("seconds") or 0)
                                for st in (m.get("stages") or {}).values()), 3)}
    try:
        cfg = s.config()
        row.update(variant=cfg.data.variant, seed=cfg.seed, optimizer=cfg.train.optimizer)
    except Exception:  # noqa: BLE001 - a damaged config: the row says what it can
        pass
    if not s.has("svd/S.npy"):
        return row
    S = s.load_npy("svd/S.npy").astype(np.float64)
    d = np.abs(S - 1)
    nontriv = d[d > regions.EXACT]
    counts = regions.counts(S, tol)
    summary = s.spectrum() or {}
    bulk = (summary.get("regions") or {}).get("bulk") or {}
    same_tol = summary.get("bulk_tol") == tol
    row.update({
        "s_max": float(S[0]), "s_min": float(S[-1]), "counts": counts,
        "fractions": {k: v / len(S) for k, v in counts.items()},
        "counts_1e-2": regions.counts(S, 1e-2),
        "exact_unity": int(np.sum(d <= regions.EXACT)),
        "min_nontrivial_dist": float(nontriv.min()) if nontriv.size else None,
        "sensitivity": regions.sensitivity_table(S),
        "bulk_align_mean": bulk.get("align_mean") if same_tol else None,
        "bulk_subspace_cos": bulk.get("subspace_cos_mean") if same_tol else None})
    return row


def bulk_overlap(Vh_a: np.ndarray, S_a: np.ndarray, Vh_b: np.ndarray, S_b: np.ndarray,
                 ks: list[int]) -> list[float]:
    """Mean principal-angle cosine between the k right singular vectors closest to s = 1 of
    two runs, for each k."""
    M = Vh_a[regions.closest_to_unity(S_a)] @ Vh_b[regions.closest_to_unity(S_b)].T
    return [mean_cos_block(M, k, k) for k in ks]


def compare(sw: Sweep, progress: Callable[..., None] | None = None) -> dict:
    """The comparison table (every point) and, with ``sweep.overlap``, the bulk overlaps with
    the reference point; saved under ``<sweep>/analyses/``; the region tolerance is the sweep
    preset's spectrum.bulk_tol."""
    t0 = time.perf_counter()
    m = sw.manifest()
    base = sw.config()
    cfg, tol = base.sweep, base.spectrum.bulk_tol
    points = [point_row(p, sw.session(p["name"]), tol) for p in m["points"]]
    out = {"reference": m["reference"], "tol": tol, "axes": m.get("axes", []),
           "points": points, "overlap": None}
    ref = sw.session(m["reference"])
    if cfg.overlap and ref.exists() and ref.has("svd/Vh.npy"):
        S_ref = ref.load_npy("svd/S.npy").astype(np.float64)
        Vh_ref = ref.load_npy("svd/Vh.npy").astype(np.float64)
        P = len(S_ref)
        ks = k_grid(cfg.k_min, cfg.k_max, cfg.n_k, P)
        curves, variants, skipped = {}, {}, []
        others = [(p, sw.session(p["name"])) for p in m["points"]
                  if p["name"] != m["reference"]]
        for i, (p, s) in enumerate(others):
            if not s.has("svd/Vh.npy") or len(s.load_npy("svd/S.npy")) != P:
                skipped.append(p["name"])
                continue
            S = s.load_npy("svd/S.npy").astype(np.float64)
            Vh = s.load_npy("svd/Vh.npy").astype(np.float64)
            curves[p["name"]] = bulk_overlap(Vh_ref, S_ref, Vh, S, ks)
            variants[p["name"]] = s.config().data.variant
            if progress:
                progress(done=i + 1, total=len(others) + 1)
        rng = np.random.default_rng(cfg.seed)
        rand = [random_mean_cos(P, k, k, rng, cfg.random_samples) for k in ks]
        if progress:
            progress(done=len(others) + 1, total=len(others) + 1)
        out["overlap"] = {"reference": m["reference"], "ks": ks, "runs": curves,
                          "random": rand, "variants": variants, "skipped": skipped}
        arr = np.array([ks] + list(curves.values()) + [rand], dtype=np.float64)
        atomic_save_npy(sw.path / OVERLAP, arr)
        sw.record_file(OVERLAP)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["fingerprint"] = _fingerprint(sw)
    atomic_write_json(sw.path / COMPARISON, out)
    sw.record_file(COMPARISON)
    return out
