"""A sweep planned before it starts: ``tjac sweep PRESET --plan`` (and ``tjac run PRESET
--plan`` of a preset with a [sweep]) tables every point's P, disk and SVD memory and their sum
at 80 columns; a sweep whose largest point does not fit is refused before any point starts, in
one line naming the point."""

from __future__ import annotations

import json
import re

import pytest

from engine import config, plan as plan_mod, sweep
from engine.units import fmt_bytes
from tjac_tui.cli import main

from test_sweep import GRID


@pytest.fixture
def grid(tmp_path):
    p = tmp_path / "mini-sweep.toml"
    p.write_text(GRID)
    return p


def point_plans(preset):
    base, points = sweep.plan(preset)
    return {q.name: plan_mod.make_plan(q.config) for q in points}


TIME_HEAD = "from a short probe of each point:"  # (the time table's head line ends so)


def cells(line: str) -> list[str]:
    """A table line's cells: split at runs of two or more spaces."""
    return re.split(r"\s{2,}", line.strip())


def plan_rows(out: str) -> dict[str, list[str]]:
    """The size table's rows by their first cell; the time table under it is left out."""
    sizes = out.split("\ntime on ")[0]
    return {r[0]: r for r in map(cells, sizes.splitlines()) if len(r) > 3}


def time_rows(out: str) -> dict[str, list[str]]:
    """The time table's rows by their first cell (its header under "point")."""
    return {r[0]: r for r in map(cells, out.split(TIME_HEAD)[1].splitlines()) if len(r) > 1}


async def sweep_plan_shown(app, pilot):
    """The Setup pane once it shows the loaded sweep preset's plan."""
    from conftest import until

    setup = app.pane("setup")
    await until(pilot, lambda: setup.plan_text.startswith("sweep "), what="the plan",
                timeout=60)
    return setup


@pytest.mark.parametrize("cmd", ["sweep", "run"])
def test_the_plan_tables_every_point_and_the_sum(grid, tmp_path, capsys, monkeypatch, cmd):
    monkeypatch.setenv("COLUMNS", "80")
    plans = point_plans(grid)
    assert main([cmd, str(grid), "--plan", "--sessions", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "sweep mini-sweep: 4 points; the SVDs run on the CPU, one after another"
    assert all(len(ln) <= 80 for ln in lines if not ln.startswith("all 4 points fit in ")), \
        out  # (the verdict names the folder)
    rows = plan_rows(out)
    assert rows["point"] == ["point", "P", "steps", "J on disk", "disk", "SVD memory", "fits"]
    for name, pl in plans.items():
        P = 235 if name.startswith("hidden-3") else 385
        assert rows[name] == [name, str(P), str(pl.steps), fmt_bytes(P * P * 8), fmt_bytes(pl.disk_total),
                              fmt_bytes(pl.svd_memory("cpu")), "yes"]
    biggest = max(pl.svd_memory("cpu") for pl in plans.values())
    assert rows["all 4"] == ["all 4", fmt_bytes(sum(pl.disk_total for pl in plans.values())),
                             f"{fmt_bytes(biggest)} max", "yes"]
    verdict = next(i for i, ln in enumerate(lines) if ln.startswith("all 4 points fit in "))
    assert lines[verdict].startswith(f"all 4 points fit in {tmp_path / 's'}: yes (")
    assert lines[verdict + 2] == "time on cpu, from a short probe of each point:"
    assert not (tmp_path / "s").exists()  # nothing written


def test_the_plan_times_every_point_from_its_probe_and_sums_them(grid, tmp_path, capsys,
                                                                monkeypatch):
    """The sweep's plan had no time at all; each point is probed (a few training steps of
    one chunk, its SVD timed at a small size), its J + SVD is its total, and the sum is the
    sweep's (the points run one after another)."""
    from engine.control import SweepPlanReport
    from engine.units import fmt_seconds

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["sweep", str(grid), "--plan", "--json", "--sessions", str(tmp_path)]) == 0
    report = SweepPlanReport.from_json(json.loads(capsys.readouterr().out))
    assert [n for n, _ in report.points] == list(point_plans(grid))
    expected, total = {}, 0.0
    for name, r in report.points:
        assert r.probe["device"] == "cpu" and r.probe["jacobian_s"] > 0 and r.probe["svd_s"] > 0
        t = r.probe["jacobian_s"] + r.probe["svd_s"]
        expected[name] = [name, fmt_seconds(r.probe["jacobian_s"]),
                          fmt_seconds(r.probe["svd_s"]), "-", fmt_seconds(t)]
        total += t
    cols, rows = report.time_table()
    assert cols == ["point", "J", "SVD", "snapshots", "total"]
    assert {r[0]: r for r in rows[:-1]} == expected
    assert rows[-1] == ["all 4", "", "", "", fmt_seconds(total)]
    # the text: the sizes first, then a line a point probed (stderr), then the time table
    assert main(["sweep", str(grid), "--plan", "--sessions", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert [ln for ln in err.splitlines() if ln.startswith("probing")] == [
        f"probing point {i + 1} of 4 ({n})..." for i, n in enumerate(point_plans(grid))]
    lines = out.splitlines()
    head = lines.index("time on cpu, from a short probe of each point:")
    assert cells(lines[head + 1]) == cols
    got = [cells(ln) for ln in lines[head + 2:]]
    assert [g[0] for g in got] == list(point_plans(grid)) + ["all 4"]
    assert all(len(g) == 5 for g in got[:-1]) and len(lines) == head + 7


def test_a_sweep_whose_largest_point_does_not_fit_is_refused_naming_it(grid, tmp_path, capsys,
                                                                       monkeypatch):
    plans = point_plans(grid)
    small = plans["hidden-3_lr-0.05"].svd_memory("cpu")
    big = plans["hidden-5_lr-0.05"].svd_memory("cpu")
    monkeypatch.setattr(plan_mod, "available_memory", lambda: (small + big) // 2)
    sessions = tmp_path / "s"
    assert main(["sweep", str(grid), "--plan", "--sessions", str(sessions)]) == 0
    out = capsys.readouterr().out
    rows = plan_rows(out)
    assert [rows[n][-1] for n in plans] == ["yes", "yes", "no", "no"]
    assert rows["all 4"][-1] == "no"
    verdict = next(ln for ln in out.splitlines() if ln.startswith("does not fit: "))
    assert verdict.startswith("does not fit: sweep point hidden-5_lr-0.05: the float64 SVD of "
                              "this run's 385 x 385 Jacobian"), verdict
    times = time_rows(out)
    assert [times[n][1] for n in plans][2:] == ["the run does not fit here"] * 2
    assert times["all 4"][-1].endswith(" + the points above")  # (their time is not known)

    assert main(["sweep", str(grid), "--sessions", str(sessions), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("sweep point hidden-5_lr-0.05: the float64 SVD of this run")
    assert not sessions.exists() or not any(sessions.iterdir())  # no point started


def test_the_plan_of_a_preset_without_a_sweep_points_at_tjac_run(tmp_path, capsys):
    p = tmp_path / "one.toml"
    p.write_text(GRID.split("[sweep]")[0])
    assert main(["sweep", str(p), "--plan"]) == 2
    assert capsys.readouterr().err.strip() == (f"{p}: no [sweep] section: `tjac run {p} --plan` "
                                               "plans its run")


@pytest.fixture(scope="module")
def one_of_four(tmp_path_factory):
    """A sweep of four points, the first one run."""
    from engine import runner

    root = tmp_path_factory.mktemp("part")
    (root / "mini-sweep.toml").write_text(GRID)
    sw = sweep.create(root / "s", root / "mini-sweep.toml")
    first = sw.manifest()["points"][0]["name"]
    assert runner.run_session(sw.session(first).path) == 0
    return sw


def test_ls_lists_a_sweep_and_its_points_and_report_writes_its_report(one_of_four, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    sw = one_of_four
    sessions = sw.path.parent
    assert main(["ls", "--sessions", str(sessions)]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["mini-sweep", "(sweep)",
                                                                      "created"])
    assert lines[head].split()[3] == "1/4"
    names = [q["name"] for q in sw.manifest()["points"]]
    for i, name in enumerate(names):  # indented under the sweep, in its order
        cells = lines[head + 1 + i].split()
        assert lines[head + 1 + i].startswith(f"  {name}") or lines[head + 1 + i].startswith(
            f"   {name}")
        assert cells[:2] == [name, "done" if i == 0 else "created"]

    assert main(["report", "mini-sweep", "--sessions", str(sessions)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(sw.path / "report.md")
    assert "no comparison yet" in err and f"`tjac sweep {sw.path}`" in err
    text = (sw.path / "report.md").read_text()
    assert text.startswith("# tjac sweep: mini-sweep") and "status **created**" in text


async def sweep_rows_shown(pilot, pane, names: list[str]) -> None:
    """The Sessions pane lists the one-of-four sweep, then its points indented in order."""
    from conftest import until

    await until(pilot, lambda: len(pane.table_rows()) == 5, what="the sweep's rows")
    rows = pane.table_rows()
    assert rows[0][:3] == ["mini-sweep (sweep)", "mini-sweep", "created 1/4"]
    assert [r[0] for r in rows[1:]] == [f"  {n}" for n in names]
    assert [r[2] for r in rows[1:]] == ["done", "created", "created", "created"]


def test_the_sessions_pane_lists_a_sweep_and_its_points(one_of_four):
    import asyncio

    from conftest import running
    from tjac_tui.app import TjacApp
    from tjac_tui.screens.sessions import SessionsPane

    sw = one_of_four
    names = [q["name"] for q in sw.manifest()["points"]]

    async def go():
        app = TjacApp(sessions_dir=sw.path.parent)
        async with running(app, (120, 40)) as pilot:
            await pilot.press("5")
            pane = app.query_one(SessionsPane)
            await sweep_rows_shown(pilot, pane, names)

    asyncio.run(go())


def test_a_adds_a_sweep_folder_kept_elsewhere_with_its_points(one_of_four, tmp_path):
    """``a`` with a sweep's folder said "not a session (no manifest.json ...)"; it adds the
    sweep, which the Sessions pane lists with its points as one of its own folder's."""
    import asyncio

    from conftest import running, until
    from tjac_tui.app import TjacApp
    from tjac_tui.locations import added_sessions
    from tjac_tui.screens.sessions import SessionsPane

    sw = one_of_four
    root = tmp_path / "mine"
    names = [q["name"] for q in sw.manifest()["points"]]

    async def go():
        app = TjacApp(sessions_dir=root)
        async with running(app, (120, 40)) as pilot:
            await pilot.press("5")
            pane = app.query_one(SessionsPane)
            await until(pilot, lambda: pane._root is not None, what="the first scan")
            assert pane.table_rows() == []
            await pilot.press("a")
            await until(pilot, lambda: app.screen.query("#add-path"), what="the path box")
            await pilot.press(*str(sw.path), "enter")
            await sweep_rows_shown(pilot, pane, names)

    asyncio.run(go())
    assert added_sessions(root) == [sw.path.resolve()]


def test_the_setup_pane_plans_every_point_of_a_sweep_preset(tmp_path):
    import asyncio

    from conftest import PRESETS, running, screen_lines
    from tjac_tui.app import TjacApp

    preset = PRESETS / "sweep-width.toml"

    async def go():
        app = TjacApp(sessions_dir=tmp_path / "s", preset=preset)
        async with running(app, (120, 50)) as pilot:
            setup = await sweep_plan_shown(app, pilot)
            await pilot.pause(0.1)
            lines = setup.plan_text.splitlines()
            assert lines[0] == ("sweep sweep-width: 5 points; the SVDs run on the CPU, one after "
                                "another")
            rows = plan_rows(setup.plan_text)
            assert rows["hidden-256"][:2] == ["hidden-256", "19,210"]  # not the base's 4,810
            assert rows["hidden-64"][:2] == ["hidden-64", "4,810"]
            assert rows["all 5"][-1] == "yes" and lines[-1].startswith("all 5 points fit in ")
            screen = "\n".join(screen_lines(app))
            assert "hidden-256" in screen and "all 5" in screen

    asyncio.run(go())


def test_ctrl_t_on_a_sweep_preset_times_every_point(grid, tmp_path):
    """ctrl+t on a preset with a [sweep] said "no probe of a whole sweep"; it probes every
    point (``tjac sweep --plan --json`` in a separate process) and shows the time table."""
    import asyncio

    from conftest import running, screen_lines, until
    from tjac_tui.app import TjacApp

    async def go():
        app = TjacApp(sessions_dir=tmp_path / "s", preset=grid)
        async with running(app, (120, 50)) as pilot:
            setup = await sweep_plan_shown(app, pilot)
            await pilot.press("ctrl+t")
            await until(pilot, lambda: "probing each of the sweep's points" in
                        setup.estimate_text, what="the probe's note", timeout=10)
            await until(pilot, lambda: setup.estimate_text.startswith("time on cpu"),
                        what="the time table", timeout=240)
            lines = setup.estimate_text.splitlines()
            assert lines[0] == "time on cpu, from a short probe of each point:"
            rows = [cells(ln) for ln in lines[1:]]
            assert rows[0] == ["point", "J", "SVD", "snapshots", "total"]
            assert [r[0] for r in rows[1:]] == list(point_plans(grid)) + ["all 4"]
            await pilot.pause(0.1)
            screen = "\n".join(screen_lines(app))
            assert "time on cpu, from a short probe of each point:" in screen

    asyncio.run(go())


def test_a_point_whose_probe_failed_says_so_in_the_time_table(grid, tmp_path, monkeypatch):
    """A point the probe could not run (its model's own failure) was 'not probed' in the
    table; it names the failure, as `tjac run --plan` of that point does."""
    from engine import control, runner

    def broken(cfg):
        raise NotImplementedError("no forward AD for this kernel")

    monkeypatch.setattr(runner, "probe", broken)
    base = config.load(grid)
    report = control.sweep_with_probes(control.sweep_plan_report(base, tmp_path), base)
    _, rows = report.time_table()
    assert [r[1] for r in rows[:-1]] == ["it failed: NotImplementedError: no forward AD for "
                                         "this kernel"] * 4
