"""What meets a GPU box, checked on the CPU: the worker's numerics settings (TF32 off whatever the
environment says, deterministic algorithms), device names, chunk sizing from a measured probe,
running out of memory, and an analysis in float64 on a float32 run."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from engine import config, device, jacobian, runner, worker
from engine.session import Session

SMALL = {"name": "small", "device": "cpu", "threads": 1, "data": {"n_train": 128},
         "model": {"hidden": [8]}, "train": {"lr": 0.1, "momentum": 0.9, "batch_size": 32,
                                             "epochs": 2}}


def small(**sections) -> config.RunConfig:
    table = json.loads(json.dumps(SMALL))
    for k, v in sections.items():
        table.setdefault(k, {}).update(v) if isinstance(v, dict) else table.update({k: v})
    return config.from_dict(table)


# ---- numerics --------------------------------------------------------------------------------


def wait_done(s: Session, timeout: float = 120) -> dict:
    t0 = time.time()
    while s.manifest()["status"] in ("created", "running"):
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    return s.manifest()


def test_the_worker_forces_full_float32_and_determinism(tmp_path, monkeypatch):
    """A worker started from an environment like NVIDIA's containers (TF32 override on)
    computes in full float32 with deterministic algorithms, and the manifest says so."""
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    for var in device.OPENMP_WAIT:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(device, "busy_cpus", lambda: 64.0)  # a busy machine: passive
    s = Session.create(tmp_path, "numerics", small(jacobian={"enabled": False}))
    worker.start_worker(s.path)
    m = wait_done(s)
    assert m["status"] == "done", m.get("error")
    n = m["numerics"]
    assert n["float32_matmul_precision"] == "highest"
    assert n["tf32_matmul"] is False and n["tf32_cudnn"] is False
    assert n["deterministic_algorithms"] is True and n["cudnn_deterministic"] is True
    assert n["env"] == {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "0", "NVIDIA_TF32_OVERRIDE": "0",
                        "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    # the thread count J's bits depend on, and OpenMP's passive waiting (set before torch)
    assert n["threads"] == 1 and n["openmp"] == {"OMP_WAIT_POLICY": "PASSIVE",
                                                 "GOMP_SPINCOUNT": None}


def test_a_preset_can_ask_for_tf32_and_the_report_says_so(tmp_path):
    s = Session.create(tmp_path, "tf32", small(tf32=True, jacobian={"enabled": False}))
    try:
        assert runner.run_session(s.path) == 0
        n = s.manifest()["numerics"]
        assert n["tf32_matmul"] is True and n["float32_matmul_precision"] == "high"
        assert n["env"]["TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] is None
        from engine.present.report import render_report

        assert "TF32 matrix products were allowed" in render_report(s)
    finally:
        device.configure(torch.device("cpu"))  # back to full float32 for the other tests
    assert torch.get_float32_matmul_precision() == "highest"


# ---- the thread policy --------------------------------------------------------------------------


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """A cgroup tree made of files: ``cgroup(path, {relative file: text})`` writes the files
    under a fake /sys/fs/cgroup and a /proc/self/cgroup naming ``path`` (v2 and v1 cpu)."""
    def make(path: str, files: dict[str, str]) -> None:
        root = tmp_path / "cgroup"
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        proc = tmp_path / "proc_cgroup"
        proc.write_text(f"4:memory:{path}\n2:cpu,cpuacct:{path}\n0::{path}\n")
        monkeypatch.setattr(device, "CGROUP_ROOT", str(root))
        monkeypatch.setattr(device, "PROC_CGROUP", str(proc))
    return make


@pytest.mark.parametrize("path, files, cpus", [
    ("/", {}, None),  # no cgroup files: no quota
    ("/", {"cpu.max": "max 100000\n"}, None),  # v2, unlimited
    ("/", {"cpu.max": "150000 100000\n"}, 1.5),  # v2 at the root (a container's view)
    ("/job/a", {"cpu.max": "max 100000\n", "job/cpu.max": "400000 100000\n",
                "job/a/cpu.max": "max 100000\n"}, 4.0),  # v2: a parent's quota limits
    ("/", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1
    ("/k8s/pod", {"cpu,cpuacct/k8s/pod/cpu.cfs_quota_us": "50000\n",
                  "cpu,cpuacct/k8s/pod/cpu.cfs_period_us": "100000\n"}, 0.5),
    ("/", {"cpu.max": "garbage\n"}, None),
])
def test_the_cgroup_cpu_quota_is_read_from_v1_and_v2_files(cgroup, path, files, cpus):
    cgroup(path, files)
    assert device.cgroup_cpus() == cpus


@pytest.mark.parametrize("affinity, quota, threads", [
    ({0, 1, 2, 3}, None, 4),  # the affinity set
    ({0, 1, 2, 3}, 2.5, 2),  # a quota of 2.5 CPUs: 2 threads (never more than the CPUs)
    ({5}, 8.0, 1),  # taskset to one CPU of a large quota
    ({0, 1}, 0.5, 1),  # at least one
])
def test_a_run_takes_one_thread_per_available_cpu(monkeypatch, affinity, quota, threads):
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: affinity)
    monkeypatch.setattr(device, "cgroup_cpus", lambda: quota)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert device.available_cpus() == device.run_threads(0) == threads
    assert device.run_threads(3) == 3  # a config's threads is kept


@pytest.mark.parametrize("env, threads", [("1", 1), ("3", 3), ("4,2", 4), ("", 2), ("x", 2),
                                          ("0", 2)])
def test_omp_num_threads_sets_the_count_a_config_leaves_open(monkeypatch, env, threads):
    """``OMP_NUM_THREADS=1 tjac resume`` (and a rank's share of the CPUs, which the launcher
    sets so) ran one thread per CPU whatever it said; a value that is not a count is ignored."""
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(device, "cgroup_cpus", lambda: None)
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert device.run_threads(0) == threads
    assert device.run_threads(5) == 5  # the config's own count comes first


@pytest.mark.parametrize("busy, cpus, quota, policy", [
    (0.3, 2, None, {"GOMP_SPINCOUNT": "3000"}),  # idle cores: spin briefly
    (0.9, 2, None, {"GOMP_SPINCOUNT": "3000"}),
    (1.0, 2, None, {"OMP_WAIT_POLICY": "PASSIVE"}),  # half the cores busy: sleep at once
    (19.0, 2, None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    (10.0, 64, None, {"GOMP_SPINCOUNT": "3000"}),  # a large machine, mostly idle
    (0.0, 64, 2.0, {"OMP_WAIT_POLICY": "PASSIVE"}),  # a quota: spinning spends it
    (None, 2, None, {"OMP_WAIT_POLICY": "PASSIVE"}),  # nothing to read: the safe side
])
def test_the_wait_policy_spins_briefly_on_idle_cores_only(busy, cpus, quota, policy):
    """Passive waiting everywhere made the paper J 1.8x slower on an idle machine (98 s
    against 53 s spinning); spinning everywhere made it 10x slower beside other work."""
    assert device.wait_policy(busy=busy, cpus=cpus, quota=quota) == policy


def test_busy_cpus_reads_the_non_idle_share_of_proc_stat(tmp_path, monkeypatch):
    """Two samples of /proc/stat's first line: 300 of 400 ticks busy on 2 CPUs is 1.5 CPUs."""
    stat = tmp_path / "stat"
    lines = iter(["cpu  1000 0 0 1000 0 0 0 0 0 0\n", "cpu  1250 0 50 1100 0 0 0 0 0 0\n"])
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    monkeypatch.setattr("time.sleep", lambda s: stat.write_text(next(lines, "")))
    stat.write_text(next(lines))
    assert device.busy_cpus(stat=str(stat)) == pytest.approx(1.5)
    assert device.busy_cpus(stat=str(tmp_path / "none")) is None


def test_the_worker_waits_by_the_policy_unless_told_otherwise(monkeypatch):
    """A worker's environment sets libgomp's wait (it spins ~300,000 iterations by default,
    stealing the CPU a preempted sibling thread needs): passive on a busy machine, a brief
    spin on an idle one; a wait policy the user set is kept; ``prepare_threads`` cannot change
    a process that loaded torch."""
    for var in device.OPENMP_WAIT:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(device, "cgroup_cpus", lambda: None)
    monkeypatch.setattr(device, "busy_cpus", lambda: 64.0)
    assert worker.child_environment()["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setattr(device, "busy_cpus", lambda: 0.0)
    env = worker.child_environment()
    assert env["GOMP_SPINCOUNT"] == "3000" and "OMP_WAIT_POLICY" not in env
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    env = worker.child_environment()
    assert "OMP_WAIT_POLICY" not in env and env["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    assert device.prepare_threads() is False and "OMP_WAIT_POLICY" not in device.os.environ


def test_a_run_sets_the_policys_threads_and_records_them(tmp_path, monkeypatch):
    """``threads = 0`` is one thread per available CPU (here a quota of one), whatever torch's
    count was, and the manifest's numerics record the count."""
    before = torch.get_num_threads()
    monkeypatch.setattr(device, "cgroup_cpus", lambda: 1.0)
    torch.set_num_threads(2)
    try:
        s = Session.create(tmp_path, "threads", small(threads=0, jacobian={"enabled": False}))
        assert runner.run_session(s.path) == runner.EXIT_OK
        assert torch.get_num_threads() == 1
        assert s.manifest()["numerics"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


# ---- device names --------------------------------------------------------------------------------


def test_cuda_names_are_checked_and_normalised(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert device.resolve("cuda") == torch.device("cuda", 0)
    assert device.resolve("cuda:1") == torch.device("cuda", 1)
    assert device.resolve("auto") == torch.device("cuda", 0)
    with pytest.raises(device.DeviceError, match=r'device = "cuda:3": this machine has 2 CUDA '
                                                 r"device\(s\) \(cuda:0 .. cuda:1\)"):
        device.resolve("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(device.DeviceError, match="CUDA is not available"):
        device.resolve("cuda")
    assert device.resolve("auto") == torch.device("cpu")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine made of files: ``machine(*nodes, driver=False, **env)`` puts the device nodes
    in its /dev (the driver's /proc file if ``driver``) and sets the environment."""
    def make(*nodes, driver=False, **env):
        dev = tmp_path / "dev"
        dev.mkdir()
        for n in nodes:
            (dev / n).touch()
        proc = tmp_path / "version"
        if driver:
            proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15\n")
        monkeypatch.setattr(device, "DEVICE_DIR", str(dev))
        monkeypatch.setattr(device, "NVIDIA_DRIVER", str(proc))
        for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
    return make


@pytest.mark.parametrize("nodes, driver, env", [
    (["nvidiactl", "nvidia-uvm", "nvidia0"], False, {}),  # a container given a GPU
    (["nvidiactl", "nvidia3"], False, {"NVIDIA_VISIBLE_DEVICES": "GPU-1b2c"}),
    (["dxg"], False, {}),  # WSL 2
    ([], True, {"CUDA_VISIBLE_DEVICES": "0,1"}),  # the host itself
])
def test_cuda_is_found_from_what_a_gpu_machine_has(machine, nodes, driver, env):
    """A GPU container without /proc/driver/nvidia (only the device nodes), WSL's /dev/dxg,
    or the driver's /proc file: ``cuda`` passes and ``auto`` plans the SVD on the GPU."""
    from engine import plan

    machine(*nodes, driver=driver, **env)
    assert device.cuda_missing() is None
    device.check_here("cuda")
    device.check_here("cuda:1")
    assert plan.where_svd_runs("auto") == "cuda"


@pytest.mark.parametrize("nodes, driver, env, why", [
    ([], False, {}, "no NVIDIA driver or GPU device"),
    (["nvidiactl", "nvidia-uvm"], False, {}, "no NVIDIA driver or GPU device"),  # no GPU
    (["nvidia0"], True, {"CUDA_VISIBLE_DEVICES": ""}, "CUDA_VISIBLE_DEVICES=''"),
    (["nvidia0"], True, {"CUDA_VISIBLE_DEVICES": "-1"}, "CUDA_VISIBLE_DEVICES='-1'"),
    (["nvidia0"], True, {"NVIDIA_VISIBLE_DEVICES": "none"}, "NVIDIA_VISIBLE_DEVICES='none'"),
    (["nvidia0"], True, {"NVIDIA_VISIBLE_DEVICES": "void"}, "NVIDIA_VISIBLE_DEVICES='void'"),
])
def test_cuda_is_refused_with_the_reason(machine, capsys, tmp_path, nodes, driver, env, why):
    """No GPU node and no driver, the control node alone, or every GPU hidden by the
    environment: ``cuda`` is refused in one line that says why; ``auto`` means the CPU."""
    from engine import plan
    from tjac_tui.cli import main

    from conftest import PRESETS

    machine(*nodes, driver=driver, **env)
    assert why in device.cuda_missing()
    with pytest.raises(device.DeviceError, match="CUDA is not available on this machine"):
        device.check_here("cuda")
    assert plan.where_svd_runs("auto") == "cpu"
    assert main(["run", str(PRESETS / "quick.toml"), "--device", "cuda", "--sessions",
                 str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('device = "cuda": CUDA is not available on '
                                               "this machine (") and why in err[0], err
    assert not (tmp_path / "s").exists()


def test_a_missing_gpu_is_one_line_in_the_session(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    s = Session.create(tmp_path, "nogpu", small(device="cuda:1"))
    assert runner.run_session(s.path) == runner.EXIT_FAILED
    assert s.manifest()["error"] == 'device = "cuda:1": CUDA is not available on this machine'


# ---- chunk size: measured, and halved on running out of memory -----------------------------------


def test_cuda_chunk_is_sized_from_the_measured_column_memory(tiny_npz):
    from conftest import make, tiny_config

    problem, theta0 = make(tiny_config(tiny_npz))
    cuda = torch.device("cuda", 0)
    k = jacobian.auto_chunk(problem, theta0, cuda, torch.float32, free_bytes=lambda: 10_000,
                            column_bytes=lambda: 300)
    assert k == int(jacobian.CUDA_FRACTION * 10_000 // 300) == 20
    assert jacobian.auto_chunk(problem, theta0, cuda, torch.float32,
                               free_bytes=lambda: 10**12, column_bytes=lambda: 1) == 39  # <= P


def test_running_out_of_memory_halves_the_chunk_until_it_fits(tmp_path, monkeypatch):
    """A fake device that fails to allocate more than 100 tangent columns at once: the stage
    retries with 128, then 64 columns, records it, and J is that of a run with chunks of 64."""
    real = jacobian.train_tangents

    def small_device(problem, theta0, tangents0, *a, **k):
        if tangents0.shape[0] > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(problem, theta0, tangents0, *a, **k)

    monkeypatch.setattr(jacobian, "train_tangents", small_device)
    s = Session.create(tmp_path, "oom", small(jacobian={"chunk": 256}))
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    info = s.manifest()["stages"]["jacobian"]
    assert info["chunk"] == 64
    assert info["chunk_fallbacks"] == [{"from": 256, "to": 128}, {"from": 128, "to": 64}]
    warnings = [e["message"] for e in s.events()[0] if e["event"] == "warning"]
    assert "jacobian: out of memory with chunks of 256 columns; trying 128" in warnings
    monkeypatch.setattr(jacobian, "train_tangents", real)
    ref = Session.create(tmp_path, "ref", small(jacobian={"chunk": 64}))
    assert runner.run_session(ref.path) == runner.EXIT_OK
    assert np.array_equal(s.load_npy("jacobian.npy"), ref.load_npy("jacobian.npy"))
    assert runner.run_session(s.path) == runner.EXIT_OK  # resume keeps the chunk that fitted


def test_out_of_memory_after_a_finished_chunk_is_one_line(tmp_path, monkeypatch):
    real = jacobian.train_tangents
    calls = []

    def flaky(problem, theta0, tangents0, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return real(problem, theta0, tangents0, *a, **k)

    monkeypatch.setattr(jacobian, "train_tangents", flaky)
    s = Session.create(tmp_path, "oom-late", small(jacobian={"chunk": 64}))
    assert runner.run_session(s.path) == runner.EXIT_FAILED
    assert s.manifest()["error"].startswith("out of memory computing J in chunks of 64 columns "
                                            "(2 chunk(s) already done with that size)")


def test_out_of_memory_frees_the_kernels_workspace_before_the_smaller_chunk(tmp_path,
                                                                           monkeypatch):
    """A fake device with room for the MLP kernel's workspace of 150 columns: chunks of 256
    run out of memory part way through allocating theirs. What they allocated is released
    before chunks of 128 are tried (before the attempt records its trajectory: the old size's
    buffers would have left no room for the new), so the run finishes with one fallback, and
    J is that of a run with chunks of 128."""
    from engine.kernels.mlp import MLPKernel

    real_buffer, real_record = MLPKernel._buffer, jacobian.record_trajectory
    per_column = 8 * 32 * 2 + 10 * 32 + 32 + 10 + 8  # dZ_0, dA_1, dZ_1, s, db_1, db_0
    room = 150 * per_column
    held_at_start = []  # the chunk sizes of the kernel's buffers as each attempt starts

    def fake_device(self, name, shape, like):
        held = self._ws.buffers
        if (name, shape, like.dtype, like.device) not in held and \
                sum(b.numel() for b in held.values()) + math.prod(shape) > room:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 MiB")
        return real_buffer(self, name, shape, like)

    def record(problem, theta0, *a, **k):
        held_at_start.append(sorted({b.shape[0] for b in problem.kernel._ws.buffers.values()}))
        return real_record(problem, theta0, *a, **k)

    monkeypatch.setattr(MLPKernel, "_buffer", fake_device)
    monkeypatch.setattr(jacobian, "record_trajectory", record)
    s = Session.create(tmp_path, "oom-ws", small(jacobian={"chunk": 256, "svd": False}))
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    assert held_at_start == [[], []]  # nothing of the chunks of 256 was left for the retry
    info = s.manifest()["stages"]["jacobian"]
    assert info["chunk"] == 128 and info["chunk_fallbacks"] == [{"from": 256, "to": 128}]
    monkeypatch.undo()
    ref = Session.create(tmp_path, "ref", small(jacobian={"chunk": 128, "svd": False}))
    assert runner.run_session(ref.path) == runner.EXIT_OK
    assert np.array_equal(s.load_npy("jacobian.npy"), ref.load_npy("jacobian.npy"))


# the shapes torch gives a failed allocation (torch 2.13: torch.OutOfMemoryError from the
# caching allocator, torch.AcceleratorError from the CUDA runtime, RuntimeError from the CUDA
# libraries' checks and the CPU allocator), and errors of the same shapes that are no such thing
ALLOCATION_FAILED = [
    (torch.cuda.OutOfMemoryError, "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
                                  "total capacity of 139.72 GiB of which 1.06 GiB is "
                                  "free."),
    (torch.AcceleratorError, "CUDA error: out of memory\nCUDA kernel errors might be "
                             "asynchronously reported at some other API call, so the "
                             "stacktrace below might be incorrect.\nFor debugging consider "
                             "passing CUDA_LAUNCH_BLOCKING=1"),
    (RuntimeError, "CUDA driver error: out of memory"),
    (RuntimeError, "cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    (RuntimeError, "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"),
    (RuntimeError, "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                   "`cublasCreate(handle)`"),
    (RuntimeError, "cusolver error: CUSOLVER_STATUS_ALLOC_FAILED, when calling "
                   "`cusolverDnCreate(handle)`. If you keep seeing this error, you may use "
                   "`torch.backends.cuda.preferred_linalg_library()` to try linear algebra "
                   "operators with other supported backends."),
    (RuntimeError, "DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                   "4000000000 bytes. Error code 12 (Cannot allocate memory)"),
    (MemoryError, "Unable to allocate 3.73 GiB for an array"),
]
NOT_ALLOCATION = [
    (torch.AcceleratorError, "CUDA error: an illegal memory access was encountered"),
    (RuntimeError, "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you "
                   "passed in a non-contiguous input."),
    (RuntimeError, "cuDNN error: CUDNN_STATUS_BAD_PARAM"),
    (RuntimeError, "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( "
                   "handle, opa, opb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc)`"),
    (RuntimeError, "cusolver error: CUSOLVER_STATUS_INVALID_VALUE, when calling "
                   "`cusolverDnSgesvdj( handle, jobz, econ, m, n, A, lda, S, U, ldu, V, ldv, "
                   "work, lwork, info, params)`"),
    (ValueError, "chunk 3: expected (64, 610), got (32, 610)"),
    (OSError, "CUBLAS_STATUS_ALLOC_FAILED"),  # not an error torch raises
]


@pytest.mark.parametrize("kind, message", ALLOCATION_FAILED)
def test_every_failed_allocation_halves_the_chunk(kind, message):
    assert jacobian.is_out_of_memory(kind(message))


@pytest.mark.parametrize("kind, message", NOT_ALLOCATION)
def test_other_device_errors_are_not_taken_for_a_failed_allocation(kind, message):
    assert not jacobian.is_out_of_memory(kind(message))


def test_a_cudnn_allocation_failure_halves_the_chunk_like_out_of_memory(tmp_path, monkeypatch):
    """cuDNN's ALLOC_FAILED while the first chunk of 256 columns trains: the stage goes on
    with 128 columns, as for torch.OutOfMemoryError (it used to fail the run)."""
    real = jacobian.train_tangents

    def small_workspace(problem, theta0, tangents0, *a, **k):
        if tangents0.shape[0] > 128:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")
        return real(problem, theta0, tangents0, *a, **k)

    monkeypatch.setattr(jacobian, "train_tangents", small_workspace)
    s = Session.create(tmp_path, "cudnn", small(jacobian={"chunk": 256, "svd": False}))
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    info = s.manifest()["stages"]["jacobian"]
    assert info["chunk"] == 128 and info["chunk_fallbacks"] == [{"from": 256, "to": 128}]


# ---- an analysis in float64 on a float32 run -------------------------------------------------


def test_perturbation_in_float64_on_a_float32_run(tmp_path):
    cfg = small(analysis={"perturbation": {"directions": ["bulk", 0], "eps_min": 1e-3,
                                           "eps_max": 1.0, "n_eps": 3,
                                           "precision": "float64"}})
    s = Session.create(tmp_path, "pert64", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    r = s.read_json("analyses/perturbation.json")
    assert r["precision"] == "float64" and len(r["directions"]) == 2
    top = r["directions"][1]
    assert top["index"] == 0
    # small stimuli respond linearly: s eps within 1% (float64 makes 1e-3 resolvable)
    assert abs(top["rows"][0]["response"] - top["rows"][0]["linear"]) <= \
        0.01 * abs(top["rows"][0]["linear"])


def test_the_split_is_scikit_learns_without_scikit_learn():
    sklearn = pytest.importorskip("sklearn.model_selection")
    from engine.data import load_digits_raw, split

    x, y = load_digits_raw()
    for seed in (0, 3):
        ours = split(x, y, 197, seed)
        theirs = sklearn.train_test_split(x, y, test_size=197, random_state=seed)
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


# ---- the TUI finds the worker's GPU in NVML by its UUID --------------------------------------


class FakeNVML:
    """Two GPUs whose NVML order is the reverse of CUDA's."""

    def __init__(self, process_query_fails=False):
        self.fail = process_query_fails
        self.gpus = {"GPU-bbbb": {"used": 7, "total": 80, "util": 55, "temp": 61, "procs": []},
                     "GPU-aaaa": {"used": 3, "total": 40, "util": 12, "temp": 40,
                                  "procs": [(4242, 2)]}}

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.gpus:
            raise RuntimeError("not found")
        return uuid

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        raise RuntimeError("not found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return list(self.gpus)[i]

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": self.gpus[h]["used"], "total": self.gpus[h]["total"]})

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if self.fail:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return [type("P", (), {"pid": p, "usedGpuMemory": m}) for p, m in self.gpus[h]["procs"]]

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": self.gpus[h]["util"]})

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self.gpus[h]["temp"]


def test_gpu_stats_follow_the_recorded_uuid(monkeypatch):
    from tjac_tui import state

    manifest = {"device": "cuda:0", "pid": 4242, "device_info": {"uuid": "GPU-aaaa"}}
    monkeypatch.setattr(state, "_nvml", FakeNVML())
    g = state.gpu_stats(manifest)  # cuda:0 is NVML's second GPU: found by UUID, not index
    assert g == {"used": 2, "total": 40, "scope": "worker", "found_by": "uuid", "util": 12,
                 "temp": 40}
    monkeypatch.setattr(state, "_nvml", FakeNVML(process_query_fails=True))
    g = state.gpu_stats(manifest)  # the process query fails: the device's figures remain
    assert (g["used"], g["scope"], g["util"]) == (3, "device", 12)
    g = state.gpu_stats({"device": "cuda:0"})  # an old session without a UUID: the index
    assert g["found_by"] == "index" and g["total"] == 80
    assert state.gpu_stats({"device": "cpu"}) is None
