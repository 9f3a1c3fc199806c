"""The manifest's records tell the truth: older sessions open, a manifest edited to claim
another P or preset is named (and corrected on resume), metrics.jsonl is checked before the
report plots it, a data file changed since the session started is refused before any work,
and a resume computes with the thread count the session started with (J's bits depend on it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import config, control, runner
from engine.manifest import FORMAT_VERSION, Manifest, reference_markdown
from engine.session import Session, SessionDamaged, describe
from tjac_tui.cli import main

REPO = Path(__file__).resolve().parents[1]
FORMAT1 = REPO / "tests" / "data" / "format1"  # a session as tjac wrote it before format 2
# the fixture's config (digits, P = 85): runs in about a second
TINY = {"name": "tiny", "device": "cpu", "threads": 1, "dtype": "float32",
        "data": {"n_train": 64}, "model": {"hidden": [1]},
        "train": {"lr": 0.1, "batch_size": 32, "epochs": 1}, "jacobian": {"chunk": 32}}


def tiny_config(**top) -> config.RunConfig:
    return config.from_dict({**json.loads(json.dumps(TINY)), **top})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Session:
    s = Session.create(tmp_path_factory.mktemp("m"), "tiny", tiny_config(), "tiny.toml")
    assert runner.run_session(s.path) == runner.EXIT_OK
    return s


def copy_of(s: Session | Path, tmp_path: Path, name: str = "copy") -> Session:
    shutil.copytree(getattr(s, "path", s), tmp_path / name)
    return Session(tmp_path / name)


def edit_manifest(s: Session, **changes) -> None:
    m = json.loads((s.path / "manifest.json").read_text())
    m.update(changes)
    (s.path / "manifest.json").write_text(json.dumps(m))


def test_a_session_of_format_1_opens_lists_and_reports(tmp_path, capsys):
    s = copy_of(FORMAT1, tmp_path, "old")
    m = s.manifest()
    assert "format_version" not in m and s.record().version == 1
    assert s.record().P == 85 and s.record().stage_status("spectrum") == "done"
    assert s.record().files["jacobian.npy"].blocks["block"] == 32 * 85 * 4
    assert s.verify() == {}
    assert main(["ls", "--sessions", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "old" in out and "done" in out and "85" in out
    assert main(["report", str(s.path), "-o", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "P = 85" in text and "status **done**" in text
    # read and written back, it is the same record (keys that were null are left out)
    assert Manifest.from_json(m).to_json() == {k: v for k, v in m.items() if v is not None}


def test_keys_of_a_newer_manifest_round_trip(finished):
    m = json.loads(json.dumps(finished.manifest()))
    m["future"] = {"a": [1, 2]}
    m["stages"]["train"]["future_field"] = 3
    m["files"]["theta0.npz"]["future_digest"] = "x"
    back = Manifest.from_json(m).to_json()
    assert back == {k: v for k, v in m.items() if v is not None}
    assert back["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("key, value, why", [
    ("P", "85", "P: expected int"), ("stages", [], "stages: expected dict"),
    ("files", {"theta0.npz": 3}, "files.theta0.npz: expected an object")])
def test_a_value_of_the_wrong_type_is_named(finished, tmp_path, key, value, why):
    s = copy_of(finished, tmp_path)
    edit_manifest(s, **{key: value})
    with pytest.raises(SessionDamaged, match=why):
        s.manifest()
    row = describe(s)
    assert row["status"] == "damaged" and why in row["problem"]


def test_a_manifest_edited_to_claim_another_p_or_preset_is_named_then_corrected(
        finished, tmp_path, capsys):
    """It was shown as truth by ls, report and resume."""
    s = copy_of(finished, tmp_path)
    edit_manifest(s, P=9999, preset="paper-digits-sgd.toml")
    row = describe(s)
    assert row["status"] == "damaged" and row["P"] is None and row["preset"] is None
    assert row["problem"].startswith("manifest.json: preset, P: edited since the run recorded")
    assert main(["report", str(s.path)]) == runner.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preset, P: edited" in err[0]
    assert main(["resume", str(s.path), "-q"]) == 0
    warnings = [e["message"] for e in s.events()[0] if e["event"] == "warning"]
    assert "manifest.json: P said 9999, the config gives 85: corrected" in warnings
    assert "manifest.json: preset was edited since it was recorded: dropped" in warnings
    assert s.manifest()["P"] == 85 and describe(s)["status"] == "done"
    assert s.verify() == {}


def test_an_edited_metrics_file_is_named_and_trained_again(finished, tmp_path, capsys):
    """metrics.jsonl was not verified, though the report plots it."""
    s = copy_of(finished, tmp_path)
    original = (s.path / "metrics.jsonl").read_bytes()
    lines = original.decode().splitlines()
    rec = json.loads(lines[-1])
    rec["test_acc"] = 0.99
    (s.path / "metrics.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(rec)]) + "\n")
    row = describe(s)
    assert row["status"] == "damaged" and row["problem"].startswith("metrics.jsonl: ")
    assert main(["report", str(s.path)]) == runner.EXIT_FAILED
    assert "metrics.jsonl" in capsys.readouterr().err
    assert main(["resume", str(s.path), "-q"]) == 0
    assert (s.path / "metrics.jsonl").read_bytes() == original
    assert s.verify() == {}


@pytest.fixture
def npz_session(tmp_path) -> Session:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    cfg = tiny_config(data={"dataset": "npz", "path": str(tmp_path / "x.npz"), "test_size": 8},
                      model={"hidden": [2]}, train={"lr": 0.1, "batch_size": 8, "epochs": 1},
                      jacobian={"enabled": False})  # (what runs does not matter here)
    return Session.create(tmp_path / "sessions", "npz", cfg)


def test_a_data_file_changed_before_resume_is_refused_naming_it(npz_session, tmp_path,
                                                                 capsys):
    """A changed data file gave a J of columns from two datasets, recorded done."""
    s = npz_session
    assert set(s.manifest()["inputs"]) == {str(tmp_path / "x.npz")}
    assert runner.run_session(s.path) == runner.EXIT_OK  # (then it was killed, say)
    edit_manifest(s, status="interrupted")
    s.set_stage("train", status="interrupted")
    before = {p: p.read_bytes() for p in s.path.rglob("*") if p.is_file()}
    with np.load(tmp_path / "x.npz") as f:
        x, y = f["x"], f["y"]
    np.savez(tmp_path / "x.npz", x=x[::-1], y=y[::-1])  # the same rows in another order
    assert main(["resume", str(s.path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{tmp_path / 'x.npz'} (data.path) changed since the session started (sha256 " \
           in err[0] and "put the file back" in err[0]
    assert {p: p.read_bytes() for p in s.path.rglob("*") if p.is_file()} == before
    r = control.check_resumable(s.path)  # (what the workbench's r shows)
    assert r.kind == "inputs" and r.exit_code == 2 and r.message == err[0]
    np.savez(tmp_path / "x.npz", x=x, y=y)  # put back, it resumes
    assert control.check_resumable(s.path) is None


def test_the_worker_refuses_a_changed_model_file(tmp_path):
    """A user model's .py file is an input too: a worker (a sweep's point) started on the
    session fails in one line, before any stage."""
    (tmp_path / "net.py").write_text(
        "import torch\n\ndef build(n_features, n_classes):\n"
        "    return torch.nn.Linear(n_features, n_classes)\n")
    cfg = tiny_config(model={"build": f"{tmp_path / 'net.py'}:build"})
    s = Session.create(tmp_path / "sessions", "user", cfg)
    assert s.manifest()["inputs"][str(tmp_path / "net.py")]["stage"] == "model.build"
    (tmp_path / "net.py").write_text((tmp_path / "net.py").read_text() + "# edited\n")
    assert runner.run_session(s.path) == runner.EXIT_FAILED
    assert s.manifest()["error"].startswith(f"{s.path}: {tmp_path / 'net.py'} (model.build) "
                                            "changed since the session started")
    assert "train" not in s.manifest()["stages"]


@pytest.mark.slow
def test_a_resume_computes_with_the_threads_the_session_started_with(tmp_path, monkeypatch):
    """Resumed under another thread count, most of J's columns differed from an uninterrupted
    run in their last bits, with no warning."""
    threads = torch.get_num_threads()
    cfg = tiny_config(threads=0, data={"n_train": 128}, model={"hidden": [8]},
                      jacobian={"chunk": 64, "svd": False},
                      train={"lr": 0.1, "momentum": 0.9, "batch_size": 32, "epochs": 1})
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        clean = Session.create(tmp_path, "clean", cfg)
        assert runner.run_session(clean.path) == runner.EXIT_OK
        assert clean.manifest()["environment"]["threads"] == 2
        s = copy_of(clean, tmp_path, "resumed")  # J's chunks after the first lost to a kill
        prog = json.loads((s.path / "jacobian.progress.json").read_text())
        prog["done"] = {k: v for k, v in prog["done"].items() if k == "0"}
        (s.path / "jacobian.progress.json").write_text(json.dumps(prog))
        s.set_stage("jacobian", status="interrupted")
        s.forget(lambda rel: rel == "jacobian.npy")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # (OMP_NUM_THREADS=1 tjac resume)
        assert runner.run_session(s.path) == runner.EXIT_OK
        resumed_with = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert (s.path / "jacobian.npy").read_bytes() == (clean.path / "jacobian.npy").read_bytes()
    assert resumed_with == 2
    warnings = [e["message"] for e in s.events()[0] if e["event"] == "warning"]
    assert any(w.startswith("computing with 2 CPU threads as the session started (not 1)")
               for w in warnings)


def test_the_reference_names_every_field():
    text = reference_markdown()
    for key in ("format_version", "inputs", "claims", "chunk_fallbacks", "mtime_ns", "blocks"):
        assert f"| `{key}` |" in text
