"""The spectrum through training (``jacobian.snapshots``): J_(0->t) from the pass that computes J,
checked against truncated runs; its resume, its damage, what it keeps; the plan, the report and
the Spectrum pane that show it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import numpy as np
import pytest

from engine import config, jacobian, plan as plan_mod, regions, runner, worker
from engine.present.report import render_report
from engine.session import Session

from conftest import PRESETS, make, running, tiny_config, until

QUICK_PRESET = PRESETS / "quick.toml"


def snap_config(npz, keep: str = "jacobian", **train_kw) -> config.RunConfig:
    """The tiny float64 run (P = 39, 10 steps) with snapshots after steps 1, 3 and 7 and
    every 4th step; chunks of 7 columns (the last one short)."""
    t = config.to_dict(tiny_config(npz, **train_kw))
    t["jacobian"].update(snapshots=[1, 3, 7], snapshot_every=4, chunk=7, snapshot_keep=keep)
    return config.from_dict(t)


def snapshot_J(s: Session, step: int) -> np.ndarray:
    return np.load(s.path / plan_mod.snapshot_dir(step) / "jacobian.npy", allow_pickle=False)


@pytest.mark.parametrize("opt", [
    {"momentum": 0.9, "schedule": "cosine", "warmup_steps": 2},
    {"optimizer": "adam", "lr": 0.05, "schedule": "linear", "final_lr": 0.01},
    {"momentum": 0.5, "nesterov": True, "weight_decay": 0.01},
])
def test_each_snapshot_is_the_jacobian_of_the_truncated_run(tmp_path, tiny_npz, opt):
    cfg = snap_config(tiny_npz, **opt)
    s = Session.create(tmp_path, "snap", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK
    problem, theta0 = make(cfg)
    assert problem.steps == 10
    steps = [1, 3, 4, 7, 8]  # (the last step, 10, is the run's own J)
    assert sorted(int(p.name[5:]) for p in (s.path / "snapshots").glob("step_*")) == steps
    for t in steps:
        # the same schedule, cut at t: the lr of each of the first t steps unchanged
        J_t = jacobian.exact_jacobian(problem.truncated(t), theta0).numpy()
        assert np.max(np.abs(snapshot_J(s, t) - J_t)) <= 1e-12, t
    J = np.load(s.path / "jacobian.npy")
    assert np.max(np.abs(J - jacobian.exact_jacobian(problem, theta0).numpy())) <= 1e-12
    # each snapshot's SVD and summary, and the table through training
    tt = json.loads((s.path / "snapshots/summary.json").read_text())
    assert [r["step"] for r in tt["rows"]] == steps + [10]
    for r in tt["rows"]:
        J_t = J if r["step"] == 10 else snapshot_J(s, r["step"])
        S = np.linalg.svd(J_t, compute_uv=False)
        assert r["s_max"] == pytest.approx(S[0], rel=1e-12)
        assert r["counts"] == regions.counts(S, cfg.spectrum.bulk_tol)
        assert r["lr"] == pytest.approx(float(problem.lrs[r["step"] - 1]))
        if r["counts"]["bulk"]:
            assert 0.9 < r["bulk_align_mean"] <= 1 + 1e-9
        else:
            assert r["bulk_align_mean"] is None
    assert s.verify() == {}


def test_snapshot_steps_every_epochs_and_refusals(tiny_npz):
    t = config.to_dict(tiny_config(tiny_npz))  # 40 rows, batch 8: 5 steps an epoch, 10 steps
    t["jacobian"].update(snapshots=[2], snapshot_epochs=[1], snapshot_every=3)
    pl = plan_mod.make_plan(config.from_dict(t))
    assert pl.snapshots == [2, 3, 5, 6, 9]
    line = next(x for x in pl.lines() if x.startswith("snapshots:"))
    assert "snapshots: 5 (after steps 2, 3, 5, 6, 9)" in line
    assert pl.disk["snapshots/step_000005/jacobian.npy"] == 39 * 39 * 8
    assert pl.disk["snapshots/step_000005/svd/U.npy"] == 39 * 39 * 8
    t["jacobian"]["snapshots"] = [11]
    with pytest.raises(config.ConfigError, match=r"jacobian.snapshots: step 11 is past the "
                                                 r"run's last step \(10\)"):
        plan_mod.make_plan(config.from_dict(t))
    t["jacobian"].update(snapshots=[], snapshot_epochs=[3])
    with pytest.raises(config.ConfigError, match="snapshot_epochs: epoch 3 is past"):
        plan_mod.make_plan(config.from_dict(t))
    t["jacobian"].update(snapshot_epochs=[], snapshots=[0])
    with pytest.raises(config.ConfigError, match="jacobian.snapshots: expected a list of step "
                                                 "numbers >= 1"):
        config.from_dict(t)
    t["jacobian"].update(snapshots=[2], svd=False, snapshot_keep="svd")
    with pytest.raises(config.ConfigError, match="snapshot_keep"):
        config.from_dict(t)


def test_keep_spectrum_deletes_j_and_vectors_and_resume_does_nothing(tmp_path, tiny_npz):
    cfg = snap_config(tiny_npz, keep="spectrum")
    s = Session.create(tmp_path, "snap", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK
    d = s.path / "snapshots" / "step_000003"
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) == [
        "spectrum.json", "svd/S.npy", "svd/alignment.npy"]
    assert s.verify() == {}  # the deleted files are no longer recorded
    before = (s.path / "snapshots/summary.json").read_bytes()
    assert runner.run_session(s.path) == runner.EXIT_OK  # a second run: everything is done
    events = s.events()[0]
    last = max(i for i, e in enumerate(events) if e["event"] == "run_start")
    assert {e["stage"] for e in events[last:] if e["event"] == "stage_skip"} == {
        "train", "jacobian", "svd", "spectrum", "snapshots"}
    assert (s.path / "snapshots/summary.json").read_bytes() == before
    # keep = "svd": J goes, the vectors stay
    cfg = snap_config(tiny_npz, keep="svd")
    s2 = Session.create(tmp_path, "snap-svd", cfg)
    assert runner.run_session(s2.path) == runner.EXIT_OK
    d = s2.path / "snapshots" / "step_000003"
    assert not (d / "jacobian.npy").exists() and (d / "svd/Vh.npy").is_file()
    assert (s2.path / "snapshots/summary.json").read_bytes() == before


def test_a_snapshot_of_the_last_step_alone_is_refused(tmp_path, capsys):
    """It ran with no snapshot and no summary, and said nothing."""
    from tjac_tui.cli import main

    assert main(["run", "quick", "--sessions", str(tmp_path), "--set",
                 "jacobian.snapshots=[16]"]) == 2
    assert "step 16 is the run's last: its J is the session's own jacobian.npy" in \
        capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert plan_mod.snapshot_steps(config.load(QUICK_PRESET, ["jacobian.snapshots=[4, 16]"]
                                               ).jacobian, 16, 8) == [4]


@pytest.mark.parametrize("keep", ["svd", "spectrum"])
def test_a_damaged_snapshot_whose_j_was_not_kept_is_computed_again(tmp_path, tiny_npz, keep):
    """Its J is gone, so the Jacobian pass runs again for it (resume failed on the missing
    jacobian.npy for good); the repaired files are the undamaged ones, bitwise."""
    import shutil

    s = Session.create(tmp_path, "snap", snap_config(tiny_npz, keep=keep))
    assert runner.run_session(s.path) == runner.EXIT_OK
    copy = tmp_path / "copy"
    shutil.copytree(s.path, copy)
    S = np.load(copy / "snapshots/step_000003/svd/S.npy")
    S[0] = 99
    np.save(copy / "snapshots/step_000003/svd/S.npy", S)
    assert runner.run_session(copy) == runner.EXIT_OK, Session(copy).manifest().get("error")
    for p in sorted(s.path.glob("snapshots/**/*")):
        if p.is_file():
            rel = p.relative_to(s.path)
            assert (copy / rel).read_bytes() == p.read_bytes(), rel
    assert not (copy / "snapshots/step_000003/jacobian.npy").exists()
    assert Session(copy).verify() == {}


def test_damaged_snapshot_is_computed_again_bitwise(tmp_path, tiny_npz):
    cfg = snap_config(tiny_npz)
    s = Session.create(tmp_path, "snap", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK
    good = snapshot_J(s, 4).copy()
    summary = (s.path / "snapshots/summary.json").read_bytes()
    with open(s.path / plan_mod.snapshot_dir(4) / "jacobian.npy", "r+b") as f:
        f.seek(-100, os.SEEK_END)  # the last chunk's bytes
        f.write(b"\x7f" * 40)
    assert runner.run_session(s.path) == runner.EXIT_OK
    warnings = [e["message"] for e in s.events()[0] if e["event"] == "warning"]
    assert any("step_000004/jacobian.npy" in w and "damaged block" in w for w in warnings)
    last = max(i for i, e in enumerate(s.events()[0]) if e["event"] == "run_start")
    assert [e["step"] for e in s.events()[0][last:] if e["event"] == "snapshot_start"] == [4]
    assert np.array_equal(snapshot_J(s, 4), good)
    assert (s.path / "snapshots/summary.json").read_bytes() == summary
    assert s.verify() == {}
    # a damaged snapshot SVD: that snapshot is analysed again (its J is intact)
    S_path = s.path / plan_mod.snapshot_dir(7) / "svd" / "S.npy"
    S = S_path.read_bytes()
    S_path.write_bytes(S[:-8] + b"\x00" * 8)
    assert runner.run_session(s.path) == runner.EXIT_OK
    last = max(i for i, e in enumerate(s.events()[0]) if e["event"] == "run_start")
    assert [e["step"] for e in s.events()[0][last:] if e["event"] == "snapshot_start"] == [7]
    assert S_path.read_bytes() == S and s.verify() == {}


def test_stop_during_the_snapshots_stage_then_resume(tmp_path, tiny_npz):
    cfg = snap_config(tiny_npz)
    clean = Session.create(tmp_path, "clean", cfg)
    assert runner.run_session(clean.path) == runner.EXIT_OK

    class Stop(KeyboardInterrupt):
        pass

    def stop_after_first(ev):
        if ev["event"] == "snapshot_done" and ev["index"] == 1:
            raise Stop

    s = Session.create(tmp_path, "stopped", cfg)
    assert runner.run_session(s.path, [stop_after_first]) == runner.EXIT_INTERRUPTED
    assert s.manifest()["stages"]["snapshots"]["status"] == "interrupted"
    assert runner.run_session(s.path) == runner.EXIT_OK
    started = [e["step"] for e in s.events()[0] if e["event"] == "snapshot_start"]
    assert started == [1, 3] + [4, 7, 8]  # the resume skipped the two analysed snapshots
    for rel in ("snapshots/summary.json", "snapshots/step_000003/svd/S.npy",
                "snapshots/step_000008/svd/Vh.npy"):
        assert (s.path / rel).read_bytes() == (clean.path / rel).read_bytes(), rel


def sigkill_config(**jac) -> config.RunConfig:
    """38 chunks of 32 columns (P = 1210, 16 steps), snapshots after steps 4 and 10."""
    return config.from_dict({
        "name": "snapkill", "threads": 1, "device": "cpu", "data": {"n_train": 256},
        "model": {"hidden": [16]},
        "train": {"lr": 0.1, "momentum": 0.9, "schedule": "cosine", "batch_size": 32,
                  "epochs": 2},
        "jacobian": {"chunk": 32, "snapshots": [4, 10], **jac}})


@pytest.mark.slow
def test_sigkill_mid_jacobian_with_snapshots_resumes_bitwise(tmp_path):
    cfg = sigkill_config()
    killed = Session.create(tmp_path, "killed", cfg)
    proc = worker.start_worker(killed.path)
    t0 = time.time()
    while sum(e["event"] == "jacobian_chunk" for e in killed.events()[0]) < 3:
        assert time.time() - t0 < 120
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    prog = json.loads((killed.path / "snapshots/step_000004/jacobian.progress.json").read_text())
    assert 3 <= len(prog["done"]) < 38
    assert runner.run_session(killed.path) == runner.EXIT_OK
    clean = Session.create(tmp_path, "clean", cfg)
    assert runner.run_session(clean.path) == runner.EXIT_OK
    for rel in ("jacobian.npy", "snapshots/step_000004/jacobian.npy",
                "snapshots/step_000010/jacobian.npy", "snapshots/step_000010/svd/S.npy",
                "snapshots/summary.json"):
        assert (killed.path / rel).read_bytes() == (clean.path / rel).read_bytes(), rel
    assert killed.verify() == {}


def test_report_and_spectrum_pane_show_the_spectrum_through_training(tmp_path, tiny_npz):
    from tjac_tui.app import TjacApp
    from tjac_tui.screens import SpectrumPane
    from tjac_tui.widgets.tables import table_text

    cfg = snap_config(tiny_npz)
    s = Session.create(tmp_path, "snap", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK
    tt = json.loads((s.path / "snapshots/summary.json").read_text())
    first = tt["rows"][0]
    c = first["counts"]
    row = (f"| 1 | {first['lr']:.3g} | {first['s_max']:.6g} | {c['chaotic']} "
           f"({100 * first['fractions']['chaotic']:.1f}%) | {c['bulk']} "
           f"({100 * first['fractions']['bulk']:.1f}%) |")
    md = render_report(s)
    assert "## Spectrum through training" in md
    assert row in md
    assert "### Singular values of J_(0->t) through training" in md
    assert "### Regions through training" in md
    assert "### Bulk alignment through training" in md

    async def go():
        app = TjacApp(sessions_dir=tmp_path, session="snap")
        async with running(app, (130, 50)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            await pilot.press("3")
            assert app.active_pane == "spectrum"
            pane = app.query_one(SpectrumPane)
            table = pane.query_one("#snap-table")
            await until(pilot, lambda: table.row_count == 6, what="the snapshots table")
            rows = table_text(table)
            assert [r[0] for r in rows] == ["1", "3", "4", "7", "8", "10"]
            assert rows[0][2] == f"{first['s_max']:.6g}"
            plots = pane.snapshot_plots()
            await until(pilot, lambda: all(p.plot is not None for p in plots.values()),
                        what="the snapshot plots")
            assert list(plots["spectra"].plot.data()) == [
                f"step {r['step']}" for r in tt["rows"]][:6]
            x, y = plots["regions"].plot.data()["bulk"]
            np.testing.assert_allclose(x, [1, 3, 4, 7, 8, 10])
            np.testing.assert_allclose(y, [r["fractions"]["bulk"] for r in tt["rows"]])
            x, y = plots["align"].plot.data()["bulk u.v"]
            np.testing.assert_allclose(y, [r["bulk_align_mean"] for r in tt["rows"]])
            head = str(pane.query_one("#snap-head").render())
            assert "Spectrum through training: 6 steps" in head
    asyncio.run(go())

