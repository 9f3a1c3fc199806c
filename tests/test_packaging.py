"""The library without the workbench's packages, its typing marker, and the dependency floors:
engine (every module of it) imports and computes a training Jacobian in a process that refuses
textual, rich and plotext; the wheel carries py.typed; pyproject's floors are what
.ci/floors.sh installs."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUI_PACKAGES = ("textual", "rich", "plotext")

BARE = textwrap.dedent('''
    import importlib, pkgutil, sys
    import numpy as np


    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {names!r}:
                raise ImportError(f"{{name}} is refused here")
            return None


    sys.meta_path.insert(0, Refuse())
    import engine
    names = sorted(m.name for m in pkgutil.walk_packages(engine.__path__, "engine."))
    for name in names:
        importlib.import_module(name)

    from engine import config
    from engine.runner import run_session
    from engine.session import Session
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    np.savez(sys.argv[1] + "/tiny.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    cfg = config.from_dict({{
        "dtype": "float64", "device": "cpu",
        "data": {{"dataset": "npz", "path": sys.argv[1] + "/tiny.npz", "test_size": 8}},
        "model": {{"hidden": [3]}}, "train": {{"lr": 0.2, "batch_size": 8, "epochs": 1}}}})
    s = Session.create(sys.argv[1], "bare", cfg, "test")
    assert run_session(s.path) == 0
    J = s.load_npy("jacobian.npy")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {names!r})
    print(len(names), J.shape, loaded, sep="|")
''').format(names=TUI_PACKAGES)


@pytest.mark.slow
def test_the_library_imports_and_runs_without_the_workbench_packages(tmp_path):
    r = subprocess.run([sys.executable, "-c", BARE, str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    count, shape, loaded = r.stdout.strip().split("|")
    assert int(count) > 40  # every engine module, not a few
    assert shape == "(26, 26)"  # P = (5*3 + 3) + (3*2 + 2): the run's whole J
    assert loaded == "[]"


def test_the_packages_carry_py_typed():
    for pkg in ("engine", "tjac_tui"):
        assert (REPO / pkg / "py.typed").is_file()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in data["package-data"]["engine"]
    assert "py.typed" in data["package-data"]["tjac_tui"]


def test_every_dependency_has_a_floor_and_plotext_is_held_below_7():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    for req in reqs:
        assert re.match(r"^[A-Za-z0-9_.-]+(\[[^]]*\])?>=\d", req), req
    # asciiplot draws through plotext.figure, plotext 6's API (5.x has none: ImportError)
    assert "plotext>=6.0,<7" in project["dependencies"]
    # textual 8.0 itself needs rich >= 14.2
    assert "rich>=14.2" in project["dependencies"]
