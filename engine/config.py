"""Run configuration: dataclasses, strict TOML loading, ``--set`` overrides, TOML output.

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

Every key is checked: an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` whose message is one line naming the file and the dotted key, e.g.
``presets/x.toml: train.lr: expected a positive number, got "fast"``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w


class ConfigError(ValueError):
    """A preset or override is invalid; ``str(err)`` is the one-line message for the user."""


# --------------------------------------------------------------------------------------------
# field checks: each returns the normalised value or raises _Invalid(expected-description)


class _Invalid(Exception):
    pass


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            desc: str | None = None) -> Callable[[Any], float]:
    if desc is None:
        if lo == 0 and lo_open and hi is None:
            desc = "a positive number"
        elif lo == 0 and hi is None:
            desc = "a non-negative number"
        elif lo is not None and hi is not None:
            desc = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if lo_open else ']'}"
        else:
            desc = "a number"

    def check(v: Any) -> float:
        if not _is_number(v) or not math.isfinite(v):
            raise _Invalid(desc)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise _Invalid(desc)
        if hi is not None and v > hi:
            raise _Invalid(desc)
        return float(v)

    return check


def _integer(lo: int | None = None, hi: int | None = None) -> Callable[[Any], int]:
    if lo == 0 and hi is None:
        desc = "a non-negative integer"
    elif lo == 1 and hi is None:
        desc = "a positive integer"
    elif lo is not None and hi is not None:
        desc = f"an integer in [{lo}, {hi}]"
    else:
        desc = "an integer"

    def check(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise _Invalid(desc)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Invalid(desc)
        return v

    return check


def _choice(*options: str) -> Callable[[Any], str]:
    desc = "one of " + ", ".join(f'"{o}"' for o in options)

    def check(v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            raise _Invalid(desc)
        return v

    return check


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise _Invalid("a string")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Invalid("true or false")
    return v


def _widths(v: Any) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                                          for w in v):
        raise _Invalid("a list of positive integers (hidden layer widths)")
    return list(v)


def _device(v: Any) -> str:
    if isinstance(v, str) and (v in ("auto", "cpu", "cuda") or
                               (v.startswith("cuda:") and v[5:].isdigit())):
        return v
    raise _Invalid('"auto", "cpu", "cuda" or "cuda:N"')


def _init(v: Any) -> str:
    if isinstance(v, str) and (v in ("lecun", "torch") or v.endswith(".npz")):
        return v
    raise _Invalid('"lecun", "torch" or a path to a .npz file')


def _build(v: Any) -> str:
    if isinstance(v, str) and (v == "" or (v.count(":") == 1 and all(v.split(":")))):
        return v
    raise _Invalid('an import path "package.module:function" (or "" for the built-in MLP)')


def _f(default: Any, check: Callable[[Any], Any], help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"check": check, "help": help})
    return field(default=default, metadata={"check": check, "help": help})


# --------------------------------------------------------------------------------------------
# the sections


@dataclass
class DataConfig:
    dataset: str = _f("digits", _choice("digits", "npz"),
                      "digits: UCI digits bundled with scikit-learn; npz: a local file with x, y")
    path: str = _f("", _string, "the .npz file for dataset = \"npz\" (arrays x (N, D) and y (N,))")
    variant: str = _f("none", _choice("none", "shuffled_labels", "white_noise"),
                      "none, shuffled_labels (permuted training labels) or white_noise "
                      "(uniform noise inputs of the same shape)")
    variant_seed: int = _f(0, _integer(0), "seed of the shuffled labels / white noise")
    test_size: int = _f(197, _integer(1), "rows held out for the test set")
    split_seed: int = _f(0, _integer(0), "random_state of the train/test split")
    n_train: int = _f(0, _integer(0), "keep only the first n training rows (0 = all)")


@dataclass
class ModelConfig:
    hidden: list = _f([64], _widths, "hidden layer widths of the MLP")
    activation: str = _f("gelu_tanh", _choice("relu", "tanh", "gelu", "gelu_tanh"),
                         "activation: relu, tanh, gelu (exact erf) or gelu_tanh (the paper's)")
    init: str = _f("lecun", _init,
                   "lecun (truncated normal var 1/fan_in, biases N(0, 1/width)), torch (nn.Linear "
                   "default) or a .npz of named arrays")
    build: str = _f("", _build, "a user model \"pkg.mod:build\"; build(in_features, n_classes) "
                                "returns an nn.Module (replaces the MLP)")


@dataclass
class TrainConfig:
    optimizer: str = _f("sgd", _choice("sgd", "adam"), "sgd (with optional momentum) or adam")
    lr: float = _f(0.1, _number(0, lo_open=True), "peak learning rate")
    momentum: float = _f(0.0, _number(0, 1, desc="a number in [0, 1)"),
                         "SGD momentum (PyTorch convention: m = g + mu m, dampening 0)")
    nesterov: bool = _f(False, _boolean, "Nesterov momentum (SGD)")
    weight_decay: float = _f(0.0, _number(0), "L2 penalty added to the gradient")
    beta1: float = _f(0.9, _number(0, 1, desc="a number in [0, 1)"), "Adam beta1")
    beta2: float = _f(0.999, _number(0, 1, desc="a number in [0, 1)"), "Adam beta2")
    eps: float = _f(1e-8, _number(0), "Adam epsilon outside the square root")
    eps_root: float = _f(1e-8, _number(0), "Adam epsilon inside the square root (> 0 keeps "
                                            "the step differentiable where v = 0)")
    schedule: str = _f("constant", _choice("constant", "cosine", "linear"),
                       "learning-rate decay after warmup: constant, cosine or linear (to final_lr)")
    warmup_steps: int = _f(0, _integer(0), "linear warmup steps from 0 to lr")
    final_lr: float = _f(0.0, _number(0), "learning rate at the last step for cosine / linear")
    batch_size: int = _f(64, _integer(0), "batch size (0 = full batch)")
    epochs: int = _f(1, _integer(1), "passes over the training set")
    shuffle: bool = _f(False, _boolean,
                       "false: the same batch order every epoch (the paper); true: reshuffled "
                       "per epoch from the seed")
    drop_last: bool = _f(False, _boolean, "drop a last incomplete batch")
    eval_every: int = _f(1, _integer(1), "evaluate full train/test loss every n steps")


@dataclass
class JacobianConfig:
    enabled: bool = _f(True, _boolean, "compute the exact training Jacobian")
    chunk: int = _f(0, _integer(0), "tangent columns per chunk (0 = chosen from free memory)")
    kernel: str = _f("auto", _choice("auto", "mlp", "generic"),
                     "auto: the fused MLP kernel for MLPs, torch.func otherwise")
    svd: bool = _f(True, _boolean, "full SVD of J after it is computed")


@dataclass
class SpectrumConfig:
    bulk_tol: float = _f(1e-3, _number(0, lo_open=True),
                         "bulk: |s - 1| <= bulk_tol; chaotic above, stable below")


@dataclass
class RunConfig:
    name: str = _f("run", _string, "run name (default session name prefix)")
    description: str = _f("", _string, "free text")
    seed: int = _f(0, _integer(0), "seed of the initialisation and batch order")
    device: str = _f("auto", _device, "auto picks CUDA when available")
    dtype: str = _f("float32", _choice("float32", "float64"), "dtype of training and J")
    threads: int = _f(0, _integer(0), "CPU threads for torch (0 = torch default)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    jacobian: JacobianConfig = field(default_factory=JacobianConfig)
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)
    analysis: dict = field(default_factory=dict)  # name -> that analysis's Config
    study: Any = field(default_factory=dict)  # [study]: an engine.study.StudyConfig, or {}


_SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                    "jacobian": JacobianConfig, "spectrum": SpectrumConfig}


def _show(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a table"
    return repr(v)


def _build_section(cls: type, table: Any, where: str, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.')}: expected a table, got {_show(table)}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in table.items():
        if key in _SECTION_CLASSES and cls is RunConfig:
            values[key] = _build_section(_SECTION_CLASSES[key], value, where, f"{key}.")
            continue
        if key == "analysis" and cls is RunConfig:
            values[key] = _build_analyses(value, where)
            continue
        if key == "study" and cls is RunConfig:
            from .study import parse_study

            values[key] = parse_study(value, where)
            continue
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(f"{where}: {prefix}{key}: unknown key (known keys: {hint})")
        try:
            values[key] = known[key].metadata["check"](value)
        except _Invalid as e:
            raise ConfigError(f"{where}: {prefix}{key}: expected {e}, got {_show(value)}") from None
    return cls(**values)


def _build_analyses(table: Any, where: str) -> dict:
    """``[analysis.NAME]`` tables, each validated by the registered analysis's Config."""
    from .experiments import load_all

    registry = load_all()
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: analysis: expected a table, got {_show(table)}")
    out = {}
    for name, sub in table.items():
        if name not in registry:
            known = ", ".join(sorted(registry)) or "none"
            raise ConfigError(f"{where}: analysis.{name}: unknown analysis (known: {known})")
        out[name] = _build_section(registry[name].config_cls, sub, where, f"analysis.{name}.")
    return out


def _cross_checks(cfg: RunConfig, where: str, base: Path | None) -> None:
    """Rules that involve more than one key, and files that must exist."""
    if cfg.data.dataset == "npz":
        if not cfg.data.path:
            raise ConfigError(f'{where}: data.path: expected a .npz file when data.dataset = "npz"')
        p = resolve_path(cfg.data.path, base)
        if not p.is_file():
            raise ConfigError(f"{where}: data.path: no such file: {cfg.data.path}")
    if cfg.model.init.endswith(".npz"):
        p = resolve_path(cfg.model.init, base)
        if not p.is_file():
            raise ConfigError(f"{where}: model.init: no such file: {cfg.model.init}")
    if cfg.train.optimizer == "adam" and cfg.jacobian.enabled and cfg.train.eps_root <= 0:
        raise ConfigError(f"{where}: train.eps_root: expected a positive number for the Jacobian "
                          "of Adam (sqrt(v) is not differentiable at v = 0), got "
                          f"{_show(cfg.train.eps_root)}")
    if cfg.train.final_lr > cfg.train.lr:
        raise ConfigError(f"{where}: train.final_lr: expected a number <= train.lr "
                          f"({cfg.train.lr}), got {_show(cfg.train.final_lr)}")
    if cfg.model.build and cfg.jacobian.kernel == "mlp":
        raise ConfigError(f'{where}: jacobian.kernel: "mlp" needs the built-in MLP, but '
                          f"model.build = {_show(cfg.model.build)}")


def resolve_path(path: str, base: Path | None) -> Path:
    """A relative path in a preset is relative to the preset's folder (then to the cwd)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if base is not None and (base / p).exists():
        return base / p
    return p


def from_dict(table: dict, where: str = "<config>", base: Path | None = None) -> RunConfig:
    """Validate a parsed TOML table into a :class:`RunConfig`."""
    cfg = _build_section(RunConfig, table, where, "")
    _cross_checks(cfg, where, base)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.05"`` -> (["train", "lr"], 0.05). The value is read as a TOML value; a bare
    word that is not valid TOML (``relu``) is taken as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. train.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(table: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides to a raw table (validated later, with the rest)."""
    import copy

    table = copy.deepcopy(table)
    for text in overrides:
        path, value = parse_override(text)
        node = table
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {'.'.join(path)}: {part} is not a table")
        node[path[-1]] = value
    return table


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a preset file, then apply and validate ``--set`` overrides."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read: {e.__class__.__name__}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: invalid TOML: {e}") from None
    from_dict(table, where, path.parent)  # the file alone must be valid
    if overrides:
        table = apply_overrides(table, overrides)
        where = f"{where} (with --set)"
    return from_dict(table, where, path.parent)


def loads(text: str, where: str = "<string>", base: Path | None = None) -> RunConfig:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: invalid TOML: {e}") from None
    return from_dict(table, where, base)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def dumps(cfg: RunConfig) -> str:
    """The resolved config as TOML (every key, defaults included)."""
    return tomli_w.dumps(to_dict(cfg))


def describe() -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every key: the reference the TUI and README show."""
    rows = []
    for f in fields(RunConfig):
        if f.name in _SECTION_CLASSES:
            for g in fields(_SECTION_CLASSES[f.name]):
                default = g.default_factory() if g.default is dataclasses.MISSING else g.default
                rows.append((f"{f.name}.{g.name}", default, g.metadata["help"]))
        elif "help" in f.metadata:
            rows.append((f.name, f.default, f.metadata["help"]))
    return rows


def check_value(key: str, value: Any) -> Any:
    """Validate one dotted key's value (the TUI's validation as you type)."""
    section, _, name = key.rpartition(".")
    if section.startswith("analysis."):
        from .experiments import load_all

        analysis = load_all().get(section.split(".", 1)[1])
        if analysis is None:
            raise ConfigError(f"{key}: unknown analysis")
        cls = analysis.config_cls
    else:
        cls = _SECTION_CLASSES.get(section, RunConfig) if section else RunConfig
    known = {f.name: f for f in fields(cls)}
    if name not in known or name in _SECTION_CLASSES:
        raise ConfigError(f"{key}: unknown key")
    try:
        return known[name].metadata["check"](value)
    except _Invalid as e:
        raise ConfigError(f"{key}: expected {e}, got {_show(value)}") from None
