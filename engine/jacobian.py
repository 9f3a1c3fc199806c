"""The exact training Jacobian J = d theta_T / d theta_0, column block by column block.

Column j of J is the tangent of theta_T along the basis direction e_j of theta_0; a chunk of K
columns is one run of :func:`engine.train.train_tangents` with K tangents. Chunks are
independent, so they can be computed in any order, on several devices, and an interrupted
computation resumes at the first unfinished chunk.

On disk (:class:`JacobianStore`): ``jacobian.npy``, a (P, P) array memory-mapped and filled
chunk by chunk (entry [i, j] = d theta_T[i] / d theta_0[j]), and ``jacobian.progress.json``,
written atomically after each chunk is flushed, listing the finished chunks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .files import atomic_write_json
from .train import Problem, identity_columns, train, train_tangents

# Tangent columns per chunk on the CPU: large enough for the step's matrix products to run near
# peak, small enough for the (K, P) tangent state to stay in cache (benchmarks/bench_jacobian.py).
CPU_CHUNK = 256


def bytes_per_column(problem: Problem, dtype: torch.dtype) -> int:
    """Rough memory one tangent column needs during a chunk: the tangent of theta, of the
    optimizer state, of the gradient and the update's temporaries, plus the kernel's tangent
    activations for one batch."""
    P = problem.layout.size
    n_state = len(problem.optimizer.init(torch.zeros(1)))
    batch = max(len(b) for b in problem.batches)
    widths = sum(s[0] for s in problem.layout.shapes if len(s) == 1)  # biases: one per layer
    item = torch.finfo(dtype).bits // 8
    return item * (P * (4 + 3 * n_state) + batch * widths * 8)


def auto_chunk(problem: Problem, device: torch.device, dtype: torch.dtype) -> int:
    """Columns per chunk: on CUDA half the free memory's worth, on the CPU :data:`CPU_CHUNK`
    (capped at a quarter of the available memory)."""
    P = problem.layout.size
    per = bytes_per_column(problem, dtype)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        k = int(0.5 * free // per)
    else:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        k = min(CPU_CHUNK, int(0.25 * avail // per))
    return max(1, min(P, k))


def chunk_ranges(P: int, chunk: int) -> list[range]:
    return [range(a, min(a + chunk, P)) for a in range(0, P, chunk)]


def jacobian_columns(problem: Problem, theta0: torch.Tensor, cols: Iterable[int],
                     should_stop: Callable[[], bool] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta_T, J[:, cols]) with the block as a (P, K) tensor on the problem's device."""
    P = theta0.numel()
    e = identity_columns(P, list(cols), theta0.device, theta0.dtype)
    theta_T, d = train_tangents(problem, theta0, e, should_stop)
    return theta_T, d.T


def exact_jacobian(problem: Problem, theta0: torch.Tensor, chunk: int | None = None
                   ) -> torch.Tensor:
    """The whole J (P, P) in memory: for notebooks and tests. Sessions use
    :func:`compute_into`, which writes chunks to disk."""
    P = theta0.numel()
    chunk = chunk or auto_chunk(problem, theta0.device, theta0.dtype)
    J = torch.empty(P, P, dtype=theta0.dtype, device=theta0.device)
    for cols in chunk_ranges(P, chunk):
        J[:, cols.start: cols.stop] = jacobian_columns(problem, theta0, cols)[1]
    return J


class JacobianStore:
    """``jacobian.npy`` (memory-mapped) and the list of finished chunks beside it."""

    def __init__(self, directory: Path, P: int, chunk: int, dtype: np.dtype):
        self.path = Path(directory) / "jacobian.npy"
        self.progress_path = Path(directory) / "jacobian.progress.json"
        self.P, self.chunk = P, chunk
        self.ranges = chunk_ranges(P, chunk)
        if self.path.exists() and self.progress_path.exists():
            prog = json.loads(self.progress_path.read_text())
            if prog["chunk"] != chunk or prog["P"] != P:
                raise ValueError(f"{self.progress_path}: written with chunk {prog['chunk']} and "
                                 f"P {prog['P']}, asked for chunk {chunk} and P {P}")
            self.done = set(prog["done"])
            self.array = np.load(self.path, mmap_mode="r+", allow_pickle=False)
        else:
            self.done = set()
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype,
                                                   shape=(P, P))
            self._save_progress()

    @property
    def pending(self) -> list[int]:
        return [i for i in range(len(self.ranges)) if i not in self.done]

    @property
    def columns_done(self) -> int:
        return sum(len(self.ranges[i]) for i in self.done)

    def write(self, index: int, block: np.ndarray) -> None:
        """Store chunk ``index`` (a (P, K) block), flush it, then mark it finished."""
        cols = self.ranges[index]
        self.array[:, cols.start: cols.stop] = block
        self.array.flush()
        self.done.add(index)
        self._save_progress()

    def _save_progress(self) -> None:
        atomic_write_json(self.progress_path, {"P": self.P, "chunk": self.chunk,
                                               "done": sorted(self.done)})

    def close(self) -> None:
        self.array.flush()
        del self.array


def compute_into(store: JacobianStore, problem: Problem, theta0: torch.Tensor,
                 on_chunk: Callable[[int, range, torch.Tensor], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
    """Compute every unfinished chunk of ``store``. ``on_chunk(index, cols, theta_T)`` is called
    after each chunk is on disk. Raises ``KeyboardInterrupt`` between chunks when ``should_stop()``
    turns true (a chunk under way is finished and saved first)."""
    for index in store.pending:
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        cols = store.ranges[index]
        theta_T, block = jacobian_columns(problem, theta0, cols)
        store.write(index, block.cpu().numpy())
        if on_chunk is not None:
            on_chunk(index, cols, theta_T)


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
