"""The float64 SVD on a GPU by the Gram route (engine.spectrum.svd_gram_device), run here with
torch on the CPU: its numbers against LAPACK's gesdd and the CPU's Gram route (engine.svdjob),
the memory the plan states for each route, the route a run on CUDA takes, and the time probe of
that route. (benchmarks/gpu_check.sh runs the same function on a GPU.)"""

from __future__ import annotations

import inspect
import shutil
import tracemalloc
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from engine import config, plan, regions, runner, spectrum, svdjob
from engine.schema import PlanError
from engine.session import Session

from conftest import PRESETS, stored_j

CPU = torch.device("cpu")
EPS = np.finfo(np.float64).eps


def training_like(P: int, seed: int = 0) -> np.ndarray:
    """A J with the structure of a training Jacobian, float32 and column-major as a session
    stores it: 8 chaotic singular values from 20 down to 1.05, a bulk of 60% within 9e-4 of 1
    whose left and right vectors nearly agree (V = U R, R a rotation 1e-3 from the identity),
    and a stable tail down to 1e-6 (below 1e-3 s_1: the right vectors the route
    orthonormalizes)."""
    rng = np.random.default_rng(seed)
    k, m = 8, int(0.6 * P)
    s = np.concatenate([np.geomspace(20, 1.05, k), 1 + rng.uniform(-9e-4, 9e-4, m),
                        np.geomspace(0.95, 1e-6, P - k - m)])
    Q = np.linalg.qr(rng.standard_normal((P, P)))[0]
    R = np.linalg.qr(np.eye(P) + 1e-3 * rng.standard_normal((P, P)))[0]
    return np.asfortranarray((Q * s) @ (Q @ R).T).astype(np.float32)


def stored(tmp_path, J: np.ndarray):
    """J saved as jacobian.npy is (column-major), and its memory map."""
    path = stored_j(tmp_path, J)
    return path, np.load(path, mmap_mode="r")


def check_against_gesdd(J, U, S, Vh) -> dict[str, float]:
    """The Gram route's float64 (U, S, Vh) of J against numpy's gesdd: asserts the region
    counts, and returns the errors the callers bound."""
    U0, S0, Vh0 = np.linalg.svd(np.asarray(J, dtype=np.float64))
    P, tol = len(S0), regions.DEFAULT_TOL
    assert np.all(np.diff(S) <= 0) and S.dtype == np.float64
    assert regions.counts(S, tol) == regions.counts(S0, tol)
    chaotic = regions.slices(S0, tol)["chaotic"]
    near = np.abs(S0 - 1) <= 0.5
    return {
        "s near 1": np.abs(S - S0)[near].max(),
        # the route's own bound: eps s_1^2 / s per value, in units of it
        "s / bound": (np.abs(S - S0) * S0 / (EPS * S0[0] ** 2))[S0 > 1e-3 * S0[0]].max(),
        "chaotic u.v": np.abs(spectrum.alignment(U, Vh) - spectrum.alignment(U0, Vh0))[
            chaotic].max(),
        "U orthogonality": np.abs(U.T @ U - np.eye(P)).max(),
        "V orthogonality": np.abs(Vh @ Vh.T - np.eye(P)).max()}


def test_the_gram_route_on_a_device_agrees_with_gesdd_and_the_cpu_route(tmp_path):
    """A training-like J (P = 400, blocks of 64 columns: the last one short). Measured (float64,
    this machine): s within 1 +- 0.5 to 3.0e-15 of gesdd, s > 1e-3 s_1 to 2.4 eps s_1^2 / s,
    chaotic u.v to 2.4e-15, U orthogonal to 5.1e-15, V to 5.9e-12 (its 109 small-s vectors
    orthonormalized), and the CPU's Gram route within 2.4 eps s_1^2 / s (2.7e-15 near 1)."""
    path, J = stored(tmp_path, training_like(400))
    U, S, Vh = (t.numpy() for t in spectrum.svd_gram_device(J, CPU, block=64))
    err = check_against_gesdd(J, U, S, Vh)
    assert err["s near 1"] < 1e-13 and err["s / bound"] < 16
    assert err["chaotic u.v"] < 1e-12
    assert err["U orthogonality"] < 1e-13 and err["V orthogonality"] < 1e-10
    Ug, Sg, Vhg = svdjob.gram_svd(path, block=64)
    assert np.all(np.abs(S - Sg) <= 8 * EPS * S[0] ** 2 / np.maximum(Sg, 1e-300))
    a, b = spectrum.summarize(S, U, Vh), spectrum.summarize(Sg, Ug, Vhg)
    for r in spectrum.REGIONS:
        ra, rb = a["regions"][r], b["regions"][r]
        assert ra["count"] == rb["count"]
        for key in ("subspace_cos_mean", "subspace_cos_min"):
            assert abs(ra[key] - rb[key]) < 1e-12, (r, key)
    assert abs(a["regions"]["bulk"]["align_mean"] - b["regions"]["bulk"]["align_mean"]) < 1e-12
    _, S_only, none = spectrum.svd_gram_device(J, CPU, vectors=False, block=64)
    assert none is None and np.all(np.abs(S_only.numpy() - Sg) <= 8 * EPS * S[0] ** 2 / Sg)


def test_a_broken_jacobian_and_a_stop():
    J = np.asfortranarray(np.eye(130, dtype=np.float32))
    J[3, 70] = np.nan
    with pytest.raises(ValueError, match="the Jacobian has non-finite entries: no SVD"):
        spectrum.svd_gram_device(J, CPU, block=64)
    asked = []

    def stop():
        asked.append(1)
        return len(asked) > 1  # between the first block and the second

    with pytest.raises(KeyboardInterrupt):
        spectrum.svd_gram_device(np.asfortranarray(np.eye(130)), CPU, should_stop=stop,
                                 block=64)
    assert len(asked) == 2


def test_a_cusolver_failure_is_one_line_that_says_why(monkeypatch):
    """cuSOLVER before CUDA 13.0 refuses syevd on large n (its 64-bit API's limit): the message
    says so and what to do (faked: no GPU here)."""
    from engine.device import DeviceError

    def refuse(*args, **kwargs):
        raise RuntimeError("cusolver error: CUSOLVER_STATUS_INVALID_VALUE, when calling "
                           "`cusolverDnXsyevd_bufferSize(handle, params, jobz)`\nmore")

    monkeypatch.setattr(torch.linalg, "eigh", refuse)
    with pytest.raises(DeviceError) as e:
        spectrum.svd_gram_device(np.asfortranarray(np.eye(8)), CPU)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(
        "cuSOLVER's eigensolver failed on the 8 x 8 Gram matrix (cusolver error: "
        "CUSOLVER_STATUS_INVALID_VALUE, when calling `cusolverDnXsyevd_bufferSize(handle, "
        "params, jobz)`); before CUDA 13.0 its syevd is reported to refuse n above about 26,000")
    assert msg.endswith('or with spectrum.svd_method = "gesdd"')


# ---- the memory the plan states ---------------------------------------------------------------


class LiveBytes(TorchDispatchMode):
    """The bytes of the tensors created under it that are still alive (each storage once, freed
    by a weakref finalizer on it), and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: dict[int, int] = {}

    def gone(self, key: int, n: int) -> None:
        self.seen.pop(key, None)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key, n = st.data_ptr(), st.nbytes()
                if n and key not in self.seen:
                    self.seen[key] = n
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self.gone, key, n)
        return out


class Ops(TorchDispatchMode):
    """The names of the aten ops run under it."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def orthonormal_pair(P: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) (P, k) with orthonormal columns whose principal-angle cosines spread over [0, 1]
    (0 included: B has a column orthogonal to span(A))."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((P, 2 * k)))[0]
    c = np.concatenate([[0.0, 1.0], np.sort(rng.uniform(0, 1, k - 2))])
    B = Q[:, :k] * c + Q[:, k:] * np.sqrt(1 - c ** 2)
    R = np.linalg.qr(rng.standard_normal((k, k)))[0]  # any basis of the same spans
    return Q[:, :k] @ R, B @ R.T


def test_the_regions_cosines_on_a_device_take_no_svd_and_match_svdvals():
    """On tensors (a GPU's U, Vh) the cosines come from eigvalsh of the k x k M^T M: no SVD op
    runs (svdvals on CUDA allocates U and V of M too), what is allocated stays within three
    k x k float64 matrices, and the cosines are svdvals' to 1e-12 (those above 1e-4; the
    ones near 0 to ~sqrt(eps), as documented)."""
    P, k = 400, 120
    A, B = orthonormal_pair(P, k)
    At, Bt = torch.from_numpy(A), torch.from_numpy(B)
    ref = torch.linalg.svdvals(At.T @ Bt).clamp(0.0, 1.0).numpy()
    with Ops() as ops:
        got = spectrum.device_cosines(At, Bt).numpy()
    assert not [n for n in ops.names if "svd" in n], ops.names
    mem = LiveBytes()
    for t in (At, Bt):  # (their views are not allocations)
        mem.seen[t.untyped_storage().data_ptr()] = 0
    with mem:
        spectrum.device_cosines(At, Bt)
    assert mem.peak <= 3 * k * k * 8 + 64 * k
    assert got.shape == (k,) and np.all(np.diff(got) <= 0) and got.min() >= 0
    big = ref > 1e-4
    assert np.abs(got - ref)[big].max() < 1e-12
    assert np.abs(got - ref).max() < 1e-7
    # and through region_cosines, on a real SVD's vectors, against the numpy route
    J = np.eye(300) + 2e-3 * np.random.default_rng(1).standard_normal((300, 300))
    J[:, :5] *= 8
    U, S, Vh = np.linalg.svd(J)
    with Ops() as ops:
        on_dev = spectrum.region_cosines(torch.from_numpy(U), torch.from_numpy(Vh), S, 1e-3)
    assert not [n for n in ops.names if "svd" in n], ops.names
    on_cpu = spectrum.region_cosines(U, Vh, S, 1e-3)
    for name in spectrum.REGIONS:
        assert len(on_dev[name]) == len(on_cpu[name]) > 0
        assert np.abs(on_dev[name] - on_cpu[name]).max() < 1e-12, name


@pytest.mark.parametrize("vectors", [True, False])
def test_the_plan_states_what_the_torch_routes_hold(vectors):
    """The peak of the tensors svd_gram_device and svd_device create (P = 300, blocks of 48)
    against the plan's "held" figure of the GPU routes: at least its P^2 arrays, at most those
    and its block arrays (and the O(P) vectors). What LAPACK or cuSOLVER allocate inside a call
    (torch's own copy of G in eigvalsh, the solver's workspace) is invisible here: the plan
    takes those from the libraries' sources and documentation, and benchmarks/gpu_check.sh
    measures them on a GPU. (Under a dispatch mode torch's composite eigvalsh and svdvals
    would compute the vectors, as for autograd; inference mode keeps them whole.)"""
    P, block = 300, 48
    J = training_like(P, seed=1)
    for route, fn in (("gram-cuda", spectrum.svd_gram_device), ("direct-cuda",
                                                                  spectrum.svd_device)):
        with torch.inference_mode(), LiveBytes() as m:
            out = fn(J, CPU, vectors, block=block)
            del out
        assert m.live == 0
        held = plan.svd_bytes(route, P, vectors, parts=("held",), block=block)
        p2 = max(ph[1] for ph in plan.SVD_PHASES[(route, vectors)]) * 8 * P * P
        assert p2 <= m.peak <= held + 4 * 8 * P, (route, m.peak / (8 * P * P))


@pytest.mark.parametrize("vectors", [True, False])
def test_the_plan_states_what_the_numpy_routes_hold(tmp_path, vectors):
    """The same for the CPU's routes (engine.svdjob's Gram route, gesdd), measured with
    tracemalloc, which sees numpy's arrays but not the buffers numpy's gesdd or LAPACK
    allocate inside."""
    P, block = 300, 48
    path, J = stored(tmp_path, training_like(P, seed=2))
    for route, call in (("gram-cpu", lambda: svdjob.gram_svd(path, vectors, block)),
                        ("direct-cpu", lambda: spectrum.svd(J) if vectors else
                         spectrum.svdvals(J))):
        tracemalloc.start()
        out = call()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del out
        held = plan.svd_bytes(route, P, vectors, parts=("held",), block=block)
        p2 = max(ph[1] for ph in plan.SVD_PHASES[(route, vectors)]) * 8 * P * P
        assert p2 <= peak <= held + 64 * 8 * P, (route, peak / (8 * P * P))


def test_the_routes_and_the_plans_figures_per_route_and_device(tmp_path, monkeypatch):
    """The LeNet-5 of the paper's appendix (P = 61,706, float64 with vectors): on a GPU the
    Gram route takes J J^T's eigenvectors in place (1 P^2) and syevd's workspace (3 P^2, the
    bound the plan takes), 4 P^2 = 121.8 GB in all, where the direct route needs 5 P^2 when
    gesvdj falls back to gesvd; without vectors torch's svdvals still allocates U and V."""
    assert [plan.svd_route(d, m, t) for d, m, t in [
        ("cuda", "gram", "float64"), ("cuda", "gesdd", "float64"), ("cuda", "gram", "float32"),
        ("cpu", "gram", "float64"), ("cpu", "gesdd", "float64"), ("cpu", "gram", "float32"),
        ("mps", "gram", "float64")]] == ["gram-cuda", "direct-cuda", "direct-cuda", "gram-cpu",
                                         "direct-cpu", "direct-cpu", "gram-cpu"]
    # the block sizes the plan counts are the code's
    assert plan.CPU_BLOCK == svdjob.BLOCK
    for fn in (spectrum.svd_gram_device, spectrum.svd_device):
        assert inspect.signature(fn).parameters["block"].default == plan.DEVICE_BLOCK
    pl = plan.make_plan(config.load(PRESETS / "lenet5-digits28.toml"))
    P, u = pl.P, 8 * pl.P ** 2
    assert P == 61_706
    assert (pl.svd_route("cuda:1"), pl.svd_route("cpu")) == ("gram-cuda", "gram-cpu")
    assert pl.svd_memory("cuda") == 4 * u and plan.fmt_bytes(4 * u) == "121.8 GB"
    assert plan.svd_bytes("gram-cuda", P, parts=("held",)) == 2 * u + 3 * P * 2048 * 8
    assert pl.svd_memory("cuda", vectors=False) == 2 * u  # G and eigvalsh's copy
    assert pl.svd_memory("cpu") == 2 * u + 3 * P * 512 * 8
    direct = replace(pl, svd_method="gesdd")
    assert direct.svd_route("cuda") == "direct-cuda"
    assert direct.svd_memory("cuda") == 5 * u
    assert direct.svd_memory("cuda", vectors=False) == 4 * u
    assert direct.svd_memory("cpu") == 9 * u and direct.svd_memory("cpu", vectors=False) == 2 * u
    assert replace(pl, svd_itemsize=4).svd_memory("cuda") == 5 * u // 2  # float32: direct
    assert pl.lines("cuda")[2] == (
        "SVD: 30.5 GB on disk (S, U, Vh); float64, memory while it runs: 121.8 GB (Gram "
        "route, GPU; at eigh (syevd, in place): 30.5 GB arrays, 91.4 GB solver workspace) on "
        "a GPU")
    # the refusal names the route that will run and its figure
    monkeypatch.setattr(plan, "free_disk", lambda path: 10 ** 15)
    monkeypatch.setattr(plan, "device_memory", lambda device: 100 * 10 ** 9)
    with pytest.raises(PlanError) as e:
        plan.check(pl, tmp_path, device="cuda")
    assert str(e.value) == (
        "the float64 SVD of this run's 61,706 x 61,706 Jacobian (Gram route, GPU) needs 121.8 "
        'GB of memory and 100.0 GB is free on cuda: set spectrum.svd_dtype = "float32" (it '
        "needs 76.2 GB) or spectrum.vectors = false (the singular values alone need 60.9 GB), "
        "or run where it fits")
    monkeypatch.setattr(plan, "device_memory", lambda device: 141 * 10 ** 9)
    plan.check(pl, tmp_path, device="cuda")  # an H200 takes it
    with pytest.raises(PlanError, match=r"\(cuSOLVER gesvdj\) needs 152.3 GB"):
        plan.check(direct, tmp_path, device="cuda")


# ---- a run on CUDA takes the Gram route --------------------------------------------------------


class FakeCuda:
    """What the runner sees as its device once set up: CUDA (the SVD's tensors stay on the
    CPU: svd_gram_device is handed the CPU)."""
    type, index = "cuda", 0

    def __str__(self):
        return "cuda:0"


@pytest.mark.slow
def test_a_run_on_cuda_takes_the_gram_route_and_matches_the_cpu_one(quick_session, tmp_path,
                                                                     monkeypatch):
    """The quick preset's session (P = 1210, float32 J), its SVD and spectrum stages run again
    by a runner that believes its device is CUDA: the Gram route on the device is taken (and
    the direct one not), and its files and summary are the CPU Gram route's (the session's
    own, engine.svdjob) to float64 rounding; its float64 vectors against gesdd. Measured: s
    within 1 +- 0.5 to 4.0e-15 of gesdd and 1.6e-15 of the CPU route, s > 1e-3 s_1 to 4.3
    eps s_1^2 / s of gesdd, chaotic u.v to 2.5e-14, U orthogonal to 8.4e-15, V to 5.8e-12."""
    calls, kept = [], []
    real = spectrum.svd_gram_device

    def on_the_cpu(J, device, vectors=True, should_stop=None, block=2048):
        calls.append((str(device), J.shape, vectors))
        U, S, Vh = real(J, CPU, vectors, should_stop, block)
        kept.append((U.numpy().copy(), S.numpy().copy(), Vh.numpy().copy()))
        return U, S, Vh

    def refuse(*args, **kwargs):
        raise AssertionError("the direct SVD ran")

    monkeypatch.setattr(spectrum, "svd_gram_device", on_the_cpu)
    monkeypatch.setattr(spectrum, "svd_device", refuse)

    class CudaRunner(runner.Runner):
        def setup(self):
            super().setup()
            self.device = FakeCuda()

    path = tmp_path / "quick"
    shutil.copytree(quick_session, path)
    s = Session(path)
    for stage in ("svd", "spectrum"):
        s.set_stage(stage, status="pending")
    r = CudaRunner(s)
    assert r.run() == runner.EXIT_OK, s.manifest().get("error")
    assert calls == [("cuda:0", (1210, 1210), True)]
    ref = Session(quick_session)
    S, S_cpu = s.load_npy("svd/S.npy"), ref.load_npy("svd/S.npy")
    near = np.abs(S_cpu - 1) <= 0.5
    assert np.abs(S - S_cpu)[near].max() < 1e-13
    assert np.all(np.abs(S - S_cpu) <= 8 * EPS * S[0] ** 2 / S_cpu)
    tol = regions.DEFAULT_TOL
    chaotic = regions.slices(S_cpu, tol)["chaotic"]
    a, a_cpu = s.load_npy("svd/alignment.npy"), ref.load_npy("svd/alignment.npy")
    assert a.dtype == np.float64 and np.abs(a - a_cpu)[chaotic].max() < 1e-12
    for name in ("U.npy", "Vh.npy"):  # the run's dtype; signs are each solver's own
        M, M_cpu = s.load_npy(f"svd/{name}"), ref.load_npy(f"svd/{name}")
        assert M.dtype == np.float32 and M.shape == (1210, 1210)
        ax = 0 if name == "U.npy" else 1
        sign = np.sign(np.sum(M.astype(np.float64) * M_cpu, axis=ax, keepdims=True))
        d = np.abs(M * sign - M_cpu).max(axis=ax)
        assert d[chaotic].max() < 1e-6, name  # float32 rounding of the same vectors
    sm, sm_cpu = s.spectrum(), ref.spectrum()
    assert sm["svd_method"] == sm_cpu["svd_method"] == "gram"
    assert sm["s_resolution"] == pytest.approx(sm_cpu["s_resolution"], rel=1e-14)
    for r_ in spectrum.REGIONS:
        x, y = sm["regions"][r_], sm_cpu["regions"][r_]
        assert (x["count"], x["start"], x["stop"]) == (y["count"], y["start"], y["stop"])
        for key in ("s_max", "s_min", "align_mean", "subspace_cos_mean", "subspace_cos_min"):
            assert abs(x[key] - y[key]) < 1e-12, (r_, key)
    # within EXACT of 1 the same values; how many of them round to 1.0 itself is each
    # eigensolver's last bit (10 here, 23 by engine.svdjob's dsyevr, 27 by gesdd)
    assert sm["unity"]["within_exact"] == sm_cpu["unity"]["within_exact"] == 80
    assert sm["log10_det"] == pytest.approx(sm_cpu["log10_det"], abs=1e-9)
    # the route's float64 vectors (copies: the runner let its own go) against LAPACK's gesdd
    U, S64, Vh = kept[0]
    err = check_against_gesdd(s.load_npy("jacobian.npy"), U, S64, Vh)
    assert err["s near 1"] < 1e-13 and err["s / bound"] < 16 and err["chaotic u.v"] < 1e-12
    assert err["U orthogonality"] < 1e-13 and err["V orthogonality"] < 1e-10


def test_the_vectors_of_a_run_on_cuda_are_let_go_once_summarized(tmp_path, tiny_npz,
                                                                  monkeypatch):
    """On CUDA U and Vh (2 P^2 float64 on the device) are not kept into the analyses: once
    spectrum.json is written the runner holds neither (here: CPU tensors of the device route,
    watched by weakrefs, the analysis after the spectrum seeing them gone)."""
    from conftest import tiny_config

    real, alive, seen = spectrum.svd_gram_device, [], []

    def on_the_cpu(J, device, vectors=True, should_stop=None, block=2048):
        U, S, Vh = real(J, CPU, vectors, should_stop, block)
        alive.extend([weakref.ref(U), weakref.ref(Vh)])
        return U, S, Vh

    class CudaRunner(runner.Runner):
        def setup(self):
            super().setup()
            self.device = FakeCuda()

    full = config.to_dict(tiny_config(tiny_npz))
    full["analysis"] = {"distance": {}}
    s = Session.create(tmp_path, "tiny", config.from_dict(full))
    assert runner.run_session(s.path) == runner.EXIT_OK
    for stage in ("svd", "spectrum", "analysis.distance"):
        s.set_stage(stage, status="pending")
    monkeypatch.setattr(spectrum, "svd_gram_device", on_the_cpu)
    from engine.experiments import distance
    monkeypatch.setattr(distance, "run", lambda ctx, cfg, run=distance.run: (
        seen.append([ref() is None for ref in alive]), run(ctx, cfg))[1])
    r = CudaRunner(s)
    assert r.run() == runner.EXIT_OK, s.manifest().get("error")
    assert len(alive) == 2 and seen == [[True, True]]
    assert s.spectrum()["svd_method"] == "gram" and s.verify() == {}


# ---- the time probe ------------------------------------------------------------------------------


def test_the_probe_times_the_route_that_will_run(monkeypatch):
    """On a GPU the probe times the route's own function on the device (an untimed warm-up at
    n = 64, then n), scaled by (P/n)^3; run here on CPU tensors. The CPU routes keep their
    numpy timing."""
    calls = []
    real_gram, real_direct = spectrum.svd_gram_device, spectrum.svd_device

    def gram(A, device, vectors=True, **kw):
        calls.append(("gram", A.shape[0], A.flags.f_contiguous, vectors))
        return real_gram(A, device, vectors, **kw)

    def direct(A, device, vectors=True, **kw):
        calls.append(("direct", A.shape[0], kw.get("dtype")))
        return real_direct(A, device, vectors, **kw)

    monkeypatch.setattr(spectrum, "svd_gram_device", gram)
    monkeypatch.setattr(spectrum, "svd_device", direct)
    t = runner.svd_seconds("gram-cuda", 61_706, CPU, vectors=False, n=96)
    assert calls == [("gram", 64, True, False), ("gram", 96, True, False)] and t > 0
    calls.clear()
    t = runner.svd_seconds("direct-cuda", 61_706, CPU, dtype="float32", n=96)
    assert calls == [("direct", 64, np.float32), ("direct", 96, np.float32)] and t > 0
    calls.clear()
    for route in ("gram-cpu", "direct-cpu"):
        assert runner.svd_seconds(route, 2000, CPU, n=100) > 0
    assert calls == []
    # seconds scale with P^3
    monkeypatch.setattr(runner.time, "perf_counter", iter(range(100)).__next__)
    assert runner.svd_seconds("gram-cuda", 960, CPU, n=96) == 1000
