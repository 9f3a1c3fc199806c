"""The built-in architectures as arithmetic (torch-free): their convolutions, the shape of the
maps after each convolution and pooling, and their parameter count.

:mod:`engine.models` builds the modules from these specs; :mod:`engine.plan` counts P from them
without importing torch, so the Setup pane and ``tjac run --plan`` can size a LeNet-5 run
instantly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .config import ModelConfig

__all__ = ["ConvSpec", "conv_specs", "conv_output", "parameter_count", "LENET5"]


@dataclass(frozen=True)
class ConvSpec:
    """One convolution: output channels, square kernel, zero padding (stride 1), followed by
    the activation and a 2x2 pooling of stride 2."""

    out_channels: int
    kernel: int
    padding: int


# the paper's appendix: conv 6@5x5 padding 2, pool, conv 16@5x5, pool, then 120-84-classes
LENET5 = (ConvSpec(6, 5, 2), ConvSpec(16, 5, 0))
LENET5_HIDDEN = (120, 84)


def conv_specs(cfg: ModelConfig) -> tuple[list[ConvSpec], list[int]]:
    """(convolutions, hidden widths of the fully connected part) of a built-in conv arch."""
    if cfg.arch == "lenet5":
        return list(LENET5), list(LENET5_HIDDEN)
    if cfg.arch == "cnn":
        k = cfg.kernel_size
        return [ConvSpec(c, k, k // 2) for c in cfg.channels], list(cfg.hidden)
    raise ValueError(f"model.arch = {cfg.arch!r} has no convolutions")


def conv_output(in_shape: Sequence[int], specs: Sequence[ConvSpec]) -> tuple[int, int, int]:
    """(C, H, W) of the maps after every convolution and pooling; ValueError when the images
    are too small for them."""
    c, h, w = (int(d) for d in in_shape)
    for sp in specs:
        c = sp.out_channels
        h = (h + 2 * sp.padding - sp.kernel + 1) // 2
        w = (w + 2 * sp.padding - sp.kernel + 1) // 2
        if h < 1 or w < 1:
            raise ValueError(f"model: images of shape {tuple(in_shape)} are too small for "
                             f"{len(specs)} convolution(s) and poolings")
    return c, h, w


def parameter_count(cfg: ModelConfig, n_features: int, n_classes: int,
                    image_shape: Sequence[int] | None = None) -> int:
    """P of a built-in architecture (not of a user's ``model.build``)."""
    if cfg.build:
        raise ValueError("a user model is counted by building it")
    if cfg.arch == "mlp":
        widths = [n_features, *cfg.hidden, n_classes]
        return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    if image_shape is None:
        raise ValueError(f'model.arch = "{cfg.arch}" needs images (digits28, mnist, '
                         "fashion_mnist, or an npz of x (N, C, H, W)); this data is flat")
    specs, hidden = conv_specs(cfg)
    P, c = 0, int(image_shape[0])
    for sp in specs:
        P += sp.out_channels * c * sp.kernel ** 2 + sp.out_channels
        c = sp.out_channels
    c, h, w = conv_output(image_shape, specs)
    widths = [c * h * w, *hidden, n_classes]
    return P + sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
