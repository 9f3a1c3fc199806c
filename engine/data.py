"""Datasets: UCI digits (as bundled with scikit-learn), digits28, MNIST and Fashion-MNIST from
local IDX files, user ``.npz`` files, and the paper's variants.

scikit-learn is needed only for the digits themselves (it ships them); everything else, the
train/test split included (:func:`split`, the same rows as scikit-learn's), needs only numpy
(and scipy for digits28). Nothing is ever downloaded: MNIST is read from a folder the user
points ``data.path`` at.

All arrays are numpy: inputs float64 flattened to (N, D), labels int64 (N,). Image datasets
also give ``image_shape`` (C, H, W): a convolutional model reshapes its input to it, an MLP
uses the flat D = C H W. The model moves the arrays to its device and dtype.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig
from .files import ArchiveError, read_npz
from .schema import DataError



@dataclass
class Dataset:
    x_train: np.ndarray  # (N_train, D) float64
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, D) float64
    y_test: np.ndarray  # (N_test,) int64
    n_classes: int
    name: str
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of image datasets

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


# --------------------------------------------------------------------------------------------
# MNIST-format files (IDX)

IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
# the folders torchvision leaves behind, under the folder the user names
TORCHVISION_DIRS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def find_idx(folder: Path, dataset: str) -> dict[str, Path]:
    """The four IDX files of an MNIST-format dataset in ``folder``, gzipped or not, also in the
    ``MNIST/raw`` (``FashionMNIST/raw``) layout torchvision writes. :class:`DataError` naming
    the first file that is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (data.path must name the folder that holds "
                        f"the {dataset} IDX files)")
    places = [folder, folder / "raw", folder / TORCHVISION_DIRS[dataset] / "raw"]
    out = {}
    for key, name in IDX_FILES.items():
        found = next((d / f for d in places for f in (name, name + ".gz")
                      if (d / f).is_file()), None)
        if found is None:
            raise DataError(f"{folder}: no {name} (or {name}.gz) there, nor in raw/ or "
                            f"{TORCHVISION_DIRS[dataset]}/raw/")
        out[key] = found
    return out


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array; :class:`DataError` if it is not one."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    need = head + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != need:
        raise DataError(f"{path}: {len(raw)} bytes, an IDX array of shape {dims} needs {need}")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims)


def load_idx_set(folder: Path, dataset: str) -> tuple[np.ndarray, ...]:
    """(x_train (N, 1, 28, 28) in [0, 1], y_train, x_test, y_test) of MNIST-format data."""
    files = find_idx(folder, dataset)
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split_ in ("train", "test"):
        x, y = arrays[f"{split_}_x"], arrays[f"{split_}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{files[split_ + '_x']}: images of shape {x.shape} do not match "
                            f"labels of shape {y.shape}")
    def images(x):
        return (x.astype(np.float64) / 255.0)[:, None, :, :]

    return (images(arrays["train_x"]), arrays["train_y"].astype(np.int64),
            images(arrays["test_x"]), arrays["test_y"].astype(np.int64))


def split(x: np.ndarray, y: np.ndarray, test_size: int, seed: int):
    """(x_train, x_test, y_train, y_test): the split of scikit-learn's
    ``train_test_split(x, y, test_size=test_size, random_state=seed)``, row for row (one
    permutation from ``np.random.RandomState(seed)``: the first ``test_size`` rows of it are the
    test set, the rest the training set), without importing scikit-learn."""
    n = len(x)
    if test_size >= n:
        raise DataError(f"data.test_size = {test_size} leaves no training rows ({n} in all)")
    perm = np.random.RandomState(seed).permutation(n)
    test, train = perm[:test_size], perm[test_size:]
    return x[train], x[test], y[train], y[test]


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digits bundled with scikit-learn, features divided by 16 (range [0, 1]).
    Read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, what its
    ``load_digits`` parses the same way) without importing scikit-learn, which would cost a
    second and ~75 MB of memory in every worker; ``load_digits`` where the file is not found."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "datasets" / "data" / "digits.csv.gz").is_file():
            csv = Path(root) / "datasets" / "data" / "digits.csv.gz"
    if csv is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data.astype(np.float64) / 16.0, d.target.astype(np.int64)
    with gzip.open(csv, "rt") as f:
        raw = np.loadtxt(f, delimiter=",")
    return raw[:, :-1] / 16.0, raw[:, -1].astype(np.int64)


def digits28(x: np.ndarray) -> np.ndarray:
    """8x8 digits (N, 64) resized to 28x28 (N, 1, 28, 28) by linear interpolation (scipy's
    zoom, order 1), clipped to [0, 1]: MNIST's shape, so convolutional presets and tests run
    anywhere without MNIST."""
    from scipy.ndimage import zoom

    out = zoom(x.reshape(-1, 8, 8), (1, 3.5, 3.5), order=1, mode="nearest", grid_mode=True)
    return np.clip(out, 0.0, 1.0)[:, None, :, :]


# the largest class label a dataset may use (the model gets one output per class up to it)
MAX_CLASSES = 100_000


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a user's ``.npz`` (arrays ``x``: (N, D), (N, H, W) or (N, C, H, W) of real
    numbers, ``y``: (N,) integer class labels 0 .. C-1), each checked before use
    (:func:`engine.files.read_npz`); :class:`DataError` naming the file and what is wrong."""
    try:
        arrays = read_npz(path, ["x", "y"], kinds="biuf")
    except ArchiveError as e:
        raise DataError(f"{path}: {e}") from None
    x, y = arrays["x"].astype(np.float64), arrays["y"]
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{path}: x must have shape (N, ...) with N > 0, got {x.shape}")
    if x.ndim == 3:  # (N, H, W): one channel
        x = x[:, None]
    elif x.ndim != 4:  # images stay (N, C, H, W) for convolutional models; the rest is flat
        x = x.reshape(len(x), -1)
    if x.shape[1] == 0 or x[0].size == 0:
        raise DataError(f"{path}: x has no features (shape {arrays['x'].shape})")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise DataError(f"{path}: x has {bad} non-finite value(s) (NaN or infinity)")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: y must have shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_:
        raise DataError(f"{path}: y must hold integer class labels 0 .. C-1, got {y.dtype}")
    # compared in the file's own type: a uint64 label past int64's range must not wrap
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise DataError(f"{path}: y's labels must be class numbers 0 .. C-1 (C at most "
                        f"{MAX_CLASSES:,}), got labels from {y.min()} to {y.max()}")
    y = y.astype(np.int64)
    absent = np.setdiff1d(np.arange(int(y.max()) + 1), y)
    if absent.size:
        shown = ", ".join(map(str, absent[:5])) + (", ..." if absent.size > 5 else "")
        raise DataError(f"{path}: y's labels must be 0 .. C-1 with every class present; "
                        f"{absent.size} of 0 .. {int(y.max())} never occur ({shown}): number "
                        "the classes consecutively")
    return x, y


def load(cfg: DataConfig) -> Dataset:
    """Load the dataset a config names (its path is absolute: :mod:`engine.config`), split it
    (MNIST-format data keep their own test set), and apply its variant."""
    image_shape = None
    if cfg.dataset in ("digits", "digits28"):
        x, y = load_digits_raw()
        name = cfg.dataset
        if cfg.dataset == "digits28":
            x = digits28(x)
        x_tr, x_te, y_tr, y_te = split(x, y, cfg.test_size, cfg.split_seed)
    elif cfg.dataset in TORCHVISION_DIRS:
        if not cfg.path:
            raise DataError(f'data.path: set it to the folder that holds the {cfg.dataset} IDX '
                            f"files ({IDX_FILES['train_x']}[.gz] and the three others; "
                            "nothing is downloaded), e.g. --set data.path=/data/mnist")
        x_tr, y_tr, x_te, y_te = load_idx_set(Path(cfg.path), cfg.dataset)
        name = cfg.dataset
    else:
        path = Path(cfg.path)
        x, y = load_npz(path)
        name = path.stem
        x_tr, x_te, y_tr, y_te = split(x, y, cfg.test_size, cfg.split_seed)
    if x_tr.ndim == 4:
        image_shape = tuple(int(d) for d in x_tr.shape[1:])
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    if cfg.n_train:
        x_tr, y_tr = x_tr[: cfg.n_train], y_tr[: cfg.n_train]
    if cfg.n_test:
        x_te, y_te = x_te[: cfg.n_test], y_te[: cfg.n_test]
    rng = np.random.default_rng(cfg.variant_seed)
    if cfg.variant == "shuffled_labels":
        y_tr = rng.permutation(y_tr)
        name += "+shuffled_labels"
    elif cfg.variant == "white_noise":
        x_tr = rng.uniform(0.0, 1.0, size=x_tr.shape)
        name += "+white_noise"
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return Dataset(np.ascontiguousarray(x_tr), np.ascontiguousarray(y_tr),
                   np.ascontiguousarray(x_te), np.ascontiguousarray(y_te), n_classes, name,
                   image_shape)


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
