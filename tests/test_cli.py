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


# ---- tables at 80 columns ----------------------------------------------------------------------


def at_80(renderable) -> list[str]:
    """What a terminal of 80 columns shows of ``renderable``."""
    import io

    from rich.console import Console

    c = Console(width=80, record=True, file=io.StringIO())
    c.print(renderable)
    return c.export_text().splitlines()


def test_the_regions_table_at_80_columns_shows_every_value_whole():
    """The range of the bulk read ``0.9990079 .. 1.0009…`` and the region names ``chao…`` in
    a terminal of 80 columns; now every cell is whole, u.v and the subspace cosine too."""
    from engine.spectrum import region_rows, summarize
    from tjac_tui.cli import regions_table

    rng = np.random.default_rng(0)
    S = np.concatenate([1 + rng.uniform(1.1e-3, 1.6, 322), 1 + rng.uniform(-9.99e-4, 9.99e-4, 395),
                        rng.uniform(0.006, 0.998, 493)])
    S = np.sort(S)[::-1]
    eye = np.eye(len(S))
    summary = summarize(S, eye, eye, tol=1e-3)
    lines = at_80(regions_table(summary, 80))
    assert max(map(len, lines)) <= 80 and not any("…" in x for x in lines)
    for r in region_rows(summary):
        line = next((x for x in lines if x.startswith(r["region"])), "")
        assert line, (r["region"], lines)
        assert r["s range"] in line
        for c in ("count", "indices", "fraction", "u.v mean", "subspace cos"):
            assert str(r[c]) in line.split(), (c, line)


def test_the_sweep_table_at_80_columns_is_one_block_a_point():
    """``tjac sweep``'s table of 12 columns cut the point names, values, P and s_1 to ``…``
    at 80 columns; each point is a block of ``column  value`` lines there instead."""
    from engine.present.views import View
    from tjac_tui.cli import view_table

    cols = ["point", "values", "status", "P", "steps", "test acc", "s_1",
            "chaotic (tol=0.001)", "bulk (tol=0.001)", "stable (tol=0.001)", "bulk u.v",
            "time (s)"]
    rows = [[f"lr-{lr}-momentum-0.9", f"lr={lr}, momentum=0.9", "done", "1,210", "16", "0.912",
             "2.55227", "322 (26.6%)", "395 (32.6%)", "493 (40.7%)", "0.9999", "81"]
            for lr in ("0.05", "0.1", "0.2")]
    v = View("sweep.points", "Points", [], columns=cols, rows=rows, note="regions at bulk_tol")
    lines = at_80(view_table(v, 80, "lr-grid: 3 points"))
    assert max(map(len, lines)) <= 80 and not any("…" in x for x in lines)
    text = "\n".join(lines)
    for r in rows:
        assert f"point {r[0]}" in text
        for c, x in zip(cols[1:], r[1:]):
            assert re.search(rf"^  {re.escape(c)} +{re.escape(x)} *$", text, re.M), (c, x)


@pytest.mark.slow
def test_tjac_run_quick_in_a_terminal_of_80_columns(tmp_path):
    """The user's path: ``tjac run quick`` in a terminal (a pty) of 80 columns prints its
    regions table with the bulk's range whole and nothing cut to ``…``."""
    import pty

    out = tmp_path / "out"
    code = ("import fcntl, os, pty, struct, sys, termios\n"
            "pid, fd = pty.fork()\n"
            "if pid == 0:\n"
            "    os.execvp(sys.executable, [sys.executable, '-m', 'tjac_tui.cli', 'run', "
            "'quick', '--sessions', sys.argv[1], '--set', 'data.n_train=128', "
            "'--set', 'train.epochs=1'])\n"
            "fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 80, 0, 0))\n"
            "data = b''\n"
            "while True:\n"
            "    try:\n"
            "        d = os.read(fd, 65536)\n"
            "    except OSError:\n"
            "        break\n"
            "    if not d:\n"
            "        break\n"
            "    data += d\n"
            "_, status = os.waitpid(pid, 0)\n"
            "open(sys.argv[2], 'wb').write(data)\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")
    assert pty  # (the child forks one)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s"), str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.read_bytes().decode())
    from engine.spectrum import region_rows

    rows = region_rows(Session(tmp_path / "s" / "quick").spectrum())
    table = text[text.rindex("P = "):]  # the table (a bar's figures may be cut at the edge)
    assert "…" not in table
    for r in rows:
        line = next((x for x in table.splitlines() if x.startswith(r["region"])), "")
        assert line, (r["region"], table)
        assert r["s range"] in line and r["u.v mean"] in line and r["subspace cos"] in line


# ---- the error boundary ------------------------------------------------------------------------


def test_a_closed_pipe_is_quiet_and_exit_141(tmp_path, monkeypatch, capsys):
    """``tjac schema | head -c 1``: the reader has gone; no "Broken pipe" line and no exit 1
    (it printed "Broken pipe", exit 1), but exit 141 as for a command killed by SIGPIPE."""
    r, w = os.pipe()
    os.close(r)
    monkeypatch.setattr(sys, "stdout", open(w, "w"))
    assert main(["schema"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_plan_into_head_is_quiet(tmp_path):
    """``tjac run quick --plan | head -1``: the first line, then nothing on stderr but the
    probe's note, and exit 141."""
    p = subprocess.Popen([sys.executable, "-m", "tjac_tui.cli", "run", "quick", "--plan",
                          "--sessions", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("P = ")
    p.stdout.close()  # as head does after its line
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_a_missing_session_names_each_place_looked_once(tmp_path, capsys):
    """An absolute path that is no session was "looked in X and X"."""
    gone = tmp_path / "gone"
    assert main(["resume", str(gone), "--sessions", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"{gone}: no such session (looked in {gone})"
    assert main(["resume", "gone", "--sessions", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == \
        f"gone: no such session (looked in gone and {tmp_path / 'gone'})"


def run_shipped_preset_small(tmp_path, capsys, name: str, P: int, *sets: str) -> Session:
    """`tjac run presets/<name>.toml` at 2 steps (64 training images in batches of 32, plus
    ``sets``): the session is done with P parameters, its J has the three regions, and the
    region table the run prints gives each region's count."""
    args = ["run", str(PRESETS / f"{name}.toml"), "--sessions", str(tmp_path),
            "--set", "data.n_train=64", "--set", "train.batch_size=32"]  # (no -q: the table)
    for kv in sets:
        args += ["--set", kv]
    assert main(args) == 0
    out = capsys.readouterr().out
    s = Session(tmp_path / name)
    m = s.manifest()
    assert (m["status"], m["P"], m["steps"]) == ("done", P, 2)
    regions = s.spectrum()["regions"]
    assert sum(r["count"] for r in regions.values()) == P
    for k in ("chaotic", "bulk", "stable"):
        assert regions[k]["count"] > 0
        assert re.search(rf"^{k}\s+{regions[k]['count']}\s", out, re.M), (k, out)
    return s


@pytest.mark.slow
def test_the_attention_preset_runs_its_shipped_model_through_the_generic_path(tmp_path, capsys):
    """presets/attention-digits28.toml builds presets/models/attention.py's model (found
    relative to the preset) and its J, at 2 steps here, has the three regions."""
    run_shipped_preset_small(tmp_path, capsys, "attention-digits28", 850)


@pytest.mark.slow
def test_the_batchnorm_cnn_preset_carries_its_statistics_into_evaluation(tmp_path, capsys):
    """presets/bn-cnn-digits28.toml (BatchNorm and dropout in training mode, through the
    generic path) runs, at 2 steps here: J has the three regions, listed in the table the run
    prints, and buffersT.npz holds both layers' running statistics (cumulative averages of
    the batches, momentum=None: after 2 batches, no longer the initial zeros and ones)."""
    s = run_shipped_preset_small(tmp_path, capsys, "bn-cnn-digits28", 690, "train.epochs=1")
    buffers = s.load_npz("buffersT.npz")
    assert {k: v.shape for k, v in buffers.items()} == {
        "features.1.running_mean": (4,), "features.1.running_var": (4,),
        "features.4.running_mean": (8,), "features.4.running_var": (8,)}
    for layer in ("features.1", "features.4"):
        assert np.abs(buffers[f"{layer}.running_mean"]).min() > 0
        assert np.abs(buffers[f"{layer}.running_var"] - 1).min() > 0
    assert s.verify() == {}


def test_a_probe_that_fails_is_a_line_of_the_plan(tmp_path, capsys, monkeypatch):
    """A user model the probe cannot run (here: a forward-mode derivative torch lacks) ended
    `tjac run --plan` in a traceback; the plan says it in one line, after the sizes."""
    from engine import runner
    from tjac_tui.cli import main

    def broken(cfg):
        raise NotImplementedError("Trying to use forward AD with some_kernel that does not "
                                  "support it\nPlease file an issue")

    monkeypatch.setattr(runner, "probe", broken)
    assert main(["run", "quick", "--plan", "--sessions", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == ("no time probe: it failed: NotImplementedError: Trying to use forward AD "
                       "with some_kernel that does not support it")
    assert main(["run", "quick", "--plan", "--json", "--sessions", str(tmp_path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["probe_error"].startswith("NotImplementedError: Trying to use forward AD")
