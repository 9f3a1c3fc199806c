"""What a run will take here, before it starts: the plan's sizes, whether they fit, the chunk on
this device and times from a short timed probe (``tjac run --plan`` and the Setup pane print
:func:`probe`'s figures; :func:`svd_seconds` estimates the SVD of any size by its route)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import jacobian as jac_mod, plan as plan_mod, spectrum
from .build import build

DEVICE_PROBE_N = 2000  # the size of probe()'s timed SVD on a GPU (1,000 on the CPU)


def probe(cfg, device: str | None = None) -> dict:
    """What a run of ``cfg`` will take here, before it starts: the plan's sizes, whether they
    fit, the chunk on this device, and times estimated from a short timed probe (a few training
    steps of one chunk of tangents, on the CPU also of the other chunk sizes of
    :func:`engine.jacobian.probe_chunk`, in one measurement that gives both the run's rate and
    the fastest chunk; the SVD from a timed run of the route that will run, on the
    device where it will run, scaled by P^3: :func:`svd_seconds`). Returns plain data:
    ``tjac run --plan`` and the Setup pane print it."""
    b = build(cfg, device)
    dev, dtype, plan, problem, theta0 = b.device, b.dtype, b.plan, b.problem, b.theta0
    out: dict = {"plan": plan, "device": str(dev), "fits": None, "chunk": None}
    try:
        plan_mod.check(plan, Path("."), device=dev.type)
        out["fits"] = "yes"
    except plan_mod.PlanError as e:
        out["fits"] = str(e)
    if not cfg.jacobian.enabled:
        return out
    if cfg.spectrum.method == "matfree":  # J is never formed: time the products instead
        from . import matfree

        sp = cfg.spectrum
        out["matfree"] = matfree.estimate_seconds(
            problem, theta0, min(sp.k, plan.P - 1), sp.solver, sp.probes, sp.lanczos_steps,
            torch.float64 if sp.matfree_dtype == "float64" else torch.float32)
        return out
    chunk = cfg.jacobian.chunk or jac_mod.auto_chunk(problem, theta0, dev, dtype)
    out["chunk"] = chunk
    if dev.type == "cuda":
        out["chunk_bytes"] = jac_mod.probe_column_bytes(problem, theta0) * chunk
    # one measurement gives both of the plan's figures, the rate J runs at and the chunk
    # probe's table (which includes the run's chunk): timed apart, with different steps,
    # warm-ups and repeats (one timing of 2 steps against the best of 2 of 5), they
    # contradicted each other on a loaded machine
    t0 = time.perf_counter()
    k = min(chunk, plan.P)
    if dev.type == "cpu" and hasattr(problem.kernel, "tangent"):
        best, rates = jac_mod.probe_chunk(problem, theta0, include=(k,))
        # the fastest chunk here, for jacobian.chunk (a run keeps its default, so that the
        # same preset gives the same J bits whatever the machine's load)
        out["chunk_probe"] = {"best": best, "column_steps_per_s": rates}
        rate = rates[k]
    else:
        rate = jac_mod.measure_rates(problem, theta0, [k])[k]
    out["probe_seconds"] = time.perf_counter() - t0
    out["column_steps_per_s"] = rate
    out["jacobian_s"] = plan.P * plan.steps / rate
    if plan.svd:
        sp = cfg.spectrum
        route = plan_mod.svd_route(dev.type, sp.svd_method, sp.svd_dtype)
        out["svd_s"] = svd_seconds(route, plan.P, dev, sp.vectors, sp.svd_dtype)
        if dev.type == "cuda":
            n = min(plan.P, DEVICE_PROBE_N)
            out["svd_s_note"] = (f"{plan_mod.ROUTES[route]}, timed on {dev} at n = {n:,} and "
                                 "scaled by (P/n)^3")
    return out


def svd_seconds(route: str, P: int, device, vectors: bool = True, dtype: str = "float64",
                n: int | None = None) -> float:
    """The estimated seconds of the SVD of a P x P J by ``route`` (:func:`plan.svd_route`):
    the route timed on a random n x n matrix and scaled by (P/n)^3. On the CPU, n = 1,000 and
    the products the route does (gesdd, or the Gram route's eigh and J^T U); on a GPU,
    n = min(P, 2,000) and the route's own function on ``device``, after an untimed run at
    n = 64 (the first call pays for CUDA's and cuSOLVER's set-up), with synchronised
    timing."""
    rng = np.random.default_rng(0)
    if route in ("gram-cpu", "direct-cpu"):
        n = n or 1000
        A = rng.standard_normal((n, n)).astype(dtype)
        t0 = time.perf_counter()
        if route == "gram-cpu":  # what engine.svdjob does, at n
            import scipy.linalg

            w, Z = scipy.linalg.eigh(A @ A.T, driver="evr", check_finite=False)
            A.T @ Z
        else:
            np.linalg.svd(A)
        return (time.perf_counter() - t0) * (P / n) ** 3
    n = n or min(P, DEVICE_PROBE_N)
    if route == "gram-cuda":
        fn = spectrum.svd_gram_device
    else:
        def fn(A, device, vectors):
            return spectrum.svd_device(A, device, vectors, dtype=np.dtype(dtype))

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for m in (min(64, n), n):
        A = np.asfortranarray(rng.standard_normal((m, m)))  # (column-major, as J is stored)
        sync()
        t0 = time.perf_counter()
        result = fn(A, device, vectors)
        sync()
        seconds = time.perf_counter() - t0
        del result
    return seconds * (P / n) ** 3
