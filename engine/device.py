"""The device a run computes on, and the numerics settings it computes with.

* :func:`cuda_missing` tells, without importing torch, whether CUDA can be used here (the
  driver, the GPU device nodes a container is given, the visibility variables), with a reason
  when not: :func:`check_here` refuses a ``cuda`` device by it, and ``auto`` is decided by it
  before a worker starts; :func:`check_ranks` refuses more ranks than GPUs on CUDA.
* :func:`resolve` turns ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` into a ``torch.device`` with an
  explicit index (``cuda`` is ``cuda:<current>``, so a session started on ``cuda`` and resumed on
  ``cuda:0`` is not a change), checked against the devices there are.
* :func:`configure` fixes, before the first CUDA operation, what decides the numbers on a GPU:
  full float32 matrix products (TF32 off, whatever the environment says: NVIDIA's containers
  set ``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1``, which gives every product a 10-bit mantissa and J
  errors of ~1e-3, the size of the bulk tolerance, unless a preset asks for ``tf32 = true``),
  and deterministic algorithms (``CUBLAS_WORKSPACE_CONFIG``, cuDNN's deterministic kernels), so
  a resumed run is bitwise equal to an uninterrupted one. It returns the settings in effect,
  for the manifest.
* :func:`run_threads` is the thread policy of a CPU run: torch's intra-op threads, never more
  than the CPUs this process may use (:func:`available_cpus`: its affinity set and the cgroup's
  CPU quota), and :func:`wait_policy` the OpenMP wait a worker starts with. torch's
  OpenMP runtime is GNU libgomp, which by default spins ~300,000 iterations at every barrier
  before it sleeps: on a machine whose cores other processes share, a thread waiting for a
  preempted sibling burns the CPU that sibling needs: at a load average of ~19 on 2 cores,
  128 columns of quick's J took 10.5 s with 2 spinning threads against 0.26 s with 2 passive
  ones (one run of ``benchmarks/bench_shared.py``; docs/speed.md). Passive waiting
  (``OMP_WAIT_POLICY=PASSIVE``) sleeps at once, but on idle cores it made the paper J 1.8x
  slower than spinning; :func:`wait_policy` spins briefly where cores are idle and waits
  passively where they are not. libgomp reads it once, when torch loads it, so it is set in the environment
  of the worker (:func:`worker_environment`) and by :func:`prepare_threads` before torch is
  imported (the CLI). The count is recorded in the manifest's numerics (``threads``): J's last
  bits depend on it.
* :func:`describe` names the device (model, UUID, PCI bus, memory) for the manifest and the TUI,
  which finds the same GPU in NVML by its UUID (CUDA's numbering is not NVML's).
"""

from __future__ import annotations

import os
import platform

ENV_FULL_FP32 = {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "0", "NVIDIA_TF32_OVERRIDE": "0"}
ENV_DETERMINISTIC = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
# how torch's OpenMP runtime (libgomp) waits at its barriers (see the module's docstring and
# :func:`wait_policy`); a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept
ENV_PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
ENV_SPIN_BRIEFLY = {"GOMP_SPINCOUNT": "3000"}
OPENMP_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# where the CPU quota of this process's cgroup is read (v2: cpu.max "QUOTA PERIOD" or "max
# PERIOD"; v1: cpu.cfs_quota_us, -1 for none, and cpu.cfs_period_us), and its path in them
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"


class DeviceError(ValueError):
    """The device named cannot be used here; ``str()`` is the one-line reason."""


# What a machine with a usable NVIDIA GPU has, read without importing torch (or CUDA): the
# driver's /proc entry where the driver's kernel module is visible, else the GPU's device nodes
# (a container given a GPU has /dev/nvidia0.. mounted but often no /proc/driver/nvidia; WSL 2
# has /dev/dxg). /dev/nvidiactl alone is no GPU: the container runtime mounts it with none.
NVIDIA_DRIVER = "/proc/driver/nvidia/version"
DEVICE_DIR = "/dev"
GPU_NODES = ("nvidia[0-9]*", "dxg")  # names in DEVICE_DIR, as glob patterns
# values of CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES that leave no GPU visible
HIDDEN = ("", "-1", "none", "void")
# what a config's ``device`` may be (engine.config checks presets with it)
DEVICE_NAME = r"auto|cpu|cuda|cuda:[0-9]{1,4}"
DEVICE_NAMES = '"auto", "cpu", "cuda" or "cuda:N"'


def cuda_missing() -> str | None:
    """Without importing torch: why CUDA cannot be used on this machine (one line), or None
    when it can as far as the files and the environment tell: a visible GPU (neither
    ``CUDA_VISIBLE_DEVICES`` nor ``NVIDIA_VISIBLE_DEVICES`` set to ``""``, ``-1``, ``none`` or
    ``void``) and a driver or a GPU device node (:data:`NVIDIA_DRIVER`, ``/dev/nvidiaN``,
    ``/dev/dxg``). What ``tjac run`` / ``resume`` refuse ``cuda`` with, and what ``auto``
    decides by before torch is imported; the worker asks torch again where it runs."""
    import glob

    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = os.environ.get(var)
        if value is not None and value.strip().lower() in HIDDEN:
            return f"{var}={value!r} leaves no GPU visible"
    if os.path.exists(NVIDIA_DRIVER) or any(
            glob.glob(os.path.join(glob.escape(DEVICE_DIR), pattern)) for pattern in GPU_NODES):
        return None
    return (f"no NVIDIA driver or GPU device: none of {NVIDIA_DRIVER}, "
            f"{DEVICE_DIR}/nvidia0.., {DEVICE_DIR}/dxg")


def check_here(name: str) -> None:
    """Without importing torch: :class:`DeviceError` when ``name`` is not ``auto``, ``cpu``,
    ``cuda`` or ``cuda:N``, or names CUDA where :func:`cuda_missing` says there is none (what
    ``tjac run`` and ``tjac resume`` refuse before a session is created or touched; the
    worker resolves the index)."""
    import re

    if not re.fullmatch(DEVICE_NAME, name):
        raise DeviceError(f'device = "{name}": expected {DEVICE_NAMES}')
    why = cuda_missing() if name.startswith("cuda") else None
    if why:
        raise DeviceError(f'device = "{name}": CUDA is not available on this machine ({why})')


def too_few_gpus(nproc: int, gpus: int, flag: str = "--nproc") -> str:
    """The one line that refuses ``nproc`` ranks on CUDA on a machine with ``gpus`` GPUs."""
    return f"{flag} {nproc} on CUDA runs one rank per GPU; this machine has {gpus}"


def check_ranks(name: str, nproc: int, flag: str = "--nproc") -> None:
    """:class:`DeviceError` (:func:`too_few_gpus`) when ``nproc`` ranks of a run configured
    with ``name`` cannot each have a GPU of their own here: on CUDA (``cuda``, ``cuda:N``, or
    ``auto`` where CUDA is available) the rank with LOCAL_RANK r computes on cuda:r
    (engine.distributed). A CPU run takes any number. Imports torch only where
    :func:`cuda_missing` finds CUDA."""
    if nproc <= 1 or not (name == "auto" or name.startswith("cuda")):
        return
    if name == "auto" and cuda_missing() is not None:
        return  # the CPU
    import torch

    if name == "auto" and not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nproc > gpus:
        raise DeviceError(too_few_gpus(nproc, gpus, flag))


def resolve(name: str):
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``
    with an index; :class:`DeviceError` when there is no such device."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise DeviceError(f'device = "{name}": CUDA is not available on this machine')
    n = torch.cuda.device_count()
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= n:
        raise DeviceError(f'device = "{name}": this machine has {n} CUDA device(s) '
                          f"(cuda:0 .. cuda:{n - 1})")
    return torch.device("cuda", index)


PROC_STAT = "/proc/stat"


def busy_cpus(seconds: float = 0.1, stat: str | None = None) -> float | None:
    """How many of the machine's CPUs other work keeps busy now: the non-idle share of every
    CPU's time over ``seconds`` (``/proc/stat``, sampled twice; this process sleeps between),
    times the CPU count. None where there is no ``/proc/stat``. (The load average is no
    measure here: it decays over minutes, so a run started right after another one ended
    would see the machine busy.)"""
    import time

    stat = stat or PROC_STAT

    def sample() -> tuple[int, int] | None:
        try:
            with open(stat) as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks), ticks[3] + ticks[4]

    a = sample()
    time.sleep(seconds)
    b = sample()
    if a is None or b is None or b[0] <= a[0]:
        return None
    busy = 1.0 - (b[1] - a[1]) / (b[0] - a[0])
    return busy * (os.cpu_count() or 1)


def wait_policy(busy: float | None | bool = False, cpus: int | None = None,
                quota: float | None | bool = False) -> dict[str, str]:
    """How a run's OpenMP threads wait at a barrier, as environment variables: spin briefly
    (:data:`ENV_SPIN_BRIEFLY`, ``GOMP_SPINCOUNT=3000``) on a machine with idle cores, where it
    is as fast as libgomp's default spin (the paper J: 49 s against 53 s spinning and 98 s
    passive, 2 cores); passive (:data:`ENV_PASSIVE`) where a cgroup's CPU quota limits this
    process (a spinning thread spends the quota), where other work keeps at least half the
    CPUs busy (:func:`busy_cpus`; beside 2 busy processes on 2 cores the paper J took 2.7 min
    passive, 3.8 min spinning briefly, 28.7 min with the default spin), or where that cannot
    be read. ``busy``, ``cpus`` (the machine's) and ``quota`` stand in for what is read here
    (tests)."""
    q = cgroup_cpus() if quota is False else quota
    if q is not None:
        return dict(ENV_PASSIVE)
    b = busy_cpus() if busy is False else busy
    if b is None:
        return dict(ENV_PASSIVE)
    n = cpus if cpus is not None else (os.cpu_count() or 1)
    return dict(ENV_PASSIVE) if b >= n / 2 else dict(ENV_SPIN_BRIEFLY)


def worker_environment(tf32: bool = False) -> dict[str, str]:
    """Environment variables a worker process starts with (before torch touches CUDA, and
    before torch loads its OpenMP runtime: :func:`wait_policy`, unless this process's
    environment chooses an OpenMP wait policy itself). This module imports torch only inside
    its functions, so the TUI can start workers without it."""
    env = dict(ENV_DETERMINISTIC)
    if not tf32:
        env.update(ENV_FULL_FP32)
    if not any(k in os.environ for k in OPENMP_WAIT):
        env.update(wait_policy())
    return env


def prepare_threads() -> bool:
    """Put :func:`wait_policy` in this process's environment, unless it chooses an OpenMP wait
    policy already: for a process that runs J itself (``tjac run``), called before torch is
    imported. Returns False when torch is loaded already (libgomp has read its environment: the
    policy cannot change in this process), else True."""
    import sys

    if "torch" in sys.modules:
        return False
    if not any(k in os.environ for k in OPENMP_WAIT):
        os.environ.update(wait_policy())
    return True


def cgroup_cpus(root: str | None = None, proc: str | None = None) -> float | None:
    """The CPUs this process's cgroup quota allows (quota / period, e.g. 1.5), or None when no
    quota limits it: the smallest quota of its cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``
    over ``cpu.cfs_period_us``) and those above it, up to ``root``. Files that are missing or
    unreadable count as no quota."""
    root, proc = root or CGROUP_ROOT, proc or PROC_CGROUP
    paths = {"": ["/"], "cpu": ["/"]}  # cgroup version -> this process's cgroup paths
    try:
        with open(proc) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    paths[""].append(path)
                elif "cpu" in controllers.split(","):
                    paths["cpu"].append(path)
    except (OSError, ValueError):
        pass

    def dirs(base: str, path: str):
        parts = [p for p in path.split("/") if p and p != ".."]
        for i in range(len(parts), -1, -1):
            yield os.path.join(base, *parts[:i])

    def read(file: str) -> list[str] | None:
        try:
            with open(file) as f:
                return f.read().split()
        except OSError:
            return None

    limits = []
    for path in paths[""]:  # v2
        for d in dirs(root, path):
            words = read(os.path.join(d, "cpu.max"))
            if words and len(words) == 2 and words[0] != "max":
                try:
                    limits.append(int(words[0]) / int(words[1]))
                except (ValueError, ZeroDivisionError):
                    pass
    for path in paths["cpu"]:  # v1 (mounted as cpu, or cpu,cpuacct)
        for mount in ("cpu", "cpu,cpuacct"):
            for d in dirs(os.path.join(root, mount), path):
                quota = read(os.path.join(d, "cpu.cfs_quota_us"))
                period = read(os.path.join(d, "cpu.cfs_period_us"))
                try:
                    if quota and period and int(quota[0]) > 0:
                        limits.append(int(quota[0]) / int(period[0]))
                except (ValueError, ZeroDivisionError):
                    pass
    return min(limits) if limits else None


def available_cpus(affinity: set[int] | None = None, quota: float | None = None) -> int:
    """The CPUs this process can use at once: its affinity set (``os.sched_getaffinity``, or
    ``affinity``), capped by its cgroup's CPU quota (:func:`cgroup_cpus`, or ``quota``) rounded
    down (a quota of 1.5 CPUs keeps 2 threads in lock-step throttled half the time), at least
    one."""
    n = len(affinity if affinity is not None else os.sched_getaffinity(0))
    q = cgroup_cpus() if quota is None else quota
    if q is not None:
        n = min(n, int(q))
    return max(1, n)


def run_threads(requested: int = 0) -> int:
    """The intra-op thread count of a CPU run: ``requested`` (a config's ``threads``) when it
    is set, else ``OMP_NUM_THREADS`` when the environment sets it to a count (a user's
    ``OMP_NUM_THREADS=1 tjac resume``, a rank's share of the CPUs), else one per available CPU
    (:func:`available_cpus`); torch's own default (libgomp's) counts the affinity set but not
    the cgroup's quota, so a container given 2 of 64 cores by quota would run 64 threads."""
    if requested > 0:
        return requested
    try:
        env = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        env = 0
    return env if env > 0 else available_cpus()


def configure(device, tf32: bool = False) -> dict:
    """Set the numerics of this process for ``device``; returns the settings in effect. Call it
    before the first CUDA operation (the cuBLAS workspace setting is read when the first handle
    is made)."""
    import torch

    for k, v in worker_environment(tf32).items():
        os.environ[k] = v
    if tf32:  # the preset asks for TF32: lift the library-level veto a worker starts with
        for k in ENV_FULL_FP32:
            os.environ.pop(k, None)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # torch.use_deterministic_algorithms also sets torch._inductor's flag, which imports the
    # compiler stack (~800 modules, ~70 MB resident, ~1 s) that nothing here uses: set the
    # switch itself where torch exposes it
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is not None:
        setter(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return settings()


def settings() -> dict:
    """The numerics settings in effect in this process."""
    import torch

    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "env": {k: os.environ.get(k) for k in (*ENV_FULL_FP32, *ENV_DETERMINISTIC)},
        "threads": torch.get_num_threads(),  # J's last bits depend on it (on the CPU)
        "openmp": {k: os.environ.get(k) for k in OPENMP_WAIT},
    }


def describe(device) -> dict:
    """The device as the manifest records it: type, index and, on CUDA, the model, its UUID (as
    NVML spells it, ``GPU-...``), PCI bus id and total memory."""
    import torch

    out: dict = {"type": device.type, "index": device.index}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(name=p.name, total_memory=int(p.total_memory),
                   capability=f"{p.major}.{p.minor}")
        uuid = getattr(p, "uuid", None)
        if uuid is not None:
            text = str(uuid)
            out["uuid"] = text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
        if hasattr(p, "pci_bus_id"):
            out["pci_bus_id"] = (f"{getattr(p, 'pci_domain_id', 0):08x}:{p.pci_bus_id:02x}:"
                                 f"{getattr(p, 'pci_device_id', 0):02x}.0")
    return out


def environment(device, version: str) -> dict:
    """Versions and host of a run (the manifest's ``environment``)."""
    import numpy as np
    import scipy
    import torch

    env = {"tjac": version, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "scipy": scipy.__version__, "host": platform.node(),
           "platform": platform.platform(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
