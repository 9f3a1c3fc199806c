"""Matrix-free spectra (engine/matfree.py), checked where the exact answer is known: J v and
J^T u against the stored J, the top singular values against its SVD, the bulk-size estimate's
bounds against the exact spectral measure of every probe, and a session run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid  # (numpy 2 has np.trapezoid; the floor, numpy 1.24, not)

from engine import config, jacobian, regions, train
from engine.matfree import (StoredJacobian, TrainingJacobian, bulk_count, lanczos_lockstep,
                            top_singular_values, window_mass)
from engine.runner import run_session
from engine.session import Session

from conftest import PRESETS, make

QUICK = PRESETS / "quick.toml"
SMALL = ["model.hidden=[8]", 'dtype="float64"']  # P = 610, 16 steps of SGD with momentum


@pytest.fixture(scope="module")
def small():
    prob, theta0 = make(config.load(QUICK, SMALL))
    J = jacobian.exact_jacobian(prob, theta0).numpy()
    return TrainingJacobian(prob, theta0), J


def test_products_equal_the_stored_jacobians(small):
    op, J = small
    rng = np.random.default_rng(0)
    V = rng.standard_normal((op.P, 3))
    scale = np.abs(J).max() * np.abs(V).sum(axis=0).max()
    assert np.abs(op.matmat(V) - J @ V).max() < 1e-13 * scale
    assert np.abs(op.rmatmat(V) - J.T @ V).max() < 1e-13 * scale
    v = V[:, 0]
    assert np.abs(op.matmat(v) - J @ v).max() < 1e-13 * scale  # vectors as well as blocks


def test_the_reverse_pass_does_not_depend_on_the_segment_length(small):
    op, _ = small
    u = np.random.default_rng(1).standard_normal(op.P)
    ckpt = TrainingJacobian(op.problem, op.theta0, reverse="checkpointed")
    other = TrainingJacobian(op.problem, op.theta0, segment=1, reverse="checkpointed")
    whole = TrainingJacobian(op.problem, op.theta0, segment=op.steps, reverse="checkpointed")
    a, b, c = ckpt.rmatmat(u), other.rmatmat(u), whole.rmatmat(u)
    assert {ckpt.stats.reverse, other.stats.reverse, whole.stats.reverse} == {"checkpointed"}
    assert np.abs(a - b).max() < 1e-12 and np.abs(a - c).max() < 1e-12
    assert (ckpt.segment, len(ckpt.checkpoints())) == (4, 4)  # ceil(sqrt(16)) steps a segment


@pytest.mark.parametrize("over,path", [
    ([], "replay"),  # SGD with momentum 0.9
    (["train.nesterov=true", "train.weight_decay=0.01"], "replay"),
    (["train.momentum=0"], "replay"),
    (['train.optimizer="adam"', "train.lr=0.003"], "checkpointed"),  # Adam reads the primal
    (['model.activation="tanh"', 'jacobian.kernel="generic"'], "checkpointed"),  # no primal
])
def test_both_reverse_passes_give_j_transpose(over, path):
    """J^T U over the recorded trajectory (the update's transpose and the fused kernel's
    Hessian-vector product at every step), over states trained again segment by segment (5
    steps, the last segment short: 16 steps), and by checkpointed autograd all equal the
    stored J's transpose times U (float64); auto takes the replay where it applies."""
    prob, theta0 = make(config.load(QUICK, SMALL + over))
    J = jacobian.exact_jacobian(prob, theta0).numpy()
    U = np.random.default_rng(4).standard_normal((J.shape[0], 3))
    want = J.T @ U
    auto = TrainingJacobian(prob, theta0)
    got = auto.rmatmat(U)
    assert auto.stats.reverse == path
    assert np.abs(got - want).max() < 1e-13 * np.abs(want).max()
    ckpt = TrainingJacobian(prob, theta0, reverse="checkpointed")
    assert np.abs(ckpt.rmatmat(U) - want).max() < 1e-13 * np.abs(want).max()
    if path == "checkpointed":
        with pytest.raises(ValueError, match="reverse = replay needs"):
            TrainingJacobian(prob, theta0, reverse="replay").rmatmat(U)
    else:  # no room for the trajectory: the states segment by segment from checkpoints
        seg = TrainingJacobian(prob, theta0, trajectory=False, segment=5)
        got = seg.rmatmat(U)
        assert seg.stats.reverse == "replay, segments"
        assert np.abs(got - want).max() < 1e-13 * np.abs(want).max()


def test_the_operator_keeps_a_trajectory_past_the_exact_js_budget(small, monkeypatch):
    """The products read one recorded trajectory while it fits a quarter of the free
    memory, also where the exact J's fixed budget would refuse it; a budget in bytes
    below one step's state trains the primal again (the same products)."""
    op, J = small
    monkeypatch.setattr(train, "TRAJECTORY_BUDGET", 1000)  # the exact J's: far too small
    assert train.record_trajectory(op.problem, op.theta0) is None
    U = np.random.default_rng(5).standard_normal((op.P, 2))
    kept = TrainingJacobian(op.problem, op.theta0)
    a = kept.rmatmat(U)
    assert kept.stats.reverse == "replay" and kept.stats.trajectory_bytes > 1000
    tight = TrainingJacobian(op.problem, op.theta0, trajectory=1000)
    b = tight.rmatmat(U)
    assert tight.stats.reverse == "replay, segments" and tight.stats.trajectory_bytes == 0
    assert np.abs(a - b).max() < 1e-13 * np.abs(a).max()
    assert np.abs(kept.matmat(U) - tight.matmat(U)).max() < 1e-13 * np.abs(J).max() * 50


@pytest.mark.parametrize("solver", ["propack", "arpack"])
def test_top_singular_values_agree_with_the_svd(small, solver):
    op, J = small
    S = np.linalg.svd(J, compute_uv=False)
    top = top_singular_values(op, 10, solver=solver)
    np.testing.assert_allclose(top, S[:10], rtol=1e-9)


def test_the_quadrature_bounds_hold_for_every_probe(small):
    """For each probe z, the Lanczos bounds on the mass of [(1-tau)^2, (1+tau)^2] contain the
    exact mass: sum over the eigenvalues of J^T J in the window of (q_i . z)^2 / |z|^2."""
    op, J = small
    G = J.T @ J
    lam, Q = np.linalg.eigh(G)
    rng = np.random.default_rng(2)
    Z = rng.choice([-1.0, 1.0], size=(op.P, 6))
    for steps in (10, 30, 60):
        tri = lanczos_lockstep(lambda V: G @ V, Z, steps)
        for tol in (1e-3, 1e-2, 1e-1):
            lo, hi = (1 - tol) ** 2, (1 + tol) ** 2
            inside = (lam >= lo) & (lam <= hi)
            for k, (a, b) in enumerate(tri):
                w = (Q.T @ Z[:, k]) ** 2 / op.P
                exact = w[inside].sum()
                est, lower, upper = window_mass(a, b, lo, hi)
                assert lower - 1e-9 <= exact <= upper + 1e-9, (steps, tol, k)
                assert lower <= est <= upper


def test_the_bulk_estimate_contains_the_exact_count(small):
    op, J = small
    S = np.linalg.svd(J, compute_uv=False)
    for e in bulk_count(op, (1e-3, 1e-2), probes=8, steps=40):
        exact = regions.counts(S, e.tol)["bulk"]
        assert e.lower <= exact <= e.upper, (e.tol, exact, e)
        assert e.lower <= e.count <= e.upper or e.count < e.lower + 2 * e.stderr
        assert len(e.per_probe) == 8 and e.stderr > 0


def test_deflation_keeps_the_bounds_rigorous_and_narrows_them(small):
    """With the top k right singular vectors projected out (their values counted exactly), the
    quadrature bounds, averaged over the probes, still contain the probes' exact count: the
    deflated values inside the window plus each projected probe's mass of the window under
    J^T J; and for tau = 0.1 the deflated bar is narrower than the plain one at the same
    probes and steps."""
    op, J = small
    top, V = top_singular_values(op, 20, solver="propack", vectors=True)
    U, S, Vt = np.linalg.svd(J)
    np.testing.assert_allclose(top, S[:20], rtol=1e-9)
    # the vectors are J's right singular vectors: |v_i . v_i(exact)| = 1
    np.testing.assert_allclose(np.abs((Vt[:20] * V.T).sum(axis=1)), 1.0, atol=1e-7)
    exp, tols, probes, steps = StoredJacobian(J), (1e-3, 1e-2, 1e-1), 6, 15
    plain = bulk_count(exp, tols, probes, steps, seed=3)
    defl = bulk_count(exp, tols, probes, steps, seed=3, deflate=(top, V))
    Z = np.random.default_rng(3).choice([-1.0, 1.0], size=(op.P, probes))
    Zp = Z - V @ (V.T @ Z)
    Vr = Vt[20:].T  # J^T J on the complement of V: the values below the top 20
    for e, p_, tol in zip(defl, plain, tols):
        inside = np.abs(S - 1) <= tol
        exact = inside[:20].sum() + ((Vr[:, inside[20:]].T @ Zp) ** 2).sum(axis=0)
        assert e.quadrature[0] - 1e-6 <= exact.mean() <= e.quadrature[1] + 1e-6, tol
        assert e.lower <= regions.counts(S, tol)["bulk"] <= e.upper, tol
    assert defl[2].upper - defl[2].lower < plain[2].upper - plain[2].lower


def test_a_matfree_session_writes_its_estimates_and_no_jacobian(tmp_path):
    over = SMALL + ['spectrum.method="matfree"', "spectrum.k=5", "spectrum.probes=4",
                    "spectrum.lanczos_steps=20"]
    s = Session.create(tmp_path, "mf", config.load(QUICK, over), str(QUICK))
    assert run_session(s.path) == 0
    m = s.manifest()
    assert list(m["stages"]) == ["train", "matfree"]
    assert not (s.path / "jacobian.npy").exists() and not (s.path / "svd").exists()
    r = json.loads((s.path / "matfree.json").read_text())
    exact = Session.create(tmp_path, "exact", config.load(QUICK, SMALL), str(QUICK))
    assert run_session(exact.path) == 0
    S = exact.load_npy("svd/S.npy")
    np.testing.assert_allclose(r["top"]["s"], S[:5], rtol=1e-8)
    assert [e["tol"] for e in r["bulk"]["estimates"]] == [1e-3, 1e-2]
    for e in r["bulk"]["estimates"]:
        assert e["lower"] <= regions.counts(S, e["tol"])["bulk"] <= e["upper"]
    events = [json.loads(line) for line in (s.path / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "matfree_done" for e in events)
    # the density of the same quadrature, and the report's curve of it beside the bulk table
    d = r["bulk"]["density"]
    assert abs(trapezoid(d["per_decade"], d["log10_s"]) - 1) < 0.05
    from engine.present.report import render_report

    text = render_report(s)
    head = text.index("### Spectral density of J's singular values (estimated)")
    assert text.index("### Bulk size") < head < text.index("## Timings")
    block = text[head:].split("```")[1]
    assert "x: s (log)" in block and len(block.splitlines()) > 10
    assert "the bulk windows [0.999, 1.001], [0.99, 1.01] are narrower" in text[head:]


class Inexact(StoredJacobian):
    """A stored J whose products carry float32-sized rounding (1e-7 relative): what a
    float32 training run gives."""

    def matmat(self, V):
        out = super().matmat(V)
        return out * (1 + 1e-7 * self.rng.standard_normal(out.shape))

    def rmatmat(self, U):
        out = super().rmatmat(U)
        return out * (1 + 1e-7 * self.rng.standard_normal(out.shape))


def test_propack_on_inexact_products_is_caught_and_redone_by_arpack(small):
    """PROPACK through svds returns spurious, repeated values when the products are not
    exact (here 1e-7 relative noise: the top 20 came out as 3.24, 3.23, 3.22 ... for s_1 =
    3.17, 2.86, 2.67 ...); the right vectors' orthogonality shows it, and ARPACK computes the
    result again (to 1e-6 of the SVD)."""
    from engine.matfree import ORTHOGONALITY_TOL

    _, J = small
    S = np.linalg.svd(J, compute_uv=False)
    op = Inexact(J)
    op.rng = np.random.default_rng(0)
    how = {}
    top, V = top_singular_values(op, 20, solver="propack", tol=1e-4, vectors=True, info=how)
    assert how["solver"] == "arpack" and "propack's right vectors are not orthonormal" \
        in how["fallback"]
    assert how["orthogonality"] <= ORTHOGONALITY_TOL
    np.testing.assert_allclose(top, S[:20], rtol=1e-6)
    how = {}  # exact products: PROPACK's own result stands
    top = top_singular_values(StoredJacobian(J), 20, solver="propack", info=how)
    assert how["solver"] == "propack" and "fallback" not in how
    np.testing.assert_allclose(top, S[:20], rtol=1e-9)


def test_a_stop_during_the_top_k_marks_the_run_interrupted(tmp_path):
    """SIGTERM while PROPACK runs: the stop raised inside its Fortran callback came out as a
    SystemError and the run ended "failed"; it is interrupted (exit 3), and resumes."""
    import signal
    import subprocess
    import sys
    import time

    over = SMALL + ['spectrum.method="matfree"', "spectrum.k=150", "spectrum.probes=2",
                    "spectrum.lanczos_steps=4"]
    args = [a for o in over for a in ("--set", o)]
    p = subprocess.Popen([sys.executable, "-m", "tjac_tui.cli", "run", str(QUICK), "-q",
                          "--sessions", str(tmp_path), "--name", "mf", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = tmp_path / "mf" / "events.jsonl"
    try:
        t0 = time.monotonic()
        while not (events.is_file() and '"matfree_progress"' in events.read_text()):
            assert p.poll() is None, p.communicate()[1][-2000:]
            assert time.monotonic() - t0 < 120, "no matfree progress"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 3, err[-2000:]
    m = Session(tmp_path / "mf").manifest()
    assert m["status"] == "interrupted" and m["stages"]["matfree"]["status"] == "interrupted"
    phases = [e["phase"] for e in map(json.loads, events.read_text().splitlines())
              if e["event"] == "matfree_progress"]
    assert phases[-1] == "top-k"  # (it was the top k's solver that the stop met)


def test_analyses_need_the_exact_method(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text(QUICK.read_text() + '\n[analysis.distance]\n')
    with pytest.raises(config.ConfigError, match='spectrum.method: analysis.distance needs the '
                                                'exact SVD'):
        config.load(p, ['spectrum.method="matfree"'])


def test_the_workbench_shows_a_matfree_run(tmp_path):
    """Regions shows the bulk-size estimates with their bars (the report's table), Spectrum
    says there is no full spectrum and where to look."""
    import asyncio

    from engine.present.views import matfree_tables
    from tjac_tui.app import TjacApp

    from conftest import running, screen_lines, until

    over = SMALL + ['spectrum.method="matfree"', "spectrum.k=3", "spectrum.probes=2",
                    "spectrum.lanczos_steps=6"]
    s = Session.create(tmp_path, "mf", config.load(QUICK, over), str(QUICK))
    assert run_session(s.path) == 0
    _, bulk = matfree_tables(s.read_json("matfree.json"))

    async def go():
        app = TjacApp(sessions_dir=tmp_path, session="mf")
        async with running(app, (120, 30)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            assert "matfree: s_1 = " in "\n".join(line.text for line in app.live.log)
            await pilot.press("4")
            pane = app.pane("regions")
            await until(pilot, lambda: pane.matfree is not None, what="the estimates")
            assert pane.table_rows() == bulk.rows
            assert "matrix-free (J never formed), P = 610" in "\n".join(screen_lines(app))
            await pilot.press("3")
            await until(pilot, lambda: "matrix-free run" in "\n".join(screen_lines(app)),
                        what="the spectrum pane's note")
    asyncio.run(go())


def test_the_torch_side_keeps_rows_and_agrees(small):
    op, J = small
    V = torch.randn(2, op.P, dtype=torch.float64)
    np.testing.assert_allclose(op.jvp(V).numpy(), (J @ V.numpy().T).T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(op.vjp(V).numpy(), (J.T @ V.numpy().T).T, rtol=0, atol=1e-12)


MATFREE_KEYS = ['spectrum.method="matfree"', "spectrum.k=5", "spectrum.probes=3",
                "spectrum.lanczos_steps=7"]


def test_the_plan_times_the_products_of_a_matfree_run(tmp_path, capsys):
    """--plan on a matrix-free run probes the products, not a J that is never formed: the top
    k's pair count, the bulk's steps of the probes' block, no column-steps; --json carries
    the same figures."""
    from engine.matfree import solver_pairs
    from tjac_tui.cli import main

    over = ["--set", 'device="cpu"'] + [a for k in SMALL + MATFREE_KEYS for a in ("--set", k)]
    assert main(["run", "quick", "--plan", "--sessions", str(tmp_path)] + over) == 0
    out = capsys.readouterr().out
    assert "time on cpu: matrix-free spectrum about" in out
    assert f"(top 5: about {solver_pairs('propack', 5)} J v + J^T u pairs of " in out
    assert "bulk: 7 Lanczos steps of 3 vectors" in out
    assert "column-steps" not in out and "J in about" not in out
    assert main(["run", "quick", "--plan", "--json", "--sessions", str(tmp_path)] + over) == 0
    m = json.loads(capsys.readouterr().out)["matfree"]
    assert m["top_pairs"] == solver_pairs("propack", 5) == 50
    assert m["pair_s"] > 0 and m["block_pair_s"] > 0
    assert m["seconds"] == pytest.approx(m["top_pairs"] * m["pair_s"] + 7 * m["block_pair_s"])
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_the_setup_panes_time_estimate_says_what_the_run_computes(tmp_path):
    """ctrl+t in Setup: an exact preset gets J's time, a matrix-free one the products' time
    (before, it showed hours for a J the run never forms). The estimate survives the same
    config being validated again while the probe runs, and goes when the config changes."""
    import asyncio

    from tjac_tui.app import TjacApp
    from tjac_tui.screens import SetupPane

    from conftest import running, screen_lines, until

    mf = tmp_path / "mf.toml"  # quick, at hidden [8], matrix-free
    keys = "\n".join(k.removeprefix("spectrum.") for k in MATFREE_KEYS)
    mf.write_text(QUICK.read_text().replace("hidden = [16]", "hidden = [8]", 1)
                  .replace("[spectrum]", f"[spectrum]\n{keys}", 1))
    assert config.load(mf).spectrum.method == "matfree"

    async def go():
        app = TjacApp(sessions_dir=tmp_path / "s", preset=str(QUICK))
        async with running(app, (120, 34)) as pilot:
            setup = app.query_one(SetupPane)
            await until(pilot, lambda: setup.plan_text.startswith("P = 1,210 parameters"),
                        what="the preset's plan")
            await pilot.press("ctrl+t")
            setup._refresh_status()  # the same config validated again (as when fields
            await pilot.pause(0.5)  # settle after a load): the estimate under way is kept
            await until(pilot, lambda: "J in about" in setup.estimate_text, timeout=120,
                        what="the exact run's estimate")
            assert "column-steps/s" in "\n".join(screen_lines(app))
            assert setup.load_preset(mf), setup.status_text
            await until(pilot, lambda: setup.plan_text.startswith("P = 610 parameters"),
                        what="mf.toml's plan")
            assert setup.estimate_text == ""  # another config: the old estimate is gone
            await pilot.press("ctrl+t")
            await until(pilot, lambda: "matrix-free" in setup.estimate_text, timeout=120,
                        what="the matrix-free run's estimate")
            screen = "\n".join(screen_lines(app))
            assert "matrix-free spectrum about" in screen and "J in about" not in screen
            assert "bulk: 7 Lanczos steps of 3 vectors" in setup.estimate_text
    asyncio.run(go())


def test_a_headless_matfree_run_prints_its_estimates(tmp_path, capsys):
    """`tjac run` of a matrix-free preset ends with the two tables (the top k, the bulk
    estimates with their bars), as an exact run ends with its regions table."""
    from tjac_tui.cli import main

    over = [a for k in SMALL + MATFREE_KEYS for a in ("--set", k)]
    assert main(["run", "quick", "--sessions", str(tmp_path), "--name", "mf"] + over) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "mf" / "matfree.json").read_text())
    assert "Largest 5 singular values of J" in out
    assert f"{r['top']['s'][0]:.9g}" in out
    assert "reverse pass by replay over the kept trajectory" in " ".join(out.split())
    assert "Bulk size" in out
    for e in r["bulk"]["estimates"]:
        assert f"{e['lower']:.0f} .. {e['upper']:.0f}" in out
    assert out.strip().splitlines()[-1] == str(tmp_path / "mf")


def test_the_export_of_a_matfree_run_says_there_is_no_spectrum_to_draw(tmp_path, capsys,
                                                                       quick_session):
    """It said "PNG/SVG figures need matplotlib" with matplotlib installed, under an empty
    Figures section; `tjac compare` gave it no P and no s_1."""
    pytest.importorskip("matplotlib")  # (without it the install hint is the right answer)
    from engine.present.figures import INSTALL_HINT
    from tjac_tui.cli import main

    over = SMALL + ['spectrum.method="matfree"', "spectrum.k=3", "spectrum.probes=2",
                    "spectrum.lanczos_steps=4"]
    s = Session.create(tmp_path, "mf", config.load(QUICK, over), str(QUICK))
    assert run_session(s.path) == 0
    assert main(["report", str(s.path), "--figures"]) == 0
    err = capsys.readouterr().err
    assert "no spectrum to draw: J was never formed" in err and INSTALL_HINT not in err
    text = (s.path / "report.md").read_text()
    assert "_no spectrum to draw: J was never formed" in text and INSTALL_HINT not in text
    from engine.present.report import compare_rows

    r = json.loads((s.path / "matfree.json").read_text())
    cols, rows = compare_rows([s, Session(quick_session)])
    by = {row[0]: row[1:] for row in rows}
    assert by["P"] == ["610", "1210"]
    assert by["status"] == ["done (matrix-free)", "done"]
    assert by["s_max"][0] == f"{r['top']['s'][0]:.6g}" and by["bulk"][0] == "-"
