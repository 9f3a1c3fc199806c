"""File primitives every writer of a session or study uses (no engine imports).

* :func:`atomic_write` -- bytes to a temporary file beside the target, fsync, then rename: a
  reader sees the old file or the new one, never half of one; the temporary file is removed
  when the write fails (a full disk leaves nothing behind).
* :func:`atomic_save_npy` / :func:`atomic_save_npz` -- the same for arrays (never pickled).
* :func:`append_jsonl` / :func:`read_jsonl` -- JSON-lines logs: one record per line, written
  with a single ``write``; a reader takes only complete lines, and a line that does not parse
  (a writer killed mid-line) is skipped without swallowing the next record.
* :func:`sha256` -- a file's checksum, read in blocks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """The temporary name a write of ``path`` goes through (``.NAME.PID.tmp``)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write_with(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file that is then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def atomic_write(path: str | Path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2).encode())


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    atomic_write_with(path, lambda f: np.save(f, np.ascontiguousarray(arr), allow_pickle=False))


def atomic_save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_with(path, lambda f: np.savez(f, **arrays))


def remove_temp_files(directory: str | Path) -> list[Path]:
    """Delete temporary files that a killed writer left in ``directory`` (and below); returns
    them. Only call it while holding the directory's writer lock."""
    out = []
    for p in Path(directory).rglob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        try:
            p.unlink()
            out.append(p)
        except OSError:
            pass
    return out


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as one line. A line left incomplete by a killed writer is closed
    first, so that it cannot swallow this record."""
    line = json.dumps(record) + "\n"
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))


def read_jsonl(path: str | Path, start: int = 0) -> tuple[list[dict], int]:
    """Complete lines of a JSON-lines file from byte offset ``start``; returns the records and
    the offset after the last complete line (a line still being written is left for later;
    lines that are not JSON objects are skipped)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return [], start
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out, start + end
