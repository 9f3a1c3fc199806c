"""``tjac run`` as a terminal shows it: the real command on a pseudo-terminal of 80 columns, its
bars (every stage, the analyses included, with units, rate and time left) and its last lines
(one per analysis: its time and what it measured)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[=>()][0-9A-Za-z]?")


def run_in_pty(args: list[str], cols: int = 80, rows: int = 24, timeout: float = 300
               ) -> tuple[int, list[str]]:
    """Run ``python -m tjac_tui.cli ARGS`` with its stdin, stdout and stderr on a pty of
    ``cols`` x ``rows``; returns (exit status, the lines it wrote without escape sequences,
    split at line feeds and carriage returns)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "tjac_tui.cli", *args], stdin=slave,
                            stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True)
    os.close(slave)
    out = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                pytest.fail(f"no output for {timeout} s:\n{out.decode(errors='replace')}")
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the command closed the terminal
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        code = proc.wait(timeout=60)
    text = CSI.sub("", out.decode("utf-8", errors="replace"))
    return code, [ln.rstrip() for ln in re.split(r"\r\n|\r|\n", text)]


@pytest.mark.slow
def test_tjac_run_shows_a_bar_per_analysis_and_ends_with_a_line_each(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5))
    np.savez(tmp_path / "tiny.npz", x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 2] > 0.8))
    preset = tmp_path / "tiny.toml"
    preset.write_text(
        'name = "tiny"\ndtype = "float64"\ndevice = "cpu"\nthreads = 1\n'
        '[data]\ndataset = "npz"\npath = "tiny.npz"\ntest_size = 8\n'
        '[model]\nhidden = [4]\n[train]\nlr = 0.3\nbatch_size = 8\nepochs = 2\n'
        '[analysis.init_change]\n[analysis.ood]\nchunk = 8\n[analysis.param_function]\n')
    code, lines = run_in_pty(["run", str(preset), "--sessions", str(tmp_path / "s")])
    text = "\n".join(lines)
    assert code == 0, text
    assert max(len(ln) for ln in lines) <= 80, text
    # the analyses' bars: 39 directions in batches of 8, counted as they go, with a rate and
    # the elapsed and remaining times; a bar for init_change (one unit)
    ood = [ln for ln in lines if re.match(r"\S?\s*ood\s", ln)]
    assert [m.group(1) for ln in ood if (m := re.search(r" (\d+)/39 dirs", ln))][-1] == "39"
    assert {"8", "16", "24", "32"} & {m.group(1) for ln in ood
                                      if (m := re.search(r" (\d+)/39 dirs", ln))}, ood
    assert any(re.search(r"39/39 dirs +[\d.]+ dirs/s +\d:\d\d:\d\d +\d:\d\d:\d\d", ln)
               for ln in ood), ood
    assert any(re.match(r"\S?\s*init_change\s.* 1/1\b", ln) for ln in lines), text
    assert any(re.match(r"\S?\s*param_function\s.* (\d+)/\1 parts\b", ln) for ln in lines)
    # the end: one line per analysis, in the run's order, with its time and its finding
    ends = [i for i, ln in enumerate(lines) if ln.startswith("analysis ")]
    assert [lines[i].split(":")[0] for i in ends] == [
        "analysis init_change", "analysis ood", "analysis param_function"], text
    tail = " ".join(lines[ends[0]:])
    assert re.search(r"analysis ood: \d+\.\d s; median max-KL on train: bulk .*\(finding 5: "
                     r"(yes|partly|no)\)", tail), tail
    assert "analysis init_change: " in tail and "(finding 6: " in tail
    assert "(finding 9: " in tail
    assert lines[ends[0] - 1].lstrip().startswith("param_function")  # after the bars
