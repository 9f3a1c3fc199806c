"""The command line as a user meets it: wrong names, running sessions, the preset schema, presets
that refer to files beside them, and a worker that cannot read its config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from engine import config, runner, worker
from engine.session import Session, describe
from tjac_tui.cli import main

from conftest import PRESETS


def tjac(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter (what a user runs)."""
    return subprocess.run([sys.executable, "-m", "tjac_tui.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


# ---- names that match nothing ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["nosuch", "not-a-session"])
def test_open_a_wrong_path_is_one_line_before_any_heavy_import(tmp_path, target):
    (tmp_path / "not-a-session").mkdir()
    code = ("import sys; from tjac_tui.cli import main; rc = main(['open', sys.argv[1], "
            "'--sessions', sys.argv[2]]); heavy = [m for m in ('textual', 'torch') if m in "
            "sys.modules]; print(heavy); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, target, str(tmp_path)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stdout.strip() == "[]"  # neither Textual nor torch was imported
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{target}: ")
    assert ("no such session" if target == "nosuch" else "not a session") in lines[0]


def test_unknown_preset_name_suggests_close_names(capsys, tmp_path):
    assert main(["run", "quik", "--sessions", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "quik: no such preset file or shipped preset; did you mean quick or cnn-quick?"
    assert main(["run", "paper-digits-sdg", "--sessions", str(tmp_path)]) == 2
    assert "did you mean paper-digits-sgd" in capsys.readouterr().err
    assert not (tmp_path / "quik").exists()


# ---- tjac ls while a run is live -----------------------------------------------------------------


def test_ls_shows_the_elapsed_time_of_a_running_session(tmp_path, capsys):
    s = Session.create(tmp_path, "live", config.load(PRESETS / "quick.toml"))
    started = (datetime.now(timezone.utc) - timedelta(seconds=95)).isoformat(timespec="seconds")
    s.update_manifest(status="running", stages={
        "train": {"status": "done", "seconds": 4.0},
        "jacobian": {"status": "running", "started": started, "seconds": 10.0}})
    s.acquire()  # a live worker holds the lock
    try:
        row = describe(s)
        assert row["status"] == "running"
        assert 4 + 10 + 95 <= row["seconds"] < 4 + 10 + 95 + 30
        assert main(["ls", "--sessions", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "running" in out and re.search(r"\b1m(49|5\d)s\b", out)  # 109 s and counting
    finally:
        s.release()
    assert describe(s)["status"] == "stale"
    assert describe(s)["seconds"] == pytest.approx(14.0)  # no live stage: the recorded time


# ---- the preset schema -------------------------------------------------------------------------


def test_schema_validates_the_shipped_presets_and_refuses_bad_ones(tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    import tomllib

    out = tmp_path / "tjac.schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    schema = json.loads(out.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    for p in PRESETS.glob("*.toml"):
        errors = list(validator.iter_errors(tomllib.loads(p.read_text())))
        assert not errors, (p.name, [e.message for e in errors])
    base = tomllib.loads((PRESETS / "quick.toml").read_text())
    bad = [("train", "lr", "fast"), ("train", "momentum", 1.0), ("train", "optimizer", "rmsprop"),
           ("train", "learning_rate", 0.1), ("model", "hidden", [16, 0]), ("data", "variant", 3)]
    for section, key, value in bad:
        table = json.loads(json.dumps(base))
        table[section][key] = value
        assert not validator.is_valid(table), (section, key, value)
        with pytest.raises(config.ConfigError):  # the loader agrees with the schema
            config.from_dict(table)
    assert not validator.is_valid({**base, "analysis": {"nope": {}}})
    assert validator.is_valid({**base, "analysis": {"ood": {"stride": 4}}})


# ---- paths in presets ----------------------------------------------------------------------------


@pytest.mark.slow
def test_relative_data_path_runs_from_another_directory_and_resumes(tmp_path):
    """A preset beside its data file (data.path = "data/x.npz"), started detached from another
    working directory, stopped after its first Jacobian chunk and resumed from a third."""
    proj = tmp_path / "project"
    (proj / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 12))
    np.savez(proj / "data" / "x.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    (proj / "rel.toml").write_text('name = "rel"\ndevice = "cpu"\nthreads = 1\n'
                                   '[data]\ndataset = "npz"\npath = "data/x.npz"\n'
                                   'test_size = 20\n[model]\nhidden = [8]\n'
                                   "[train]\nbatch_size = 20\nepochs = 3\n"
                                   "[jacobian]\nchunk = 4\n")
    elsewhere, third = tmp_path / "elsewhere", tmp_path / "third"
    elsewhere.mkdir()
    third.mkdir()
    sessions = tmp_path / "sessions"
    r = tjac("run", str(proj / "rel.toml"), "--sessions", str(sessions), "--detach",
             cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    s = Session(r.stdout.strip().splitlines()[-1])
    cfg_text = (s.path / "config.toml").read_text()
    assert f'path = "{proj / "data" / "x.npz"}"' in cfg_text  # stored absolute
    t0 = time.time()
    while not any(e["event"] == "jacobian_chunk" for e in s.events()[0]):
        assert time.time() - t0 < 120, s.manifest().get("error")
        time.sleep(0.05)
    worker.request_stop(s.path)
    while s.is_locked():
        time.sleep(0.05)
    assert s.manifest()["status"] in ("interrupted", "done")
    r = tjac("resume", str(s.path), "-q", cwd=third)
    assert r.returncode == 0, r.stderr
    assert s.manifest()["status"] == "done"
    assert s.load_npy("jacobian.npy").shape == (12 * 8 + 8 + 8 * 2 + 2,) * 2


def test_a_worker_that_cannot_read_its_config_marks_the_session_failed(tmp_path, capsys):
    s = Session.create(tmp_path, "broken", config.load(PRESETS / "quick.toml"))
    (s.path / "config.toml").write_text("[train]\nlr = = 1\n")
    assert runner.run_session(s.path) == runner.EXIT_FAILED
    m = s.manifest()
    assert m["status"] == "failed"  # (the config's digest is kept: it was edited)
    assert m["error"].startswith(f"{s.path}: damaged: config.toml: changed since the session "
                                 "was created; a session runs the config it was created with")
    assert len(m["error"].splitlines()) == 1
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_FAILED
    assert capsys.readouterr().err.strip().splitlines() == [m["error"]]
    del m["config_digest"]  # a session from before the digest was kept: the TOML is read
    s.write_manifest(m)
    assert runner.run_session(s.path) == runner.EXIT_FAILED
    m = s.manifest()
    assert m["error"].startswith(f"{s.path / 'config.toml'}: invalid TOML")
    assert len(m["error"].splitlines()) == 1
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{s.path}: {m['error']}"]


def test_plan_reports_the_chunk_probe(tmp_path, capsys):
    """--plan times the CPU chunk candidates and says which is fastest here; --json carries
    the figures; nothing is created."""
    assert main(["run", "quick", "--plan", "--json", "--set", "device=cpu",
                 "--sessions", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    cp = out["chunk_probe"]
    rates = {int(k): v for k, v in cp["column_steps_per_s"].items()}
    assert set(rates) == {64, 96, 128, 192, 256, 384, 512}  # all <= P = 1210
    assert cp["best"] == max(rates, key=rates.get) and min(rates.values()) > 0
    assert out["chunk"] == 128  # a run keeps the kernel's default
    # one measurement: the plan's rate is the table's figure for the run's chunk
    assert out["column_steps_per_s"] == rates[128]
    assert main(["run", "quick", "--plan", "--set", "device=cpu",
                 "--sessions", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("chunk probe"))
    best = int(re.search(r"fastest here (\d+)", line).group(1))  # (this probe's own winner)
    assert best in rates and line.startswith("chunk probe (column-steps/s): 64: ")
    assert not any(tmp_path.iterdir())


def test_run_refuses_json_without_plan_and_a_sweep_preset(tmp_path, capsys):
    """``--json`` belongs to ``--plan`` (it ran a whole run silently); a preset with a
    [sweep] is run by ``tjac sweep`` (``tjac run`` ran its base config alone)."""
    assert main(["run", "quick", "--json", "--sessions", str(tmp_path)]) == 2
    assert "--json goes with --plan" in capsys.readouterr().err
    assert main(["run", "sweep-width", "--sessions", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has a [sweep]" in err and "tjac sweep sweep-width" in err
    assert not any(tmp_path.iterdir())
