"""The ops a step loop must not run on CUDA, and a recorder that finds them (no engine imports).

On CUDA a training step of a chunk is a few hundred kernel launches that the host queues
without waiting, as long as no op needs a value on the host: ``.item()``, ``bool(t)``, the size
of ``nonzero``'s or ``masked_select``'s output, a copy to the host. Scatters and index_puts join
them when deterministic algorithms are on (:func:`engine.device.configure` turns them on): they
run as a sorted index_put, which waits for the host, with index and sort temporaries the size of
the tensor. One such op in a step makes every step wait for the device to drain. The kernels
and the tangent loops of :mod:`engine.train` run none of them.

:data:`SYNCING` names them (by aten name, in-place or not); :class:`OpLog`, a
``TorchDispatchMode``, records every aten op run inside it with the place the caller marks
(:meth:`OpLog.at`), and :meth:`OpLog.syncing` lists those of :data:`SYNCING` and the copies
between the host and a device. On the CPU the copies cannot be told (every tensor is on the
host): the same code run on the meta device, where a value or a copy to the host raises, finds
them.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# aten names (without the in-place ``_``) of the ops that wait for the host on CUDA, or become
# a sorted index_put (which does) under deterministic algorithms
SYNCING = frozenset({
    "_local_scalar_dense", "item", "equal", "is_nonzero",  # a value on the host
    "nonzero", "masked_select", "masked_scatter",  # an output size from the data
    "scatter", "scatter_add", "scatter_reduce", "index_put", "_index_put_impl", "index_add",
    "index_copy", "index_reduce", "put",  # scatters
    "repeat_interleave",  # tensor repeats (int repeats run as expand and copy, never seen here)
    "unique_consecutive", "_unique", "_unique2", "unique_dim", "bincount", "histc",
})
# ops that only make a view (no kernel runs): left out of :meth:`OpLog.launches`
VIEWS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "transpose", "t", "permute",
    "unsqueeze", "squeeze", "slice", "select", "split", "split_with_sizes", "unbind", "alias",
    "as_strided", "diagonal", "detach", "lift_fresh",
})
_COPIES = frozenset({"_to_copy", "copy", "_copy_from", "_copy_from_and_resize"})


def base_name(func) -> str:
    """An aten op's name without its overload and without the in-place ``_``."""
    return func.overloadpacket.__name__.rstrip("_")


class OpLog(TorchDispatchMode):
    """Every aten op run inside ``with OpLog() as log:``, in order, as ``(place, name)`` in
    ``log.ops``; ``place`` is what :meth:`at` set last (``"setup"`` at first), e.g. the step.
    A copy between the host and a device is logged as ``"device copy"`` (either way: a
    blocking copy to a device waits for its stream too)."""

    def __init__(self) -> None:
        super().__init__()
        self.place = "setup"
        self.ops: list[tuple[str, str]] = []

    def at(self, place: str) -> None:
        """Log the ops that follow under ``place``."""
        self.place = place

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = base_name(func)
        out = func(*args, **kwargs)
        if name in _COPIES:
            inputs = {t.device.type for t in tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor)}
            outputs = {t.device.type for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
            if len(inputs | outputs) > 1:
                name = "device copy"
        self.ops.append((self.place, name))
        return out

    def syncing(self) -> list[str]:
        """``"name (place)"`` for each distinct op of :data:`SYNCING` (or device copy) and
        place it ran at, in order."""
        hits = [f"{n} ({p})" for p, n in self.ops if n in SYNCING or n == "device copy"]
        return list(dict.fromkeys(hits))

    def counts(self, place: str | None = None) -> Counter:
        """How often each op ran (at ``place``, or anywhere)."""
        return Counter(n for p, n in self.ops if place is None or p == place)

    def launches(self, place: str | None = None) -> int:
        """The ops (at ``place``, or anywhere) that run a kernel: all but :data:`VIEWS`."""
        return sum(c for n, c in self.counts(place).items() if n not in VIEWS)
