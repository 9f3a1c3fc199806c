"""Reusable temporaries of the fused kernels, per thread (no engine imports).

A chunk's tangent pass makes the same multi-MB temporaries at every training step. Fresh
tensors of that size cost page faults on the CPU that took longer than the arithmetic written
into them (a (32, 320000) gather into a fresh tensor: 38 ms on one thread; into a reused one:
9 ms), so the kernels write them into buffers kept from one call to the next: one set per
thread (calls from several threads are safe), for one chunk size K at a time (the last,
smaller chunk of a J does not hold a second set beside the first), freed by
:meth:`Workspace.release` (e.g. before J is tried in smaller chunks after running out of
memory).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor


class _Buffers(dict):
    """One thread's buffers, keyed by name/shape/dtype/device (a dict that can be referenced
    weakly)."""


class _Local(threading.local):
    """A thread's buffers and the chunk size they are for; each thread's :class:`_Buffers` is
    also listed, weakly, in ``threads`` (shared by all threads), and goes with its thread."""

    def __init__(self, threads: dict) -> None:
        self.buffers = _Buffers()
        self.K: int | None = None
        key = id(self.buffers)
        threads[key] = weakref.ref(self.buffers, lambda _, key=key: threads.pop(key, None))


class Workspace:
    """Per-thread reusable temporaries of one kernel."""

    def __init__(self) -> None:
        self._threads: dict[int, weakref.ref] = {}
        self._local = _Local(self._threads)

    @property
    def buffers(self) -> dict:
        """The calling thread's buffers."""
        return self._local.buffers

    def chunk(self, K: int) -> None:
        """A call with K tangent directions begins: the calling thread's buffers of another
        chunk size are freed first."""
        if self._local.K != K:
            self._local.buffers.clear()
            self._local.K = K

    def buffer(self, name: object, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The calling thread's temporary ``name`` of ``shape`` and ``like``'s dtype and
        device (contents undefined: what the last call left)."""
        key = (name, tuple(shape), like.dtype, like.device)
        buf = self._local.buffers.get(key)
        if buf is None:
            buf = self._local.buffers[key] = torch.empty(shape, dtype=like.dtype,
                                                         device=like.device)
        return buf

    def release(self) -> None:
        """Free the buffers of every thread. A call under way in another thread keeps the
        buffers it holds; its next call allocates them again."""
        for ref in list(self._threads.values()):
            buffers = ref()
            if buffers is not None:
                buffers.clear()
