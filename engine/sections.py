"""The registry of optional preset sections, and the built-in ones (torch-free).

This is the contract plug-ins register through; it imports nothing above :mod:`engine.schema`,
so validating a preset never imports torch.

* ``[analysis.NAME]``: :data:`ANALYSES` maps NAME to an :class:`AnalysisSpec` -- the section's
  config class (checked like every other section), a title, and the module whose
  ``run(ctx, cfg) -> dict`` performs it (imported by the runner only when the analysis runs).
  :func:`register_analysis` adds one; the order of registration is the order they run in.
* ``[sweep]``: :class:`SweepConfig`, several runs (points) of one preset compared with each
  other: a grid over config keys, paired lists, or named points (the paper's seeds /
  shuffled-label / white-noise study is a sweep of named points).

The region tolerance is not an analysis key: every analysis uses the run's
``spectrum.bulk_tol`` (:mod:`engine.regions`).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import ClassVar

from .schema import (Check, ConfigError, Invalid, any_of, boolean, choice, integer, list_of,
                     name, number, option, string)

__all__ = ["AnalysisSpec", "ANALYSES", "register_analysis", "SweepConfig", "toml_literal"]

TOL_MOVED = "the region tolerance is the run's spectrum.bulk_tol (one rule for every analysis)"


@dataclass(frozen=True)
class AnalysisSpec:
    name: str
    config_cls: type
    title: str
    module: str  # holds run(ctx, cfg) -> dict


ANALYSES: dict[str, AnalysisSpec] = {}


def register_analysis(name: str, title: str, module: str | None = None):
    """Class decorator: register ``cls`` as the config of ``[analysis.<name>]``, performed by
    ``<module>.run`` (default ``engine.experiments.<name>``)."""

    def deco(cls: type) -> type:
        ANALYSES[name] = AnalysisSpec(name, cls, title, module or f"engine.experiments.{name}")
        return cls

    return deco


def enabled_option():
    return option(True, boolean(), "run this analysis")


class _KRange:
    """k_min <= k_max (when k_max is set) for the subspace sweeps."""

    def validate(self, where: str, prefix: str) -> None:
        if self.k_max and self.k_min > self.k_max:
            raise ConfigError(f"{where}: {prefix}k_min: expected a number <= {prefix}k_max "
                              f"({self.k_max}), got {self.k_min}")


# --------------------------------------------------------------------------------------------
# the paper's analyses (implementations: engine/experiments/NAME.py)


@register_analysis("distance", "Distance from unity and alignment")
@dataclass
class DistanceConfig:
    REMOVED_KEYS: ClassVar[dict] = {"tau": TOL_MOVED}
    enabled: bool = enabled_option()
    tail_fraction: float = option(0.125, number(0, 1, lo_open=True),
                                  "the last fraction of indices summarised as the 'tail' (the "
                                  "paper: past index ~4200 of 4810)")
    subspaces: bool = option(True, boolean(), "principal-angle cosines between span(U_region) "
                                              "and span(V_region)")


@register_analysis("init_change", "Change from initialisation along each v_i")
@dataclass
class InitChangeConfig:
    REMOVED_KEYS: ClassVar[dict] = {"tau": TOL_MOVED}
    enabled: bool = enabled_option()


PERTURBATION_NAMED = ("top", "bulk", "bottom")


@register_analysis("perturbation", "Finite perturbations along singular directions")
@dataclass
class PerturbationConfig:
    REMOVED_KEYS: ClassVar[dict] = {"tau": TOL_MOVED}
    enabled: bool = enabled_option()
    directions: list = option(
        ["bulk", "top"],
        list_of(any_of(choice(*PERTURBATION_NAMED), integer(0), desc="a direction"),
                'a non-empty list of "top", "bulk", "bottom" or 0-based indices',
                min_items=1, max_items=1000),
        'right singular vectors to perturb along: "top" (v_1), "bulk" (the middle of the '
        'bulk), "bottom" (v_P) or 0-based indices')
    eps_min: float = option(1e-3, number(0, lo_open=True), "smallest stimulus")
    eps_max: float = option(1e3, number(0, lo_open=True), "largest stimulus")
    n_eps: int = option(7, integer(1, 200), "stimuli, log-spaced from eps_min to eps_max")
    precision: str = option("run", choice("run", "float64"),
                            "retrain in the run's dtype, or in float64 (twice the time, exact "
                            "to ~1e-12 instead of ~1e-6)")

    def validate(self, where: str, prefix: str) -> None:
        if self.eps_min > self.eps_max:
            raise ConfigError(f"{where}: {prefix}eps_min: expected a number <= {prefix}eps_max "
                              f"({self.eps_max:g}), got {self.eps_min:g}")


OOD_SETS = ("train", "test", "gaussian_noise", "inverted")


@register_analysis("ood", "Out-of-distribution effect of each direction (max KL)")
@dataclass
class OodConfig:
    REMOVED_KEYS: ClassVar[dict] = {"tau": TOL_MOVED}
    enabled: bool = enabled_option()
    stride: int = option(1, integer(1), "probe every stride-th direction (1 = all P)")
    max_directions: int = option(0, integer(0), "probe at most this many directions, evenly "
                                                "spread (0 = no limit)")
    scale: float = option(1.0, number(0, lo_open=True), "length of the step along v_i")
    sets: list = option(list(OOD_SETS),
                        list_of(choice(*OOD_SETS), "a non-empty list of " +
                                ", ".join(f'"{s}"' for s in OOD_SETS), min_items=1),
                        "probe input sets")
    n_inputs: int = option(0, integer(0), "use at most this many inputs per set (0 = all)")
    chunk: int = option(64, integer(1, 1_000_000), "directions evaluated at once")
    precision: str = option("float64", choice("run", "float64"), "dtype of the evaluation")
    probe_seed: int = option(0, integer(0, 2**32 - 1), "seed of the Gaussian-noise probe inputs")


RESTRICTED_FAMILIES = ("bulk", "complement", "top", "bottom")


@register_analysis("restricted", "Training restricted to subspaces of singular directions")
@dataclass
class RestrictedConfig(_KRange):
    REMOVED_KEYS: ClassVar[dict] = {"tau": TOL_MOVED}
    enabled: bool = enabled_option()
    families: list = option(list(RESTRICTED_FAMILIES),
                            list_of(choice(*RESTRICTED_FAMILIES), "a non-empty list of " +
                                    ", ".join(f'"{s}"' for s in RESTRICTED_FAMILIES),
                                    min_items=1),
                            "subspace families: bulk, complement, top, bottom")
    k_min: int = option(100, integer(1), "smallest subspace dimension")
    k_max: int = option(0, integer(0), "largest subspace dimension (0 = P)")
    n_k: int = option(20, integer(1, 1000), "subspace dimensions, evenly spaced")
    batch_runs: int = option(80, integer(1, 100_000),
                             "restricted trainings run together as one batch (the basis is "
                             "read twice per step per batch, so larger batches are faster)")


PARAM_FUNCTION_SETS = ("test", "train", "gaussian_noise", "inverted", "uniform_noise")


@register_analysis("param_function", "Parameter-function Jacobian null space vs the bulk")
@dataclass
class ParamFunctionConfig(_KRange):
    enabled: bool = enabled_option()
    inputs: list = option(["test", "uniform_noise"],
                          list_of(choice(*PARAM_FUNCTION_SETS), "a non-empty list of " +
                                  ", ".join(f'"{s}"' for s in PARAM_FUNCTION_SETS),
                                  min_items=1),
                          "input sets the outputs are taken on: test (held out), train, "
                          "gaussian_noise, inverted, uniform_noise (U(0,1), the paper's white "
                          "noise)")
    n_inputs: int = option(0, integer(0), "at most this many inputs per set (0 = all the test "
                                          "set's size)")
    rtol: float = option(1e-3, number(0, lo_open=True),
                         "null space: singular values below rtol * sigma_max")
    k_min: int = option(100, integer(1), "smallest bulk dimension in the sweep")
    k_max: int = option(0, integer(0), "largest bulk dimension (0 = P)")
    n_k: int = option(20, integer(1, 1000), "bulk dimensions in the sweep")
    random_samples: int = option(2, integer(1, 1000), "random subspaces sampled per k")
    chunk: int = option(256, integer(1, 1_000_000), "Jacobian rows per vmap(vjp) call")
    seed: int = option(0, integer(0, 2**32 - 1),
                       "seed of the noise inputs and the random subspaces")


# --------------------------------------------------------------------------------------------
# sweeps: several runs of one preset


def _point_entry():
    """One entry of sweep.points: { name = "...", set = ["KEY=VALUE", ...] }."""
    desc = 'a list of tables { name = "...", set = ["KEY=VALUE", ...] }'
    nm, sets = name(), list_of(string(10_000), "a list of KEY=VALUE strings")

    def check(v):
        if not isinstance(v, dict) or set(v) - {"name", "set"} or "name" not in v:
            raise Invalid(desc)
        try:
            entry = {"name": nm(v["name"]), "set": sets(v.get("set", []))}
        except Invalid:
            raise Invalid(desc + " (names: letters, digits, _ . -; set: KEY=VALUE strings)"
                          ) from None
        if not all("=" in s for s in entry["set"]):
            raise Invalid(desc + ' (set must be a list of "KEY=VALUE" strings)')
        return entry

    schema = {"type": "object", "additionalProperties": False, "required": ["name"],
              "properties": {"name": dict(nm.schema), "set": dict(sets.schema)}}
    return Check(check, desc, schema)


def _axes():
    """``[sweep.values]``: dotted config keys (``model.hidden = [...]`` in TOML is a nested
    table; ``"model.hidden" = [...]`` a quoted key: both are read) to non-empty value lists."""
    desc = "a table of config keys to non-empty lists of values, e.g. train.lr = [0.03, 0.1]"

    def flatten(v, prefix=""):
        out = {}
        for k, x in v.items():
            if isinstance(x, dict):
                out.update(flatten(x, f"{prefix}{k}."))
            elif isinstance(x, list) and x:
                out[f"{prefix}{k}"] = list(x)
            else:
                raise Invalid(desc + f" ({prefix}{k} is not a non-empty list)")
        return out

    def check(v):
        if not isinstance(v, dict):
            raise Invalid(desc)
        return flatten(v)

    return Check(check, desc, {"type": "object"})


def toml_literal(v) -> str:
    """A value as a TOML literal, for a ``KEY=VALUE`` override."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string


def value_text(v) -> str:
    """A value in a point's name: 64, 0.1, adam, 64x64 (a list)."""
    if isinstance(v, list):
        return "x".join(value_text(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    # floats as their shortest exact text: distinct values give distinct names (0.1 and
    # 0.1000001 were both "0.1"); 1e+30 -> 1e30
    text = repr(v).replace("+", "").removesuffix(".0") if isinstance(v, float) else str(v)
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


@dataclass
class SweepConfig(_KRange):
    """``[sweep]``: the points of a sweep, as ``--set``-style overrides of the preset itself:
    a grid (or, with ``zip``, paired lists) over ``[sweep.values]``, named ``points``, and
    optionally the preset itself ("base")."""

    REMOVED_KEYS: ClassVar[dict] = {"tau": TOL_MOVED, "runs": "the named runs are now "
                                    "sweep.points (same entries)"}
    values: dict = option({}, _axes(),
                          "[sweep.values]: config keys and their values, e.g. model.hidden = "
                          "[[16], [32]] and train.lr = [0.03, 0.1]: every combination is a "
                          "point (zip = true: the i-th value of each)")
    zip: bool = option(False, boolean(), "pair the value lists instead of taking their grid")
    points: list = option([], list_of(_point_entry(), 'a list of tables { name = "...", set = '
                                                      '["KEY=VALUE", ...] }', max_items=1000),
                          'named points: { name = "...", set = ["KEY=VALUE", ...] } each')
    include_base: bool = option(False, boolean(), 'the preset itself is also a point, named '
                                                  '"base"')
    reference: str = option("", string(100), "the point the bulk overlaps are measured "
                                             "against (default: the first)")
    overlap: bool = option(False, boolean(),
                           "the cross-run analysis: bulk-subspace overlap of every point with "
                           "the reference against random subspaces (points of the same P)")
    parallel: int = option(1, integer(1, 1024), "points run at once (each its own worker "
                                                "process)")
    devices: list = option([], list_of(string(100), "a list of devices such as \"cuda:0\""),
                           'devices the points are spread over, e.g. ["cuda:0", "cuda:1"] '
                           "(point i runs on devices[i % n]); empty: each point's own device")
    k_min: int = option(100, integer(1), "smallest bulk dimension of the overlap sweep")
    k_max: int = option(0, integer(0), "largest bulk dimension (0 = P)")
    n_k: int = option(20, integer(1, 1000), "bulk dimensions in the overlap sweep")
    random_samples: int = option(1, integer(1, 1000),
                                 "random subspaces sampled per k for the baseline")
    seed: int = option(0, integer(0, 2**32 - 1), "seed of the random baseline")

    def expand(self) -> list[dict]:
        """Every point in order, {name, set, values}: the base, the grid (or the zipped
        lists), then the named points."""
        out = [{"name": "base", "set": [], "values": {}}] if self.include_base else []
        keys = list(self.values)
        if keys:
            lists = [self.values[k] for k in keys]
            combos = (list(zip(*lists)) if self.zip else list(itertools.product(*lists)))
            shorts = [k.rsplit(".", 1)[-1] for k in keys]
            if len(set(shorts)) < len(shorts):
                shorts = keys
            for i, combo in enumerate(combos):
                nm = "_".join(f"{sh}-{value_text(v)}" for sh, v in zip(shorts, combo))
                if len(nm) > 100 or not nm[:1].isalnum():
                    nm = f"p{i:03d}"
                out.append({"name": nm, "set": [f"{k}={toml_literal(v)}"
                                                for k, v in zip(keys, combo)],
                            "values": dict(zip(keys, combo))})
        out += [{"name": p["name"], "set": list(p["set"]), "values": {}} for p in self.points]
        return out

    def point_names(self) -> list[str]:
        return [p["name"] for p in self.expand()]

    def reference_name(self) -> str:
        return self.reference or self.point_names()[0]

    def validate(self, where: str, prefix: str) -> None:
        super().validate(where, prefix)
        if self.zip and len({len(v) for v in self.values.values()}) > 1:
            raise ConfigError(f"{where}: {prefix}zip: the value lists must have one length "
                              "to be paired (" + ", ".join(f"{k}: {len(v)}" for k, v in
                                                            self.values.items()) + ")")
        seen: set[str] = set()
        for n in self.point_names():
            if n in seen:
                what = ('"base" is the preset itself (include_base = true)' if n == "base"
                        else f'the name "{n}" is used twice')
                raise ConfigError(f"{where}: {prefix}points: {what}")
            seen.add(n)
        if not seen:
            raise ConfigError(f"{where}: {prefix}values: expected at least one point (values, "
                              "points or include_base = true)")
        if self.reference and self.reference not in seen:
            raise ConfigError(f"{where}: {prefix}reference: expected one of the point names "
                              f"({', '.join(sorted(seen))}), got \"{self.reference}\"")
