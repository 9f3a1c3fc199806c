"""Models: the MLP of the paper, user models by import path, and the flat parameter layout.

The training Jacobian is indexed by the *flat* parameter vector: the model's parameters in
``named_parameters()`` order, each flattened row-major. :class:`Layout` records that order
(names, shapes, offsets) and converts between the flat vector and named tensors.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .archs import LENET5, LENET5_HIDDEN, ConvSpec, conv_output, conv_specs
from .config import ModelConfig
from .files import ArchiveError, read_npz

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
}


class MLP(nn.Module):
    """Fully connected net ``widths[0] -> ... -> widths[-1]``; the activation follows every
    layer but the last. Parameters are ``layers.{i}.weight`` (out, in) and ``layers.{i}.bias``."""

    def __init__(self, widths: Sequence[int], activation: str = "gelu_tanh"):
        super().__init__()
        self.widths = list(widths)
        self.activation = activation
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class ConvNet(nn.Module):
    """Convolutions, each followed by the activation and a 2x2 pooling (stride 2), then the
    flattened maps through fully connected layers (the activation between them, none after the
    last). Its input is a flat (B, C*H*W) batch, viewed as images of ``in_shape`` (C, H, W).
    Parameters: ``convs.{i}.weight`` (out, in, k, k), ``convs.{i}.bias``, then
    ``fcs.{i}.weight`` / ``fcs.{i}.bias`` as in :class:`MLP`."""

    def __init__(self, in_shape: Sequence[int], convs: Sequence[ConvSpec],
                 widths: Sequence[int], activation: str = "relu", pooling: str = "max"):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        self.specs = list(convs)
        self.activation, self.pooling = activation, pooling
        c, h, w = conv_output(self.in_shape, self.specs)
        ins = [self.in_shape[0]] + [sp.out_channels for sp in self.specs[:-1]]
        self.convs = nn.ModuleList(nn.Conv2d(i, sp.out_channels, sp.kernel, padding=sp.padding)
                                   for i, sp in zip(ins, self.specs))
        self.flat_features = c * h * w
        self.widths = [self.flat_features, *widths]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.widths[:-1],
                                                                  self.widths[1:]))
        self.act = ACTIVATIONS[activation]()
        self.pool = nn.MaxPool2d(2) if pooling == "max" else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.in_shape)
        for conv in self.convs:
            x = self.pool(self.act(conv(x)))
        x = x.flatten(1)
        for i, layer in enumerate(self.fcs):
            x = layer(x)
            if i < len(self.fcs) - 1:
                x = self.act(x)
        return x


def lenet5(in_shape: Sequence[int], n_classes: int, activation: str = "relu",
           pooling: str = "max") -> ConvNet:
    """LeNet-5 as in the paper's appendix: conv 6@5x5 (padding 2), pool, conv 16@5x5, pool,
    fully connected 400-120-84-10 on 28x28 images (P = 61,706)."""
    return ConvNet(in_shape, list(LENET5), [*LENET5_HIDDEN, n_classes], activation, pooling)


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of the parameters in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def offsets(self) -> list[int]:
        out, o = [], 0
        for n in self.sizes:
            out.append(o)
            o += n
        return out

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @classmethod
    def of(cls, module: nn.Module) -> "Layout":
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    def to_json(self) -> list[dict]:
        return [{"name": n, "shape": list(s), "offset": o, "size": z}
                for n, s, o, z in zip(self.names, self.shapes, self.offsets, self.sizes)]

    @classmethod
    def from_json(cls, rows: list[dict]) -> "Layout":
        return cls(tuple(r["name"] for r in rows), tuple(tuple(r["shape"]) for r in rows))

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Named tensors (in layout order) -> flat vector (P,); a leading batch dim is kept."""
        return torch.cat([t.reshape(*t.shape[: t.dim() - len(s)], -1)
                          for t, s in zip(tensors, self.shapes)], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flat (..., P) -> tensors (..., *shape) as views where possible."""
        lead = flat.shape[:-1]
        return tuple(c.reshape((*lead, *s))  # (a tuple: a 0-d parameter has no sizes)
                     for c, s in zip(torch.split(flat, self.sizes, dim=-1), self.shapes))

    def to_npz_dict(self, tensors: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
        return {n: t.detach().cpu().numpy() for n, t in zip(self.names, tensors)}


def _lecun_init_(module: nn.Module, gen: torch.Generator) -> None:
    """The paper's init: weights truncated normal (two std) with variance 1/fan_in, biases
    N(0, 1/fan_in). Drawn in float64 on the CPU so every device starts from the same theta_0."""
    # std of a standard normal truncated to [-2, 2]; divide it out so the variance is 1/fan_in
    trunc_std = 0.87962566103423978
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            fan_in = layer.weight[0].numel()  # in_features, or in_channels * k * k
            std = fan_in ** -0.5 / trunc_std
            w = torch.empty(layer.weight.shape, dtype=torch.float64)
            nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=gen)
            # (drawn with or without a bias, so that a layer's draws do not depend on it)
            b = torch.randn(layer.weight.shape[0], dtype=torch.float64, generator=gen) \
                * fan_in ** -0.5
            with torch.no_grad():
                layer.weight.copy_(w)
                if layer.bias is not None:  # (bias=False layers: the weight alone)
                    layer.bias.copy_(b)


def load_user_builder(path: str):
    """The function a ``model.build`` names: ``"pkg.mod:fn"`` is imported from the Python path
    (installed packages, PYTHONPATH; never the current directory), ``"/abs/file.py:fn"`` from
    that file (config makes preset-relative files absolute). Importing it runs its code, like
    any import."""
    target, fn_name = path.split(":")
    if target.endswith(".py"):
        mod_name = "tjac_user_model_" + hashlib.sha256(target.encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(mod_name, target)
        if spec is None or spec.loader is None:
            raise ValueError(f"model.build: cannot import {target}")
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except FileNotFoundError:
            raise ValueError(f"model.build: no such file: {target}") from None
    else:
        implicit = sys.path[0] if sys.path and sys.path[0] in ("", ".", os.getcwd()) else None
        if implicit is not None:  # the current directory (python -m, -c): never searched
            sys.path.pop(0)
        try:
            mod = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"model.build: cannot import {target} from the Python path "
                             f"(not the current directory): {e}") from None
        finally:
            if implicit is not None:
                sys.path.insert(0, implicit)
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise ValueError(f"model.build: {target} has no {fn_name}")
    return fn


def call_user_builder(build: str, n_features: int, n_classes: int) -> nn.Module:
    """The module ``model.build`` (``"file.py:fn"`` / ``"pkg.mod:fn"``) returns for
    ``(n_features, n_classes)``, checked by :func:`check_parameters`. ValueError (one line)
    when it is no module, has parameters tjac cannot train, or calls ``sys.exit`` (whose
    status would read as tjac's own: 3 is "interrupted")."""
    fn = load_user_builder(build)
    try:
        module = fn(n_features, n_classes)
    except SystemExit as e:
        raise ValueError(f"model.build: {build} called sys.exit({e.code})") from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"model.build: {build} returned {type(module).__name__}, "
                         "not an nn.Module")
    check_parameters(module, build)
    return module


def count_user_parameters(build: str, n_features: int, n_classes: int) -> int | None:
    """P of a user model built on the meta device (shapes without memory: a 300M-parameter
    model is counted in a moment, its 2.4 GB never allocated), with its parameters checked
    (:func:`check_parameters`); None when the builder cannot run on the meta device (it then
    has to be built for real)."""
    try:
        with torch.device("meta"):
            module = call_user_builder(build, n_features, n_classes)
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - e.g. a builder that reads values: built for real
        return None
    return Layout.of(module).size


def check_parameters(module: nn.Module, build: str) -> None:
    """ValueError naming the first parameter tjac cannot train and differentiate: J is over
    every parameter, trained in float64 (or float32), so a parameter must be a real floating
    point tensor that requires grad (a frozen or integer one is a buffer:
    ``register_buffer``); and a model without parameters has no J."""
    named = list(module.named_parameters())
    if not named:
        raise ValueError(f"model.build: {build} returned a module without parameters "
                         "(P = 0): there is nothing to train")
    for name, p in named:
        if not p.is_floating_point():
            raise ValueError(f"model.build: {build}: parameter {name} is {p.dtype}; tjac "
                             "trains and differentiates real floating-point parameters only "
                             "(a constant belongs in a buffer: register_buffer)")
        if not p.requires_grad:
            raise ValueError(f"model.build: {build}: parameter {name} has "
                             "requires_grad=False, yet tjac trains and differentiates every "
                             "parameter: hold it fixed as a buffer (register_buffer)")


def _is_data_get(func) -> bool:
    return getattr(func, "__name__", "") == "__get__" and \
        getattr(func, "__self__", None) is torch.Tensor.data


# Tensor methods that leave autodiff: forward-mode tangents stop at them, so J would miss how
# the training depends on the value they take (a straight-through estimator's identity
# tangent is not the derivative of the rounding that ran). No-op on a tensor not depending on
# the parameters (an input), so only those are refused.
UNTRACED = {torch.Tensor.detach: "Tensor.detach()", torch.Tensor.detach_: "Tensor.detach_()",
            torch.detach: "torch.detach()", torch.Tensor.item: "Tensor.item()",
            torch.Tensor.tolist: "Tensor.tolist()", torch.Tensor.numpy: "Tensor.numpy()",
            torch.Tensor.__float__: "float(tensor)", torch.Tensor.__int__: "int(tensor)"}


def _user_frame() -> str:
    """The innermost frame of the stack outside torch and engine: where the user's code is."""
    import traceback

    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))
    for fr in reversed(traceback.extract_stack()):
        if not os.path.abspath(fr.filename).startswith(skip):
            return f"{fr.filename}:{fr.lineno}"
    return "?"


class _Untraced(torch.overrides.TorchFunctionMode):
    """Notes the first call of :data:`UNTRACED` (or a read of ``.data``) on a tensor that
    depends on the parameters."""

    def __init__(self):
        super().__init__()
        self.found: tuple[str, str] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        what = "Tensor.data" if _is_data_get(func) else UNTRACED.get(func)
        if what and self.found is None and args and isinstance(args[0], torch.Tensor) \
                and args[0].requires_grad:
            self.found = (what, _user_frame())
        return func(*args, **(kwargs or {}))


def check_traceable(module: nn.Module, n_features: int, n_classes: int, build: str) -> None:
    """ValueError when a user model's forward pass (and the loss on it), run on two random
    rows, takes a parameter-dependent value out of autodiff (:data:`UNTRACED`, ``.data``):
    J would then be off (1-6 % relative in tests) with nothing to show it. Also refuses a
    forward that calls ``sys.exit``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, n_features, dtype=torch.float64, generator=gen)
    y = torch.arange(2) % max(n_classes, 1)
    mode = _Untraced()
    try:
        with mode:
            out = module(x)
            if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == n_classes:
                torch.nn.functional.cross_entropy(out, y)
    except SystemExit as e:
        raise ValueError(f"model.build: {build}: the forward pass called sys.exit({e.code})"
                         ) from None
    except Exception:  # noqa: BLE001 - the forward's own errors surface where it trains, named
        pass
    if mode.found:
        what, where = mode.found
        raise ValueError(f"model.build: {build}: the forward pass calls {what} on a value "
                         f"that depends on the parameters ({where}); forward-mode tangents "
                         "stop there, so J would not be the derivative of the training that "
                         "ran: tjac refuses it (use the value itself, or a smooth surrogate)")


def stateful_layer(module: nn.Module, allow_batchnorm: bool = False,
                   allow_dropout: bool = False) -> str | None:
    """What of ``module`` the torch.func path cannot train as it stands, in words naming the
    layer, or None: a layer that writes into its own buffers in training mode (BatchNorm's
    running statistics, unless ``allow_batchnorm``: the generic kernel carries them,
    :class:`engine.train.RunningStats`) and a random layer in training mode (dropout, unless
    ``allow_dropout``: the generic kernel draws ``nn.Dropout``'s masks per step)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    for name, sub in module.named_modules():
        what = f"{name or 'the module'} ({type(sub).__name__})"
        if sub.training and getattr(sub, "track_running_stats", False) and \
                not (allow_batchnorm and isinstance(sub, _BatchNorm)):
            return f"{what} updates its running statistics in training mode"
        if sub.training and isinstance(sub, _DropoutNd) and sub.p > 0 and not (
                allow_dropout and type(sub) is nn.Dropout):
            return f"{what} draws random masks in training mode"
    return None


def build(cfg: ModelConfig, n_features: int, n_classes: int, seed: int,
          image_shape: Sequence[int] | None = None) -> nn.Module:
    """The model with its initial parameters (float64, CPU). Deterministic given the seed.
    Convolutional models need the data's ``image_shape`` (C, H, W)."""
    torch.manual_seed(seed)  # user builders and torch's default init draw from the global RNG
    if cfg.arch != "mlp" and not cfg.build:
        if image_shape is None:
            raise ValueError(f'model.arch = "{cfg.arch}" needs images (digits28, mnist, '
                             "fashion_mnist, or an npz of x (N, C, H, W)); this data is flat")
        specs, hidden = conv_specs(cfg)
        module = ConvNet(image_shape, specs, [*hidden, n_classes], cfg.activation, cfg.pooling)
        module = module.double()
        if cfg.init == "lecun":
            _lecun_init_(module, torch.Generator().manual_seed(seed))
    elif cfg.build:
        module = call_user_builder(cfg.build, n_features, n_classes)
        module = module.double()
        why = stateful_layer(module, allow_batchnorm=True, allow_dropout=True)
        if why is not None:
            raise ValueError(f"model.build: {cfg.build}: {why}, which a session's training "
                             "does not carry: return the module in eval mode (module.eval(): "
                             "fixed statistics, no dropout) or leave the layer out")
        # (on a copy: a forward in training mode would update the model's running statistics)
        check_traceable(copy.deepcopy(module), n_features, n_classes, cfg.build)
    else:
        module = MLP([n_features, *cfg.hidden, n_classes], cfg.activation).double()
        if cfg.init == "lecun":
            _lecun_init_(module, torch.Generator().manual_seed(seed))
    if cfg.init.endswith(".npz"):
        load_init(module, Path(cfg.init))
    elif cfg.init == "lecun" and cfg.build:
        _lecun_init_(module, torch.Generator().manual_seed(seed))
    return module


def load_init(module: nn.Module, path: Path) -> None:
    """Set a module's parameters from a .npz holding one array per parameter, named and shaped
    like ``named_parameters()`` (the layout of a session's ``theta0.npz``)."""
    try:
        arrays = read_npz(path)
    except ArchiveError as e:
        raise ValueError(f"model.init: {path}: {e}") from None
    named = dict(module.named_parameters())
    missing = sorted(set(named) - set(arrays))
    extra = sorted(set(arrays) - set(named))
    if missing or extra:
        raise ValueError(f"model.init: {path}: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, p in named.items():
            if tuple(arrays[name].shape) != tuple(p.shape):
                raise ValueError(f"model.init: {path}: {name} has shape "
                                 f"{tuple(arrays[name].shape)}, the model needs {tuple(p.shape)}")
            a = np.asarray(arrays[name], dtype=np.float64)
            if not np.isfinite(a).all():
                raise ValueError(f"model.init: {path}: {name} has non-finite values")
            p.copy_(torch.from_numpy(a))
