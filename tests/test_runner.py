"""Sessions end to end: the headless run, resume after SIGKILL (bitwise), locks, failures."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from engine import config, models, runner, worker
from engine.session import Session, SessionLocked, describe
from tjac_tui.cli import main

from conftest import PRESETS


def resume_config(**extra) -> config.RunConfig:
    """Enough Jacobian chunks (38 of 32 columns, P = 1210) to be killed in the middle of."""
    table = {"name": "resume", "threads": 1, "device": "cpu",
             "data": {"n_train": 256},
             "model": {"hidden": [16]},
             "train": {"lr": 0.1, "momentum": 0.9, "schedule": "cosine", "batch_size": 32,
                       "epochs": 2},
             "jacobian": {"chunk": 32}}
    for k, v in extra.items():
        table.setdefault(k, {}).update(v) if isinstance(v, dict) else table.update({k: v})
    return config.from_dict(table)


def wait_for(predicate, timeout: float = 120.0, poll: float = 0.05):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        time.sleep(poll)
    raise TimeoutError


@pytest.mark.slow
def test_sigkill_during_jacobian_then_resume_is_bitwise_equal(tmp_path):
    cfg = resume_config()
    killed = Session.create(tmp_path, "killed", cfg)
    proc = worker.start_worker(killed.path)

    def chunks_done() -> int:
        return sum(e["event"] == "jacobian_chunk" for e in killed.events()[0])

    wait_for(lambda: chunks_done() >= 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert killed.manifest()["status"] == "running"
    assert describe(killed)["status"] == "stale"  # no process holds the lock any more
    progress = json.loads((killed.path / "jacobian.progress.json").read_text())
    assert 3 <= len(progress["done"]) < 38

    assert runner.run_session(killed.path) == runner.EXIT_OK
    events = [e["event"] for e in killed.events()[0]]
    assert events.count("stage_skip") == 1  # train was not redone
    assert killed.manifest()["status"] == "done"
    assert killed.verify() == {}  # every checksum matches

    clean = Session.create(tmp_path, "clean", cfg)
    assert runner.run_session(clean.path) == runner.EXIT_OK
    J1 = np.load(killed.path / "jacobian.npy", allow_pickle=False)
    J2 = np.load(clean.path / "jacobian.npy", allow_pickle=False)
    assert J1.shape == (1210, 1210)
    assert np.array_equal(J1, J2)
    assert np.array_equal(np.load(killed.path / "svd/S.npy"), np.load(clean.path / "svd/S.npy"))


@pytest.mark.slow
def test_sigterm_finishes_the_chunk_and_marks_interrupted(tmp_path):
    s = Session.create(tmp_path, "term", resume_config())
    proc = worker.start_worker(s.path)
    wait_for(lambda: any(e["event"] == "jacobian_chunk" for e in s.events()[0]))
    assert worker.request_stop(s.path)
    assert proc.wait(timeout=60) == runner.EXIT_INTERRUPTED
    m = s.manifest()
    assert m["status"] == "interrupted"
    assert m["stages"]["jacobian"]["status"] == "interrupted"
    done = json.loads((s.path / "jacobian.progress.json").read_text())["done"]
    assert len(done) >= 1
    assert [e["event"] for e in s.events()[0]][-2:] == ["interrupted", "run_end"]


def test_lock_keeps_a_second_writer_out(tmp_path):
    s = Session.create(tmp_path, "locked", resume_config())
    s.acquire()
    try:
        assert Session(s.path).is_locked()
        with pytest.raises(SessionLocked, match=str(os.getpid())):
            Session(s.path).acquire()
    finally:
        s.release()
    assert not s.is_locked()


def test_headless_run_writes_the_whole_session(tmp_path, capsys):
    code = main(["run", str(PRESETS / "quick.toml"), "--sessions", str(tmp_path),
                 "--name", "q", "--set", "train.epochs=1", "--set", "threads=2"])
    out, err = capsys.readouterr()
    assert code == 0
    path = tmp_path / "q"
    assert out.strip().splitlines()[-1] == str(path)
    s = Session(path)
    m = s.manifest()
    assert m["status"] == "done"
    assert list(m["stages"]) == ["train", "jacobian", "svd", "spectrum"]
    assert all(m["stages"][st]["status"] == "done" for st in m["stages"])
    P = 64 * 16 + 16 + 16 * 10 + 10
    assert m["P"] == P
    assert [r["name"] for r in m["layout"]] == ["layers.0.weight", "layers.0.bias",
                                                "layers.1.weight", "layers.1.bias"]
    assert [r["offset"] for r in m["layout"]] == [0, 1024, 1040, 1200]
    assert {"torch", "numpy", "python"} <= set(m["environment"])
    assert s.verify() == {}
    cfg = s.config()
    assert cfg.train.epochs == 1 and cfg.threads == 2  # the resolved config, overrides applied
    J = s.load_npy("jacobian.npy")
    assert J.shape == (P, P) and J.dtype == np.float32
    S = s.load_npy("svd/S.npy")
    assert S.dtype == np.float64 and np.all(np.diff(S) <= 0)
    U, Vh = s.load_npy("svd/U.npy"), s.load_npy("svd/Vh.npy")
    assert np.allclose((U * S) @ Vh, J, atol=1e-5)
    spec = s.spectrum()
    counts = [spec["regions"][r]["count"] for r in ("chaotic", "bulk", "stable")]
    assert sum(counts) == P and spec["s_max"] == pytest.approx(S[0])
    assert counts[1] == int(np.sum(np.abs(S - 1) <= 1e-3))
    metrics = s.metrics()
    assert [r["step"] for r in metrics] == list(range(9))  # init + 8 steps
    theta0 = s.load_npz("theta0.npz")
    assert list(theta0) == [r["name"] for r in m["layout"]]
    events = [e["event"] for e in s.events()[0]]
    assert events[0] == "run_start" and events[-1] == "run_end"
    jac = m["stages"]["jacobian"]
    assert events.count("jacobian_chunk") == -(-jac["columns_done"] // jac["chunk"])

    # theta0.npz is a valid model.init for a new run: the same initial parameters
    code = main(["run", str(PRESETS / "quick.toml"), "--sessions", str(tmp_path), "--name",
                 "again", "--set", f'model.init="{path / "theta0.npz"}"', "--set", "seed=7",
                 "--set", "jacobian.enabled=false", "-q"])
    assert code == 0
    again = Session(tmp_path / "again").load_npz("theta0.npz")
    assert all(np.array_equal(theta0[k], again[k]) for k in theta0)

    capsys.readouterr()
    assert main(["ls", "--sessions", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "q" in out and "again" in out and "done" in out


def test_nan_loss_fails_the_session_with_a_message(tmp_path, capsys):
    code = main(["run", str(PRESETS / "quick.toml"), "--sessions", str(tmp_path), "--name", "nan",
                 "--set", "train.lr=1e30", "--set", "train.schedule=constant", "-q"])
    _, err = capsys.readouterr()
    assert code == runner.EXIT_FAILED
    m = Session(tmp_path / "nan").manifest()
    assert m["status"] == "failed" and m["stages"]["train"]["status"] == "failed"
    assert "the loss became nan" in m["error"] and "lower train.lr" in m["error"]
    assert "the loss became nan" in err and "Traceback" not in err


def test_presets_command_lists_shipped_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("quick", "paper-digits-sgd", "paper-digits-adam"):
        assert name in out


def test_paper_digits_data_and_model_shapes():
    from engine import data

    cfg = config.load(PRESETS / "paper-digits-sgd.toml")
    ds = data.load(cfg.data)
    assert ds.x_train.shape == (1600, 64) and ds.x_test.shape == (197, 64)
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0
    # pixels 0, 32 and 39 are zero in every training row (the paper's 192 frozen Adam weights)
    assert set(np.flatnonzero(ds.x_train.max(0) == 0)) == {0, 32, 39}
    m = models.build(cfg.model, 64, 10, seed=0)
    assert models.Layout.of(m).size == 4810
    w = dict(m.named_parameters())["layers.0.weight"].detach().numpy()
    assert abs(w.std() - 64 ** -0.5) < 0.01 and np.abs(w).max() <= 2 * 64 ** -0.5 / 0.8796 + 1e-9


def test_digits_are_scikit_learns_without_importing_it():
    """The digits come from the file scikit-learn ships, parsed as its load_digits does, in a
    process that never imports scikit-learn (a second and ~75 MB per worker)."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from engine import data

    x, y = data.load_digits_raw()
    d = load_digits()
    assert np.array_equal(x, d.data.astype(np.float64) / 16.0) and np.array_equal(y, d.target)
    probe = subprocess.run([sys.executable, "-c", "import sys; from engine import data; "
                            "data.load_digits_raw(); print('sklearn' in sys.modules)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "False", probe.stderr
