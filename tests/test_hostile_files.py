"""Hostile and broken data and init files: each is refused in one line, exit 2, before a session
exists (``tjac run``), never a traceback, a hang or a load of gigabytes.

The files are made the way a user (or an attacker) would make them: numpy's own writers where
they can, zip and .npy headers written by hand where numpy would not write such a thing.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.files import ArchiveError, read_npz
from tjac_tui.cli import main


def header(shape, descr="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                              "shape": shape})
    return buf.getvalue()


def good(p: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(p, x=rng.normal(size=(40, 5)), y=np.arange(40) % 3)


def truncated(p: Path) -> None:
    good(p)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def crc_bad(p: Path) -> None:
    good(p)
    raw = bytearray(p.read_bytes())
    raw[200] ^= 0xFF  # inside x's data (the member is stored, not compressed)
    p.write_bytes(bytes(raw))


def bomb(p: Path) -> None:
    """A member whose header declares 89 GiB of float64 (deflate makes such a file of zeros a
    few MB; here only the header is written: the reader must refuse from it)."""
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header((12_000, 1_000_000)) + bytes(1000))
        z.writestr("y.npy", header((10,), "<i8") + bytes(80))


def lying_header(p: Path) -> None:
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", header((100, 5)) + bytes(8 * 50))
        z.writestr("y.npy", header((100,), "<i8") + bytes(800))


CASES = {
    "object arrays": (lambda p: np.savez(p, x=np.array([{"a": 1}] * 4, dtype=object),
                                         y=np.arange(4)), "holds Python objects"),
    "a pickle inside": (lambda p: np.savez(p, x=np.array([[1.0, 2.0]], dtype=object),
                                           y=np.array([0])), "never loaded"),
    "a .npy, not a .npz": (lambda p: np.save(open(p, "wb"), np.ones((4, 3))),
                           "a single .npy array"),
    "truncated": (truncated, "damaged or truncated zip"),
    "CRC damaged": (crc_bad, "Bad CRC-32"),
    "a lying header": (lying_header, "but the archive holds 400 bytes of data"),
    "strings": (lambda p: np.savez(p, x=np.array([["a", "b"]] * 3), y=np.arange(3)),
                "holds strings"),
    "complex inputs": (lambda p: np.savez(p, x=np.ones((3, 2), complex), y=np.arange(3)),
                       "holds complex numbers"),
    "a zip bomb": (bomb, "GiB, more than the"),
    "no y": (lambda p: np.savez(p, x=np.ones((3, 2))), "expected arrays 'x', 'y', found ['x']"),
    "text": (lambda p: p.write_text("x,y\n1,2\n"), "not a readable .npz archive"),
    "labels that wrap": (lambda p: np.savez(p, x=np.ones((3, 2)),
                                            y=np.array([0, 1, 2**63 + 5], dtype=np.uint64)),
                         "got labels from 0 to 9223372036854775813"),
    "empty classes": (lambda p: np.savez(p, x=np.ones((6, 2)), y=np.array([0, 5, 0, 5, 0, 5])),
                      "4 of 0 .. 5 never occur (1, 2, 3, 4)"),
    "float labels": (lambda p: np.savez(p, x=np.ones((3, 2)), y=np.array([0.0, 1.0, 2.0])),
                     "y must hold integer class labels"),
    "no features": (lambda p: np.savez(p, x=np.ones((3, 0)), y=np.arange(3)),
                    "x has no features"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_data_file_is_one_line_before_a_session(case, tmp_path, capsys):
    make, expected = CASES[case]
    bad = tmp_path / "data.npz"
    make(bad)
    code = main(["run", "quick", "--sessions", str(tmp_path / "s"), "-q", "--set",
                 'data.dataset="npz"', "--set", f'data.path="{bad}"', "--set", "data.test_size=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"{bad}: ") and expected in err[0], err
    assert not (tmp_path / "s").exists()


def test_a_good_file_loads_exactly(tmp_path):
    from engine import config, data

    p = tmp_path / "good.npz"
    good(p)
    ds = data.load(config.DataConfig(dataset="npz", path=str(p), test_size=4))
    with np.load(p) as f:
        x, y = f["x"], f["y"]
    assert len(ds.x_train) == 36 and ds.n_classes == 3 and ds.n_features == 5
    got = np.concatenate([ds.x_train, ds.x_test])
    assert sorted(map(tuple, got)) == sorted(map(tuple, x))  # the same rows, bit for bit
    assert read_npz(p, headers_only=True) == {"x": ((40, 5), np.dtype("<f8")),
                                              "y": ((40,), y.dtype)}


def test_read_npz_refuses_a_bomb_from_its_header_without_reading_it(tmp_path, monkeypatch):
    """The declared size is checked before any data is read: reading is made to fail."""
    p = tmp_path / "bomb.npz"
    bomb(p)
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(ArchiveError, match="89.4 GiB"):
        read_npz(p, ["x", "y"])


@pytest.mark.parametrize("case", ["object arrays", "complex inputs", "truncated"])
def test_a_bad_init_file_is_one_line(case, tmp_path, capsys):
    make, expected = CASES[case]
    bad = tmp_path / "init.npz"
    make(bad)
    code = main(["run", "quick", "--sessions", str(tmp_path / "s"), "-q", "--set",
                 f'model.init="{bad}"'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"model.init: {bad}: ") and expected in err[0], err
    assert not (tmp_path / "s").exists()


# ---- writes outside the session, or over a session's own records ------------------------------


@pytest.fixture
def two_sessions(quick_session, tmp_path):
    import shutil

    a = tmp_path / "sessions" / "a"
    shutil.copytree(quick_session, a)
    b = tmp_path / "sessions" / "b"
    shutil.copytree(quick_session, b)
    return a, b


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["fifo", "symlink", "missing folder", "config.toml",
                                    "manifest.json", "a recorded output", "inside svd/"])
def test_report_and_compare_never_write_over_what_is_not_theirs(target, two_sessions, tmp_path,
                                                                capsys):
    import os

    a, b = two_sessions
    victim = tmp_path / "victim.md"
    victim.write_text("a user's file\n")
    out = {"fifo": tmp_path / "pipe", "symlink": tmp_path / "link.md",
           "missing folder": tmp_path / "no" / "such" / "dir" / "r.md",
           "config.toml": a / "config.toml", "manifest.json": a / "manifest.json",
           "a recorded output": a / "spectrum.json", "inside svd/": a / "svd" / "S.md"}[target]
    if target == "fifo":
        os.mkfifo(out)
    elif target == "symlink":
        out.symlink_to(victim)
    before_a, before_b = snapshot(a), snapshot(b)
    for argv in (["report", str(a), "-o", str(out)],
                 ["compare", str(a), str(b), "-o", str(out)],
                 ["schema", "-o", str(out)]):
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if target == "inside svd/" and argv[0] != "schema":
            assert code == 0, err  # a new .md file inside a session is fine
            out.unlink()
            continue
        assert code == 2 and len(err) == 1 and err[0].startswith(f"-o {out}: "), (argv, err)
    assert snapshot(a) == before_a and snapshot(b) == before_b
    assert victim.read_text() == "a user's file\n"
    if target == "fifo":
        import stat

        assert stat.S_ISFIFO(os.lstat(out).st_mode)
    if target == "symlink":
        assert out.is_symlink()
    if target == "missing folder":
        assert not (tmp_path / "no").exists()


def test_report_into_a_folder_or_a_new_file_is_written(two_sessions, tmp_path, capsys):
    a, _ = two_sessions
    (tmp_path / "out").mkdir()
    assert main(["report", str(a), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "a.md").read_text().startswith("# ")
    assert main(["report", str(a), "-o", str(a / "notes.md")]) == 0
    assert "regions" in (a / "notes.md").read_text().lower()


# ---- a session's own files replaced by what tjac never writes --------------------------------


@pytest.fixture(scope="module")
def tiny_done(tiny_npz, tmp_path_factory) -> Path:
    """A finished float64 session of the tiny problem (P = 39: its stages rerun in moments)."""
    from engine.runner import run_session
    from engine.session import Session

    from conftest import tiny_config

    s = Session.create(tmp_path_factory.mktemp("tiny"), "tiny", tiny_config(tiny_npz))
    assert run_session(s.path) == 0
    return s.path


def copied(src: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "sessions" / src.name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def tjac(*args, timeout=120):
    import os
    import subprocess
    import sys

    from conftest import REPO

    return subprocess.run([sys.executable, "-m", "tjac_tui.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("what", ["jacobian.npy", "svd"])
def test_a_link_in_a_session_is_never_written_through(tiny_done, tmp_path, what):
    """jacobian.npy replaced by a link to a user's file (or svd/ by a link to another folder):
    `tjac resume` wrote J (the SVD) through it, destroying the user's file. Now `tjac ls` names
    the link, resume removes it and computes the file again, and the target is untouched."""
    import numpy as np

    from engine.session import Session

    s = copied(tiny_done, tmp_path)
    victim = tmp_path / "users" / what
    victim.parent.mkdir()
    (s / what).rename(victim)
    (s / what).symlink_to(victim)
    before = snapshot(victim) if victim.is_dir() else victim.read_bytes()
    r = tjac("ls", "--sessions", str(s.parent))
    assert "damaged" in r.stdout and f"{what} is a symbolic link (to {victim})" in r.stdout
    r = tjac("resume", str(s))
    assert r.returncode == 0, r.stderr
    flat = "".join(r.stderr.split())  # (the console wraps lines at its width)
    assert f"wasasymboliclink(to{victim}):removed" in flat, r.stderr
    assert (snapshot(victim) if victim.is_dir() else victim.read_bytes()) == before
    assert not (s / what).is_symlink() and (s / what).exists()
    assert Session(s).manifest()["status"] == "done" and not Session(s).verify()
    assert np.array_equal(np.load(s / "svd" / "S.npy"), np.load(tiny_done / "svd" / "S.npy"))


def test_a_jacobian_store_never_opens_a_link(tmp_path):
    """The store itself (a link made while no check ran): it writes a file of its own."""
    from engine.jacobian import JacobianStore

    victim = tmp_path / "user.npy"
    victim.write_bytes(b"a user's data")
    (tmp_path / "jacobian.npy").symlink_to(victim)
    store = JacobianStore(tmp_path, 6, 2, np.float32)
    assert victim.read_bytes() == b"a user's data"
    assert not store.path.is_symlink() and store.path.stat().st_size > 6 * 6 * 4


@pytest.mark.parametrize("case", ["manifest FIFO", "manifest -> /dev/zero", "config FIFO"])
def test_a_fifo_or_a_device_as_a_record_is_named_not_waited_on(tiny_done, tmp_path, case):
    """A FIFO manifest or config blocked `tjac ls`, `resume` and `report` forever; a manifest
    linked to /dev/zero ate all memory. Each now names what is there, in one line."""
    import os

    s = copied(tiny_done, tmp_path)
    name = "config.toml" if case.startswith("config") else "manifest.json"
    (s / name).unlink()
    if "FIFO" in case:
        os.mkfifo(s / name)
    else:
        (s / name).symlink_to("/dev/zero")
    kind = "a FIFO" if "FIFO" in case else "a character device"
    r = tjac("ls", "--sessions", str(s.parent), timeout=60)
    assert r.returncode == 0 and f"{name}: {kind}, not a regular file" in r.stdout, r
    r = tjac("report", str(s), timeout=60)
    assert r.returncode != 0 and f"{name}: {kind}, not a regular file" in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1
    if name == "config.toml":  # resume refuses (the manifest: it starts over from the config)
        r = tjac("resume", str(s), timeout=60)
        assert r.returncode != 0 and f"config.toml: {kind}" in r.stderr, r


def test_a_garbage_tail_in_a_log_is_passed_over_once(tmp_path, monkeypatch):
    """A 1.5 GB tail without a newline in events.jsonl was read whole at every poll (the
    workbench at 96 % CPU). Here at 1/1000 the scale: the reader passes over the garbage, does
    not read it again, and takes the records after it."""
    import json

    from engine import files

    monkeypatch.setattr(files, "JSONL_BLOCK", 64 << 10)
    monkeypatch.setattr(files, "JSONL_LINE_MAX", 16 << 10)
    p = tmp_path / "events.jsonl"
    good = b"".join(json.dumps({"event": "x", "i": i}).encode() + b"\n" for i in range(3))
    p.write_bytes(good + bytes(range(256)) * 6000)  # 1.5 MB, no newline
    recs, offset = files.read_jsonl(p)
    assert [r["i"] for r in recs] == [0, 1, 2]
    assert offset > p.stat().st_size - (16 << 10)  # past (almost all) the garbage
    again, offset2 = files.read_jsonl(p, offset)
    assert again == [] and offset2 >= offset
    with open(p, "ab") as f:
        f.write(b"\n" + json.dumps({"event": "x", "i": 3}).encode() + b"\n")
    recs, _ = files.read_jsonl(p, offset2)
    assert [r["i"] for r in recs] == [3]


# ---- the command line's streams and terminal -------------------------------------------------


@pytest.mark.parametrize("argv", [["ls"], ["schema"], ["presets"]])
def test_a_closed_standard_output_is_no_traceback(tmp_path, argv):
    """`tjac ls >&-`: Python leaves sys.stdout None, and tjac ended in an AttributeError
    traceback (exit 1). Output now goes nowhere, exit 0."""
    import os
    import shlex
    import subprocess
    import sys

    from conftest import REPO

    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "tjac_tui.cli", *argv])
    r = subprocess.run(["sh", "-c", f"{cmd} --sessions {shlex.quote(str(tmp_path))} >&-"
                        if argv == ["ls"] else f"{cmd} >&-"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_unicode_on_an_ascii_terminal_is_one_line(tiny_done, tmp_path):
    """`tjac compare A B --unicode` where the terminal's encoding is ASCII: a
    UnicodeEncodeError traceback; now one line saying how to show the characters."""
    import os

    b = copied(tiny_done, tmp_path)
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"}
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, "-m", "tjac_tui.cli", "compare", str(tiny_done), str(b),
                        "--unicode"], capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(REPO)})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "encoding (ascii) cannot show" in err[0] and "leave out --unicode" in err[0]


def test_ctrl_c_in_the_first_second_is_one_line_and_resumable(tmp_path):
    """ctrl+c while `tjac run` creates its session ended in a KeyboardInterrupt traceback and
    left the session "created" without a word; now one line (exit 3) that says how it runs."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from engine.session import Session

    from conftest import PRESETS, REPO

    p = subprocess.Popen([sys.executable, "-m", "tjac_tui.cli", "run", str(PRESETS /
                          "quick.toml"), "--sessions", str(tmp_path / "s")], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    t0 = time.time()
    while not (tmp_path / "s").exists() and time.time() - t0 < 60:
        time.sleep(0.01)  # the session is being created: interrupt now
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 3 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    made = [Session(d) for d in (tmp_path / "s").iterdir() if not d.name.startswith(".")]
    if not made:  # stopped before the session was published: nothing left half-made
        assert last == "interrupted"
        return
    (s,) = made
    status = s.manifest()["status"]
    assert status in ("created", "interrupted")
    if status == "created":
        assert last in ("interrupted", f"interrupted before the run started: `tjac resume "
                                       f"{s.path}` runs it")


def test_ctrl_c_that_lands_in_an_exec_still_exits_3(tmp_path):
    """ctrl+c while a dataclass was being made (its methods are ``exec``'d source) ended
    ``tjac run`` by SIGINT (status -2) after it had printed its one line and chosen exit 3:
    CPython 3.11 run with ``-m`` takes a plain KeyboardInterrupt that left an ``exec`` as
    unhandled. The command line's ctrl+c is a type of its own, so the status stays 3."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "ctrl_c_in_exec.py").write_text(
        "import signal, sys\n"
        "from tjac_tui.cli import take_ctrl_c\n"
        "take_ctrl_c()\n"
        "try:\n"
        "    exec('import signal; signal.raise_signal(signal.SIGINT)')\n"
        "except KeyboardInterrupt:\n"
        "    print('caught')\n"
        "sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-m", "ctrl_c_in_exec"], cwd=tmp_path, text=True,
                       capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert (r.returncode, r.stdout) == (3, "caught\n"), r.stderr
