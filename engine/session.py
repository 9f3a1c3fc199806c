"""The session directory: everything one run wrote, readable while it runs and after.

::

    <sessions>/<name>/
      config.toml        the resolved config, exactly what ran
      manifest.json      status per stage, versions, device, timings, parameter layout, checksums
      events.jsonl       one JSON object per line (stage start/end, train steps, chunks, errors)
      metrics.jsonl      one line per evaluated training step
      theta0.npz thetaT.npz     named parameter arrays
      jacobian.npy       (P, P), entry [i, j] = d theta_T[i] / d theta_0[j] (flat order: manifest)
      jacobian.progress.json    finished chunks (while the Jacobian is computed)
      svd/S.npy svd/U.npy svd/Vh.npy svd/alignment.npy
      spectrum.json      regions, thresholds, alignment

Writes are atomic (temp file + rename); arrays are read with ``allow_pickle=False``; an
exclusive lock (``.lock``, flock) keeps a second writer out and dies with its process.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import config as config_mod
from .files import (append_jsonl, atomic_save_npy, atomic_save_npz, atomic_write,
                    atomic_write_json, read_jsonl, sha256)

STATUSES = ("created", "running", "done", "failed", "interrupted")


class SessionLocked(RuntimeError):
    pass


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def unique_dir(root: str | Path, name: str) -> Path:
    """Create and return ``root/name``, or ``name-2``, ``name-3``... if taken (race-free)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path, n = root / name, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = root / f"{name}-{n}"


class Session:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    # ---- creation and discovery ---------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str, cfg: config_mod.RunConfig,
               preset: str | None = None) -> "Session":
        """A new session directory ``root/name`` (``name-2``, ``name-3``... if taken)."""
        path = unique_dir(root, name)
        s = cls(path)
        atomic_write(path / "config.toml", config_mod.dumps(cfg).encode())
        s.write_manifest({"name": path.name, "status": "created", "created": now_iso(),
                          "preset": preset, "stages": {}, "files": {}})
        return s

    @property
    def name(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return (self.path / "manifest.json").is_file()

    def config(self) -> config_mod.RunConfig:
        return config_mod.loads((self.path / "config.toml").read_text(),
                                str(self.path / "config.toml"))

    # ---- lock ------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the writer lock or raise :class:`SessionLocked` naming the holder."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SessionLocked(f"{self.path}: another process (pid {holder}) is writing this "
                                "session") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_locked(self) -> bool:
        """True while some process holds the writer lock (a run is live)."""
        try:
            fd = os.open(self.path / ".lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    # ---- manifest --------------------------------------------------------------------------
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    def write_manifest(self, m: dict) -> None:
        atomic_write_json(self.path / "manifest.json", m)

    def update_manifest(self, **changes: Any) -> dict:
        m = self.manifest()
        m.update(changes)
        self.write_manifest(m)
        return m

    def set_stage(self, stage: str, **fields: Any) -> dict:
        m = self.manifest()
        m.setdefault("stages", {}).setdefault(stage, {}).update(fields)
        self.write_manifest(m)
        return m

    def stage_status(self, stage: str) -> str:
        return self.manifest().get("stages", {}).get(stage, {}).get("status", "pending")

    # ---- files -----------------------------------------------------------------------------
    def record_checksum(self, rel: str) -> None:
        p = self.path / rel
        m = self.manifest()
        m.setdefault("files", {})[rel] = {"sha256": sha256(p), "bytes": p.stat().st_size}
        self.write_manifest(m)

    def write_json(self, rel: str, obj: Any) -> None:
        atomic_write_json(self.path / rel, obj)

    def read_json(self, rel: str) -> Any:
        return json.loads((self.path / rel).read_text())

    def write_npy(self, rel: str, arr: np.ndarray, record: bool = True) -> None:
        atomic_save_npy(self.path / rel, arr)
        if record:
            self.record_checksum(rel)

    def write_npz(self, rel: str, arrays: dict[str, np.ndarray]) -> None:
        atomic_save_npz(self.path / rel, arrays)
        self.record_checksum(rel)

    def load_npy(self, rel: str, mmap: bool = False) -> np.ndarray:
        return np.load(self.path / rel, mmap_mode="r" if mmap else None, allow_pickle=False)

    def load_npz(self, rel: str) -> dict[str, np.ndarray]:
        with np.load(self.path / rel, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def has(self, rel: str) -> bool:
        return (self.path / rel).exists()

    def verify(self) -> list[str]:
        """Files whose checksum no longer matches the manifest."""
        bad = []
        for rel, info in self.manifest().get("files", {}).items():
            p = self.path / rel
            if not p.exists() or sha256(p) != info["sha256"]:
                bad.append(rel)
        return bad

    # ---- logs ------------------------------------------------------------------------------
    def append_jsonl(self, rel: str, record: dict) -> None:
        append_jsonl(self.path / rel, record)

    def events(self, start: int = 0) -> tuple[list[dict], int]:
        return read_jsonl(self.path / "events.jsonl", start)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")[0]

    def spectrum(self) -> dict | None:
        p = self.path / "spectrum.json"
        return json.loads(p.read_text()) if p.exists() else None


def list_sessions(root: str | Path) -> Iterator[Session]:
    """Sessions under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return iter(())
    found = [Session(p) for p in root.iterdir() if (p / "manifest.json").is_file()]
    found.sort(key=lambda s: (s.path / "manifest.json").stat().st_ctime, reverse=True)
    return iter(found)


def run_seconds(manifest: dict, live: bool, now: float | None = None) -> float:
    """Seconds the run has computed: every stage's recorded time, plus, while a worker is live,
    the time since the running stage started (its recorded time is added when it ends)."""
    total = 0.0
    for st in manifest.get("stages", {}).values():
        total += float(st.get("seconds") or 0.0)
        if live and st.get("status") == "running" and st.get("started"):
            try:
                t0 = datetime.fromisoformat(st["started"]).timestamp()
            except (TypeError, ValueError):
                continue
            total += max(0.0, (now if now is not None else datetime.now(timezone.utc)
                               .timestamp()) - t0)
    return total


def describe(s: Session) -> dict:
    """One row for ``tjac ls`` and the Sessions pane."""
    m = s.manifest()
    status = m.get("status", "?")
    live = s.is_locked()
    if status == "running" and not live:
        status = "stale"  # the worker died without marking the session (e.g. SIGKILL)
    return {"name": s.name, "path": str(s.path), "status": status, "preset": m.get("preset"),
            "P": m.get("P"), "created": m.get("created", ""),
            "seconds": run_seconds(m, live and status == "running"),
            "device": m.get("device")}
