"""What a run will need, worked out before anything is written (no torch for the built-in MLP).

:func:`make_plan` counts the parameters P and the optimizer steps, and sizes the files and the
memory of each stage: the Jacobian (P x P in the run's dtype) on disk, the SVD's outputs (S, U,
Vh, the alignment) on disk, and the memory the float64 SVD takes while it runs. :func:`check`
compares that with the free disk under the sessions folder and the memory available here, and
refuses, in one line with the figures, a run that cannot fit: a model with ``hidden = [4000]``
(P = 300k, a 360 GB Jacobian) is refused before its session directory exists.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, RunConfig
from .data import load as load_data

# The float64 SVD (LAPACK gesdd, full U and Vh) of a P x P matrix holds the float64 copy of J,
# U, Vh and a workspace of about 4 P^2 numbers: 7 P^2 doubles in all.
SVD_DOUBLES_PER_P2 = 7


class PlanError(ValueError):
    """The run cannot fit here; ``str()`` is the one-line reason with the figures."""


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass
class Plan:
    P: int
    steps: int
    n_train: int
    itemsize: int  # bytes per number of the run's dtype
    jacobian: bool
    svd: bool
    disk: dict[str, int] = field(default_factory=dict)  # file -> bytes
    svd_memory: int = 0  # bytes held during the SVD

    @property
    def disk_total(self) -> int:
        return sum(self.disk.values())

    def lines(self) -> list[str]:
        out = [f"P = {self.P:,} parameters, {self.steps:,} optimizer steps over "
               f"{self.n_train:,} training rows"]
        if self.jacobian:
            out.append(f"jacobian.npy: {fmt_bytes(self.disk['jacobian.npy'])} on disk "
                       f"({self.P:,} x {self.P:,}, {self.itemsize * 8}-bit)")
        if self.svd:
            svd_disk = sum(v for k, v in self.disk.items() if k.startswith("svd/"))
            out.append(f"SVD: {fmt_bytes(svd_disk)} on disk (S, U, Vh), "
                       f"{fmt_bytes(self.svd_memory)} of memory while it runs (float64)")
        out.append(f"disk in all: {fmt_bytes(self.disk_total)}")
        return out


def count_parameters(cfg: RunConfig, n_features: int, n_classes: int) -> int:
    """P of the built-in MLP by arithmetic; a user model (``model.build``) is built to count
    (that imports torch)."""
    if cfg.model.build:
        from .models import Layout, build

        try:
            return Layout.of(build(cfg.model, n_features, n_classes, cfg.seed)).size
        except ValueError as e:  # the builder cannot be imported, or returns no module
            raise ConfigError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the user's code failed: one line, named
            raise ConfigError(f"model.build: {cfg.model.build} failed: "
                              f"{e.__class__.__name__}: {e}") from None
    widths = [n_features, *cfg.model.hidden, n_classes]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def count_steps(n_train: int, batch_size: int, epochs: int, drop_last: bool) -> int:
    bs = batch_size or n_train
    per_epoch = n_train // bs if drop_last else math.ceil(n_train / bs)
    return per_epoch * epochs


def make_plan(cfg: RunConfig, ds=None, P: int | None = None) -> Plan:
    """The sizes of a run. The data (``ds``, an :class:`engine.data.Dataset`) is loaded when
    not given, to know its shape; P is counted when not given (a user model is built)."""
    ds = load_data(cfg.data) if ds is None else ds
    P = count_parameters(cfg, ds.n_features, ds.n_classes) if P is None else P
    t = cfg.train
    item = 8 if cfg.dtype == "float64" else 4
    jac = cfg.jacobian.enabled
    svd = jac and cfg.jacobian.svd
    plan = Plan(P=P, steps=count_steps(len(ds.x_train), t.batch_size, t.epochs, t.drop_last),
                n_train=len(ds.x_train), itemsize=item, jacobian=jac, svd=svd)
    plan.disk["theta0.npz"] = plan.disk["thetaT.npz"] = 8 * P
    if jac:
        plan.disk["jacobian.npy"] = P * P * item
    if svd:
        plan.disk.update({"svd/S.npy": 8 * P, "svd/alignment.npy": 8 * P,
                          "svd/U.npy": P * P * item, "svd/Vh.npy": P * P * item})
        plan.svd_memory = SVD_DOUBLES_PER_P2 * 8 * P * P
    return plan


def available_memory() -> int:
    """Bytes of memory available to a new allocation here (MemAvailable, else free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_disk(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check(plan: Plan, directory: Path, already: int = 0, svd_on_cpu: bool = True) -> None:
    """Raise :class:`PlanError` when the run's files do not fit on the disk that holds
    ``directory`` (``already``: bytes of them already there, e.g. a resumed Jacobian) or its
    CPU SVD does not fit in the available memory."""
    need = plan.disk_total - already
    free = free_disk(directory)
    if need > free:
        big = max(plan.disk, key=plan.disk.get)
        raise PlanError(f"this run needs {fmt_bytes(need)} of disk ({big} alone "
                        f"{fmt_bytes(plan.disk[big])}; P = {plan.P:,}) and {directory} has "
                        f"{fmt_bytes(free)} free")
    if plan.svd and svd_on_cpu:
        mem = available_memory()
        if plan.svd_memory > mem:
            raise PlanError(f"the SVD of this run's {plan.P:,} x {plan.P:,} Jacobian needs "
                            f"{fmt_bytes(plan.svd_memory)} of memory and "
                            f"{fmt_bytes(mem)} is available here (set jacobian.svd = false, or "
                            "run where it fits)")


def check_all(plans: list[Plan], directory: Path, svd_on_cpu: bool = True) -> None:
    """:func:`check` for runs that share a disk (a study): their files add up; their SVDs run
    one after the other."""
    if not plans:
        return
    total = sum(p.disk_total for p in plans)
    free = free_disk(directory)
    if total > free:
        raise PlanError(f"these {len(plans)} runs need {fmt_bytes(total)} of disk together "
                        f"(P up to {max(p.P for p in plans):,}) and {directory} has "
                        f"{fmt_bytes(free)} free")
    for p in plans:
        check(p, directory, svd_on_cpu=svd_on_cpu)
