"""Long library calls that a stop request can still cut short (no engine imports).

A stop request (SIGINT / SIGTERM in the worker) only sets a flag, which Python code checks
between steps. A single long call into LAPACK -- the SVD of J, the SVD of an analysis -- has no
steps, so :func:`call` runs it in a daemon thread while this thread polls the flag: on a stop it
raises ``KeyboardInterrupt`` within ``poll`` seconds and abandons the thread (the process is
about to exit). Only for functions that release the GIL (numpy's and torch's linear algebra do;
scipy's LAPACK wrappers do not) and that write nothing.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


def call(fn: Callable[..., Any], *args: Any, should_stop: Callable[[], bool] | None = None,
         poll: float = 0.1, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or ``KeyboardInterrupt`` as soon as ``should_stop()`` is true."""
    if should_stop is None:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, name=getattr(fn, "__name__", "call"), daemon=True)
    t.start()
    while t.is_alive():
        if should_stop():
            raise KeyboardInterrupt
        t.join(poll)
    if "error" in box:
        raise box["error"]
    return box["value"]
