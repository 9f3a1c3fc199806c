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
from .files import ArchiveError, available_memory, read_npz
from .config import ConfigError, JacobianConfig, RunConfig
from .device import cuda_missing
from .schema import PlanError
from .data import load as load_data
from .units import fmt_bytes

# Which SVD runs (svd_route) and what it holds. Four routes: the Gram route in float64 on the CPU
# (engine/svdjob.py, numpy/scipy in a child process) or on a GPU (spectrum.svd_gram_device, torch),
# else the direct SVD: LAPACK's gesdd through numpy (spectrum.svd) or torch.linalg.svd on the
# GPU (spectrum.svd_device, cuSOLVER's gesvdj).
ROUTES = {"gram-cpu": "Gram route, CPU", "direct-cpu": "LAPACK gesdd",
          "gram-cuda": "Gram route, GPU", "direct-cuda": "cuSOLVER gesvdj"}
# columns of J a Gram route (and the GPU's assembly of J) reads at a time: engine.svdjob.BLOCK,
# spectrum.svd_gram_device's and svd_device's default (tests/test_svd_device.py checks both)
CPU_BLOCK, DEVICE_BLOCK = 512, 2048
# The memory of the SVD of a P x P J, by (route, vectors): per phase, (phase, held, inside,
# workspace, streams) in P^2 numbers of the SVD's dtype (spectrum.svd_dtype). held: the arrays
# the code holds (tests/test_svd_device.py measures them); inside: copies the library makes and
# frees itself; workspace: the solver's; streams: the phase reads J in blocks of columns, and
# holds BLOCK_ARRAYS P x block float64 arrays beside the P^2 ones (a block as read and as
# float64, or the temporaries of the orthonormalization, spectrum.finish_right_vectors). The
# peak is the largest phase.
# * gram-cpu: G = J J^T (dsyrk); scipy's dsyevr writes the eigenvectors to a new array (O(P)
#   workspace, LAPACK: 26 P + 10 P integers); then U and V. Values alone: G and O(P).
# * direct-cpu: J's copy in the SVD's dtype and the outputs U, Vh; inside numpy's gesdd
#   (numpy/linalg/umath_linalg.cpp) its own copy of J and U, V^T in its buffer, and gesdd's
#   workspace for JOBZ = 'A', 3 P^2 (its workspace query, OpenBLAS 0.3.31: 3 P^2 + O(P); LAPACK
#   documents 4 P^2 + 7 P as a loose minimum). Values alone: the two copies and O(P).
# * gram-cuda: G = -J J^T; torch.linalg.eigh(G, out=(w, G)) overwrites G with U (no copy) and
#   takes cuSOLVER's syevd workspace: cuSOLVER documents no size; 3 P^2 is where its 32-bit API
#   overflows (float64 n up to 26,732, jax-ml/jax#23413: lwork ~ 2^31 / n^2 = 3.0 n^2; LAPACK's
#   dsyevd documents 2 P^2 + 6 P + 1). Then U and V. Values alone: torch's eigvalsh copies G
#   inside (aten _linalg_eigh_out); syevd without vectors: O(P) in LAPACK.
# * direct-cuda: A on the device; torch's svd (aten svd_cusolver) gives gesvdj a column-major
#   copy and U, V; when gesvdj does not converge, gesvd gets a new copy and a V^H buffer (5 P^2).
#   gesvdj's workspace is not documented and not counted. Values alone: torch still allocates U
#   and V for gesvdj.
# benchmarks/gpu_check.sh measures the peaks on a GPU (torch.cuda.max_memory_allocated counts
# cuSOLVER's workspace too: torch allocates it).
SVD_PHASES = {
    ("gram-cpu", True): (("J J^T", 1, 0, 0, True), ("eigh (dsyevr)", 2, 0, 0, False),
                         ("J^T U / s", 2, 0, 0, True)),
    ("gram-cpu", False): (("J J^T", 1, 0, 0, True), ("eigvalsh (dsyevr)", 1, 0, 0, False)),
    ("direct-cpu", True): (("gesdd", 3, 3, 3, False),),
    ("direct-cpu", False): (("gesdd", 1, 1, 0, False),),
    ("gram-cuda", True): (("J J^T", 1, 0, 0, True), ("eigh (syevd, in place)", 1, 0, 3, False),
                          ("J^T U / s", 2, 0, 0, True)),
    ("gram-cuda", False): (("J J^T", 1, 0, 0, True), ("eigvalsh (syevd)", 1, 1, 0, False)),
    ("direct-cuda", True): (("assembly", 1, 0, 0, True), ("gesvdj", 3, 1, 0, False),
                            ("gesvd after gesvdj", 3, 2, 0, False)),
    ("direct-cuda", False): (("assembly", 1, 0, 0, True), ("gesvdj", 1, 3, 0, False)),
}
BLOCK_ARRAYS = 3
PARTS = ("held", "inside", "workspace")
PART_NAMES = {"held": "arrays", "inside": "library copies", "workspace": "solver workspace"}


def svd_route(device_type: str, svd_method: str, svd_dtype: str) -> str:
    """The SVD that runs (a key of :data:`ROUTES`) for a J on a device of ``device_type``
    ("cpu", "cuda"; another type runs the CPU's) with ``spectrum.svd_method`` and
    ``spectrum.svd_dtype``: the Gram route in float64, else the direct SVD. The runner, the plan
    and the time probe all ask this."""
    where = "cuda" if device_type == "cuda" else "cpu"
    how = "gram" if svd_method == "gram" and svd_dtype == "float64" else "direct"
    return f"{how}-{where}"


def svd_phases(route: str, P: int, vectors: bool = True, itemsize: int = 8,
               block: int | None = None) -> list[tuple[str, dict[str, int]]]:
    """The phases of the SVD by ``route`` (:data:`SVD_PHASES`) of a P x P J in numbers of
    ``itemsize`` bytes: (phase, {part: bytes}) with the parts "held", "inside", "workspace";
    a phase that streams J holds :data:`BLOCK_ARRAYS` P x ``block`` float64 arrays more (the
    route's own block by default)."""
    b = block or (CPU_BLOCK if route == "gram-cpu" else DEVICE_BLOCK)
    unit, blocks = itemsize * P * P, BLOCK_ARRAYS * P * min(b, P) * 8
    return [(name, {"held": held * unit + (blocks if streams else 0), "inside": inside * unit,
                    "workspace": work * unit})
            for name, held, inside, work, streams in SVD_PHASES[(route, vectors)]]


def svd_bytes(route: str, P: int, vectors: bool = True, itemsize: int = 8,
              parts: tuple[str, ...] = PARTS, block: int | None = None) -> int:
    """Bytes at the peak of the SVD by ``route`` (:func:`svd_phases`), counting ``parts``
    (default all: the arrays the code holds, the library's own copies and the solver's
    workspace)."""
    return max(sum(b for k, b in by.items() if k in parts)
               for _, by in svd_phases(route, P, vectors, itemsize, block))


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
    svd_method: str = "gram"  # spectrum.svd_method
    snapshots: list[int] = field(default_factory=list)  # steps of the snapshots of J
    snapshot_keep: str = "jacobian"
    disk: dict[str, int] = field(default_factory=dict)  # file -> bytes
    batch_order: int = 0  # host bytes of the training's batch order (train.batch_order)

    def svd_route(self, device: str = "cpu") -> str:
        """The SVD route (:func:`svd_route`) on ``device`` ("cpu", "cuda", "cuda:N")."""
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        return svd_route(kind, self.svd_method, f"float{self.svd_itemsize * 8}")

    def svd_memory(self, device: str = "cpu", vectors: bool | None = None) -> int:
        """Bytes the SVD takes at its peak on the CPU or on a CUDA device, by the route that
        runs there (:func:`svd_bytes`: the arrays it holds, the library's copies and the
        solver's workspace), with U and V or the singular values alone."""
        if not self.svd:
            return 0
        vec = self.vectors if vectors is None else vectors
        return svd_bytes(self.svd_route(device), self.P, vec, self.svd_itemsize)

    def svd_memory_text(self, device: str = "cpu") -> str:
        """:meth:`svd_memory` with its route and the parts of its peak, e.g. "121.8 GB (Gram
        route, GPU; at eigh (syevd, in place): 30.5 GB arrays, 91.4 GB solver workspace)"."""
        route = self.svd_route(device)
        name, by = max(svd_phases(route, self.P, self.vectors, self.svd_itemsize),
                       key=lambda ph: sum(ph[1].values()))
        parts = ", ".join(f"{fmt_bytes(b)} {PART_NAMES[k]}" for k, b in by.items() if b)
        return f"{fmt_bytes(sum(by.values()))} ({ROUTES[route]}; at {name}: {parts})"

    @property
    def disk_total(self) -> int:
        return sum(self.disk.values())

    def lines(self, device: str | None = None) -> list[str]:
        """The plan as lines of text; the SVD's memory on ``device`` (the route that runs
        there), or on the CPU and on a GPU when None."""
        out = [f"P = {self.P:,} parameters, {self.steps:,} optimizer steps over "
               f"{self.n_train:,} training rows"]
        if self.jacobian:
            out.append(f"jacobian.npy: {fmt_bytes(self.disk['jacobian.npy'])} on disk "
                       f"({self.P:,} x {self.P:,}, {self.itemsize * 8}-bit)")
        if self.svd:
            svd_disk = sum(v for k, v in self.disk.items() if k.startswith("svd/"))
            what = "S, U, Vh" if self.vectors else "S only"
            wheres = ([("the CPU", "cpu"), ("a GPU", "cuda")] if device is None else
                      [("a GPU" if str(device).startswith("cuda") else "the CPU", device)])
            mem = ", ".join(f"{self.svd_memory_text(d)} on {name}" for name, d in wheres)
            out.append(f"SVD: {fmt_bytes(svd_disk)} on disk ({what}); float"
                       f"{self.svd_itemsize * 8}, memory while it runs: {mem}")
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


# a user model with more parameters than this (counted on the meta device) is not built while
# planning: its J (P^2) could not fit anywhere, and building it took minutes and gigabytes
USER_BUILD_MAX = 20_000_000


def count_parameters(cfg: RunConfig, n_features: int, n_classes: int,
                     image_shape=None) -> int:
    """P of a built-in architecture by arithmetic (:mod:`engine.archs`, no torch); a user
    model is built to count (that imports torch)."""
    if not cfg.model.build:
        try:
            return parameter_count(cfg.model, n_features, n_classes, image_shape)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    from .models import Layout, build, count_user_parameters

    try:
        P = count_user_parameters(cfg.model.build, n_features, n_classes)
        if P is not None and P > USER_BUILD_MAX:  # counted on the meta device: no J of it
            return P  # can fit (the plan refuses it), so it is not built for real here
        # built for real: the module's checks (a forward pass that detaches, sys.exit)
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
    not given, to know its shape; P is counted when not given (a user model is built). An
    initialisation file (``model.init``) is checked here, from its headers, so a bad one is
    refused before a session exists."""
    if cfg.model.init.endswith(".npz"):
        try:
            read_npz(cfg.model.init, headers_only=True)
        except ArchiveError as e:
            raise ConfigError(f"model.init: {cfg.model.init}: {e}") from None
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
                svd_method=cfg.spectrum.svd_method)
    plan.disk["theta0.npz"] = plan.disk["thetaT.npz"] = 8 * P
    # every step's row indices: an index array per epoch (three copies of it when shuffled: the
    # permutation, its batches as tensors, their bytes as keys), a few objects per step, and
    # the learning rate of each step
    plan.batch_order = (t.epochs * len(ds.x_train) * 8 * (3 if t.shuffle else 1)
                        + steps * (200 + 8))
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
    if plan.batch_order > available_memory():
        raise PlanError(f"this run's {plan.steps:,} steps need {fmt_bytes(plan.batch_order)} "
                        "of memory for their batch order alone and "
                        f"{fmt_bytes(available_memory())} is available here: lower train.epochs")
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
                half = replace(plan, svd_itemsize=4)
                if half.svd_memory(device) < need:  # (the Gram route may need less)
                    hints.append(f'spectrum.svd_dtype = "float32" (it needs '
                                 f"{fmt_bytes(half.svd_memory(device))})")
            hints.append("spectrum.vectors = false (the singular values alone need "
                         f"{fmt_bytes(plan.svd_memory(device, vectors=False))})"
                         if plan.vectors else "jacobian.svd = false")
            hint = "set " + " or ".join(hints)
            raise PlanError(f"the float{plan.svd_itemsize * 8} SVD of this run's {plan.P:,} x "
                            f"{plan.P:,} Jacobian ({ROUTES[plan.svd_route(device)]}) needs "
                            f"{fmt_bytes(need)} of memory and {fmt_bytes(mem)} is {where}: "
                            f"{hint}, or run where it fits")


def check_all(plans: list[Plan], directory: Path, device: str | None = "cpu",
              names: list[str] | None = None) -> None:
    """:func:`check` for runs that share a disk (a sweep): their files add up; their SVDs run
    one after the other. ``names``: the runs' names, the refusal of one names it (the largest
    first: the point that does not fit, before a smaller one that would not either)."""
    if not plans:
        return
    names = names or [f"run {i + 1}" for i in range(len(plans))]
    total = sum(p.disk_total for p in plans)
    free = free_disk(directory)
    if total > free:
        big = max(range(len(plans)), key=lambda i: plans[i].disk_total)
        raise PlanError(f"these {len(plans)} runs need {fmt_bytes(total)} of disk together "
                        f"(the largest, {names[big]}: {fmt_bytes(plans[big].disk_total)}, P = "
                        f"{plans[big].P:,}) and {directory} has {fmt_bytes(free)} free")
    for i in sorted(range(len(plans)), key=lambda i: plans[i].P, reverse=True):
        try:
            check(plans[i], directory, device=device)
        except PlanError as e:
            raise PlanError(f"{names[i]}: {e}") from None
