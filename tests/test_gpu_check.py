"""benchmarks/gpu_check.sh, the one prepared run a GPU machine gets: its dry run on this CPU
passes on a bare image (no textual, plotext or matplotlib) and leaves every file it promises;
a hung SVD costs its own timeout, not the rest; the SVD's memory figures (the solver's
workspace, measured against the plan's) and the fit t = c n^3 are the arithmetic they say."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = {"env.txt", "gpu_tests.txt", "paper.json", "svd.json", "lenet.json", "summary.txt",
         "log.txt"}
STEPS = ("env", "tests", "paper", "svd", "lenet")
# an image without the TUI's packages: an import hook that refuses them
BLOCKER = '''import sys


class Refuse:
    names = ("textual", "plotext", "matplotlib")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is not on this image")
        return None


sys.meta_path.insert(0, Refuse())
'''


def benchmark(name: str):
    """A module of benchmarks/ (not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bare_env(tmp_path: Path) -> dict:
    block = tmp_path / "bare"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_BUDGET")}
    env["PYTHONPATH"] = os.pathsep.join([str(block)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    return env


@pytest.mark.slow
def test_the_dry_run_passes_on_a_bare_image(tmp_path):
    env = bare_env(tmp_path)
    for name in ("textual", "plotext", "matplotlib"):  # (the hook does refuse them)
        r = subprocess.run([sys.executable, "-c", f"import {name}"], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 1 and "is not on this image" in r.stderr
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run",
                        str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert {p.name for p in out.iterdir()} == FILES
    assert all(p.is_file() and p.stat().st_size < 1 << 20 for p in out.iterdir())

    summary = (out / "summary.txt").read_text().splitlines()
    steps = {ln.split()[1]: ln.split()[0] for ln in summary if ln.split()[1:2] and
             ln.split()[1] in STEPS}
    assert steps == {s: "PASS" for s in STEPS}, summary
    assert summary[-1].endswith("0 step(s) failed or skipped")
    assert any("paper-digits-sgd jacobian_s" in ln and "(target <= 1 s)" in ln for ln in summary)
    assert any(ln.startswith("figure  LeNet-5 J + SVD = ") for ln in summary)

    env_txt = (out / "env.txt").read_text()
    assert "engine.device.cuda_missing(): " in env_txt and "numerics (engine.device" in env_txt
    assert "textual: absent (not needed by any step)" in env_txt
    assert "MISSING" not in env_txt
    # every gpu test collected (and, on the CPU, skipped): as many as pytest finds marked
    marked = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-m", "gpu",
                             "-p", "no:cacheprovider", str(REPO / "tests")], cwd=REPO,
                            capture_output=True, text=True).stdout
    n_gpu = sum("::" in ln for ln in marked.splitlines())
    assert n_gpu >= 15 and f"{n_gpu} skipped" in (out / "gpu_tests.txt").read_text()

    paper = json.loads((out / "paper.json").read_text())
    assert paper["manifest"]["status"] == "done" and paper["spectrum"]["P"] == paper["figures"]["P"]
    kinds = [e["event"] for e in paper["events"]]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and "jacobian_chunk" in kinds
    stages = paper["manifest"]["stages"]
    assert paper["figures"]["jacobian_s"] == stages["jacobian"]["seconds"]
    assert [t["figure"] for t in paper["targets"]] == ["jacobian_s", "run_s"]
    assert paper["wall_s"] > paper["figures"]["run_s"] > 0

    svd = json.loads((out / "svd.json").read_text())
    measured = {(r["route"], r["n"]) for r in svd["rows"] if r.get("seconds", 0) > 0}
    assert measured == {(route, n) for route in ("gram-cuda", "direct-cuda") for n in (64, 256)}
    for f in svd["fit"].values():
        assert f["seconds"] == pytest.approx(f["c"] * 61706 ** 3)

    lenet = json.loads((out / "lenet.json").read_text())
    t, ex = lenet["timing"], lenet["extrapolation"]
    assert lenet["P"] == 61706 and t["chunk"] == 4 and len(t["per_step_s"]) == t["steps"] == 10
    assert t["seconds"] == pytest.approx(sum(t["per_step_s"]))
    chunk_s = t["seconds"] + (lenet["steps"] - 10) * t["step_s"]
    assert ex["compute_s"] == pytest.approx(math.ceil(61706 / 4) * chunk_s)
    assert ex["jacobian_s"] == max(ex["compute_s"], ex["write_s"])
    assert lenet["svd"]["seconds"] == pytest.approx(svd["fit"]["gram-cuda"]["seconds"])
    assert lenet["target"]["value_s"] == pytest.approx(ex["jacobian_s"] +
                                                       lenet["svd"]["seconds"])
    assert lenet["target"]["verdict"].startswith("n/a") and lenet["profile"]["top"]


def test_a_hung_svd_costs_its_own_timeout_and_the_larger_sizes_are_not_tried(tmp_path):
    """A row whose process outlives --timeout is recorded as timed out; the route is not tried
    at larger n (it would only take longer); the file is written all the same."""
    out = tmp_path / "svd.json"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "svd_routes.py"), "--device",
                        "cpu", "--sizes", "64", "128", "--timeout", "0.2", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert r.returncode == 1 and r.stderr.strip() == "no size was measured"
    rows = json.loads(out.read_text())["rows"]
    assert [(x["route"], x["n"], x.get("error") or x.get("skipped")) for x in rows] == [
        ("gram-cuda", 64, "timed out after 0.2 s"), ("direct-cuda", 64, "timed out after 0.2 s"),
        ("gram-cuda", 128, "failed at n = 64"), ("direct-cuda", 128, "failed at n = 64")]


def test_the_svd_fit_and_the_solvers_measured_workspace():
    sr = benchmark("svd_routes")
    c, rows = 2e-11, []
    for n in (4096, 8192, 16384):
        for route, extra in (("gram-cuda", 3.25), ("direct-cuda", 3.5)):
            row = {"n": n, "route": route, "seconds": c * n ** 3, "solver_s": 0.0,
                   "peak_bytes": 4 * 8 * n * n, "solver_extra_bytes": int(extra * 8 * n * n)}
            row.update(sr.memory_figures(row))
            rows.append(row)
    # the Gram route's syevd overwrites G in place: all of its extra memory is workspace (the
    # plan says 3 P^2); torch's SVD makes U, V and a copy of A (3 P^2) before gesvdj's own
    gram, direct = rows[-2], rows[-1]
    assert (gram["solver_workspace_P2"], gram["plan_solver_workspace_P2"]) == (3.25, 3.0)
    assert (direct["solver_workspace_P2"], direct["plan_solver_workspace_P2"]) == (0.5, 0.0)
    assert (gram["peak_P2"], gram["plan_peak_P2"], direct["plan_peak_P2"]) == (4.0, 4.0, 5.0)
    fit = sr.fit(rows, 61706)
    assert fit["gram-cuda"]["c"] == pytest.approx(c, rel=1e-12)
    assert fit["gram-cuda"]["exponent_last_two"] == pytest.approx(3.0)
    assert fit["gram-cuda"]["peak_bytes_at_target"] == 4 * 8 * 61706 ** 2


def test_the_summary_names_the_measured_workspace(tmp_path):
    sr, gc = benchmark("svd_routes"), benchmark("gpu_check")
    row = {"n": 16384, "route": "gram-cuda", "seconds": 80.0, "solver_s": 70.0,
           "peak_bytes": 4 * 8 * 16384 ** 2, "solver_extra_bytes": 3 * 8 * 16384 ** 2}
    row.update(sr.memory_figures(row))
    rows = [row, {"n": 32768, "route": "direct-cuda", "error": "timed out after 90 s"}]
    (tmp_path / "svd.json").write_text(json.dumps({"rows": rows, "fit": sr.fit(rows, 61706)}))
    lines = gc.figure_lines("svd", tmp_path)
    assert lines[0].startswith("figure  SVD gram-cuda at n = 61,706: 4274 s (extrapolated: "
                               "t = c n^3, c = 1.819e-11 s (least squares over n = 16,384)")
    assert lines[1].startswith("figure  SVD gram-cuda n = 16,384: 80 s, peak 4.00 P^2 (plan "
                               "4.00); the solver's workspace 3.00 P^2 (plan 3.00;")
    assert lines[2] == "figure  SVD direct-cuda n = 32,768: timed out after 90 s"


def test_steps_past_the_budget_are_skipped_and_the_check_fails(tmp_path):
    """GPU_CHECK_BUDGET is a hard limit: a step that would get under 10 s is not started, its
    summary line says SKIP, and the exit status is 1."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["GPU_CHECK_BUDGET"] = "15"
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--svd",
                        str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = (out / "summary.txt").read_text().splitlines()
    assert [ln.split()[:2] for ln in lines[1:3]] == [["SKIP", "env"], ["SKIP", "svd"]]
    assert lines[1].endswith("(budget spent)") and lines[3] == "figure  svd: no svd.json"
    assert lines[-1].endswith("of a 15 s budget, 2 step(s) failed or skipped")
    assert not (out / "env.txt").exists()
