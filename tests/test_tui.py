"""The Textual workbench, driven with Pilot (``App.run_test``) on real sessions of presets/quick.

A finished quick session is produced once for the module (in this process, ~5 s); the tests that
start runs from the app use worker processes, like a user would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from engine import asciiplot
from engine.runner import run_session
from engine.session import Session
from engine import config as config_mod
from engine.spectrum import region_rows
from tjac_tui.app import TjacApp
from tjac_tui.screens import (ComparePane, ConfirmScreen, HelpScreen, LivePane, RegionsPane,
                              SessionsPane, SetupPane, SpectrumPane)
from tjac_tui.state import LiveState, parse_field, value_to_text
from tjac_tui.widgets import JacobianBar

from conftest import compare, running, screen_lines, until

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "presets" / "quick.toml"


@pytest.fixture(scope="module")
def finished(quick_session) -> Path:
    return quick_session


@pytest.fixture(scope="module")
def with_analysis(finished, tmp_path_factory) -> Path:
    """A copy of the finished session with [analysis.distance] added: resuming it runs only
    that stage (the others are done)."""
    path = tmp_path_factory.mktemp("analysed") / "quick-distance"
    shutil.copytree(finished, path)
    with open(path / "config.toml", "a") as f:
        f.write("\n[analysis.distance]\n")
    assert run_session(path) == 0
    assert Session(path).manifest()["stages"]["analysis.distance"]["status"] == "done"
    return path


def run(coro):
    return asyncio.run(coro)


def expected_rows(path: Path) -> list[list[str]]:
    from tjac_tui.screens.regions import COLUMNS

    return [[str(r[c]) for c in COLUMNS] for r in region_rows(Session(path).spectrum())]


# --------------------------------------------------------------------------------------------
# plain helpers (no app)


def test_decimate_keeps_extremes_and_is_small():
    rng = np.random.default_rng(0)
    y = rng.normal(size=60_000)
    y[12_345] = 50.0
    y[54_321] = -50.0
    x = np.arange(len(y), dtype=float)
    xs, ys = asciiplot.decimate(x, y, 150)
    assert len(xs) <= 2 * 150 + 2
    assert ys.max() == 50.0 and ys.min() == -50.0
    assert np.all(np.diff(xs) > 0)
    np.testing.assert_array_equal(ys, y[xs.astype(int)])


def test_big_spectrum_draws_fast_and_ascii_is_plain():
    S = np.sort(np.abs(np.random.default_rng(1).normal(size=60_000)))[::-1] * 3
    S[30_000:30_010] = 1.0
    t0 = time.perf_counter()
    p = asciiplot.distance_plot(S, None, 160, 40, ascii=True, color=False)
    assert time.perf_counter() - t0 < 1.0
    assert asciiplot.is_plain_ascii(p.text)
    assert sum(len(s.x) for s in p.series) <= 4 * 160  # a few points per character cell
    assert "10 exact zero(s)" in p.text


def test_log_ticks_label_decades():
    pos, labels = asciiplot.log_ticks(-3.2, 0.4, max_ticks=6)
    assert pos == [-3.0, -2.0, -1.0, 0.0] and labels == ["1e-3", "0.01", "0.1", "1"]
    pos, labels = asciiplot.log_ticks(-16.0, 0.3, max_ticks=5)
    assert len(pos) <= 5 and labels[0] == "1e-16"
    # inside one decade the labels take the digits they need to differ (both were "1.1")
    lo, hi = np.log10(1.068), np.log10(1.136)
    assert asciiplot.log_ticks(lo, hi)[1] == ["1.07", "1.14"]


def test_linear_ticks_never_say_minus_zero():
    """0 as a running sum of steps came out as -5.6e-17 and was labelled "-0"."""
    seen = 0
    for lo in np.linspace(-1, 0, 41):
        for hi in np.linspace(0.01, 1, 25):
            for n in range(3, 9):
                pos, labels = asciiplot.nice_ticks(lo, hi, n)
                assert "-0" not in labels, (lo, hi, n, labels)
                seen += "0" in labels
    assert seen > 1000
    assert asciiplot.nice_ticks(-1.0, 0.01, 7) == ([-1.0, -0.8, -0.6, -0.4, -0.2, 0.0],
                                                   ["-1", "-0.8", "-0.6", "-0.4", "-0.2", "0"])


def test_field_text_roundtrip():
    for info in config_mod.describe(with_plugins=True):
        assert parse_field(info.key, value_to_text(info.default)) == info.default, info.key
    cfg = config_mod.load(QUICK)
    assert parse_field("model.hidden", value_to_text(cfg.model.hidden)) == [16]
    assert value_to_text("123") == '"123"' and parse_field("name", '"123"') == "123"
    with pytest.raises(config_mod.ConfigError, match='train.lr: expected a positive number, '
                                                     'got "fast"'):
        parse_field("train.lr", "fast")


def test_live_state_folds_the_event_log(finished):
    live = LiveState()
    for ev in Session(finished).events()[0]:
        live.apply(ev)
    m = Session(finished).manifest()
    assert live.status == "done"
    assert {k: v["status"] for k, v in live.stages.items()} == {
        "train": "done", "jacobian": "done", "svd": "done", "spectrum": "done"}
    assert live.jac["done"] == live.jac["total"] == m["P"]
    assert len(live.steps) == m["steps"] + 1
    assert live.curves["test_loss"][-1] == pytest.approx(m["final_metrics"]["test_loss"])


# --------------------------------------------------------------------------------------------
# the app on a finished session


def test_open_finished_session_live_regions_spectrum(finished):
    async def go():
        app = TjacApp(sessions_dir=finished.parent, session=finished.name)
        async with running(app, (120, 40)) as pilot:
            assert app.active_pane == "live"
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            await until(pilot, lambda: app.regions_rows() == expected_rows(finished),
                        what="the regions table")
            summary = Session(finished).spectrum()
            P = summary["P"]
            # Live: stages, Jacobian progress, final metrics, all from the session
            assert app.stage_states() == {"train": "done", "jacobian": "done", "svd": "done",
                                          "spectrum": "done"}
            bar = app.query_one(JacobianBar)
            assert bar.jac["done"] == bar.jac["total"] == P
            assert f"{P} / {P} cols" in str(bar.render())
            live = app.query_one(LivePane)
            assert "status done" in live.header_text and f"P {P}" in live.header_text
            fm = Session(finished).manifest()["final_metrics"]
            train_txt = str(app.query_one("#live-train").render())
            assert f"test loss {fm['test_loss']:.4f}" in train_txt
            await until(pilot, lambda: app.query_one("#loss-plot").plot is not None,
                        what="the loss curve")
            loss = app.query_one("#loss-plot").plot.data()
            metrics = Session(finished).metrics()
            xs, ys = loss["train loss"]
            np.testing.assert_allclose(ys, [metrics[int(x)]["train_loss"] for x in xs])
            # Regions: summary line with s_max, s_min and P
            head = str(app.query_one("#regions-summary").render())
            assert f"P = {P}" in head and f"s_max = {summary['s_max']:.6g}" in head
            assert f"s_min = {summary['s_min']:.6g}" in head
            # Spectrum pane
            await pilot.press("3")
            assert app.active_pane == "spectrum"
            pane = app.query_one(SpectrumPane)
            views = pane.views()
            await until(pilot, lambda: all(v.plot is not None for v in views.values()),
                        what="the spectrum plots")
            S = Session(finished).load_npy("svd/S.npy")
            a = Session(finished).load_npy("svd/alignment.npy")
            for kind, plot in (("s", views["s"].plot), ("dist", views["dist"].plot),
                               ("align", views["align"].plot)):
                data = plot.data()
                # one series per region, labelled with the index ranges of spectrum.json
                assert list(data) == [f"{n} {summary['regions'][n]['start']}.."
                                      f"{summary['regions'][n]['stop'] - 1}"
                                      for n in ("chaotic", "bulk", "stable")]
                for name, (x, y) in zip(("chaotic", "bulk", "stable"), data.values()):
                    r = summary["regions"][name]
                    assert x[0] == r["start"] and x[-1] == r["stop"] - 1
                    idx = x.astype(int)
                    if kind == "s":
                        np.testing.assert_allclose(y, np.log10(S[idx]))
                    elif kind == "dist":
                        d = np.abs(S[idx] - 1)
                        pos = d > 0
                        np.testing.assert_allclose(y[pos], np.log10(d[pos]))
                        assert np.all(y[~pos] < np.log10(np.abs(S - 1)[np.abs(S - 1) > 0].min()))
                    else:
                        np.testing.assert_allclose(y, a[idx])
                # region boundaries are marked
                assert plot.vlines == [summary["regions"]["bulk"]["start"] - 0.5,
                                       summary["regions"]["stable"]["start"] - 0.5]
                assert plot.log_y == (kind != "align")
            # the extremes survive the downsampling
            ys = np.concatenate([y for _, y in views["s"].plot.data().values()])
            assert ys.max() == pytest.approx(np.log10(S[0]))
            assert ys.min() == pytest.approx(np.log10(S[-1]))
            # redraws on resize, for the new size
            before = views["s"].plot.text
            await pilot.resize_terminal(90, 30)
            await until(pilot, lambda: views["s"].plot.text != before, what="a redraw")
            lines = asciiplot.strip_ansi(views["s"].plot.text).splitlines()
            assert max(len(line) for line in lines) <= 90
    run(go())


def test_regions_table_at_80x24(finished):
    """At 80 columns every value of the table is on screen, u.v and the subspace cosine too
    (they were past the right edge, behind a sideways scroll), none cut short. "4" is pressed
    while the app starts: opening the session named on the command line switched back to
    Live."""
    async def go():
        app = TjacApp(sessions_dir=finished.parent, session=finished.name)
        async with running(app, (80, 24)) as pilot:
            await pilot.press("4")
            await until(pilot, lambda: app.regions_rows() == expected_rows(finished),
                        what="the regions table")
            assert app.query_one(RegionsPane).summary == Session(finished).spectrum()
            await until(pilot, lambda: any(x.lstrip("│ ").startswith("stable")
                                           for x in screen_lines(app)),
                        what="the regions table on screen")  # (drawn after its rows are set)
            lines = screen_lines(app)
            for r in region_rows(Session(finished).spectrum()):
                line = next((x for x in lines if x.lstrip("│ ").startswith(r["region"])), "")
                assert line, (r["region"], lines)
                cells = line.split()
                for c in ("count", "indices", "fraction", "u.v mean", "subspace cos"):
                    assert str(r[c]) in cells, (c, line)
                assert r["s range"] in line, line
            assert any("u.v" in x for x in lines) and any("subspace" in x for x in lines)
    run(go())


def test_export_writes_the_report(finished):
    async def go():
        app = TjacApp(sessions_dir=finished.parent, session=finished.name)
        async with running(app, (100, 30)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            (finished / "report.md").unlink(missing_ok=True)
            await pilot.press("e")
            await until(pilot, lambda: app.last_report is not None, what="the report")
            assert app.last_report == finished / "report.md"
            assert app.sub_title == finished.name  # (it kept "report: PATH" for good)
    run(go())
    text = (finished / "report.md").read_text()
    summary = Session(finished).spectrum()
    assert text.startswith(f"# tjac report: {finished.name}")
    for r in region_rows(summary):
        assert f"| {r['region']} | {r['count']} | {r['indices']} | {r['s range']} |" in text
    assert "## Timings" in text and "```toml" in text and 'name = "quick"' in text
    blocks = text.split("```text\n")[1:]
    assert len(blocks) >= 5  # loss, accuracy, s, |s - 1|, u . v, then the analyses'
    assert "## The paper's findings, checked" in text
    assert all(asciiplot.is_plain_ascii(b.split("```")[0]) for b in blocks)


@pytest.mark.slow
def test_setup_validates_as_you_type(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (100, 30)) as pilot:
            setup = app.pane("setup")
            assert setup.preset_path == QUICK
            lr = await setup.reveal("train.lr")
            assert lr.input.value == "0.1"
            lr.input.value = ""
            await pilot.press(*"fast")
            await pilot.pause(0.1)
            msg = 'train.lr: expected a positive number, got "fast"'
            assert lr.error == msg
            assert str(lr.query_one(".field-msg").render()) == msg
            assert lr.query_one(".field-msg").has_class("-error")
            assert lr.input.has_class("-bad-value")
            assert app.query_one("#start-btn").disabled
            assert msg in setup.status_text
            # the focused field's, its key once
            assert str(app.query_one("#setup-help").render()) == msg
            # fixed: valid again, the whole config checks out; the field and the preset are
            # marked modified
            lr.input.value = ""
            await pilot.press(*"0.05")
            await pilot.pause(0.1)
            assert lr.error is None and not app.query_one("#start-btn").disabled
            assert setup.config().train.lr == 0.05
            assert lr.modified and ">*lr" in str(lr.query_one(".field-key").render())
            assert setup.status_text == f"{QUICK} (modified: 1 field): valid"
            # a cross-key rule (final_lr <= lr) is reported like the CLI does
            (await setup.reveal("train.final_lr", focus=False)).input.value = "0.5"
            await pilot.pause(0.1)
            assert "train.final_lr: expected a number <= train.lr (0.05), got 0.5" in \
                setup.status_text
            setup.field("train.final_lr").input.value = "0.0"
            hidden = await setup.reveal("model.hidden", focus=False)
            hidden.input.value = "[8, 0]"
            await pilot.pause(0.1)
            assert setup.field("model.hidden").error == (
                "model.hidden: expected a list of positive integers (hidden layer widths), "
                "got [8, 0]")
            setup.field("model.hidden").input.value = "[8]"
            await pilot.pause(0.1)
            # save as a new preset (ctrl+s asks a name), then it is the loaded preset
            app.set_focus(None)
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            box = app.screen.query_one("#save-path")
            assert box.value == "quick-edited"
            box.value = ""
            await pilot.press(*"mine", "enter")
            await pilot.pause(0.2)
            saved = tmp_path / "mine.toml"
            cfg = config_mod.load(saved)
            assert cfg.train.lr == 0.05 and cfg.model.hidden == [8]
            assert setup.preset_path == saved and setup.modified_keys() == []
            # saving over an existing file is refused in the dialog, which stays open
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            app.screen.query_one("#save-path").value = "mine"
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert "mine.toml: exists; pick another name" in \
                str(app.screen.query_one("#saveas-msg").render())
            await pilot.press("escape")
            # a bad file: one line naming it, fields unchanged
            bad = tmp_path / "bad.toml"
            bad.write_text("[train]\nlr = -1\n")
            assert not setup.load_preset(bad)
            assert setup.status_text == f"{bad}: train.lr: expected a positive number, got -1"
    run(go())


def test_help_palette_and_ascii(finished, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")

    async def go():
        app = TjacApp(sessions_dir=finished.parent, session=finished.name, ascii_only=True)
        async with running(app, (80, 24)) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            keys = [k for _, rows in app.screen.sections for k, _ in rows]
            for k in ("1", "2", "3", "4", "5", "6", "7", "e", "x", "r", "?", "q", "ctrl+p",
                      "ctrl+r", "ctrl+s"):
                assert k in keys
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            titles = [c.title for c in app.get_system_commands(app.screen)]
            for t in ("Setup pane (1)", "Live pane (2)", "Spectrum pane (3)",
                      "Regions pane (4)", "Sessions pane (5)", "Compare pane (6)",
                      "Analyses pane (7)",
                      "Export report (e)", "Cancel run (x)", "Resume run (r)"):
                assert t in titles
            await pilot.press("3")
            views = app.query_one(SpectrumPane).views()
            await until(pilot, lambda: all(v.plot is not None for v in views.values()),
                        what="the spectrum plots")
            assert not app.plot_color  # NO_COLOR: plots without ANSI colours
            for v in views.values():
                assert asciiplot.is_plain_ascii(v.plot.text) and "\x1b[" not in v.plot.text
            await pilot.press("2")
            assert "#" in str(app.query_one(JacobianBar).render())
    run(go())


@pytest.mark.slow
def test_sessions_delete_and_compare(finished, tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    a = root / "a"
    b = root / "b"
    shutil.copytree(finished, a)
    shutil.copytree(finished, b)

    async def go():
        app = TjacApp(sessions_dir=root)
        async with running(app, (120, 40)) as pilot:
            await pilot.press("5")
            pane = app.query_one(SessionsPane)
            await until(pilot, lambda: len(pane.rows) == 2, what="the sessions table")
            assert {r["name"] for r in pane.rows} == {"a", "b"}
            assert all(r["status"] == "done" and r["P"] == 1210 for r in pane.rows)
            # compare both
            await pilot.press("6")
            cmp_ = app.query_one(ComparePane)
            await until(pilot, lambda: len(cmp_.choices) == 2, what="compare choices")
            cmp_.select([a, b])
            await until(pilot, lambda: cmp_.rows and app.query_one("#cmp-dist").plot
                        and app.query_one("#cmp-s").plot, what="the comparison")
            summary = Session(finished).spectrum()
            counts = {r[0]: r[1:] for r in cmp_.rows}
            for n in ("chaotic", "bulk", "stable"):
                c = summary["regions"][n]["count"]
                assert counts[n][0].startswith(f"{c} (") and counts[n][1].startswith(f"{c} (")
            assert list(app.query_one("#cmp-s").plot.data()) == ["a", "b"]
            # open b, then delete it (with confirmation)
            await pilot.press("5")
            table = app.query_one("#sessions-table")
            row = [r["name"] for r in pane.rows].index("b")
            table.move_cursor(row=row)
            await pilot.press("enter")
            await until(pilot, lambda: app.current == b, what="open")
            assert app.active_pane == "live"
            await pilot.press("5")
            table.move_cursor(row=[r["name"] for r in pane.rows].index("b"))
            await pilot.press("d")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert b.exists()
            await pilot.press("d")
            await pilot.press("y")
            await until(pilot, lambda: not b.exists(), what="the delete")
            await until(pilot, lambda: app.current is None, what="the current session to go")
            await until(pilot, lambda: [r["name"] for r in pane.rows] == ["a"], what="refresh")
    run(go())


# --------------------------------------------------------------------------------------------
# runs started from the app (worker processes)


@pytest.mark.slow
def test_start_quick_from_setup_and_watch_it_finish(tmp_path):
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset="quick")
        async with running(app, (120, 40)) as pilot:
            await pilot.press("ctrl+r")
            await until(pilot, lambda: app.current is not None, what="the session")
            await until(pilot, lambda: app.active_pane == "live", what="the Live pane")
            path = app.current
            await until(pilot, lambda: app.live.status == "done", timeout=120,
                        what="the run to finish")
            await until(pilot, lambda: app.regions_rows() == expected_rows(path),
                        what="the regions table")
            P = Session(path).spectrum()["P"]
            assert app.stage_states() == {"train": "done", "jacobian": "done", "svd": "done",
                                          "spectrum": "done"}
            assert f"{P} / {P} cols" in str(app.query_one(JacobianBar).render())
            log = [line.text for line in app.live.log]
            assert any(t.startswith("jacobian chunk") for t in log)
            assert log[-1].startswith("run ended: done")
            assert Session(path).manifest()["preset"] == str(QUICK)
            return path
    path = run(go())
    assert Session(path).manifest()["status"] == "done"


def _worker_alive(path: Path) -> bool:
    pid = Session(path).manifest().get("pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return Session(path).is_locked()


@pytest.mark.slow
def test_cancel_resume_detach_and_reattach(tmp_path):
    """Start a run with many Jacobian chunks, cancel it (x: interrupted, resumable), resume it
    (r), quit the app mid-Jacobian: the worker goes on; a new app attaches and sees it end."""
    P = 64 * 8 + 8 + 8 * 10 + 10

    async def first():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            # P = 610 in 20 chunks of 32 over 320 steps: enough work (~10 s) that the stop
            # (asked, then confirmed) lands mid-Jacobian
            for key, value in (("jacobian.chunk", "32"), ("model.hidden", "[8]"),
                               ("train.epochs", "40"), ("name", "many-chunks")):
                (await setup.reveal(key, focus=False)).input.value = value
            await pilot.pause(0.1)
            await pilot.press("ctrl+r")
            await until(pilot, lambda: app.current is not None, what="the session")
            path = app.current
            await until(pilot, lambda: 0 < (app.live.jac.get("done") or 0) < P,
                        timeout=120, what="the first Jacobian chunk")
            assert app.live.jac["chunks"] == 20
            await pilot.press("x")  # asks first
            assert isinstance(app.screen, ConfirmScreen)
            assert "Stop the run many-chunks" in " ".join(screen_lines(app))
            await pilot.press("y")
            await until(pilot, lambda: app.live.status == "interrupted", timeout=60,
                        what="the interruption")
            m = Session(path).manifest()
            assert m["status"] == "interrupted"
            assert m["stages"]["jacobian"]["status"] == "interrupted"
            done_at_stop = m["stages"]["jacobian"]["columns_done"]
            assert 0 < done_at_stop < P and done_at_stop % 32 == 0
            await until(pilot, lambda: app.check_action("resume_run", ()), what="resumable")
            await pilot.press("r")
            await until(pilot, lambda: app.live.status == "running", timeout=60,
                        what="the resumed run")
            await until(pilot, lambda: (app.live.jac.get("done") or 0) > done_at_stop,
                        timeout=60, what="a chunk after the resume")
            skipped = [line.text for line in app.live.log if "already done" in line.text]
            assert "train: already done" in skipped
        return path  # the app has exited here

    path = run(first())
    assert _worker_alive(path), "the worker should outlive the app"
    assert Session(path).manifest()["status"] == "running"

    async def second():
        app = TjacApp(sessions_dir=tmp_path, session=str(path))
        async with running(app, (100, 30)) as pilot:
            await until(pilot, lambda: app.live.events_seen > 0, what="the catch-up")
            await until(pilot, lambda: app.live.status == "done", timeout=180,
                        what="the run to finish")
            await until(pilot, lambda: app.regions_rows() == expected_rows(path),
                        what="the regions table")
            assert app.live.jac["done"] == P
            assert app.stage_states()["jacobian"] == "done"
    try:
        run(second())
    finally:
        if _worker_alive(path):
            from engine.worker import request_stop

            request_stop(path)
    assert not _worker_alive(path)


def test_analyses_pane_follows_the_session(with_analysis):
    async def go():
        app = TjacApp(sessions_dir=with_analysis.parent, session=with_analysis.name)
        async with running(app, (120, 40)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            assert "analysis.distance" in app.stage_states()
            await pilot.press("7")
            assert app.active_pane == "analyses"
            pane = app.query_one("#analyses-pane")
            await until(pilot, lambda: pane.shown, what="the analyses")
            assert [a["name"] for a in pane.shown] == ["distance"]
            await until(pilot, lambda: pane.table_rows(), what="the analysis tables")
            plots = list(pane.query(".analysis-plot"))
            assert plots
            await until(pilot, lambda: all(p.plot is not None for p in plots),
                        what="the analysis plots")
            # another session: the pane follows
            app.open_session(None)
            await pilot.pause(0.1)
            assert pane.shown == [] and pane.path is None
    run(go())


# --------------------------------------------------------------------------------------------
# defects found by trying the workbench as a new user would


def screen_text(app) -> str:
    return "\n".join(screen_lines(app))


SHIPPED = sorted(p.name for p in (REPO / "presets").glob("*.toml"))


@pytest.mark.parametrize("preset", SHIPPED)
def test_every_shipped_preset_loads_in_setup_with_no_invalid_field(preset, tmp_path):
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(REPO / "presets" / preset))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            await pilot.pause(0.2)
            assert setup.errors() == {}
            assert setup.status_text.endswith(": valid")
            assert not app.query_one("#start-btn").disabled
            expected = config_mod.load(REPO / "presets" / preset)
            assert setup.config() == expected  # every field reads back as loaded
    run(go())


def test_setup_never_imports_torch(tmp_path):
    """Loading every shipped preset of a built-in model in the Setup pane (a fresh interpreter)
    imports no torch (P is arithmetic); those of a user model (model.build: the user's code
    imports torch, and the plan builds the module to count P) load after them, with no error."""
    code = f"""
import asyncio, sys
from pathlib import Path
from tjac_tui.app import TjacApp
from tjac_tui.screens import SetupPane

async def go():
    app = TjacApp(sessions_dir={str(tmp_path)!r})
    async with app.run_test(size=(100, 30)) as pilot:
        setup = app.query_one(SetupPane)
        presets = sorted(Path({str(REPO / 'presets')!r}).glob("*.toml"),
                         key=lambda p: ("build =" in p.read_text(), p.name))
        for p in presets:
            if "build =" in p.read_text() and not hasattr(go, "builtin"):
                await app.settled()
                go.builtin = "torch" in sys.modules  # after every built-in preset's plan
            assert setup.load_preset(p), setup.status_text
            await pilot.pause(0.1)
            assert setup.errors() == {{}}, (p, setup.errors())
        await pilot.press("2", "3", "4", "5", "6", "7", "1")
        await pilot.pause(0.5)
        await app.settled()
    print(go.builtin)

asyncio.run(go())
"""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_lists_of_strings_read_back_quoted():
    assert value_to_text(["bulk", "top", 2000]) == '["bulk", "top", 2000]'
    assert parse_field("analysis.perturbation.directions",
                       value_to_text(["bulk", "top", 2000])) == ["bulk", "top", 2000]
    assert value_to_text("relu") == "relu"  # a bare word at the top stays bare


def test_a_stale_error_goes_when_another_preset_loads(tmp_path):
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(REPO / "presets" / "paper-digits-sgd.toml"))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            (await setup.reveal("analysis.perturbation.directions")).input.value = "[bulk]"
            await pilot.pause(0.2)
            assert "1 invalid field(s)" in setup.status_text
            assert app.query_one("#start-btn").disabled
            assert setup.load_preset(QUICK)  # its analysis fields go with the old preset
            assert "analysis.perturbation.directions" not in setup.fields()
            assert setup.errors() == {}
            assert setup.status_text == f"{QUICK}: valid"
            assert not app.query_one("#start-btn").disabled
            await pilot.pause(0.2)
            assert "invalid" not in setup.status_text
            # and the other way round: ctrl+r refuses what the status line calls invalid
            (await setup.reveal("train.lr")).input.value = "fast"
            await pilot.pause(0.2)
            assert setup.action_start() is None and app.current is None
    run(go())


def test_live_log_shows_the_newest_line_at_80x24(finished):
    async def go():
        app = TjacApp(sessions_dir=finished.parent, session=finished.name)
        async with running(app, (80, 24)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            await pilot.pause(0.3)
            newest = app.live.log[-1].text
            assert newest.startswith("run ended: done")
            assert newest in screen_text(app)
    run(go())


def test_a_running_stage_shows_its_elapsed_time(tmp_path):
    """The worker is in the svd stage, started 12 s ago (a session whose lock this test holds,
    as a live worker would): the stage's time counts up instead of showing '-'."""
    s = Session.create(tmp_path, "svd-running", config_mod.load(QUICK))
    now = time.time()
    for ev in ({"event": "run_start", "time": now - 20, "device": "cpu", "dtype": "float32",
                "threads": 1, "P": 1210, "stages": ["train", "jacobian", "svd", "spectrum"]},
               {"event": "stage_start", "time": now - 20, "stage": "train"},
               {"event": "stage_end", "time": now - 19, "stage": "train", "seconds": 1.0},
               {"event": "stage_skip", "time": now - 19, "stage": "jacobian"},
               {"event": "stage_start", "time": now - 12, "stage": "svd"}):
        s.append_jsonl("events.jsonl", ev)
    s.update_manifest(status="running", P=1210, stages={
        "train": {"status": "done", "seconds": 1.0}, "jacobian": {"status": "done",
                                                                  "seconds": 7.0},
        "svd": {"status": "running"}})
    s.acquire()
    try:
        async def go():
            app = TjacApp(sessions_dir=tmp_path, session=s.path.name)
            async with running(app, (100, 30)) as pilot:
                await until(pilot, lambda: app.live.status == "running", what="the events")
                t = app.query_one("#stages-table")

                def svd_time() -> str:
                    return str(t.get_cell("svd", "time"))

                await until(pilot, lambda: svd_time().endswith(" s"), what="the svd time")
                first = float(svd_time().split()[0])
                assert 12 <= first < 40
                await until(pilot, lambda: float(svd_time().split()[0]) > first, timeout=5,
                            what="the time to count up")
                assert str(t.get_cell("train", "time")) == "1.0 s"
        run(go())
    finally:
        s.release()


def test_a_stopped_jacobian_shows_no_eta():
    from tjac_tui.widgets.progress import progress_text

    jac = {"done": 128, "total": 610, "rate": 40.0, "eta": 12.0, "chunk": 64, "chunks": 10}
    assert "ETA 12.0 s" in str(progress_text(jac, state="running"))
    for state in ("interrupted", "failed", "stale"):
        text = str(progress_text(jac, state=state))
        assert "ETA" not in text and f"stopped ({state}; r resumes)" in text


def test_ascii_mode_draws_only_ascii_on_every_pane(finished, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")

    async def go():
        app = TjacApp(sessions_dir=finished.parent, session=finished.name, ascii_only=True)
        async with running(app, (80, 24)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            for key in ("1", "2", "3", "4", "5", "6", "7", "question_mark"):
                await pilot.press(key)
                await pilot.pause(0.6)
                text = screen_text(app)
                assert text.strip()
                bad = sorted({c for c in text if ord(c) >= 128})
                assert not bad, (key, bad)
    run(go())
    from textual.scrollbar import ScrollBar, ScrollBarRender

    assert ScrollBar.renderer is ScrollBarRender  # restored for the apps that follow


def test_without_colour_every_curve_has_its_own_marker():
    p = asciiplot.curves_plot([0, 1, 2, 3], {"train loss": [2.0, 1.0, 0.5, 0.3],
                                             "test loss": [2.1, 1.3, 0.9, 0.8]},
                              60, 12, ascii=False, color=False)
    markers = [s.marker for s in p.series]
    assert len(set(markers)) == 2 and "braille" not in markers
    assert f"{markers[0]} train loss" in p.legend and f"{markers[1]} test loss" in p.legend
    assert markers[0] in p.text.split("\n", 1)[1] and markers[1] in p.text
    S = np.concatenate([np.geomspace(20, 1.1, 50), np.ones(50), np.geomspace(0.9, 0.01, 50)])
    regs = asciiplot.spectrum_plot(S, None, 60, 12, ascii=True, color=False)
    assert "+" not in [s.marker for s in regs.series]  # "+" draws the ASCII frame


def test_compare_rows_say_which_are_selected_without_colour(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    root = tmp_path / "s"
    root.mkdir()
    for n in ("a", "b", "c"):
        shutil.copytree(finished, root / n)

    async def go():
        app = TjacApp(sessions_dir=root)
        async with running(app, (100, 30)) as pilot:
            await compare(app, pilot, 3, [root / "a", root / "c"])
            await pilot.pause(0.3)
            pick = app.query_one("#compare-pick")
            rows = {r.split()[-1]: r for r in pick.row_texts()}
            assert rows == {"a": "[x] a", "b": "[ ] b", "c": "[x] c"}
            text = screen_text(app)
            for r in rows.values():
                assert r in text
    run(go())
