"""The training Jacobian of your own nn.Module, with a loss of your choice (regression here).

    python examples/own_module.py            # hidden width 32: P = 226, ~10 s on 2 cores
    python examples/own_module.py --small    # hidden width 6: P = 44, ~1 s (what CI runs)

Prints P, the largest and smallest singular values of J = d theta_T / d theta_0 and how many
fall in each region (chaotic s > 1 + tol, bulk |s - 1| <= tol, stable s < 1 - tol).
"""

import sys

import numpy as np
import torch
from torch import nn

import engine
from engine import regions

small = "--small" in sys.argv
hidden = 6 if small else 32

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))
X = torch.randn(128, 4)
y = torch.stack([torch.sin(X[:, 0]), X[:, 1] * X[:, 2]], dim=1)  # a smooth regression target

J = engine.training_jacobian(model, (X, y), loss=nn.functional.mse_loss,
                             optimizer="adam", lr=0.01, batch_size=32, epochs=2)
S = np.linalg.svd(J.numpy(), compute_uv=False)
print(f"P = {J.shape[0]}, J {tuple(J.shape)} {J.dtype}")
print(f"largest s = {S[0]:.6f}, smallest s = {S[-1]:.6f}")
print("regions:", " ".join(f"{k} {v}" for k, v in regions.counts(S).items()))
