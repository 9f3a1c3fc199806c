"""The events of a run and of a sweep: one frozen dataclass per kind, the one encoder and the
one decoder.

A run's progress is a stream of events: ``events.jsonl`` in the session (one JSON object per
line) and the in-process listeners of :class:`engine.runner.Runner` (``tjac run``'s bars), a
sweep's likewise in ``<sweep>/events.jsonl``. Each kind is a class below, named by its ``kind``
(the line's ``"event"``); its fields are typed and documented here, and docs/events.md is
generated from these classes (``python -m engine.events``; tests/test_docs.py checks it).

* :func:`make` ``(kind, **fields)``: the event a runner emits; an undeclared kind, an
  undeclared or missing field, or a value of the wrong type raises :class:`EventError` (the
  emitters are checked by every run the tests make).
* :func:`encode` ``(event) -> dict``: what a line of ``events.jsonl`` holds,
  ``{"event": kind, "time": ..., fields...}`` (an optional field that is None is left out).
* :func:`decode` ``(dict) -> Event``: every consumer's reader (the workbench, ``tjac run``,
  ``tjac sweep``). It never raises: a kind it does not know, or a field of the wrong type (a
  session written by another version, a damaged line) decodes to :class:`Unknown`, which
  consumers ignore; a field the line lacks takes its default, or its type's empty value (0,
  0.0, "", []) when it has none (a line of an older version); fields the class does not know
  are dropped.

Plain data only (no torch, no numpy): the workbench imports this without the engine's heavy
parts.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

__all__ = ["Event", "Unknown", "EventError", "KINDS", "make", "encode", "decode", "as_event",
           "reference_markdown"]


class EventError(TypeError):
    """An event that is not one of the declared kinds with its declared fields."""


def doc(text: str, default: Any = dataclasses.MISSING, omit_none: bool = False,
        factory: Callable[[], Any] | None = None):
    """A documented field: ``text`` goes to the reference; ``omit_none``: left out of the
    encoded line when None (fields that only some runs have: a rank, the GPU's memory)."""
    kw: dict[str, Any] = {"metadata": {"doc": text, "omit_none": omit_none}}
    if factory is not None:
        kw["default_factory"] = factory
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return field(**kw)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Every event: ``kind`` names its class, ``time`` is when it was emitted (Unix seconds,
    rounded to ms)."""

    kind: ClassVar[str] = ""
    time: float | None = doc("when it was emitted (Unix seconds)", None)

    def __post_init__(self) -> None:
        for name, check, expected in _SPECS.get(type(self), ()):
            v = getattr(self, name)
            if not check(v):
                raise EventError(f"event {self.kind}: {name}: expected {expected}, got "
                                 f"{type(v).__name__} {v!r:.60}")


@dataclass(frozen=True, kw_only=True)
class Unknown(Event):
    """A line this version does not read: another kind, or a field missing or of the wrong
    type. ``data`` is the line as it was; consumers ignore it."""

    name: str = ""
    data: dict = field(default_factory=dict)


KINDS: dict[str, type[Event]] = {}
_SPECS: dict[type, list[tuple[str, Callable[[Any], bool], str]]] = {}
SECTIONS: list[tuple[str, list[str]]] = []  # (heading, kinds) of the reference


def _checker(hint) -> Callable[[Any], bool]:
    """A predicate for a value of type ``hint`` (int, float, str, bool, list[X], dict, X | None):
    exact types, as JSON has them; an int is a float too, a bool is neither."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_checker(a) for a in args if a is not type(None)]
        none_ok = type(None) in args
        return lambda v: (none_ok and v is None) or any(p(v) for p in parts)
    if origin is list:
        item = _checker(args[0]) if args else (lambda v: True)
        return lambda v: isinstance(v, (list, tuple)) and all(item(x) for x in v)
    if origin is dict or hint is dict:
        return lambda v: isinstance(v, dict)
    if hint is float:
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if hint is Any:
        return lambda v: True
    return lambda v: isinstance(v, hint)


def event(kind: str, section: str):
    """Class decorator: a frozen, keyword-only dataclass registered as ``kind``."""

    def deco(cls):
        cls = dataclass(frozen=True, kw_only=True)(cls)
        cls.kind = kind
        hints = typing.get_type_hints(cls, vars(sys.modules[__name__]))
        _SPECS[cls] = [(f.name, _checker(hints[f.name]), _type_text(f))
                       for f in dataclasses.fields(cls) if f.name != "time"]
        KINDS[kind] = cls
        if not SECTIONS or SECTIONS[-1][0] != section:
            SECTIONS.append((section, []))
        SECTIONS[-1][1].append(kind)
        return cls

    return deco


def _type_text(f: dataclasses.Field) -> str:
    return str(f.type).replace("typing.", "")


# --------------------------------------------------------------------------------------------
# a run (engine.runner, engine.distributed, the analyses)

RUN = "A run (the session's events.jsonl)"


@event("run_start", RUN)
class RunStart(Event):
    """The run (or a resume of it) begins, after its config is read and the device chosen."""

    session: str = doc("the session's folder")
    device: str = doc("where it runs: cpu, cuda:0, ...")
    dtype: str = doc("the run's dtype: float32 or float64")
    threads: int = doc("torch's CPU threads")
    P: int = doc("the number of parameters")
    stages: list[str] = doc("the run's stages in order (train, jacobian, svd, spectrum, "
                            "snapshots, matfree, analysis.NAME)", factory=list)


@event("run_end", RUN)
class RunEnd(Event):
    """The run stopped: finished, failed or interrupted (always the last event of a run)."""

    status: str = doc("done, failed or interrupted")
    seconds: float = doc("wall time of this process's run")


@event("stage_start", RUN)
class StageStart(Event):
    """A stage begins."""

    stage: str = doc("the stage's name")


@event("stage_end", RUN)
class StageEnd(Event):
    """A stage finished."""

    stage: str = doc("the stage's name")
    seconds: float = doc("the stage's time, earlier interrupted attempts included")


@event("stage_skip", RUN)
class StageSkip(Event):
    """A stage finished by an earlier run (its files checked): not run again."""

    stage: str = doc("the stage's name")


@event("train_step", RUN)
class TrainStep(Event):
    """An evaluated training step (every ``train.eval_every`` steps, the last, and step 0,
    the initialisation)."""

    steps: int = doc("the training's number of steps")
    step: int = doc("steps taken (0: the initialisation)")
    lr: float | None = doc("the step's learning rate (None at step 0)")
    train_loss: float = doc("mean cross-entropy on the training set")
    train_acc: float = doc("accuracy on the training set")
    test_loss: float = doc("mean cross-entropy on the test set")
    test_acc: float = doc("accuracy on the test set")


@event("jacobian_start", RUN)
class JacobianStart(Event):
    """The Jacobian's columns start (or resume) being computed."""

    total: int = doc("columns of J (P)")
    chunk: int = doc("columns per chunk")
    chunks: int = doc("number of chunks")
    done: int = doc("columns already done (a resume)")


@event("jacobian_chunk", RUN)
class JacobianChunk(Event):
    """A chunk of J's columns is written."""

    chunk: int = doc("the chunk's index")
    done: int = doc("columns done (of every rank, in a distributed run)")
    total: int = doc("columns of J (P)")
    rate: float = doc("columns a second of this process in this attempt")
    eta: float | None = doc("seconds left at that rate (None before any rate)")
    primal_dev: float | None = doc("max |theta_T of the chunk - thetaT.npz|: 0 in principle "
                                   "(None: a line that does not say)", None)
    rank: int | None = doc("distributed: the rank that computed it", None, omit_none=True)
    rank_done: int | None = doc("distributed: that rank's columns so far", None,
                                omit_none=True)
    gpu_mem: int | None = doc("CUDA: bytes allocated by the worker's torch caching allocator",
                              None, omit_none=True)
    gpu_mem_peak: int | None = doc("CUDA: the peak of gpu_mem", None, omit_none=True)


@event("jacobian_ranks", RUN)
class JacobianRanks(Event):
    """A distributed run's ranks and their shares of the chunks."""

    ranks: int = doc("number of ranks")
    shares: list[int] = doc("chunks of each rank, rank 0 first")


@event("matfree_progress", RUN)
class MatfreeProgress(Event):
    """Matrix-free products so far (``spectrum.method = "matfree"``; at most one a second)."""

    phase: str = doc("checkpoints, top-k or bulk")
    jvp: int = doc("J v products so far")
    vjp: int = doc("J^T u products so far")


@event("matfree_done", RUN)
class MatfreeDone(Event):
    """The matrix-free estimates are written (matfree.json)."""

    s_max: float = doc("the largest singular value")
    k: int = doc("top singular values computed")
    bulk: list[dict] = doc("per tolerance: {tol, count, lower, upper}, the bulk-size "
                           "estimate and its bounds")


@event("snapshot_start", RUN)
class SnapshotStart(Event):
    """A snapshot's SVD begins (``jacobian.snapshots``: J after an earlier step)."""

    step: int = doc("the training step of the snapshot")
    index: int = doc("its position among the snapshots (0-based): snapshots done")
    total: int = doc("the number of snapshots")


@event("snapshot_done", RUN)
class SnapshotDone(Event):
    """A snapshot's SVD and summary are written."""

    step: int = doc("the training step of the snapshot")
    index: int = doc("its position among the snapshots (0-based)")
    total: int = doc("the number of snapshots")
    s_max: float = doc("its largest singular value")
    seconds: float = doc("time its SVD and summary took")
    counts: dict[str, int] = doc("its chaotic / bulk / stable counts")


@event("analysis_progress", RUN)
class AnalysisProgress(Event):
    """An analysis finished a unit of its work (a batch of directions, of restricted
    trainings, ...); every analysis emits one with ``done = 0`` when it starts."""

    name: str = doc("the analysis (its stage is analysis.NAME)")
    done: int = doc("units done")
    total: int = doc("units in all")
    unit: str | None = doc("what a unit is: dirs (directions), runs (trainings), ...", None,
                           omit_none=True)


@event("warning", RUN)
class RunWarning(Event):
    """Something the user should know that does not stop the run (a resume on another
    device, a damaged file computed again, an out-of-memory retry with smaller chunks)."""

    message: str = doc("one line")


@event("error", RUN)
class RunError(Event):
    """The run failed (a run_end with status failed follows)."""

    stage: str = doc("the stage that failed (setup: before any stage)")
    message: str = doc("one line: why")


@event("interrupted", RUN)
class Interrupted(Event):
    """The run was asked to stop (SIGTERM, SIGINT) and stopped resumably."""

    stage: str = doc("the stage it stopped in")


# --------------------------------------------------------------------------------------------
# a sweep (engine.sweep)

SWEEP = "A sweep (the sweep folder's events.jsonl)"


@event("sweep_start", SWEEP)
class SweepStart(Event):
    """The sweep starts (or resumes)."""

    sweep: str = doc("the sweep's folder")
    points: list[str] = doc("the points' names, in order")
    parallel: int = doc("points run at once")


@event("sweep_point", SWEEP)
class SweepPoint(Event):
    """A point starts, or is found done already (then status is done)."""

    name: str = doc("the point")
    index: int = doc("its position (0-based)")
    total: int = doc("the number of points")
    status: str | None = doc("its session's status before it starts")


@event("sweep_point_end", SWEEP)
class SweepPointEnd(Event):
    """A point's run stopped."""

    name: str = doc("the point")
    index: int = doc("its position (0-based)")
    total: int = doc("the number of points")
    status: str | None = doc("its session's status: done, failed, interrupted")


@event("compare_start", SWEEP)
class CompareStart(Event):
    """The comparison of the points begins."""


@event("compare_progress", SWEEP)
class CompareProgress(Event):
    """The bulk-overlap part of the comparison: points done."""

    done: int = doc("points compared")
    total: int = doc("points to compare (and the random baseline)")


@event("compare_end", SWEEP)
class CompareEnd(Event):
    """The comparison is written (analyses/sweep.json)."""

    seconds: float = doc("its time")


@event("sweep_end", SWEEP)
class SweepEnd(Event):
    """The sweep stopped."""

    status: str = doc("done, failed or interrupted")
    failed: list[str] | None = doc("the points that failed; absent when interrupted", None,
                                   omit_none=True)
    seconds: float | None = doc("its time; absent when interrupted", None, omit_none=True)


# --------------------------------------------------------------------------------------------


def make(kind: str, **fields) -> Event:
    """The event ``kind`` with ``fields`` (and ``time``), checked: raises :class:`EventError`
    for a kind that is not declared, a field it does not have or lacks, or a wrong type."""
    cls = KINDS.get(kind)
    if cls is None:
        raise EventError(f"event {kind!r}: not a declared kind (engine/events.py)")
    try:
        return cls(**fields)
    except EventError:
        raise
    except TypeError as e:  # an unexpected or a missing keyword
        raise EventError(f"event {kind}: {e}") from None


def encode(ev: Event) -> dict:
    """The JSON object of ``ev``: ``{"event": kind, "time": ..., fields...}`` in the class's
    field order; an optional field (omit_none) that is None is left out."""
    if isinstance(ev, Unknown):
        return dict(ev.data)
    out: dict[str, Any] = {"event": ev.kind, "time": ev.time}
    for f in dataclasses.fields(ev):
        if f.name == "time":
            continue
        v = getattr(ev, f.name)
        if v is None and f.metadata.get("omit_none"):
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def decode(rec: dict) -> Event:
    """The event of one line (see the module docstring); never raises."""
    if not isinstance(rec, dict):
        return Unknown(name="", data={})
    kind = rec.get("event")
    t = rec.get("time")
    t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return Unknown(time=t, name=str(kind), data=rec)
    fields = [f for f in dataclasses.fields(cls) if f.name != "time"]
    present = {f.name: rec[f.name] for f in fields if f.name in rec}
    try:
        return cls(time=t, **present)
    except TypeError:  # (EventError too) a field missing, or of the wrong type
        pass
    missing = [f.name for f in fields if f.name not in present
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if not missing:  # a field of the wrong type: not this kind as declared
        return Unknown(time=t, name=kind, data=rec)
    try:  # a line an older version wrote without a field: that field reads as its type's
        # empty value (0, 0.0, "", []), so that every consumer can show the rest
        return cls(time=t, **present, **{n: _placeholder(cls, n) for n in missing})
    except TypeError:
        return Unknown(time=t, name=kind, data=rec)


def _placeholder(cls, name: str) -> Any:
    """A value of the declared type of field ``name`` (for checking a line's other fields)."""
    hint = typing.get_type_hints(cls)[name]
    for t in (typing.get_args(hint) or (hint,)):
        origin = typing.get_origin(t) or t
        if origin in (int, float, str, bool, list, dict):
            return origin()
    return None


def as_event(ev: Event | dict) -> Event:
    """``ev`` itself, or the decoded line (listeners get the lines as dicts)."""
    return ev if isinstance(ev, Event) else decode(ev)


def reference_markdown() -> str:
    """docs/events.md's reference: every kind, its docstring and its fields' types and
    meanings (markdown)."""
    out = []
    for heading, kinds in SECTIONS:
        out.append(f"## {heading}\n")
        for kind in kinds:
            cls = KINDS[kind]
            out.append(f"### `{kind}`\n")
            out.append(" ".join((cls.__doc__ or "").split()) + "\n")
            fields = [f for f in dataclasses.fields(cls) if f.name != "time"]
            if not fields:
                out.append("No fields.\n")
                continue
            out.append("| field | type | meaning |\n| --- | --- | --- |")
            for f in fields:
                text = f.metadata.get("doc", "")
                defaulted = (f.default is not dataclasses.MISSING
                             or f.default_factory is not dataclasses.MISSING)
                if f.metadata.get("omit_none"):
                    text += "" if "absent" in text else " (absent when it does not apply)"
                elif defaulted:
                    text += " (may be absent in older sessions)"
                kind_text = _type_text(f).replace("|", "\\|")  # (a table cell)
                out.append(f"| `{f.name}` | `{kind_text}` | {text} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
