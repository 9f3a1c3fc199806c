"""Tests for engine.kernels.mlp.MLPKernel against torch.func references."""

import pytest
import torch
import torch.nn.functional as F

from engine.kernels.mlp import ACTIVATIONS, MLPKernel

from conftest import bits

WIDTHS = {1: [5, 4], 2: [5, 7, 4], 3: [5, 6, 7, 3]}


def _act(name, z):
    if name == "relu":
        return torch.relu(z)
    if name == "tanh":
        return torch.tanh(z)
    if name == "gelu":
        return F.gelu(z)
    return F.gelu(z, approximate="tanh")


def make_loss(activation, x, y):
    def loss_fn(params):
        a = x
        L = len(params) // 2
        for l in range(L):
            a = F.linear(a, params[2 * l], params[2 * l + 1])
            if l < L - 1:
                a = _act(activation, a)
        return F.cross_entropy(a, y)

    return loss_fn


def make_problem(widths, B=9, K=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for n, m in zip(widths[:-1], widths[1:]):
        params.append(torch.randn(m, n, generator=g, dtype=dtype) / n**0.5)
        params.append(0.3 * torch.randn(m, generator=g, dtype=dtype))
    params = tuple(params)
    tangents = tuple(torch.randn((K, *p.shape), generator=g, dtype=dtype) for p in params)
    x = torch.randn(B, widths[0], generator=g, dtype=dtype)
    y = torch.randint(0, widths[-1], (B,), generator=g)
    return params, tangents, x, y


def reference(activation, params, tangents, x, y):
    loss_fn = make_loss(activation, x, y)
    grads = torch.func.grad(loss_fn)(params)
    dgrads = torch.func.vmap(
        lambda t: torch.func.jvp(torch.func.grad(loss_fn), (params,), (t,))[1]
    )(tangents)
    return grads, dgrads


def assert_close_rel(actual, expected, rtol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        err = (a - e).abs().max().item()
        scale = e.abs().max().item()
        assert err <= rtol * max(scale, 1e-300), (err, scale)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_grad_matches_torch_func(activation, depth):
    widths = WIDTHS[depth]
    params, _, x, y = make_problem(widths, seed=depth)
    kern = MLPKernel(widths, activation)
    ref = torch.func.grad(make_loss(activation, x, y))(params)
    assert_close_rel(kern.grad(params, x, y), ref, 1e-12)


@pytest.mark.parametrize("K", [1, 5])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_grad_jvp_matches_torch_func(activation, depth, K):
    widths = WIDTHS[depth]
    params, tangents, x, y = make_problem(widths, K=K, seed=10 * depth + K)
    kern = MLPKernel(widths, activation)
    grads, dgrads = kern.grad_jvp(params, tangents, x, y)
    ref_g, ref_dg = reference(activation, params, tangents, x, y)
    assert_close_rel(grads, ref_g, 1e-12)
    assert_close_rel(dgrads, ref_dg, 1e-10)
    for dg, p in zip(dgrads, params):
        assert dg.shape == (K, *p.shape)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_primal_bitwise(activation):
    widths = WIDTHS[3]
    params, tangents, x, y = make_problem(widths, K=5, seed=3)
    kern = MLPKernel(widths, activation)
    g1 = kern.grad(params, x, y)
    g2, _ = kern.grad_jvp(params, tangents, x, y)
    g3 = kern.primal(params, x, y).grads
    for a, b, c in zip(g1, g2, g3):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_tangent_chunks_consistent():
    """primal() once + tangent() per chunk == one grad_jvp over all columns."""
    widths = WIDTHS[2]
    params, tangents, x, y = make_problem(widths, K=7, seed=5)
    kern = MLPKernel(widths, "gelu")
    _, full = kern.grad_jvp(params, tangents, x, y)
    st = kern.primal(params, x, y)
    parts = [kern.tangent(st, tuple(t[i:j] for t in tangents)) for i, j in [(0, 3), (3, 7)]]
    for i, f in enumerate(full):
        torch.testing.assert_close(torch.cat([p[i] for p in parts]), f, rtol=1e-13, atol=0)


def test_hvp_linearity():
    """dgrads is linear in the tangent (sanity check of the batching layout)."""
    widths = WIDTHS[3]
    params, tangents, x, y = make_problem(widths, K=4, seed=6)
    kern = MLPKernel(widths, "tanh")
    _, dg = kern.grad_jvp(params, tangents, x, y)
    comb = tuple((t[0] * 2.0 - t[3] * 0.5).unsqueeze(0) for t in tangents)
    _, dgc = kern.grad_jvp(params, comb, x, y)
    for a, b in zip(dgc, dg):
        torch.testing.assert_close(a[0], 2.0 * b[0] - 0.5 * b[3], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32(activation):
    widths = [8, 16, 12, 5]
    params, tangents, x, y = make_problem(widths, B=16, K=6, seed=7)
    kern = MLPKernel(widths, activation)
    ref_g, ref_dg = reference(activation, params, tangents, x, y)
    p32 = tuple(p.float() for p in params)
    t32 = tuple(t.float() for t in tangents)
    grads, dgrads = kern.grad_jvp(p32, t32, x.float(), y)
    assert all(g.dtype == torch.float32 for g in grads + dgrads)
    assert_close_rel(tuple(g.double() for g in grads), ref_g, 1e-5)
    assert_close_rel(tuple(g.double() for g in dgrads), ref_dg, 1e-5)
    for a, b in zip(kern.grad(p32, x.float(), y), grads):
        assert torch.equal(a, b)


def test_relu_zero_convention():
    """At z == 0 exactly, relu' = 0 (torch's convention)."""
    widths = [2, 3, 2]
    params, tangents, x, y = make_problem(widths, B=4, K=2, seed=8)
    W0 = params[0].clone()
    b0 = params[1].clone()
    b0[0] = 0.0
    W0[0] = 0.0  # unit 0 has z == 0 for every sample
    params = (W0, b0) + params[2:]
    kern = MLPKernel(widths, "relu")
    ref_g, ref_dg = reference("relu", params, tangents, x, y)
    grads, dgrads = kern.grad_jvp(params, tangents, x, y)
    assert_close_rel(grads, ref_g, 1e-12)
    assert_close_rel(dgrads, ref_dg, 1e-10)


def test_bad_args():
    with pytest.raises(ValueError):
        MLPKernel([3], "relu")
    with pytest.raises(ValueError):
        MLPKernel([3, 2], "sigmoid")


def test_strided_tangents_and_out():
    """Tangents that are views of a flat (K, P) buffer (non-contiguous) and
    preallocated ``out`` buffers give the same results; results of earlier
    calls are not overwritten by later ones (workspace reuse)."""
    widths = WIDTHS[3]
    params, tangents, x, y = make_problem(widths, K=4, seed=11)
    kern = MLPKernel(widths, "gelu_tanh")
    _, ref_dg = reference("gelu_tanh", params, tangents, x, y)
    flat = torch.cat([t.reshape(4, -1) for t in tangents], dim=1)
    views, o = [], 0
    for p in params:
        views.append(flat[:, o:o + p.numel()].view(4, *p.shape))
        o += p.numel()
    st = kern.primal(params, x, y)
    first = kern.tangent(st, tuple(views))
    assert not views[0].is_contiguous()
    out = tuple(torch.full_like(t, float("nan")) for t in tangents)
    second = kern.tangent(st, tuple(t * 2.0 for t in tangents), out=out)
    assert all(a is b for a, b in zip(second, out))
    assert_close_rel(first, ref_dg, 1e-10)
    assert_close_rel(second, tuple(2.0 * r for r in ref_dg), 1e-10)


def test_threads_have_separate_workspaces():
    import threading

    widths = WIDTHS[2]
    kern = MLPKernel(widths, "tanh")
    problems = [make_problem(widths, K=3 + i, seed=20 + i) for i in range(2)]
    refs = [reference("tanh", *pr)[1] for pr in problems]
    results = {}

    def work(i):
        params, tangents, x, y = problems[i]
        st = kern.primal(params, x, y)
        for _ in range(50):
            results[i] = kern.tangent(st, tangents)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1]
    for i in range(2):
        assert_close_rel(results[i], refs[i], 1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cuda(activation):
    widths = WIDTHS[3]
    params, tangents, x, y = make_problem(widths, K=5, seed=12)
    kern = MLPKernel(widths, activation)
    ref_g, ref_dg = reference(activation, params, tangents, x, y)
    dev = torch.device("cuda")
    grads, dgrads = kern.grad_jvp(tuple(p.to(dev) for p in params),
                                  tuple(t.to(dev) for t in tangents), x.to(dev), y.to(dev))
    assert all(g.device.type == "cuda" for g in grads + dgrads)
    assert_close_rel(tuple(g.cpu() for g in grads), ref_g, 1e-12)
    assert_close_rel(tuple(g.cpu() for g in dgrads), ref_dg, 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_ce_gradient_is_bitwise_the_scatter_of_minus_one(dtype):
    """G = (softmax - onehot(y)) / B by comparison with the class numbers: bitwise what the
    scatter_add of -1 into softmax gave, for every class hit several times or never."""
    widths = [6, 5, 7]
    params, _, x, _ = make_problem(widths, B=40, dtype=dtype, seed=5)
    y = torch.tensor([0, 6, 6, 3] * 10)  # classes 1, 2, 4, 5 never, 6 often
    st = MLPKernel(widths, "tanh").primal(params, x, y)
    B = x.shape[0]
    ref = st.pT.scatter_add(0, y.view(1, B), torch.full((1, B), -1.0, dtype=dtype))
    ref = ref.div_(torch.tensor(B, dtype=dtype))
    assert torch.equal(bits(st.GT[-1]), bits(ref))
    assert torch.equal(bits(st.grads[-1]), bits(ref.sum(1)))


def test_release_frees_the_workspace_of_every_thread():
    """release() from one thread drops the chunk buffers every live thread has cached (their
    memory is freed), and the kernel computes the same numbers afterwards."""
    import threading
    import weakref

    widths = WIDTHS[2]
    kern = MLPKernel(widths, "tanh")
    params, tangents, x, y = make_problem(widths, K=6, seed=3)
    st = kern.primal(params, x, y)
    before = kern.tangent(st, tangents)
    held, ready, released = [], threading.Event(), threading.Event()

    def work():
        kern.tangent(st, tangents)
        held.extend(weakref.ref(b) for b in kern._ws.buffers.values())
        ready.set()
        released.wait(30)

    t = threading.Thread(target=work)
    t.start()
    assert ready.wait(30)
    held.extend(weakref.ref(b) for b in kern._ws.buffers.values())
    alive = [r() is not None for r in held]
    kern.release()
    gone = [r() is None for r in held]
    released.set()
    t.join()
    assert len(held) >= 8 and all(alive)
    assert all(gone)
    after = kern.tangent(st, tangents)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(before, after))
