"""Run control (engine.control) is one set of rules for the command line and the workbench: the
workbench's `r` refuses what `tjac resume` refuses, with the same line; the Setup pane shows the
lines `tjac run --plan` prints; bytes are written in one unit everywhere. Driven with Pilot on
copies of a finished quick session; every test reads the screen (or the files)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from engine import config as config_mod, plan as plan_mod
from engine.session import Session
from tjac_tui.app import TjacApp
from tjac_tui.cli import main

from conftest import PRESETS, running, screen_lines, until

QUICK = PRESETS / "quick.toml"


def run(coro):
    return asyncio.run(coro)


def squeezed(text: str) -> str:
    """``text`` without whitespace: a toast wraps a line where it likes."""
    return "".join(text.split())


def toasts(app) -> list[str]:
    """The text of every toast on the screen, read off the screen within each toast's box
    (:func:`squeezed`)."""
    lines = screen_lines(app)
    out = []
    for toast in app.screen.query("Toast"):
        r = toast.content_region
        rows = [lines[y][r.x:r.x + r.width] for y in range(r.y, r.y + r.height)
                if y < len(lines)]
        out.append(squeezed("".join(rows)))
    return out


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


# --------------------------------------------------------------------------------------------
# resume: the same refusals, the same line


def test_the_workbench_refuses_to_resume_what_tjac_resume_refuses(quick_session, tmp_path,
                                                                   capsys):
    """An edited config.toml (finished, and interrupted: the workbench started the worker and
    the session ended failed), a finished session (every file checked) and one another process
    holds: `r` in Live and in the Sessions pane show the line `tjac resume` prints, start no
    worker and leave every file as it was."""
    from textual.widgets import DataTable

    root = tmp_path / "s"
    paths = {n: root / n for n in ("edited-done", "edited-interrupted", "done", "locked")}
    for p in paths.values():
        shutil.copytree(quick_session, p)
    for n in ("edited-done", "edited-interrupted"):
        cfg = paths[n] / "config.toml"
        text = cfg.read_text()
        assert "lr = 0.1\n" in text
        cfg.write_text(text.replace("lr = 0.1\n", "lr = 0.05\n"))
    interrupted = Session(paths["edited-interrupted"])
    m = interrupted.manifest()
    m["status"], m["stages"]["spectrum"]["status"] = "interrupted", "interrupted"
    interrupted.write_manifest(m)
    holder = Session(paths["locked"])
    holder.acquire()
    try:
        said = {}
        for n, p in paths.items():
            code = main(["resume", str(p), "-q"])
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1, (n, err)
            said[n] = (code, err[0])
        assert said["edited-done"][0] == said["edited-interrupted"][0] == 1
        assert "config.toml: changed since the session was created" in said["edited-done"][1]
        assert said["done"] == (0, f"{paths['done']}: already done (every file checked)")
        assert said["locked"][0] == 2 and said["locked"][1].endswith("is writing this session")
        before = {n: files_of(p) for n, p in paths.items()}

        async def refused(app, pilot, name: str) -> None:
            want = squeezed(said[name][1])
            await until(pilot, lambda: want in toasts(app), timeout=15,
                        what=f"{name}: {said[name][1]}")
            assert app.procs == {}, name  # no worker
            app.clear_notifications()

        async def go():
            app = TjacApp(sessions_dir=root, session=str(paths["edited-interrupted"]))
            async with running(app, (120, 40), notifications=True) as pilot:
                for n in ("edited-interrupted", "edited-done", "done"):  # r in Live
                    app.open_session(paths[n], pane="live")
                    await until(pilot, lambda: app.snapshot is not None
                                and app.snapshot.path == paths[n], what=f"{n} in Live")
                    await until(pilot, lambda: app.check_action("resume_run", ()),
                                what=f"r on {n}")
                    await pilot.press("r")
                    await refused(app, pilot, n)
                await pilot.press("5")  # r in the Sessions pane
                pane = app.pane("sessions")
                await until(pilot, lambda: len(pane.rows) == 4, what="the sessions")
                table = pane.query_one("#sessions-table", DataTable)
                for n in ("locked", "edited-done", "done"):
                    table.move_cursor(row=[r["path"] for r in pane.shown].index(str(paths[n])))
                    table.focus()
                    await pilot.press("r")
                    await refused(app, pilot, n)
        run(go())
    finally:
        holder.release()
    assert {n: files_of(p) for n, p in paths.items()} == before
    assert Session(paths["edited-interrupted"]).manifest()["status"] == "interrupted"
    assert all(not Session(p).is_locked() for p in paths.values())


# --------------------------------------------------------------------------------------------
# the plan: one renderer


async def shown_plan(app, pilot) -> list[str]:
    """The Setup pane's plan once computed: its lines, each checked on the screen (a line too
    wide for the pane is cut with an ellipsis there, one that says why not wraps)."""
    setup = app.pane("setup")
    await until(pilot, lambda: setup.plan_text.startswith("P = "), what="the plan")
    await pilot.pause(0.1)
    lines = setup.plan_text.splitlines() + setup.estimate_text.splitlines()
    screen = "\n".join(screen_lines(app))
    for line in lines:
        assert line[:60] in screen, line
    return lines


@pytest.mark.parametrize("preset", ["quick", "lenet5-digits28"])
def test_the_setup_pane_shows_what_tjac_run_plan_prints(preset, tmp_path, monkeypatch, capsys):
    """The pane's plan is the text of `tjac run --plan` for the same config, line for line:
    the sizes, the verdict (LeNet-5's SVD does not fit in 16 GB: why, and no probe); the
    quick preset's CLI output goes on with its probe, which the pane runs on ctrl+t."""
    from engine import runner

    monkeypatch.setattr(plan_mod, "free_disk", lambda path: 80 * 10**9)
    monkeypatch.setattr(plan_mod, "available_memory", lambda: 16 * 10**9)
    monkeypatch.setattr(runner, "probe", lambda cfg, device=None: {
        "device": "cpu", "chunk": 128, "column_steps_per_s": 1000.0, "jacobian_s": 19.36,
        "svd_s": 3.5})
    sessions = tmp_path / "sessions"
    assert main(["run", preset, "--plan", "--sessions", str(sessions)]) == 0
    printed = capsys.readouterr().out.splitlines()

    async def go():
        app = TjacApp(sessions_dir=sessions, preset=preset)
        async with running(app, (120, 40)) as pilot:
            return await shown_plan(app, pilot)
    lines = run(go())
    if preset == "quick":
        assert printed[len(lines):] == ["device cpu: chunks of 128 columns",
                                        "probe: 1000.0 column-steps/s -> J in about 19.4 s",
                                        "float64 SVD: about 3.5 s"]
        printed = printed[:len(lines)]
    else:
        assert lines[-2].startswith("does not fit: the float64 SVD of this run's 61,706 x "
                                    "61,706 Jacobian")
        assert lines[-1] == "no time probe: the run does not fit here"
    assert lines == printed
    if preset == "quick":
        assert lines[-1] == f"fits in {sessions}: yes (80.0 GB free)"


@pytest.mark.slow
def test_the_setup_panes_time_estimate_is_tjac_run_plans_probe(tmp_path, monkeypatch, capsys):
    """ctrl+t: the pane's child process prints the PlanReport as JSON and the pane shows its
    lines, the probe's with them: those `tjac run --plan` prints for the same figures."""
    from engine import runner

    sessions = tmp_path / "sessions"

    async def go():
        app = TjacApp(sessions_dir=sessions, preset="quick")
        async with running(app, (120, 40)) as pilot:
            setup = app.pane("setup")
            await shown_plan(app, pilot)
            await pilot.press("ctrl+t")
            await until(pilot, lambda: "probe: " in setup.estimate_text, timeout=120,
                        what="the probe")
            return await shown_plan(app, pilot), setup.probed.probe
    lines, figures = run(go())
    assert lines[5].startswith("device ") and lines[6].startswith("probe: ")
    monkeypatch.setattr(runner, "probe", lambda cfg, device=None: figures)
    assert main(["run", "quick", "--plan", "--sessions", str(sessions)]) == 0
    printed = capsys.readouterr().out.splitlines()
    free = re.compile(r"\(\d+\.\d [KMGT]?B free\)$")  # (the disk's free space moves)
    assert [free.sub("", x) for x in lines] == [free.sub("", x) for x in printed]


def test_a_plan_report_reads_back_from_its_json():
    """What the pane's child prints (`tjac run --plan --json`) renders the same lines."""
    from engine import control

    cfg = config_mod.load(QUICK, ["jacobian.snapshots=[4, 8]"])
    report = control.plan_report(cfg, Path("."))
    probed = dataclasses.replace(report, probe={
        "device": "cuda:0", "chunk": 256, "chunk_bytes": 3 * 10**6, "column_steps_per_s": 5e4,
        "jacobian_s": 7200.0, "svd_s": 90.0, "svd_s_note": "timed at n = 1,210",
        "chunk_probe": {"best": 96, "column_steps_per_s": {"64": 1.5e3, "96": 2.5e3}}})
    back = control.PlanReport.from_json(json.loads(json.dumps(probed.to_json())))
    assert back.lines() == probed.lines()
    assert back.lines()[len(report.plan_lines) + 1:] == [
        "device cuda:0: chunks of 256 columns (3.0 MB each)",
        "probe: 50000.0 column-steps/s -> J in about 2h00m",
        "chunk probe (column-steps/s): 64: 1,500, 96: 2,500; fastest here 96 (jacobian.chunk; "
        "runs keep their default so that J's bits do not move)",
        "float64 SVD: about 1m30s (timed at n = 1,210)",
        "snapshots: 2 more SVDs, about 3m00s; the Jacobian stage writes 2 more P x P blocks as "
        "it goes"]
    assert control.PlanReport.from_json(report.to_json()) == report


# --------------------------------------------------------------------------------------------
# one byte formatter


def test_one_formatter_of_bytes_and_seconds():
    """Decimal units (what the plan, the refusals and the docs say) for every byte figure;
    the Live pane's GPU memory said MiB where the Setup pane said MB."""
    from engine.units import fmt_bytes, fmt_seconds
    from tjac_tui import state

    assert [fmt_bytes(n) for n in (999, 1000, 5_856_400, 121.8e9, 141e9, 2.5e12)] == [
        "999 B", "1.0 KB", "5.9 MB", "121.8 GB", "141.0 GB", "2.5 TB"]
    assert plan_mod.fmt_bytes is fmt_bytes and state.fmt_bytes is fmt_bytes
    assert [fmt_seconds(s) for s in (None, 42.3, 725, 980_760)] == [
        "-", "42.3 s", "12m05s", "272h26m"]


def test_the_live_and_setup_panes_write_bytes_alike(tmp_path):
    """GPU memory in the Live pane (the worker's figures from its events) in the unit of the
    Setup pane's sizes: quick's J, 1,210^2 float32 numbers, is 5.9 MB in both."""
    J = 1210 * 1210 * 4
    s = Session.create(tmp_path, "gpu", config_mod.load(QUICK), str(QUICK))
    for ev in ({"event": "run_start", "device": "cuda:0", "dtype": "float32", "threads": 1,
                "P": 1210},
               {"event": "jacobian_start", "total": 1210, "chunk": 128, "chunks": 10,
                "done": 0},
               {"event": "jacobian_chunk", "chunk": 0, "done": 128, "total": 1210,
                "rate": 100.0, "eta": 10.8, "gpu_mem": J, "gpu_mem_peak": 2 * J}):
        s.append_jsonl("events.jsonl", {"time": 1.0, **ev})

    async def go():
        app = TjacApp(sessions_dir=tmp_path, preset="quick", session=str(s.path))
        async with running(app, (120, 40)) as pilot:
            await until(pilot, lambda: "GPU mem" in "\n".join(screen_lines(app)),
                        what="the Live pane's GPU memory")
            assert "GPU mem 5.9 MB allocated, peak 11.7 MB" in "\n".join(screen_lines(app))
            await pilot.press("1")
            lines = await shown_plan(app, pilot)
            assert "jacobian.npy: 5.9 MB on disk (1,210 x 1,210, 32-bit)" in lines
    run(go())
