"""Worker processes: start a session's run in the background, ask it to stop (torch-free).

The worker is ``engine.runner``'s :func:`~engine.runner.main` (run as
:mod:`engine.present.worker_main`, which keeps the session's report.md current), started in its
own process session so that it outlives the terminal (and the TUI) that started it; its output goes to the
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
from .session import WORKER_MODULES, Session

def boot(module: str) -> str:
    """A ``python -c`` line that runs ``module`` as __main__ without the current directory on
    sys.path (what ``python -P -m`` does on 3.11+), so that a file in the user's working
    directory cannot shadow a module the worker imports."""
    return ("import sys, runpy; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process of this project: this one's, the worker's numerics
    variables (set before torch starts), ``env``, and this checkout first on PYTHONPATH."""
    full = {**os.environ, **worker_environment(), **(env or {})}
    root = str(Path(__file__).resolve().parents[1])
    full["PYTHONPATH"] = root + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH")
                                 else "")
    return full


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen:
    """Start ``cmd`` in its own process session (it outlives the terminal that started it),
    with :func:`child_environment`; stdout and stderr appended to ``log_path``."""
    full = child_environment(env)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=full,
                                cwd=os.getcwd())
    finally:
        log.close()


def start_worker(path: str | Path, device: str | None = None) -> subprocess.Popen:
    """Start the worker (:func:`engine.runner.main`, as :data:`engine.session.WORKER_MODULES`
    ``[0]``: it rewrites the session's report.md when the run's status changes) on the session
    in its own process session, so the run outlives the terminal that started it. Its stdout
    and stderr go to ``worker.log``."""
    path = Path(path).absolute()
    cmd = [sys.executable, "-c", boot(WORKER_MODULES[0])]
    if device:
        cmd += ["--device", device]
    cmd += ["--", str(path)]
    return spawn(cmd, path / "worker.log")


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
