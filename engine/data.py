"""Datasets: UCI digits (as bundled with scikit-learn), user ``.npz`` files, the paper's variants.

scikit-learn is needed only for the digits themselves (it ships them); ``.npz`` data and the
train/test split (:func:`split`, the same rows as scikit-learn's) need only numpy.

All arrays are numpy: inputs float64 (N, D), labels int64 (N,). The model moves them to its
device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig


@dataclass
class Dataset:
    x_train: np.ndarray  # (N_train, D) float64
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, D) float64
    y_test: np.ndarray  # (N_test,) int64
    n_classes: int
    name: str

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def split(x: np.ndarray, y: np.ndarray, test_size: int, seed: int):
    """(x_train, x_test, y_train, y_test): the split of scikit-learn's
    ``train_test_split(x, y, test_size=test_size, random_state=seed)``, row for row (one
    permutation from ``np.random.RandomState(seed)``: the first ``test_size`` rows of it are the
    test set, the rest the training set), without importing scikit-learn."""
    n = len(x)
    if test_size >= n:
        raise ValueError(f"data.test_size = {test_size} leaves no training rows ({n} in all)")
    perm = np.random.RandomState(seed).permutation(n)
    test, train = perm[:test_size], perm[test_size:]
    return x[train], x[test], y[train], y[test]


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digits bundled with scikit-learn, features divided by 16 (range [0, 1])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float64) / 16.0, d.target.astype(np.int64)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError(f"{path}: expected a .npz archive with arrays x and y")
            if "x" not in f or "y" not in f:
                raise ValueError(f"{path}: expected arrays 'x' and 'y', found {sorted(f.files)}")
            x = np.asarray(f["x"], dtype=np.float64)
            y = np.asarray(f["y"])
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e.__class__.__name__})") from None
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{path}: x must have shape (N, ...) with N > 0, got {x.shape}")
    x = x.reshape(len(x), -1)
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{path}: x has {bad} non-finite value(s) (NaN or infinity)")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{path}: y must have shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"{path}: y must hold non-negative integer class labels")
    return x, y.astype(np.int64)


def load(cfg: DataConfig) -> Dataset:
    """Load the dataset a config names (its path is absolute: :mod:`engine.config`), split it,
    and apply its variant."""
    if cfg.dataset == "digits":
        x, y = load_digits_raw()
        name = "digits"
    else:
        path = Path(cfg.path)
        x, y = load_npz(path)
        name = path.stem
    x_tr, x_te, y_tr, y_te = split(x, y, cfg.test_size, cfg.split_seed)
    if cfg.n_train:
        x_tr, y_tr = x_tr[: cfg.n_train], y_tr[: cfg.n_train]
    rng = np.random.default_rng(cfg.variant_seed)
    if cfg.variant == "shuffled_labels":
        y_tr = rng.permutation(y_tr)
        name += "+shuffled_labels"
    elif cfg.variant == "white_noise":
        x_tr = rng.uniform(0.0, 1.0, size=x_tr.shape)
        name += "+white_noise"
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return Dataset(np.ascontiguousarray(x_tr), np.ascontiguousarray(y_tr),
                   np.ascontiguousarray(x_te), np.ascontiguousarray(y_te), n_classes, name)


def probe_sets(ds: Dataset, seed: int = 0) -> dict[str, np.ndarray]:
    """Input sets for out-of-distribution probes: train, test, Gaussian white noise N(0, 1) of
    the training shape, and inverted images 1 - x."""
    rng = np.random.default_rng(seed)
    return {
        "train": ds.x_train,
        "test": ds.x_test,
        "gaussian_noise": rng.standard_normal(ds.x_train.shape),
        "inverted": 1.0 - ds.x_train,
    }
