"""Time one training step's tangent (gradient + K Hessian-vector products).

Compares :class:`engine.kernels.mlp.MLPKernel` with the generic torch.func
baseline ``vmap(jvp(grad(loss)))`` on the paper's shapes (batch 64, MLP
64-64-10, float32, 2 CPU threads) for several chunk sizes K, and projects the
time of the full training Jacobian (P = 4810 columns x 625 steps, SGD with
momentum).

Columns (all times are the best of ``--repeats`` timing blocks, which makes
them less sensitive to other processes sharing the CPU; on a busy 2-core VM
expect +-20% between runs):

* ``grad_jvp``: one ``MLPKernel.grad_jvp`` call (primal + K tangents);
  ``col*st/s`` = tangent columns x steps per second = K / time.
* ``tangent``: ``MLPKernel.tangent`` alone (primal state shared by all
  chunks of a step, results written into preallocated buffers).
* ``baseline``: ``torch.func.vmap(jvp(grad(loss)))`` with the same K;
  ``speedup`` = baseline / grad_jvp.
* ``update``: the SGD-momentum tangent update of the K columns,
  ``dm = dg + 0.9 dm; dtheta -= lr dm`` (in place).
* ``loop``: measured time per step of a chunk's training loop
  (``grad_jvp`` + update, cycling through ``--batches`` distinct batches /
  parameter points, tangent state updated in place), i.e. the real inner loop;
  with ``--flat`` the state is one ``(K, P)`` tensor handed to the kernel as
  views and the results are concatenated back (as ``engine.train`` does).
* ``full(s)``: projected full Jacobian = steps x P/K x loop;
  ``full shared(s)``: the same with the primal pass shared by all chunks of a
  step (steps x (primal + P/K x (tangent + update))).

Usage::

    python benchmarks/bench_tangent_step.py                       # paper setup
    python benchmarks/bench_tangent_step.py --K 32 64 96 128 --no-baseline
    python benchmarks/bench_tangent_step.py --no-baseline --against ../other-checkout
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine.kernels.mlp import MLPKernel  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}
CLOCK = time.perf_counter


def best_time(fn: Callable[[], object], repeats: int, block_s: float) -> float:
    """Best (minimum) mean seconds per call over ``repeats`` blocks of ~block_s."""
    fn()
    t0 = CLOCK()
    fn()
    est = max(CLOCK() - t0, 1e-6)
    n = max(1, int(block_s / est))
    best = math.inf
    for _ in range(repeats):
        t0 = CLOCK()
        for _ in range(n):
            fn()
        best = min(best, (CLOCK() - t0) / n)
    return best


def kernel_module(tree: str, name: str):
    """``engine/kernels/<name>.py`` of another checkout ``tree`` (``--against``), loaded under
    a name of its own beside this checkout's (the kernels import torch alone)."""
    import importlib.util

    path = os.path.join(tree, "engine", "kernels", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"against_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def make_point(widths, B, dtype, gen):
    """Random LeCun-initialised parameters and a batch (inputs in [0, 1))."""
    params = []
    for n, m in zip(widths[:-1], widths[1:]):
        params.append(torch.randn(m, n, generator=gen, dtype=dtype) / math.sqrt(n))
        params.append(torch.randn(m, generator=gen, dtype=dtype) / math.sqrt(n))
    x = torch.rand(B, widths[0], generator=gen, dtype=dtype)
    y = torch.randint(0, widths[-1], (B,), generator=gen)
    return tuple(params), x, y


def baseline_fn(activation: str):
    """``grad_jvp`` by torch.func: vmap over directions of jvp of grad."""
    act = {
        "relu": torch.relu,
        "tanh": torch.tanh,
        "gelu": F.gelu,
        "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    }[activation]

    def loss(params, x, y):
        a = x
        L = len(params) // 2
        for l in range(L):
            a = F.linear(a, params[2 * l], params[2 * l + 1])
            if l < L - 1:
                a = act(a)
        return F.cross_entropy(a, y)

    g = torch.func.grad(loss)

    def grad_jvp(params, tangents, x, y):
        one = lambda t: torch.func.jvp(lambda p: g(p, x, y), (params,), (t,))[1]  # noqa: E731
        return g(params, x, y), torch.func.vmap(one)(tangents)

    return grad_jvp


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--K", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 4810])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 64, 10])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--activation", default="gelu_tanh",
                    choices=["relu", "tanh", "gelu", "gelu_tanh"])
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: perf_counter; cpu: process CPU time (use with --threads 1 "
                         "on a busy machine: insensitive to preemption)")
    ap.add_argument("--steps", type=int, default=625, help="training steps to project")
    ap.add_argument("--columns", type=int, default=0,
                    help="Jacobian columns to project (default: P, the parameter count)")
    ap.add_argument("--repeats", type=int, default=5, help="timing blocks (best is kept)")
    ap.add_argument("--block", type=float, default=0.15, help="seconds per timing block")
    ap.add_argument("--batches", type=int, default=8,
                    help="distinct batches / parameter points cycled by the loop timing")
    ap.add_argument("--flat", action="store_true",
                    help="loop timing with the tangent state as one (K, P) tensor passed to "
                         "the kernel as (non-contiguous) views, results concatenated back")
    ap.add_argument("--against", metavar="DIR",
                    help="also time the kernel of the checkout DIR (e.g. a `git worktree` of "
                         "another commit) in the same run: its primal and grad_jvp, and the "
                         "ratios of this checkout's times to those")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--baseline-max-k", type=int, default=4810,
                    help="skip the (slow) baseline above this K")
    args = ap.parse_args(argv)

    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    widths, B = args.widths, args.batch
    gen = torch.Generator().manual_seed(0)
    kern = MLPKernel(widths, args.activation)
    points = [make_point(widths, B, dtype, gen) for _ in range(args.batches)]
    params, x, y = points[0]
    P = sum(p.numel() for p in params)
    cols = args.columns or P
    base = None if args.no_baseline else baseline_fn(args.activation)
    lr = 1e-20  # keeps the looped tangent state bounded; the arithmetic is the same

    t_primal = best_time(lambda: kern.primal(params, x, y), args.repeats, args.block)
    print(f"widths {widths}  B={B}  {args.activation}  {args.dtype}  "
          f"threads={torch.get_num_threads()}  clock={args.clock}  P={P}  projection: {cols} columns x "
          f"{args.steps} steps   (primal pass: {t_primal * 1e3:.3f} ms)"
          + ("   loop: flat (K, P) state" if args.flat else ""))
    other = None
    if args.against:
        other = kernel_module(args.against, "mlp").MLPKernel(widths, args.activation)
        t_o = best_time(lambda: other.primal(params, x, y), args.repeats, args.block)
        t_primal = best_time(lambda: kern.primal(params, x, y), args.repeats, args.block)
        print(f"against {args.against}: primal pass {t_o * 1e3:.3f} ms, this checkout "
              f"{t_primal * 1e3:.3f} ms (ratio {t_primal / t_o:.3f})")
    if base is not None:  # sanity check: same numbers as the baseline
        t8 = tuple(torch.randn((8, *p.shape), generator=gen, dtype=dtype) for p in params)
        ours, ref = kern.grad_jvp(params, t8, x, y)[1], base(params, t8, x, y)[1]
        err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, ref))
        print(f"max relative difference to the baseline (K=8): {err:.1e}")
    head = (f"{'K':>5} {'grad_jvp ms':>11} {'col*st/s':>9} {'tangent ms':>10} "
            f"{'baseline ms':>11} {'col*st/s':>9} {'speedup':>7} {'update ms':>9} "
            f"{'loop ms':>8} {'full(s)':>8} {'full shared(s)':>14}")
    print(head)
    print("-" * len(head))
    for K in args.K:
        tangents = tuple(torch.randn((K, *p.shape), generator=gen, dtype=dtype) for p in params)
        outs = tuple(torch.empty_like(t) for t in tangents)
        st = kern.primal(params, x, y)

        t_jvp = best_time(lambda: kern.grad_jvp(params, tangents, x, y),
                          args.repeats, args.block)
        t_tan = best_time(lambda: kern.tangent(st, tangents, out=outs),
                          args.repeats, args.block)
        if base is not None and K <= args.baseline_max_k:
            t_base = best_time(lambda: base(params, tangents, x, y),
                               max(1, args.repeats // 2), args.block)
            base_s = f"{t_base * 1e3:11.3f} {K / t_base:9.0f} {t_base / t_jvp:7.1f}"
        else:
            base_s = f"{'-':>11} {'-':>9} {'-':>7}"

        # SGD-momentum tangent update on the K columns (in place)
        dth = tuple(t.clone() for t in tangents)
        dm = tuple(torch.zeros_like(t) for t in tangents)

        def update(dg=outs):
            for th_i, m_i, g_i in zip(dth, dm, dg):
                m_i.mul_(0.9).add_(g_i)
                th_i.add_(m_i, alpha=-lr)

        t_upd = best_time(update, args.repeats, args.block)

        # a chunk's inner training loop: grad_jvp at a new point, then the update
        dth = tuple(t.clone() * 1e-3 for t in tangents)
        dm = tuple(torch.zeros_like(t) for t in tangents)
        step = [0]

        def loop_step():
            p_, x_, y_ = points[step[0] % len(points)]
            step[0] += 1
            _, dg = kern.grad_jvp(p_, dth, x_, y_)
            update(dg)

        if args.flat:  # tangent state as one (K, P) tensor, passed as views
            dth_flat = torch.cat([t.reshape(K, -1) for t in tangents], dim=1) * 1e-3
            dm_flat = torch.zeros_like(dth_flat)
            views = tuple(c.view(K, *p.shape) for c, p in
                          zip(torch.split(dth_flat, [p.numel() for p in params], dim=1), params))

            def loop_step():  # noqa: F811
                p_, x_, y_ = points[step[0] % len(points)]
                step[0] += 1
                _, dg = kern.grad_jvp(p_, views, x_, y_)
                dm_flat.mul_(0.9).add_(torch.cat([d.reshape(K, -1) for d in dg], dim=1))
                dth_flat.add_(dm_flat, alpha=-lr)

        t_loop = best_time(loop_step, args.repeats, args.block)
        full = args.steps * cols / K * t_loop
        shared = args.steps * (t_primal + cols / K * (t_tan + t_upd))
        print(f"{K:5d} {t_jvp * 1e3:11.3f} {K / t_jvp:9.0f} {t_tan * 1e3:10.3f} {base_s} "
              f"{t_upd * 1e3:9.3f} {t_loop * 1e3:8.3f} {full:8.1f} {shared:14.1f}",
              flush=True)
        kern.release()
        if other is not None:  # the other checkout's, then this one's again, alternating
            t_o = best_time(lambda: other.grad_jvp(params, tangents, x, y), args.repeats,
                            args.block)
            t_jvp = best_time(lambda: kern.grad_jvp(params, tangents, x, y), args.repeats,
                              args.block)
            print(f"{'':5} against: grad_jvp {t_o * 1e3:.3f} ms, this checkout "
                  f"{t_jvp * 1e3:.3f} ms (ratio {t_jvp / t_o:.3f})", flush=True)
            getattr(other, "release", getattr(other, "clear_workspace", None))()
            kern.release()


if __name__ == "__main__":
    main()
