"""Shared fixtures: tiny problems that make exactness tests run in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine import config, data, models, train

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "presets"


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


def make(cfg: config.RunConfig, kernel: str = "auto"):
    """(problem, theta0) for a config, on the CPU."""
    ds = data.load(cfg.data)
    module = models.build(cfg.model, ds.n_features, ds.n_classes, cfg.seed)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    problem = train.make_problem(module, ds, cfg.train, cfg.seed, torch.device("cpu"), dtype,
                                 kernel)
    return problem, train.initial_theta(module, "cpu", dtype)
