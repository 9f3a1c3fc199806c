"""How the analyses are shown: views (plot series, table rows), the markdown report sections,
the findings table, and the Analyses pane (Pilot), on the tiny session of test_experiments."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engine import regions
from engine.present.findings import findings_table, render_analyses_markdown
from engine.present.views import View, content, make_plot, session_views
from engine.runner import run_on_session
from engine.sections import ANALYSES, OodConfig

from conftest import running, until
from test_experiments import tiny_session  # noqa: F401  (the module-scoped fixture)


def test_every_analysis_has_a_plot_and_a_table(tiny_session):  # noqa: F811
    found = content(tiny_session.path)
    assert [a["name"] for a in found] == list(ANALYSES)
    for a in found:
        assert a["views"], a["name"]
        assert any(v["series"] for v in a["views"]), a["name"]
        assert any(v["rows"] for v in a["views"]), a["name"]
        for v in a["views"]:
            for r in v["rows"]:
                assert len(r) == len(v["columns"])
    by = {a["name"]: a for a in found}
    S = tiny_session.load_npy("svd/S.npy")
    d = by["distance"]["views"][0]["series"]["|s - 1|"]
    np.testing.assert_allclose(d[1], np.abs(S - 1))
    c = by["init_change"]["views"][0]["series"]
    np.testing.assert_allclose(list(c.values())[0][1],
                               tiny_session.load_npy("analyses/init_change.npy"))
    sens = next(v for v in by["distance"]["views"] if v["key"] == "distance.sensitivity")
    assert [r[0] for r in sens["rows"]] == [f"{t:g}" for t in regions.SENSITIVITY_TOLS]


def test_plots_are_plain_ascii_with_log_ticks():
    v = View("x", "a test", [("a", np.array([1e-3, 1e-1, 10.0]), np.array([1e-6, 1e-3, 1.0]))],
             logx=True, logy=True)
    p = make_plot(v, 60, 14, ascii=True, color=False)
    assert all(ord(ch) < 128 for ch in p.text)
    assert "1e-6" in p.text or "1e-5" in p.text
    assert "0.01" in p.text or "0.1" in p.text
    np.testing.assert_allclose(p.series[0].y, [-6, -3, 0])


def test_report_sections_have_plots_tables_and_the_sensitivity_table(tiny_session):  # noqa: F811
    md = render_analyses_markdown(tiny_session)
    for name, title, _ in session_views(tiny_session):
        assert f"### {title} (`{name}`)" in md
    assert md.count("```text") >= len(ANALYSES)
    assert "Region sensitivity to the tolerance" in md
    assert "| tol | chaotic | bulk | stable |" in md
    assert "## The paper's findings, checked" in md
    assert all(ord(ch) < 128 for ch in md)


def test_findings_table_has_findings_1_to_10_with_verdicts(tiny_session):  # noqa: F811
    rows = findings_table(tiny_session)
    assert [r["n"] for r in rows] == list(range(1, 11))
    for r in rows:
        assert r["agrees"] in ("yes", "no", "partly", "not run"), r
        assert r["paper"] and r["measured"]
    by = {r["n"]: r for r in rows}
    assert by[7]["agrees"] == "not run" and "sweep" in by[7]["measured"]  # not in a sweep
    for n in (1, 2, 3, 4, 5, 6, 9, 10):
        assert by[n]["agrees"] != "not run", by[n]
        assert by[n]["criterion"]


@pytest.mark.slow
def test_the_pane_shows_and_follows_the_analyses(tiny_session):  # noqa: F811
    from textual.app import App

    from tjac_tui.screens.analyses import AnalysesPane
    from tjac_tui.widgets import PlotView

    class One(App):
        def compose(self):
            yield AnalysesPane(tiny_session.path, ascii=True, color=False, poll=0.2)

    async def until(pilot, cond, what, timeout=60.0):
        for _ in range(int(timeout / 0.1)):
            if cond():
                return
            await pilot.pause(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    async def go():
        app = One()
        async with running(app, (120, 60)) as pilot:
            pane = app.query_one(AnalysesPane)
            await until(pilot, lambda: pane.shown and pane.table_rows(), "the tables")
            assert [a["name"] for a in pane.shown] == list(ANALYSES)
            tables = pane.table_rows()
            assert len(tables) == sum(1 for a in pane.shown for v in a["views"] if v["rows"])
            plots = list(app.query(PlotView))
            await until(pilot, lambda: plots[0].plot is not None, "the first plot")
            assert "|s - 1|" in plots[0].plot.legend
            # live: a result rewritten by a run shows up without reloading
            run_on_session(tiny_session.path, ["ood"], {"ood": OodConfig(stride=4, chunk=3)})

            def updated():
                o = next((a for a in pane.shown if a["name"] == "ood"), None)
                return o is not None and "(stride 4)" in o["views"][0]["note"]

            await until(pilot, updated, "the updated ood")
            pane.load(None)
            await pilot.pause(0.1)
            assert pane.shown == []

    asyncio.run(go())
    run_on_session(tiny_session.path, ["ood"], {"ood": OodConfig(chunk=7)})


@pytest.mark.slow
def test_the_pane_shows_a_sweep(tmp_path):
    from textual.app import App

    from engine import sweep
    from tjac_tui.screens.analyses import AnalysesScreen
    from test_sweep import PRESET

    preset = tmp_path / "p.toml"
    preset.write_text(PRESET.replace('  { name = "noise"', '  # { name = "noise"')
                      .replace('  { name = "shuffled"', '  # { name = "shuffled"'))
    st = sweep.create(tmp_path, preset)
    assert sweep.run(st.path) == 0

    class Host(App):
        def on_mount(self):
            self.push_screen(AnalysesScreen(st.path, ascii=True, color=False))

    async def go():
        app = Host()
        async with running(app, (120, 60)) as pilot:
            def filled() -> bool:  # the tables are mounted first and filled after: wait
                pane = app.screen.query("AnalysesPane").first()  # for the rows themselves
                rows = pane.table_rows()
                return bool(pane.shown) and len(rows) >= 3 and bool(rows[0])

            await until(pilot, filled, timeout=60, what="the sweep's tables, filled")
            pane = app.screen.query("AnalysesPane").first()
            assert [a["name"] for a in pane.shown] == ["points", "spectra", "overlap"]
            runs_table = pane.table_rows()[0]
            assert [r[0] for r in runs_table] == ["base", "seed1"]
            await pilot.press("escape")

    asyncio.run(go())
