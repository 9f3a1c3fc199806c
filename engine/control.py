"""Run control: prepare, plan, create, check-resumable and start runs, for the CLI and the
workbench alike (``tjac run`` / ``tjac resume`` and the Setup pane, ctrl+r, ``r``).

Each rule is written here once: what a run is refused before its session exists
(:func:`prepare`, :func:`create`), the text ``tjac run --plan`` prints and the Setup pane shows
(:class:`PlanReport`), what ``tjac resume`` refuses, with its one-line message
(:func:`check_resumable`), and how a run starts (in this process, as a background worker, or
as N ranks). Plain functions over plain data; torch-free at import (what runs or probes a run
imports :mod:`engine.runner` inside the function), so the workbench can call every one of them
but the probe, which it runs in a child process (``tjac run --plan --json`` prints a
:class:`PlanReport` as JSON).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import config as config_mod, device as device_mod
from .config import ConfigError, RunConfig
from .schema import PlanError
from .session import CONFIG, InputChanged, Session, SessionDamaged, SessionError, SessionLocked
from .units import fmt_bytes, fmt_seconds

if TYPE_CHECKING:  # engine.plan reads data with numpy: imported where a plan is made, so
    from .plan import Plan  # that the workbench starts without numpy

Listener = Callable[[dict], None]


# --------------------------------------------------------------------------------------------
# a run before its session exists


def prepare(preset: str | Path, overrides: list[str] | None = None, device: str | None = None,
            name: str | None = None, skip_analyses: bool = False, nproc: int = 1) -> RunConfig:
    """The config of a run of ``preset`` with ``overrides`` (``--set`` items), ``device`` and
    ``name`` (checked like the preset's own keys) and, with ``skip_analyses``, its analyses
    switched off (kept in the config). Refuses, before anything exists: an invalid preset or
    value (:class:`ConfigError`), a device this machine does not have, and ``nproc`` ranks on
    CUDA with fewer GPUs (:class:`engine.device.DeviceError`). Returns the config."""
    import json

    overrides = list(overrides or [])
    if device:
        overrides.append(f"device={device}")
    if name is not None:
        overrides.append(f"name={json.dumps(name)}")
    cfg = config_mod.load(preset, overrides)
    if skip_analyses:
        for a in cfg.analysis.values():
            a.enabled = False
    device_mod.check_here(cfg.device)  # (the worker would fail the session on it)
    if nproc > 1:  # on CUDA rank r computes on cuda:r: there must be a GPU for each
        device_mod.check_ranks(cfg.device, nproc)
    return cfg


def check_sessions_dir(path: str | Path) -> None:
    """:class:`SessionError` unless the sessions folder ``path`` is a directory or can be made
    one (no file in the way)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        where = "is a file" if p == Path(path).absolute() else f"is below the file {p}"
        raise SessionError(f"--sessions {path}: {where}, not a directory")


def check_fits(cfg: RunConfig, sessions: str | Path, plan: Plan | None = None) -> Plan:
    """:class:`PlanError` (one line, with the figures) when the run's files cannot fit on the
    disk that holds ``sessions``, or its SVD (its matrix-free spectrum) in the memory where it
    will run (:func:`engine.plan.where_svd_runs`); the worker checks again where it runs.
    ``plan``: the run's plan when made already. Returns the plan."""
    from . import plan as plan_mod

    plan = plan_mod.make_plan(cfg) if plan is None else plan
    plan_mod.check(plan, Path(sessions), device=plan_mod.where_svd_runs(cfg.device))
    return plan


def create(cfg: RunConfig, sessions: str | Path, preset: str | Path | None = None) -> Session:
    """A new session of ``cfg`` under ``sessions`` (named ``cfg.name``, ``-2``... if taken;
    ``preset``: what its manifest names as the preset). Refuses, with nothing created: a device
    not here, a sessions folder that is a file (:class:`SessionError`), a run that does not fit
    (:func:`check_fits`). Returns the session (status "created", not started)."""
    device_mod.check_here(cfg.device)
    check_sessions_dir(sessions)
    check_fits(cfg, sessions)
    return Session.create(sessions, cfg.name, cfg, str(preset) if preset else None)


# --------------------------------------------------------------------------------------------
# the plan: sizes, whether they fit, and the probe's times


PROBE_KEYS = ("device", "chunk", "chunk_bytes", "column_steps_per_s", "jacobian_s", "svd_s",
              "svd_s_note", "chunk_probe", "matfree")


def matfree_time_text(device: str, m: dict) -> str:
    """The probe's estimate of a matrix-free run (:func:`engine.matfree.estimate_seconds`), one
    line: what the plan says instead of a time for J."""
    return (f"time on {device}: matrix-free spectrum about {fmt_seconds(m['seconds'])} "
            f"(top {m['k']}: about {m['top_pairs']} J v + J^T u pairs of "
            f"{fmt_seconds(m['pair_s'])}; bulk: {m['lanczos_steps']} Lanczos steps of "
            f"{m['probes']} vectors, {fmt_seconds(m['block_pair_s'])} each)")


def probing_text(method: str) -> str:
    """What the probe of a run with ``spectrum.method`` = ``method`` is doing while it runs
    (``tjac run --plan`` says it on stderr)."""
    what = "each product" if method == "matfree" else "one chunk"
    return f"probing (a few training steps of {what})..."


@dataclass
class PlanReport:
    """What a run of a config will need and take here, as ``tjac run --plan`` prints it
    (:meth:`lines`) and the Setup pane shows it; ``tjac run --plan --json`` prints
    :meth:`to_json` (the pane's child process does, and the pane reads it back with
    :meth:`from_json`)."""

    P: int
    steps: int
    plan_lines: list[str]  # the sizes (engine.plan.Plan.lines on the device the SVD runs on)
    fits: str  # "fits in DIR: yes (N free)", or "does not fit: <why, with the figures>"
    fit: bool
    jacobian: bool  # the run computes J (or its matrix-free spectrum): a probe has steps to time
    method: str  # spectrum.method: "exact" or "matfree"
    svd_dtype: str  # spectrum.svd_dtype
    snapshots: list[int] = field(default_factory=list)  # steps of the snapshots of J
    # the probe's figures (engine.runner.probe, PROBE_KEYS): None until probed
    probe: dict | None = None
    probe_error: str | None = None  # why the probe failed (one line), when it did

    @property
    def probes(self) -> bool:
        """Whether a time probe runs for this plan: the run computes J and fits here (a probe
        of a run that cannot fit would time a training that cannot happen here, and for a run
        far too large would itself run out of memory)."""
        return self.jacobian and self.fit

    def lines(self) -> list[str]:
        """The plan as text: its sizes, whether they fit here, and the probe's figures (or why
        there is no probe)."""
        return [*self.plan_lines, self.fits, *self.probe_lines()]

    def probe_lines(self) -> list[str]:
        """The probe's part of :meth:`lines`: why there is none, nothing while it is not made,
        or its times (J's chunks and rate, the fastest chunk here, the SVD, the snapshots')."""
        if not self.jacobian:
            return ["no time probe: this run computes no Jacobian"]
        if not self.fit:
            return ["no time probe: the run does not fit here"]
        if self.probe_error:
            return [f"no time probe: it failed: {self.probe_error}"]
        r = self.probe
        if r is None:
            return []
        if self.method == "matfree":
            return [matfree_time_text(r["device"], r["matfree"])]
        line = f"device {r['device']}: chunks of {r['chunk']} columns"
        if r.get("chunk_bytes"):
            line += f" ({fmt_bytes(r['chunk_bytes'])} each)"
        out = [line, f"probe: {r['column_steps_per_s']:.1f} column-steps/s -> J in about "
                     f"{fmt_seconds(r['jacobian_s'])}"]
        if r.get("chunk_probe"):
            cp = r["chunk_probe"]
            rates = ", ".join(f"{k}: {v:,.0f}" for k, v in cp["column_steps_per_s"].items())
            out.append(f"chunk probe (column-steps/s): {rates}; fastest here {cp['best']} "
                       "(jacobian.chunk; runs keep their default so that J's bits do not move)")
        if r.get("svd_s") is not None:
            note = f" ({r['svd_s_note']})" if r.get("svd_s_note") else ""
            out.append(f"{self.svd_dtype} SVD: about {fmt_seconds(r['svd_s'])}{note}")
            if self.snapshots:
                n = len(self.snapshots)
                out.append(f"snapshots: {n} more SVDs, about {fmt_seconds(n * r['svd_s'])}; "
                           f"the Jacobian stage writes {n} more P x P blocks as it goes")
        return out

    def to_json(self) -> dict:
        """A JSON object: P, steps, lines (the sizes), fits (the verdict line), fit, jacobian,
        method, svd_dtype, snapshots and, once probed, the probe's figures (PROBE_KEYS, None
        where the probe has none) and snapshots_svd_s."""
        out = {"P": self.P, "steps": self.steps, "lines": list(self.plan_lines),
               "fits": self.fits, "fit": self.fit, "jacobian": self.jacobian,
               "method": self.method, "svd_dtype": self.svd_dtype,
               "snapshots": list(self.snapshots)}
        if self.probe_error:
            out["probe_error"] = self.probe_error
        if self.probe is not None:
            out.update({k: self.probe.get(k) for k in PROBE_KEYS})
            if self.probe.get("svd_s") is not None:
                out["snapshots_svd_s"] = len(self.snapshots) * self.probe["svd_s"]
        return out

    @classmethod
    def from_json(cls, d: dict) -> "PlanReport":
        """The report :meth:`to_json` wrote."""
        probe = {k: d.get(k) for k in PROBE_KEYS} if "device" in d else None
        return cls(P=d["P"], steps=d["steps"], plan_lines=list(d["lines"]), fits=d["fits"],
                   fit=d["fit"], jacobian=d["jacobian"], method=d["method"],
                   svd_dtype=d["svd_dtype"], snapshots=list(d.get("snapshots") or []),
                   probe=probe, probe_error=d.get("probe_error"))


def plan_report(cfg: RunConfig, sessions: str | Path, probe: bool = False,
                plan: Plan | None = None) -> PlanReport:
    """The plan of ``cfg`` with its sessions under ``sessions``: its sizes and whether they fit
    (torch-free for the built-in models); with ``probe``, also the timed probe's figures where
    :attr:`PlanReport.probes` (:func:`with_probe`); ``plan``: the run's plan when made already.
    Writes nothing. Raises what making the plan raises (:class:`ConfigError`,
    :class:`engine.schema.DataError`: data that cannot be read); a run that does not fit is a
    report that says so, not an error."""
    from . import plan as plan_mod

    pl = plan_mod.make_plan(cfg) if plan is None else plan
    try:
        check_fits(cfg, sessions, pl)
        fits = f"fits in {sessions}: yes ({fmt_bytes(plan_mod.free_disk(Path(sessions)))} free)"
        fit = True
    except PlanError as e:
        fits, fit = f"does not fit: {e}", False
    report = PlanReport(P=pl.P, steps=pl.steps,
                        plan_lines=pl.lines(plan_mod.where_svd_runs(cfg.device)),
                        fits=fits, fit=fit, jacobian=cfg.jacobian.enabled,
                        method=cfg.spectrum.method, svd_dtype=cfg.spectrum.svd_dtype,
                        snapshots=list(pl.snapshots))
    return with_probe(report, cfg) if probe else report


def with_probe(report: PlanReport, cfg: RunConfig) -> PlanReport:
    """``report`` with the figures of a short timed probe of ``cfg`` on its device
    (:func:`engine.runner.probe`: a few training steps of one chunk, or of each product of a
    matrix-free run, and the SVD's route timed at a small size); ``report`` itself when
    :attr:`PlanReport.probes` is false. Imports torch."""
    if not report.probes:
        return report
    from .runner import failure_reason, probe

    try:
        r = probe(cfg)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a user model's own failure: the plan says it
        return replace(report, probe_error=failure_reason(e)[:300])  # (as a run would)
    return replace(report, probe={k: r.get(k) for k in PROBE_KEYS})


# --------------------------------------------------------------------------------------------
# the plan of a sweep: every point's, and their sum


@dataclass
class SweepPlanReport:
    """What every point of a sweep will need here, and all of them together, as ``tjac sweep
    PRESET --plan`` prints it (:meth:`lines`: a table that reads at 80 columns) and the Setup
    pane shows it for a preset with a [sweep]."""

    name: str  # the sweep's (the preset's name)
    device: str  # where the SVDs run (engine.plan.where_svd_runs of the preset's device)
    points: list[tuple[str, PlanReport]]  # (point name, its plan), in the sweep's order
    disk: list[int]  # bytes each point writes (its plan's disk_total)
    svd_memory: list[int]  # bytes each point's SVD takes at its peak on ``device``
    fits: str  # "all N points fit in DIR: yes (...)", or "does not fit: <point>: <why>"
    fit: bool

    @property
    def largest(self) -> str:
        """The point with the most parameters (the one that dominates time and memory)."""
        return max(self.points, key=lambda np_: np_[1].P)[0]

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(columns, rows): one row a point, then the sum ("all N": the disk they write
        together, the largest SVD: they run one after another)."""
        cols = ["point", "P", "steps", "J on disk", "disk", "SVD memory", "fits"]
        rows = []
        for (name, r), disk, mem in zip(self.points, self.disk, self.svd_memory):
            jac = next((ln for ln in r.plan_lines if ln.startswith("jacobian.npy: ")), "")
            rows.append([name, f"{r.P:,}", f"{r.steps:,}",
                         jac.split(" on disk")[0].removeprefix("jacobian.npy: ") or "-",
                         fmt_bytes(disk), fmt_bytes(mem) if mem else "-",
                         "yes" if r.fit else "no"])
        rows.append([f"all {len(self.points)}", "", "", "", fmt_bytes(sum(self.disk)),
                     (fmt_bytes(max(self.svd_memory)) + " max") if any(self.svd_memory)
                     else "-", "yes" if self.fit else "no"])
        return cols, rows

    def lines(self) -> list[str]:
        """The table as aligned text (numbers right-aligned), a head line and the verdict."""
        where = "a GPU" if str(self.device).startswith("cuda") else "the CPU"
        head = (f"sweep {self.name}: {len(self.points)} points; the SVDs run on {where}, one "
                "after another")
        return [head, *_aligned(*self.table(), right={1, 2, 3, 4, 5}), self.fits]

    @property
    def probed(self) -> bool:
        """Whether any point's time probe has been made (:func:`sweep_with_probes`)."""
        return any(r.probe is not None for _, r in self.points)

    def time_table(self) -> tuple[list[str], list[list[str]]]:
        """(columns, rows) of the probes' estimates: each point's J, its SVD (and its
        snapshots' SVDs) and their total, then the sum ("all N": the points run one after
        another). A point that is not probed says why (it computes no J, or does not fit);
        a matrix-free point gives its spectrum's time as its J."""
        cols = ["point", "J", "SVD", "snapshots", "total"]
        rows, total, unknown = [], 0.0, False
        for name, r in self.points:
            t = point_seconds(r)
            if t is None:  # (why: the probe's own line, its failure included)
                why = (r.probe_lines() or ["not probed"])[0].removeprefix("no time probe: ")
                rows.append([name, why, "", "", "-"])
                unknown = True
                continue
            j, svd, snaps = t
            rows.append([name, fmt_seconds(j), fmt_seconds(svd) if svd is not None else "-",
                         fmt_seconds(snaps) if snaps else "-",
                         fmt_seconds(j + (svd or 0.0) + snaps)])
            total += j + (svd or 0.0) + snaps
        rows.append([f"all {len(self.points)}", "", "", "",
                     fmt_seconds(total) + (" + the points above" if unknown else "")])
        return cols, rows

    def to_json(self) -> dict:
        """A JSON object: name, device, points ([{name, plan}], each plan
        :meth:`PlanReport.to_json`'s, with its probe once probed), disk, svd_memory, fits,
        fit."""
        return {"name": self.name, "device": self.device,
                "points": [{"name": n, "plan": r.to_json()} for n, r in self.points],
                "disk": list(self.disk), "svd_memory": list(self.svd_memory),
                "fits": self.fits, "fit": self.fit}

    @classmethod
    def from_json(cls, d: dict) -> "SweepPlanReport":
        """The report :meth:`to_json` wrote."""
        return cls(name=d["name"], device=d["device"],
                   points=[(q["name"], PlanReport.from_json(q["plan"])) for q in d["points"]],
                   disk=list(d["disk"]), svd_memory=list(d["svd_memory"]), fits=d["fits"],
                   fit=d["fit"])

    def time_lines(self) -> list[str]:
        """:meth:`time_table` as aligned text, under a head line naming the device."""
        device = next((r.probe["device"] for _, r in self.points if r.probe), self.device)
        return [f"time on {device}, from a short probe of each point:",
                *_aligned(*self.time_table(), right={1, 2, 3, 4})]


def point_seconds(r: PlanReport) -> tuple[float, float | None, float] | None:
    """(J, its SVD, its snapshots' SVDs) in seconds, from ``r``'s probe (a matrix-free run's
    spectrum counts as its J, with no SVD); None without a probe."""
    p = r.probe
    if p is None:
        return None
    if r.method == "matfree":
        return float(p["matfree"]["seconds"]), None, 0.0
    svd = p.get("svd_s")
    snaps = len(r.snapshots) * svd if svd is not None else 0.0
    return float(p["jacobian_s"]), svd, snaps


def _aligned(cols: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """A header and rows as text columns two apart, those in ``right`` aligned right."""
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return [fmt(cols), *map(fmt, rows)]


def sweep_with_probes(report: SweepPlanReport, base: RunConfig, where: str = "<config>",
                      on_point: Callable[[int, str], None] | None = None) -> SweepPlanReport:
    """``report`` with each point's time probe (:func:`with_probe`, where the point fits and
    computes J); ``on_point(i, name)`` before point ``i`` is probed (the CLI says so). Imports
    torch; a few seconds a point."""
    from . import sweep as sweep_mod

    points = sweep_mod.points_of(base, where)
    probed = []
    for i, ((name, r), p) in enumerate(zip(report.points, points)):
        if on_point is not None and r.probes:
            on_point(i, name)
        probed.append((name, with_probe(r, p.config)))
    return replace(report, points=probed)


def sweep_plan_report(base: RunConfig, sessions: str | Path, where: str = "<config>"
                      ) -> SweepPlanReport:
    """The plan of every point of the config ``base`` (which has a [sweep]) with the sweep
    under ``sessions``: each point's :class:`PlanReport` (no probe) and the verdict of the
    check :func:`engine.sweep.create` makes before any point starts (their files add up on
    the disk; each SVD must fit where it runs), naming the point that does not fit. Writes
    nothing; raises ConfigError for an invalid point (named), like :func:`plan_report`."""
    from . import plan as plan_mod, sweep as sweep_mod

    points = sweep_mod.points_of(base, where)
    plans = sweep_mod.point_plans(points)
    device = plan_mod.where_svd_runs(base.device)
    reports = [(p.name, plan_report(p.config, sessions, plan=pl)) for p, pl in zip(points, plans)]
    try:
        sweep_mod.check(points, sessions, base.device, plans)
        fits = (f"all {len(points)} points fit in {sessions}: yes ("
                f"{fmt_bytes(plan_mod.free_disk(Path(sessions)))} free)")
        fit = True
    except PlanError as e:
        fits, fit = f"does not fit: {e}", False
    return SweepPlanReport(name=base.name, device=device, points=reports,
                           disk=[pl.disk_total for pl in plans],
                           svd_memory=[pl.svd_memory(device) for pl in plans], fits=fits,
                           fit=fit)


# --------------------------------------------------------------------------------------------
# resume


@dataclass(frozen=True)
class Refusal:
    """Why a session is not resumed: ``message`` is the one line ``tjac resume`` prints (and
    the workbench shows), ``kind`` one of :data:`REFUSALS`."""

    kind: str
    message: str

    @property
    def exit_code(self) -> int:
        """``tjac resume``'s exit status: 0 done, 1 an edited config.toml (a damaged session),
        2 the others (bad usage)."""
        return REFUSALS[self.kind]


# kind -> exit status. done: finished, every file checked; config: config.toml edited since
# the session was created (or missing); inputs: a data or model file the config names changed
# since then; device: --device not here; ranks: more ranks than GPUs; invalid: a config.toml
# that cannot be read, where the ranks need its device; usage: --device with --nproc; locked:
# another process holds the session (a worker runs it)
REFUSALS = {"done": 0, "config": 1, "inputs": 2, "device": 2, "ranks": 2, "invalid": 2,
            "usage": 2, "locked": 2}


def check_resumable(path: str | Path, device: str | None = None, nproc: int = 1
                    ) -> Refusal | None:
    """What ``tjac resume PATH [--device D] [--nproc N]`` refuses, in this order, before the
    session is touched: a ``device`` that is not here; a config.toml edited since the session
    was created (a session runs the config it was created with); a data or model file it
    names that changed since then (by sha256: a resume would mix two); ``nproc`` ranks on CUDA with
    fewer GPUs (a config.toml that cannot be read then); a finished session whose files all
    match their records ("done": the check reads every file, under the session's lock, and
    records new time stamps of files a copy changed); ``--device`` with ``--nproc``; a session
    another process holds (its worker). Returns None when it resumes: a session interrupted,
    failed, stale, damaged (resume recomputes what is) or finished with an analysis added to
    its config.toml. Reads the session; writes only the time stamps the "done" check
    refreshes."""
    s = Session(path)
    if device:
        try:
            device_mod.check_here(device)
        except device_mod.DeviceError as e:
            return Refusal("device", str(e))
    try:
        s.check_intact(deep=False, only={CONFIG})
    except SessionDamaged as e:
        if CONFIG in e.problems:
            return Refusal("config", str(e))
    try:
        s.check_inputs()
    except InputChanged as e:
        return Refusal("inputs", str(e))
    except SessionDamaged:  # (a damaged manifest: resume starts over from config.toml)
        pass
    if nproc > 1:  # as for run: a GPU for each rank on CUDA
        try:
            device_mod.check_ranks(s.config().device, nproc)
        except device_mod.DeviceError as e:
            return Refusal("ranks", str(e))
        except ConfigError as e:
            return Refusal("invalid", str(e))
    try:
        done = s.record().status == "done" and not s.unrun_analyses()
        if done:  # under the lock: times of files a copy changed are recorded anew
            try:
                s.acquire()
            except SessionLocked as e:
                return Refusal("locked", str(e))
            try:
                done = not s.verify(deep=True, refresh=True)
            finally:
                s.release()
    except SessionDamaged:  # (a damaged manifest: resume starts over from config.toml)
        done = False
    if done:
        return Refusal("done", f"{s.path}: already done (every file checked)")
    if nproc > 1 and device:
        return Refusal("usage", "--device and --nproc: each rank uses its own device "
                                "(cuda:LOCAL_RANK, or the CPU); leave out --device")
    try:  # the worker's own check, made before it starts
        s.acquire()
    except SessionLocked as e:
        return Refusal("locked", str(e))
    s.release()
    return None


# --------------------------------------------------------------------------------------------
# starting runs


def start(path: str | Path, nproc: int = 1, device: str | None = None) -> subprocess.Popen:
    """Start the run of the session at ``path`` in the background: one worker process
    (:func:`engine.worker.start_worker`, on ``device`` when given), or ``nproc`` ranks
    (:func:`engine.distributed.launch`, each on its own device; that imports torch). Either
    outlives the terminal that started it. Returns the process."""
    if nproc > 1:
        from .distributed import launch

        return launch(path, nproc)
    from .worker import start_worker

    return start_worker(path, device)


def run_foreground(path: str | Path, listeners: list[Listener], device: str | None = None,
                   nproc: int = 1) -> int:
    """Run (or resume) the session at ``path`` from this process, its events to
    ``listeners``; SIGTERM and ctrl+c stop it resumably. ``nproc`` > 1: that many ranks
    (:func:`run_ranks`). Returns the exit code (0 done, 1 failed, 3 interrupted)."""
    if nproc > 1:
        return run_ranks(path, nproc, listeners)
    from .runner import run_session

    return run_session(path, listeners, device=device, handle_signals=True)


def run_ranks(path: str | Path, nproc: int, listeners: list[Listener]) -> int:
    """``nproc`` ranks on this machine (torchrun, :mod:`engine.distributed`), their events fed
    to ``listeners`` from events.jsonl as they come; ctrl+c asks them to stop (resumable).
    Returns the run's exit code (from the session: 0 done, 3 interrupted, 1 otherwise)."""
    import signal
    import time

    from .distributed import launch
    from .files import read_jsonl
    from .runner import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

    session = Session(path)
    events = session.path / "events.jsonl"
    offset = events.stat().st_size if events.is_file() else 0
    proc = launch(session.path, nproc)

    def feed() -> None:
        nonlocal offset
        records, offset = read_jsonl(events, offset)
        for ev in records:
            for fn in listeners:
                fn(ev)

    def on_term(signum, frame):  # SIGTERM as ctrl+c: torchrun (its own process session)
        raise KeyboardInterrupt  # would otherwise run on without this process

    stopping = False
    before = signal.signal(signal.SIGTERM, on_term)
    try:
        while proc.poll() is None:
            try:
                feed()
                time.sleep(0.2)
            except KeyboardInterrupt:
                if not stopping:  # torchrun passes the stop on to every rank
                    stopping = True
                    proc.send_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    feed()
    status = session.record().status
    if status == "running":  # the ranks were killed before rank 0 could mark it
        return EXIT_FAILED
    return {"done": EXIT_OK, "interrupted": EXIT_INTERRUPTED}.get(status, EXIT_FAILED)


# --------------------------------------------------------------------------------------------
# files a user names for output (reports, comparisons, the schema)


class OutputRefused(ValueError):
    """An output path tjac will not write: ``str()`` is the one-line reason."""


# the records of a session or a sweep: a folder holding one of these is one
RECORD_FILES = (CONFIG, "manifest.json", "sweep.json", "sweep.toml")


def check_output(path: str | Path, suffixes: tuple[str, ...] = (".md",)) -> Path:
    """``path`` checked before a report, a comparison or the schema is written to it: its
    folder must exist (tjac creates no folders where it was not asked to), the path itself must
    be a regular file or not exist (a device node such as /dev/null, a FIFO, a socket or a
    symbolic link would be replaced by a regular file, as root too), and inside a session or a
    sweep (a folder holding ``manifest.json`` or ``sweep.json``, at any depth) only a file
    ending in one of ``suffixes`` that no record names may be written: ``-o S/config.toml``
    or ``-o S/manifest.json`` would overwrite what the session is checked against. Returns
    the path; raises :class:`OutputRefused`."""
    import os
    import stat

    p = Path(path)
    where = f"-o {path}"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputRefused(f"{where}: no such folder {parent} (tjac does not create it: make "
                            "it first, or name a file in a folder that exists)")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputRefused(f"{where}: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a folder"
                if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket, not a regular file")
        raise OutputRefused(f"{where}: {kind}; tjac writes its output to a regular file "
                            "(omit -o to print to the terminal)")
    for d in [parent.resolve(), *parent.resolve().parents]:
        if any((d / name).is_file() for name in ("manifest.json", "sweep.json")):
            recorded = _recorded_files(d)
            rel = p.resolve().relative_to(d).as_posix()
            if p.suffix not in suffixes or p.name in RECORD_FILES or rel in recorded:
                raise OutputRefused(f"{where}: {rel} is inside the session or sweep {d}, and "
                                    f"only a new {' or '.join(suffixes)} file may be written "
                                    "there (its records and outputs are checked against "
                                    "what it wrote)")
            break
    return p


def _recorded_files(d: Path) -> set[str]:
    """The files the manifest of the session (or sweep) at ``d`` records (none if unreadable)."""
    import json

    try:
        m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    files = m.get("files") if isinstance(m, dict) else None
    return set(files) if isinstance(files, dict) else set()
