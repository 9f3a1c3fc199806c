"""The stage table (engine.pipeline): the stages of a config, and what goes back to pending after
a rerun that wrote different bytes or a damaged file, seen in the manifest, the events and the
files of a tiny float64 session (P = 39)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pytest

from engine import config, pipeline, runner
from engine.sections import ANALYSES, AnalysisSpec, DistanceConfig
from engine.session import Session

from conftest import REPO, tiny_config

ANALYSED = {"distance": {}, "init_change": {}}


def analysed_config(npz, **extra) -> config.RunConfig:
    full = config.to_dict(tiny_config(npz))
    full["analysis"] = ANALYSED
    for k, v in extra.items():
        full.setdefault(k, {}).update(v)
    return config.from_dict(full)


@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_npz) -> Session:
    """A finished session with two analyses (copy it before changing it)."""
    s = Session.create(tmp_path_factory.mktemp("sessions"), "done", analysed_config(tiny_npz))
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    return s


def copy_of(s: Session, tmp_path) -> Session:
    path = tmp_path / s.path.name
    shutil.copytree(s.path, path)
    return Session(path)


def ran(s: Session, since: int) -> tuple[list[str], list[str], list[str]]:
    """(stages started, stages skipped, warnings) of the events after the first ``since``."""
    evs = s.events()[0][since:]
    return ([e["stage"] for e in evs if e["event"] == "stage_start"],
            [e["stage"] for e in evs if e["event"] == "stage_skip"],
            [e["message"] for e in evs if e["event"] == "warning"])


def forge(s: Session, rel: str, array: np.ndarray) -> None:
    """Replace a recorded array with other bytes and record it again (intact, but not what its
    stage computes), its stage left to run again."""
    stage = s.manifest()["files"][rel]["stage"]
    s.write_npy(rel, array, stage=stage)
    s.set_stage(stage, status="pending")


def test_the_stages_of_a_config_and_its_first_event(done, tiny_npz):
    """The run's stages, in the table's order, with the analyses where the config enables
    them; run_start names them; torch-free session_stages gives the same list."""
    names = ["train", "jacobian", "svd", "spectrum", "analysis.distance", "analysis.init_change"]
    start = next(e for e in done.events()[0] if e["event"] == "run_start")
    assert start["stages"] == names
    assert pipeline.names(pipeline.session_stages(done.config(), done.manifest())) == names
    assert set(done.manifest()["stages"]) == set(names)
    cfg = tiny_config(tiny_npz)
    off = dataclasses.replace(cfg, jacobian=dataclasses.replace(cfg.jacobian, svd=False))
    assert pipeline.names(pipeline.stages_of(off, [])) == ["train", "jacobian"]
    mf = dataclasses.replace(cfg, spectrum=dataclasses.replace(cfg.spectrum, method="matfree"))
    assert pipeline.names(pipeline.stages_of(mf, [3])) == ["train", "matfree"]
    assert pipeline.names(pipeline.stages_of(cfg, [3]))[:5] == [
        "train", "jacobian", "svd", "spectrum", "snapshots"]


def test_every_recorded_file_is_one_its_stage_declares(done):
    m = done.manifest()
    for rel, rec in m["files"].items():
        if rel != "config.toml":
            assert pipeline.stage(rec["stage"]).writes_file(rel), (rel, rec["stage"])


def test_analyses_are_generated_from_the_registry(monkeypatch, tiny_npz):
    """A registered analysis is a stage after spectrum, needing it, run when enabled."""
    monkeypatch.setitem(ANALYSES, "echo", AnalysisSpec("echo", DistanceConfig, "Echo",
                                                       "engine.experiments.distance"))
    st = pipeline.stage("analysis.echo")
    assert (st.needs, st.title, st.body) == (("spectrum",), "Echo",
                                             "engine.stages.analysis:run")
    cfg = tiny_config(tiny_npz)
    cfg = dataclasses.replace(cfg, analysis={"echo": DistanceConfig()})
    assert pipeline.names(pipeline.stages_of(cfg, [])) == [
        "train", "jacobian", "svd", "spectrum", "analysis.echo"]
    assert "analysis.echo" in pipeline.dependents("train", ["train", "jacobian", "svd",
                                                            "spectrum", "analysis.echo"])


def test_the_table_imports_no_torch():
    code = ("import sys, engine.pipeline as p, engine.config as c; "
            "cfg = c.load('presets/quick.toml'); "
            "assert [s.name for s in p.session_stages(cfg, {})][:4] == "
            "['train', 'jacobian', 'svd', 'spectrum']; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_an_svd_that_comes_out_different_reruns_what_needs_it_only(done, tmp_path):
    """svd/S.npy forged and the svd stage pending: the svd runs again, writes the true S, and
    spectrum and both analyses run again (they need it); train and jacobian are skipped."""
    s = copy_of(done, tmp_path)
    true_S = s.load_npy("svd/S.npy")
    forge(s, "svd/S.npy", true_S * 2)
    n = len(s.events()[0])
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    started, skipped, warnings = ran(s, n)
    assert started == ["svd", "spectrum", "analysis.distance", "analysis.init_change"]
    assert skipped == ["train", "jacobian"]
    assert warnings == ["svd: svd/S.npy came out different; the later stages run again"]
    assert np.array_equal(s.load_npy("svd/S.npy"), true_S)
    assert s.read_json("spectrum.json") == done.read_json("spectrum.json")
    assert all(v["status"] == "done" for v in s.manifest()["stages"].values())


def test_an_analysis_that_comes_out_different_reruns_no_other(done, tmp_path):
    """Analyses need the spectrum, not each other: a forged analysis array, its stage run
    again, sends no other analysis back (every later stage ran again before)."""
    s = copy_of(done, tmp_path)
    rel = "analyses/distance_abs.npy"
    forge(s, rel, s.load_npy(rel) + 1)
    n = len(s.events()[0])
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    started, skipped, _ = ran(s, n)
    assert started == ["analysis.distance"]
    assert skipped == ["train", "jacobian", "svd", "spectrum", "analysis.init_change"]
    assert np.array_equal(s.load_npy(rel), done.load_npy(rel))


def test_a_training_that_comes_out_different_recomputes_every_chunk(done, tmp_path):
    """thetaT.npz forged (train pending): training runs again, and J with it from its first
    chunk (the jacobian stage's partial state is reset: no chunk is taken as done)."""
    s = copy_of(done, tmp_path)
    arrays = s.load_npz("thetaT.npz")
    s.write_npz("thetaT.npz", {k: v + 1 for k, v in arrays.items()}, stage="train")
    s.set_stage("train", status="pending")
    n = len(s.events()[0])
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    started, skipped, _ = ran(s, n)
    assert started == ["train", "jacobian", "svd", "spectrum", "analysis.distance",
                       "analysis.init_change"] and skipped == []
    start = next(e for e in s.events()[0][n:] if e["event"] == "jacobian_start")
    assert start["done"] == 0
    assert np.array_equal(s.load_npy("jacobian.npy"), done.load_npy("jacobian.npy"))


def test_a_damaged_summary_reruns_its_stage_alone(done, tmp_path):
    """spectrum.json damaged: the spectrum stage runs again (its SVD computed again, since
    this process has none), the same bytes come out, nothing else runs."""
    s = copy_of(done, tmp_path)
    (s.path / "spectrum.json").write_text("{}")
    n = len(s.events()[0])
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    started, skipped, warnings = ran(s, n)
    assert started == ["spectrum"]
    assert skipped == ["train", "jacobian", "svd", "analysis.distance", "analysis.init_change"]
    assert warnings[0].startswith("spectrum.json: ") and warnings[0].endswith(
        "; stage spectrum runs again")
    assert s.read_json("spectrum.json") == done.read_json("spectrum.json")


def test_a_damaged_snapshot_file_whose_j_was_not_kept_recomputes_that_j(tmp_path, tiny_npz):
    """snapshot_keep = "svd" deletes a snapshot's J once it is analysed; its S.npy damaged
    sends the snapshots stage back and, its input being gone, the jacobian stage too (from
    what the table declares: snapshots' sources, jacobian's writes)."""
    cfg = analysed_config(tiny_npz, jacobian={"snapshots": [3], "snapshot_keep": "svd"},
                          spectrum={"svd_method": "gesdd"})  # (no SVD child process)
    s = Session.create(tmp_path, "snap", cfg)
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    d = "snapshots/step_000003"
    assert not s.has(f"{d}/jacobian.npy") and s.has(f"{d}/svd/S.npy")
    S = s.load_npy(f"{d}/svd/S.npy")
    with open(s.path / d / "svd" / "S.npy", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    n = len(s.events()[0])
    assert runner.run_session(s.path) == runner.EXIT_OK, s.manifest().get("error")
    started, skipped, _ = ran(s, n)
    assert started == ["jacobian", "snapshots"]
    assert skipped == ["train", "svd", "spectrum", "analysis.distance", "analysis.init_change"]
    assert np.array_equal(s.load_npy(f"{d}/svd/S.npy"), S)
    assert not s.has(f"{d}/jacobian.npy") and s.verify() == {}
