"""What a run will need, worked out before anything is written (no torch for the built-in MLP).

:func:`make_plan` counts the parameters P and the optimizer steps, and sizes the files and the
memory of each stage: the Jacobian (P x P in the run's dtype) on disk, the SVD's outputs (S, U,
Vh, the alignment) on disk, and the memory the SVD takes while it runs. :func:`check`
compares that with the free disk under the sessions folder and the memory available here, and
refuses, in one line with the figures, a run that cannot fit: a model with ``hidden = [4000]``
(P = 300k, a 360 GB Jacobian) is refused before its session directory exists.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from .archs import parameter_count
from .config import ConfigError, JacobianConfig, RunConfig
from .device import cuda_missing
from .schema import PlanError
from .data import load as load_data

# Memory of the SVD of a P x P matrix, in P^2 numbers of the SVD's dtype (spectrum.svd_dtype).
# CPU (LAPACK gesdd): J's copy, U, Vh and a workspace of about 4 P^2; the singular values alone: the copy and about as
# much workspace. GPU (torch / cuSOLVER): J on the device, U, Vh and about one P^2 of workspace;
# alone: J and its workspace. (The GPU path also holds one column block of J in host memory.)
SVD_P2 = {("cpu", True): 7, ("cpu", False): 2, ("cuda", True): 4, ("cuda", False): 2}
# The CPU's Gram route (spectrum.svd_method = "gram", float64; engine/svdjob.py): J J^T and its
# eigenvectors (then U and V); the values alone: J J^T and O(P) workspace.
GRAM_P2 = {True: 2, False: 1}



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
    vectors: bool = True  # U and V too (spectrum.vectors)
    matfree: dict | None = None  # spectrum.method = "matfree": its memory, by part (bytes)
    svd_itemsize: int = 8  # bytes per number of the SVD (spectrum.svd_dtype)
    svd_gram: bool = False  # the CPU SVD by the Gram route (spectrum.svd_method)
    snapshots: list[int] = field(default_factory=list)  # steps of the snapshots of J
    snapshot_keep: str = "jacobian"
    disk: dict[str, int] = field(default_factory=dict)  # file -> bytes

    def svd_memory(self, device: str = "cpu", vectors: bool | None = None) -> int:
        """Bytes the SVD holds while it runs, on the CPU or on a CUDA device (with U
        and V, or the singular values alone)."""
        if not self.svd:
            return 0
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        vec = self.vectors if vectors is None else vectors
        p2 = GRAM_P2[vec] if (kind == "cpu" and self.svd_gram) else SVD_P2[(kind, vec)]
        return p2 * self.svd_itemsize * self.P * self.P

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
            what = "S, U, Vh" if self.vectors else "S only"
            out.append(f"SVD: {fmt_bytes(svd_disk)} on disk ({what}), "
                       f"{fmt_bytes(self.svd_memory('cpu'))} of memory while it runs on the "
                       f"CPU, {fmt_bytes(self.svd_memory('cuda'))} on a GPU "
                       f"(float{self.svd_itemsize * 8})")
        if self.snapshots:
            n, each = len(self.snapshots), self.P * self.P * self.itemsize
            kept = {"jacobian": "each keeps its J and SVD", "svd": "each keeps its SVD (its J "
                    "is deleted once analysed)", "spectrum": "each keeps S and its summary (J, "
                    "U and Vh deleted once analysed)"}[self.snapshot_keep]
            steps = ", ".join(map(str, self.snapshots[:8])) + (", ..." if n > 8 else "")
            out.append(f"snapshots: {n} (after steps {steps}), {fmt_bytes(n * each)} of J on "
                       f"disk while the Jacobian stage runs, {n} more SVDs; {kept}")
        if self.matfree:
            parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.matfree.items())
            out.append(f"matrix-free spectrum (J never formed): about "
                       f"{fmt_bytes(sum(self.matfree.values()))} of memory ({parts})")
        out.append(f"disk in all: {fmt_bytes(self.disk_total)}")
        return out


def count_parameters(cfg: RunConfig, n_features: int, n_classes: int,
                     image_shape=None) -> int:
    """P of a built-in architecture by arithmetic (:mod:`engine.archs`, no torch); a user
    model is built to count (that imports torch)."""
    if not cfg.model.build:
        try:
            return parameter_count(cfg.model, n_features, n_classes, image_shape)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    from .models import Layout, build

    try:
        return Layout.of(build(cfg.model, n_features, n_classes, cfg.seed,
                               image_shape)).size
    except ValueError as e:  # the builder cannot be imported, or returns no module
        raise ConfigError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the user's code failed: one line, named
        raise ConfigError(f"model.build: {cfg.model.build} failed: "
                          f"{e.__class__.__name__}: {e}") from None


def count_steps(n_train: int, batch_size: int, epochs: int, drop_last: bool) -> int:
    bs = batch_size or n_train
    per_epoch = n_train // bs if drop_last else math.ceil(n_train / bs)
    return per_epoch * epochs


def snapshot_steps(j: JacobianConfig, steps: int, per_epoch: int) -> list[int]:
    """The steps t (J_{0->t} after step t, 1-based) of the snapshots asked by
    ``jacobian.snapshots``, ``snapshot_every`` and ``snapshot_epochs``, sorted, each once; the
    last step is the run's own J and is not stored twice. A step past the run is an error."""
    out = set()
    for t in j.snapshots:
        if t > steps:
            raise ConfigError(f"jacobian.snapshots: step {t} is past the run's last step "
                              f"({steps})")
        out.add(t)
    if j.snapshot_every:
        out.update(range(j.snapshot_every, steps + 1, j.snapshot_every))
    for e in j.snapshot_epochs:
        if e * per_epoch > steps:
            raise ConfigError(f"jacobian.snapshot_epochs: epoch {e} is past the run's last "
                              f"epoch ({steps // max(per_epoch, 1)})")
        out.add(e * per_epoch)
    if out == {steps}:  # asked for, and none left: say so (it ran with no snapshot at all)
        raise ConfigError(f"jacobian.snapshots: step {steps} is the run's last: its J is the "
                          "session's own jacobian.npy; ask for earlier steps")
    out.discard(steps)
    return sorted(out)


def snapshot_dir(step: int) -> str:
    """A snapshot's folder in the session."""
    return f"snapshots/step_{step:06d}"


def make_plan(cfg: RunConfig, ds=None, P: int | None = None) -> Plan:
    """The sizes of a run. The data (``ds``, an :class:`engine.data.Dataset`) is loaded when
    not given, to know its shape; P is counted when not given (a user model is built)."""
    ds = load_data(cfg.data) if ds is None else ds
    P = count_parameters(cfg, ds.n_features, ds.n_classes, ds.image_shape) if P is None else P
    t = cfg.train
    item = 8 if cfg.dtype == "float64" else 4
    matfree = cfg.jacobian.enabled and cfg.spectrum.method == "matfree"
    jac = cfg.jacobian.enabled and not matfree
    svd = jac and cfg.jacobian.svd
    steps = count_steps(len(ds.x_train), t.batch_size, t.epochs, t.drop_last)
    plan = Plan(P=P, steps=steps,
                n_train=len(ds.x_train), itemsize=item, jacobian=jac, svd=svd,
                vectors=cfg.spectrum.vectors,
                svd_itemsize=8 if cfg.spectrum.svd_dtype == "float64" else 4,
                svd_gram=(cfg.spectrum.svd_method == "gram"
                          and cfg.spectrum.svd_dtype == "float64"))
    plan.disk["theta0.npz"] = plan.disk["thetaT.npz"] = 8 * P
    if jac:
        per_epoch = count_steps(len(ds.x_train), t.batch_size, 1, t.drop_last)
        plan.snapshots = snapshot_steps(cfg.jacobian, steps, per_epoch)
        plan.snapshot_keep = cfg.jacobian.snapshot_keep
    if matfree:
        sp, mi = cfg.spectrum, 8 if cfg.spectrum.matfree_dtype == "float64" else 4
        state = 2 if t.optimizer == "adam" else (1 if t.momentum > 0 else 0)
        seg = max(1, math.ceil(math.sqrt(steps)))
        K = max(sp.probes, 1)
        plan.matfree = {
            "checkpoints": math.ceil(steps / seg) * (1 + state) * P * mi,
            "tangents": (2 + 2 * state) * K * P * mi,
            "Lanczos vectors": sp.probes * sp.lanczos_steps * P * 8,
            # scipy's Lanczos bases, float64: PROPACK keeps U and V of 10 k vectors each,
            # ARPACK max(2k + 1, 20) vectors, LOBPCG a few blocks of k
            "top-k solver": {"propack": 2 * 10 * sp.k, "arpack": 2 * max(2 * sp.k + 1, 20),
                             "lobpcg": 8 * sp.k}[sp.solver] * P * 8,
        }
        if sp.deflate:  # the top k right singular vectors, kept for the bulk estimate
            plan.matfree["deflation vectors"] = sp.k * P * 8
        plan.disk["matfree.json"] = 64 * (sp.k + sp.probes * len(sp.count_tols)) + 4096
    if jac:
        plan.disk["jacobian.npy"] = P * P * item
    for d in [""] + [snapshot_dir(t) + "/" for t in plan.snapshots]:
        # (a snapshot's J and vectors count in full: they are on disk together at some point)
        if jac:
            plan.disk[d + "jacobian.npy"] = P * P * item
        if svd:
            plan.disk[d + "svd/S.npy"] = 8 * P
            if plan.vectors:
                plan.disk.update({d + "svd/alignment.npy": 8 * P, d + "svd/U.npy": P * P * item,
                                  d + "svd/Vh.npy": P * P * item})
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


def where_svd_runs(device: str) -> str:
    """The device the SVD of a run configured with ``device`` will use, without importing
    torch: "auto" is CUDA where :func:`engine.device.cuda_missing` finds it."""
    if device == "auto":
        return "cuda" if cuda_missing() is None else "cpu"
    return device


def device_memory(device: str) -> int | None:
    """Free memory of a CUDA device (torch), None for the CPU or when it cannot be read."""
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except Exception:  # noqa: BLE001 - no CUDA here: the worker checks again where it runs
        return None


def check(plan: Plan, directory: Path, already: int = 0, device: str | None = "cpu") -> None:
    """Raise :class:`PlanError` when the run's files do not fit on the disk that holds
    ``directory`` (``already``: bytes of them already there, e.g. a resumed Jacobian) or its SVD
    does not fit in the memory where it runs: host memory for the CPU, the device's for CUDA
    (``device`` None: unknown yet, e.g. "auto" before torch is imported: the memory is checked
    by the worker)."""
    need = plan.disk_total - already
    free = free_disk(directory)
    if need > free:
        big = max(plan.disk, key=plan.disk.get)
        raise PlanError(f"this run needs {fmt_bytes(need)} of disk ({big} alone "
                        f"{fmt_bytes(plan.disk[big])}; P = {plan.P:,}) and {directory} has "
                        f"{fmt_bytes(free)} free")
    if plan.matfree:
        mem, need = available_memory(), sum(plan.matfree.values())
        if need > mem:
            raise PlanError(f"the matrix-free spectrum needs about {fmt_bytes(need)} of memory "
                            f"({', '.join(f'{k} {fmt_bytes(v)}' for k, v in plan.matfree.items())}"
                            f") and {fmt_bytes(mem)} is available here: lower spectrum.probes, "
                            "spectrum.lanczos_steps or spectrum.k")
    if plan.svd and device is not None:
        cuda = str(device).startswith("cuda")
        mem = device_memory(device) if cuda else available_memory()
        need = plan.svd_memory(device)
        if mem is not None and need > mem:
            where = f"free on {device}" if cuda else "available here"
            hints = []
            if plan.svd_itemsize == 8:
                half = replace(plan, svd_itemsize=4, svd_gram=False)
                if half.svd_memory(device) < need:  # (the Gram route needs less than gesdd32)
                    hints.append(f'spectrum.svd_dtype = "float32" (it needs '
                                 f"{fmt_bytes(half.svd_memory(device))})")
            hints.append("spectrum.vectors = false (the singular values alone need "
                         f"{fmt_bytes(plan.svd_memory(device, vectors=False))})"
                         if plan.vectors else "jacobian.svd = false")
            hint = "set " + " or ".join(hints)
            raise PlanError(f"the float{plan.svd_itemsize * 8} SVD of this run's {plan.P:,} x "
                            f"{plan.P:,} Jacobian needs {fmt_bytes(need)} of memory and "
                            f"{fmt_bytes(mem)} is {where}: {hint}, or run where it fits")


def check_all(plans: list[Plan], directory: Path, device: str | None = "cpu") -> None:
    """:func:`check` for runs that share a disk (a sweep): their files add up; their SVDs run
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
        check(p, directory, device=device)
