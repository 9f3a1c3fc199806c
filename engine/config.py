"""Run configuration: the preset sections, strict TOML loading, ``--set`` overrides, TOML output.

A run is described by a TOML preset::

    name = "paper-digits-sgd"
    seed = 0
    device = "auto"          # auto | cpu | cuda | cuda:N
    dtype = "float32"        # float32 | float64

    [data]   ...             # DataConfig
    [model]  ...             # ModelConfig
    [train]  ...             # TrainConfig
    [jacobian] ...           # JacobianConfig
    [spectrum] ...           # SpectrumConfig
    [analysis.NAME] ...      # registered analyses (engine.sections)
    [sweep] ...              # optional: several runs of this preset (engine.sections)

Every key is checked (:mod:`engine.schema`): an unknown key, a wrong type or an out-of-range
value raises :class:`ConfigError` whose message is one line naming the file and the dotted key,
e.g. ``presets/x.toml: train.lr: expected a positive number, got "fast"``.

Paths in a preset (``data.path``, ``model.init``, a file in ``model.build``) are relative to the
preset's folder; ``--set`` values are relative to the current directory. Both are made absolute
when the config is loaded, so the resolved config (``config.toml`` in a session) names the same
files from any working directory. Torch-free: loading and checking a preset imports neither
torch nor an analysis implementation.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import schema
from .device import DEVICE_NAME, DEVICE_NAMES
from .schema import (Check, Checked, ConfigError, Invalid, at, boolean, choice, integer, list_of, number,
                     option, optional, plugins, section, show, string)
from .schema import name as name_check
from .sections import ANALYSES, SweepConfig

__all__ = ["ConfigError", "RunConfig", "DataConfig", "ModelConfig", "TrainConfig",
           "JacobianConfig", "SpectrumConfig", "load", "loads", "from_dict", "dumps",
           "to_dict", "describe", "check_value", "json_schema", "parse_override",
           "apply_overrides", "PATH_KEYS"]

SEED_MAX = 2**32 - 1


def _device() -> Check:
    def check(v: Any) -> str:
        if isinstance(v, str) and re.fullmatch(DEVICE_NAME, v):
            return v
        raise Invalid(DEVICE_NAMES)

    return Check(check, DEVICE_NAMES, {"type": "string", "pattern": f"^({DEVICE_NAME})$"})


def _init() -> Check:
    desc = '"lecun", "torch" or a path to a .npz file'

    def check(v: Any) -> str:
        if isinstance(v, str) and "\x00" not in v and (v in ("lecun", "torch") or
                                                        v.endswith(".npz")):
            return v
        raise Invalid(desc)

    return Check(check, desc, {"anyOf": [{"enum": ["lecun", "torch"]},
                                         {"type": "string", "pattern": r"\.npz$"}]})


def _build() -> Check:
    desc = ('an import path "package.module:function", a file "path/to/file.py:function", or '
            '"" for the built-in MLP')

    def check(v: Any) -> str:
        if isinstance(v, str) and "\x00" not in v and (
                v == "" or (v.count(":") == 1 and all(p.strip() for p in v.split(":")))):
            return v
        raise Invalid(desc)

    return Check(check, desc, {"type": "string", "pattern": r"^([^:]+:[^:]+)?$"})


def _widths() -> Check:
    desc = "a list of positive integers (hidden layer widths)"

    def check(v: Any) -> list[int]:
        if not isinstance(v, list) or len(v) > 1000 or not all(
                isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 1_000_000
                for w in v):
            raise Invalid(desc)
        return list(v)

    return Check(check, desc, {"type": "array", "maxItems": 1000,
                               "items": {"type": "integer", "minimum": 1, "maximum": 1_000_000}})


# --------------------------------------------------------------------------------------------
# the sections


DATASETS = ("digits", "digits28", "mnist", "fashion_mnist", "npz")
IDX_DATASETS = ("mnist", "fashion_mnist")


@dataclass
class DataConfig(Checked):
    PREFIX = "data."

    dataset: str = option("digits", choice(*DATASETS),
                          "digits: UCI digits bundled with scikit-learn (8x8); digits28: the "
                          "same resized to 28x28, one channel; mnist / fashion_mnist: the four "
                          "IDX files in the folder data.path (never downloaded); npz: a local "
                          "file with x, y")
    path: str = option("", string(), 'dataset = "npz": the .npz file (x (N, D) or images '
                                     "(N, C, H, W), y (N,)); mnist / fashion_mnist: the folder "
                                     "of the IDX files (gzipped or not, or torchvision's "
                                     "MNIST/raw); relative to the preset's folder")
    variant: str = option("none", choice("none", "shuffled_labels", "white_noise"),
                          "none, shuffled_labels (permuted training labels) or white_noise "
                          "(uniform noise inputs of the same shape)")
    variant_seed: int = option(0, integer(0, SEED_MAX), "seed of the shuffled labels / white "
                                                        "noise")
    test_size: int = option(197, integer(1), "rows held out for the test set (mnist and "
                                             "fashion_mnist keep their own test set)")
    split_seed: int = option(0, integer(0, SEED_MAX), "random_state of the train/test split")
    n_train: int = option(0, integer(0), "keep only the first n training rows (0 = all)")
    n_test: int = option(0, integer(0), "keep only the first n test rows (0 = all)")


@dataclass
class ModelConfig(Checked):
    PREFIX = "model."

    arch: str = option("mlp", choice("mlp", "lenet5", "cnn"),
                       "mlp; lenet5 (conv 6@5x5 pad 2, pool, conv 16@5x5, pool, fc 120-84: "
                       "P = 61,706 on 28x28 images); cnn (model.channels convs of "
                       "model.kernel_size, each followed by a 2x2 pool, then model.hidden)")
    hidden: list = option([64], _widths(), "hidden layer widths of the MLP (of the cnn's "
                                           "fully connected part)")
    channels: list = option([8, 16], _widths(), "cnn: output channels of each convolution")
    kernel_size: int = option(3, integer(1, 15), "cnn: the convolutions' kernel size (padded "
                                                 "to keep the image size)")
    pooling: str = option("max", choice("max", "avg"),
                          "lenet5 / cnn: 2x2 pooling after each convolution")
    activation: str = option("gelu_tanh", choice("relu", "tanh", "gelu", "gelu_tanh"),
                             "activation: relu, tanh, gelu (exact erf) or gelu_tanh (the "
                             "paper's)")
    init: str = option("lecun", _init(),
                       "lecun (truncated normal var 1/fan_in, biases N(0, 1/fan_in)), torch "
                       "(nn.Linear default) or a .npz of named arrays")
    build: str = option("", _build(),
                        'a user model: "pkg.mod:build" (imported from the Python path) or '
                        '"file.py:build" (relative to the preset\'s folder); '
                        "build(in_features, n_classes) returns an nn.Module (replaces the MLP)")


@dataclass
class TrainConfig(Checked):
    PREFIX = "train."

    optimizer: str = option("sgd", choice("sgd", "adam"), "sgd (with optional momentum) or adam")
    lr: float = option(0.1, number(0, lo_open=True), "peak learning rate")
    momentum: float = option(0.0, number(0, 1, hi_open=True),
                             "SGD momentum (PyTorch convention: m = g + mu m, dampening 0)")
    nesterov: bool = option(False, boolean(), "Nesterov momentum (SGD)")
    weight_decay: float = option(0.0, number(0), "L2 penalty added to the gradient")
    beta1: float = option(0.9, number(0, 1, hi_open=True), "Adam beta1")
    beta2: float = option(0.999, number(0, 1, hi_open=True), "Adam beta2")
    eps: float = option(1e-8, number(0), "Adam epsilon outside the square root")
    eps_root: float = option(1e-8, number(0), "Adam epsilon inside the square root (> 0 keeps "
                                              "the step differentiable where v = 0)")
    schedule: str = option("constant", choice("constant", "cosine", "linear"),
                           "learning-rate decay after warmup: constant, cosine or linear (to "
                           "final_lr)")
    warmup_steps: int = option(0, integer(0), "linear warmup steps from 0 to lr")
    final_lr: float = option(0.0, number(0), "where cosine / linear decay heads: the decay "
                                             "runs from lr at the first step after warmup "
                                             "toward final_lr one step past the last (optax's "
                                             "convention), so the last step's rate is one "
                                             "decay step above it")
    batch_size: int = option(64, integer(0), "batch size (0 = full batch)")
    epochs: int = option(1, integer(1), "passes over the training set")
    shuffle: bool = option(False, boolean(),
                           "false: the same batch order every epoch (the paper); true: "
                           "reshuffled per epoch from the seed")
    drop_last: bool = option(False, boolean(), "drop a last incomplete batch")
    eval_every: int = option(1, integer(1), "evaluate full train/test loss every n steps")

    def validate(self, where: str, prefix: str) -> None:
        if self.final_lr > self.lr:
            raise ConfigError(f"{at(where)}{prefix}final_lr: expected a number <= {prefix}lr "
                              f"({self.lr}), got {show(self.final_lr)}")


@dataclass
class JacobianConfig(Checked):
    PREFIX = "jacobian."

    enabled: bool = option(True, boolean(), "compute the exact training Jacobian")
    chunk: int = option(0, integer(0), "tangent columns per chunk (0 = chosen from free memory)")
    kernel: str = option("auto", choice("auto", "fused", "generic"),
                         "auto: the fused kernel of the built-in MLP or conv net, torch.func for "
                         "a user model; fused: that kernel or an error; generic: torch.func")
    svd: bool = option(True, boolean(), "full SVD of J after it is computed")
    snapshots: list = option([], list_of(integer(1), "a list of step numbers >= 1",
                                         max_items=1000),
                             "also keep J_{0->t} after each of these steps (from the same "
                             "forward pass): each gets its SVD, regions and alignment under "
                             "snapshots/step_NNNNNN/")
    snapshot_every: int = option(0, integer(0), "also a snapshot every N steps (0 = none)")
    snapshot_epochs: list = option([], list_of(integer(1), "a list of epoch numbers >= 1",
                                               max_items=1000),
                                   "also a snapshot at the end of each of these epochs")
    snapshot_keep: str = option("jacobian", choice("jacobian", "svd", "spectrum"),
                                "what a snapshot keeps on disk once analysed: jacobian (J, its "
                                "SVD and summary), svd (S, U, Vh and summary: J deleted) or "
                                "spectrum (S, the alignment and the summary only)")


@dataclass
class SpectrumConfig(Checked):
    PREFIX = "spectrum."

    bulk_tol: float = option(1e-3, number(0, 1, lo_open=True, hi_open=True),
                             "the region rule's tolerance, used everywhere: bulk |s - 1| <= "
                             "bulk_tol, chaotic s > 1 + bulk_tol, stable s < 1 - bulk_tol")
    vectors: bool = option(True, boolean(),
                           "compute U and V with the singular values (the alignment, the "
                           "regions' subspaces and every analysis need them); false: the "
                           "singular values only, in a fraction of the memory")
    svd_dtype: str = option("float64", choice("float64", "float32"),
                            "precision of the SVD: float32 halves its memory (the LeNet-5 SVD "
                            "with vectors fits an 80 GB GPU); its error bound is ~eps32 x s_1 "
                            "(benchmarks/svd_precision.py measures the change on a J)")
    svd_method: str = option("gram", choice("gram", "gesdd"),
                             "the float64 SVD: gram (eigh of J J^T, then V = J^T U / s: on the "
                             "CPU in a child process, engine/svdjob.py; on a GPU in torch, "
                             "cuSOLVER's syevd; s near 1 to ~1e-14, singular values below "
                             "~1e-8 s_1 unresolved; on the CPU ~2x faster than gesdd and a "
                             "fraction of its memory) or gesdd (the direct SVD: LAPACK's "
                             "gesdd; on a GPU torch.linalg.svd, cuSOLVER's gesvdj); float32 "
                             "SVDs are always direct")
    method: str = option("exact", choice("exact", "matfree"),
                         "exact: J stored and its full SVD; matfree: J never formed (for P "
                         "too large to store J): the top k singular values and the bulk size "
                         "estimated from J v and J^T u products (engine/matfree.py)")
    k: int = option(20, integer(1, 10_000), "matfree: how many of the largest singular values")
    top_tol: float = option(1e-8, number(0, 1, lo_open=True, hi_open=True),
                            "matfree: relative accuracy asked of the top k singular values "
                            "(svds tol); looser is faster")
    solver: str = option("propack", choice("propack", "arpack", "lobpcg"),
                         "matfree: scipy svds solver for the top k (propack needed the fewest "
                         "products in benchmarks/matfree.py; a result whose vectors are not "
                         "orthonormal, which inexact products can give it, is computed again "
                         "by arpack)")
    probes: int = option(8, integer(2, 1024),
                         "matfree: random probe vectors of the bulk-size estimate (stochastic "
                         "Lanczos quadrature); its statistical error falls as 1/sqrt(probes)")
    lanczos_steps: int = option(60, integer(2, 100_000),
                                "matfree: Lanczos steps per probe (each one J v and one J^T u "
                                "product); more steps narrow the quadrature's bounds")
    count_tols: list = option([1e-3, 1e-2], list_of(number(0, 1, lo_open=True, hi_open=True),
                                                    "a list of tolerances in (0, 1)",
                                                    min_items=1, max_items=16),
                              "matfree: the tolerances tau of the bulk-size estimates "
                              "(singular values in [1 - tau, 1 + tau])")
    deflate: bool = option(True, boolean(),
                           "matfree: the bulk-size estimate works on J^T J with the top k right "
                           "singular vectors projected out (their values counted exactly): the "
                           "window is then resolved within s_(k+1)^2 instead of s_1^2, so its "
                           "bounds close in after fewer Lanczos steps")
    matfree_dtype: str = option("float64", choice("float64", "float32"),
                                "matfree: precision of the J v / J^T u products")


@dataclass
class RunConfig:
    """A run: its keys and sections (each a table of a preset). Made in Python, it is checked
    like a loaded preset, with the same one-line messages less the file name:
    ``RunConfig(train=TrainConfig(lr=0.05), seed=1)``, or sections given as dicts
    (``RunConfig(train={"lr": 0.05})``)."""

    name: str = option("run", name_check(), "run name (default session name prefix)")
    description: str = option("", string(), "free text")
    seed: int = option(0, integer(0, SEED_MAX), "seed of the initialisation and batch order")
    device: str = option("auto", _device(), "auto picks CUDA when available")
    dtype: str = option("float32", choice("float32", "float64"), "dtype of training and J")
    threads: int = option(0, integer(0, 4096), "CPU threads for torch (0 = one per available CPU)")
    tf32: bool = option(False, boolean(),
                        "allow TF32 tensor-core matrix products on CUDA (faster; a 10-bit "
                        "mantissa gives J errors of ~1e-3, the size of the bulk tolerance)")
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    train: TrainConfig = section(TrainConfig)
    jacobian: JacobianConfig = section(JacobianConfig)
    spectrum: SpectrumConfig = section(SpectrumConfig)
    analysis: dict = plugins(ANALYSES, "analysis", "the paper's analyses, run after the spectrum")
    sweep: SweepConfig | None = optional(SweepConfig, "several runs of this preset (a grid, "
                                                      "paired lists or named points), compared")

    def __post_init__(self) -> None:
        if not schema.building():
            schema.check_instance(self)
            _cross_checks(self, "")
            if self.sweep is not None:
                _sweep_checks(self, "")


# --------------------------------------------------------------------------------------------
# paths


def _is_build_file(v: str) -> bool:
    return v.split(":", 1)[0].endswith(".py")


# (section, key, applies-to-value): the keys whose relative paths are made absolute
PATH_KEYS = (("data", "path", lambda v: bool(v)),
             ("model", "init", lambda v: v.endswith(".npz")),
             ("model", "build", _is_build_file))


def _absolute(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(path))
    return os.path.normpath(p if p.is_absolute() else base / p)


def absolute_paths(table: dict, base: Path | None) -> dict:
    """A copy of a raw preset table whose relative paths are made absolute against ``base``
    (default: the current directory). Values of the wrong type are left for the checks."""
    base = Path(os.path.abspath(base if base is not None else Path.cwd()))
    out = dict(table)
    for sec, key, applies in PATH_KEYS:
        node = out.get(sec)
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        v = node[key]
        if "\x00" in v or not applies(v):
            continue
        node = out[sec] = dict(node)
        if sec == "model" and key == "build":
            file, fn = v.split(":", 1)
            node[key] = f"{_absolute(file, base)}:{fn}"
        else:
            node[key] = _absolute(v, base)
    return out


def _cross_checks(cfg: RunConfig, where: str) -> None:
    """Rules that involve more than one key, and files that must exist."""
    w = at(where)
    if cfg.data.dataset == "npz":
        if not cfg.data.path:
            raise ConfigError(f'{w}data.path: expected a .npz file when data.dataset = '
                              '"npz"')
        if not Path(cfg.data.path).is_file():
            raise ConfigError(f"{w}data.path: no such file: {cfg.data.path}")
    if cfg.model.build and cfg.model.arch != "mlp":
        raise ConfigError(f'{w}model.arch: "{cfg.model.arch}" and model.build both name '
                          "a model; keep one")
    if cfg.model.init.endswith(".npz") and not Path(cfg.model.init).is_file():
        raise ConfigError(f"{w}model.init: no such file: {cfg.model.init}")
    if cfg.model.build and _is_build_file(cfg.model.build):
        file = cfg.model.build.split(":", 1)[0]
        if not Path(file).is_file():
            raise ConfigError(f"{w}model.build: no such file: {file}")
    if cfg.train.optimizer == "adam" and cfg.jacobian.enabled and cfg.train.eps_root <= 0:
        raise ConfigError(f"{w}train.eps_root: expected a positive number for the "
                          "Jacobian of Adam (sqrt(v) is not differentiable at v = 0), got "
                          f"{show(cfg.train.eps_root)}")
    if cfg.spectrum.method == "matfree":
        needing = [n for n, a in cfg.analysis.items() if a.enabled]
        if needing:
            raise ConfigError(f'{w}spectrum.method: analysis.{needing[0]} needs the exact '
                              'SVD: set spectrum.method = "exact" or switch the analysis off')
    if not cfg.spectrum.vectors:
        needing = [n for n, a in cfg.analysis.items() if a.enabled]
        if needing:
            raise ConfigError(f"{w}spectrum.vectors: analysis.{needing[0]} needs the "
                              "singular vectors: set spectrum.vectors = true or switch it off")
    snap = cfg.jacobian.snapshots or cfg.jacobian.snapshot_every or cfg.jacobian.snapshot_epochs
    if snap and cfg.spectrum.method == "matfree":
        raise ConfigError(f'{w}jacobian.snapshots: snapshots need the exact J (spectrum.'
                          'method = "exact")')
    if snap and not cfg.jacobian.svd and cfg.jacobian.snapshot_keep != "jacobian":
        raise ConfigError(f'{w}jacobian.snapshot_keep: "{cfg.jacobian.snapshot_keep}" '
                          'keeps the SVD of each snapshot, but jacobian.svd = false')
    if cfg.model.build and cfg.jacobian.kernel == "fused":
        raise ConfigError(f'{w}jacobian.kernel: "fused" needs a built-in model (mlp, '
                          f"lenet5, cnn), but model.build = {show(cfg.model.build)}")


# --------------------------------------------------------------------------------------------
# loading


def study_as_sweep(table: dict) -> dict:
    """A table with the ``[study]`` section of earlier versions, as the ``[sweep]`` it is: its
    runs are named points, the preset itself included unless it said otherwise, with the
    bulk-overlap analysis."""
    if not isinstance(table.get("study"), dict) or "sweep" in table:
        return table
    out = dict(table)
    st = dict(out.pop("study"))
    if "runs" in st:
        st["points"] = st.pop("runs")
    st.setdefault("include_base", True)
    st.setdefault("reference", "base" if st["include_base"] else "")
    st.setdefault("overlap", True)
    out["sweep"] = st
    return out


def _sweep_checks(cfg: RunConfig, where: str) -> None:
    """Every swept key is a config key and every value passes its check."""
    w = at(where)
    def checked(key: str, value: Any, label: str) -> None:
        try:
            field_info(key).check(value)
        except Invalid as e:
            raise ConfigError(f"{w}{label}: expected {e}, got {show(value)}") from None

    for key, values in cfg.sweep.values.items():
        if key.startswith("sweep.") or key == "sweep":
            raise ConfigError(f"{w}sweep.values.{key}: a sweep cannot sweep itself")
        try:
            field_info(key)
        except KeyError:
            raise ConfigError(f"{w}sweep.values.{key}: not a config key") from None
        for v in values:
            checked(key, v, f"sweep.values.{key}")
    for d in cfg.sweep.devices:
        checked("device", d, "sweep.devices")


def from_dict(table: dict, where: str = "<config>", base: Path | None = None) -> RunConfig:
    """Validate a parsed TOML table into a :class:`RunConfig`; relative paths are taken
    relative to ``base`` (default: the current directory)."""
    if isinstance(table, dict):
        table = absolute_paths(study_as_sweep(table), base)
    cfg = schema.build(RunConfig, table, where)
    _cross_checks(cfg, where)
    if cfg.sweep is not None:
        _sweep_checks(cfg, where)
    return cfg


def _parse_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid TOML: values nested too deeply") from None
    except ValueError as e:  # an integer of more than 4300 digits (Python's conversion limit)
        raise ConfigError(f"{where}: invalid TOML: {too_long(e)}") from None


def too_long(e: ValueError) -> str:
    """What Python's refusal to convert a huge integer string means, in one clause."""
    if "digits" in str(e):
        return "an integer with thousands of digits (no key takes one)"
    return str(e)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.05"`` -> (["train", "lr"], 0.05). The value is read as a TOML value; a bare
    word that is not valid TOML (``relu``) is taken as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. train.lr=0.05")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {text}: expected KEY=VALUE with a dotted key, e.g. "
                          "train.lr=0.05")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise ConfigError(f"--set {text}: values nested too deeply") from None
    except ValueError as e:  # (text of thousands of digits: not echoed)
        raise ConfigError(f"--set {key}: {too_long(e)}") from None
    return parts, value


def _merge(node: dict, key: str, value: Any) -> None:
    """``node[key] = value``; a table merges into a table already there (``--set
    'train={lr=1}'`` changes lr and keeps the other [train] keys)."""
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        merged = dict(node[key])
        for k, v in value.items():
            _merge(merged, k, v)
        node[key] = merged
    else:
        node[key] = value


def apply_overrides(table: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides to a raw table (validated later, with the rest)."""
    table = copy.deepcopy(table)
    for text in overrides:
        path, value = parse_override(text)
        node = table
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {'.'.join(path)}: {part} is not a table")
        _merge(node, path[-1], value)
    return table


def read_table(path: str | Path) -> dict:
    """A preset file parsed (not validated), its relative paths made absolute."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (IsADirectoryError, NotADirectoryError):
        raise ConfigError(f"{where}: not a file") from None
    except PermissionError:
        raise ConfigError(f"{where}: cannot read: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: cannot read: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror or e}") from None
    return absolute_paths(_parse_toml(text, where), path.parent)


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a preset file, then apply and validate ``--set`` overrides."""
    where = str(path)
    table = read_table(path)
    cfg = from_dict(table, where)  # the file alone must be valid
    if not overrides:
        return cfg
    return from_dict(apply_overrides(table, overrides), f"{where} (with --set)")


def loads(text: str, where: str = "<string>", base: Path | None = None) -> RunConfig:
    """Load and validate a preset given as TOML text (``where`` names it in messages; relative
    paths are taken relative to ``base``, default the current directory)."""
    return from_dict(_parse_toml(text, where), where, base)


def to_dict(cfg: RunConfig) -> dict:
    """The config as a TOML-shaped table (every key; no [sweep] when there is none)."""
    return schema.to_table(cfg)


def dumps(cfg: RunConfig) -> str:
    """The resolved config as TOML (every key, defaults included; no empty table for the
    optional sections that are off)."""
    import tomli_w

    d = to_dict(cfg)
    return tomli_w.dumps({k: v for k, v in d.items() if not (isinstance(v, dict) and not v)})


def describe(with_plugins: bool = False) -> list[schema.FieldInfo]:
    """Every key of a run (with_plugins: also every key of every registered analysis and of
    [sweep]) with its default, help and check: the reference the TUI and docs/config.md show."""
    rows = schema.describe(RunConfig, with_plugins=with_plugins)
    return rows if with_plugins else [r for r in rows if not r.key.startswith("sweep.")]


def field_info(key: str) -> schema.FieldInfo:
    """The declaration of one dotted key (KeyError when there is none)."""
    return schema.lookup(RunConfig, key)


def check_value(key: str, value: Any) -> Any:
    """Validate one dotted key's value (the TUI's validation as you type)."""
    return schema.check_value(RunConfig, key, value)


def json_schema() -> dict:
    """The JSON Schema of a preset (``tjac schema``)."""
    return schema.json_schema(RunConfig, title="tjac preset")
