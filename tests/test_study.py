"""Studies: the [study] section, a reduced study end to end through `tjac study`, resume."""

from __future__ import annotations

import re

import numpy as np
import pytest

from engine import config, regions, study
from engine.subspace import mean_cos_block, principal_cosines
from tjac_tui.cli import main

PRESET = """
name = "mini-study"
seed = 0
device = "cpu"
dtype = "float64"
threads = 1

[data]
n_train = 96

[model]
hidden = [3]            # P = 64*3 + 3 + 3*10 + 10 = 235

[train]
lr = 0.1
momentum = 0.9
schedule = "cosine"
batch_size = 32
epochs = 2

[analysis.distance]
subspaces = false
[analysis.init_change]

[study]
k_min = 20
n_k = 6
runs = [
  { name = "seed1", set = ["seed=1"] },
  { name = "shuffled", set = ['data.variant="shuffled_labels"'] },
  { name = "noise", set = ['data.variant="white_noise"', "analysis.init_change.enabled=false"] },
]
"""


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    preset = root / "mini-study.toml"
    preset.write_text(PRESET)
    assert main(["study", str(preset), "--sessions", str(root), "-q"]) == 0
    return study.Study(root / "mini-study")


def test_study_section_is_validated(tmp_path):
    base = PRESET.split("[study]")[0]
    p = tmp_path / "bad.toml"
    p.write_text(base + '[study]\nruns = [{ name = "a", set = ["train.lr=-1"] }]\n')
    with pytest.raises(config.ConfigError, match=r"study\.runs \(a\): .*train\.lr: expected a "
                                                 r"positive number"):
        study.plan(p)
    p.write_text(base + '[study]\nruns = [{ name = "a" }, { name = "a" }]\n')
    with pytest.raises(config.ConfigError, match=r"study\.runs: the name \"a\" is used twice"):
        config.load(p)
    p.write_text(base + '[study]\nreference = "zzz"\nruns = [{ name = "a" }]\n')
    with pytest.raises(config.ConfigError, match=r"study\.reference: expected one of the run "
                                                 r"names \(a, base\)"):
        config.load(p)
    p.write_text(base + '[study]\nnope = 1\n')
    with pytest.raises(config.ConfigError, match=r"study\.nope: unknown key"):
        config.load(p)
    p.write_text(base)
    with pytest.raises(config.ConfigError, match=r"expected a \[study\] section"):
        study.plan(p)
    p.write_text(PRESET)
    base_cfg, runs = study.plan(p)
    assert [r.name for r in runs] == ["base", "seed1", "shuffled", "noise"]
    assert runs[1].config.seed == 1 and runs[3].config.data.variant == "white_noise"
    assert not runs[3].config.analysis["init_change"].enabled
    assert all(r.config.study is None for r in runs)  # a run is not a study
    again = config.loads(config.dumps(base_cfg))  # the resolved preset round-trips
    assert again.study == base_cfg.study


@pytest.mark.slow
def test_a_reduced_study_end_to_end(finished_study):
    st = finished_study
    m = st.manifest()
    assert m["status"] == "done"
    for name, s in st.sessions():
        assert s.manifest()["status"] == "done", name
        assert s.has("analyses/distance.json")
    assert not st.session("noise").has("analyses/init_change.json")  # disabled for that run
    cross = st.cross()
    assert [r["name"] for r in cross["runs"]] == ["base", "seed1", "shuffled", "noise"]
    ov = cross["overlap"]
    assert set(ov["runs"]) == {"seed1", "shuffled", "noise"}
    assert ov["ks"][0] == 20 and ov["ks"][-1] == 235
    for curve in ov["runs"].values():
        assert curve[-1] == pytest.approx(1.0)  # k = P: the whole space
    arr = np.load(st.path / "analyses" / "study_overlap.npy")
    assert arr.shape == (5, len(ov["ks"]))

    report = (st.path / "report.md").read_text()
    for heading in ("# tjac study: mini-study", "## Runs", "## Spectra",
                    "### Singular values of J, every run", "### |s_i - 1|, every run",
                    "## Bulk-subspace overlap", "## Findings 7 and 8"):
        assert heading in report, heading
    # every section has numbers in it
    sections = re.split(r"\n## ", report)
    for sec in sections[1:]:
        assert re.search(r"\d\.\d", sec), sec[:80]
    assert report.count("```text") == 3
    assert "| seed1 |" in report and "| noise |" in report
    assert re.search(r"\| 7 \|.*\| (yes|no|partly) \|", report)
    assert re.search(r"\| 8 \|.*\| (yes|no|partly) \|", report)
    assert all(ord(c) < 128 for c in report)  # ASCII plots


@pytest.mark.slow
def test_study_overlap_against_direct_principal_angles(finished_study):
    st = finished_study
    ov = st.cross()["overlap"]
    a, b = st.session("base"), st.session("seed1")
    Sa, Va = a.load_npy("svd/S.npy"), a.load_npy("svd/Vh.npy")
    Sb, Vb = b.load_npy("svd/S.npy"), b.load_npy("svd/Vh.npy")
    for k, got in zip(ov["ks"], ov["runs"]["seed1"]):
        A = Va[regions.closest_to_unity(Sa, k)].T
        B = Vb[regions.closest_to_unity(Sb, k)].T
        assert got == pytest.approx(principal_cosines(A, B).mean(), abs=1e-9)
    M = Va @ Va.T
    assert mean_cos_block(M, 50, 50) == pytest.approx(1.0)


@pytest.mark.slow
def test_resuming_a_finished_study_redoes_nothing(finished_study, capsys):
    st = finished_study
    before = (st.path / "analyses" / "study.json").stat().st_mtime_ns
    calls = []

    def no_run(*a, **k):
        calls.append(a)
        return 0

    assert study.run(st.path, run_session=no_run) == 0
    assert calls == []  # every session was done
    assert (st.path / "analyses" / "study.json").stat().st_mtime_ns == before  # cached
    events = [e["event"] for e in st.events()[0]]
    assert events.count("study_end") == 2


@pytest.mark.slow
def test_study_resumes_an_unfinished_run(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(PRESET.replace('  { name = "noise"', '  # { name = "noise"')
                      .replace("[analysis.distance]\nsubspaces = false\n", "")
                      .replace("[analysis.init_change]\n", ""))
    st = study.create(tmp_path, preset)
    seen = []
    from engine import runner

    def flaky(path, listeners, handle_signals=False):
        seen.append(path.name)
        if path.name == "seed1" and seen.count("seed1") == 1:
            return runner.EXIT_INTERRUPTED
        return runner.run_session(path, listeners)

    assert study.run(st.path, run_session=flaky) == runner.EXIT_INTERRUPTED
    assert st.manifest()["status"] == "interrupted"
    assert study.run(st.path, run_session=flaky) == 0
    assert seen == ["base", "seed1", "seed1", "shuffled"]  # base was not rerun
    assert st.manifest()["status"] == "done" and st.cross()["overlap"]["runs"]
