"""Fault injection: damaged, interrupted and hostile sessions, presets and environments.

Each case is tried on a small session (P = 610 in ten chunks of 64) the way a user or a hostile
user would meet it, and must end one of two ways: a refusal in one line with the right exit
status, or a resume that ends bitwise equal to a run that was never disturbed. Nothing may end
with exit 0 and wrong numbers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import config, jacobian, plan, runner, worker
from engine.session import Session, SessionLocked, describe
from tjac_tui.cli import main

from conftest import PRESETS

REPO = Path(__file__).resolve().parents[1]
SMALL = {"name": "small", "device": "cpu", "threads": 1, "data": {"n_train": 128},
         "model": {"hidden": [8]}, "train": {"lr": 0.1, "momentum": 0.9, "schedule": "cosine",
                                             "batch_size": 32, "epochs": 2},
         "jacobian": {"chunk": 64}}
P_SMALL = 64 * 8 + 8 + 8 * 10 + 10
OUTPUTS = ("theta0.npz", "thetaT.npz", "jacobian.npy", "svd/S.npy", "svd/U.npy", "svd/Vh.npy",
           "svd/alignment.npy", "spectrum.json")


def small_config(**sections) -> config.RunConfig:
    table = json.loads(json.dumps(SMALL))
    for k, v in sections.items():
        table.setdefault(k, {}).update(v) if isinstance(v, dict) else table.update({k: v})
    return config.from_dict(table)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Session:
    """The undisturbed run every repaired one must equal."""
    s = Session.create(tmp_path_factory.mktemp("clean"), "clean", small_config())
    assert runner.run_session(s.path) == runner.EXIT_OK
    return s


def copy_of(clean: Session, tmp_path: Path, name: str = "copy") -> Session:
    shutil.copytree(clean.path, tmp_path / name)
    return Session(tmp_path / name)


def interrupted(clean: Session, tmp_path: Path, chunks_done: int = 4) -> Session:
    """A copy of the clean session as a worker killed in its Jacobian stage leaves it: the
    first chunks written and recorded, the stages after it not run."""
    s = copy_of(clean, tmp_path, "interrupted")
    store = jacobian.JacobianStore(s.path, P_SMALL, 64, np.dtype("float32"))
    store.done = {i: d for i, d in store.done.items() if i < chunks_done}
    store._save_progress()  # noqa: SLF001 - setting up the fault
    with open(s.path / "jacobian.npy", "r+b") as f:  # the unfinished chunks: never written
        f.seek(store.offset + chunks_done * 64 * P_SMALL * 4)
        f.write(bytes(os.path.getsize(s.path / "jacobian.npy") - f.tell()))
    m = s.manifest()
    m["status"] = "running"
    m["files"] = {k: v for k, v in m["files"].items() if v["stage"] == "train"}
    for st in ("jacobian", "svd", "spectrum"):
        m["stages"][st] = {"status": "running" if st == "jacobian" else "pending"}
    s.write_manifest(m)
    for rel in OUTPUTS[3:]:
        (s.path / rel).unlink()
    return s


def assert_equal_to(s: Session, clean: Session) -> None:
    assert s.manifest()["status"] == "done"
    for rel in OUTPUTS:
        assert (s.path / rel).read_bytes() == (clean.path / rel).read_bytes(), rel
    assert s.verify() == {}


# ---- silent wrong results ------------------------------------------------------------------------


def test_a_truncated_jacobian_is_recomputed_not_zero_filled(clean, tmp_path):
    s = interrupted(clean, tmp_path)
    os.truncate(s.path / "jacobian.npy", 100_000)  # inside chunk 1
    assert runner.run_session(s.path) == runner.EXIT_OK
    warnings = [e["message"] for e in s.events()[0] if e["event"] == "warning"]
    assert any("did not match their digests" in w for w in warnings)
    assert_equal_to(s, clean)


def test_a_progress_record_claiming_unwritten_chunks_is_not_believed(clean, tmp_path):
    s = interrupted(clean, tmp_path, chunks_done=5)
    prog = json.loads((s.path / "jacobian.progress.json").read_text())
    prog["done"] = {str(i): prog["done"]["0"] for i in range(10)}  # "all ten are done"
    (s.path / "jacobian.progress.json").write_text(json.dumps(prog))
    assert runner.run_session(s.path) == runner.EXIT_OK
    assert_equal_to(s, clean)


def test_a_replaced_theta_t_is_trained_again(clean, tmp_path):
    s = interrupted(clean, tmp_path)
    arrays = s.load_npz("thetaT.npz")
    np.savez(s.path / "thetaT.npz", **{k: v + 0.5 for k, v in arrays.items()})
    assert runner.run_session(s.path) == runner.EXIT_OK
    assert_equal_to(s, clean)


def test_a_theta_t_that_training_does_not_reproduce_fails_the_run(clean, tmp_path, capsys):
    """Even with its checksum recorded (so nothing looks damaged), a theta_T that the
    Jacobian's own training does not reach is refused: primal_dev above its bound."""
    s = interrupted(clean, tmp_path)
    arrays = s.load_npz("thetaT.npz")
    s.write_npz("thetaT.npz", {k: v + 0.5 for k, v in arrays.items()}, stage="train")
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0.5 away from thetaT.npz" in err[0]
    assert "`tjac resume` trains again" in err[0]
    m = s.manifest()
    assert m["status"] == "failed" and m["stages"]["jacobian"]["status"] == "failed"
    # as it says: the next resume trains again, and then computes J from that training
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_OK
    assert_equal_to(s, clean)


def test_a_manifest_that_says_done_over_unfinished_stages_is_not_believed(clean, tmp_path,
                                                                           capsys):
    """An interrupted session whose status was edited to "done": ls said done, report
    reported it and resume said "already done"; now it is damaged until resume finishes it."""
    s = interrupted(clean, tmp_path)
    m = s.manifest()
    m["status"] = "done"
    s.write_manifest(m)
    row = describe(s)
    assert row["status"] == "damaged"
    assert row["problem"] == "manifest.json: says done, but stage jacobian is running"
    assert main(["report", str(s.path)]) == runner.EXIT_FAILED
    capsys.readouterr()
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_OK
    assert "already done" not in capsys.readouterr().err
    assert_equal_to(s, clean)
    assert describe(s)["status"] == "done"


@pytest.mark.parametrize("edit", ["changed", "missing"])
def test_an_edited_config_is_named_and_refused_not_run(clean, tmp_path, capsys, edit):
    """config.toml is what ran: an edit (here lr) made resume fail at the Jacobian, naming a
    remedy that did not work; now ls, report, compare and resume name the file and say what
    to do, and resume touches nothing. Put back, the session resumes."""
    s = interrupted(clean, tmp_path)
    original = (s.path / "config.toml").read_text()
    # an analysis added is not an edit of what ran: it runs as one more stage
    (s.path / "config.toml").write_text(original + "\n[analysis.distance]\n")
    assert s.verify(deep=False) == {}
    if edit == "changed":
        (s.path / "config.toml").write_text(original.replace("lr = 0.1", "lr = 0.05"))
    else:
        (s.path / "config.toml").unlink()
    before = (s.path / "manifest.json").read_bytes()
    row = describe(s)
    assert row["status"] == "damaged" and row["problem"].startswith(f"config.toml: {edit}")
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.toml" in err[0] and "put that one back" in err[0]
    assert (s.path / "manifest.json").read_bytes() == before
    assert main(["report", str(s.path)]) == runner.EXIT_FAILED
    assert "config.toml" in capsys.readouterr().err
    (s.path / "config.toml").write_text(original)
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_OK
    assert_equal_to(s, clean)


@pytest.mark.parametrize("damage", ["truncate J", "flip thetaT", "delete S"])
def test_damage_to_a_finished_session_is_seen_and_repaired(clean, tmp_path, capsys, damage):
    s = copy_of(clean, tmp_path)
    rel = {"truncate J": "jacobian.npy", "flip thetaT": "thetaT.npz",
           "delete S": "svd/S.npy"}[damage]
    p = s.path / rel
    if damage == "truncate J":
        os.truncate(p, p.stat().st_size - 1000)
    elif damage == "flip thetaT":
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    else:
        p.unlink()
    # tjac ls: damaged, the file named
    assert main(["ls", "--sessions", str(tmp_path)]) == 0
    row = describe(s)
    assert row["status"] == "damaged" and row["problem"].startswith(rel)
    # the report refuses, in one line naming the file
    capsys.readouterr()
    assert main(["report", str(s.path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"damaged: {rel}" in err[0] and "tjac resume" in err[0]
    # resume recomputes what is damaged, and only that
    seen = len(s.events()[0])
    assert main(["resume", str(s.path), "-q"]) == 0
    assert_equal_to(s, clean)
    stages = [e["stage"] for e in s.events()[0][seen:] if e["event"] == "stage_start"]
    assert stages == {"truncate J": ["jacobian"], "flip thetaT": ["train"],
                      "delete S": ["svd"]}[damage]


def test_a_kill_between_svd_and_spectrum_resumes_from_float64(clean, tmp_path):
    s = copy_of(clean, tmp_path)
    m = s.manifest()
    m["status"] = "running"
    m["stages"]["spectrum"] = {"status": "running"}
    m["files"].pop("spectrum.json")
    s.write_manifest(m)
    (s.path / "spectrum.json").unlink()
    assert runner.run_session(s.path) == runner.EXIT_OK
    assert_equal_to(s, clean)  # spectrum.json byte for byte: alignment means to the last bit


def test_a_jacobian_that_overflows_stops_naming_the_step(tmp_path, capsys):
    cfg = small_config(train={"lr": 1e5, "momentum": 0.0, "schedule": "constant", "epochs": 6})
    s = Session.create(tmp_path, "blowup", cfg)
    code = runner.run_session(s.path)
    m = s.manifest()
    assert code == runner.EXIT_FAILED, m
    assert m["stages"]["jacobian"]["status"] == "failed"
    assert "svd" not in m["stages"] or m["stages"]["svd"].get("status") != "done"
    assert m["error"].startswith("the Jacobian is not finite: the tangents of columns 0-63 "
                                 "overflowed at step ")
    assert "lower train.lr" in m["error"]
    step = int(m["error"].split("at step ")[1].split()[0])
    assert 1 <= step <= 24
    assert jacobian.JacobianStore(s.path, P_SMALL, 64, np.dtype("float32")).done == {}


# ---- failures: one line and a clean status -----------------------------------------------------


def test_a_run_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, capsys):
    code = main(["run", "quick", "--sessions", str(tmp_path / "s"), "--set",
                 "model.hidden=[4000]", "--set", "device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("this run needs ") and "P = 300,010" in err[0]
    assert "jacobian.npy alone 360.0 GB" in err[0]
    assert not (tmp_path / "s").exists()


def test_a_full_disk_at_the_start_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plan, "free_disk", lambda path: 4_000_000)
    assert main(["run", "quick", "--sessions", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"and {tmp_path} has 4.0 MB free") and "\n" not in err


def test_a_full_disk_during_the_jacobian_fails_resumably(clean, tmp_path, capsys, monkeypatch):
    s = Session.create(tmp_path, "enospc", small_config())
    real = jacobian.JacobianStore.write

    def write(store, index, rows):
        if index == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(store.path))
        return real(store, index, rows)

    monkeypatch.setattr(jacobian.JacobianStore, "write", write)
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{s.path}: {s.path / 'jacobian.npy'}: No space left on device"]
    assert s.manifest()["status"] == "failed" and not s.is_locked()
    monkeypatch.setattr(jacobian.JacobianStore, "write", real)  # space was freed
    assert main(["resume", str(s.path), "-q"]) == 0
    assert_equal_to(s, clean)


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_a_sessions_path_that_is_not_a_folder_is_one_line(tmp_path, capsys, where):
    f = tmp_path / "file"
    f.write_text("x")
    sessions = f if where == "a file" else f / "sub"
    code = main(["run", "quick", "--sessions", str(sessions), "-q", "--set",
                 "jacobian.enabled=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and len(err) == 1 and str(f) in err[0], err


@pytest.mark.parametrize("content", [b"{garbage", b'{"status": "do', b"[1, 2, 3]", b""])
def test_a_damaged_manifest_is_listed_and_resume_starts_over(clean, tmp_path, capsys, content):
    s = copy_of(clean, tmp_path)
    copy_of(clean, tmp_path, "fine")
    (s.path / "manifest.json").write_bytes(content)
    assert main(["ls", "--sessions", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fine" in out and "done" in out and "damaged" in out
    assert describe(s)["status"] == "damaged"
    assert main(["report", str(s.path)]) == 1
    assert "damaged: manifest.json" in capsys.readouterr().err
    assert main(["resume", str(s.path), "-q"]) == 0
    assert (s.path / "manifest.json.damaged").read_bytes() == content
    assert_equal_to(s, clean)


def test_a_broken_config_is_one_line_on_resume(clean, tmp_path, capsys):
    s = copy_of(clean, tmp_path)
    m = s.manifest()
    m["status"] = "interrupted"
    s.write_manifest(m)
    (s.path / "config.toml").write_text("[train\nlr = 1\n")
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.toml: changed since the session was created" in err[0]
    m = s.manifest()  # a session from before the config's digest was kept
    del m["config_digest"]
    s.write_manifest(m)
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.toml: invalid TOML" in err[0]


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "bogus"])
def test_a_device_that_is_not_here_is_refused_before_a_session_is_touched(
        clean, tmp_path, capsys, monkeypatch, device):
    """``run --device`` / ``--set device=`` and ``resume --device`` naming CUDA where there is
    none (or no device at all): one line, exit 2; nothing created, the interrupted session
    left as it was (the worker used to mark it failed)."""
    from engine import device as device_mod

    monkeypatch.setattr(device_mod, "NVIDIA_DRIVER", str(tmp_path / "no-driver"))
    monkeypatch.setattr(device_mod, "DEVICE_DIR", str(tmp_path / "no-dev"))  # no GPU node
    s = interrupted(clean, tmp_path)
    before = (s.path / "manifest.json").read_bytes()
    for argv in (["run", str(PRESETS / "quick.toml"), "--sessions", str(tmp_path / "new"),
                  "--device", device],
                 ["run", str(PRESETS / "quick.toml"), "--sessions", str(tmp_path / "new"),
                  "--set", f"device={json.dumps(device)}"],
                 ["resume", str(s.path), "--device", device, "-q"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and (f'device = "{device}"' in err[0] or "device:" in err[0]), err
    if device != "bogus":
        assert "CUDA is not available on this machine" in err[0]
    assert not (tmp_path / "new").exists()
    assert (s.path / "manifest.json").read_bytes() == before


# ---- locks -------------------------------------------------------------------------------------


def test_a_second_worker_on_a_locked_session_is_one_line(clean, tmp_path):
    s = copy_of(clean, tmp_path)
    s.acquire()
    try:
        r = subprocess.run([sys.executable, "-m", "engine.runner", str(s.path)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            f"{s.path}: another process (pid {os.getpid()}) is writing this session"]
        # deleting files cannot take the lock away
        for p in s.path.glob(".*"):
            if p.is_file():
                p.unlink()
        assert describe(s)["status"] == "done" and s.is_locked()
        with pytest.raises(SessionLocked):
            Session(s.path).acquire()
    finally:
        s.release()


@pytest.mark.slow
def test_signals_stop_the_svd_and_an_analysis_within_seconds(tmp_path):
    """SIGTERM while the SVD runs (a long LAPACK call) and while an analysis runs: the worker
    stops within a few seconds with exit 3, and the session resumes to done."""
    cfg = small_config(model={"hidden": [48]}, jacobian={"chunk": 0},
                       train={"epochs": 1}, analysis={"restricted": {"k_min": 100, "n_k": 8,
                                                                     "batch_runs": 2}})
    s = Session.create(tmp_path, "signals", cfg)
    for stage in ("svd", "analysis.restricted"):
        proc = worker.start_worker(s.path)
        t0 = time.time()
        while not any(e["event"] == "stage_start" and e["stage"] == stage
                      for e in s.events()[0]):
            assert proc.poll() is None and time.time() - t0 < 240, s.manifest().get("error")
            time.sleep(0.05)
        time.sleep(0.3)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == runner.EXIT_INTERRUPTED
        assert time.time() - sent < 5, stage
        m = s.manifest()
        assert m["status"] == "interrupted" and m["stages"][stage]["status"] == "interrupted"
        assert not s.is_locked()
    assert runner.run_session(s.path) == runner.EXIT_OK


# ---- presets -----------------------------------------------------------------------------------

BASE = (PRESETS / "quick.toml").read_text()
HOSTILE = {
    "deep nesting": ("x = " + "[" * 5000 + "]" * 5000 + "\n" + BASE, "nested too deeply"),
    "long name": (BASE.replace('name = "quick"', 'name = "' + "a" * 300 + '"'),
                  "name: expected a name of 1-100 letters"),
    "path name": (BASE.replace('name = "quick"', 'name = "a/b/c"'), "name: expected a name"),
    "dotdot name": (BASE.replace('name = "quick"', 'name = "../../x"'), "name: expected a name"),
    "NUL name": (BASE.replace('name = "quick"', 'name = "a\\u0000b"'), "name: expected a name"),
    "huge seed": (BASE.replace("seed = 0", "seed = 1180591620717411303424"),
                  "seed: expected an integer in [0, 4294967295]"),
    "momentum 1": (BASE.replace("momentum = 0.9", "momentum = 1.0"),
                   "train.momentum: expected a number in [0, 1), got 1.0"),
    "adam beta 1": (BASE.replace('optimizer = "sgd"', 'optimizer = "adam"\nbeta2 = 1.0'),
                    "train.beta2: expected a number in [0, 1), got 1.0"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_preset_values_are_one_line_exit_2(tmp_path, capsys, case):
    text, expected = HOSTILE[case]
    p = tmp_path / "x.toml"
    p.write_text(text)
    assert main(["run", str(p), "--sessions", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{p}: ") and expected in err[0], err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["../../escaped", "/abs", "-x", "a" * 101, "a/b"])
def test_session_names_are_one_path_component(tmp_path, capsys, name):
    root = tmp_path / "deep" / "sessions"
    assert main(["run", "quick", f"--name={name}", "--sessions", str(root)]) == 2
    assert "name: expected a name of 1-100 letters" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not root.exists()
    assert main(["sweep", str(PRESETS / "paper-digits-study.toml"), f"--name={name}",
                 "--sessions", str(root)]) == 2
    assert not root.exists() or not list(root.iterdir())


def test_bad_numbers_in_data_and_init_name_the_cause(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 4))
    x[3, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    cfg = small_config(data={"dataset": "npz", "path": str(tmp_path / "d.npz"), "test_size": 10,
                             "n_train": 0})
    s = Session.create(tmp_path, "nan-data", cfg)
    assert runner.run_session(s.path) == runner.EXIT_FAILED
    assert s.manifest()["error"] == f"{tmp_path / 'd.npz'}: x has 1 non-finite value(s) (NaN " \
                                    "or infinity)"
    ok = Session.create(tmp_path, "ok", small_config(jacobian={"enabled": False}))
    assert runner.run_session(ok.path) == 0
    arrays = ok.load_npz("theta0.npz")
    arrays["layers.1.bias"][0] = np.inf
    np.savez(tmp_path / "init.npz", **arrays)
    s = Session.create(tmp_path, "inf-init", small_config(model={"init": str(tmp_path /
                                                                               "init.npz")}))
    assert runner.run_session(s.path) == runner.EXIT_FAILED
    assert "layers.1.bias has non-finite values" in s.manifest()["error"]


def test_set_a_whole_table_merges_with_the_preset():
    cfg = config.load(PRESETS / "quick.toml", ["train={lr=1}"])
    assert cfg.train.lr == 1.0 and cfg.train.momentum == 0.9 and cfg.train.epochs == 2


# ---- left-overs ----------------------------------------------------------------------------------


def test_temp_files_of_a_killed_writer_are_removed_on_resume(clean, tmp_path):
    s = copy_of(clean, tmp_path)
    for name in (".manifest.json.123.tmp", "svd/.U.npy.456.tmp"):
        (s.path / name).write_bytes(b"half")
    assert runner.run_session(s.path) == 0
    assert not list(s.path.rglob(".*.tmp"))


def test_a_half_written_event_line_does_not_swallow_the_next(tmp_path):
    s = Session.create(tmp_path, "ev", small_config())
    with open(s.path / "events.jsonl", "ab") as f:
        f.write(b'{"event": "train_step", "st')  # a writer killed mid-line
    s.append_jsonl("events.jsonl", {"event": "warning", "message": "next"})
    events = s.events()[0]
    assert events == [{"event": "warning", "message": "next"}]


def test_a_kill_inside_session_creation_leaves_no_directory(tmp_path):
    code = ("import os, signal, sys\n"
            "from engine import config, files\n"
            "from engine.session import Session\n"
            "real = files.atomic_write_json\n"
            "def dying(path, obj):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "import engine.session as es\n"
            "es.atomic_write_json = dying\n"
            f"Session.create(sys.argv[1], 'victim', config.load({str(PRESETS / 'quick.toml')!r}))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    Session.create(tmp_path, "next", small_config())  # cleans the dead creator's leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["next"]


# ---- what the worker imports -----------------------------------------------------------------------


def test_the_detached_worker_does_not_import_from_the_current_directory(tmp_path):
    marker = tmp_path / "HIJACKED"
    for mod in ("tomli_w", "numpy", "plotext"):
        (tmp_path / f"{mod}.py").write_text(f"open({str(marker)!r}, 'w').write('{mod}')\n"
                                            "raise ImportError('planted')\n")
    r = subprocess.run(["tjac" if shutil.which("tjac") else sys.executable, *(
        [] if shutil.which("tjac") else ["-m", "tjac_tui.cli"]), "run", str(PRESETS /
        "quick.toml"), "--detach", "--sessions", str(tmp_path / "s"), "--set",
        "jacobian.enabled=false"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    path = Path(r.stdout.strip().splitlines()[-1])
    t0 = time.time()
    while Session(path).manifest()["status"] in ("created", "running"):
        assert time.time() - t0 < 120
        time.sleep(0.1)
    assert Session(path).manifest()["status"] == "done", Session(path).manifest().get("error")
    assert not marker.exists()


def test_model_build_resolves_the_same_way_in_the_foreground_and_detached(tmp_path):
    (tmp_path / "mynet.py").write_text("import torch\n"
                                       "def build(n_in, n_out):\n"
                                       "    return torch.nn.Linear(n_in, n_out)\n")
    preset = tmp_path / "user.toml"
    preset.write_text(BASE.replace("[model]", '[model]\nbuild = "mynet:build"'))
    errors = []
    for extra in ([], ["--detach"]):
        r = subprocess.run([sys.executable, "-m", "tjac_tui.cli", "run", str(preset), "-q",
                            "--sessions", str(tmp_path / "s"), *extra], capture_output=True,
                           text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 2 and r.stdout == ""
        errors.append(r.stderr.strip().splitlines())
    assert errors[0] == errors[1] and len(errors[0]) == 1
    assert "model.build: cannot import mynet from the Python path (not the current " \
        "directory)" in errors[0][0]
    assert not (tmp_path / "s").exists()
    # the documented ways: a file beside the preset, or the Python path
    preset.write_text(BASE.replace("[model]", '[model]\nbuild = "mynet.py:build"'))
    cfg = config.load(preset)
    assert cfg.model.build == f"{tmp_path / 'mynet.py'}:build"
    s = Session.create(tmp_path / "s", "file-build", config.load(preset, [
        "jacobian.enabled=false"]))
    assert runner.run_session(s.path) == 0


def test_an_error_message_with_brackets_is_printed_as_written(tmp_path, capsys):
    """A user model's message is text, not rich markup: "[/oops]" crashed the progress
    display with a traceback and left the session "stale"."""
    (tmp_path / "badnet.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self, i, o):\n"
        "        super().__init__(); self.l = torch.nn.Linear(i, o)\n"
        "    def forward(self, x):\n"
        "        raise ValueError('bad [/oops] [bold]thing')\n"
        "def build(n_in, n_out):\n"
        "    return M(n_in, n_out)\n")
    preset = tmp_path / "user.toml"
    preset.write_text(BASE.replace("[model]", '[model]\nbuild = "badnet.py:build"'))
    code = main(["run", str(preset), "--sessions", str(tmp_path / "s"), "--name", "bad"])
    assert code == 1
    err = capsys.readouterr().err
    assert "bad [/oops] [bold]thing" in err and "Traceback" not in err
    assert describe(Session(tmp_path / "s" / "bad"))["status"] == "failed"


# ---- kill -9 in every stage ----------------------------------------------------------------------

STAGED = {"analysis": {"distance": {}, "init_change": {}}}


@pytest.fixture(scope="module")
def clean_with_analyses(tmp_path_factory) -> Session:
    s = Session.create(tmp_path_factory.mktemp("clean-a"), "clean", small_config(**STAGED))
    assert runner.run_session(s.path) == runner.EXIT_OK
    return s


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "jacobian", "svd", "spectrum", "analysis.distance",
                                   "analysis.init_change"])
def test_sigkill_in_every_stage_resumes_bitwise(clean_with_analyses, tmp_path, stage):
    s = Session.create(tmp_path, "killed", small_config(**STAGED))
    proc = worker.start_worker(s.path)
    t0 = time.time()
    while not any(e["event"] == "stage_start" and e["stage"] == stage for e in s.events()[0]):
        if proc.poll() is not None:
            break  # it finished before the stage could be caught: resume has nothing to do
        assert time.time() - t0 < 120
        time.sleep(0.005)
    proc.kill()
    proc.wait(timeout=30)
    assert describe(s)["status"] in ("stale", "done")
    assert runner.run_session(s.path) == runner.EXIT_OK
    ref = clean_with_analyses
    for rel in OUTPUTS + ("analyses/distance.json", "analyses/init_change.json",
                          "analyses/distance_abs.npy", "analyses/init_change.npy"):
        assert (s.path / rel).read_bytes() == (ref.path / rel).read_bytes(), rel
    assert s.verify() == {}


def test_an_analysis_added_to_a_finished_session_runs_on_resume(clean, tmp_path, capsys):
    """resume said "already done" and ran nothing (the engine ran it when called directly)."""
    s = copy_of(clean, tmp_path)
    with open(s.path / "config.toml", "a") as f:
        f.write("\n[analysis.distance]\n")
    assert s.unrun_analyses() == ["distance"]
    assert main(["resume", str(s.path), "-q"]) == runner.EXIT_OK
    assert "already done" not in capsys.readouterr().err
    assert s.manifest()["stages"]["analysis.distance"]["status"] == "done"
    assert (s.path / "analyses" / "distance.json").is_file() and s.unrun_analyses() == []
    for rel in OUTPUTS:  # the rest untouched
        assert (s.path / rel).read_bytes() == (clean.path / rel).read_bytes(), rel
