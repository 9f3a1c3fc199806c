"""Figures people would rather look at than read: PNG/SVG (matplotlib, the optional extra) and
the spectrum as CSV, linked from the report; `tjac report --figures` and `e` in the app."""

from __future__ import annotations

import asyncio
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import regions
from engine.present.figures import INSTALL_HINT, write_figures
from engine.present.report import write_report
from engine.runner import run_session
from engine.session import Session
from tjac_tui.app import TjacApp

from conftest import running, until

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def session(quick_session, tmp_path) -> Path:
    path = tmp_path / "quick"
    shutil.copytree(quick_session, path)
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_spectrum_csv_holds_every_singular_value_exactly(session):
    figs = write_figures(session, formats=("png",))
    S = Session(session).load_npy("svd/S.npy").astype(np.float64)
    rows = read_csv(figs.csv)
    assert len(rows) == len(S)
    assert [float(r["s"]) for r in rows] == S.tolist()  # repr round-trips exactly
    np.testing.assert_array_equal([float(r["abs_s_minus_1"]) for r in rows], np.abs(S - 1))
    align = Session(session).load_npy("svd/alignment.npy")
    np.testing.assert_array_equal([float(r["alignment"]) for r in rows], align)
    summary = Session(session).spectrum()
    counts = {k: sum(r["region"] == k for r in rows) for k in regions.REGIONS}
    assert counts == regions.counts(S, summary["bulk_tol"])


def test_figures_are_png_and_svg_and_the_report_shows_them(session):
    out = write_report(session, figures=True)
    fig_dir = session / "figures"
    for stem in ("spectrum", "distance", "alignment"):
        assert (fig_dir / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
        svg = (fig_dir / f"{stem}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    text = out.read_text()
    assert "![spectrum](figures/spectrum.png) ([SVG](figures/spectrum.svg))" in text
    assert "[figures/spectrum.csv](figures/spectrum.csv)" in text
    # a report written elsewhere links the figures by a path that resolves from there
    other = session.parent / "elsewhere" / "r.md"
    other.parent.mkdir()
    write_report(session, other, figures=True)
    link = next(ln for ln in other.read_text().splitlines() if ln.startswith("![spectrum]"))
    target = (other.parent / link.split("](")[1].split(")")[0]).resolve()
    assert target == (fig_dir / "spectrum.png").resolve()


def test_every_analysis_plot_becomes_a_figure(session):
    with open(session / "config.toml", "a") as f:
        f.write("\n[analysis.distance]\n")
    assert run_session(session) == 0
    figs = write_figures(session, formats=("svg",))
    names = sorted(p.stem for p in figs.files)
    assert names == ["alignment", "analysis-distance", "analysis-distance-alignment",
                     "analysis-distance-sensitivity", "distance", "spectrum"]


def test_without_matplotlib_the_csv_is_written_and_the_report_says_what_to_install(
        session, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    out = write_report(session, figures=True)
    assert sorted(p.name for p in (session / "figures").iterdir()) == ["spectrum.csv"]
    assert INSTALL_HINT in out.read_text()


def test_tjac_report_figures_on_the_command_line(session):
    r = subprocess.run([sys.executable, "-m", "tjac_tui.cli", "report", str(session),
                        "--figures"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(session / "report.md")
    assert f"figures: 7 file(s) in {session / 'figures'}" in r.stderr


def test_e_in_the_app_exports_the_report_with_figures(session):
    async def go():
        app = TjacApp(sessions_dir=session.parent, session=session.name)
        async with running(app, (100, 30)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            await pilot.press("e")
            await until(pilot, lambda: app.last_report is not None, timeout=60,
                        what="the export")
            assert app.last_report == session / "report.md"
            assert "![distance](figures/distance.png)" in app.last_report.read_text()
            assert (session / "figures" / "spectrum.svg").is_file()
    asyncio.run(go())
