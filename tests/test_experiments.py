"""The analyses, each checked against a direct computation on a tiny float64 problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from engine import config, regions, runner, train
from engine import subspace
from engine.experiments import ood, param_function, perturbation, restricted
from engine.experiments.common import Context, Partial, retrain
from engine.runner import run_on_session
from engine.sections import ANALYSES, OodConfig, PerturbationConfig
from engine.session import Session
from engine.subspace import k_grid, principal_cosines

from conftest import tiny_config

ALL = {"distance": {}, "init_change": {},
       "perturbation": {"directions": ["bulk", "top", 5], "eps_min": 1e-6, "eps_max": 1.0,
                        "n_eps": 3},
       "ood": {"chunk": 7},
       "restricted": {"k_min": 5, "n_k": 4, "batch_runs": 6},
       "param_function": {"k_min": 3, "n_k": 5, "inputs": ["test", "uniform_noise"]}}


def with_analyses(cfg: config.RunConfig, table: dict) -> config.RunConfig:
    full = config.to_dict(cfg)
    full["analysis"] = table
    return config.from_dict(full)


@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory, tiny_npz):
    """A finished float64 session (P = 39, SGD with momentum) with every analysis run by the
    runner as stages."""
    cfg = with_analyses(tiny_config(tiny_npz, momentum=0.9, schedule="cosine", epochs=3), ALL)
    s = Session.create(tmp_path_factory.mktemp("sessions"), "tiny", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    return s


def arrays(s: Session):
    lay = s.manifest()["layout"]
    names = [r["name"] for r in lay]
    t0, tT = s.load_npz("theta0.npz"), s.load_npz("thetaT.npz")
    flat = lambda d: np.concatenate([d[n].reshape(-1) for n in names])  # noqa: E731
    return flat(t0), flat(tT), s.load_npy("svd/S.npy"), s.load_npy("svd/U.npy"), \
        s.load_npy("svd/Vh.npy")


def problem_of(s: Session):
    from conftest import make

    return make(s.config())


# ---- the region rule -----------------------------------------------------------------------


def test_region_rule_counts_ordering_and_sensitivity():
    S = np.array([20.0, 1.5, 1.0 + 5e-4, 1.0 + 2e-4, 1.0, 1.0 - 2e-4, 1.0 - 2e-3, 0.5, 0.0])
    assert regions.counts(S, 1e-3) == {"chaotic": 2, "bulk": 4, "stable": 3}
    assert regions.counts(S, 3e-4) == {"chaotic": 3, "bulk": 3, "stable": 3}
    assert regions.slices(S, 1e-3)["bulk"] == slice(2, 6)
    assert list(regions.closest_to_unity(S, 3)) == [4, 3, 5]
    assert list(regions.farthest_from_unity(S, 2)) == [0, 8]  # |20 - 1| > |0 - 1|
    assert regions.bulk_middle(S, 1e-3) == 3
    rows = regions.sensitivity_table(S)
    assert [r["tol"] for r in rows] == list(regions.SENSITIVITY_TOLS)
    for r in rows:
        assert r["chaotic"] + r["bulk"] + r["stable"] == len(S)
        assert r["bulk"] == int(np.sum(np.abs(S - 1) <= r["tol"]))
        assert r["chaotic"] == int(np.sum(S > 1 + r["tol"]))
    assert rows[0]["elasticity"] is None
    assert rows[3]["elasticity"] == pytest.approx(np.log(5 / 4) / np.log(3))


def test_region_rule_at_the_thresholds_and_exact_unity():
    tol = 0.25  # exact in binary: 1 +- tol are the thresholds themselves
    S = np.array([1 + tol, 1 + 2 * tol, 1.0, 1.0 + 1e-13, 1 - tol, 1 - 2 * tol])
    m = regions.masks(S, tol)
    assert list(m["bulk"]) == [True, False, True, True, True, False]  # |s - 1| <= tol: bulk
    assert list(m["chaotic"]) == [False, True, False, False, False, False]
    assert list(m["stable"]) == [False, False, False, False, False, True]
    assert regions.unity_counts(S) == {"exactly_1": 1, "within_exact": 2}
    assert regions.rule_text(1e-3) == "bulk: |s - 1| <= 0.001; chaotic: s > 1 + 0.001; " \
                                      "stable: s < 1 - 0.001"


def test_k_grid():
    assert k_grid(100, 0, 20, 4810)[0] == 100 and k_grid(100, 0, 20, 4810)[-1] == 4810
    assert len(k_grid(100, 0, 20, 4810)) == 20
    assert k_grid(5, 0, 10, 8) == [5, 6, 7, 8]


# ---- helpers ---------------------------------------------------------------------------------


def test_retrain_is_bitwise_equal_to_train(tiny_npz):
    from conftest import make

    problem, theta0 = make(tiny_config(tiny_npz, momentum=0.9, epochs=2))
    assert torch.equal(retrain(problem, theta0), train.train(problem, theta0))


def test_every_analysis_ran_as_a_stage(tiny_session):
    m = tiny_session.manifest()
    for name in ANALYSES:
        assert m["stages"][f"analysis.{name}"]["status"] == "done"
        assert tiny_session.has(f"analyses/{name}.json")
    assert not list((tiny_session.path / "analyses").glob(".*.partial.json"))
    assert tiny_session.verify() == {}


def test_analysis_config_is_strict():
    with pytest.raises(config.ConfigError, match=r"analysis\.ood\.stride: expected a positive "
                                                 r"integer, got 0"):
        config.loads("[analysis.ood]\nstride = 0\n")
    with pytest.raises(config.ConfigError, match=r"analysis\.restricted\.families: expected"):
        config.loads('[analysis.restricted]\nfamilies = ["bulk", "middle"]\n')
    with pytest.raises(config.ConfigError, match=r"analysis\.perturbation\.nope: unknown key"):
        config.loads("[analysis.perturbation]\nnope = 1\n")
    cfg = config.loads('[analysis.perturbation]\ndirections = ["bulk", 12]\n')
    assert cfg.analysis["perturbation"].directions == ["bulk", 12]
    again = config.loads(config.dumps(cfg))  # the resolved config round-trips
    assert again.analysis["perturbation"] == cfg.analysis["perturbation"]


# ---- distance and init_change ------------------------------------------------------------------


def test_distance_matches_the_spectrum(tiny_session):
    r = tiny_session.read_json("analyses/distance.json")
    _, _, S, U, Vh = arrays(tiny_session)
    d = tiny_session.load_npy("analyses/distance_abs.npy")
    np.testing.assert_array_equal(d, np.abs(S.astype(np.float64) - 1))
    a = tiny_session.load_npy("analyses/distance_alignment.npy")
    np.testing.assert_allclose(a, np.einsum("ij,ji->j", U, Vh), atol=1e-12)
    assert r["argmin_dist"] == int(np.argmin(d))
    for row in r["sensitivity"]:
        c = regions.counts(S, row["tol"])
        assert (row["chaotic"], row["bulk"], row["stable"]) == (c["chaotic"], c["bulk"],
                                                                  c["stable"])
    sl = regions.slices(S, r["tol"])
    for name in regions.REGIONS:
        assert r["regions"][name]["count"] == sl[name].stop - sl[name].start


def test_init_change_equals_a_direct_projection(tiny_session):
    theta0, thetaT, S, U, Vh = arrays(tiny_session)
    direct = np.array([abs(float(Vh[i] @ (thetaT - theta0))) for i in range(len(S))])
    got = tiny_session.load_npy("analyses/init_change.npy")
    np.testing.assert_allclose(got, direct, rtol=1e-10, atol=1e-14)
    r = tiny_session.read_json("analyses/init_change.json")
    assert r["norm_total"] == pytest.approx(np.linalg.norm(thetaT - theta0))
    assert sum(r["energy_share"].values()) == pytest.approx(1.0)


# ---- perturbation ----------------------------------------------------------------------------


def test_perturbation_response_is_linear_at_small_stimuli(tiny_session):
    r = tiny_session.read_json("analyses/perturbation.json")
    _, _, S, U, Vh = arrays(tiny_session)
    assert [d["index"] for d in r["directions"]] == [regions.bulk_middle(S), 0, 5]
    for d in r["directions"]:
        small = d["rows"][0]
        assert small["eps"] == pytest.approx(1e-6)
        assert small["linear"] == pytest.approx(S[d["index"]] * 1e-6)
        assert abs(small["response"] - small["linear"]) <= 1e-4 * abs(small["linear"])
        assert small["complement"] <= 1e-4 * 1e-6 * max(1.0, S[0])
    arr = tiny_session.load_npy("analyses/perturbation.npy")
    assert arr.shape == (3, 3, 6)


def test_perturbation_matches_a_direct_retraining(tiny_session):
    problem, theta0 = problem_of(tiny_session)
    _, _, S, U, Vh = arrays(tiny_session)
    thetaT = train.train(problem, theta0)
    th = train.train(problem, theta0 + 0.5 * torch.as_tensor(Vh[0]))
    delta = (th - thetaT).numpy()
    row = perturbation.response(problem, theta0, thetaT, U[:, 0], Vh[0], float(S[0]), 0.5)
    assert row["response"] == pytest.approx(float(U[:, 0] @ delta), rel=1e-12)
    assert row["complement"] == pytest.approx(
        float(np.linalg.norm(delta - (U[:, 0] @ delta) * U[:, 0])), rel=1e-9)


# ---- ood -------------------------------------------------------------------------------------


def test_ood_kl_of_a_zero_perturbation_is_zero_and_matches_a_loop(tiny_session):
    problem, _ = problem_of(tiny_session)
    _, thetaT, S, U, Vh = arrays(tiny_session)
    th = torch.as_tensor(thetaT)
    x = problem.x_train
    zero = ood.max_kl(problem.module, problem.layout, th, torch.zeros(3, len(th),
                                                                       dtype=th.dtype), x)
    assert torch.all(zero == 0)
    d = torch.as_tensor(Vh[[0, 7, 20]])
    got = ood.max_kl(problem.module, problem.layout, th, d, x).numpy()
    lay = problem.layout

    def logp(flat):
        return torch.log_softmax(functional_call(problem.module, dict(zip(lay.names,
                                                                           lay.unflatten(flat))),
                                                 (x,)), -1)

    for j in range(3):
        p, q = logp(th), logp(th + d[j])
        kl = (p.exp() * (p - q)).sum(-1).max().item()
        assert got[j] == pytest.approx(kl, rel=1e-10, abs=1e-15)
    stored = tiny_session.load_npy("analyses/ood_kl.npy")
    idx = tiny_session.load_npy("analyses/ood_index.npy")
    assert stored.shape == (4, len(S)) and list(idx) == list(range(len(S)))
    assert stored[0, 0] == pytest.approx(got[0], rel=1e-10)


def test_ood_probe_indices():
    assert list(ood.probe_indices(10, 3, 0)) == [0, 3, 6, 9]
    assert list(ood.probe_indices(100, 1, 5)) == [0, 25, 50, 74, 99]


# ---- subspace overlaps -----------------------------------------------------------------------


def test_overlap_of_a_subspace_with_itself_is_one_and_orthogonal_is_zero():
    rng = np.random.default_rng(0)
    P = 30
    Q = np.linalg.qr(rng.standard_normal((P, P)))[0]
    A, B = Q[:, :8], Q[:, 8:20]
    assert param_function.mean_cos(A, A) == pytest.approx(1.0)
    assert param_function.mean_cos(A, B) == pytest.approx(0.0, abs=1e-12)
    M = Q.T @ Q
    assert subspace.mean_cos_block(M, 8, 8) == pytest.approx(1.0)
    perm = np.concatenate([np.arange(8, P), np.arange(8)])
    assert subspace.mean_cos_block(Q.T @ Q[:, perm], 8, 12) == pytest.approx(0.0, abs=1e-12)


def test_block_overlap_equals_principal_angles_for_every_k():
    rng = np.random.default_rng(1)
    P = 25
    Q = np.linalg.qr(rng.standard_normal((P, P)))[0].T
    B = np.linalg.qr(rng.standard_normal((P, P)))[0].T
    M = Q @ B.T
    for k in (1, 4, 12, 13, 24, 25):
        for n in (1, 7, 18, 25):
            ref = principal_cosines(Q[:k].T, B[:n].T).mean()
            assert subspace.mean_cos_block(M, k, n) == pytest.approx(ref, abs=1e-10)


def test_random_baseline_matches_sampled_principal_angles():
    rng = np.random.default_rng(2)
    P, n = 40, 10
    for k in (5, 30):
        direct = np.mean([principal_cosines(np.linalg.qr(rng.standard_normal((P, k)))[0],
                                           np.eye(P)[:, :n]).mean() for _ in range(300)])
        assert subspace.random_mean_cos(P, k, n, rng, 300) == pytest.approx(direct, abs=0.01)


# ---- restricted training ---------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"momentum": 0.9, "schedule": "cosine"},
                                {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.01}])
def test_restricted_with_the_full_identity_basis_equals_training(tiny_npz, kw):
    from conftest import make

    problem, theta0 = make(tiny_config(tiny_npz, **kw))
    P = len(theta0)
    eye = torch.eye(P, dtype=theta0.dtype)
    got = restricted.restricted_train(problem, theta0, eye, torch.ones(1, P))[0]
    ref = train.train(problem, theta0)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_restricted_training_stays_in_its_subspace(tiny_session):
    problem, theta0 = problem_of(tiny_session)
    _, _, S, U, Vh = arrays(tiny_session)
    basis = torch.as_tensor(Vh)
    idx = restricted.family_indices("bulk", S, 6)
    mask = torch.zeros(2, len(S), dtype=basis.dtype)
    mask[0, torch.as_tensor(idx)] = 1
    mask[1] = 1  # all directions: SGD is rotation invariant, so this is ordinary training
    th = restricted.restricted_train(problem, theta0, basis, mask)
    coords = (th[0] - theta0).numpy() @ Vh.T
    outside = np.delete(coords, idx)
    assert np.abs(outside).max() < 1e-12 and np.abs(coords[idx]).max() > 0
    torch.testing.assert_close(th[1], train.train(problem, theta0), rtol=0, atol=1e-9)
    r = tiny_session.read_json("analyses/restricted.json")
    assert r["ks"] == k_grid(5, 0, 4, len(S))
    full = r["test_loss"]["top"][-1]  # k = P in any family: the full training
    assert full == pytest.approx(r["full_test_loss"], rel=1e-6)


def test_restricted_families():
    S = np.array([5.0, 2.0, 1.0001, 1.0, 0.9999, 0.3])
    assert sorted(restricted.family_indices("bulk", S, 3)) == [2, 3, 4]
    assert sorted(restricted.family_indices("complement", S, 3)) == [0, 1, 5]
    assert list(restricted.family_indices("top", S, 2)) == [0, 1]
    assert list(restricted.family_indices("bottom", S, 2)) == [4, 5]


# ---- parameter-function Jacobian -------------------------------------------------------------


def test_param_function_jacobian_equals_jacrev(tiny_session):
    problem, theta0 = problem_of(tiny_session)
    lay = problem.layout
    x = problem.x_test

    def f(flat):
        return torch.log_softmax(functional_call(problem.module, dict(zip(lay.names,
                                                                           lay.unflatten(flat))),
                                                 (x,)), -1).reshape(-1)

    got = param_function.output_jacobian(problem.module, lay, theta0, x, chunk=5)
    torch.testing.assert_close(got, jacrev(f)(theta0), rtol=1e-12, atol=1e-12)
    sv, Bfull, rank = param_function.null_space(got.numpy(), 1e-3)
    null = Bfull[: len(theta0) - rank]
    assert np.abs(got.numpy() @ null.T).max() <= 1e-3 * sv[0] * 1.0001
    np.testing.assert_allclose(Bfull @ Bfull.T, np.eye(len(theta0)), atol=1e-10)


def test_param_function_resumed_after_a_stop_is_bitwise_the_whole_run(tiny_session, tmp_path,
                                                                      monkeypatch):
    """Stopped after one unit of its second input set and resumed (the finished units read
    back), the analysis writes the same bytes as the run that was never stopped: each random
    baseline draws from its own stream (one shared stream moved with the restored units)."""
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(tiny_session.path, path)
    calls = [0]
    real = param_function.check_stop

    def stop_at_the_ninth(ctx):
        calls[0] += 1
        if calls[0] == 9:  # the test set (1 + 5 units), then uniform_noise: its 2nd unit
            raise KeyboardInterrupt
        real(ctx)

    monkeypatch.setattr(param_function, "check_stop", stop_at_the_ninth)
    with pytest.raises(KeyboardInterrupt):
        run_on_session(path, ["param_function"])
    assert (path / "analyses" / ".param_function.partial.json").is_file()
    monkeypatch.setattr(param_function, "check_stop", real)
    run_on_session(path, ["param_function"])
    for rel in ("analyses/param_function.json", "analyses/param_function_overlap.npy"):
        assert (path / rel).read_bytes() == (tiny_session.path / rel).read_bytes(), rel


def test_param_function_sweep_against_direct_principal_angles(tiny_session):
    r = tiny_session.read_json("analyses/param_function.json")
    problem, theta0 = problem_of(tiny_session)
    _, _, S, U, Vh = arrays(tiny_session)
    Jf = param_function.output_jacobian(problem.module, problem.layout, theta0,
                                        problem.x_test).numpy()
    sv, Bfull, rank = param_function.null_space(Jf, r["rtol"])
    null = Bfull[: len(S) - rank].T
    order = regions.closest_to_unity(S)
    t = r["sets"]["test"]
    assert t["rank"] == rank and t["null_dim"] == len(S) - rank
    for row in t["sweep"]:
        direct = principal_cosines(Vh[order[: row["k"]]].T, null).mean()
        assert row["bulk"] == pytest.approx(direct, abs=1e-9)
        assert 0 <= row["random"] <= 1


# ---- resumability --------------------------------------------------------------------------


def test_partial_results_survive_and_are_keyed_by_inputs(tiny_session):
    problem, theta0 = problem_of(tiny_session)
    _, thetaT, *_ = arrays(tiny_session)
    ctx = Context(session=tiny_session, problem=problem, theta0=theta0,
                  thetaT=torch.as_tensor(thetaT), data=None, emit=lambda *a, **k: None,
                  should_stop=lambda: False)
    cfg = OodConfig()
    p = Partial(ctx, "probe", cfg)
    p.put("0", [1.0, 2.0])
    assert Partial(ctx, "probe", cfg).get("0") == [1.0, 2.0]
    assert Partial(ctx, "probe", OodConfig(stride=2)).get("0") is None  # other inputs
    p.done()
    assert Partial(ctx, "probe", cfg).get("0") is None


def test_an_interrupted_analysis_resumes_from_its_partial_results(tiny_session, monkeypatch):
    calls = []
    orig = perturbation.response

    def counting(*a, **k):
        calls.append(a[-1] if not k else k)
        return orig(*a, **k)

    monkeypatch.setattr(perturbation, "response", counting)
    cfg = PerturbationConfig(directions=[0], eps_min=1e-3, eps_max=1e-1, n_eps=3)

    problem, theta0 = problem_of(tiny_session)
    _, thetaT, *_ = arrays(tiny_session)

    def ctx(stop):
        return Context(session=tiny_session, problem=problem, theta0=theta0,
                       thetaT=torch.as_tensor(thetaT), data=None, emit=lambda *a, **k: None,
                       should_stop=stop)

    with pytest.raises(KeyboardInterrupt):
        perturbation.run(ctx(lambda: len(calls) >= 2), cfg)  # stop inside the 2nd
    assert len(calls) == 2  # the first stimulus finished, the second was interrupted
    calls.clear()
    result = perturbation.run(ctx(lambda: False), cfg)
    assert len(calls) == 2  # the finished stimulus was not redone
    assert len(result["directions"][0]["rows"]) == 3


def test_run_on_session_reruns_one_analysis_with_other_settings(tiny_session):
    out = run_on_session(tiny_session.path, ["ood"], {"ood": OodConfig(stride=4, chunk=3)})
    assert out["ood"]["n_directions"] == len(range(0, 39, 4))
    assert json.loads((tiny_session.path / "analyses/ood.json").read_text())["stride"] == 4


def test_restricted_training_resumes_from_a_checkpoint(tiny_npz):
    from conftest import make

    problem, theta0 = make(tiny_config(tiny_npz, optimizer="adam", lr=0.01, epochs=3))
    P = len(theta0)
    basis = torch.linalg.qr(torch.randn(P, P, dtype=theta0.dtype,
                                        generator=torch.Generator().manual_seed(0)))[0].T
    mask = torch.ones(2, P, dtype=theta0.dtype)
    mask[0, 10:] = 0
    saved = {}

    def keep(t, C, state):
        saved[t] = (t, C.clone(), tuple(s.clone() for s in state))

    full = restricted.restricted_train(problem, theta0, basis, mask, checkpoint=keep, every=5)
    assert sorted(saved) == list(range(5, problem.steps, 5))
    again = restricted.restricted_train(problem, theta0, basis, mask, start=saved[10])
    torch.testing.assert_close(again, full, rtol=0, atol=0)
