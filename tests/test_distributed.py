"""J's chunks on several processes (torch.distributed, gloo, 2 ranks on the CPU): the same J,
bit for bit, as one process; a rank killed with SIGKILL loses only its chunk under way, and a
resume with one process finishes the rest, still bitwise equal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import config
from engine.files import read_jsonl
from engine.jacobian import JacobianStore
from engine.runner import run_session
from engine.session import Session
from tjac_tui.app import TjacApp
from tjac_tui.state import LiveState

from conftest import PRESETS, running, screen_lines, until

QUICK = PRESETS / "quick.toml"
# P = 610; threads = 1 in both runs (a rank computes with one thread here; J's bits depend on
# how the products are split among threads)
# J_{0->t} written as the training passes steps 4 and 10 (of 16)
SNAPS = ["jacobian.snapshots=[4, 10]"]
SMALL = ["model.hidden=[8]", "jacobian.chunk=32", "threads=1"] + SNAPS
LONGER = SMALL[:1] + ["jacobian.chunk=8", "threads=1", "train.epochs=24",  # 77 chunks
                      "jacobian.snapshots=[100]"]


def reference(root: Path, name: str, overrides: list[str]) -> np.ndarray:
    s = Session.create(root, name, config.load(QUICK, overrides + [f'name="{name}"']),
                       str(QUICK))
    assert run_session(s.path) == 0
    return np.load(s.path / "jacobian.npy")


def snapshot_js(path: Path) -> dict[str, np.ndarray]:
    return {p.parent.name: np.load(p) for p in sorted(path.glob("snapshots/*/jacobian.npy"))}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("dist")
    J = reference(root, "one", SMALL)
    args = [a for o in SMALL for a in ("--set", o)]
    r = subprocess.run([sys.executable, "-m", "tjac_tui.cli", "run", str(QUICK), "--sessions",
                        str(root), "--name", "two", "--nproc", "2", "-q", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "two", J


def test_two_ranks_compute_the_single_process_J_bitwise(two_ranks):
    path, J = two_ranks
    assert np.array_equal(np.load(path / "jacobian.npy"), J)
    # the snapshots too: written by both ranks as their chunks pass steps 4 and 10
    one, two = snapshot_js(path.parent / "one"), snapshot_js(path)
    assert list(two) == ["step_000004", "step_000010"]
    for name in one:
        assert np.array_equal(two[name], one[name]), name
        assert not list((path / "snapshots" / name).glob("jacobian.progress.rank*.json"))
    assert not np.array_equal(two["step_000004"], two["step_000010"])
    summary = json.loads((path / "snapshots" / "summary.json").read_text())
    assert [r["step"] for r in summary["rows"]] == [4, 10, 16]
    m = Session(path).manifest()
    assert m["status"] == "done" and m["stages"]["jacobian"]["columns_done"] == 610
    assert not list(path.glob("jacobian.progress.rank*.json"))  # merged by rank 0
    prog = json.loads((path / JacobianStore.PROGRESS).read_text())
    assert len(prog["done"]) == 20
    events = read_jsonl(path / "events.jsonl")[0]
    chunks = [e for e in events if e["event"] == "jacobian_chunk"]
    assert sorted({e["rank"] for e in chunks}) == [0, 1]
    assert sorted(e["chunk"] for e in chunks) == list(range(20))  # each chunk once
    assert [e for e in events if e["event"] == "jacobian_ranks"][0]["shares"] == [10, 10]
    live = LiveState()
    for e in events:
        live.apply(e)
    assert sum(st["done"] for st in live.ranks.values()) == 610
    assert live.jac["done"] == 610
    assert live.ranks_text().startswith("2 ranks: r0 320 cols")


def test_the_live_pane_shows_each_rank(two_ranks):
    path, _ = two_ranks

    async def go():
        app = TjacApp(sessions_dir=path.parent, session=path.name)
        async with running(app, (120, 30)) as pilot:
            await until(pilot, lambda: app.live.status == "done", what="the event log")
            text = "\n".join(screen_lines(app))
            assert "2 ranks: r0 320 cols" in text and "r1 290 cols" in text
    asyncio.run(go())


def rank_record(path: Path, rank: int) -> dict | None:
    try:
        return json.loads((path / JacobianStore.RANK_PROGRESS.format(rank)).read_text())
    except (OSError, ValueError):
        return None


def test_a_killed_rank_loses_only_its_chunk_and_one_process_finishes_bitwise(tmp_path):
    from engine.distributed import launch

    J = reference(tmp_path, "one", LONGER)
    s = Session.create(tmp_path, "two", config.load(QUICK, LONGER + ['name="two"']),
                       str(QUICK))
    proc = launch(s.path, 2)
    try:
        t0 = time.monotonic()
        while True:  # rank 1 has finished a few chunks
            rec = rank_record(s.path, 1)
            if rec is not None and len(rec["done"]) >= 3:
                break
            assert proc.poll() is None, (s.path / "worker.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 120, "rank 1 never finished a chunk"
            time.sleep(0.05)
        os.kill(rec["pid"], signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    m = Session(s.path).manifest()
    assert m["stages"]["jacobian"]["status"] != "done"
    kept = rank_record(s.path, 1)["done"]  # rank 1's chunks on disk: resume keeps them
    assert len(kept) >= 3
    assert run_session(s.path) == 0  # one process finishes
    events = read_jsonl(s.path / "events.jsonl")[0]
    last_start = [e for e in events if e["event"] == "jacobian_start"][-1]
    assert last_start["done"] >= 8 * len(kept)  # nothing recorded was computed again
    assert np.array_equal(np.load(s.path / "jacobian.npy"), J)
    snap = s.path / "snapshots" / "step_000100"
    assert np.array_equal(np.load(snap / "jacobian.npy"),
                          np.load(tmp_path / "one" / "snapshots" / "step_000100" / "jacobian.npy"))
    assert not list(s.path.glob("**/jacobian.progress.rank*.json"))
    assert Session(s.path).verify(deep=True) == {}


def test_a_damaged_rank_chunk_is_computed_again(two_ranks, tmp_path):
    """A chunk a rank recorded whose bytes no longer match its digest is not taken."""
    import shutil

    path, J = two_ranks
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    prog = json.loads((copy / JacobianStore.PROGRESS).read_text())
    # hand chunks 1 and 3 to a "rank 1" record, and flip a byte of chunk 3
    rank1 = dict(prog, rank=1, pid=0, done={k: prog["done"].pop(k) for k in ("1", "3")})
    (copy / JacobianStore.PROGRESS).write_text(json.dumps(prog))
    (copy / JacobianStore.RANK_PROGRESS.format(1)).write_text(json.dumps(rank1))
    offset = np.load(copy / "jacobian.npy", mmap_mode="r").offset
    with open(copy / "jacobian.npy", "r+b") as f:
        f.seek(offset + 3 * 32 * 610 * 4 + 100)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    store = JacobianStore(copy, 610, 32, np.dtype("float32"))
    assert 1 in store.done and 3 not in store.done and store.damaged == [3]
    assert not (copy / JacobianStore.RANK_PROGRESS.format(1)).exists()  # merged
    assert run_session(copy) == 0  # the damaged chunk is computed again
    assert np.array_equal(np.load(copy / "jacobian.npy"), J)


def test_torchrun_creates_the_session_from_a_preset_or_says_why_not(tmp_path):
    """What every node of a multi-node run executes: rank 0 creates the session (or names
    what is wrong, and every rank stops)."""
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "engine.distributed"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(base + [str(tmp_path / "nothing")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode != 0
    assert "no such session (pass --preset PRESET to create it)" in r.stderr
    target = tmp_path / "made"
    r = subprocess.run(base + [str(target), "--preset", str(QUICK)] +
                       [a for o in SMALL for a in ("--set", o)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = Session(target).manifest()
    assert m["status"] == "done" and m["preset"] == str(QUICK)
    assert config.load(QUICK, SMALL) == Session(target).config()


def test_a_rank_writes_only_what_rank_0_lacks(tiny_npz, tmp_path):
    """A chunk whose J rank 0 holds but whose snapshot it lacks (a kill between the two
    writes): a rank computes it for the snapshot alone and leaves J's record to rank 0."""
    from engine.jacobian import compute_into

    from conftest import make, tiny_config

    problem, theta0 = make(tiny_config(tiny_npz))
    P, f64 = theta0.numel(), np.dtype("float64")
    (tmp_path / "snap").mkdir()
    main, snap = JacobianStore(tmp_path, P, 8, f64), JacobianStore(tmp_path / "snap", P, 8, f64)
    compute_into(main, problem, theta0, snapshots={3: snap})
    J, J3 = np.load(tmp_path / "jacobian.npy"), np.load(tmp_path / "snap" / "jacobian.npy")
    # rank 0's records: J whole, the snapshot without chunk 2
    prog_path = tmp_path / "snap" / JacobianStore.PROGRESS
    prog = json.loads(prog_path.read_text())
    del prog["done"]["2"]
    prog_path.write_text(json.dumps(prog))
    with open(snap.path, "r+b") as f:  # chunk 2's bytes gone too
        f.seek(snap.offset + 16 * P * 8)
        f.write(bytes(8 * P * 8))
    snap = JacobianStore(tmp_path / "snap", P, 8, f64)
    assert snap.pending == [2]
    r_main = JacobianStore.for_rank(tmp_path, P, 8, f64, 1, elsewhere=main.done)
    r_snap = JacobianStore.for_rank(tmp_path / "snap", P, 8, f64, 1, elsewhere=snap.done)
    assert r_main.pending == [] and r_snap.pending == [2]
    compute_into(r_main, problem, theta0, indices=[2], snapshots={3: r_snap})
    assert list(r_main.done) == [] and list(r_snap.done) == [2]
    assert snap.merge_ranks() == [] and 2 in snap.done
    assert np.array_equal(np.load(tmp_path / "snap" / "jacobian.npy"), J3)
    assert np.array_equal(np.load(tmp_path / "jacobian.npy"), J)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_of_tjac_run_nproc_marks_the_session_interrupted(tmp_path, sig):
    """SIGTERM or ctrl+c to ``tjac run --nproc 2`` mid-Jacobian: every rank stops, the session
    is "interrupted" and the command exits 3 (SIGTERM killed tjac alone and left torchrun
    running; ctrl+c ended as "failed" when rank 1 left rank 0's barrier)."""
    args = [a for o in LONGER[:-1] for a in ("--set", o)]
    p = subprocess.Popen([sys.executable, "-m", "tjac_tui.cli", "run", str(QUICK),
                          "--sessions", str(tmp_path), "--name", "stop", "--nproc", "2", "-q",
                          *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # as from a terminal: a background job (CI) inherits SIGINT ignored
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    path = tmp_path / "stop"
    try:
        t0 = time.monotonic()
        while (rank_record(path, 1) or {"done": {}})["done"].__len__() < 2:
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 120, "rank 1 never finished a chunk"
            time.sleep(0.05)
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 3, err[-3000:]
    assert "Traceback" not in err
    m = Session(path).manifest()
    assert m["status"] == "interrupted" and m["stages"]["jacobian"]["status"] == "interrupted"
    assert not Session(path).is_locked()  # no rank is left running


@pytest.fixture
def one_gpu(tmp_path, monkeypatch):
    """This machine as one with a single GPU: its driver and device node, and torch.cuda
    saying so."""
    import torch

    from engine import device

    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidia0").touch()
    (tmp_path / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module\n")
    monkeypatch.setattr(device, "DEVICE_DIR", str(tmp_path / "dev"))
    monkeypatch.setattr(device, "NVIDIA_DRIVER", str(tmp_path / "version"))
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_more_ranks_than_gpus_are_refused_before_a_session_is_touched(one_gpu, tmp_path,
                                                                       capsys):
    """``tjac run --nproc 2`` and ``tjac resume --nproc 2`` of a CUDA run on a machine with one
    GPU: one line, exit 2, no session made, the session resumed left as it was (rank 1 went to
    cuda:1, which is not there); a CPU run takes any number of ranks."""
    from engine import device
    from tjac_tui.cli import main

    line = "--nproc 2 on CUDA runs one rank per GPU; this machine has 1"
    for dev in ("cuda", "auto"):
        assert main(["run", str(QUICK), "--nproc", "2", "--device", dev, "--sessions",
                     str(tmp_path / "new"), "-q"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [line]
    assert not (tmp_path / "new").exists()
    s = Session.create(tmp_path, "gpu", config.load(QUICK, ['device="cuda"']), str(QUICK))
    before = {p.name: p.read_bytes() for p in s.path.iterdir() if p.is_file()}
    assert main(["resume", str(s.path), "--nproc", "2", "-q"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert {p.name: p.read_bytes() for p in s.path.iterdir() if p.is_file()} == before
    device.check_ranks("cpu", 8)
    device.check_ranks("cuda", 1)


def test_a_rank_without_a_gpu_stops_every_rank_in_one_line(one_gpu, tmp_path, monkeypatch,
                                                            capsys):
    """torchrun's rank with LOCAL_RANK 1 of 2 on a machine with one GPU (here a world of one
    rank, in this process): it names the GPU count instead of failing in CUDA, before rank 0
    creates the session from the preset."""
    import socket

    from engine import distributed

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    hup = signal.getsignal(signal.SIGHUP)
    try:
        code = distributed.main([str(tmp_path / "made"), "--preset", str(QUICK), "--set",
                                 'device="cuda"'])
    finally:
        signal.signal(signal.SIGHUP, hup)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{tmp_path / 'made'}: --nproc-per-node 2 on CUDA runs one rank per GPU; this "
        "machine has 1"]
    assert not (tmp_path / "made").exists()
    assert distributed.missing_gpu("cpu", 5, 8) is None
    assert distributed.missing_gpu("cuda", 0, 1) is None
