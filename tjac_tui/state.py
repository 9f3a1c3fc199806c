"""Plain (UI-free) state of the workbench: the live view of a run folded from its event log,
session snapshots read off the event loop, config-field text parsing, GPU memory via NVML.

Everything here is cheap and synchronous; the app calls the file-reading parts from thread
workers and hands the results to the widgets on the event loop.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import config as config_mod
from engine.events import (AnalysisProgress, Event, Interrupted, JacobianChunk, JacobianRanks,
                           JacobianStart, MatfreeDone, MatfreeProgress, RunEnd, RunError,
                           RunStart, RunWarning, SnapshotDone, SnapshotStart, StageEnd,
                           StageSkip, StageStart, TrainStep, as_event)
from engine.session import Session, SessionError, status_of
from engine.units import fmt_bytes, fmt_seconds  # noqa: F401 - the project's formatters, here
# for the widgets that import them from this module

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# the stages of a session whose run_start did not name them (written before it did)
LEGACY_STAGES = ("train", "jacobian", "svd", "spectrum")


# --------------------------------------------------------------------------------------------
# the live state of one session, folded from events.jsonl


@dataclass
class LogLine:
    time: float
    kind: str  # info | warning | error
    text: str


@dataclass
class LiveState:
    """What the Live pane shows, built by :meth:`apply` from the session's events (in order)."""

    stages: dict[str, dict] = field(default_factory=dict)  # name -> {status, seconds}
    stage_order: list[str] = field(default_factory=list)  # run_start's stages
    steps: list[int] = field(default_factory=list)
    total_steps: int | None = None
    curves: dict[str, list[float | None]] = field(default_factory=lambda: {
        "train_loss": [], "test_loss": [], "train_acc": [], "test_acc": []})
    jac: dict[str, Any] = field(default_factory=dict)  # done, total, rate, eta, chunk, chunks
    rates: list[float] = field(default_factory=list)  # columns/s of each chunk of this attempt
    ranks: dict[int, dict] = field(default_factory=dict)  # distributed: rank -> done, rate
    run: dict[str, Any] = field(default_factory=dict)  # device, dtype, threads, P
    status: str = "?"
    log: deque = field(default_factory=lambda: deque(maxlen=200))
    errors: list[str] = field(default_factory=list)
    events_seen: int = 0
    log_total: int = 0  # lines ever logged (the deque keeps the last 200)

    def ranks_text(self) -> str:
        """One line on a distributed run's ranks: each one's columns and rate, and the total."""
        if not self.ranks:
            return ""
        parts = [f"r{r} {st['done']} cols" + (f" {st['rate']:.0f}/s" if st["rate"] else "")
                 for r, st in sorted(self.ranks.items())]
        return f"{len(self.ranks)} ranks: " + " | ".join(parts)

    def new_log_lines(self, before: int) -> list[LogLine]:
        """Lines logged since ``log_total`` was ``before``."""
        n = min(self.log_total - before, len(self.log))
        return list(self.log)[len(self.log) - n:] if n > 0 else []

    def apply(self, ev: Event | dict) -> set[str]:
        """Fold one event (a line of events.jsonl, decoded by :func:`engine.events.decode`, or
        the decoded event); returns the parts that changed (stages, curves, jac, log, status,
        run). Lines this version does not read are counted and ignored."""
        ev = as_event(ev)
        self.events_seen += 1
        t = ev.time if ev.time is not None else time.time()
        changed: set[str] = set()

        def log(text: str, level: str = "info") -> None:
            self.log.append(LogLine(t, level, text))
            self.log_total += 1
            changed.add("log")

        match ev:
            case TrainStep():
                self.steps.append(ev.step)
                self.total_steps = ev.steps
                for k in self.curves:
                    self.curves[k].append(getattr(ev, k))
                changed.add("curves")
            case RunStart():
                self.run = {"device": ev.device, "dtype": ev.dtype, "threads": ev.threads,
                            "P": ev.P}
                # the run names its stages; sessions written before it did: the four of then
                self.stage_order = list(ev.stages or LEGACY_STAGES)
                self.status = "running"
                changed |= {"run", "status", "stages"}
                log(f"run started on {ev.device} ({ev.dtype}, {ev.threads} threads), "
                    f"P = {ev.P}")
            case StageStart():
                st = self.stages.setdefault(ev.stage, {})
                st["status"] = "running"
                st["started_at"] = t
                if ev.stage == "train":  # a restarted training replaces the curves
                    self.steps.clear()
                    for v in self.curves.values():
                        v.clear()
                    changed.add("curves")
                changed.add("stages")
                log(f"{ev.stage}: started")
            case StageEnd():
                st = self.stages.setdefault(ev.stage, {})
                st.update(status="done", seconds=ev.seconds)
                changed.add("stages")
                log(f"{ev.stage}: done in {ev.seconds:.2f} s")
            case StageSkip():
                self.stages.setdefault(ev.stage, {})["status"] = "done"
                changed.add("stages")
                log(f"{ev.stage}: already done")
            case JacobianStart():
                self.jac = {"done": ev.done, "total": ev.total, "chunk": ev.chunk,
                            "chunks": ev.chunks, "rate": None, "eta": None}
                self.rates.clear()
                self.ranks.clear()
                changed.add("jac")
                log(f"jacobian: {ev.total} columns in {ev.chunks} chunks of {ev.chunk}"
                    + (f", {ev.done} already done" if ev.done else ""))
            case JacobianRanks():
                self.ranks = {r: {"done": 0, "rate": None, "chunks": n}
                              for r, n in enumerate(ev.shares)}
                changed.add("jac")
                log(f"jacobian: {ev.ranks} ranks, "
                    + ", ".join(f"rank {r}: {n} chunks" for r, n in enumerate(ev.shares)))
            case JacobianChunk(rank=int(r)):
                # one rank of several: the totals are the sums over ranks
                st = self.ranks.setdefault(r, {"done": 0, "rate": None, "chunks": None})
                st.update(done=ev.rank_done if ev.rank_done is not None else st["done"],
                          rate=ev.rate)
                total_rate = sum(x["rate"] or 0 for x in self.ranks.values())
                done = max(self.jac.get("done") or 0, ev.done)
                total = ev.total or self.jac.get("total")
                self.jac.update(done=done, total=total, rate=total_rate,
                                eta=(total - done) / total_rate if total_rate and total
                                else None)
                self.jac["last_chunk"] = ev.chunk
                if total_rate:
                    self.rates.append(total_rate)
                changed.add("jac")
                log(f"jacobian chunk {ev.chunk} (rank {r}): {done}/{total} columns"
                    + (f", {ev.rate:.1f} columns/s on this rank" if ev.rate else ""))
            case JacobianChunk():
                self.jac.update(done=ev.done, total=ev.total, rate=ev.rate, eta=ev.eta)
                self.jac["last_chunk"] = ev.chunk
                if ev.rate:
                    self.rates.append(float(ev.rate))
                for k in ("gpu_mem", "gpu_mem_peak"):
                    if getattr(ev, k) is not None:
                        self.jac[k] = getattr(ev, k)
                changed.add("jac")
                log(f"jacobian chunk {ev.chunk}: {ev.done}/{ev.total} columns"
                    + (f", {ev.rate:.1f} columns/s" if ev.rate else ""))
            case MatfreeProgress():
                st = self.stages.setdefault("matfree", {})
                st["note"] = f"{ev.phase} {ev.jvp + ev.vjp}"
                changed.add("stages")
            case MatfreeDone():
                self.stages.setdefault("matfree", {}).pop("note", None)
                log(f"matfree: s_1 = {ev.s_max:.6g} (top {ev.k}); bulk "
                    + "; ".join(f"tau {b['tol']:g}: ~{b['count']:.0f} in [{b['lower']:.0f}, "
                                f"{b['upper']:.0f}]" for b in ev.bulk))
                changed.add("stages")
            case SnapshotStart():
                self._progress("snapshots", ev.index, ev.total, t, "SVDs")
                changed.add("stages")
            case SnapshotDone():
                self._progress("snapshots", ev.index + 1, ev.total, t, "SVDs")
                c = ev.counts
                changed.add("stages")
                log(f"snapshot after step {ev.step}: s_1 = {ev.s_max:.6g}, chaotic "
                    f"{c.get('chaotic')} / bulk {c.get('bulk')} / stable {c.get('stable')} "
                    f"({ev.seconds:.1f} s)")
            case AnalysisProgress():
                self._progress(f"analysis.{ev.name}", ev.done, ev.total, t, ev.unit)
                changed.add("stages")
            case RunWarning():
                log(f"warning: {ev.message}", "warning")
            case RunError():
                msg = f"{ev.stage}: {ev.message}"
                self.errors.append(msg)
                if ev.stage in self.stages:
                    self.stages[ev.stage]["status"] = "failed"
                changed.add("stages")
                log(f"error in {msg}", "error")
            case Interrupted():
                if ev.stage in self.stages:
                    self.stages[ev.stage]["status"] = "interrupted"
                changed.add("stages")
                log(f"interrupted during {ev.stage} (resumable)", "warning")
            case RunEnd():
                self.status = ev.status
                changed.add("status")
                log(f"run ended: {ev.status} after {ev.seconds:.1f} s",
                    "error" if ev.status == "failed" else "info")
        return changed

    def _progress(self, stage: str, done: int, total: int, t: float, unit: str | None) -> None:
        """A stage's units done of ``total`` at time ``t``: ``progress`` (done, total), and
        ``unit``; ``eta`` (seconds left at the rate since its first unit of this attempt)."""
        st = self.stages.setdefault(stage, {})
        first = st.get("first_unit")
        if first is None or done < first[1]:  # (a new attempt starts lower)
            first = st["first_unit"] = (t, done)
        st["progress"] = (done, total)
        st["unit"] = unit
        rate = (done - first[1]) / (t - first[0]) if t > first[0] and done > first[1] else None
        st["rate"] = rate
        st["eta"] = (total - done) / rate if rate else None

    def progress_text(self, name: str) -> str:
        """A running stage's progress for the stages table: "31/42 dirs, 40 s left"."""
        st = self.stages.get(name, {})
        if not st.get("progress"):
            return ""
        done, total = st["progress"]
        text = f"{done}/{total}" + (f" {st['unit']}" if st.get("unit") else "")
        if st.get("eta") is not None and done < total:
            text += f", {fmt_seconds(st['eta'])} left"
        return text

    def stage_seconds(self, name: str, now: float | None = None) -> float | None:
        """Seconds a stage has run: its recorded time, plus, while it runs, the time since it
        started (the recorded time of a running stage is what earlier attempts took)."""
        st = self.stages.get(name, {})
        secs = st.get("seconds")
        if st.get("status") == "running" and st.get("started_at") is not None \
                and self.status == "running":
            now = time.time() if now is None else now
            return (secs or 0.0) + max(0.0, now - st["started_at"])
        return secs

    def merge_manifest(self, m: dict) -> None:
        """The manifest is the truth for stage states and timings (events may be missing for
        stages finished by an older run)."""
        for name, st in m.get("stages", {}).items():
            cur = self.stages.setdefault(name, {})
            if st.get("status"):
                cur["status"] = st["status"]
            if st.get("seconds") is not None:
                cur["seconds"] = st["seconds"]
            if name == "jacobian" and st.get("chunk"):
                self.jac.setdefault("chunk", st["chunk"])


# --------------------------------------------------------------------------------------------
# a snapshot of the files of a session (read in a thread worker)


@dataclass
class Snapshot:
    path: Path
    offset: int  # where the read started
    records: list[dict]
    new_offset: int
    manifest: dict
    locked: bool
    has_spectrum: bool
    gpu: dict | None = None
    problem: str | None = None  # why the manifest cannot be read

    @property
    def status(self) -> str:
        if self.problem and not self.manifest:
            return "damaged"
        return status_of(self.manifest, self.locked)


def read_snapshot(path: Path, offset: int) -> Snapshot:
    """New events from ``offset``, the manifest, whether a worker holds the lock."""
    s = Session(path)
    records, new_offset = s.events(offset)
    problem = None
    try:
        manifest = s.manifest()
    except SessionError as e:  # damaged or being replaced: show what the events say
        manifest, problem = {}, str(e)
    locked = s.is_locked()
    gpu = gpu_stats(manifest) if locked else None
    return Snapshot(path, offset, records, new_offset, manifest, locked,
                    (path / "spectrum.json").is_file(), gpu, problem)


# --------------------------------------------------------------------------------------------
# the worker's GPU (optional, NVML)

_nvml: Any = None


def _load_nvml():
    """pynvml (package nvidia-ml-py), initialised once; None where there is no NVML."""
    global _nvml
    if _nvml is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        except Exception:  # noqa: BLE001 - no package, no driver: no GPU stats
            _nvml = False
    return _nvml or None


def _nvml_handle(nv, info: dict, device: str):
    """The NVML handle of the session's GPU: by the UUID the worker recorded (CUDA numbers
    devices by speed unless CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML by PCI bus, and
    CUDA_VISIBLE_DEVICES renumbers them), else by its PCI bus id, else by the index."""
    if info.get("uuid"):
        try:
            return nv.nvmlDeviceGetHandleByUUID(info["uuid"]), "uuid"
        except Exception:  # noqa: BLE001 - a MIG uuid, an old driver: try the bus id
            pass
    if info.get("pci_bus_id"):
        try:
            return nv.nvmlDeviceGetHandleByPciBusId(info["pci_bus_id"]), "pci"
        except Exception:  # noqa: BLE001
            pass
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return nv.nvmlDeviceGetHandleByIndex(index), "index"


def gpu_stats(manifest: dict) -> dict | None:
    """The worker's GPU as NVML sees it: {"used", "total", "scope" ("worker": the worker
    process's own memory; "device": every process's), "util" (%), "temp" (C), "found_by"},
    or None without NVML (the Live pane then shows the worker's own figures from its events)."""
    device = str(manifest.get("device") or "")
    nv = _load_nvml()
    if nv is None or not device.startswith("cuda"):
        return None
    try:
        h, found_by = _nvml_handle(nv, manifest.get("device_info") or {}, device)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
    except Exception:  # noqa: BLE001 - no such device here
        return None
    out = {"used": int(mem.used), "total": int(mem.total), "scope": "device",
           "found_by": found_by, "util": None, "temp": None}
    pid = manifest.get("pid")
    try:  # the worker's own memory; pids differ inside containers: keep the device's then
        for p in nv.nvmlDeviceGetComputeRunningProcesses(h):
            if pid and p.pid == pid and p.usedGpuMemory is not None:
                out.update(used=int(p.usedGpuMemory), scope="worker")
    except Exception:  # noqa: BLE001
        pass
    try:
        out["util"] = int(nv.nvmlDeviceGetUtilizationRates(h).gpu)
    except Exception:  # noqa: BLE001
        pass
    try:
        out["temp"] = int(nv.nvmlDeviceGetTemperature(h, 0))  # 0: NVML_TEMPERATURE_GPU
    except Exception:  # noqa: BLE001
        pass
    return out


# --------------------------------------------------------------------------------------------
# config fields as text (the Setup pane)


def value_to_text(v: Any, nested: bool = False) -> str:
    """A config value as the text a user would type after ``--set key=`` to get it back. A bare
    word reads back as a string, but only at the top: strings inside a list are quoted."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        if nested or v != v.strip():
            return json.dumps(v)
        try:
            tomllib.loads(f"v = {v}")
        except tomllib.TOMLDecodeError:
            return v
        return json.dumps(v)  # would read back as a number / bool / list: quote it
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(value_to_text(x, nested=True) for x in v) + "]"
    if isinstance(v, dict):  # an inline table: { name = "seed1", set = ["seed=1"] }
        keys = [k if k.replace("_", "").replace("-", "").isalnum() and k.isascii()
                else json.dumps(k) for k in v]
        return "{ " + ", ".join(f"{k} = {value_to_text(x, nested=True)}"
                                for k, x in zip(keys, v.values())) + " }"
    return str(v)


def parse_field(key: str, text: str) -> Any:
    """Parse and check one field the way ``tjac run --set key=text`` does; raises
    :class:`engine.config.ConfigError` with the CLI's message."""
    _, value = config_mod.parse_override(f"{key}={text}")
    return config_mod.check_value(key, value)


def _is_leaf(key: str) -> bool:
    try:
        config_mod.field_info(key)
    except KeyError:
        return False
    return True


def flatten(cfg_dict: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}, "analysis": {"x": {"k": 1}}} -> {"train.lr": 0.1,
    "analysis.x.k": 1} (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in cfg_dict.items():
        if isinstance(v, dict) and not _is_leaf(f"{prefix}{k}"):  # (sweep.values is a leaf)
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(values: dict[str, Any]) -> dict:
    """The inverse of :func:`flatten`: a TOML-shaped table."""
    table: dict[str, Any] = {}
    for key, v in values.items():
        *parents, name = key.split(".")
        node = table
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = v
    return table


def field_help(key: str) -> str:
    """Help text of a dotted key (the registered analyses' keys too)."""
    try:
        return config_mod.field_info(key).help
    except KeyError:
        return ""


def unreadable_text(path: Path, e: BaseException) -> str:
    """One line for a pane that could not read a session's files: the engine's own message
    (it names the file and what to do) or the error, and what to do."""
    if isinstance(e, SessionError):
        return str(e)
    return (f"{path}: cannot read it ({type(e).__name__}: {e}); `tjac resume` checks every "
            "file and recomputes what is damaged")
