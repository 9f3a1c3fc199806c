"""The public API (engine/__init__.py, engine/api.py): J of a user's own module, checked against
torch.func.jacfwd of a plain training loop written here and against central differences, in
float64; the caller's module left alone; no UI import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacfwd

import engine
from engine import jacobian, train

from conftest import autograd_sgd

REPO = Path(__file__).resolve().parents[1]


class TwoLayer(nn.Module):
    """A researcher's own module: not one of the built-in models, with a buffer."""

    def __init__(self, d_in=3, hidden=5, d_out=2):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.out = nn.Linear(hidden, d_out)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x))) * (2 * self.scale)


def regression(n=24, d_in=3, d_out=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g)
    y = torch.sin(X[:, :d_out]) + 0.1 * torch.randn(n, d_out, generator=g)
    return X, y


def plain_training(module, batches, loss, opt, lr, momentum=0.0, betas=(0.9, 0.999),
                   eps=1e-8, eps_root=1e-8):
    """theta_0 -> theta_T by a training loop written from its textbook definition (SGD with
    PyTorch's momentum convention, or Adam with eps_root inside the square root), over the
    given list of (x, y) batches, float64."""

    def init(theta):
        return torch.zeros_like(theta), torch.zeros_like(theta)

    def update(theta, state, g, lr, t):
        m, v = state
        if opt == "sgd":
            m = momentum * m + g
            return theta - lr * m, (m, v)
        b1, b2 = betas
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
        return theta - lr * mh / (torch.sqrt(vh + eps_root) + eps), (m, v)

    return plain_update_training(module, batches, loss, update, init, [lr] * len(batches))


def plain_update_training(module, batches, loss, update, init, lrs):
    """theta_0 -> theta_T by a plain loop over the (x, y) batches with the update function
    ``update(theta, state, g, lr, t)`` from ``init(theta)``, step t's rate ``lrs[t]``,
    float64."""
    module = module.double()
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    sizes = [p.numel() for _, p in module.named_parameters()]

    def unflat(theta):
        return {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}

    def run(theta):
        state = init(theta)
        for t, (x, y) in enumerate(batches):
            def L(th):
                return loss(functional_call(module, unflat(th), (x.double(),)), y)
            theta, state = update(theta, state, torch.func.grad(L)(theta), lrs[t], t)
        return theta

    theta0 = torch.nn.utils.parameters_to_vector(module.parameters()).detach()
    return run, theta0


def mse(output, target):
    """The mean squared error written out (F.mse_loss under jacfwd of grad raises torch's
    "ZeroTensors are immutable")."""
    return ((output - target) ** 2).mean()


def batches_of(X, y, bs, epochs=1):
    return [(X[a:a + bs].double(), y[a:a + bs].double()) for _ in range(epochs)
            for a in range(0, len(X), bs)]


@pytest.mark.parametrize("opt,extra", [("sgd", {"momentum": 0.9}), ("adam", {})])
def test_J_of_a_custom_module_with_mse_equals_jacfwd_of_a_plain_loop(opt, extra):
    torch.manual_seed(1)
    model = TwoLayer()
    X, y = regression()
    lr = 0.05 if opt == "sgd" else 0.01
    J = engine.training_jacobian(model, (X, y), loss=F.mse_loss, optimizer=opt, lr=lr,
                                 batch_size=8, epochs=2, **extra)
    P = sum(p.numel() for p in model.parameters())
    assert J.shape == (P, P) and J.dtype == torch.float64
    run, theta0 = plain_training(_copy(model), batches_of(X, y, 8, 2), mse, opt, lr, **extra)
    ref = jacfwd(run)(theta0)
    assert torch.allclose(J, ref, rtol=0, atol=1e-12), (J - ref).abs().max()
    assert (J - torch.eye(P)).abs().max() > 1e-3  # training moved: not a trivial J
    # central differences of the plain loop on a few columns (float64, h = 1e-5)
    agrees_with_central_differences(J, run, theta0, (0, P // 2, P - 1), h=1e-5, atol=1e-8)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def agrees_with_central_differences(J, run, theta0, columns=None, h=1e-6, atol=1e-7):
    """J's columns (default: all) against central differences of ``run`` (theta_0 ->
    theta_T) at ``theta0``, float64, step ``h``, within ``atol``."""
    P = theta0.numel()
    for j in range(P) if columns is None else columns:
        e = torch.zeros(P, dtype=torch.float64)
        e[j] = h
        fd = (run(theta0 + e) - run(theta0 - e)) / (2 * h)
        assert torch.allclose(J[:, j], fd, rtol=0, atol=atol), (j, (J[:, j] - fd).abs().max())


def test_the_callers_module_is_left_unchanged():
    torch.manual_seed(2)
    model = TwoLayer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, y = regression()
    engine.training_jacobian(model, (X, y), loss=F.mse_loss, lr=0.1, batch_size=12)
    after = model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert next(model.parameters()).device.type == "cpu"
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_list_and_a_generator_factory_of_batches_give_the_tensors_J():
    torch.manual_seed(3)
    model = TwoLayer()
    X, y = regression(n=20)
    ref = engine.training_jacobian(model, (X, y), loss=F.mse_loss, lr=0.1, momentum=0.5,
                                   batch_size=8, epochs=2)
    listed = [(X[a:a + 8], y[a:a + 8]) for a in range(0, 20, 8)]  # 8, 8, 4 rows
    J_list = engine.training_jacobian(model, listed, loss=F.mse_loss, lr=0.1, momentum=0.5,
                                      epochs=2)

    def factory():
        return ((X[a:a + 8], y[a:a + 8]) for a in range(0, 20, 8))

    J_gen = engine.training_jacobian(model, factory, loss=F.mse_loss, lr=0.1, momentum=0.5,
                                     epochs=2)
    assert torch.allclose(J_list, ref, rtol=0, atol=1e-14)
    assert torch.allclose(J_gen, ref, rtol=0, atol=1e-14)
    # a one-shot generator is read once: fine for one epoch, refused for two
    once = engine.training_jacobian(model, factory(), loss=F.mse_loss, lr=0.1, momentum=0.5,
                                    steps=3)
    assert torch.allclose(once, engine.training_jacobian(
        model, (X, y), loss=F.mse_loss, lr=0.1, momentum=0.5, batch_size=8), atol=1e-14)
    with pytest.raises(ValueError, match="one-shot iterator"):
        engine.training_jacobian(model, factory(), loss=F.mse_loss, epochs=2)
    with pytest.raises(ValueError, match="batch_size applies to tensors"):
        engine.training_jacobian(model, listed, loss=F.mse_loss, batch_size=4)


def test_cross_entropy_is_the_default_loss_and_steps_truncate():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(approximate="tanh"), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g)
    J = engine.training_jacobian(model, (X, y), optimizer="adam", lr=0.01, batch_size=10,
                                 steps=2)
    run, theta0 = plain_training(_copy(model), batches_of(X, y.double(), 10)[:2],
                                 lambda o, t: F.cross_entropy(o, t.long()), "adam", 0.01)
    assert torch.allclose(J, jacfwd(run)(theta0), rtol=0, atol=1e-12)


def test_the_generic_chunk_is_all_P_where_it_fits_and_the_chunk_does_not_change_J():
    torch.manual_seed(5)
    model = TwoLayer(4, 12, 3)
    X, y = regression(16, 4, 3)
    cfg = engine.TrainConfig(lr=0.1, batch_size=8)
    p = train.generic_problem(model, X, y, cfg, torch.device("cpu"), torch.float64,
                              loss=F.mse_loss)
    theta0 = train.initial_theta(p.module, torch.device("cpu"), torch.float64)
    P = theta0.numel()
    assert jacobian.auto_chunk(p, theta0, torch.device("cpu"), torch.float64) == P
    J = engine.training_jacobian(model, (X, y), loss=F.mse_loss, lr=0.1, batch_size=8)
    J7 = engine.training_jacobian(model, (X, y), loss=F.mse_loss, lr=0.1, batch_size=8,
                                  chunk=7)
    assert torch.allclose(J, J7, rtol=0, atol=1e-14)


def test_the_optimizer_keywords_are_checked_like_a_preset():
    model = TwoLayer()
    X, y = regression()
    with pytest.raises(engine.ConfigError) as e:
        engine.training_jacobian(model, (X, y), loss=F.mse_loss, lr=-1.0)
    assert str(e.value) == "train.lr: expected a positive number, got -1.0"
    with pytest.raises(engine.ConfigError) as e:  # a misspelt keyword: a preset's unknown key
        engine.training_jacobian(model, (X, y), loss=F.mse_loss, learning_rate=0.1)
    with pytest.raises(engine.ConfigError) as loaded:
        engine.loads("[train]\nlearning_rate = 0.1\n", where="x.toml")
    assert str(e.value).startswith("train.learning_rate: unknown key")
    assert str(loaded.value) == "x.toml: " + str(e.value)


def rmsprop_init(theta):
    return (torch.zeros_like(theta),)


def rmsprop(theta, state, g, lr, t):
    """A researcher's own optimizer (RMSprop with a bias-corrected square average): nonlinear
    in g, so its tangent is not the update applied to the tangents."""
    (v,) = state
    v = 0.9 * v + 0.1 * g * g
    return theta - lr * g / (torch.sqrt(v / (1 - 0.9 ** (t + 1))) + 1e-3), (v,)


def sgd_momentum(theta, state, g, lr, t):
    (m,) = state
    m = 0.9 * m + g
    return theta - lr * m, (m,)


def test_an_update_function_gives_the_j_of_its_training_by_jvp():
    """One's own optimizer (update, init): J equals jacfwd of a plain loop running the same
    functions (the cosine schedule's rates reach it step by step) and central differences,
    float64; the built-in momentum written as a function gives the built-in's J."""
    torch.manual_seed(3)
    model = TwoLayer()
    X, y = regression()
    J = engine.training_jacobian(model, (X, y), loss=F.mse_loss, update=rmsprop,
                                 init=rmsprop_init, lr=0.02, schedule="cosine", batch_size=8,
                                 epochs=2)
    lrs = train.lr_schedule(engine.TrainConfig(lr=0.02, schedule="cosine", batch_size=8,
                                               epochs=2), 6)
    assert lrs[0] > lrs[-1] > 0  # (the rates differ step by step)
    run, theta0 = plain_update_training(_copy(model), batches_of(X, y, 8, 2), mse, rmsprop,
                                        rmsprop_init, [float(r) for r in lrs])
    ref = jacfwd(run)(theta0)
    assert torch.allclose(J, ref, rtol=0, atol=1e-12), (J - ref).abs().max()
    P = theta0.numel()
    assert (J - torch.eye(P)).abs().max() > 1e-2
    agrees_with_central_differences(J, run, theta0, (0, P // 2, P - 1), h=1e-6, atol=1e-7)
    builtin = engine.training_jacobian(model, (X, y), loss=F.mse_loss, lr=0.05, momentum=0.9,
                                       batch_size=8, epochs=2)
    mine = engine.training_jacobian(model, (X, y), loss=F.mse_loss, update=sgd_momentum,
                                    init=rmsprop_init, lr=0.05, batch_size=8, epochs=2)
    assert torch.allclose(mine, builtin, rtol=0, atol=1e-12), (mine - builtin).abs().max()


def in_place_sgd(theta, state, g, lr, t):
    theta.sub_(lr * g)
    return theta, state


@pytest.mark.parametrize("kw,error,needle", [
    ({"update": in_place_sgd}, ValueError, "changed its inputs in place"),
    ({"update": lambda th, st, g, lr, t: th - lr * g}, ValueError, "must return (theta, state)"),
    ({"update": sgd_momentum, "init": lambda th: torch.zeros(3)}, ValueError,
     "each state entry must be a tensor shaped like theta, (32,)"),
    ({"update": sgd_momentum, "init": rmsprop_init, "momentum": 0.9}, TypeError,
     "momentum configures the built-in optimizers"),
    ({"init": rmsprop_init}, TypeError, "give update too"),
    ({"update": lambda th, st, g, lr, t: (th - lr * g.sum().item() * g, st)}, ValueError,
     "tangent (torch.func.jvp) failed at step 0"),
    ({"update": lambda th, st, g, lr, t: (th - lr * g if g.norm() < 1e9 else th, st)},
     ValueError, "branch on a tensor's value"),
])
def test_an_update_function_that_cannot_give_an_exact_j_is_refused_in_one_line(kw, error,
                                                                              needle):
    """An in-place update would count the step twice, and .item() would drop its term of the
    tangent (J silently wrong either way): refused like the other misuses, each in one line
    naming it."""
    X, y = regression()
    with pytest.raises(error) as e:
        engine.training_jacobian(TwoLayer(), (X, y), loss=F.mse_loss, lr=0.05, batch_size=8,
                                 **kw)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.slow
def test_the_api_imports_no_ui_library():
    """``import engine`` and a J with textual, rich and plotext refused by the importer."""
    code = textwrap.dedent("""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("textual", "rich", "plotext"):
                    raise ImportError("blocked: " + name)
                return None
        sys.meta_path.insert(0, Refuse())
        import torch, engine
        m = torch.nn.Linear(2, 2)
        J = engine.training_jacobian(m, (torch.randn(8, 2), torch.randn(8, 2)),
                                     loss=torch.nn.functional.mse_loss, lr=0.1)
        print(tuple(J.shape), sorted(k for k in sys.modules
                                     if k.split(".")[0] in ("textual", "rich", "plotext")))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(6, 6) []"


def test_the_package_names_its_api():
    assert set(engine.__all__) >= {"training_jacobian", "build", "RunConfig", "TrainConfig",
                                   "ConfigError", "load", "loads"}
    for name in engine.__all__:
        assert getattr(engine, name) is not None
        if callable(getattr(engine, name)):
            assert getattr(engine, name).__doc__


BAD = [  # (section class, keyword, value, the same value in TOML)
    ("train", "optimizer", "rmsprop", '"rmsprop"'),
    ("train", "lr", -1.0, "-1.0"),
    ("train", "lr", "fast", '"fast"'),
    ("train", "momentum", 1.0, "1.0"),
    ("train", "batch_size", True, "true"),
    ("train", "final_lr", 0.5, "0.5"),  # a rule across keys (lr = 0.1)
    ("model", "hidden", [0], "[0]"),
    ("jacobian", "kernel", "fast", '"fast"'),
    ("spectrum", "bulk_tol", 2.0, "2.0"),
    ("data", "dataset", "cifar", '"cifar"'),
]


@pytest.mark.parametrize("section,key,value,toml", BAD)
def test_constructors_refuse_what_a_preset_refuses_with_the_same_message(section, key, value,
                                                                         toml):
    cls = {"train": engine.TrainConfig, "model": engine.ModelConfig,
           "jacobian": engine.JacobianConfig, "spectrum": engine.SpectrumConfig,
           "data": engine.DataConfig}[section]
    with pytest.raises(engine.ConfigError) as made:
        cls(**{key: value})
    with pytest.raises(engine.ConfigError) as loaded:
        engine.loads(f"[{section}]\n{key} = {toml}\n", where="x.toml")
    with pytest.raises(engine.ConfigError) as nested:  # a section given to RunConfig as a dict
        engine.RunConfig(**{section: {key: value}})
    assert str(loaded.value) == "x.toml: " + str(made.value)
    assert str(nested.value) == str(made.value)
    assert str(made.value).startswith(f"{section}.{key}: expected ")


def test_the_issue_example_and_run_level_rules():
    with pytest.raises(engine.ConfigError, match=r'^train.optimizer: expected one of "sgd", '
                                                 r'"adam", got "rmsprop"$'):
        engine.TrainConfig(optimizer="rmsprop", lr=-1.0)
    adam = engine.TrainConfig(optimizer="adam", eps_root=0.0)  # fine alone; not for a J
    with pytest.raises(engine.ConfigError) as made:
        engine.RunConfig(train=adam)
    with pytest.raises(engine.ConfigError) as loaded:
        engine.loads('[train]\noptimizer = "adam"\neps_root = 0.0\n', where="x.toml")
    assert str(loaded.value) == "x.toml: " + str(made.value)
    with pytest.raises(engine.ConfigError, match="^seed: expected an integer"):
        engine.RunConfig(seed=-1)
    # valid values are normalised as a preset's are (an integer lr becomes a float)
    assert engine.TrainConfig(lr=1).lr == 1.0 and type(engine.TrainConfig(lr=1).lr) is float
    assert engine.RunConfig(train={"lr": 0.05}).train == engine.TrainConfig(lr=0.05)


class Stateful(nn.Module):
    """A layer (not a BatchNorm) whose forward writes into its own running statistics."""

    def __init__(self):
        super().__init__()
        self.track_running_stats = True
        self.register_buffer("seen", torch.zeros(4))

    def forward(self, x):
        if self.training:
            self.seen.add_(x.detach().mean(0))
        return x


def test_batchnorm_in_training_mode_equals_autograd_sgd_and_central_differences():
    """BatchNorm in training mode was refused; J is that of the training torch itself runs:
    SGD by torch.autograd on the real module (its running statistics updated at every step,
    as they never enter a step) and central differences of it, float64; the caller's module
    and its statistics are left as they were, and an eval-mode BatchNorm keeps its own."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2),
                          nn.BatchNorm1d(2)).double()
    model[4].eval()  # this one normalizes by its (fixed) running statistics
    with torch.no_grad():
        model[4].running_mean.uniform_(-0.5, 0.5)
        model[4].running_var.uniform_(0.5, 1.5)
    X, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 2, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr, bs = 0.1, 8
    J = engine.training_jacobian(model, (X, y), optimizer="sgd", lr=lr, momentum=0.9,
                                 batch_size=bs, epochs=2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    P = sum(p.numel() for p in model.parameters())
    def tracked(m):
        assert m[1].num_batches_tracked == 8  # the real layer tracked its statistics

    run = autograd_sgd(model, X, y, lr, bs, epochs=2, momentum=0.9, check=tracked)
    theta0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    agrees_with_central_differences(J, run, theta0)
    assert (J - torch.eye(P)).abs().max() > 1e-2  # training moved: not a trivial J


def plain_bn_training(W1, b1, gamma, beta, W2, b2, batches, lr, momentum, bn_momentum):
    """theta_0 -> (theta_T, running mean, running var) of Linear -> BatchNorm1d -> tanh ->
    Linear by SGD momentum, written from the definitions: the batch normalized by its own
    mean and biased variance (eps 1e-5), the running statistics updated by
    ``(1 - m) r + m s`` with the batch's mean and unbiased variance, starting at (0, 1)."""
    shapes = [W1.shape, b1.shape, gamma.shape, beta.shape, W2.shape, b2.shape]
    sizes = [int(torch.tensor(s).prod()) if len(s) else 1 for s in shapes]

    def unflat(theta):
        return [t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes)]

    def forward(ps, x):
        w1, c1, g, bt, w2, c2 = ps
        h = x @ w1.T + c1
        mean, var = h.mean(0), h.var(0, correction=0)
        z = torch.tanh((h - mean) / torch.sqrt(var + 1e-5) * g + bt)
        return z @ w2.T + c2, mean, h.var(0, correction=1)

    def run(theta):
        m = torch.zeros_like(theta)
        rm, rv = torch.zeros(len(b1), dtype=theta.dtype), torch.ones(len(b1), dtype=theta.dtype)
        for x, y in batches:
            _, mean, var = forward(unflat(theta), x)
            rm, rv = (1 - bn_momentum) * rm + bn_momentum * mean, \
                (1 - bn_momentum) * rv + bn_momentum * var
            g = torch.func.grad(lambda th: F.cross_entropy(forward(unflat(th), x)[0], y))(theta)
            m = momentum * m + g
            theta = theta - lr * m
        return torch.cat([theta, rm, rv])

    return run


def test_batchnorm_running_statistics_are_state_with_tangents():
    """``statistics=True``: J's rows past P are those of BatchNorm's running statistics, d
    buffers_T / d theta_0, equal to jacfwd of a plain loop written from the definitions
    (float64, 1e-12), with theta's rows unchanged by asking for them; the statistics the
    loop carries are torch's own (nn.BatchNorm1d trained by torch.autograd, 1e-12) and their
    rows agree with central differences of that real module's training (momentum=None, the
    cumulative average, included)."""
    torch.manual_seed(4)
    lin1, bn, lin2 = nn.Linear(3, 5), nn.BatchNorm1d(5, momentum=0.2), nn.Linear(5, 2)
    model = nn.Sequential(lin1, bn, nn.Tanh(), lin2).double()
    X, y = torch.randn(24, 3, dtype=torch.float64), torch.randint(0, 2, (24,))
    kw = dict(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=8, epochs=2)
    J = engine.training_jacobian(model, (X, y), statistics=True, **kw)
    P = sum(p.numel() for p in model.parameters())
    assert J.shape == (P + 10, P)
    assert torch.equal(J[:P], engine.training_jacobian(model, (X, y), **kw))
    run = plain_bn_training(*(p.detach() for p in model.parameters()),
                            [(X[a:a + 8], y[a:a + 8]) for _ in range(2) for a in (0, 8, 16)],
                            0.1, 0.9, 0.2)
    theta0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    ref = jacfwd(run)(theta0)
    assert torch.allclose(J, ref, rtol=0, atol=1e-12), (J - ref).abs().max()
    assert J[P:].abs().max() > 1e-2  # the statistics depend on theta_0

    # the statistics carried are torch's; a second BatchNorm with momentum=None
    model2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2),
                           nn.BatchNorm1d(2, momentum=None)).double()
    problem = train.generic_problem(model2, X, y, engine.TrainConfig(**kw), torch.device("cpu"),
                                    torch.float64)
    buffers = problem.initial_buffers()
    theta_T = train.train(problem, train.initial_theta(model2, "cpu", torch.float64),
                          buffers=buffers)
    assert problem.statistics.names == ["1.running_mean", "1.running_var", "4.running_mean",
                                        "4.running_var"]

    def real(theta0):
        m = _copy(model2)
        torch.nn.utils.vector_to_parameters(theta0.clone(), m.parameters())
        params, mom = list(m.parameters()), [torch.zeros_like(p) for p in m.parameters()]
        for _ in range(2):
            for a in (0, 8, 16):
                loss = F.cross_entropy(m(X[a:a + 8]), y[a:a + 8])
                with torch.no_grad():
                    for p, b, g in zip(params, mom, torch.autograd.grad(loss, params)):
                        b.mul_(0.9).add_(g)
                        p.sub_(0.1 * b)
        return torch.cat([torch.nn.utils.parameters_to_vector(m.parameters()).detach(),
                          m[1].running_mean, m[1].running_var, m[4].running_mean,
                          m[4].running_var])

    theta0 = torch.nn.utils.parameters_to_vector(model2.parameters()).detach()
    torch_state = real(theta0)
    assert torch.allclose(torch.cat([theta_T, buffers]), torch_state, rtol=0, atol=1e-12)
    J2 = engine.training_jacobian(model2, (X, y), statistics=True, **kw)
    agrees_with_central_differences(J2, real, theta0)
    assert model2[1].num_batches_tracked == 0  # the caller's module, untouched


def test_evaluation_normalizes_by_the_running_statistics_and_drops_dropout():
    """The metrics of a training with BatchNorm and dropout are those of the module in eval
    mode with that training's running statistics (torch's own forward, 1e-12); the train
    stage's step-0 metrics use the initial statistics."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3),
                          nn.Linear(6, 2)).double()
    X, y = torch.randn(24, 3, dtype=torch.float64), torch.randint(0, 2, (24,))
    cfg = engine.TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=8, epochs=2)
    problem = train.generic_problem(model, X, y, cfg, torch.device("cpu"), torch.float64,
                                    seed=3)
    seen = []
    buffers = problem.initial_buffers()
    theta_T = train.train(problem, train.initial_theta(model, "cpu", torch.float64),
                          on_step=seen.append, buffers=buffers)
    ev = _copy(model).eval()
    with torch.no_grad():
        assert abs(seen[0]["train_loss"] - F.cross_entropy(ev(X), y).item()) < 1e-12
        torch.nn.utils.vector_to_parameters(theta_T, ev.parameters())
        ev[1].running_mean.copy_(buffers[:6])
        ev[1].running_var.copy_(buffers[6:])
        assert abs(seen[-1]["train_loss"] - F.cross_entropy(ev(X), y).item()) < 1e-12
    assert not torch.equal(buffers[:6], torch.zeros(6))


def test_dropout_draws_a_mask_per_step_and_j_is_the_derivative_of_that_training():
    """Dropout in training mode was refused. Each step's mask is drawn by the documented rule
    (a generator seeded (seed * 1_000_003 + step) * 1_009 + layer, keep where
    rand >= p, scaled by 1 / (1 - p)); J equals central differences of a plain SGD loop
    written here with those masks (float64, every column), does not depend on the chunk, and
    another seed draws other masks."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 2)).double()
    X, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 2, (32,))
    lr, bs, p, seed = 0.1, 8, 0.3, 5
    kw = dict(optimizer="sgd", lr=lr, momentum=0.9, batch_size=bs, epochs=2, shuffle=False,
              seed=seed)
    J = engine.training_jacobian(model, (X, y), **kw)
    assert torch.equal(J, engine.training_jacobian(model, (X, y), chunk=5, **kw))
    assert (J - engine.training_jacobian(model, (X, y), **{**kw, "seed": 6})).abs().max() > 1e-3
    assert model[2].training and isinstance(model[2], nn.Dropout)  # the caller's, unchanged

    def mask(step, rows):
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + 0)
        return (torch.rand((rows, 6), generator=g) >= p).double() / (1 - p)

    def run(theta):
        W1, b1, W2, b2 = torch.split(theta, [18, 6, 12, 2])
        W1, W2 = W1.reshape(6, 3), W2.reshape(2, 6)
        params, buf = [W1, b1, W2, b2], [torch.zeros_like(t) for t in (W1, b1, W2, b2)]
        step = 0
        for _ in range(2):
            for a in range(0, len(X), bs):
                ps = [t.detach().requires_grad_() for t in params]
                h = torch.tanh(X[a:a + bs] @ ps[0].T + ps[1]) * mask(step, bs)
                loss = F.cross_entropy(h @ ps[2].T + ps[3], y[a:a + bs])
                grads = torch.autograd.grad(loss, ps)
                buf = [0.9 * b + g for b, g in zip(buf, grads)]
                params = [t.detach() - lr * b for t, b in zip(ps, buf)]
                step += 1
        return torch.cat([t.reshape(-1) for t in params])

    theta0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    agrees_with_central_differences(J, run, theta0)


@pytest.mark.parametrize("layer,needle", [(Stateful(), "running statistics"),
                                          (nn.AlphaDropout(0.5), "random masks")])
def test_stateful_and_random_layers_are_one_line_refusals(layer, needle):
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Tanh(), nn.Linear(4, 2))
    X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    with pytest.raises(ValueError) as e:
        engine.training_jacobian(model, (X, y), lr=0.1, batch_size=8)
    assert str(e.value).startswith(f"1 ({type(layer).__name__}) ") and needle in str(e.value)
    assert "\n" not in str(e.value)
    model.eval()  # fixed statistics / no dropout: a plain function of the parameters
    J = engine.training_jacobian(model, (X, y), lr=0.1, batch_size=8)
    P = sum(p.numel() for p in model.parameters())
    assert J.shape == (P, P) and bool(torch.isfinite(J).all())
    assert not model.training


def test_multihead_attention_trains_through_the_math_kernel_and_j_is_exact():
    """nn.MultiheadAttention failed: scaled_dot_product_attention's fused CPU kernel has no
    forward-mode derivative. The generic kernel runs it by the math backend; J equals central
    differences of autograd SGD on the module as torch runs it (float64, every column)."""
    torch.manual_seed(4)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 4)
            self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            t = self.embed(x.reshape(-1, 5, 3))
            return self.head((t + self.attention(t, t, t, need_weights=False)[0]).mean(1))

    model = Tiny().double()
    X, y = torch.randn(16, 15, dtype=torch.float64), torch.randint(0, 2, (16,))
    lr, bs = 0.1, 8
    J = engine.training_jacobian(model, (X, y), optimizer="sgd", lr=lr, batch_size=bs,
                                 epochs=2, shuffle=False)

    run = autograd_sgd(model, X, y, lr, bs, epochs=2)
    theta0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    agrees_with_central_differences(J, run, theta0)
    assert (J - torch.eye(theta0.numel())).abs().max() > 1e-3
