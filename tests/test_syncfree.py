"""The tangent loops run nothing that waits for the host on CUDA: no scatter or index_put
(a sorted index_put with a host sync under deterministic algorithms), no value read back, no
copy between host and device, in any step of a chunk (engine.opcheck). Checked on the CPU with
a dispatch mode that logs every aten op of the steps, and on the meta device, where a value or
a copy to the host raises."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine import config, train
from engine.opcheck import SYNCING, OpLog

from conftest import bits, make

CNN = {"arch": "cnn", "channels": [2, 3], "kernel_size": 3, "hidden": [4],
       "activation": "tanh"}  # 28 -> 26 -> 13 -> 11 -> 5: odd maps under both poolings
OPTIMIZERS = {"momentum": {"momentum": 0.9}, "adam": {"optimizer": "adam", "lr": 0.01}}
CASES = [  # (model, optimizer, replay a recorded trajectory)
    ({**CNN, "pooling": "max"}, "momentum", False),
    ({**CNN, "pooling": "max"}, "adam", False),
    ({**CNN, "pooling": "avg", "activation": "relu"}, "adam", False),
    ({"hidden": [6], "activation": "gelu_tanh"}, "momentum", False),
    ({"hidden": [6], "activation": "gelu_tanh"}, "momentum", True),
    ({"hidden": [6, 5], "activation": "relu"}, "adam", True),
]


DATA = {"dataset": "digits28", "n_train": 24, "n_test": 8}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small run fastest on one thread (two threads on a busy 2-core machine
    took 15x as long)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def problem_on(device: str, model: dict, optimizer: str):
    """Three steps of batch 8 on digits28, float32, every tensor on ``device``."""
    cfg = config.from_dict({
        "dtype": "float32", "device": "cpu",
        "data": DATA, "model": model,
        "train": {"lr": 0.1, "batch_size": 8, "epochs": 1, **OPTIMIZERS[optimizer]}})
    return make(cfg, device=device)


def logged_chunk(problem, theta0, K: int, replay: bool) -> tuple[OpLog, torch.Tensor]:
    """One chunk of K columns as engine.jacobian runs it, every op logged: the trajectory's
    recording, the chunk's setup, each step t (from its stop check on) and what follows it."""
    log = OpLog()
    steps = iter(range(problem.steps))

    def should_stop():
        log.at(f"step {next(steps)}")
        return False

    with log:
        log.at("identity_columns")
        e = train.identity_columns(theta0.numel(), range(3, 3 + K), theta0.device,
                                   theta0.dtype)
        log.at("record_trajectory")
        traj = train.record_trajectory(problem, theta0) if replay else None
        log.at("train_tangents setup")
        _, rows = train.train_tangents(problem, theta0, e, should_stop,
                                       on_step=lambda t, *_: log.at(f"after step {t}"),
                                       trajectory=traj)
    assert (traj is not None) == replay
    return log, rows


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("model, optimizer, replay", CASES)
def test_the_tangent_steps_never_wait_for_the_host(device, model, optimizer, replay):
    problem, theta0 = problem_on(device, model, optimizer)
    assert problem.steps == 3
    log, rows = logged_chunk(problem, theta0, 7, replay)
    assert rows.shape == (7, theta0.numel()) and rows.device.type == device
    assert log.syncing() == [], f"ops that wait for the host: {', '.join(log.syncing())}"
    # the log saw the steps' work: the K tangents' products, in every step
    for t in range(3):
        assert log.launches(f"step {t}") >= 15
        assert log.counts(f"step {t}")["bmm"] + log.counts(f"step {t}")["convolution"] > 0
    if replay:
        assert log.launches("record_trajectory") >= 20


def test_the_log_names_a_scatter_a_value_and_a_copy():
    """The check can fail: what the old kernels ran is named, with where it ran."""
    log = OpLog()
    with log:
        x = torch.zeros(3, 4)
        log.at("step 0")
        x[torch.arange(3), torch.tensor([0, 2, 1])] = 1
        x.scatter_add_(1, torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1))
        log.at("step 1")
        float(x.sum())
        x.to("meta")
    assert log.syncing() == ["index_put (step 0)", "scatter_add (step 0)",
                             "_local_scalar_dense (step 1)", "device copy (step 1)"]
    assert {"index_put", "scatter_add", "_local_scalar_dense"} <= SYNCING


@pytest.mark.parametrize("cols", [range(0, 6), range(4, 10), range(1, 10, 4), [7, 0, 3]])
def test_identity_columns_are_the_basis_without_a_scatter(cols):
    log = OpLog()
    with log:
        e = train.identity_columns(10, cols, "cpu", torch.float64)
    ref = torch.zeros(len(cols), 10, dtype=torch.float64)
    for k, j in enumerate(cols):
        ref[k, j] = 1
    assert torch.equal(bits(e), bits(ref))
    assert log.syncing() == []


def test_each_batch_is_its_own_on_the_meta_device():
    """On the meta device every tensor's data address is 0: the batch cache tells batches by
    their index tensors, so step 1 trains on its own batch, and an epoch's repeat of a batch
    is the one gathered before."""
    problem, _ = problem_on("meta", {"hidden": [6]}, "momentum")
    two = dataclasses.replace(problem, batches=problem.batches * 2, _gathered={})
    first = [two.batch(t)[0] for t in range(6)]
    assert len({id(x) for x in first[:3]}) == 3
    assert all(first[t] is first[t + 3] for t in range(3))
