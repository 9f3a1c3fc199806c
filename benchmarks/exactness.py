"""Exactness figures: the forward-mode J against central finite differences and against
reverse mode (torch.func.jacrev of the unrolled training), float64, on a tiny MLP for every
optimizer and schedule and both kernels, and on a tiny CNN (P = 719, digits28) for both
poolings and both kernels. Prints one row per case.

    python benchmarks/exactness.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import make, tiny_config  # noqa: E402
from test_jacobian import OPTIMIZERS, SCHEDULES  # noqa: E402
from test_kernel_conv import problem_of, tiny_cnn  # noqa: E402

from engine import jacobian, train  # noqa: E402


def against_references(ref, theta0, problem_for, chunk):
    """(kernel, J, relative error vs finite differences, max abs difference vs jacrev)
    for the fused and the generic kernel; both references come from the generic `ref`."""
    J_rev = torch.func.jacrev(lambda th: train.train(ref, th))(theta0)
    J_fd = jacobian.finite_difference_columns(ref, theta0, h=1e-6)
    for kernel in ("fused", "generic"):
        problem, _ = problem_for(kernel)
        J = jacobian.exact_jacobian(problem, theta0, chunk=chunk)
        yield (kernel, J, float(torch.linalg.norm(J - J_fd) / torch.linalg.norm(J_fd)),
               float((J - J_rev).abs().max()))


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.8)
    path = Path("/tmp/tjac-exactness.npz")
    np.savez(path, x=x, y=y)
    print(f"{'optimizer':<10} {'schedule':<14} {'kernel':<8} {'rel err vs FD':>14} "
          f"{'max abs vs jacrev':>18} {'||J - I||/||I||':>16}")
    for opt, okw in OPTIMIZERS.items():
        for sched, skw in SCHEDULES.items():
            cfg = tiny_config(path, **okw, **skw)
            ref, theta0 = make(cfg, "generic")
            for kernel, J, fd, rev in against_references(ref, theta0, lambda k: make(cfg, k), 16):
                eye = float(torch.linalg.norm(J - torch.eye(len(J), dtype=J.dtype)) / len(J) ** .5)
                print(f"{opt:<10} {sched:<14} {kernel:<8} {fd:>14.2e} {rev:>18.2e} {eye:>16.3f}",
                      flush=True)
    print(f"\n{'cnn pooling':<12} {'activation':<10} {'kernel':<8} {'rel err vs FD':>14} "
          f"{'max abs vs jacrev':>18}")
    for pooling, act in (("max", "tanh"), ("avg", "tanh"), ("max", "gelu_tanh")):
        cfg = tiny_cnn(pooling, act)
        ref, theta0 = problem_of(cfg, "generic")
        for kernel, _J, fd, rev in against_references(ref, theta0,
                                                     lambda k: problem_of(cfg, k), 64):
            print(f"{pooling:<12} {act:<10} {kernel:<8} {fd:>14.2e} {rev:>18.2e}", flush=True)


if __name__ == "__main__":
    main()
