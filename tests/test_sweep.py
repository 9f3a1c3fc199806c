"""Sweeps: the [sweep] section (grid, zip, named points; the old [study] read as one), a reduced
study as a sweep of named points end to end, a 2x2 grid killed mid-way and resumed, several
points at once, a failing point, and the Compare pane and report that show the comparison."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine import config, regions, runner, sweep
from engine.subspace import mean_cos_block, principal_cosines
from tjac_tui.cli import main

from conftest import REPO, running, screen_lines, until

BASE = """
name = "mini-sweep"
seed = 0
device = "cpu"
dtype = "float64"
threads = 1

[data]
n_train = 96

[model]
hidden = [3]            # P = 64*3 + 3 + 3*10 + 10 = 235

[train]
lr = 0.1
momentum = 0.9
schedule = "cosine"
batch_size = 32
epochs = 2
"""

PRESET = BASE + """
[analysis.distance]
subspaces = false
[analysis.init_change]

[sweep]
include_base = true
overlap = true
k_min = 20
n_k = 6
points = [
  { name = "seed1", set = ["seed=1"] },
  { name = "shuffled", set = ['data.variant="shuffled_labels"'] },
  { name = "noise", set = ['data.variant="white_noise"', "analysis.init_change.enabled=false"] },
]
"""

# the 2x2 grid of tiny nets: P = 235 and 385 (hidden 3 and 5), two learning rates
GRID = BASE + """
[jacobian]
chunk = 32

[sweep]
[sweep.values]
model.hidden = [[3], [5]]
train.lr = [0.05, 0.2]
"""


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    preset = root / "mini-sweep.toml"
    preset.write_text(PRESET)
    assert main(["sweep", str(preset), "--sessions", str(root), "-q"]) == 0
    return sweep.Sweep(root / "mini-sweep")


REFUSED = {  # [sweep] text after BASE -> the message, one line naming the key
    '[sweep]\npoints = [{ name = "a" }, { name = "a" }]\n':
        r"sweep\.points: the name \"a\" is used twice",
    '[sweep]\nreference = "zzz"\npoints = [{ name = "a" }]\n':
        r"sweep\.reference: expected one of the point names \(a\)",
    '[sweep]\nnope = 1\n': r"sweep\.nope: unknown key",
    '[sweep]\n[sweep.values]\nmodel.hiden = [[3]]\n':
        r"sweep\.values\.model\.hiden: not a config key",
    '[sweep]\n[sweep.values]\ntrain.lr = [0.1, "fast"]\n':
        r"sweep\.values\.train\.lr: expected a positive number, got \"fast\"",
    '[sweep]\nzip = true\n[sweep.values]\ntrain.lr = [0.1, 0.2]\nseed = [1, 2, 3]\n':
        r"sweep\.zip: the value lists must have one length to be paired \(train\.lr: 2, "
        r"seed: 3\)",
    '[sweep]\ndevices = ["gpu0"]\npoints = [{ name = "a" }]\n':
        r"sweep\.devices: expected \"auto\", \"cpu\"",
    '[sweep]\nruns = [{ name = "a" }]\n':
        r"sweep\.runs: no longer a key: the named runs are now sweep.points",
}


@pytest.mark.parametrize("text", sorted(REFUSED))
def test_sweep_section_is_validated(tmp_path, text):
    p = tmp_path / "bad.toml"
    p.write_text(BASE + text)
    with pytest.raises(config.ConfigError, match=REFUSED[text]):
        config.load(p)


def test_sweep_points_are_validated_before_any_starts(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text(BASE + '[sweep]\npoints = [{ name = "a", set = ["train.lr=-1"] }]\n')
    with pytest.raises(config.ConfigError, match=r"sweep point a: .*train\.lr: expected a "
                                                 r"positive number"):
        sweep.plan(p)
    p.write_text(BASE + '[sweep]\npoints = [{ name = "ok" }, { name = "late", set = '
                        '["jacobian.snapshots=[999]"] }]\n')
    assert main(["sweep", str(p), "--sessions", str(tmp_path / "s")]) == 2
    assert "sweep point late: jacobian.snapshots: step 999 is past the run's last step (6)" \
        in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing was created
    p.write_text(BASE)
    with pytest.raises(config.ConfigError, match=r"expected a \[sweep\] section"):
        sweep.plan(p)


def test_grid_zip_and_named_points_expand_in_order(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text(GRID)
    base, points = sweep.plan(p)
    assert [q.name for q in points] == ["hidden-3_lr-0.05", "hidden-3_lr-0.2",
                                        "hidden-5_lr-0.05", "hidden-5_lr-0.2"]
    assert points[2].set == ["model.hidden=[5]", "train.lr=0.05"]
    assert points[2].config.model.hidden == [5] and points[2].config.train.lr == 0.05
    assert points[2].values == {"model.hidden": [5], "train.lr": 0.05}
    assert all(q.config.sweep is None for q in points)  # a point is not a sweep
    again = config.loads(config.dumps(base))  # the resolved preset round-trips
    assert again.sweep == base.sweep
    p.write_text(BASE + '[sweep]\nzip = true\ninclude_base = true\nparallel = 2\n'
                        'devices = ["cpu"]\npoints = [{ name = "x", set = ["seed=7"] }]\n'
                        '[sweep.values]\n"train.optimizer" = ["sgd", "adam"]\n'
                        '"train.lr" = [0.1, 0.001]\n')
    base, points = sweep.plan(p)
    assert [q.name for q in points] == ["base", "optimizer-sgd_lr-0.1",
                                        "optimizer-adam_lr-0.001", "x"]
    assert points[2].config.train.optimizer == "adam" and points[3].config.seed == 7
    # values that differ only past six digits get names that differ (both were "lr-0.1")
    p.write_text(BASE + '[sweep]\n[sweep.values]\n"train.lr" = [0.1, 0.1000001, 2.0]\n')
    assert [q.name for q in sweep.plan(p)[1]] == ["lr-0.1", "lr-0.1000001", "lr-2"]
    assert all(q.config.device == "cpu" and q.config.threads == 1 for q in points)
    assert base.sweep.reference_name() == "base"


def test_a_study_section_is_read_as_a_sweep_of_named_points(tmp_path):
    old = PRESET.split("[sweep]")[0] + """
[study]
k_min = 20
runs = [{ name = "seed1", set = ["seed=1"] }]
"""
    p = tmp_path / "old.toml"
    p.write_text(old)
    cfg = config.load(p)
    assert cfg.sweep.include_base and cfg.sweep.overlap and cfg.sweep.reference == "base"
    assert [q.name for q in sweep.plan(p)[1]] == ["base", "seed1"]


@pytest.mark.slow
def test_a_reduced_study_end_to_end(finished_study):
    st = finished_study
    assert st.manifest()["status"] == "done"
    for name, s in st.sessions():
        assert s.manifest()["status"] == "done", name
        assert s.has("analyses/distance.json")
    assert not st.session("noise").has("analyses/init_change.json")  # disabled for that point
    comp = st.comparison()
    assert [r["name"] for r in comp["points"]] == ["base", "seed1", "shuffled", "noise"]
    for r in comp["points"]:
        S = st.session(r["name"]).load_npy("svd/S.npy")
        assert r["counts"] == regions.counts(S, 1e-3) and r["s_max"] == S[0]
        assert r["P"] == 235 and r["steps"] == 6 and 0 <= r["test_acc"] <= 1
    ov = comp["overlap"]
    assert set(ov["runs"]) == {"seed1", "shuffled", "noise"}
    assert ov["ks"][0] == 20 and ov["ks"][-1] == 235
    for curve in ov["runs"].values():
        assert curve[-1] == pytest.approx(1.0)  # k = P: the whole space
    arr = np.load(st.path / "analyses" / "sweep_overlap.npy")
    assert arr.shape == (5, len(ov["ks"]))

    report = (st.path / "report.md").read_text()
    for heading in ("# tjac sweep: mini-sweep", "## Points", "## Spectra",
                    "### Singular values of J, every point", "### |s_i - 1|, every point",
                    "## Bulk-subspace overlap", "## Findings 7 and 8"):
        assert heading in report, heading
    sections = re.split(r"\n## ", report)
    for sec in sections[1:]:
        assert re.search(r"\d\.\d", sec), sec[:80]
    assert "| seed1 | seed=1 | done | 235 | 6 |" in report
    assert re.search(r"\| 7 \|.*\| (yes|no|partly) \|", report)
    assert re.search(r"\| 8 \|.*\| (yes|no|partly) \|", report)
    assert all(ord(c) < 128 for c in report)  # ASCII plots


@pytest.mark.slow
def test_study_overlap_against_direct_principal_angles(finished_study):
    st = finished_study
    ov = st.comparison()["overlap"]
    a, b = st.session("base"), st.session("seed1")
    Sa, Va = a.load_npy("svd/S.npy"), a.load_npy("svd/Vh.npy")
    Sb, Vb = b.load_npy("svd/S.npy"), b.load_npy("svd/Vh.npy")
    for k, got in zip(ov["ks"], ov["runs"]["seed1"]):
        A = Va[regions.closest_to_unity(Sa, k)].T
        B = Vb[regions.closest_to_unity(Sb, k)].T
        assert got == pytest.approx(principal_cosines(A, B).mean(), abs=1e-9)
    M = Va @ Va.T
    assert mean_cos_block(M, 50, 50) == pytest.approx(1.0)


@pytest.mark.slow
def test_resuming_a_finished_sweep_redoes_nothing(finished_study):
    st = finished_study
    before = (st.path / "analyses" / "sweep.json").stat().st_mtime_ns
    calls = []

    def no_run(*a, **k):
        calls.append(a)
        return 0

    assert sweep.run(st.path, run_session=no_run) == 0
    assert calls == []  # every session was done
    assert (st.path / "analyses" / "sweep.json").stat().st_mtime_ns == before  # cached
    events = [e["event"] for e in st.events()[0]]
    assert events.count("sweep_end") == 2


def grid_preset(tmp_path):
    p = tmp_path / "grid.toml"
    p.write_text(GRID)
    return p


@pytest.mark.slow
def test_a_2x2_sweep_killed_mid_way_resumes_to_the_same_comparison(tmp_path):
    preset = grid_preset(tmp_path)
    clean_root, root = tmp_path / "clean", tmp_path / "killed"
    assert main(["sweep", str(preset), "--sessions", str(clean_root), "-q"]) == 0
    clean = sweep.Sweep(clean_root / "mini-sweep")
    # the same sweep as a user runs it, SIGKILLed while its third point computes J
    proc = subprocess.Popen([sys.executable, "-m", "tjac_tui.cli", "sweep", str(preset),
                             "--sessions", str(root), "-q"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    st = sweep.Sweep(root / "mini-sweep")
    t0 = time.time()

    def third_point_in_jacobian() -> bool:
        if not st.exists():
            return False
        s = st.session("hidden-5_lr-0.05")
        return s.exists() and any(e["event"] == "jacobian_chunk" for e in s.events()[0])

    while not third_point_in_jacobian():
        assert time.time() - t0 < 300 and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert st.manifest()["status"] == "running"
    assert [s.manifest()["status"] for _, s in st.sessions()] == ["done", "done", "running",
                                                                  "created"]
    assert main(["sweep", str(st.path), "-q"]) == 0
    first = [e for e in st.session("hidden-3_lr-0.05").events()[0] if e["event"] == "run_start"]
    assert len(first) == 1  # a finished point is not run again
    comp, ref = st.comparison(), clean.comparison()
    strip = ("seconds", "fingerprint", "status")
    for a, b in zip(comp["points"], ref["points"]):
        assert {k: v for k, v in a.items() if k not in strip} == \
            {k: v for k, v in b.items() if k not in strip}
    for name, s in st.sessions():
        assert np.array_equal(s.load_npy("jacobian.npy"),
                              clean.session(name).load_npy("jacobian.npy")), name
    report = (st.path / "report.md").read_text()
    assert "## Against the swept keys" in report
    assert "### bulk fraction against model.hidden" in report
    assert "| hidden-5_lr-0.2 | hidden=5, lr=0.2 | done | 385 | 6 |" in report


@pytest.mark.slow
def test_points_run_in_parallel_worker_processes(tmp_path, capsys):
    preset = grid_preset(tmp_path)
    assert main(["sweep", str(preset), "--sessions", str(tmp_path / "seq"), "-q"]) == 0
    assert main(["sweep", str(preset), "--sessions", str(tmp_path / "par"), "-q",
                 "--parallel", "2"]) == 0
    seq, par = sweep.Sweep(tmp_path / "seq/mini-sweep"), sweep.Sweep(tmp_path / "par/mini-sweep")
    starts = [e["time"] for _, s in par.sessions() for e in s.events()[0]
              if e["event"] == "run_start"]
    ends = [e["time"] for _, s in par.sessions() for e in s.events()[0]
            if e["event"] == "run_end"]
    assert min(ends) > sorted(starts)[1]  # two points were under way at once
    assert all(s.has("worker.log") for _, s in par.sessions())  # in worker processes
    assert par.manifest()["parallel"] == 2  # (and its default when it resumes)
    for (name, a), (_, b) in zip(seq.sessions(), par.sessions()):
        assert np.array_equal(a.load_npy("jacobian.npy"), b.load_npy("jacobian.npy")), name


def test_a_failing_point_is_recorded_and_the_others_finish(tmp_path, capsys):
    p = tmp_path / "f.toml"
    p.write_text(BASE.replace('"cosine"', '"constant"') + '[jacobian]\nenabled = false\n'
                 '[sweep]\n[sweep.values]\ntrain.lr = [0.1, 1e300]\n')
    assert main(["sweep", str(p), "--sessions", str(tmp_path), "-q"]) == runner.EXIT_FAILED
    err = capsys.readouterr().err
    assert "failed (1 point(s) failed: lr-1e300 (the loss became nan at step 1" in err
    st = sweep.Sweep(tmp_path / "mini-sweep")
    rows = {r["name"]: r for r in st.comparison()["points"]}
    assert rows["lr-0.1"]["status"] == "done" and rows["lr-1e300"]["status"] == "failed"
    assert "| lr-1e300 | lr=1e+300 | failed |" in (st.path / "report.md").read_text()


@pytest.mark.slow
def test_compare_pane_shows_a_sweep(tmp_path):
    from tjac_tui.app import TjacApp
    from tjac_tui.screens import ComparePane
    from tjac_tui.screens.compare import SWEEP

    preset = grid_preset(tmp_path)
    assert main(["sweep", str(preset), "--sessions", str(tmp_path), "-q"]) == 0
    st = sweep.Sweep(tmp_path / "mini-sweep")
    comp = st.comparison()

    async def go():
        app = TjacApp(sessions_dir=tmp_path)
        async with running(app, (140, 50)) as pilot:
            await pilot.press("6")
            pane = app.query_one(ComparePane)
            await until(pilot, lambda: pane.choices == [SWEEP + str(st.path)],
                        what="the sweep among the choices")
            pane.select([SWEEP + str(st.path)])
            await until(pilot, lambda: len(pane.rows) == 4, what="the sweep table")
            assert [r[0] for r in pane.rows] == [p["name"] for p in comp["points"]]
            b = comp["points"][3]["counts"]["bulk"]
            assert pane.rows[3][8].startswith(f"{b} (")
            plot = app.query_one("#cmp-s")
            await until(pilot, lambda: plot.plot is not None, what="the trend plot")
            data = plot.plot.data()
            assert set(data) == {"lr=0.05", "lr=0.2"}  # bulk fraction vs width, per lr
            x, y = data["lr=0.2"]
            np.testing.assert_allclose(x, [3, 5])  # (a linear axis: 5 / 3 < 8)
            assert y[1] == pytest.approx(comp["points"][3]["fractions"]["bulk"])
            # a session ticked with the sweep is not compared: the head says so (it was
            # dropped without a word)
            shutil.copytree(st.sessions()[0][1].path, tmp_path / "solo")
            await pilot.press("5", "6")  # (the lists are read again as a pane opens)
            await until(pilot, lambda: str(tmp_path / "solo") in pane.choices,
                        what="the session among the choices")
            pane.select([SWEEP + str(st.path), str(tmp_path / "solo")])
            head = app.query_one("#compare-head")
            await until(pilot, lambda: "Not in this comparison: 1 more ticked (solo)"
                        in str(head.render()), what="the session named as left out")
    asyncio.run(go())


def test_sweep_events_and_manifest_are_plain_json(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text(BASE + '[jacobian]\nenabled = false\n[sweep]\n[sweep.values]\nseed = [0, 1]\n')
    st = sweep.create(tmp_path, p)
    assert sweep.run(st.path) == 0
    m = json.loads((st.path / "sweep.json").read_text())
    assert m["axes"] == ["seed"] and [q["values"] for q in m["points"]] == [{"seed": 0},
                                                                         {"seed": 1}]
    kinds = [e["event"] for e in st.events()[0]]
    assert kinds[0] == "sweep_start" and kinds[-1] == "sweep_end"
    assert kinds.count("sweep_point") == kinds.count("sweep_point_end") == 2


@pytest.mark.slow
def test_ctrl_r_on_a_sweep_preset_starts_the_sweep(tmp_path):
    from tjac_tui.app import TjacApp
    from tjac_tui.screens import ComparePane
    from tjac_tui.screens.compare import SWEEP

    preset = tmp_path / "grid.toml"
    preset.write_text(GRID.replace("[[3], [5]]", "[[3]]"))  # two points
    root = tmp_path / "sessions"

    async def go():
        app = TjacApp(sessions_dir=root, preset=str(preset))
        async with running(app, (140, 50)) as pilot:
            setup = app.pane("setup")
            await until(pilot, lambda: setup.status_text.endswith("grid.toml: valid"),
                        what="the preset")
            await setup.settled()
            await pilot.pause(0.5)
            await pilot.press("ctrl+r")
            await until(pilot, lambda: app.current is not None, what="the first point")
            assert app.current == root / "mini-sweep" / "runs" / "hidden-3_lr-0.05"
            assert app.active_pane == "live"
            st = sweep.Sweep(root / "mini-sweep")
            await until(pilot, lambda: st.manifest().get("status") == "done", timeout=180,
                        what="the sweep, in its background process")
            await until(pilot, lambda: app.live.status == "done", what="the first point")
            assert st.manifest()["preset"] == str(preset)
            await pilot.press("6")
            pane = app.query_one(ComparePane)
            await until(pilot, lambda: SWEEP + str(st.path) in pane.choices,
                        what="the sweep in Compare")
            pane.select([SWEEP + str(st.path)])
            await until(pilot, lambda: [r[0] for r in pane.rows] == [
                "hidden-3_lr-0.05", "hidden-3_lr-0.2"], what="its table")
            assert all(r[2] == "done" for r in pane.rows)
    asyncio.run(go())
    assert (root / "mini-sweep" / "report.md").is_file()


def test_ctrl_r_on_a_sweep_that_does_not_fit_says_why(tmp_path):
    from tjac_tui.app import TjacApp

    preset = tmp_path / "bad.toml"
    preset.write_text(BASE + '[sweep]\npoints = [{ name = "a", set = ['
                             '"jacobian.snapshots=[999]"] }]\n')

    async def go():
        app = TjacApp(sessions_dir=tmp_path / "sessions", preset=str(preset))
        async with running(app, (140, 50)) as pilot:
            setup = app.pane("setup")
            await until(pilot, lambda: setup.status_text.endswith("bad.toml: valid"),
                        what="the preset")  # each point is checked only when it starts
            await setup.settled()
            await pilot.pause(0.5)  # (the fields' first focus, which a key press can race)
            await pilot.press("ctrl+r")
            await until(pilot, lambda: "sweep point a:" in "\n".join(screen_lines(app)),
                        what="the message")
            assert app.current is None
            assert not (tmp_path / "sessions" / "mini-sweep").exists()
    asyncio.run(go())


def test_x_and_r_on_a_sweep_point_speak_of_and_resume_the_sweep(tmp_path, monkeypatch):
    """A point of a sweep stopped from Live: the confirmation says the sweep stops with it,
    and r resumes the sweep (``tjac sweep DIR``: every point, then the comparison), not the
    point alone (which left the rest of the sweep stranded)."""
    from tjac_tui.app import TjacApp
    from tjac_tui.screens import ConfirmScreen

    from conftest import running, screen_lines, until

    p = tmp_path / "g.toml"
    p.write_text(BASE + '[jacobian]\nenabled = false\n[sweep]\n[sweep.values]\nseed = [0, 1]\n')
    st = sweep.create(tmp_path, p)
    point = st.session(st.manifest()["points"][0]["name"])
    point.update_manifest(status="interrupted")  # as a stop leaves it
    started = []

    class Done:
        def poll(self):
            return 0

    monkeypatch.setattr("engine.worker.spawn", lambda cmd, log, env=None: started.append(
        (cmd, log)) or Done())
    monkeypatch.setattr("engine.worker.start_worker", lambda *a: pytest.fail("point alone"))

    async def go():
        app = TjacApp(sessions_dir=tmp_path, session=str(point.path))
        async with running(app, (110, 32)) as pilot:
            await until(pilot, lambda: app._status == "interrupted", what="the point")
            app._locked = True  # as while its worker runs: x asks first
            app.refresh_bindings()
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmScreen)
            text = "\n".join(screen_lines(app))
            assert f"a point of the sweep {st.path.name}" in text
            assert "r resumes the sweep" in text
            await pilot.press("n")
            app._locked = False
            app.refresh_bindings()
            await pilot.press("r")
            await until(pilot, lambda: started, what="the sweep's process")
            cmd, log = started[0]
            assert cmd[-3:] == ["sweep", str(st.path), "-q"] and log == st.path / "sweep.log"
    asyncio.run(go())


def test_a_categorical_key_gets_its_own_trend_plot():
    """A swept optimizer's name is an axis of categories (it had no plot: only the numeric
    keys did, split into curves by it); numeric axes come first."""
    from engine.present.views import against_key, make_plot

    pts = [{"name": f"{o}-{lr}", "values": {"train.optimizer": o, "train.lr": lr},
            "bulk_fraction": f} for (o, lr), f in zip(
                [("sgd", 0.1), ("sgd", 0.3), ("adam", 0.1), ("adam", 0.3)],
                [0.2, 0.25, 0.4, 0.45])]
    v = against_key(pts, "train.optimizer", "bulk_fraction", "bulk fraction")
    assert v.xcategories == ["sgd", "adam"] and not v.logx
    assert {name: (list(x), list(y)) for name, x, y in v.series} == {
        "lr=0.1": ([0.0, 1.0], [0.2, 0.4]), "lr=0.3": ([0.0, 1.0], [0.25, 0.45])}
    plot = make_plot(v, 80, 16)
    assert plot.xticks == ([0.0, 1.0], ["sgd", "adam"])
    axis = plot.text.splitlines()
    assert any("sgd" in line and "adam" in line for line in axis), plot.text
    num = against_key(pts, "train.lr", "bulk_fraction", "bulk fraction")
    assert num.xcategories == [] and set(n for n, _, _ in num.series) == {
        "optimizer=sgd", "optimizer=adam"}


SWEEP_DAMAGE = {  # the file, what is done to it -> the one line's words
    ("sweep.json", "garbage"): "sweep.json: not valid JSON",
    ("sweep.json", "no points"): "sweep.json: not a sweep manifest (points",
    ("sweep.json", "missing"): "sweep.json: missing",
    ("sweep.toml", "edited"): "sweep.toml: contents differ from what was written",
    ("sweep.toml", "missing"): "sweep.toml: missing",
    ("analyses/sweep.json", "edited"): "analyses/sweep.json: contents differ",
    ("analyses/sweep.json", "garbage"): "analyses/sweep.json: ",
}


@pytest.mark.parametrize("rel, how", sorted(SWEEP_DAMAGE))
def test_a_damaged_sweep_file_is_named_in_one_line(finished_study, tmp_path, capsys, rel, how):
    """Each was a traceback (JSONDecodeError, KeyError) in `tjac sweep DIR`, its report and
    the Compare pane, or, edited, believed."""
    import shutil

    from engine.present.views import sweep_views
    from tjac_tui.state import unreadable_text

    d = tmp_path / "sw"
    shutil.copytree(finished_study.path, d)
    p = d / rel
    if how == "missing":
        p.unlink()
    elif how == "garbage":
        p.write_text("{garbage")
    elif how == "no points":
        m = json.loads(p.read_text())
        m["points"] = {"seed1": 1}
        p.write_text(json.dumps(m))
    else:  # edited: still valid, says something else
        p.write_text(p.read_text().replace("0.1", "0.2") if rel.endswith(".toml") else
                     p.read_text().replace('"tol": 0.001', '"tol": 0.002'))
    want = SWEEP_DAMAGE[(rel, how)]
    if rel.startswith("analyses/"):  # the comparison is made again from the points
        with pytest.raises(sweep.SweepDamaged, match=re.escape(want)):
            sweep_views(d)
        assert main(["sweep", str(d), "-q"]) == 0
        assert any(e["event"] == "warning" and e["message"].startswith(want)
                   and e["message"].endswith("; comparing the points again")
                   for e in sweep.Sweep(d).events()[0])
        assert sweep.Sweep(d).verify() == {}
        assert sweep.Sweep(d).comparison()["points"] == finished_study.comparison()["points"]
        return
    code = main(["sweep", str(d), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    if rel == "sweep.json" and how == "missing":  # no longer a sweep: not a preset either
        assert code == 2 and len(err) == 1 and str(d) in err[0]
        return
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"{d}: damaged sweep: {want}") and "new sweep" in err[0]
    if rel == "sweep.json":  # (the Compare pane reads sweep.json and the comparison)
        with pytest.raises(sweep.SweepDamaged) as e:
            sweep_views(d)
        assert unreadable_text(d, e.value) == err[0]
