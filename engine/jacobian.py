"""The exact training Jacobian J = d theta_T / d theta_0, column block by column block.

Column j of J is the tangent of theta_T along the basis direction e_j of theta_0; a chunk of K
columns is one run of :func:`engine.train.train_tangents` with K tangents. Chunks are
independent, so they can be computed in any order, on several devices, and an interrupted
computation resumes at the first unfinished chunk.

On disk (:class:`JacobianStore`): ``jacobian.npy``, a (P, P) array filled chunk by chunk
(entry [i, j] = d theta_T[i] / d theta_0[j]; column-major, so a chunk is contiguous), and
``jacobian.progress.json``, written atomically after each chunk is durable, listing the
finished chunks with the digest of their bytes.

A chunk goes to disk behind the computation (:class:`ChunkWriter`): copied to host memory
without a synchronisation on CUDA, then written, made durable and recorded by a thread of its
own while the next chunk trains.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .files import atomic_write_json, block_digest, block_digests, npy_header
from .train import Problem, Trajectory, identity_columns, record_trajectory, train, train_tangents

# Tangent columns per chunk on the CPU: large enough for the step's matrix products to run near
# peak, small enough for the (K, P) tangent state to stay in cache (benchmarks/bench_jacobian.py).
CPU_CHUNK = 256
# On CUDA: the chunk is sized from a measured probe to use this fraction of the free memory.
CUDA_FRACTION = 0.6


def bytes_per_column(problem: Problem, dtype: torch.dtype) -> int:
    """A rough estimate of the memory one tangent column needs during a chunk (the CPU's cap;
    on CUDA the chunk is sized from a measurement, :func:`probe_column_bytes`): the tangents of
    theta, of the optimizer state and of the gradient with the update's temporaries, plus the
    kernel's tangent activations for one batch (taken as 8 numbers per sample and parameter
    tensor's leading dimension, which counts a conv layer's channels, not its pixels: an
    underestimate there)."""
    P = problem.layout.size
    n_state = len(problem.optimizer.init(torch.zeros(P)))
    batch = max(len(b) for b in problem.batches)
    widths = sum(s[0] if s else 1 for s in problem.layout.shapes)  # (a 0-d parameter: 1)
    item = torch.finfo(dtype).bits // 8
    return item * (P * (4 + 3 * n_state) + batch * widths * 8)


def probe_column_bytes(problem: Problem, theta0: torch.Tensor, K: int = 8, steps: int = 2
                       ) -> int:
    """Device memory one tangent column takes, measured: the peak allocated while ``K`` columns
    train for ``steps`` steps, above what was allocated before, over K (CUDA)."""
    dev = theta0.device
    K = max(1, min(K, theta0.numel()))
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    sub = problem.truncated(min(steps, problem.steps))
    e = identity_columns(theta0.numel(), range(K), dev, theta0.dtype)
    out = train_tangents(sub, theta0, e)
    del out, e
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    return max(1, (peak - base) // K)


def auto_chunk(problem: Problem, theta0: torch.Tensor, device: torch.device,
               dtype: torch.dtype, free_bytes: Callable[[], int] | None = None,
               column_bytes: Callable[[], int] | None = None) -> int:
    """Columns per chunk. On CUDA: :data:`CUDA_FRACTION` of the free device memory over the
    memory a column was measured to take (``free_bytes`` and ``column_bytes`` replace the
    measurements, e.g. in tests); on the CPU the kernel's ``cpu_chunk`` (else
    :data:`CPU_CHUNK`), capped at a quarter of the available memory by the estimate of
    :func:`bytes_per_column` (:func:`probe_chunk` times the alternatives)."""
    P = problem.layout.size
    if device.type == "cuda":
        free = free_bytes() if free_bytes else torch.cuda.mem_get_info(device)[0]
        per = column_bytes() if column_bytes else probe_column_bytes(problem, theta0)
        k = int(CUDA_FRACTION * free // max(per, 1))
    else:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        k = min(getattr(problem.kernel, "cpu_chunk", CPU_CHUNK),
                int(0.25 * avail // bytes_per_column(problem, dtype)))
    return max(1, min(P, k))


# the chunk sizes a CPU probe times (those not above P or the memory cap)
PROBE_CHUNKS = (64, 96, 128, 192, 256, 384, 512)


# what one probe measurement is: the tangent loop over this many training steps, the median
# of this many timings (after an untimed warm-up)
PROBE_STEPS = 5
PROBE_REPEATS = 3


def probe_chunk(problem: Problem, theta0: torch.Tensor, cap: int | None = None,
                steps: int = PROBE_STEPS, include: Iterable[int] = ()
                ) -> tuple[int, dict[int, float]]:
    """The chunk size that runs fastest here: each of :data:`PROBE_CHUNKS` (up to ``cap``
    and P) and each size in ``include`` (a run's own chunk, which may be below them: the conv
    kernel's 32) timed by :func:`measure_rates` over ``steps`` training steps. Returns (best,
    {chunk: column-steps per second}, in increasing chunk order); best is 0 when nothing was
    timed (P below every candidate). A fraction of a second on the paper's MLP. On 2 cores the
    candidates from 96 to 384 are within ~10 % of each other and the winner moves with the
    load, so a run keeps its fixed default (J's last bits depend on the chunk size, and a
    preset should give the same J on every run); ``tjac run --plan`` prints the probe, for
    ``jacobian.chunk``."""
    P = theta0.numel()
    cap = min(P, cap or P)
    sizes = sorted({k for k in PROBE_CHUNKS if k <= cap} | {min(k, P) for k in include})
    if not sizes:
        return 0, {}
    rates = measure_rates(problem, theta0, sizes, steps)
    return max(rates, key=rates.get), rates


def measure_rates(problem: Problem, theta0: torch.Tensor, sizes: Iterable[int],
                  steps: int = PROBE_STEPS, repeats: int = PROBE_REPEATS,
                  trajectory: Trajectory | None = None) -> dict[int, float]:
    """Column-steps per second of the tangent loop with each number of tangents in ``sizes``
    on the problem's device: the rate a J of such chunks runs at, replaying the recorded
    trajectory of the first ``steps`` training steps as :func:`compute_into` does
    (``trajectory``: one already recorded). Every size is measured alike, so that the rates
    compare: one untimed warm-up step each, then ``repeats`` rounds that time every size once
    in turn (a change in the machine's load meets every size, not only the sizes timed while
    it lasts), and the median of each size's timings."""
    import statistics
    import time

    dev = theta0.device
    sub = problem.truncated(min(steps, problem.steps))
    sizes = [min(k, theta0.numel()) for k in sizes]
    if trajectory is None:
        trajectory = record_trajectory(sub, theta0)
    for k in sizes:
        train_tangents(sub.truncated(1), theta0,
                       identity_columns(theta0.numel(), range(k), dev, theta0.dtype))
    times: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range(repeats):
        for k in sizes:
            e = identity_columns(theta0.numel(), range(k), dev, theta0.dtype)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            train_tangents(sub, theta0, e, trajectory=trajectory)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[k].append(time.perf_counter() - t0)
    return {k: k * sub.steps / statistics.median(t) for k, t in times.items()}


# How torch words a failed allocation when it does not raise torch.OutOfMemoryError: the CUDA
# runtime's "CUDA error: out of memory" (torch.AcceleratorError, a RuntimeError), the caching
# allocator's "CUDA driver error: out of memory", the CUDA libraries' statuses ("cuDNN error:
# CUDNN_STATUS_ALLOC_FAILED", cuDNN 9's CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED,
# "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "cusolver
# error: CUSOLVER_STATUS_ALLOC_FAILED, when calling ...", CUSPARSE_STATUS_ALLOC_FAILED,
# CUFFT_ALLOC_FAILED: a library's workspace or handle that did not fit beside the chunk), and
# the CPU allocator's "DefaultCPUAllocator: can't allocate memory"
ALLOC_FAILED = re.compile(
    r"out of memory|can't allocate memory"
    r"|\bCU(?:DNN|BLAS|SOLVER|SPARSE)_STATUS_(?:\w+_)?ALLOC(?:ATION)?_FAILED\b"
    r"|\bCUFFT_ALLOC_FAILED\b", re.IGNORECASE)


def is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation on the device or the host (what a smaller chunk may avoid):
    ``torch.OutOfMemoryError``, ``MemoryError``, or a ``RuntimeError`` (such as
    ``torch.AcceleratorError``) whose message is one of :data:`ALLOC_FAILED`'s."""
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and ALLOC_FAILED.search(str(e)) is not None


def release_chunk_memory(problem: Problem) -> None:
    """Free what a failed chunk left allocated, before J is tried in smaller chunks: the
    kernel's per-chunk workspace (its ``release()``: the MLP kernel's buffers, of every
    thread), whatever only reference cycles still hold, and on CUDA the allocator's cached
    blocks. (The trajectory and the tangents were the failed call's locals: gone with it.)"""
    release = getattr(problem.kernel, "release", None)
    if release is not None:
        release()
    gc.collect()
    if problem.x_train.device.type == "cuda":
        torch.cuda.empty_cache()


def chunk_ranges(P: int, chunk: int) -> list[range]:
    return [range(a, min(a + chunk, P)) for a in range(0, P, chunk)]


def jacobian_columns(problem: Problem, theta0: torch.Tensor, cols: Iterable[int],
                     should_stop: Callable[[], bool] | None = None,
                     trajectory: Trajectory | None = None, statistics: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta_T, J[:, cols]) with the block as a (P, K) tensor on the problem's device
    (``trajectory``: the primal of this training, recorded once for all chunks;
    ``statistics``: the running statistics' rows below theta's, :func:`train_tangents`)."""
    P = theta0.numel()
    e = identity_columns(P, cols, theta0.device, theta0.dtype)
    theta_T, d = train_tangents(problem, theta0, e, should_stop, trajectory=trajectory,
                                statistics=statistics)
    return theta_T, d.T


def exact_jacobian(problem: Problem, theta0: torch.Tensor, chunk: int | None = None,
                   statistics: bool = False) -> torch.Tensor:
    """The whole J (P, P) in memory: for notebooks and tests. Sessions use
    :func:`compute_into`, which writes chunks to disk. ``statistics``: (P + B, P), the rows
    past P those of the B running statistics (:attr:`engine.train.Problem.statistics`)."""
    P = theta0.numel()
    st = problem.statistics if statistics else None
    rows = P + (st.size if st is not None else 0)
    chunk = chunk or auto_chunk(problem, theta0, theta0.device, theta0.dtype)
    J = torch.empty(rows, P, dtype=theta0.dtype, device=theta0.device)
    traj = record_trajectory(problem, theta0)  # (None for the generic kernel: statistics)
    for cols in chunk_ranges(P, chunk):
        J[:, cols.start: cols.stop] = jacobian_columns(problem, theta0, cols, trajectory=traj,
                                                       statistics=statistics)[1]
    return J


class NonFiniteJacobian(ArithmeticError):
    """The tangents of training overflowed: the message names the step."""


class JacobianStore:
    """``jacobian.npy`` and ``jacobian.progress.json``: J on disk, chunk by chunk, verifiable.

    J is stored column-major (``fortran_order`` in the .npy header; ``np.load`` reads it as
    usual, ``J[i, j] = d theta_T[i] / d theta_0[j]``), so the K columns of a chunk are one
    contiguous run of bytes: a chunk is one ``pwrite`` (and fsync), and its digest is the
    digest of exactly those bytes. The file is preallocated to its full size when created
    (``posix_fallocate``), so a full disk is an error when the run starts, not a SIGBUS in the
    middle of one. The progress record lists each finished chunk with its digest.

    Opening an existing store checks the header (shape, dtype, order) and the file size, and
    recomputes the digest of every chunk recorded as finished: a chunk whose bytes do not match
    (a truncated file, flipped bytes, a progress record claiming more than was written) is
    dropped from the record and listed in :attr:`damaged`, so it is computed again.
    """

    FILE = "jacobian.npy"
    PROGRESS = "jacobian.progress.json"
    RANK_PROGRESS = "jacobian.progress.rank{}.json"  # the chunks of rank r > 0 (distributed)

    def __init__(self, directory: Path, P: int, chunk: int, dtype: np.dtype):
        self.path = Path(directory) / self.FILE
        self.progress_path = Path(directory) / self.PROGRESS
        self.P, self.chunk, self.dtype = int(P), int(chunk), np.dtype(dtype)
        self.item = self.dtype.itemsize
        self.ranges = chunk_ranges(self.P, self.chunk)
        self.done: dict[int, str] = {}
        self.elsewhere: frozenset[int] = frozenset()
        self.damaged: list[int] = []
        self.offset = 0
        self.rank = 0
        for p in (self.path, self.progress_path):  # never written through (a user's file)
            if p.is_symlink():
                p.unlink()
        prog = self._read_progress()
        if prog is not None and self.path.is_file() and self._header_ok():
            for other in self._rank_records():  # left by the ranks of a distributed run
                prog["done"].update({i: d for i, d in other["done"].items()
                                     if i not in prog["done"]})
            self._reopen(prog)
        else:
            self._create()
        self._save_progress()
        self._drop_rank_records()

    @classmethod
    def for_rank(cls, directory: Path, P: int, chunk: int, dtype: np.dtype,
                 rank: int, elsewhere: Iterable[int] = ()) -> "JacobianStore":
        """The store as rank ``rank`` > 0 of a distributed run sees it: the file rank 0 has
        opened (and checked) already; this rank records its own chunks, and only those, in
        its own progress file. ``elsewhere``: the chunks rank 0's record holds, which this
        rank never writes (a chunk whose J is done but a snapshot's is not is computed for
        the snapshot alone)."""
        self = cls.__new__(cls)
        self.path = Path(directory) / cls.FILE
        self.P, self.chunk, self.dtype = int(P), int(chunk), np.dtype(dtype)
        self.item = self.dtype.itemsize
        self.ranges = chunk_ranges(self.P, self.chunk)
        self.done, self.damaged, self.offset, self.rank = {}, [], 0, int(rank)
        self.elsewhere = frozenset(int(i) for i in elsewhere)
        self.progress_path = Path(directory) / cls.RANK_PROGRESS.format(rank)
        if not self._header_ok():
            raise ValueError(f"{self.path}: not the Jacobian file rank 0 prepared")
        self._save_progress()
        return self

    def _rank_records(self) -> list[dict]:
        """The progress records of other ranks that belong to this J."""
        out = []
        for p in sorted(self.path.parent.glob(self.RANK_PROGRESS.format("*"))):
            rec = self._read_progress(p)
            if rec is not None and p != self.progress_path:
                out.append(rec)
        return out

    def _drop_rank_records(self) -> None:
        if self.rank == 0:
            for p in self.path.parent.glob(self.RANK_PROGRESS.format("*")):
                p.unlink(missing_ok=True)

    def columns_done_all(self) -> int:
        """Columns recorded by every rank (this one and the others' progress files)."""
        done = set(self.done)
        main = None if self.rank == 0 else self._read_progress(
            self.path.parent / self.PROGRESS)
        for rec in self._rank_records() + ([main] if main else []):
            done |= {int(i) for i in rec["done"]}
        return sum(len(self.ranges[i]) for i in done if 0 <= i < len(self.ranges))

    def merge_ranks(self) -> list[int]:
        """Take the chunks the other ranks recorded into this (rank 0's) record, each checked
        against its digest; returns the chunks whose bytes did not match (left pending)."""
        bad = []
        with open(self.path, "rb") as f:
            for rec in self._rank_records():
                for i, d in sorted((int(i), d) for i, d in rec["done"].items()):
                    if i in self.done or not 0 <= i < len(self.ranges):
                        continue
                    cols = self.ranges[i]
                    f.seek(self.offset + cols.start * self.P * self.item)
                    if block_digest(f.read(len(cols) * self.P * self.item)) == d:
                        self.done[i] = d
                    else:
                        bad.append(i)
        self._save_progress()
        self._drop_rank_records()
        return bad

    # ---- the file ----------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return self.offset + self.P * self.P * self.item

    def _header_ok(self) -> bool:
        try:
            shape, fortran, dtype, offset = npy_header(self.path)
        except (OSError, ValueError):
            return False
        if shape != (self.P, self.P) or not fortran or dtype != self.dtype:
            return False
        self.offset = offset
        return True

    def _create(self) -> None:
        arr = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                        shape=(self.P, self.P), fortran_order=True)
        self.offset = arr.offset
        del arr
        self._allocate()
        self.done = {}

    def _allocate(self) -> None:
        """Reserve the whole file on disk (a sparse file could fail mid-run on a full disk)."""
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size < self.nbytes:
                os.ftruncate(fd, self.nbytes)
            try:
                os.posix_fallocate(fd, 0, self.nbytes)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        finally:
            os.close(fd)

    def _reopen(self, prog: dict) -> None:
        if os.path.getsize(self.path) != self.nbytes:  # truncated (or grown): fix the size
            self._allocate()
            with open(self.path, "r+b") as f:
                f.truncate(self.nbytes)
        recorded = {int(i): d for i, d in prog["done"].items() if 0 <= int(i) < len(self.ranges)}
        if recorded:
            got = block_digests(self.path, self.offset, self.P * self.chunk * self.item,
                                len(self.ranges))
            for i, d in sorted(recorded.items()):
                if got[i] == d:
                    self.done[i] = d
                else:
                    self.damaged.append(i)

    def _read_progress(self, path: Path | None = None) -> dict | None:
        """The progress record (default: this store's) if it belongs to this J (P, chunk,
        dtype), else None."""
        try:
            prog = json.loads((path or self.progress_path).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(prog, dict) or not isinstance(prog.get("done"), dict):
            return None
        if (prog.get("P"), prog.get("chunk"), prog.get("dtype")) != (self.P, self.chunk,
                                                                    self.dtype.str):
            return None
        return prog

    def _save_progress(self) -> None:
        rec = {"P": self.P, "chunk": self.chunk, "dtype": self.dtype.str, "layout": "fortran",
               "done": {str(i): d for i, d in sorted(self.done.items())}}
        if self.rank:
            rec.update(rank=self.rank, pid=os.getpid())
        atomic_write_json(self.progress_path, rec)

    # ---- chunks ------------------------------------------------------------------------
    def wants(self, index: int) -> bool:
        """Whether chunk ``index`` is still to be written here (not recorded by this store,
        nor by rank 0's record for a rank's store)."""
        return index not in self.done and index not in self.elsewhere

    @property
    def pending(self) -> list[int]:
        return [i for i in range(len(self.ranges)) if self.wants(i)]

    @property
    def columns_done(self) -> int:
        return sum(len(self.ranges[i]) for i in self.done)

    def write(self, index: int, rows: np.ndarray) -> None:
        """Store chunk ``index`` given as its K columns of J, one per row ((K, P): row k is
        column ``ranges[index][k]``), make it durable, then record it with its digest."""
        cols = self.ranges[index]
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape != (len(cols), self.P):
            raise ValueError(f"chunk {index}: expected ({len(cols)}, {self.P}), got {rows.shape}")
        data = memoryview(rows).cast("B")
        fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            pos, at = 0, self.offset + cols.start * self.P * self.item
            while pos < len(data):
                pos += os.pwrite(fd, data[pos:], at + pos)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        # a new dict, not one changed in place: the writer thread records chunks while the
        # compute thread reads the record (ChunkWriter)
        self.done = {**self.done, index: block_digest(data)}
        self._save_progress()

    def record(self) -> dict:
        """The block digests of the finished J, for the session manifest."""
        return {"offset": self.offset, "block": self.P * self.chunk * self.item,
                "digests": [self.done[i] for i in range(len(self.ranges))]}

    def load(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.path, mmap_mode="r" if mmap else None, allow_pickle=False)


def first_nonfinite_step(problem: Problem, theta0: torch.Tensor, cols: Iterable[int]) -> int:
    """Train the chunk again, checking the tangents after every step: the first step (1-based)
    after which one is not finite, or 0 if none is."""
    P = theta0.numel()
    e = identity_columns(P, cols, theta0.device, theta0.dtype)
    found = []

    class Found(Exception):
        pass

    def check(t, theta, dtheta):
        if not all(bool(torch.isfinite(d).all()) for d in dtheta):
            found.append(t + 1)
            raise Found

    try:
        train_tangents(problem, theta0, e, on_step=check)
    except Found:
        pass
    return found[0] if found else 0


# Writes handed to the writer thread and not finished yet, at most: each holds its chunk's host
# copy, so the host memory they take is WRITE_DEPTH x (K + 1) x P numbers (pinned, on CUDA)
WRITE_DEPTH = 2


class ChunkWriter:
    """Chunks into their stores on a thread of its own, so the next chunk computes while the
    last one goes to disk.

    :meth:`submit` takes a finished chunk (K, P) on the compute device: on CUDA it is copied
    into a pinned host buffer with ``non_blocking=True`` on a side stream, which waits for
    the compute stream first (no host synchronisation); on the CPU the tensor itself is
    written (it is fresh, and nothing writes into it again). The thread then waits for the
    copy and runs :meth:`JacobianStore.write` (pwrite, fdatasync, digest, progress record),
    one chunk after the other in the order given. At most :data:`WRITE_DEPTH` are in flight:
    a further submit first waits for the oldest, which bounds the host memory.

    A chunk's callback (``on_done(theta_T)``, with theta_T copied to the host alongside) runs
    in the calling thread, in order, once that chunk's write has returned, from :meth:`poll`
    (which never blocks: call it often) or :meth:`drain`; an exception raised on the thread (an
    ``OSError`` such as ENOSPC) is raised there too, as it was raised. After an exception in
    the calling thread, :meth:`settle` finishes what is in flight; :meth:`close` always ends
    the thread, waiting for the write under way."""

    def __init__(self, device: torch.device, depth: int = WRITE_DEPTH):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.depth = max(1, int(depth))
        cuda = device.type == "cuda"
        # the thread's CUDA calls on this run's GPU (a thread starts on cuda:0, where its first
        # call would open a context of its own: on another rank's GPU in a distributed run)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="jacobian-writer",
                                         initializer=torch.cuda.set_device if cuda else None,
                                         initargs=(device,) if cuda else ())
        self.queue: deque = deque()  # (future, host theta_T, pinned buffer, on_done), in order
        self.failed = False  # a write or a callback has raised
        self.device = device
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.buffers: list[torch.Tensor] = []  # pinned buffers not in use (CUDA)

    def submit(self, store: JacobianStore | None, index: int, rows: torch.Tensor | None,
               on_done: Callable[[torch.Tensor | None], None] | None = None,
               theta_T: torch.Tensor | None = None) -> None:
        """Write ``rows`` (K, P) as chunk ``index`` of ``store`` (None: nothing to write, only
        ``on_done`` to call in its turn, with ``theta_T`` on the host)."""
        while len(self.queue) >= self.depth:
            self._finish_oldest()
        buf, ready = None, None
        if self.stream is not None:
            rows, theta_T, buf, ready = self._to_host(rows, theta_T)
        future = self.thread.submit(self._write, store, index, rows, ready)
        self.queue.append((future, theta_T, buf, on_done))

    def _to_host(self, rows, theta_T):
        """(rows, theta_T) copied into a pinned buffer on the side stream, the buffer, and the
        event the copy is done at."""
        tensors = [t for t in (rows, theta_T) if t is not None]
        need = sum(t.numel() for t in tensors)
        dtype = tensors[0].dtype
        buf = next((b for b in self.buffers if b.numel() >= need and b.dtype == dtype), None)
        if buf is None:  # room for a chunk and a theta_T: every later chunk fits (the first
            # is the largest), and buffers too small for this one go, so there are at most
            # ``depth``
            self.buffers.clear()
            size = need if rows is None else rows.numel() + rows.shape[-1]
            buf = torch.empty(size, dtype=dtype, pin_memory=True)
        else:
            self.buffers.remove(buf)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        out, at = [], 0
        with torch.cuda.stream(self.stream):
            for t in (rows, theta_T):
                if t is None:
                    out.append(None)
                    continue
                host = buf[at: at + t.numel()].view(t.shape)
                host.copy_(t, non_blocking=True)
                t.record_stream(self.stream)  # its memory is not reused before the copy ends
                out.append(host)
                at += t.numel()
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return out[0], out[1], buf, ready

    @staticmethod
    def _write(store, index, rows, ready) -> None:
        if ready is not None:
            ready.synchronize()
        if store is not None:
            store.write(index, rows.numpy())

    def _finish_oldest(self) -> None:
        future, theta_T, buf, on_done = self.queue.popleft()
        try:
            future.result()
            if on_done is not None:
                on_done(theta_T)
        except BaseException:
            self.failed = True
            raise
        finally:
            if buf is not None:
                self.buffers.append(buf)

    def poll(self) -> None:
        """The callbacks of the chunks written meanwhile (without waiting for any)."""
        while self.queue and self.queue[0][0].done():
            self._finish_oldest()

    def drain(self) -> None:
        """Wait for every chunk in flight, with its callback."""
        while self.queue:
            self._finish_oldest()

    def settle(self) -> None:
        """After an exception in the calling thread: wait for the chunks in flight (each is
        recorded once durable, or not at all). Their callbacks run unless a write or a
        callback has failed already, and the first failure among them is raised: in the
        order of the chunks it came before the exception in hand."""
        while self.queue:
            if not self.failed:
                self._finish_oldest()
            else:  # wait for it; an error of its own came after the one raised
                self.queue.popleft()[0].exception()

    def close(self) -> None:
        """End the thread (after the write under way, and any still queued) and give the
        pinned buffers back."""
        self.thread.shutdown(wait=True)
        self.queue.clear()
        self.buffers.clear()
        empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
        if self.stream is not None and empty is not None:  # (recent torch)
            empty()  # the pinned memory goes back to the system, not to torch's cache


def compute_into(store: JacobianStore, problem: Problem, theta0: torch.Tensor,
                 on_chunk: Callable[[int, range, torch.Tensor], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 indices: Iterable[int] | None = None,
                 snapshots: dict[int, JacobianStore] | None = None) -> None:
    """Compute every unfinished chunk of ``store`` (``indices``: only those chunks, e.g. the
    share of one rank). Raises ``KeyboardInterrupt`` when ``should_stop()`` turns true
    (checked at every training step: the chunk under way is dropped and computed again on
    resume), and :class:`NonFiniteJacobian` naming the step at which a chunk's tangents became
    infinite or NaN (nothing of that chunk is stored).

    Each chunk is written by a :class:`ChunkWriter` while the next one computes: a chunk is
    recorded in the progress file once its bytes are durable, and ``on_chunk(index, cols,
    theta_T)`` (theta_T of that chunk's training, (P,) on the CPU) is called in this thread
    after that, chunk by chunk in order, from the next chunk's training steps or at the end. A
    stop or an exception waits for the writes in flight first, so the stores are left
    consistent; a write's own error (an ``OSError``) is raised here as it was raised.

    ``snapshots`` {t: store} (stores of the same P and chunk): the tangents after step t of a
    chunk are the same columns of J_{0->t}, written to that store as the pass goes by. A chunk
    is pending while any store lacks it; a store that has it already is not written again (a
    resume after a kill between the snapshot's write and the final one)."""
    P = theta0.numel()
    snapshots = dict(snapshots or {})
    everyone = [store] + list(snapshots.values())
    pending = sorted({i for st in everyone for i in st.pending})
    todo = pending if indices is None else [i for i in indices if i in pending]
    if not todo:
        return
    traj = record_trajectory(problem, theta0)
    writer = ChunkWriter(theta0.device)

    def stop() -> bool:  # at every training step: the callbacks of the chunks written since
        writer.poll()
        return should_stop is not None and should_stop()

    try:
        for index in todo:
            if stop():
                raise KeyboardInterrupt
            cols = store.ranges[index]
            e = identity_columns(P, cols, theta0.device, theta0.dtype)
            on_step = None
            wanted = {t: st for t, st in snapshots.items() if st.wants(index)}
            if wanted:
                def on_step(t, theta, dtheta, index=index, cols=cols):
                    st = wanted.get(t + 1)
                    if st is not None:
                        block = problem.layout.flatten(dtheta)  # (a new tensor)
                        _check_finite(block, problem, theta0, cols)
                        writer.submit(st, index, block)
            theta_T, rows = train_tangents(problem, theta0, e, stop, on_step=on_step,
                                           trajectory=traj)
            _check_finite(rows, problem, theta0, cols)
            write = store.wants(index)  # (else only a snapshot lacked it)
            if on_chunk is not None:
                def done(theta_T, index=index, cols=cols):
                    on_chunk(index, cols, theta_T)
                writer.submit(store if write else None, index, rows if write else None, done,
                              theta_T)
            elif write:
                writer.submit(store, index, rows)
        writer.drain()
    except BaseException:
        writer.settle()
        raise
    finally:
        writer.close()


def _check_finite(rows: torch.Tensor, problem: Problem, theta0: torch.Tensor,
                  cols: range) -> None:
    if not bool(torch.isfinite(rows).all()):
        step = first_nonfinite_step(problem, theta0, cols)
        lr = float(problem.lrs[step - 1]) if step else float("nan")
        raise NonFiniteJacobian(
            f"the Jacobian is not finite: the tangents of columns {cols.start}-"
            f"{cols.stop - 1} overflowed at step {step} of {problem.steps} (learning rate "
            f"{lr:.3g}); training is unstable to first order there: lower train.lr")


def finite_difference_columns(problem: Problem, theta0: torch.Tensor,
                              cols: Iterable[int] | None = None, h: float = 1e-6) -> torch.Tensor:
    """Central finite differences (theta_T(theta0 + h e_j) - theta_T(theta0 - h e_j)) / 2h for
    each j in ``cols`` (default: all), as a (P, len(cols)) tensor: an independent check of
    :func:`exact_jacobian` (use float64; 2 trainings per column)."""
    cols = range(theta0.numel()) if cols is None else list(cols)
    out = []
    for j in cols:
        e = torch.zeros_like(theta0)
        e[j] = h
        out.append((train(problem, theta0 + e) - train(problem, theta0 - e)) / (2 * h))
    return torch.stack(out, dim=1)
