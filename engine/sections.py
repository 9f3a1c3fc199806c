"""The registry of optional preset sections, and the built-in ones (torch-free).

This is the contract plug-ins register through; it imports nothing above :mod:`engine.schema`,
so validating a preset never imports torch.

* ``[analysis.NAME]``: :data:`ANALYSES` maps NAME to an :class:`AnalysisSpec` -- the section's
  config class (checked like every other section), a title, and the module whose
  ``run(ctx, cfg) -> dict`` performs it (imported by the runner only when the analysis runs).
  :func:`register_analysis` adds one; the order of registration is the order they run in.
* ``[study]``: :class:`StudyConfig`, several runs of one preset compared with each other.

The region tolerance is not an analysis key: every analysis uses the run's
``spectrum.bulk_tol`` (:mod:`engine.regions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .schema import (Check, ConfigError, Invalid, any_of, boolean, choice, integer, list_of,
                     name, number, option, string)

__all__ = ["AnalysisSpec", "ANALYSES", "register_analysis", "StudyConfig"]

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
# studies: several runs of one preset


def _run_entry():
    """One entry of study.runs: { name = "...", set = ["KEY=VALUE", ...] }."""
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


@dataclass
class StudyConfig(_KRange):
    """``[study]``: the runs, as ``--set``-style overrides of the preset itself."""

    REMOVED_KEYS: ClassVar[dict] = {"tau": TOL_MOVED}
    runs: list = option([], list_of(_run_entry(), 'a list of tables { name = "...", set = '
                                                  '["KEY=VALUE", ...] }', max_items=1000),
                        'the runs: { name = "...", set = ["KEY=VALUE", ...] } each')
    include_base: bool = option(True, boolean(), 'the preset itself is also a run, named "base"')
    reference: str = option("base", string(100),
                            "the run the bulk overlaps are measured against")
    k_min: int = option(100, integer(1), "smallest bulk dimension of the overlap sweep")
    k_max: int = option(0, integer(0), "largest bulk dimension (0 = P)")
    n_k: int = option(20, integer(1, 1000), "bulk dimensions in the overlap sweep")
    random_samples: int = option(1, integer(1, 1000),
                                 "random subspaces sampled per k for the baseline")
    seed: int = option(0, integer(0, 2**32 - 1), "seed of the random baseline")

    def run_names(self) -> list[str]:
        return (["base"] if self.include_base else []) + [r["name"] for r in self.runs]

    def validate(self, where: str, prefix: str) -> None:
        super().validate(where, prefix)
        seen: set[str] = set()
        for r in self.runs:
            if r["name"] in seen:
                raise ConfigError(f"{where}: {prefix}runs: the name \"{r['name']}\" is used "
                                  "twice")
            seen.add(r["name"])
        if self.include_base and "base" in seen:
            raise ConfigError(f'{where}: {prefix}runs: the name "base" is taken by the preset '
                              "itself (include_base = true)")
        names = self.run_names()
        if not names:
            raise ConfigError(f"{where}: {prefix}runs: expected at least one run")
        if self.reference not in names:
            raise ConfigError(f"{where}: {prefix}reference: expected one of the run names "
                              f"({', '.join(sorted(names))}), got \"{self.reference}\"")
