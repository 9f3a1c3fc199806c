"""The generic (torch.func) path's chunk size: J of a user module in chunks of 256 columns (the
CPU default before) and of all P columns (the default now), timed in one run; prints the
ratio and the largest difference between the two J.

    python benchmarks/bench_generic_chunk.py [--steps 20]
"""

import argparse
import time

import torch
from torch import nn

import engine

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20)
args = ap.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 36), nn.Tanh(), nn.Linear(36, 2))  # P = 686
X, y = torch.randn(32 * args.steps, 16), torch.randint(0, 2, (32 * args.steps,))
P = sum(p.numel() for p in model.parameters())
out = {}
for chunk in (256, P):
    t0 = time.perf_counter()
    out[chunk] = engine.training_jacobian(model, (X, y), lr=0.1, momentum=0.9, batch_size=32,
                                          chunk=chunk)
    out[chunk, "s"] = time.perf_counter() - t0
    print(f"chunk {chunk:4d}: {out[chunk, 's']:.2f} s")
print(f"P = {P}, {args.steps} steps: chunk 256 / chunk P = {out[256, 's'] / out[P, 's']:.2f}x, "
      f"max |J_256 - J_P| = {(out[256] - out[P]).abs().max():.1e}")
