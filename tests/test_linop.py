"""TrainingJacobian and StoredJacobian are scipy LinearOperators: svds, eigsh and lsqr on them
give the dense J's answers (float64); the spectral-density curve from stochastic Lanczos
quadrature follows the exact spectrum's smoothed histogram."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import trapezoid  # (numpy 2 has np.trapezoid; the floor, numpy 1.24, not)
from scipy.sparse.linalg import LinearOperator, eigsh, lsqr, svds

from engine.jacobian import exact_jacobian
from engine.matfree import StoredJacobian, TrainingJacobian, density_of_values, \
    spectral_density

from conftest import make, tiny_config


def test_the_training_jacobian_is_a_linear_operator(tiny_npz):
    problem, theta0 = make(tiny_config(tiny_npz))
    op = TrainingJacobian(problem, theta0)
    J = exact_jacobian(problem, theta0).double().numpy()
    P = J.shape[0]
    assert isinstance(op, LinearOperator) and op.shape == (P, P) and op.dtype == np.float64
    assert op.steps == problem.steps
    x = np.random.default_rng(0).normal(size=P)
    np.testing.assert_allclose(op @ x, J @ x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.H @ x, J.T @ x, rtol=1e-10, atol=1e-12)
    exact = np.linalg.svd(J, compute_uv=False)
    top = np.sort(svds(op, k=4, return_singular_vectors=False))[::-1]
    np.testing.assert_allclose(top, exact[:4], rtol=1e-10)
    lam = np.sort(eigsh(op.gram(), k=3, return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(np.sqrt(lam), exact[:3], rtol=1e-10)
    b = J @ x
    sol = lsqr(op, b, atol=1e-14, btol=1e-14, iter_lim=10 * P)[0]
    np.testing.assert_allclose(J @ sol, b, rtol=1e-9, atol=1e-10)


def test_the_density_curve_follows_the_exact_spectrum():
    rng = np.random.default_rng(1)
    P = 200
    Q1, _ = np.linalg.qr(rng.normal(size=(P, P)))
    Q2, _ = np.linalg.qr(rng.normal(size=(P, P)))
    S = np.exp(rng.normal(0, 0.5, P))
    op = StoredJacobian((Q1 * S) @ Q2.T)
    assert isinstance(op, LinearOperator)
    grid = np.linspace(-2, 1, 61)
    est = spectral_density(op, grid, width=0.1, probes=20, steps=60)
    exact = density_of_values(S, grid, 0.1)
    assert abs(trapezoid(exact, grid) - 1) < 1e-5
    # 20 probes: within 5 % of the peak everywhere (measured 2.3 %)
    assert np.abs(est - exact).max() < 0.05 * exact.max()
    # a histogram of the exact values, by decade halves, against the curve's mass there
    edges = np.arange(-2, 1.01, 0.5)
    hist = np.histogram(np.log10(S), edges)[0] / P
    fine = np.linspace(-2, 1, 601)
    curve = spectral_density(op, fine, width=0.02, probes=20, steps=60)
    mass = [trapezoid(curve[(fine >= a) & (fine <= b)], fine[(fine >= a) & (fine <= b)])
            for a, b in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(mass, hist, atol=0.05)


@pytest.mark.parametrize("k", [0, 10])
def test_the_bulk_quadrature_gives_the_density_too_deflated_or_not(k):
    """bulk_count's own quadrature (no more products) gives the density a matrix-free run
    records: it integrates to 1 over log10 s and follows the exact values' curve (20 probes:
    within 5 % of the peak, as spectral_density), with the top k deflated and counted
    exactly, or not."""
    from engine.matfree import bulk_count

    rng = np.random.default_rng(1)
    P = 200
    Q1, _ = np.linalg.qr(rng.normal(size=(P, P)))
    Q2, _ = np.linalg.qr(rng.normal(size=(P, P)))
    S = np.sort(np.exp(rng.normal(0, 0.5, P)))[::-1]
    op = StoredJacobian((Q1 * S) @ Q2.T)
    deflate = (S[:k], Q2[:, :k]) if k else None
    d: dict = {}
    bulk_count(op, (1e-2,), probes=20, steps=60, seed=0, deflate=deflate, density=d)
    grid, est = np.asarray(d["log10_s"]), np.asarray(d["per_decade"])
    assert d["width"] == 0.05 and grid[0] < np.log10(S.min()) and grid[-1] > np.log10(S.max())
    assert abs(trapezoid(est, grid) - 1) < 0.02
    exact = density_of_values(S, grid, 0.05)
    assert np.abs(est - exact).max() < 0.05 * exact.max()


def test_the_operator_of_a_generic_problem_keeps_its_loss_both_ways():
    """J^T u of a generic problem's operator differentiated the cross-entropy whatever the
    problem's loss (here the MSE of a regression): it is the transpose of J v now, and both
    are the exact J's (float64); a training with dropout is refused in one line."""
    import torch

    from engine import schema
    from engine.config import TrainConfig
    from engine.jacobian import exact_jacobian
    from engine.train import generic_problem, initial_theta

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    X = torch.randn(24, 3, dtype=torch.float64)
    y = torch.sin(X[:, :2])
    cfg = schema.build(TrainConfig, {"lr": 0.1, "batch_size": 8, "epochs": 2}, "",
                       TrainConfig.PREFIX)

    def mse(out, target):
        return ((out - target) ** 2).mean()

    p = generic_problem(model, X, y, cfg, torch.device("cpu"), torch.float64, loss=mse)
    theta0 = initial_theta(p.module, torch.device("cpu"), torch.float64)
    J = exact_jacobian(p, theta0).numpy()
    op = TrainingJacobian(p, theta0)
    rng = np.random.default_rng(0)
    V, U = rng.standard_normal((op.P, 3)), rng.standard_normal((op.P, 3))
    np.testing.assert_allclose(op @ V, J @ V, rtol=0, atol=1e-12)
    np.testing.assert_allclose(op.H @ U, J.T @ U, rtol=0, atol=1e-12)
    drop = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Dropout(0.2),
                               torch.nn.Linear(5, 2))
    pd = generic_problem(drop, X, torch.zeros(24, dtype=torch.long), cfg, torch.device("cpu"),
                         torch.float64)
    with pytest.raises(ValueError, match="dropout masks per step"):
        TrainingJacobian(pd, initial_theta(pd.module, torch.device("cpu"), torch.float64))
