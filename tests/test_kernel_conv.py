"""The conv-net kernel and the exact J of convolutional nets, in float64: against torch.func
(the gradient and its jvp), reverse mode through training, and central finite differences."""

from __future__ import annotations

import dataclasses
import math
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

from engine import config, jacobian, models, train
from engine.kernels.conv import ConvKernel
from engine.archs import ConvSpec
from engine.models import ConvNet

from conftest import PRESETS, bits, make

CASES = list(itertools.product(["relu", "tanh", "gelu", "gelu_tanh"], ["max", "avg"],
                               [(2, 9, 9), (1, 8, 8)]))


@pytest.mark.parametrize("act,pool,shape", CASES)
def test_grad_and_its_jvp_equal_torch_func(act, pool, shape):
    torch.manual_seed(0)
    net = ConvNet(shape, [ConvSpec(3, 3, 1), ConvSpec(4, 3, 0)], [5, 3], act, pool).double()
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach() for p in net.parameters())
    x = torch.randn(7, int(np.prod(shape)), dtype=torch.float64)
    y = torch.randint(0, 3, (7,))

    def loss(ps):
        return F.cross_entropy(functional_call(net, dict(zip(names, ps)), (x,)), y)

    tangents = tuple(torch.randn(5, *p.shape, dtype=torch.float64) for p in params)
    g_ref = grad(loss)(params)
    dg_ref = vmap(lambda t: jvp(grad(loss), (params,), (t,))[1])(tangents)
    g, dg = ConvKernel.of(net).grad_jvp(params, tangents, x, y)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)
    for a, b in zip(dg, dg_ref):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-13 * float(b.abs().max()))


def tiny_cnn(pooling: str, activation: str = "tanh", **train_kw) -> config.RunConfig:
    """A cnn (2 and 3 channels, 4 hidden units: P = 719) on 24 digits28 images, float64."""
    return config.from_dict({
        "dtype": "float64", "device": "cpu",
        "data": {"dataset": "digits28", "n_train": 24, "n_test": 8},
        "model": {"arch": "cnn", "channels": [2, 3], "kernel_size": 3, "hidden": [4],
                  "activation": activation, "pooling": pooling},
        "train": {"lr": 0.2, "momentum": 0.9, "batch_size": 8, "epochs": 1, **train_kw}})


def problem_of(cfg, kernel="auto"):
    return make(cfg, kernel)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_cnn_jacobian_equals_reverse_mode_through_training(pooling):
    cfg = tiny_cnn(pooling)
    problem, theta0 = problem_of(cfg)
    assert isinstance(problem.kernel, ConvKernel)
    P = theta0.numel()
    assert P == 2 * 9 + 2 + 3 * 2 * 9 + 3 + (3 * 7 * 7) * 4 + 4 + 4 * 10 + 10
    J = jacobian.exact_jacobian(problem, theta0, chunk=64)
    reference, _ = problem_of(cfg, "generic")
    J_rev = torch.func.jacrev(lambda th: train.train(reference, th))(theta0)
    assert torch.allclose(J, J_rev, rtol=0, atol=1e-11 * float(J_rev.abs().max()))
    assert float((J - torch.eye(P, dtype=J.dtype)).norm()) > 1e-3  # training did move


def test_cnn_columns_equal_central_differences():
    cfg = tiny_cnn("max", "gelu_tanh", optimizer="adam", lr=0.01, momentum=0.0)
    problem, theta0 = problem_of(cfg)
    cols = [0, 7, 19, 40, 200, 333]
    J = jacobian.jacobian_columns(problem, theta0, cols)[1]
    J_fd = jacobian.finite_difference_columns(problem, theta0, cols, h=1e-6)
    assert float((J - J_fd).norm() / J_fd.norm()) < 1e-6


@pytest.fixture(scope="module")
def lenet_2steps():
    """LeNet-5 on digits28, two SGD-momentum steps of batch 100, float64 (P = 61,706)."""
    cfg = config.load(PRESETS / "lenet5-digits28.toml",
                      ["dtype=float64", "device=cpu", "train.epochs=1", "data.n_train=200",
                       "train.batch_size=100", "data.n_test=50"])
    problem, theta0 = problem_of(cfg)
    assert theta0.numel() == 61706 and problem.steps == 2
    return problem, theta0


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_lenet5_columns_equal_central_differences(pooling):
    """Finite differences need a smooth training: ReLU's kinks (and ties of a max) crossed by
    the step h would make them disagree with the exact (almost everywhere) derivative, so the
    smooth GELU here; the ReLU network is checked against torch.func below."""
    cfg = config.load(PRESETS / "lenet5-digits28.toml",
                      ["dtype=float64", "device=cpu", "train.epochs=1", "data.n_train=400",
                       "data.n_test=50", 'model.activation="gelu_tanh"',
                       f'model.pooling="{pooling}"'])
    problem, theta0 = problem_of(cfg)
    cols = [0, 151, 160, 2000, 30000, 61700]  # conv1, conv2, fc1, fc3 weights and biases
    J = jacobian.jacobian_columns(problem, theta0, cols)[1]
    J_fd = jacobian.finite_difference_columns(problem, theta0, cols, h=1e-6)
    assert float((J - J_fd).norm() / J_fd.norm()) < 1e-7


@pytest.mark.slow
def test_lenet5_columns_of_every_layer_equal_the_generic_path(lenet_2steps):
    problem, theta0 = lenet_2steps
    ref = dataclasses.replace(problem, kernel=train.GenericKernel(problem.module))
    # the first, a middle and the last entry of every parameter tensor (the weights and biases
    # of the five layers), and a spread over the whole vector: 62 columns
    lay, cols = problem.layout, set(range(0, 61706, 2053))
    for off, n in zip(lay.offsets, [math.prod(s) for s in lay.shapes]):
        cols |= {off, off + n // 2, off + n - 1}
    cols = sorted(cols)
    assert len(cols) >= 55
    for a in range(0, len(cols), 32):
        chunk = cols[a: a + 32]
        th, fused = jacobian.jacobian_columns(problem, theta0, chunk)
        th_g, gen = jacobian.jacobian_columns(ref, theta0, chunk)
        assert torch.allclose(th, th_g, rtol=0, atol=1e-12)
        assert torch.allclose(fused, gen, rtol=0, atol=1e-11 * float(gen.abs().max()))


@pytest.mark.parametrize("arch, shape, extra", [
    ("mlp", None, {"hidden": [64, 64]}),
    ("lenet5", (1, 28, 28), {}),
    ("lenet5", (1, 32, 32), {}),
    ("cnn", (1, 8, 8), {"channels": [4, 8], "kernel_size": 3, "hidden": [16]}),
    ("cnn", (3, 12, 12), {"channels": [5], "kernel_size": 3, "hidden": []}),
])
def test_the_torch_free_parameter_count_is_the_built_models(arch, shape, extra):
    """The Setup pane's plan counts P by arithmetic (engine.archs, no torch): it must be the
    size of the model the worker builds."""
    from engine.archs import parameter_count

    mc = dataclasses.replace(config.ModelConfig(), arch=arch, **extra)
    n_features = 64 if shape is None else int(np.prod(shape))
    built = models.Layout.of(models.build(mc, n_features, 10, 0, shape)).size
    assert parameter_count(mc, n_features, 10, shape) == built


def scatter_pool_back(e, idx, size):
    """The transpose of the pooling as a scatter into zeros (max) or a repeat (avg): the
    reference the kernel's select must equal bitwise. e (K*B, C, h, w), idx (B, C, h, w)."""
    n, c = e.shape[:2]
    if idx is None:
        up = e.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 0.25
        return F.pad(up, (0, size[1] - up.shape[3], 0, size[0] - up.shape[2]))
    K, hw = n // idx.shape[0], idx.shape[2] * idx.shape[3]
    out = e.new_zeros(K, idx.shape[0] * c, size[0] * size[1])
    out.scatter_(2, idx.reshape(1, -1, hw).expand(K, -1, -1), e.reshape(K, -1, hw))
    return out.reshape(n, c, *size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(6, 8), (7, 5), (9, 9), (2, 3)])
def test_pooling_transpose_is_bitwise_the_scatter(size, dtype):
    """Max pooling's transpose (a gather of each entry: the window's value at its max, +0
    elsewhere, and in the rows and columns no window covers) and average pooling's place
    bitwise the values the scatter / repeat did: on maps of odd sizes, with ties inside
    windows (the maps take 3 values), signed zeros, infinities and NaN in the pooled values,
    for the B images alone and for K*B tangent images, into a fresh tensor or a reused one."""
    g = torch.Generator().manual_seed(sum(size))
    B, C, K = 3, 4, 5
    h = torch.randint(0, 3, (B, C, *size), generator=g).to(dtype)
    kern = ConvKernel((C, *size), [0], 1, "relu", "max")
    _, idx = kern._pool(h)
    src = kern._unpool_index(idx, size)
    for n in (B, K * B):
        e = torch.randn(n, C, *idx.shape[2:], generator=g, dtype=dtype)
        e[0, 0, 0, 0], e[-1, 1, 0, 0], e[1, 2, 0, 0] = -0.0, 0.0, float("nan")
        e[-1, -1, -1, -1] = -float("inf")
        for s, i, into in ((src, idx, None), (src, idx, "dG"), (None, None, None)):
            for _ in range(2):  # into a workspace buffer: the second time over the first's
                got = kern._pool_back(e, s, size, into)
                ref = scatter_pool_back(e, i, size)
                assert got.shape == ref.shape == (n, C, *size)
                assert torch.equal(bits(got), bits(ref))
                e = e.flip(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_ce_gradient_is_bitwise_the_index_put(dtype):
    """G = (softmax - onehot(y)) / B by comparison: bitwise what ``G[arange(B), y] -= 1;
    G /= B`` gave, and so are the fc layers' gradients."""
    torch.manual_seed(1)
    net = ConvNet((1, 8, 8), [ConvSpec(3, 3, 1)], [5, 7], "tanh", "max").to(dtype)
    params = tuple(p.detach() for p in net.parameters())
    x = torch.randn(20, 64, dtype=dtype)
    y = torch.tensor([0, 6, 6, 3] * 5)
    st = ConvKernel.of(net)._primal(params, x, y)["st"]
    ref = st["p"].clone()
    ref[torch.arange(20), y] -= 1
    ref /= 20
    assert torch.equal(bits(st["G_fc"][-1]), bits(ref))
