"""The session directory: everything one run wrote, readable while it runs and after.

::

    <sessions>/<name>/
      config.toml        the resolved config, exactly what ran
      manifest.json      status per stage, versions, device, timings, parameter layout, and a
                         record (size, mtime, checksum) of every file a stage produced
      events.jsonl       one JSON object per line (stage start/end, train steps, chunks, errors)
      metrics.jsonl      one line per evaluated training step
      theta0.npz thetaT.npz     named parameter arrays
      jacobian.npy       (P, P), entry [i, j] = d theta_T[i] / d theta_0[j] (flat order: manifest)
      jacobian.progress.json    finished chunks and their digests (while J is computed)
      svd/S.npy svd/U.npy svd/Vh.npy svd/alignment.npy
      spectrum.json      regions, thresholds, alignment

Writes are atomic (temp file + rename); arrays are read with ``allow_pickle=False``. A writer
holds an exclusive ``flock`` on the session directory itself: it dies with its process, and no
file can be deleted to get around it. :meth:`Session.verify` compares the files with their
records; a session whose manifest or files do not match is *damaged* (``tjac ls`` says so and
names the file; ``tjac resume`` recomputes what is damaged).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:  # numpy is imported where arrays are read: the UI starts without it
    import numpy as np

from . import config as config_mod
from .files import (UnreadableFile, append_jsonl, atomic_save_npy, atomic_save_npz,
                    atomic_write, atomic_write_json, linked_part, publish_dir, read_jsonl,
                    read_text, remove_links, remove_temp_files, sha256)
from .manifest import (CLAIMS, FORMAT_VERSION, RECHECK_MAX, FileRecord, Manifest,  # noqa: F401
                       ManifestError, check_file, edited_claims, sign)

STATUSES = ("created", "running", "done", "failed", "interrupted")
CONFIG = "config.toml"  # checked against the manifest's digest of it (run_digest, config_digest)
MANIFEST = "manifest.json"
DEEP_VERIFY_MAX = 1 << 30  # files larger than this: size and mtime only, unless asked
# the largest manifest or config.toml read: a session's records are kilobytes (a FIFO or a link
# to /dev/zero in their place is refused as such, see engine.files.read_text)
RECORD_MAX = 64 << 20
# the modules a worker process runs as __main__ (engine.worker.start_worker starts the first)
WORKER_MODULES = ("engine.present.worker_main", "engine.runner")
WRITER_PID = ".writer.pid"  # who holds the lock, for messages (deleting it unlocks nothing)


class SessionError(Exception):
    """A session cannot be used as asked; ``str()`` is the one-line message."""


class SessionLocked(SessionError):
    pass


class SessionDamaged(SessionError):
    """Files of a session do not match their records: ``problems`` maps each to the reason."""

    def __init__(self, path: Path, problems: dict[str, str]):
        self.problems = problems
        if CONFIG in problems:  # the one file resume cannot recompute: say it first
            problems = {CONFIG: problems[CONFIG], **problems}
        rel, why = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        self.detail = f"{rel}: {why}{more}"
        hint = ("a session runs the config it was created with: put that one back, or start "
                f"a new session from the edited file (`tjac run {Path(path) / CONFIG}`)"
                if rel == CONFIG else "`tjac resume` recomputes it")
        super().__init__(f"{path}: damaged: {self.detail}; {hint}")


class InputChanged(SessionError):
    """An input file the config names (data, model.init, a model's .py file) changed since the
    session was created: ``changes`` maps each path to the reason."""

    def __init__(self, path: Path, changes: dict[str, str]):
        self.changes = changes
        (file, why), more = next(iter(changes.items())), len(changes) - 1
        also = f" (and {more} more)" if more else ""
        super().__init__(
            f"{path}: {file} {why}{also}; a session runs the inputs it was created with: put "
            f"the file back, or start a new session (`tjac run {Path(path) / CONFIG}`)")


def input_files(cfg: config_mod.RunConfig) -> dict[str, str]:
    """{path: config key} of the files ``cfg`` reads besides config.toml: data.path (a .npz,
    or the four IDX files in its folder), model.init (a .npz) and model.build's file (a .py).
    Files that are not there are left out (the run says so when it reads them)."""
    out = {}
    if cfg.data.dataset == "npz" and cfg.data.path:
        out[cfg.data.path] = "data.path"
    elif cfg.data.path and cfg.data.dataset in ("mnist", "fashion_mnist"):
        from .data import find_idx  # (numpy: not imported with the session)
        from .schema import DataError

        try:
            out.update({str(p): "data.path" for p in find_idx(Path(cfg.data.path),
                                                              cfg.data.dataset).values()})
        except DataError:
            pass
    if cfg.model.init.endswith(".npz"):
        out[cfg.model.init] = "model.init"
    if cfg.model.build and cfg.model.build.split(":", 1)[0].endswith(".py"):
        out[cfg.model.build.split(":", 1)[0]] = "model.build"
    return {p: k for p, k in out.items() if Path(p).is_file()}


def run_digest(config_text: str) -> str | None:
    """The digest of what a config runs: its TOML without the ``[analysis.*]`` sections (an
    analysis added to a finished session runs as one more stage) and independent of layout;
    None when the text is not TOML."""
    try:
        table = config_mod.tomllib.loads(config_text)
    except config_mod.tomllib.TOMLDecodeError:
        return None
    table.pop("analysis", None)
    canon = json.dumps(table, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pid_is_worker(pid: int) -> bool:
    """True when ``pid`` is alive and runs the tjac worker (:data:`WORKER_MODULES`)."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return any(m.encode() in cmdline for m in WORKER_MODULES)


class Session:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self.removed_links: dict[str, str] = {}  # (verify: the links it removed)

    # ---- creation and discovery ---------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str, cfg: config_mod.RunConfig,
               preset: str | None = None) -> "Session":
        """A new session directory ``root/name`` (``name-2``, ``name-3``... if taken), created
        whole: a process killed while creating it leaves no directory behind."""
        text = config_mod.dumps(cfg).encode()
        inputs = {p: FileRecord.of(p, key).to_json() for p, key in input_files(cfg).items()}
        manifest = sign({"format_version": FORMAT_VERSION, "status": "created",
                         "created": now_iso(), "preset": preset, "stages": {}, "files": {},
                         "config_digest": run_digest(text.decode()), "inputs": inputs})

        def fill(tmp: Path) -> None:
            atomic_write(tmp / "config.toml", text)
            atomic_write_json(tmp / "manifest.json", manifest)

        return cls(publish_dir(root, name, fill))

    @property
    def name(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return (self.path / "manifest.json").is_file()

    def config(self) -> config_mod.RunConfig:
        p = self.path / "config.toml"
        try:
            text = read_text(p, RECORD_MAX)
        except (OSError, UnicodeDecodeError, UnreadableFile) as e:
            raise config_mod.ConfigError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}"
                                         ) from None
        return config_mod.loads(text, str(p))

    # ---- lock ------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the writer lock (an exclusive flock on the directory) or raise
        :class:`SessionLocked` naming the holder. A worker recorded as running whose process is
        still alive counts as a holder too. Temporary files a killed writer left are removed."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SessionLocked(f"{self.path}: another process (pid {self._holder()}) is "
                                "writing this session") from None
        pid = self._holder(default=None)
        if pid is not None and pid != os.getpid() and pid_is_worker(pid) \
                and self._worker_pid_running():
            os.close(fd)
            raise SessionLocked(f"{self.path}: a worker (pid {pid}) is still running this "
                                "session")
        self._lock_fd = fd
        remove_temp_files(self.path)
        atomic_write(self.path / WRITER_PID, str(os.getpid()).encode())

    def _holder(self, default="?"):
        """The pid of the lock's holder as it recorded it (informational: the lock itself is
        the flock), else that of a worker the manifest records as running, else ``default``."""
        try:
            return int((self.path / WRITER_PID).read_text())
        except (OSError, ValueError):
            pass
        try:
            m = self.manifest()
        except SessionError:
            return default
        if m.get("status") != "running" or not m.get("pid"):
            return default
        return m["pid"]

    def _worker_pid_running(self) -> bool:
        try:
            return self.manifest().get("status") == "running"
        except SessionError:
            return False

    def writer_pid(self) -> int | None:
        """The pid of the process holding the writer lock, None when no process holds it."""
        if not self.is_locked():
            return None
        pid = self._holder(default=None)
        return int(pid) if pid is not None else None

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_locked(self) -> bool:
        """True while some process holds the writer lock (a run is live)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
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
        """The manifest as JSON, checked to be one (:meth:`record`: the same, typed);
        :class:`SessionDamaged` when it is missing, not JSON, not an object or holds a value
        of the wrong type (named)."""
        m = self._read_manifest()
        try:
            Manifest.from_json(m)
        except ManifestError as e:
            raise SessionDamaged(self.path, {MANIFEST: f"not a session manifest ({e})"}
                                 ) from None
        return m

    def record(self) -> Manifest:
        """The manifest, typed (:class:`engine.manifest.Manifest`); raises as
        :meth:`manifest`."""
        m = self._read_manifest()
        try:
            return Manifest.from_json(m)
        except ManifestError as e:
            raise SessionDamaged(self.path, {MANIFEST: f"not a session manifest ({e})"}
                                 ) from None

    def _read_manifest(self) -> Any:
        p = self.path / MANIFEST
        try:
            return json.loads(read_text(p, RECORD_MAX))
        except FileNotFoundError:
            raise SessionDamaged(self.path, {MANIFEST: "missing"}) from None
        except UnreadableFile as e:  # a FIFO, a link to /dev/zero, gigabytes
            raise SessionDamaged(self.path, {MANIFEST: str(e)}) from None
        except (ValueError, UnicodeDecodeError):
            raise SessionDamaged(self.path, {MANIFEST: "not valid JSON"}) from None
        except OSError as e:
            raise SessionDamaged(self.path, {MANIFEST: f"cannot be read ({e.strerror or e})"}
                                 ) from None

    def write_manifest(self, m: dict | Manifest) -> None:
        """Write the manifest (as it is: the claims' digests are :meth:`update_manifest`'s),
        in the current format."""
        m = m.to_json() if isinstance(m, Manifest) else m
        atomic_write_json(self.path / MANIFEST, {"format_version": FORMAT_VERSION, **m})

    def update_manifest(self, **changes: Any) -> dict:
        """Set top-level keys of the manifest; the claims among them (:data:`engine.manifest.
        CLAIMS`) get their digests recorded anew."""
        m = self.manifest()
        m.update(changes)
        if m.get("claims") is not None or m.get("format_version"):
            sign(m, [k for k in changes if k in CLAIMS])
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
    def record_file(self, rel: str, stage: str, blocks: dict | None = None) -> dict:
        """Record a file a stage produced: size, mtime and sha256, or, for a file written in
        blocks (the Jacobian), the digest of each block: ``blocks = {"offset", "block",
        "digests"}``. Returns the record."""
        rec = FileRecord.of(self.path / rel, stage, blocks).to_json()
        m = self.manifest()
        m.setdefault("files", {})[rel] = rec
        self.write_manifest(m)
        return rec

    def forget_files(self, stage: str) -> None:
        """Drop the records of a stage's files (it is about to produce them again)."""
        m = self.manifest()
        m["files"] = {k: v for k, v in m.get("files", {}).items() if v.get("stage") != stage}
        self.write_manifest(m)

    def forget(self, which: Callable[[str], bool]) -> None:
        """Drop the records of the files ``which(rel)`` selects (deleted, or stale)."""
        m = self.manifest()
        m["files"] = {k: v for k, v in m.get("files", {}).items() if not which(k)}
        self.write_manifest(m)

    def write_json(self, rel: str, obj: Any, stage: str | None = None) -> None:
        atomic_write_json(self.path / rel, obj)
        if stage is not None:
            self.record_file(rel, stage)

    def read_json(self, rel: str) -> Any:
        return json.loads(read_text(self.path / rel))

    def write_npy(self, rel: str, arr: np.ndarray, stage: str | None = None) -> None:
        atomic_save_npy(self.path / rel, arr)
        if stage is not None:
            self.record_file(rel, stage)

    def write_npz(self, rel: str, arrays: dict[str, np.ndarray], stage: str | None = None
                  ) -> None:
        atomic_save_npz(self.path / rel, arrays)
        if stage is not None:
            self.record_file(rel, stage)

    def load_npy(self, rel: str, mmap: bool = False) -> np.ndarray:
        import numpy as np

        return np.load(self.path / rel, mmap_mode="r" if mmap else None, allow_pickle=False)

    def load_npz(self, rel: str) -> dict[str, np.ndarray]:
        import numpy as np

        with np.load(self.path / rel, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def has(self, rel: str) -> bool:
        return (self.path / rel).exists()

    def verify(self, deep: bool | int = True, only: set[str] | None = None,
               refresh: bool = False) -> dict[str, str]:
        """Recorded files that do not match their record: {rel: reason}. Always: missing files
        and sizes. ``deep``: contents too (sha256, or every block's digest); an int is the
        largest file checked deeply, larger ones by size and modification time only (a
        changed time sends a file of at most :data:`RECHECK_MAX` bytes to its contents).
        ``only`` limits the check to those files. ``refresh`` (the caller holds the lock):
        files whose contents match but whose modification time changed (a copy) get the
        new time recorded, so that quick checks pass again."""
        problems, moved = {}, {}
        m = self.manifest()
        files = m.get("files", {})
        # tjac writes no link: one in a session (jacobian.npy -> a user's file, svd/ -> another
        # session) would have the next write go through it. With the lock held they go; the
        # files they stood for are then missing, and their stages run again
        # (recorded, so that the run after `tjac resume`'s check still says why they are gone)
        removed = remove_links(self.path) if refresh else {}
        if removed:
            m.setdefault("removed_links", {}).update(removed)
            self.write_manifest(m)
        self.removed_links = m.get("removed_links") or {}
        edited = edited_claims(m) if only is None else []
        if edited:
            problems[MANIFEST] = (f"{', '.join(edited)}: edited since the run recorded it (it "
                                  f"says {edited[0]} = {json.dumps(m.get(edited[0]))[:40]})")
        if m.get("config_digest") and (only is None or CONFIG in only):
            try:
                text = read_text(self.path / CONFIG, RECORD_MAX)
            except FileNotFoundError:
                problems[CONFIG] = "missing"
            except UnreadableFile as e:
                problems[CONFIG] = str(e)
            except (OSError, UnicodeDecodeError):
                problems[CONFIG] = "cannot be read"
            else:
                if run_digest(text) != m["config_digest"]:
                    problems[CONFIG] = "changed since the session was created"
        if m.get("status") == "done" and only is None:  # (an edited status, or a bug)
            unfinished = [(k, v.get("status")) for k, v in m.get("stages", {}).items()
                          if v.get("status") != "done"]
            if (unfinished or not m.get("stages")) and MANIFEST not in problems:
                k, st = unfinished[0] if unfinished else ("train", "not recorded")
                problems[MANIFEST] = f"says done, but stage {k} is {st}"
        for rel, rec in files.items():
            if only is not None and rel not in only:
                continue
            why = self._check(rel, rec, deep)
            if why:
                problems[rel] = why
            elif refresh:
                try:
                    mtime = (self.path / rel).stat().st_mtime_ns
                except OSError:
                    continue
                if mtime != rec.get("mtime_ns"):
                    moved[rel] = mtime
        if moved:
            m = self.manifest()
            for rel, mtime in moved.items():
                if rel in m.get("files", {}):
                    m["files"][rel]["mtime_ns"] = mtime
            self.write_manifest(m)
        return problems

    def _check(self, rel: str, rec: dict, deep: bool | int) -> str | None:
        link = linked_part(self.path, rel)
        if link is not None:
            return (f"{link} is a symbolic link (to {os.readlink(self.path / link)}), not what "
                    "tjac wrote; `tjac resume` removes it and computes the file again")
        why = check_file(self.path / rel, FileRecord.from_json(rec), deep)
        gone = [k for k in self.removed_links if rel == k or rel.startswith(k + "/")]
        if why == "missing" and gone:
            what = "it" if gone[0] == rel else gone[0]
            return (f"{what} was a symbolic link (to {self.removed_links[gone[0]]}): removed, "
                    "since tjac writes only files of its own")
        return why

    def started_threads(self) -> int | None:
        """The CPU threads the run started with (``environment.threads``); None before it
        started, or when the manifest cannot be read or that claim was edited."""
        try:
            m = self.manifest()
        except SessionError:
            return None
        threads = (m.get("environment") or {}).get("threads")
        ok = isinstance(threads, int) and threads > 0 and "environment" not in edited_claims(m)
        return threads if ok else None

    def correct_claims(self, derived: dict[str, Any]) -> list[str]:
        """Set the claims ``derived`` (what the run derives from config.toml and the inputs:
        P, layout, data, steps, dtype) where the manifest says otherwise, and drop every other
        claim edited since it was recorded (its true value is not known); the caller holds
        the lock. Returns a message for each."""
        m, out, changes = self.manifest(), [], {}
        for k, v in derived.items():
            v = json.loads(json.dumps(v))
            if m.get(k) != v:
                changes[k] = v
                out.append(f"manifest.json: {k} said {json.dumps(m.get(k))[:40]}, the config "
                           f"gives {json.dumps(v)[:40]}: corrected")
        for k in edited_claims(m):
            if k not in changes and k not in derived:
                changes[k] = None
                out.append(f"manifest.json: {k} was edited since it was recorded: dropped")
        if changes:
            self.update_manifest(**changes)
        return out

    def changed_inputs(self) -> dict[str, str]:
        """The input files the session was created with (:func:`input_files`, recorded in the
        manifest's ``inputs``) that differ now: {path: why}, checked by contents (none for a
        session created before inputs were recorded)."""
        out = {}
        for path, rec in (self.manifest().get("inputs") or {}).items():
            r = FileRecord.from_json(rec)
            why = check_file(Path(path), r, deep=True)
            if why is None:
                continue
            if why.startswith("contents differ"):
                why = f"sha256 {r.sha256[:12]}..., now {sha256(path)[:12]}..."
            out[path] = f"({r.stage}) changed since the session started ({why})"
        return out

    def check_inputs(self) -> None:
        """Raise :class:`InputChanged` naming the first input file that changed, if any."""
        changes = self.changed_inputs()
        if changes:
            raise InputChanged(self.path, changes)

    def check_intact(self, deep: bool | int = DEEP_VERIFY_MAX, only: set[str] | None = None
                     ) -> None:
        """Raise :class:`SessionDamaged` naming the first damaged file, if any."""
        problems = self.verify(deep, only)
        if problems:
            raise SessionDamaged(self.path, problems)

    # ---- logs ------------------------------------------------------------------------------
    def append_jsonl(self, rel: str, record: dict) -> None:
        append_jsonl(self.path / rel, record)

    def events(self, start: int = 0) -> tuple[list[dict], int]:
        return read_jsonl(self.path / "events.jsonl", start)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")[0]

    def spectrum(self) -> dict | None:
        p = self.path / "spectrum.json"
        if not p.exists():
            return None
        try:
            out = json.loads(read_text(p))
        except UnreadableFile as e:
            raise SessionDamaged(self.path, {"spectrum.json": str(e)}) from None
        except (ValueError, UnicodeDecodeError):
            raise SessionDamaged(self.path, {"spectrum.json": "not valid JSON"}) from None
        regions = out.get("regions") if isinstance(out, dict) else None
        if not (isinstance(regions, dict) and isinstance(out.get("bulk_tol"), (int, float))
                and all(isinstance(regions.get(k), dict)
                        and isinstance(regions[k].get("count"), int)
                        for k in ("chaotic", "bulk", "stable"))):
            raise SessionDamaged(self.path, {"spectrum.json": "not a spectrum summary"})
        return out

    def unrun_analyses(self) -> list[str]:
        """The analyses config.toml enables whose stage has not finished: one added to a
        finished session's config runs when it is resumed."""
        try:
            cfg = self.config()
        except (config_mod.ConfigError, OSError):
            return []
        stages = self.manifest().get("stages", {})
        return [n for n, a in cfg.analysis.items()
                if a.enabled and stages.get(f"analysis.{n}", {}).get("status") != "done"]

    def load_vector(self, rel: str) -> np.ndarray:
        """A stored vector (``svd/S.npy``, ``svd/alignment.npy``) as float64, checked first
        against its record in the manifest: :class:`SessionDamaged` names the file when it
        does not match, cannot be read, or is not a non-empty vector."""
        import numpy as np

        why = self.verify(only={rel}).get(rel)
        if why is None:
            try:
                S = self.load_npy(rel)
            except (OSError, ValueError) as e:
                why = f"cannot be read ({e})"
            else:
                if S.ndim == 1 and S.size and np.issubdtype(S.dtype, np.number):
                    return S.astype(np.float64)
                why = f"not a vector (shape {S.shape}, {S.dtype})"
        raise SessionDamaged(self.path, {rel: why})


def list_sessions(root: str | Path) -> Iterator[Session]:
    """Sessions under ``root`` (directories with a manifest, damaged ones included), newest
    first."""
    root = Path(root)
    if not root.is_dir():
        return iter(())
    found = []
    for p in root.iterdir():
        try:
            found.append((p.joinpath("manifest.json").stat().st_ctime, Session(p)))
        except OSError:
            continue
    found.sort(key=lambda t: t[0], reverse=True)
    return iter(s for _, s in found)


def run_seconds(manifest: dict, live: bool, now: float | None = None) -> float:
    """Seconds the run has computed: every stage's recorded time, plus, while a worker is live,
    the time since the running stage started (its recorded time is added when it ends)."""
    total = 0.0
    for st in manifest.get("stages", {}).values():
        if not isinstance(st, dict):
            continue
        try:
            total += float(st.get("seconds") or 0.0)
        except (TypeError, ValueError):
            continue
        if live and st.get("status") == "running" and st.get("started"):
            try:
                t0 = datetime.fromisoformat(st["started"]).timestamp()
            except (TypeError, ValueError):
                continue
            total += max(0.0, (now if now is not None else datetime.now(timezone.utc)
                               .timestamp()) - t0)
    return total


def status_of(manifest: dict, live: bool) -> str:
    """The status a session is shown with (``tjac ls``, its report, the workbench): the
    manifest's ("created", "running", "done", "failed", "interrupted"), except a session
    recorded as running that no live process holds (``live``: the writer lock is held): its
    worker died without marking it (SIGKILL, a power cut), "stale"."""
    status = str(manifest.get("status", "?"))
    return "stale" if status == "running" and not live else status


def describe(s: Session) -> dict:
    """One row for ``tjac ls`` and the Sessions pane. A session whose manifest cannot be read,
    or whose files do not match their records (size and modification time: cheap), is
    ``damaged`` and ``problem`` says why."""
    row = {"name": s.name, "path": str(s.path), "status": "damaged", "preset": None,
           "P": None, "created": "", "seconds": 0.0, "device": None, "problem": None}
    live = s.is_locked()
    try:
        m = s.manifest()
        problems = {} if live else s.verify(deep=False)
    except SessionDamaged as e:
        row["problem"] = e.detail
        return row
    status = status_of(m, live)
    if problems:
        rel, why = next(iter(problems.items()))
        status, row["problem"] = "damaged", f"{rel}: {why}"
    edited = set(edited_claims(m))  # (named in problem: not shown as facts)
    shown = {k: None if k in edited else m.get(k) for k in ("preset", "P", "device")}
    row.update(status=status, created=str(m.get("created", "")),
               seconds=run_seconds(m, live and status == "running"), **shown)
    return row
