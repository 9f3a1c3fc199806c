"""Time one training step's tangent on LeNet-5: the ways of computing it that were measured.

For a batch of 28x28 images and K tangent directions, one ``grad_jvp`` (gradient + K
Hessian-vector products) by:

* ``pooled``: :class:`engine.kernels.conv.ConvKernel` with max pooling (the kernel tjac runs):
  the shared-input terms only at the pooled positions, as batched matrix products;
* ``dense``: the same kernel's dense path (every term a full convolution, the max pooling
  applied as a gather afterwards), which is what average pooling runs;
* ``torch.func``: ``vmap(jvp(grad(loss)))`` over the module (tjac's ``generic`` kernel).

All three are checked equal on the first K before timing. Prints ms per call, columns x steps
per second and the ratios to ``pooled``, and the aten ops of one ``pooled`` call (those that run
a kernel, and the ones that would wait for the host on CUDA: :mod:`engine.opcheck`). With
``--against DIR`` the kernel of another checkout (e.g. a ``git worktree`` of an older commit)
is timed in the same run, its ``pooled`` and ``dense`` beside this one's, with the ratios.

Usage::

    python benchmarks/bench_conv_step.py                    # B = 200, K = 16 32 64
    python benchmarks/bench_conv_step.py --K 32 --dtype float64 --threads 2
    python benchmarks/bench_conv_step.py --against ../other-checkout --pooling avg
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bench_tangent_step  # noqa: E402
from bench_tangent_step import DTYPES, best_time, kernel_module  # noqa: E402
from engine.kernels.conv import ConvKernel  # noqa: E402
from engine.models import lenet5  # noqa: E402
from engine.opcheck import OpLog  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--activation", default="relu")
    ap.add_argument("--pooling", choices=["max", "avg"], default="max",
                    help="avg: pooled is the dense path (what average pooling runs)")
    ap.add_argument("--against", metavar="DIR",
                    help="also time the kernel of the checkout DIR in the same run")
    ap.add_argument("--dtype", choices=DTYPES, default="float32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: perf_counter; cpu: process CPU time (use with --threads 1 "
                         "on a busy machine: insensitive to preemption)")
    ap.add_argument("--block", type=float, default=1.0, help="seconds per timing block")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        bench_tangent_step.CLOCK = time.process_time
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    net = lenet5((1, 28, 28), 10, args.activation, args.pooling).to(dtype)
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

    def dense_of(k):
        def dense(tangents):
            with torch.no_grad():
                return k._tangent_dense(params, k._primal(params, x, y)["st"], tangents)
        return dense

    ways = {"pooled": lambda t: kern.grad_jvp(params, t, x, y)[1],
            "dense": dense_of(kern),
            "torch.func": generic}
    if args.against:
        old = kernel_module(args.against, "conv").ConvKernel.of(net)
        ways["pooled@DIR"] = lambda t: old.grad_jvp(params, t, x, y)[1]
        ways["dense@DIR"] = dense_of(old)
    P = sum(p.numel() for p in params)
    print(f"LeNet-5 P={P}  B={args.batch}  {args.activation}  {args.pooling} pooling  "
          f"{args.dtype}  threads={torch.get_num_threads()}  clock={args.clock}"
          + (f"  (@DIR: {args.against})" if args.against else ""))
    ratios = {"dense/pooled": ("dense", "pooled"), "func/pooled": ("torch.func", "pooled")}
    if args.against:
        ratios.update({"pooled/@DIR": ("pooled", "pooled@DIR"),
                       "dense/@DIR": ("dense", "dense@DIR")})
    head = f"{'K':>4} " + " ".join(f"{w + ' ms':>14} {'col*st/s':>9}" for w in ways) + \
        "".join(f" {r:>12}" for r in ratios)
    print(head)
    print("-" * len(head))
    for i, K in enumerate(args.K):
        tangents = tuple(torch.randn(K, *p.shape, dtype=dtype) for p in params)
        if i == 0:
            res = {w: fn(tangents) for w, fn in ways.items()}
            err = max(float((a - b).abs().max() / b.abs().max())
                      for w in ways if w != "pooled"
                      for a, b in zip(res["pooled"], res[w]))
            print(f"(max relative difference between the ways at K={K}: {err:.1e})")
            with OpLog() as log:
                ways["pooled"](tangents)
            sync = log.syncing()
            print(f"(one pooled call: {len(log.ops)} aten ops, {log.launches()} of them "
                  f"kernels; waiting for the host on CUDA: {', '.join(sync) or 'none'})")
        t = {w: best_time(lambda: fn(tangents), args.repeats, args.block)
             for w, fn in ways.items()}
        print(f"{K:4d} " + " ".join(f"{t[w] * 1e3:14.1f} {K / t[w]:9.0f}" for w in ways)
              + "".join(f" {t[a] / t[b]:12.3f}" for a, b in ratios.values()), flush=True)


if __name__ == "__main__":
    main()
