"""A report states the session's real status, the one ``tjac ls`` shows
(:func:`engine.session.status_of`), and the session's report.md is written again when the
status changes: a worker killed mid-Jacobian leaves a session recorded as running, which its
report calls stale (with the pid and how to continue it); resuming it rewrites report.md, done."""

from __future__ import annotations

import os
import signal
import time

import pytest

from engine.session import Session, describe
from tjac_tui.cli import main

TOML = """
name = "killed"
device = "cpu"
threads = 1
[data]
n_train = 128
[model]
hidden = [8]
[train]
lr = 0.1
batch_size = 32
epochs = 4
[jacobian]
chunk = 16
"""


def wait(cond, what: str, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.mark.slow  # a worker process started and killed, then resumed: ~10 s idle, more loaded
def test_a_killed_session_reports_stale_and_resume_rewrites_its_report(tmp_path, capsys):
    preset = tmp_path / "killed.toml"
    preset.write_text(TOML)
    sessions = tmp_path / "s"
    assert main(["run", str(preset), "--detach", "--sessions", str(sessions)]) == 0
    s = Session(capsys.readouterr().out.strip())
    wait(lambda: any(e["event"] == "jacobian_chunk" for e in s.events()[0]), "a chunk of J")
    pid = s.manifest()["pid"]
    os.kill(pid, signal.SIGKILL)
    wait(lambda: not s.is_locked(), "the worker's death")
    assert s.manifest()["status"] == "running"  # (what the killed worker left)
    assert s.manifest()["stages"]["jacobian"]["status"] == "running"  # killed mid-J

    assert main(["report", str(s.path), "--sessions", str(sessions)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(s.path / "report.md")
    stale = f"stale: the worker (pid {pid}) is gone; `tjac resume {s.path}` continues it."
    assert err.strip() == stale
    text = (s.path / "report.md").read_text()
    assert "status **stale**" in text and stale in text and "running" not in text.split("##")[0]
    assert main(["ls", "--sessions", str(sessions)]) == 0
    assert describe(s)["status"] == "stale"  # the same word as tjac ls
    assert " stale " in capsys.readouterr().out

    assert main(["resume", str(s.path), "-q", "--sessions", str(sessions)]) == 0
    text = (s.path / "report.md").read_text()
    assert "status **done**" in text and "stale" not in text
    assert "## Regions" in text  # the finished run's spectrum, not the killed one's
