"""Shared fixtures: tiny problems that make exactness tests run in seconds."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import config
from engine.build import build

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "presets"


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor (telling -0.0 from +0.0, unlike torch.equal)."""
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    """40 rows of 5 features, 3 classes: small enough for finite differences over every
    parameter (P = 39 with one hidden layer of 4)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.8)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path


def tiny_config(npz: Path, **train_kw) -> config.RunConfig:
    """A float64 run on the tiny dataset; ``train_kw`` overrides [train] keys."""
    table = {
        "dtype": "float64", "device": "cpu",
        "data": {"dataset": "npz", "path": str(npz), "test_size": 8},
        "model": {"hidden": [4], "activation": "gelu_tanh"},
        "train": {"lr": 0.3, "batch_size": 8, "epochs": 2, **train_kw},
    }
    return config.from_dict(table)


def stored_j(tmp_path: Path, J: np.ndarray) -> Path:
    """J saved as a session stores it (column-major jacobian.npy); its path."""
    path = tmp_path / "jacobian.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=J.dtype, shape=J.shape,
                                    fortran_order=True)
    arr[:] = J
    arr.flush()
    del arr
    return path


def with_kernel(cfg: config.RunConfig, kernel: str | None) -> config.RunConfig:
    """``cfg`` with ``jacobian.kernel = kernel`` (unchanged when None)."""
    return cfg if kernel is None else replace(cfg, jacobian=replace(cfg.jacobian, kernel=kernel))


def make(cfg: config.RunConfig, kernel: str | None = None, device: str = "cpu"):
    """(problem, theta0) for a config on ``device`` (:func:`engine.build.build`), with the
    Jacobian kernel ``kernel`` instead of the config's when given."""
    b = build(with_kernel(cfg, kernel), device)
    return b.problem, b.theta0


@pytest.fixture(scope="session")
def quick_session(tmp_path_factory) -> Path:
    """A finished session of presets/quick.toml (run once, in this process). Tests may add
    files to it (report.md) but copy it before changing what it holds."""
    from engine.runner import run_session
    from engine.session import Session

    root = tmp_path_factory.mktemp("sessions")
    quick = PRESETS / "quick.toml"
    s = Session.create(root, "quick", config.load(quick), str(quick))
    assert run_session(s.path) == 0
    return s.path


def screen_lines(app) -> list[str]:
    """The app's screen as lines of text, rebuilt from its SVG screenshot (each text run there
    carries its column, x = 12.2 px per cell, and its row, the clip path line-N)."""
    import html
    import re

    svg = app.export_screenshot()
    rows: dict[int, dict[int, str]] = {}
    for x, row, text in re.findall(r'<text[^>]* x="([0-9.]+)"[^>]*clip-path="url\(#[^)]*-line-'
                                   r'(\d+)\)"[^>]*>(.*?)</text>', svg):
        col = round(float(x) / 12.2)
        for i, ch in enumerate(html.unescape(text).replace("\xa0", " ")):
            rows.setdefault(int(row), {})[col + i] = ch
    out = []
    for r in range(max(rows) + 1 if rows else 0):
        cells = rows.get(r, {})
        out.append("".join(cells.get(c, " ") for c in range(max(cells) + 1 if cells else 0)))
    return out


@contextlib.asynccontextmanager
async def running(app, size: tuple[int, int], **options):
    """``app.run_test(size=..., **options)`` that lets the startup building finish before the
    app is torn down, as quitting with ``q`` does (a test can end within the first frames).
    ``notifications=True`` shows the toasts (run_test hides them)."""
    async with app.run_test(size=size, **options) as pilot:
        yield pilot
        if hasattr(app, "settled"):  # the workbench (tests also host single panes)
            await app.settled()


async def until(pilot, cond, timeout: float = 30.0, what: str = "") -> None:
    """Let the app run until ``cond()`` holds; fail after ``timeout`` seconds naming ``what``."""
    import time

    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or cond}")
        await pilot.pause(0.05)


async def compare(app, pilot, choices: int, selected: list) -> "object":
    """Open the Compare pane (6), wait for its ``choices`` sessions, select ``selected``;
    returns the pane."""
    from tjac_tui.screens.compare import ComparePane

    await pilot.press("6")
    pane = app.query_one(ComparePane)
    await until(pilot, lambda: len(pane.choices) == choices, what="compare choices")
    pane.select(selected)
    return pane


def autograd_sgd(model, X, y, lr, batch_size, epochs, momentum=0.0, check=None):
    """theta_0 -> theta_T of SGD (PyTorch's momentum convention) run by torch.autograd on a
    copy of ``model`` as torch runs it (its buffers updating, its layers' own kernels), over
    the batches of (X, y) in order; ``check(copy)`` after each run."""

    def run(theta0):
        m = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(theta0.clone(), m.parameters())  # (it aliases)
        params = list(m.parameters())
        buf = [torch.zeros_like(p) for p in params]
        for _ in range(epochs):
            for a in range(0, len(X), batch_size):
                xb, yb = X[a:a + batch_size], y[a:a + batch_size]
                loss = torch.nn.functional.cross_entropy(m(xb), yb)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p_, b, g in zip(params, buf, grads):
                        b.mul_(momentum).add_(g)
                        p_.sub_(lr * b)
        if check is not None:
            check(m)
        return torch.nn.utils.parameters_to_vector(m.parameters()).detach()

    return run
