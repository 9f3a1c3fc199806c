"""The workbench as a researcher lives in it: instant start, a Setup pane that scales (search,
groups, Selects, analyses on and off), a Live pane like a monitor, findings in the app, Sessions
and Compare, and keys sent in a burst. Driven with Pilot; every test asserts what the screen (or
a file the app wrote) holds."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from textual import events

from engine import config as config_mod
from engine.present.markdown import md_table
from engine.present.report import render_report
from engine.sections import ANALYSES
from engine.session import Session
from tjac_tui.app import TjacApp
from tjac_tui.locations import ADDED, added_sessions
from tjac_tui.screens import ConfirmScreen, SetupPane
from tjac_tui.screens.analyses import FINDINGS_COLUMNS
from tjac_tui.widgets.inputs import OrderedInput
from tjac_tui.widgets.spark import ASCII_RAMP, BLOCKS, resample, spark_text

from conftest import running, screen_lines, until

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "presets" / "quick.toml"


def run(coro):
    return asyncio.run(coro)


def screen(app) -> str:
    return "\n".join(screen_lines(app))


# --------------------------------------------------------------------------------------------
# instant start


def test_importing_the_app_and_cli_loads_nothing_heavy():
    """The app module (and the command line) import no torch, numpy, scipy or plotext: the
    first paint waits for none of them."""
    code = ("import sys, tjac_tui.app, tjac_tui.cli\n"
            "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'plotext') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_the_first_screen_is_setup_with_the_quick_preset(tmp_path):
    async def go():
        app = TjacApp(sessions_dir=tmp_path)
        async with running(app, (80, 24)) as pilot:
            await pilot.pause(0)
            text = screen(app)
            assert "preset: quick" in text and "quick.toml: valid" in text
            await until(pilot, lambda: app.panes_ready, what="the other panes")
            await until(pilot, lambda: "P = 1,210 parameters" in screen(app), what="the plan")
    run(go())


# --------------------------------------------------------------------------------------------
# Setup that scales


def test_field_search_lands_on_the_field_in_a_closed_group(tmp_path):
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready)
            assert "model.hidden" not in setup.fields()  # its group is closed: not built
            await pilot.press("slash")
            await pilot.press(*"hidden")
            await pilot.pause(0.1)
            assert setup.matches("hidden")[0] == "model.hidden"
            await pilot.press("enter")
            await until(pilot, lambda: "model.hidden" in setup.fields(), what="the field")
            await pilot.pause(0.1)
            assert app.focused is setup.field("model.hidden").input
            assert ">" in str(setup.field("model.hidden").query_one(".field-key").render())
            # typing edits it, marks it modified, and the status counts it
            await pilot.press("end", "left", *",4")
            await pilot.pause(0.1)
            assert setup.values["model.hidden"] == [16, 4]
            assert setup.field("model.hidden").modified
            assert "(modified: 1 field): valid" in setup.status_text
    run(go())


def test_field_search_reaches_an_analysis_switch_and_escape_keeps_the_pane_keys(tmp_path):
    """``analysis.NAME.enabled`` is a match like any key: enter lands on that analysis in the
    toggle list (it crashed the app); escape leaves a field for the pane, so ``/`` works
    again."""
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(REPO / "presets" / "paper-digits-sgd.toml"))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready)
            await pilot.press("slash", *"distance.enabled")
            await pilot.pause(0.1)
            assert setup.matches("distance.enabled")[0] == "analysis.distance.enabled"
            await pilot.press("enter")
            await until(pilot, lambda: getattr(app.focused, "id", None) == "analysis-toggles",
                        what="the toggle list")
            toggles = app.focused
            assert toggles.get_option_at_index(toggles.highlighted).value == "distance"
            assert app.is_running
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert app.focused is not None and setup in app.focused.ancestors_with_self
            await pilot.press("slash")
            await pilot.pause(0.1)
            assert getattr(app.focused, "id", None) == "field-search"
            await pilot.press(*"hidden", "enter")
            await until(pilot, lambda: "model.hidden" in setup.fields(), what="the field")
            await pilot.pause(0.1)
            assert app.focused is setup.field("model.hidden").input
    run(go())


@pytest.mark.parametrize("key", ["train.optimizer", "train.schedule", "model.activation",
                                 "data.dataset", "model.arch"])
def test_a_select_offers_only_the_valid_values(key, tmp_path):
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            f = await setup.reveal(key)
            want = list(config_mod.field_info(key).check.choices)
            offered = [str(prompt) for prompt, _ in f.input._options]
            assert offered == want
            # choosing another value through the Select changes the config
            other = next(c for c in want if c != f.value)
            f.input.value = other
            await pilot.pause(0.1)
            assert setup.values[key] == other and setup.field(key).modified
    run(go())


def test_switching_an_analysis_on_and_off_changes_the_saved_preset(tmp_path):
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            group = setup.sections()["analyses"]
            group.collapsed = False
            await until(pilot, lambda: setup.query("#analysis-toggles"), what="the list")
            toggles = setup.query_one("#analysis-toggles")
            toggles.focus()
            await pilot.pause(0.05)
            names = list(ANALYSES)
            toggles.highlighted = names.index("distance")
            await pilot.press("space")
            await until(pilot, lambda: "analysis.distance" in setup.sections(),
                        what="the distance group")
            saved = setup.save_as(str(tmp_path / "with-distance"))[0]
            assert saved is not None
            assert "distance" in tomllib.loads(saved.read_text())["analysis"]
            assert "distance" in config_mod.load(saved).analysis
            toggles.focus()
            await pilot.press("space")  # off again
            await until(pilot, lambda: "analysis.distance" not in setup.sections(),
                        what="the group to go")
            saved2 = setup.save_as(str(tmp_path / "without"))[0]
            assert "analysis" not in tomllib.loads(saved2.read_text())
    run(go())


def test_keys_sent_in_a_burst_arrive_whole(tmp_path):
    """The keys of a fast typist (or a paste through tmux) are queued before the first is
    handled: "12345", End, five Backspaces, "fast" must read "fast"."""
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            name = await setup.reveal("name")
            assert isinstance(name.input, OrderedInput)
            name.input.value = ""
            await pilot.pause(0.05)
            keys = list("12345") + ["end"] + ["backspace"] * 5 + list("fast")
            for k in keys:  # all queued at once, as from a terminal buffer
                app.post_message(events.Key(k, k if len(k) == 1 else None))
            await pilot.pause(0.3)
            assert name.input.value == "fast"
            assert setup.values["name"] == "fast"
    run(go())


SEARCH_KEYS = ["slash", *"epochs", "enter"]


async def send(app, pilot, keys, mode: str) -> None:
    """Keys as a terminal delivers them: ``press`` (Pilot, no pauses), ``burst`` (all queued
    before the first is handled, as after an ssh lag), ``slow`` (0.08 s apart to an app that
    takes longer than that to handle a key of the search)."""
    if mode == "press":
        await pilot.press(*keys)
        return
    for k in keys:
        app.post_message(events.Key(k, k if len(k) == 1 else None))
        if mode == "slow":
            await asyncio.sleep(0.08)


def slow_matches(monkeypatch) -> None:
    """Each key in the search box costs 0.12 s (a loaded machine, a long key list)."""
    import time

    matches = SetupPane.matches

    def slow(self, text):
        time.sleep(0.12)
        return matches(self, text)

    monkeypatch.setattr(SetupPane, "matches", slow)


@pytest.mark.parametrize("mode", ["press", "burst", "slow"])
def test_field_search_typed_at_any_speed_lands_on_the_field_and_edits_it(mode, tmp_path,
                                                                         monkeypatch):
    """``/epochs``, Enter, End, Backspace, 5, however the keys arrive, reach the search and
    then train.epochs in order: it becomes 5 and name stays "quick" (a burst opened an empty
    search box; with Enter in it the focus went elsewhere; under load the jump landed on name,
    and the edit made it "q")."""
    if mode == "slow":
        slow_matches(monkeypatch)

    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (80, 24)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready and "train.epochs" in setup.fields(),
                        what="the train fields")
            await send(app, pilot, [*SEARCH_KEYS, "end", "backspace", "5"], mode)
            await until(pilot, lambda: setup.values["train.epochs"] == 5, timeout=10,
                        what="train.epochs = 5")
            await pilot.pause(0.2)
            assert app.focused is setup.field("train.epochs").input
            assert setup.values["name"] == "quick"
            assert setup.field("train.epochs").input.value == "5"
            assert app.query_one("#field-search").value == "epochs"
            assert not app.query_one("#setup-search").display
    run(go())


def test_a_search_in_a_group_not_built_yet_takes_the_keys_typed_meanwhile(tmp_path):
    """``/hidden``, Enter, End, Left and ``,4`` in one burst: model's group is built during the
    jump, and the keys typed meanwhile go to model.hidden when it has the focus."""
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (80, 24)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready, what="the panes")
            assert "model.hidden" not in setup.fields()
            await send(app, pilot, ["slash", *"hidden", "enter", "end", "left", *",4"], "burst")
            await until(pilot, lambda: setup.values["model.hidden"] == [16, 4], timeout=10,
                        what="model.hidden = [16, 4]")
            assert setup.values["name"] == "quick"
    run(go())


def test_ctrl_o_then_a_path_typed_at_once_loads_it(tmp_path):
    """ctrl+o and a preset's name typed straight after it, Enter: that preset is loaded (the
    focus was on the list, and the name was lost)."""
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(QUICK))
        async with running(app, (80, 24)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready, what="the panes")
            await send(app, pilot, ["ctrl+o", *"sweep-width", "enter"], "burst")
            await until(pilot, lambda: setup.preset_path is not None
                        and setup.preset_path.name == "sweep-width.toml", timeout=10,
                        what="the preset typed")
    run(go())


def test_save_as_a_bare_name_is_found_by_tjac_run_and_names_the_runs(tmp_path, monkeypatch):
    """ctrl+s, a bare name, Enter: NAME.toml is where ``tjac run NAME`` finds it, the status
    says so, and the config's name is NAME (it stayed "quick", and `tjac run NAME` found
    nothing)."""
    from tjac_tui.locations import find_preset

    monkeypatch.chdir(tmp_path)

    async def go():
        app = TjacApp(sessions_dir=tmp_path / "s", preset=str(QUICK))
        async with running(app, (80, 24)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready, what="the panes")
            name = await setup.reveal("name", focus=False)
            await send(app, pilot, ["ctrl+s", "ctrl+u", *"mine", "enter"], "burst")
            await until(pilot, lambda: setup.preset_path is not None
                        and setup.preset_path.name == "mine.toml", timeout=10,
                        what="the preset saved")
            assert setup.preset_path == tmp_path / "mine.toml"
            assert "tjac run mine" in setup.status_text
            assert setup.values["name"] == "mine" and name.input.value == "mine"
            assert setup.modified_keys() == []
    run(go())
    assert find_preset("mine").resolve() == tmp_path / "mine.toml"
    assert config_mod.load(tmp_path / "mine.toml").name == "mine"


# --------------------------------------------------------------------------------------------
# Live like a monitor


def test_the_rate_is_named_columns_per_second_wherever_it_is_shown():
    """Live, its log and the CLI's bars name J's rate one way, ``columns/s`` (whole columns
    through training; the plan's probe rate is column-steps/s): they said "col/s"."""
    from tjac_tui.progress import RichProgress
    from tjac_tui.state import LiveState
    from tjac_tui.widgets.progress import progress_text

    ev = {"event": "jacobian_chunk", "chunk": 0, "done": 64, "total": 1210, "rate": 95.25,
          "eta": 12.0}
    assert "95.2 columns/s" in progress_text({"done": 64, "total": 1210, "rate": 95.25}).plain
    st = LiveState()
    st.apply(ev)
    assert any("95.2 columns/s" in line.text for line in st.log)
    import io

    from rich.console import Console

    bars = RichProgress(Console(file=io.StringIO(), width=120))
    bars(ev)
    from tjac_tui.progress import RateColumn

    task = bars.progress.tasks[0]
    assert RateColumn().render(task).plain == "95.2 columns/s"


def test_sparklines_hold_the_loss_of_metrics_and_the_column_rates(quick_session):
    async def go():
        app = TjacApp(sessions_dir=quick_session.parent, session=quick_session.name)
        async with running(app, (100, 30)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            loss = app.query_one("#spark-loss")
            rate = app.query_one("#spark-rate")
            metrics = Session(quick_session).metrics()
            assert loss.values == pytest.approx([m["train_loss"] for m in metrics])
            events_ = Session(quick_session).events()[0]
            rates = [e["rate"] for e in events_ if e.get("event") == "jacobian_chunk"]
            assert rate.values == pytest.approx(rates) and rates
            text = screen(app)
            assert f"{metrics[-1]['train_loss']:.4g}" in text  # the last value, on screen
            line = next(ln for ln in screen_lines(app) if "loss  " in ln and "▁" in ln)
            assert any(c in line for c in BLOCKS)
    run(go())


def test_sparkline_text():
    assert spark_text([0, 1, 2, 3, 4, 5, 6, 7], 8) == BLOCKS
    assert spark_text([0, 1, 2, 3, 4, 5, 6, 7], 8, ascii=True) == ASCII_RAMP
    assert spark_text([5, 5, 5], 3) == BLOCKS[3] * 3  # flat: the middle glyph
    assert spark_text([1, 10, 100], 3, log=True) == BLOCKS[0] + BLOCKS[4] + BLOCKS[7]
    assert spark_text([float("nan"), None, 1.0, 2.0], 10) == BLOCKS[0] + BLOCKS[-1]
    assert resample(list(range(10)), 5) == [0.5, 2.5, 4.5, 6.5, 8.5]


# --------------------------------------------------------------------------------------------
# findings in the app


def test_the_findings_on_screen_are_the_reports(quick_session):
    async def go():
        app = TjacApp(sessions_dir=quick_session.parent, session=quick_session.name)
        async with running(app, (120, 40)) as pilot:
            await until(pilot, lambda: app.panes_ready)
            await pilot.press("7")
            pane = app.query_one("#analyses-pane")
            await until(pilot, lambda: pane.findings_rows(), what="the findings table")
            rows = pane.findings_rows()
            assert [r[0] for r in rows] == [str(n) for n in range(1, 11)]
            report = render_report(quick_session)
            assert md_table(FINDINGS_COLUMNS, rows) in report
            # no distance analysis here: the region sensitivity has its own section
            assert pane.toc() == ["Findings: the paper vs this run", "Region sensitivity"]
            sens = pane.query_one("#sensitivity-table")
            assert sens.row_count >= 5
            # the table of contents jumps to a section
            toc = pane.query_one("#analyses-toc")
            toc.focus()
            toc.highlighted = 1
            await pilot.press("enter")
            await pilot.pause(0.2)
            target = pane.query_one("#sec-sensitivity").region  # scrolled into view
            assert pane.scroll_y > 0 and pane.region.y <= target.y < pane.region.bottom
            # the highlighted finding is shown whole under the table
            table = pane.query_one("#findings-table")
            table.focus()
            table.move_cursor(row=1)
            await pilot.pause(0.1)
            detail = str(pane.query_one("#findings-detail").render())
            assert detail.startswith("2. abs(s_i - 1), log scale: agrees ")
            assert rows[1][3] in detail.replace("\n", " ").replace("  ", " ") or \
                rows[1][3][:40] in detail
    run(go())


# --------------------------------------------------------------------------------------------
# Sessions and Compare


@pytest.fixture()
def three_sessions(quick_session, tmp_path) -> tuple[Path, Path]:
    """A sessions folder with two copies of the quick session, and one more elsewhere."""
    root = tmp_path / "sessions"
    root.mkdir()
    shutil.copytree(quick_session, root / "alpha")
    shutil.copytree(quick_session, root / "beta")
    outside = tmp_path / "elsewhere" / "gamma"
    shutil.copytree(quick_session, outside)
    return root, outside


def test_sessions_filter_sort_and_add_by_path(three_sessions):
    root, outside = three_sessions

    async def go():
        app = TjacApp(sessions_dir=root)
        async with running(app, (100, 30)) as pilot:
            await until(pilot, lambda: app.panes_ready)
            await pilot.press("5")
            pane = app.pane("sessions")
            await until(pilot, lambda: len(pane.table_rows()) == 2, what="two sessions")
            # add one kept elsewhere: a wrong path first
            await pilot.press("a")
            await pilot.press(*str(outside.parent / "nope"), "enter")
            await pilot.pause(0.1)
            assert "no such session" in screen(app)
            app.screen.query_one("#add-path").value = str(outside)
            await pilot.press("enter")
            await until(pilot, lambda: len(pane.table_rows()) == 3, what="the added session")
            assert added_sessions(root) == [outside.resolve()]
            assert (root / ADDED).read_text().strip() == str(outside.resolve())
            assert "gamma (added)" in [r[0] for r in pane.table_rows()]
            # sort by name
            await pilot.press("s")
            assert pane.sort_key == "name"
            assert [r[0] for r in pane.table_rows()] == ["alpha", "beta", "gamma (added)"]
            assert "by name" in screen(app)
            # filter
            await pilot.press("slash", *"gam")
            await pilot.pause(0.1)
            assert [r[0] for r in pane.table_rows()] == ["gamma (added)"]
            assert '1 of 3 session(s) match "gam"' in screen(app)
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert len(pane.table_rows()) == 3
            # the added one can be compared with the others: loss curves overlaid
            await pilot.press("6")
            cmp = app.pane("compare")
            await until(pilot, lambda: len(cmp.choices) == 3, what="the compare choices")
            cmp.select([root / "alpha", outside])
            await until(pilot, lambda: cmp.query_one("#cmp-loss").plot is not None,
                        what="the loss overlay")
            data = cmp.query_one("#cmp-loss").plot.data()
            assert set(data) == {"alpha", "gamma"}
            metrics = Session(outside).metrics()
            xs, ys = data["gamma"]
            want = {m["step"]: m["train_loss"] for m in metrics}
            assert ys == pytest.approx([want[int(x)] for x in xs])
            assert not cmp.query_one("#cmp-loss").plot.log_y
            await pilot.press("l")  # log scale
            await until(pilot, lambda: cmp.query_one("#cmp-loss").plot.log_y, what="log y")
            assert "(log scale)" in cmp.query_one("#cmp-loss").plot.title
    run(go())


def test_x_asks_before_it_stops_a_run(quick_session, tmp_path, monkeypatch):
    """``x`` on a running session asks first; "n" leaves the worker alone."""
    stopped = []
    monkeypatch.setattr("engine.worker.request_stop", lambda p: stopped.append(p) or True)

    async def go():
        app = TjacApp(sessions_dir=quick_session.parent, session=quick_session.name)
        async with running(app, (100, 30)) as pilot:
            await until(pilot, lambda: app.live.status == "done")
            app._locked = True  # as if its worker held the lock
            app.refresh_bindings()
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmScreen)
            assert "Stop the run quick" in screen(app)
            await pilot.press("n")
            assert stopped == []
            await pilot.press("x")
            await pilot.press("y")
            await pilot.pause(0.1)
            assert stopped == [quick_session]
    run(go())


def test_added_sessions_file_is_plain_text(tmp_path, quick_session):
    from tjac_tui.locations import NotFound, add_session

    root = tmp_path / "s"
    add_session(root, quick_session)
    add_session(root, quick_session)  # twice: kept once
    assert added_sessions(root) == [quick_session.resolve()]
    with pytest.raises(NotFound):
        add_session(root, tmp_path / "nothing")
    (root / ADDED).write_text(f"# kept by hand\n{tmp_path / 'moved-away'}\n"
                              f"{quick_session.resolve()}\n")
    assert added_sessions(root) == [tmp_path / "moved-away", quick_session.resolve()]


@pytest.mark.parametrize("case", ["no data", "no memory", "no cuda", "sessions a file"])
def test_start_refuses_what_tjac_run_refuses(tmp_path, monkeypatch, case):
    """ctrl+r on a preset whose data is missing, whose SVD cannot fit in memory, or that names
    CUDA where there is none, or with a sessions folder that is a file, says why in the status
    line and creates no session (it created one that failed at once; the CUDA one too, and a
    file in the way stopped the app with a traceback)."""
    from engine import device, plan as plan_mod

    preset = REPO / "presets" / ("lenet5-mnist.toml" if case == "no data" else "quick.toml")
    if case == "no memory":
        monkeypatch.setattr(plan_mod, "available_memory", lambda: 1000)
    sessions = tmp_path / "sessions"
    if case == "no cuda":  # (as test_faults: no driver, no GPU node)
        monkeypatch.setattr(device, "NVIDIA_DRIVER", str(tmp_path / "no-driver"))
        monkeypatch.setattr(device, "DEVICE_DIR", str(tmp_path / "no-dev"))
        preset = tmp_path / "cuda.toml"
        preset.write_text((REPO / "presets" / "quick.toml").read_text()
                          .replace('device = "auto"', 'device = "cuda"'))
    if case == "sessions a file":
        sessions.write_text("")

    async def go():
        app = TjacApp(sessions_dir=sessions, preset=str(preset))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready and "valid" in setup.status_text,
                        what="the preset")
            await pilot.press("ctrl+r")
            await pilot.pause(0.3)
            want = {"no data": "data.path", "no memory": "of memory",
                    "no cuda": "CUDA is not available on this machine",
                    "sessions a file": "is a file, not a directory"}[case]
            assert want in setup.status_text, setup.status_text
            assert not sessions.is_dir() or not any(sessions.iterdir())
            assert app.current is None
    run(go())


def test_a_switched_off_analysis_takes_its_error_off_the_help_line(tmp_path):
    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset=str(REPO / "presets" /
                                                          "paper-digits-sgd.toml"))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready)
            f = await setup.reveal("analysis.distance.tail_fraction")
            f.input.value = ""
            await pilot.press(*"garbage")
            await pilot.pause(0.1)
            help_line = str(app.query_one("#setup-help").render())
            assert help_line.startswith("analysis.distance.tail_fraction: expected")
            assert setup.status_text.startswith("1 invalid field")
            setup.set_analysis("distance", False)
            await pilot.pause(0.1)
            assert str(app.query_one("#setup-help").render()) == ""
            assert setup.status_text.endswith("valid")
    run(go())


def test_the_preset_box_takes_names_and_says_what_a_path_is(tmp_path):
    """ctrl+o: a shipped preset's name loads it (as `tjac --preset quick` does); a folder is
    "not a file" (it said "no such file"); save-as into a folder writes inside it, and below
    a file says so (it said "File exists")."""
    from tjac_tui.screens.setup import PresetScreen

    (tmp_path / "afile").write_text("x")

    async def go():
        app = TjacApp(sessions_dir=tmp_path / "s", preset=str(QUICK))
        async with running(app, (100, 30)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: app.panes_ready and "valid" in setup.status_text)
            msg = lambda: str(app.screen.query_one("#presets-msg").render())  # noqa: E731
            for typed, want in ((str(tmp_path), "not a file"),
                                ("quik", "did you mean quick")):
                await pilot.press("ctrl+o")
                assert isinstance(app.screen, PresetScreen)
                app.screen.query_one("#preset-path").focus()
                await pilot.press(*typed, "enter")
                await pilot.pause(0.1)
                assert want in msg(), msg()
                await pilot.press("escape")
            await pilot.press("ctrl+o")
            app.screen.query_one("#preset-path").focus()
            await pilot.press(*"sweep-width", "enter")
            await until(pilot, lambda: setup.preset_path is not None
                        and setup.preset_path.name == "sweep-width.toml", what="the preset")
            path, err = setup.save_as(str(tmp_path))
            assert err is None and path == tmp_path / "sweep-width-edited.toml"
            assert path.is_file()
            path, err = setup.save_as(str(tmp_path / "afile" / "sub"))
            assert path is None and err.endswith(f"{tmp_path / 'afile'} is a file, not a folder")
    run(go())


def test_every_pane_footer_fits_80_columns(quick_session):
    """At 80x24 each pane's footer keeps ? Help and q Quit in view (on Setup and Sessions
    they were cut off)."""
    async def go():
        app = TjacApp(sessions_dir=quick_session.parent, session=quick_session.name)
        async with running(app, (80, 24)) as pilot:
            await until(pilot, lambda: app.panes_ready)
            for key in "1234567":
                await pilot.press(key)
                await pilot.pause(0.2)
                footer = screen_lines(app)[-1]
                assert "? Help" in footer and "q Quit" in footer, (key, footer)
    run(go())
