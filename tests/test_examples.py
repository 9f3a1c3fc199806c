"""examples/ run at their small sizes (``--small``), and docs/python.md's first code block (the
README's "From Python" snippet): each prints the figures it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "examples" / name), "--small"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def region_counts(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(chaotic|bulk|stable)\s+(\d+)", line)}


@pytest.mark.slow
def test_own_module_example():
    out = run_example("own_module.py").splitlines()
    assert out[0] == "P = 44, J (44, 44) torch.float64"
    s_max, s_min = map(float, re.findall(r"= ([\d.]+)", out[1]))
    assert s_max > 1 > s_min > 0
    assert sum(region_counts(out[2]).values()) == 44


@pytest.mark.slow
def test_lr_sweep_example():
    out = run_example("lr_sweep.py").splitlines()
    assert out[0] == "P = 310"
    rows = out[1:]
    assert [r.split()[1] for r in rows] == ["0.01", "0.1", "1"]
    assert all(sum(region_counts(r).values()) == 310 for r in rows)
    s_max = [float(r.split("s_max ")[1]) for r in rows]
    chaotic = [region_counts(r)["chaotic"] for r in rows]
    assert s_max == sorted(s_max) and chaotic == sorted(chaotic)  # larger steps, more chaos


@pytest.mark.slow
def test_open_session_example():
    out = run_example("open_session.py").splitlines()
    assert out[0] == "quick: [16] MLP, sgd lr 0.1, status done"
    assert out[1].startswith("step 16: train loss ")
    assert out[2].startswith("P = 1210, s_max = ") and out[2].endswith("bulk_tol = 0.001")
    assert sum(region_counts(out[3]).values()) == 1210


@pytest.mark.slow
def test_the_first_python_block_of_docs_python_md_runs():
    text = (REPO / "docs" / "python.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.fullmatch(r"torch.Size\(\[41, 41\]\) s_max = ([\d.]+) bulk = (\d+)\n", out.stdout)
    assert m, out.stdout
    assert float(m[1]) > 1 and 0 <= int(m[2]) <= 41
