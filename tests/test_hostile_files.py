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
