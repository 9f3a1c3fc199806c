"""How the training Jacobian's regions move with the learning rate: a loop, no preset.

    python examples/lr_sweep.py              # an MLP 64-16-10 on 256 digits: P = 1210
    python examples/lr_sweep.py --small      # an MLP 64-4-10 on 64 digits: P = 310 (CI)

For each learning rate, trains the MLP with SGD (full batch, 8 steps) on the UCI digits from
scikit-learn and prints the region counts of J and its largest singular value.
"""

import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import engine
from engine import regions

small = "--small" in sys.argv
n, hidden = (64, 4) if small else (256, 16)

digits = load_digits()
X = torch.tensor(digits.data[:n] / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target[:n])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, 10))

print(f"P = {sum(p.numel() for p in model.parameters())}")
for lr in (0.01, 0.1, 1.0):
    J = engine.training_jacobian(model, (X, y), optimizer="sgd", lr=lr, batch_size=0,
                                 epochs=8)  # cross-entropy by default; 8 full-batch steps
    S = np.linalg.svd(J.numpy(), compute_uv=False)
    c = regions.counts(S)
    print(f"lr {lr:<5g} chaotic {c['chaotic']:4d}  bulk {c['bulk']:4d}  "
          f"stable {c['stable']:4d}  s_max {S[0]:.4f}")
