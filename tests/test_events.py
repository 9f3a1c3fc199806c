"""The events: every emitter in engine/ names a declared kind with declared fields (read from the
source), the encoder writes what events.jsonl has always held, and the decoder reads lines of
older and newer sessions without raising."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from engine import events
from engine.events import EventError, decode, encode, make
from tjac_tui.state import LiveState

REPO = Path(__file__).resolve().parents[1]

# lines as sessions written before engine/events.py hold them (run_start without its stages,
# analysis_progress without a unit), and as the runner writes them now
OLD_SESSION = [
    {"event": "run_start", "time": 1.0, "session": "s/quick", "device": "cpu",
     "dtype": "float32", "threads": 2, "P": 1210},
    {"event": "stage_start", "time": 1.1, "stage": "train"},
    {"event": "train_step", "time": 1.2, "steps": 16, "step": 0, "lr": None,
     "train_loss": 2.3, "train_acc": 0.1, "test_loss": 2.31, "test_acc": 0.09},
    {"event": "train_step", "time": 1.3, "steps": 16, "step": 16, "lr": 0.0,
     "train_loss": 0.5, "train_acc": 0.9, "test_loss": 0.6, "test_acc": 0.85},
    {"event": "stage_end", "time": 1.4, "stage": "train", "seconds": 0.3},
    {"event": "stage_start", "time": 1.5, "stage": "jacobian"},
    {"event": "jacobian_start", "time": 1.5, "total": 1210, "chunk": 605, "chunks": 2,
     "done": 0},
    {"event": "jacobian_chunk", "time": 2.0, "chunk": 0, "done": 605, "total": 1210,
     "rate": 1210.0, "eta": 0.5, "primal_dev": 0.0},
    {"event": "jacobian_chunk", "time": 2.5, "chunk": 1, "done": 1210, "total": 1210,
     "rate": 1210.0, "eta": 0.0, "primal_dev": 0.0},
    {"event": "stage_end", "time": 2.6, "stage": "jacobian", "seconds": 1.1},
    {"event": "stage_skip", "time": 2.7, "stage": "svd"},
    {"event": "stage_start", "time": 3.0, "stage": "analysis.ood"},
    {"event": "analysis_progress", "time": 4.0, "name": "ood", "done": 8, "total": 16},
    {"event": "warning", "time": 4.5, "message": "jacobian.npy: 1 chunk(s) did not match"},
    {"event": "run_end", "time": 5.0, "status": "interrupted", "seconds": 4.0},
]


def test_old_lines_decode_to_their_events_and_encode_back_unchanged():
    decoded = [decode(line) for line in OLD_SESSION]
    assert [type(e).__name__ for e in decoded] == [
        "RunStart", "StageStart", "TrainStep", "TrainStep", "StageEnd", "StageStart",
        "JacobianStart", "JacobianChunk", "JacobianChunk", "StageEnd", "StageSkip",
        "StageStart", "AnalysisProgress", "RunWarning", "RunEnd"]
    start = decoded[0]
    assert start.stages == [] and start.P == 1210 and start.time == 1.0
    assert decoded[7].rank is None and decoded[7].gpu_mem is None and decoded[7].eta == 0.5
    assert decoded[12].unit is None and decoded[12].done == 8
    # the file's lines are what the encoder writes: the fields absent then are absent now
    assert [encode(e) for e in decoded[1:]] == OLD_SESSION[1:]
    assert encode(start) == {**OLD_SESSION[0], "stages": []}


def test_lines_of_other_versions_never_raise():
    lines = [
        {"event": "gpu_sample", "time": 3.0, "util": 80},  # a kind of a newer version
        {"event": "jacobian_chunk", "time": 3.0, "chunk": "0", "done": 1, "total": 2,
         "rate": 1.0, "eta": None, "primal_dev": 0.0},  # a field of the wrong type
        {"event": "stage_skip", "stage": 3},
        {"event": 7}, {"time": 1.0}, {}, "not an object", None,
    ]
    out = [decode(x) for x in lines]
    assert all(isinstance(e, events.Unknown) for e in out)
    assert out[0].name == "gpu_sample" and out[0].data == lines[0] and out[0].time == 3.0
    assert encode(out[0]) == lines[0]  # kept as it was
    # a field a newer version added is dropped, the event read
    ev = decode({"event": "stage_start", "time": 1.0, "stage": "svd", "route": "gram"})
    assert isinstance(ev, events.StageStart) and ev.stage == "svd"
    live = LiveState()
    for x in lines:
        assert live.apply(x) == set()
    assert live.events_seen == len(lines)
    # a field an older version did not write reads as its type's empty value, the event kept
    # (the Live pane of an old session still shows its stages, its GPU memory...)
    old = {"event": "stage_end", "time": 3.0, "stage": "svd"}
    ev = decode(old)
    assert isinstance(ev, events.StageEnd) and ev.stage == "svd" and ev.seconds == 0.0
    assert "stages" in live.apply(old)
    assert isinstance(decode({"event": "run_start", "device": "cpu", "dtype": "float32",
                              "threads": 1, "P": 3}), events.RunStart)


def test_an_old_session_folds_with_the_stages_it_ran():
    live = LiveState()
    for line in OLD_SESSION:
        live.apply(line)
    assert live.stage_order == ["train", "jacobian", "svd", "spectrum"]  # (its run_start
    # did not name them: the four stages of then)
    assert live.status == "interrupted" and live.jac["done"] == 1210
    assert live.stages["analysis.ood"]["progress"] == (8, 16)
    assert live.steps == [0, 16] and live.curves["test_acc"] == [0.09, 0.85]
    named = LiveState()
    named.apply({**OLD_SESSION[0], "stages": ["train", "matfree"]})
    assert named.stage_order == ["train", "matfree"]


@pytest.mark.parametrize("kind, fields, why", [
    ("stage_begin", {"stage": "svd"}, "not a declared kind"),
    ("stage_start", {"stage": "svd", "seconds": 1.0}, "unexpected keyword argument 'seconds'"),
    ("stage_end", {"stage": "svd"}, "missing 1 required keyword-only argument: 'seconds'"),
    ("stage_start", {"stage": 3}, "stage: expected str, got int 3"),
    ("jacobian_ranks", {"ranks": True, "shares": [1]}, "ranks: expected int, got bool"),
    ("jacobian_ranks", {"ranks": 2, "shares": [1, "2"]}, "shares: expected list[int]"),
    ("run_end", {"status": "done", "seconds": "1.5"}, "seconds: expected float, got str"),
])
def test_an_undeclared_kind_or_field_is_refused(kind, fields, why):
    with pytest.raises(EventError, match=why.replace("[", r"\[").replace("]", r"\]")):
        make(kind, **fields)


def test_optional_fields_are_written_only_when_they_apply():
    ev = make("jacobian_chunk", time=2.0, chunk=0, done=1, total=2, rate=1.0, eta=None,
              primal_dev=0.0, rank=1, rank_done=1)
    assert encode(ev) == {"event": "jacobian_chunk", "time": 2.0, "chunk": 0, "done": 1,
                          "total": 2, "rate": 1.0, "eta": None, "primal_dev": 0.0, "rank": 1,
                          "rank_done": 1}
    assert encode(make("sweep_end", time=1.0, status="interrupted")) == {
        "event": "sweep_end", "time": 1.0, "status": "interrupted"}
    assert decode(encode(ev)) == ev


# ---- every emitter, read from the source -----------------------------------------------------


def emit_sites() -> list[tuple[str, int, str, set[str], bool]]:
    """Every ``.emit("kind", ...)`` / ``emit(listeners, "kind", ...)`` (``_emit_quietly``
    too) and analysis
    ``progress(ctx, ...)`` call in engine/: (file, line, kind, keyword names, has **kwargs)."""
    out = []
    for path in sorted((REPO / "engine").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            rel = str(path.relative_to(REPO))
            if name == "progress" and rel.startswith("engine/experiments/") and node.args \
                    and getattr(node.args[0], "id", None) == "ctx":
                out.append((rel, node.lineno, "analysis_progress",
                            {"name", "done", "total"} | ({"unit"} if len(node.args) > 4
                                                        else set()), False))
                continue
            if name not in ("emit", "_emit_quietly"):
                continue
            consts = [a for a in node.args[:2] if isinstance(a, ast.Constant)
                      and isinstance(a.value, str)]
            if not consts and any(getattr(a, "id", None) == "event" for a in node.args[:2]):
                continue  # (_emit_quietly passing its caller's kind on)
            assert consts, f"{rel}:{node.lineno}: emit without a literal kind"
            kws = {k.arg for k in node.keywords if k.arg is not None}
            out.append((rel, node.lineno, consts[0].value, kws,
                        any(k.arg is None for k in node.keywords)))
    return out


def test_every_emitter_names_a_declared_kind_with_declared_fields():
    sites = emit_sites()
    kinds = {k for _, _, k, _, _ in sites}
    # the scan sees the emitters of the runner, the ranks, the analyses and the sweep
    assert {"run_start", "jacobian_chunk", "jacobian_ranks", "analysis_progress",
            "snapshot_done", "matfree_done", "sweep_point_end", "compare_end"} <= kinds
    for rel, line, kind, kws, _ in sites:
        assert kind in events.KINDS, f"{rel}:{line}: {kind!r} is not declared"
        cls = events.KINDS[kind]
        names = {f.name for f in cls.__dataclass_fields__.values()}
        assert kws <= names, f"{rel}:{line}: {kind} has no field {sorted(kws - names)}"
    assert kinds == set(events.KINDS)  # and every declared kind is emitted somewhere


def test_the_live_pane_tells_an_analysis_units_and_time_left():
    live = LiveState()
    live.apply({**OLD_SESSION[0], "stages": ["train", "analysis.ood"]})
    live.apply({"event": "stage_start", "time": 10.0, "stage": "analysis.ood"})
    live.apply({"event": "analysis_progress", "time": 10.0, "name": "ood", "done": 0,
                "total": 39, "unit": "dirs"})
    assert live.progress_text("analysis.ood") == "0/39 dirs"
    live.apply({"event": "analysis_progress", "time": 12.0, "name": "ood", "done": 8,
                "total": 39, "unit": "dirs"})
    assert live.progress_text("analysis.ood") == "8/39 dirs, 7.8 s left"  # 4 a second
    live.apply({"event": "snapshot_start", "time": 13.0, "step": 4, "index": 0, "total": 2})
    assert live.progress_text("snapshots") == "0/2 SVDs"


def test_bars_of_a_session_that_did_not_name_its_stages_come_as_they_start():
    import io

    from rich.console import Console

    from tjac_tui.progress import RichProgress

    buf = io.StringIO()
    with RichProgress(Console(file=buf, width=80, color_system=None)) as bars:
        for line in OLD_SESSION:
            bars(line)
    final = buf.getvalue().splitlines()[-3:]  # (the last frame: the bars so far)
    assert [re.search(r"[a-z_]+", ln).group() for ln in final] == ["train", "jacobian", "ood"]
    assert "16/16 steps" in final[0] and "1210/1210 columns" in final[1]
    assert " 8/16 " in final[2]
    assert "svd: already done" in buf.getvalue()
