"""The exact training Jacobian against central finite differences and reverse mode (float64)."""

from __future__ import annotations

import pytest
import torch

from engine import jacobian, train

from conftest import make, tiny_config

OPTIMIZERS = {
    "sgd": {"optimizer": "sgd"},
    "momentum": {"optimizer": "sgd", "momentum": 0.9},
    "nesterov": {"optimizer": "sgd", "momentum": 0.9, "nesterov": True},
    "adam": {"optimizer": "adam", "lr": 0.05},
    "sgd+wd": {"optimizer": "sgd", "momentum": 0.5, "weight_decay": 0.01},
}
SCHEDULES = {
    "constant": {"schedule": "constant"},
    "cosine": {"schedule": "cosine"},
    "warmup-linear": {"schedule": "linear", "warmup_steps": 3, "final_lr": 0.01},
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("kernel", ["fused", "generic"])
@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_forward_mode_matches_finite_differences(tiny_npz, opt, sched, kernel):
    cfg = tiny_config(tiny_npz, **OPTIMIZERS[opt], **SCHEDULES[sched])
    problem, theta0 = make(cfg, kernel)
    J = jacobian.exact_jacobian(problem, theta0, chunk=16)
    assert J.shape == (39, 39)
    J_fd = jacobian.finite_difference_columns(problem, theta0, h=1e-6)
    assert rel_err(J, J_fd) <= 1e-6
    # training really moved the parameters and J is far from the identity
    assert rel_err(J, torch.eye(39, dtype=J.dtype)) > 1e-2


@pytest.mark.parametrize("kernel", ["fused", "generic"])
@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_forward_mode_matches_reverse_mode(tiny_npz, opt, kernel):
    """An independent computation: torch.func.jacrev of the unrolled training (reverse-mode
    autograd through every step, gradients from torch.func.grad of the module's loss), against
    the chunked forward-mode J of either kernel."""
    cfg = tiny_config(tiny_npz, **OPTIMIZERS[opt], schedule="cosine", warmup_steps=2)
    problem, theta0 = make(cfg, kernel)
    J = jacobian.exact_jacobian(problem, theta0, chunk=7)  # chunks of uneven size
    reference, _ = make(cfg, "generic")
    J_rev = torch.func.jacrev(lambda th: train.train(reference, th))(theta0)
    assert torch.allclose(J, J_rev, rtol=0, atol=1e-10 * float(J_rev.abs().max()))


def test_chunking_and_primal_are_consistent(tiny_npz):
    """Columns do not depend on how they are grouped, and the trajectory carried with the
    tangents is the training trajectory (bitwise)."""
    cfg = tiny_config(tiny_npz, optimizer="sgd", momentum=0.9)
    problem, theta0 = make(cfg)
    theta_T = train.train(problem, theta0)
    th, block = jacobian.jacobian_columns(problem, theta0, range(5, 12))
    assert torch.equal(th, theta_T)
    J = jacobian.exact_jacobian(problem, theta0, chunk=39)
    assert torch.allclose(block, J[:, 5:12], rtol=0, atol=1e-13)


def test_adam_with_zero_gradient_coordinates_is_identity_there(tmp_path):
    """A feature that is zero in every row gives its first-layer weights an exactly zero
    gradient; with eps inside the sqrt, Adam never moves them and J is the identity there
    (the paper's 192 unit singular values on digits)."""
    import numpy as np

    from conftest import tiny_config as tc

    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 5))
    x[:, 2] = 0.0
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    path = tmp_path / "z.npz"
    np.savez(path, x=x, y=y)
    cfg = tc(path, optimizer="adam", lr=0.05, schedule="cosine")
    problem, theta0 = make(cfg)
    J = jacobian.exact_jacobian(problem, theta0)
    assert torch.isfinite(J).all()
    # layers.0.weight is (4, 5) row-major: column 2 of each row sits at 5 * r + 2
    frozen = [5 * r + 2 for r in range(4)]
    for i in frozen:
        e = torch.zeros(39, dtype=J.dtype)
        e[i] = 1
        assert torch.equal(J[i], e) and torch.equal(J[:, i], e)


def optimizer_operands(npz, opt: str, seed: int):
    """An optimizer of the given kind and random float64 primal operands (theta, g, state;
    Adam's v >= 0), with ``r(*shape)`` for more from the same generator."""
    o = train.Optimizer(tiny_config(npz, **OPTIMIZERS[opt]).train)
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    theta, g = r(30), r(30)
    return o, r, theta, g, tuple(r(30).abs() for _ in o.init(theta))


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_tangent_equals_jvp_of_the_update(tiny_npz, opt):
    """The hand-linearised optimizer step equals torch.func.jvp of the update, vmapped."""
    o, r, theta, g, state = optimizer_operands(tiny_npz, opt, seed=0)
    dtheta, dg = r(5, 30), r(5, 30)
    dstate = tuple(r(5, 30) for _ in state)
    for t in (0, 7):
        got = o.tangent(theta, state, g, dtheta, dstate, dg, 0.3, t)

        def one(dth, dst, dgr, t=t):
            return torch.func.jvp(lambda a, b, c: o.update(a, b, c, 0.3, t),
                                  (theta, state, g), (dth, dst, dgr))[1]

        want = torch.func.vmap(one)(dtheta, dstate, dg)
        assert torch.allclose(got[0], want[0], rtol=1e-13, atol=1e-15)
        for a, b in zip(got[1], want[1]):
            assert torch.allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_in_place_optimizer_tangent_equals_the_reference(tiny_npz, opt):
    """Optimizer.tangent_ (in place, what training runs) gives Optimizer.tangent's numbers
    (checked against torch.func above) to rounding, and leaves the primal operands alone."""
    o, r, theta, g, state = optimizer_operands(tiny_npz, opt, seed=1)
    for t in (0, 9):
        dtheta, dg = r(5, 30), r(5, 30)
        dstate = tuple(r(5, 30) for _ in state)
        want = o.tangent(theta, state, g, dtheta, dstate, dg, 0.3, t)
        kept = [x.clone() for x in (theta, g, *state)]
        o.tangent_(theta, state, g, dtheta, dstate, dg.clone(), 0.3, t)
        assert torch.allclose(dtheta, want[0], rtol=1e-14, atol=1e-15)
        for a, b in zip(dstate, want[1]):
            assert torch.allclose(a, b, rtol=1e-14, atol=1e-15)
        assert all(torch.equal(a, b) for a, b in zip(kept, (theta, g, *state)))


@pytest.mark.parametrize("opt", ["momentum", "adam", "sgd+wd"])
def test_trajectory_replay_is_bitwise_the_recomputed_primal(tiny_npz, opt):
    """The tangents replayed over a recorded trajectory (the primal computed once for all
    chunks) are bitwise those of a chunk that computes its own primal, and so is theta_T;
    the caller's tangents are not modified."""
    cfg = tiny_config(tiny_npz, **OPTIMIZERS[opt], schedule="cosine")
    problem, theta0 = make(cfg)
    traj = train.record_trajectory(problem, theta0)
    assert traj is not None and len(traj.states) == problem.steps and traj.nbytes > 0
    assert torch.equal(traj.theta_T, train.train(problem, theta0))
    e = train.identity_columns(theta0.numel(), range(3, 20), theta0.device, theta0.dtype)
    e0 = e.clone()
    a = train.train_tangents(problem, theta0, e)
    b = train.train_tangents(problem, theta0, e, trajectory=traj)
    assert torch.equal(e, e0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # what it keeps per step: theta once (the state's weights are views of it), the primal
    # quantities the tangents read, not the gradient; Adam's factors too
    st = traj.states[0]
    assert st.grads == () and all(w.untyped_storage().data_ptr() ==
                                  traj.thetas[0].untyped_storage().data_ptr() for w in st.weights)
    held = [*st.actsT, *st.d1T, *(h for h in st.h2T if h is not None), *st.GT, st.pT,
            st.pT_over_b, traj.thetas[0], *(traj.factors[0] if traj.factors else ())]
    assert traj.nbytes == problem.steps * sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}.values())
    # a budget too small for the first step's state: no trajectory, chunks recompute
    assert train.record_trajectory(problem, theta0, budget=1000) is None
    # the generic kernel has no primal/tangent split
    generic, _ = make(cfg, "generic")
    assert train.record_trajectory(generic, theta0) is None


def test_chunk_probe_times_the_candidates_that_fit(tiny_npz, monkeypatch):
    """The CPU chunk probe times each candidate no larger than P and the memory cap and
    returns the fastest; a run's chunk does not depend on it (the kernel's default)."""
    cfg = tiny_config(tiny_npz, optimizer="sgd", momentum=0.9)
    problem, theta0 = make(cfg)
    assert jacobian.probe_chunk(problem, theta0) == (0, {})  # P = 39 < 64: nothing to time
    monkeypatch.setattr(jacobian, "PROBE_CHUNKS", (4, 8, 16, 64))
    best, rates = jacobian.probe_chunk(problem, theta0, cap=20)
    assert set(rates) == {4, 8, 16} and best == max(rates, key=rates.get)
    # a run's chunk below the candidates (the conv kernel's 32) is timed among them
    best, rates = jacobian.probe_chunk(problem, theta0, cap=20, include=(6,))
    assert list(rates) == [4, 6, 8, 16] and best == max(rates, key=rates.get)
    assert all(r > 0 for r in rates.values())
    k = jacobian.auto_chunk(problem, theta0, theta0.device, theta0.dtype)
    assert k == min(39, problem.kernel.cpu_chunk)


@pytest.mark.parametrize("opt", ["momentum", "sgd+wd"])
def test_momentum_fused_into_the_kernel_equals_the_separate_update(tiny_npz, opt, monkeypatch):
    """SGD momentum's tangent accumulated by the kernel's GEMMs (dm = mu dm + H dtheta, the
    MLP kernel's ``beta``) gives the separate in-place update's numbers to rounding, replayed
    or not; Nesterov and Adam are never fused."""
    from engine.kernels.mlp import MLPKernel

    cfg = tiny_config(tiny_npz, **OPTIMIZERS[opt], schedule="cosine")
    problem, theta0 = make(cfg)
    assert problem.optimizer.fused_momentum == cfg.train.momentum > 0
    e = train.identity_columns(theta0.numel(), range(39), theta0.device, theta0.dtype)
    traj = train.record_trajectory(problem, theta0)
    fused = train.train_tangents(problem, theta0, e)[1]
    assert torch.equal(fused, train.train_tangents(problem, theta0, e, trajectory=traj)[1])
    monkeypatch.setattr(MLPKernel, "accumulates", False)
    apart = train.train_tangents(problem, theta0, e)[1]
    assert torch.allclose(fused, apart, rtol=0, atol=1e-13 * float(apart.abs().max()))
    for other in ("nesterov", "adam"):
        assert train.Optimizer(tiny_config(tiny_npz, **OPTIMIZERS[other]).train
                               ).fused_momentum == 0


def test_a_chunks_tangent_directions_take_nothing_from_host_memory(monkeypatch):
    """A chunk's e_j are made on its device from the range alone: a host list would be copied
    to the GPU, a synchronisation per chunk (torch.as_tensor is that host path)."""
    want = train.identity_columns(10, [3, 4, 5], "cpu", torch.float32)

    def host(*a, **k):
        raise AssertionError("a chunk's directions went through host memory")

    monkeypatch.setattr(torch, "as_tensor", host)
    got = train.identity_columns(10, range(3, 6), "cpu", torch.float32)
    assert torch.equal(got, want) and got.sum() == 3 and torch.equal(got[:, 3:6], torch.eye(3))


# ---- chunks written while the next one computes --------------------------------------------------

def tiny_problem(npz):
    """The tiny problem in 5 steps (chunks of 8: five of them)."""
    return make(tiny_config(npz, momentum=0.9, epochs=1))


@pytest.fixture(scope="module")
def written_in_turn(tiny_npz, tmp_path_factory):
    """The stores (J and J_{0->3}) as a run that writes each chunk before computing the next
    leaves them: the columns from exact_jacobian, stored chunk by chunk in order."""
    import numpy as np

    problem, theta0 = tiny_problem(tiny_npz)
    root = tmp_path_factory.mktemp("in-turn")
    P, f64 = theta0.numel(), np.dtype("float64")
    (root / "snap").mkdir()
    for where, p in ((root, problem), (root / "snap", problem.truncated(3))):
        J = jacobian.exact_jacobian(p, theta0, 8).numpy()
        st = jacobian.JacobianStore(where, P, 8, f64)
        for i, cols in enumerate(st.ranges):
            st.write(i, J[:, cols.start: cols.stop].T)
    return root


def stores(root, theta0, chunk: int, snap: int = 3):
    """(J's store in root, {snap: the store of J_{0->snap} in root/snap}), float64."""
    import numpy as np

    (root / "snap").mkdir(parents=True, exist_ok=True)
    P, f64 = theta0.numel(), np.dtype("float64")
    return (jacobian.JacobianStore(root, P, chunk, f64),
            {snap: jacobian.JacobianStore(root / "snap", P, chunk, f64)})


FILES = ("jacobian.npy", "jacobian.progress.json", "snap/jacobian.npy",
         "snap/jacobian.progress.json")


def test_chunks_written_behind_the_computation_are_the_synchronous_bytes(
        tiny_npz, tmp_path, written_in_turn):
    """J and a snapshot's J, their files and progress records, byte for byte those of a run
    that writes each chunk before it computes the next; on_chunk runs in this thread, in
    order, each call after its chunk is recorded."""
    import json
    import threading

    problem, theta0 = tiny_problem(tiny_npz)
    store, snaps = stores(tmp_path, theta0, 8)
    calls = []

    def on_chunk(index, cols, theta_T):
        done = json.loads(store.progress_path.read_text())["done"]
        calls.append((index, str(index) in done, threading.current_thread() is
                      threading.main_thread(), theta_T.device.type))

    jacobian.compute_into(store, problem, theta0, on_chunk, snapshots=snaps)
    assert calls == [(i, True, True, "cpu") for i in range(5)]
    for rel in FILES:
        assert (tmp_path / rel).read_bytes() == (written_in_turn / rel).read_bytes(), rel
    assert not [t for t in threading.enumerate() if t.name.startswith("jacobian-writer")]


def test_the_next_chunk_computes_while_the_last_is_written(tiny_npz, tmp_path, monkeypatch):
    """fdatasync of chunk 0 returns only once chunk 1's training has begun (or after 2 s):
    chunk 1 starts before chunk 0 is durable (a run that writes each chunk before computing
    the next waits the 2 s out, and its events show the opposite order)."""
    import os
    import threading

    problem, theta0 = tiny_problem(tiny_npz)
    store, _ = stores(tmp_path, theta0, 8)
    events, started = [], threading.Event()
    real_sync, real_train = os.fdatasync, jacobian.train_tangents

    def slow_sync(fd):
        n = sum(e.startswith("durable") for e in events)
        if n == 0:
            started.wait(2)
        real_sync(fd)
        events.append(f"durable {n}")

    def train(problem, theta0, tangents0, *a, **k):
        n = sum(e.startswith("compute") for e in events)
        events.append(f"compute {n}")
        if n == 1:
            started.set()
        return real_train(problem, theta0, tangents0, *a, **k)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    monkeypatch.setattr(jacobian, "train_tangents", train)
    jacobian.compute_into(store, problem, theta0)
    assert events.index("compute 1") < events.index("durable 0"), events
    assert sorted(store.done) == list(range(5))


def test_a_failed_write_is_an_oserror_and_its_chunk_is_not_recorded(tiny_npz, tmp_path,
                                                                      monkeypatch):
    import errno
    import os

    import numpy as np

    problem, theta0 = tiny_problem(tiny_npz)
    store, snaps = stores(tmp_path, theta0, 8)
    real_sync, syncs, calls = os.fdatasync, [], []

    def full(fd):
        syncs.append(fd)
        if len(syncs) == 4:  # chunk 1's J (after chunk 0's snapshot and J, chunk 1's snapshot)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", full)
    with pytest.raises(OSError) as e:
        jacobian.compute_into(store, problem, theta0, lambda i, c, t: calls.append(i),
                              snapshots=snaps)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "fdatasync", real_sync)
    again = jacobian.JacobianStore(tmp_path, theta0.numel(), 8, np.dtype("float64"))
    assert 0 in again.done and 1 not in again.done and again.damaged == []
    assert calls == [0]


def test_a_stop_during_a_write_leaves_every_recorded_chunk_intact(tiny_npz, tmp_path,
                                                                   monkeypatch, written_in_turn):
    """A stop asked while chunk 1 is being written: compute_into waits for that write, calls
    on_chunk for every chunk recorded, and every recorded digest matches the bytes (those of
    J)."""
    import os

    import numpy as np

    problem, theta0 = tiny_problem(tiny_npz)
    store, snaps = stores(tmp_path, theta0, 8)
    real_sync, syncs, calls, stop = os.fdatasync, [], [], []

    def sync(fd):
        syncs.append(fd)
        if len(syncs) == 4:  # chunk 1's J
            stop.append(True)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", sync)
    with pytest.raises(KeyboardInterrupt):
        jacobian.compute_into(store, problem, theta0, lambda i, c, t: calls.append(i),
                              lambda: bool(stop), snapshots=snaps)
    P, f64 = theta0.numel(), np.dtype("float64")
    J = np.load(written_in_turn / "jacobian.npy")
    for where in (tmp_path, tmp_path / "snap"):
        again = jacobian.JacobianStore(where, P, 8, f64)
        assert again.damaged == [] and {0, 1} <= set(again.done), where
    again = jacobian.JacobianStore(tmp_path, P, 8, f64)
    assert calls == sorted(again.done)
    got = again.load()
    for i in again.done:
        cols = again.ranges[i]
        assert np.array_equal(got[:, cols.start: cols.stop], J[:, cols.start: cols.stop])
