"""The stages of a run, declared once, and the rules derived from the declaration (torch-free).

Each :class:`Stage` says what it is called, when it applies to a config, the stages whose
results it reads (``needs``), the function that performs it (``body``, ``"module:function"``,
imported only when it runs: :mod:`engine.stages`), the files it records (``writes``, glob
patterns relative to the session), the partial state to drop when one of its inputs changed
(``reset``), what its progress counts and what a UI calls it. :func:`table` lists them in
order (a stage comes after every stage it needs); the analyses are generated entries, one per
registered analysis (:data:`engine.sections.ANALYSES`), each needing ``spectrum``.

From the table alone, with no stage named in the rules:

* the stages of a config: :func:`stages_of` (a run), :func:`session_stages` (a session that is
  not running: the config and its manifest; what a UI lists);
* skips: a stage whose status is ``done`` is skipped (:mod:`engine.runner`);
* a stage that ran again and wrote different bytes: every stage that needs it, transitively,
  goes back to pending and drops its partial state (:func:`after_rerun`);
* a recorded file that is damaged: the stage that recorded it goes back to pending, and so does
  the stage that writes one of that file's inputs when the input is no longer there (a
  snapshot's J that ``jacobian.snapshot_keep`` did not keep: :func:`after_damage`);
* results a stage finds stale (a snapshot's J recomputed under its SVD): their records go and
  the stages that recorded them run again (:func:`stale`); an input that a stage finds wrong
  sends its writer back (:func:`rerun_writer_of`);
* a manifest that cannot be read: every stage's partial state goes (:func:`reset_all`).
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig
from .plan import count_steps, snapshot_steps
from .sections import ANALYSES

__all__ = ["Stage", "table", "stage", "stages_of", "session_stages", "names", "dependents",
           "writer_of", "after_rerun", "after_damage", "stale", "rerun_writer_of", "reset_all"]

# the Jacobian stores' progress records (engine.jacobian.JacobianStore.PROGRESS): what a
# recomputed training makes stale
JACOBIAN_PROGRESS = "jacobian.progress.json"


def always(cfg: RunConfig, snapshots: list[int]) -> bool:
    return True


def exact(cfg: RunConfig, snapshots: list[int]) -> bool:
    """J is formed (the exact Jacobian)."""
    return cfg.jacobian.enabled and cfg.spectrum.method != "matfree"


def matrix_free(cfg: RunConfig, snapshots: list[int]) -> bool:
    return cfg.jacobian.enabled and cfg.spectrum.method == "matfree"


def with_svd(cfg: RunConfig, snapshots: list[int]) -> bool:
    return exact(cfg, snapshots) and cfg.jacobian.svd


def with_snapshots(cfg: RunConfig, snapshots: list[int]) -> bool:
    return with_svd(cfg, snapshots) and bool(snapshots)


def snapshot_sources(rel: str) -> tuple[str, ...]:
    """What a file of a snapshot folder was computed from: that snapshot's J."""
    parts = rel.split("/")
    if len(parts) > 2 and parts[0] == "snapshots" and parts[1].startswith("step_"):
        return (f"{parts[0]}/{parts[1]}/jacobian.npy",)
    return ()


@dataclass(frozen=True)
class Stage:
    """One stage of a run (see the module docstring). ``applies(cfg, snapshots)``: whether a
    config runs it (``snapshots``: the steps of its snapshots of J, :attr:`engine.plan.Plan.
    snapshots`); ``sources(rel)``: the files a recorded file of this stage was computed from,
    when they can be gone (deleted by the run itself); ``reset``: glob patterns of the files
    to delete when an input of the stage changed."""

    name: str
    body: str  # "module:function", the function taking an engine.stages.RunContext
    needs: tuple[str, ...] = ()
    applies: Callable[[RunConfig, list[int]], bool] = always
    writes: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()
    sources: Callable[[str], tuple[str, ...]] | None = None
    unit: str | None = None
    title: str = ""

    def run(self, ctx: Any) -> None:
        """Perform the stage: its body on ``ctx`` (an :class:`engine.stages.RunContext`)."""
        module, fn = self.body.split(":")
        getattr(importlib.import_module(module), fn)(ctx)

    def writes_file(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) for p in self.writes)


def analysis_stage(name: str) -> Stage:
    """The generated entry of a registered analysis: it reads the SVD and the summary."""
    spec = ANALYSES[name]

    def applies(cfg: RunConfig, snapshots: list[int]) -> bool:
        return with_svd(cfg, snapshots) and name in cfg.analysis and cfg.analysis[name].enabled

    return Stage(f"analysis.{name}", "engine.stages.analysis:run", ("spectrum",), applies,
                 (f"analyses/{name}.json", f"analyses/{name}.npy", f"analyses/{name}_*.npy"),
                 unit="units", title=spec.title)


def table() -> list[Stage]:
    """Every stage, in order; the analyses as registered now."""
    return [
        Stage("train", "engine.stages.train:run", (), always,
              ("theta0.npz", "thetaT.npz", "buffersT.npz", "metrics.jsonl"), unit="steps",
              title="Training"),
        Stage("matfree", "engine.stages.matfree:run", ("train",), matrix_free,
              ("matfree.json",), unit="products", title="Matrix-free spectrum"),
        Stage("jacobian", "engine.stages.jacobian:run", ("train",), exact,
              ("jacobian.npy", "snapshots/step_*/jacobian.npy"),
              reset=(JACOBIAN_PROGRESS, f"snapshots/step_*/{JACOBIAN_PROGRESS}"),
              unit="columns", title="Jacobian"),
        Stage("svd", "engine.stages.svd:run", ("jacobian",), with_svd,
              ("svd/S.npy", "svd/U.npy", "svd/Vh.npy", "svd/alignment.npy"), title="SVD"),
        Stage("spectrum", "engine.stages.svd:spectrum_stage", ("svd",), with_svd, ("spectrum.json",),
              title="Spectrum"),
        Stage("snapshots", "engine.stages.snapshots:run", ("jacobian", "spectrum"),
              with_snapshots, ("snapshots/step_*/svd/*.npy", "snapshots/step_*/spectrum.json",
                               "snapshots/summary.json"),
              sources=snapshot_sources, unit="snapshots", title="Snapshots"),
        *(analysis_stage(n) for n in ANALYSES),
    ]


def stage(name: str) -> Stage:
    """The stage called ``name`` (KeyError if there is none)."""
    for st in table():
        if st.name == name:
            return st
    raise KeyError(name)


def stages_of(cfg: RunConfig, snapshots: list[int]) -> list[Stage]:
    """The stages a run of ``cfg`` performs, in order (``snapshots``: the plan's steps)."""
    return [st for st in table() if st.applies(cfg, snapshots)]


def names(stages: list[Stage]) -> list[str]:
    return [st.name for st in stages]


def session_stages(cfg: RunConfig, manifest: dict | None = None) -> list[Stage]:
    """The stages of a session that is not running, from its config and manifest (torch-free;
    what a UI lists before a run's ``run_start`` event names them). The snapshots' steps come
    from the data size the manifest records; before the first run has set the session up, a
    snapshot asked for in the config counts as one."""
    m = manifest or {}
    n_train = (m.get("data") or {}).get("n_train")
    j, t = cfg.jacobian, cfg.train
    if n_train:
        steps = count_steps(n_train, t.batch_size, t.epochs, t.drop_last)
        per_epoch = count_steps(n_train, t.batch_size, 1, t.drop_last)
        try:
            snaps = snapshot_steps(j, steps, per_epoch)
        except ValueError:  # (refused when the session was created)
            snaps = []
    else:
        snaps = [1] if (j.snapshots or j.snapshot_every or j.snapshot_epochs) else []
    return stages_of(cfg, snaps)


def dependents(name: str, among: list[str]) -> list[str]:
    """The stages of ``among`` that need ``name``, directly or through others, in order."""
    out: set[str] = {name}
    for st in table():
        if st.name in among and any(n in out for n in st.needs):
            out.add(st.name)
    return [n for n in among if n in out and n != name]


def writer_of(rel: str, among: list[str]) -> str | None:
    """The stage of ``among`` whose ``writes`` name the file ``rel``."""
    return next((n for n in among if stage(n).writes_file(rel)), None)


def reset_files(session_path: Path, st: Stage) -> None:
    for pattern in st.reset:
        for p in session_path.glob(pattern):
            p.unlink(missing_ok=True)


def reset_all(session_path: Path) -> None:
    """Every stage's partial state deleted (a manifest that cannot be trusted)."""
    for st in table():
        reset_files(session_path, st)


def send_back(session, name: str, among: list[str]) -> None:
    """``name`` back to pending when it is one of ``among`` and done."""
    if name in among and session.stage_status(name) == "done":
        session.set_stage(name, status="pending")


def after_rerun(session, name: str, among: list[str]) -> list[str]:
    """``name`` ran again and recorded different bytes: its dependents among the run's stages
    ``among`` go back to pending and drop their partial state. Returns them."""
    later = dependents(name, among)
    for n in later:
        session.set_stage(n, status="pending")
        reset_files(session.path, stage(n))
    return later


def after_damage(session, rel: str, among: list[str]) -> str | None:
    """The recorded file ``rel`` is damaged: the stage that recorded it goes back to pending,
    and the writer of each of the file's inputs that is no longer there (it is computed
    again). Returns the recording stage."""
    name = session.manifest()["files"][rel].get("stage")
    send_back(session, name, among)
    st = next((stage(n) for n in among if n == name), None)
    for src in (st.sources(rel) if st is not None and st.sources else ()):
        writer = writer_of(src, among)
        if writer is not None and not (session.path / src).exists():
            send_back(session, writer, among)
    return name


def stale(session, which: Callable[[str], bool], among: list[str]) -> None:
    """The recorded files for which ``which(rel)`` is true no longer hold (an input of theirs
    is being computed again): their records go, and the stages that recorded them run again."""
    files = session.manifest()["files"]
    for name in {files[rel].get("stage") for rel in files if which(rel)}:
        send_back(session, name, among)
    session.forget(which)


def rerun_writer_of(session, rel: str, among: list[str]) -> None:
    """The recorded file ``rel`` is not what its stage would write now: that stage runs again
    (its record stays, so a different result sends the later stages back too)."""
    rec = session.manifest()["files"].get(rel)
    if rec is not None:
        session.set_stage(rec.get("stage"), status="pending")


def check_order() -> None:
    """The table is in order: each stage after the stages it needs."""
    seen: set[str] = set()
    for st in table():
        missing = [n for n in st.needs if n not in seen]
        if missing:
            raise AssertionError(f"stage {st.name} needs {missing}, declared after it")
        seen.add(st.name)


check_order()
