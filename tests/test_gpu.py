"""The CUDA path (run by benchmarks/gpu_check.sh on a GPU machine; deselected in CI with
-m "not gpu"). It needs torch, numpy, scipy, scikit-learn, tomli-w and pytest: nothing of the
TUI."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine import config, device, jacobian, runner, train, worker
from engine.session import Session

from conftest import PRESETS, make, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# float32 J on CUDA against the float64 J of the same run: relative Frobenius error at most
# this (TF32 products would give ~1e-3)
FLOAT32_REL_ERROR = 1e-5


def cuda_problem(cfg, kernel="auto", dtype=torch.float64):
    """(problem, theta0) of ``cfg`` on CUDA in ``dtype`` with the Jacobian kernel ``kernel``."""
    cfg = replace(cfg, dtype="float64" if dtype == torch.float64 else "float32")
    return make(cfg, kernel, "cuda")


def test_auto_device_is_cuda_with_an_index():
    assert device.resolve("auto") == torch.device("cuda", torch.cuda.current_device())
    info = device.describe(device.resolve("cuda"))
    assert info["uuid"].startswith(("GPU-", "MIG-")) and info["total_memory"] > 0


@pytest.mark.parametrize("kernel", ["fused", "generic"])
def test_cuda_float64_jacobian_equals_cpu_float64(tiny_npz, kernel):
    cfg = tiny_config(tiny_npz, optimizer="sgd", momentum=0.9, schedule="cosine")
    problem, theta0 = make(cfg, kernel)
    J_cpu = jacobian.exact_jacobian(problem, theta0, chunk=16)
    gp, g0 = cuda_problem(cfg, kernel)
    J_gpu = jacobian.exact_jacobian(gp, g0, chunk=16)
    assert J_gpu.device.type == "cuda"
    assert torch.allclose(J_gpu.cpu(), J_cpu, rtol=0, atol=1e-10)


def quick32(*extra):
    """The quick preset with 32 hidden units: 64-wide products, large enough for cuBLAS to use
    tensor cores when TF32 is allowed (P = 2410, 16 steps)."""
    return config.load(PRESETS / "quick.toml", ["device=cuda", "model.hidden=[32]", *extra])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cuda_float32_jacobian_is_full_precision(optimizer):
    """Float32 on CUDA against float64 on CUDA: no TF32 (it would give ~1e-3)."""
    cfg = quick32(f'train.optimizer="{optimizer}"', *(["train.lr=0.003"] if optimizer == "adam"
                                                       else []))
    p64, t64 = cuda_problem(cfg, dtype=torch.float64)
    p32, t32 = cuda_problem(cfg, dtype=torch.float32)
    J64 = jacobian.exact_jacobian(p64, t64)
    J32 = jacobian.exact_jacobian(p32, t32).double()
    rel = float((J32 - J64).norm() / J64.norm())
    print(f"{optimizer}: float32 J on CUDA, relative error vs float64: {rel:.2e}")
    assert rel < FLOAT32_REL_ERROR, rel
    assert not torch.backends.cuda.matmul.allow_tf32


def test_all_columns_in_one_chunk_equal_the_chunked_jacobian():
    cfg = config.load(PRESETS / "quick.toml", ["device=cuda", "model.hidden=[8]"])
    p, t0 = cuda_problem(cfg, dtype=torch.float32)
    P = t0.numel()
    one = jacobian.exact_jacobian(p, t0, chunk=P)
    chunked = jacobian.exact_jacobian(p, t0, chunk=64)
    assert torch.allclose(one, chunked, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset, extra, replay", [
    ("cnn-quick", [], False),  # max pooling of odd maps (11 x 11)
    ("cnn-quick", ['model.pooling="avg"', 'train.optimizer="adam"', "train.lr=0.01"], False),
    ("quick", [], True),  # the MLP replaying its recorded trajectory
    ("quick", [], False),
])
def test_the_tangent_steps_never_wait_for_the_host(preset, extra, replay):
    """With deterministic algorithms on, as the worker runs, a chunk's steps queue on the GPU
    without a host round trip: torch's sync debug mode raises on any synchronising call."""
    cfg = config.load(PRESETS / f"{preset}.toml", ["device=cuda", *extra])
    p, t0 = cuda_problem(cfg, dtype=torch.float32)
    p = p.truncated(3)
    e = train.identity_columns(t0.numel(), range(32), t0.device, t0.dtype)
    train.train_tangents(p, t0, e)  # the first time: batches gathered, constants made
    traj = train.record_trajectory(p, t0) if replay else None
    assert (traj is not None) == replay
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        if replay:
            train.record_trajectory(p, t0)
        _, rows = train.train_tangents(p, t0, e, trajectory=traj)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(torch.isfinite(rows).all())


def test_cuda_chunks_written_behind_the_computation_are_the_devices_columns(tmp_path):
    """The writer's CUDA path (a pinned copy on a side stream, written by a thread while the
    next chunk computes): J and a snapshot's J are bitwise the columns exact_jacobian
    computes on the device, and on_chunk gets each chunk's theta_T on the host, in order."""
    cfg = config.load(PRESETS / "quick.toml", ["device=cuda", "model.hidden=[8]"])
    p, t0 = cuda_problem(cfg, dtype=torch.float32)
    P, f32 = t0.numel(), np.dtype("float32")
    theta_T = train.train(p, t0).cpu()
    (tmp_path / "snap").mkdir()
    store = jacobian.JacobianStore(tmp_path, P, 64, f32)
    snap = jacobian.JacobianStore(tmp_path / "snap", P, 64, f32)
    seen = []
    jacobian.compute_into(store, p, t0, lambda i, cols, th: seen.append(
        (i, th.device.type, torch.equal(th, theta_T))), snapshots={4: snap})
    assert seen == [(i, "cpu", True) for i in range(len(store.ranges))]
    assert np.array_equal(store.load(), jacobian.exact_jacobian(p, t0, 64).cpu().numpy())
    assert np.array_equal(snap.load(),
                          jacobian.exact_jacobian(p.truncated(4), t0, 64).cpu().numpy())


def test_cuda_session_end_to_end(tmp_path):
    cfg = config.load(PRESETS / "quick.toml", ["device=cuda"])
    s = Session.create(tmp_path, "gpu", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    m = s.manifest()
    assert m["device"].startswith("cuda:") and "gpu" in m["environment"]
    assert m["stages"]["jacobian"]["primal_dev"] == 0.0  # the same operations, bitwise
    assert m["numerics"]["tf32_matmul"] is False
    assert m["numerics"]["env"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert m["device_info"]["uuid"].startswith(("GPU-", "MIG-"))
    S = s.load_npy("svd/S.npy")
    assert np.all(np.diff(S) <= 0) and s.spectrum()["P"] == 1210


def test_cuda_resume_after_sigkill_is_bitwise(tmp_path):
    cfg = config.load(PRESETS / "quick.toml", ["device=cuda", "jacobian.chunk=64",
                                               "train.epochs=6"])
    clean = Session.create(tmp_path, "clean", cfg)
    assert runner.run_session(clean.path) == runner.EXIT_OK
    s = Session.create(tmp_path, "killed", cfg)
    proc = worker.start_worker(s.path)
    t0 = time.time()
    while sum(e["event"] == "jacobian_chunk" for e in s.events()[0]) < 3:
        assert proc.poll() is None and time.time() - t0 < 120, s.manifest().get("error")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert runner.run_session(s.path) == runner.EXIT_OK
    for rel in ("jacobian.npy", "svd/S.npy", "thetaT.npz", "spectrum.json"):
        assert (s.path / rel).read_bytes() == (clean.path / rel).read_bytes(), rel


def test_a_real_out_of_memory_halves_the_chunk(tmp_path):
    """A chunk of every column does not fit in a small slice of the GPU: the stage falls back
    to smaller chunks and finishes."""
    cfg = config.load(PRESETS / "quick.toml", ["device=cuda", "model.hidden=[128]",
                                               "jacobian.chunk=9610", "jacobian.svd=false"])
    s = Session.create(tmp_path, "oom", cfg)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 2**30 / total))  # 1 GiB
    try:
        assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    info = s.manifest()["stages"]["jacobian"]
    assert info["chunk"] < 9610 and info["chunk_fallbacks"][0]["from"] == 9610
    assert np.isfinite(s.load_npy("jacobian.npy")).all()


def test_tf32_on_request_is_visibly_less_exact():
    """The contrast the default protects against: with tf32 = true the same float32 J is far
    from float64."""
    p64, t64 = cuda_problem(quick32(), dtype=torch.float64)
    J64 = jacobian.exact_jacobian(p64, t64)
    try:
        p32, t32 = cuda_problem(quick32("tf32=true"), dtype=torch.float32)
        J32 = jacobian.exact_jacobian(p32, t32).double()
    finally:
        device.configure(device.resolve("cuda"))
    rel = float((J32 - J64).norm() / J64.norm())
    print(f"TF32 relative error of J: {rel:.2e}")
    assert rel > 10 * FLOAT32_REL_ERROR
