"""Worker processes: start a session's run in the background, ask it to stop (torch-free).

The worker is ``engine.runner``'s :func:`~engine.runner.main`, started in its own process
session so that it outlives the terminal (and the TUI) that started it; its output goes to the
session's ``worker.log``. A stop request is SIGTERM, which the worker answers by finishing its
current chunk, saving, and marking the session interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .device import worker_environment
from .session import Session

# The worker runs engine.runner as __main__ without the current directory on sys.path (what
# ``python -P -m`` does on 3.11+), so a file in the user's working directory cannot shadow a
# module the worker imports.
_WORKER_BOOT = ("import sys, runpy; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
                "runpy.run_module('engine.runner', run_name='__main__', alter_sys=True)")


def start_worker(path: str | Path, device: str | None = None) -> subprocess.Popen:
    """Start the worker (:func:`engine.runner.main`) on the session in its own process session, so the run
    outlives the terminal that started it. Its stdout and stderr go to ``worker.log``."""
    path = Path(path).absolute()
    cmd = [sys.executable, "-c", _WORKER_BOOT]
    if device:
        cmd += ["--device", device]
    cmd += ["--", str(path)]
    log = open(path / "worker.log", "ab")
    env = {**os.environ, **worker_environment()}  # set before torch starts in the worker
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get(
        "PYTHONPATH") else root
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=os.getcwd())
    finally:
        log.close()


def request_stop(path: str | Path) -> bool:
    """Ask the worker running the session to stop (SIGTERM); False if none is running."""
    pid = Session(path).writer_pid()
    if pid is None:
        return False
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
