"""Time one training step's tangent on LeNet-5: the ways of computing it that were measured.

For a batch of 28x28 images and K tangent directions, one ``grad_jvp`` (gradient + K
Hessian-vector products) by:

* ``pooled``: :class:`engine.kernels.conv.ConvKernel` with max pooling (the kernel tjac runs):
  the shared-input terms only at the pooled positions, as batched matrix products;
* ``dense``: the same kernel's dense path (every term a full convolution, the max pooling
  applied as a gather afterwards), which is what average pooling runs;
* ``torch.func``: ``vmap(jvp(grad(loss)))`` over the module (tjac's ``generic`` kernel).

All three are checked equal on the first K before timing. Prints ms per call, columns x steps
per second and the ratios to ``pooled``.

Usage::

    python benchmarks/bench_conv_step.py                    # B = 200, K = 16 32 64
    python benchmarks/bench_conv_step.py --K 32 --dtype float64 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_tangent_step import DTYPES, best_time  # noqa: E402
from engine.kernels.conv import ConvKernel  # noqa: E402
from engine.models import lenet5  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--activation", default="relu")
    ap.add_argument("--dtype", choices=DTYPES, default="float32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=float, default=1.0, help="seconds per timing block")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    net = lenet5((1, 28, 28), 10, args.activation, "max").to(dtype)
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach() for p in net.parameters())
    x = torch.rand(args.batch, 28 * 28, dtype=dtype)
    y = torch.randint(0, 10, (args.batch,))
    kern = ConvKernel.of(net)

    def loss(ps, xb, yb):
        out = torch.func.functional_call(net, dict(zip(names, ps)), (xb,))
        return F.cross_entropy(out, yb)

    def generic(tangents):
        g = torch.func.grad(loss)
        return torch.func.vmap(lambda t: torch.func.jvp(lambda p: g(p, x, y), (params,), (t,))[1]
                               )(tangents)

    def dense(tangents):
        with torch.no_grad():
            return kern._tangent_dense(params, kern._primal(params, x, y)["st"], tangents)

    ways = {"pooled": lambda t: kern.grad_jvp(params, t, x, y)[1],
            "dense": dense,
            "torch.func": generic}
    P = sum(p.numel() for p in params)
    print(f"LeNet-5 P={P}  B={args.batch}  {args.activation}  max pooling  {args.dtype}  "
          f"threads={torch.get_num_threads()}")
    head = f"{'K':>4} " + " ".join(f"{w + ' ms':>14} {'col*st/s':>9}" for w in ways) + \
        f" {'dense/pooled':>12} {'func/pooled':>11}"
    print(head)
    print("-" * len(head))
    for i, K in enumerate(args.K):
        tangents = tuple(torch.randn(K, *p.shape, dtype=dtype) for p in params)
        if i == 0:
            res = {w: fn(tangents) for w, fn in ways.items()}
            err = max(float((a - b).abs().max() / b.abs().max())
                      for w in ("dense", "torch.func")
                      for a, b in zip(res["pooled"], res[w]))
            print(f"(max relative difference between the three at K={K}: {err:.1e})")
        t = {w: best_time(lambda: fn(tangents), args.repeats, args.block)
             for w, fn in ways.items()}
        print(f"{K:4d} " + " ".join(f"{t[w] * 1e3:14.1f} {K / t[w]:9.0f}" for w in ways)
              + f" {t['dense'] / t['pooled']:12.2f} {t['torch.func'] / t['pooled']:11.2f}",
              flush=True)


if __name__ == "__main__":
    main()
