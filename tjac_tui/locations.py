"""Where things are: shipped presets, preset names, session directories (no Textual, no torch).

Shared by the command line and the app, so both resolve ``quick`` or ``sessions/x`` the same
way and say the same thing when a name matches nothing.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from engine.session import Session

REPO_PRESETS = Path(__file__).resolve().parents[1] / "presets"


class NotFound(LookupError):
    """A preset or session argument that names nothing; ``str()`` is the one-line message."""


def default_sessions_dir() -> Path:
    return Path(os.environ.get("TJAC_SESSIONS", "sessions"))


def shipped_presets() -> list[Path]:
    return sorted(REPO_PRESETS.glob("*.toml")) if REPO_PRESETS.is_dir() else []


def find_preset(name: str) -> Path:
    """A path to a TOML file, the name of a shipped preset (``quick``, ``quick.toml``), or a
    bare name whose ``NAME.toml`` is in the current directory (a preset the workbench saved).
    Raises :class:`NotFound` (with the closest shipped names) when it is neither."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    if p.exists():
        raise NotFound(f"{name}: not a file")
    stem = p.stem if p.suffix == ".toml" else p.name
    if p.parent == Path("."):
        shipped = REPO_PRESETS / f"{stem}.toml"
        if shipped.is_file():
            return shipped
        here = Path(f"{stem}.toml")  # where the workbench saves a preset given a bare name
        if p.suffix != ".toml" and here.is_file():
            return here
    names = [q.stem for q in shipped_presets()]
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.5)
    hint = (f"; did you mean {' or '.join(close)}?" if close else
            f"; shipped presets: {', '.join(names)}" if names else "")
    raise NotFound(f"{name}: no such preset file or shipped preset{hint}")


def find_session(arg: str | Path, root: Path) -> Session:
    """The session at path ``arg``, or named ``arg`` under ``root``; raises :class:`NotFound`
    saying what is there instead."""
    p = Path(arg).expanduser()
    cands = list(dict.fromkeys((p, Path(root) / p)))  # one, when arg is an absolute path
    for cand in cands:
        if (cand / "manifest.json").is_file() or (cand / "manifest.json").is_symlink() or \
                (cand / "config.toml").is_file():  # (a damaged manifest is named when read)
            return Session(cand)
    for cand in cands:
        if cand.is_dir():
            raise NotFound(f"{arg}: not a session (no manifest.json in {cand})")
        if cand.exists():
            raise NotFound(f"{arg}: not a session (a file, not a directory)")
    raise NotFound(f"{arg}: no such session (looked in {' and '.join(map(str, cands))})")


ADDED = "added-sessions.txt"  # in the sessions folder: sessions kept elsewhere, one path a line


def added_sessions(root: Path) -> list[Path]:
    """The sessions (and sweep folders) added by path to the sessions folder ``root`` (they
    may live anywhere, e.g. a colleague's folder), in the order they were added."""
    f = Path(root) / ADDED
    try:
        lines = f.read_text().splitlines()
    except OSError:
        return []
    return [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]


def add_session(root: Path, arg: str | Path) -> Session:
    """Remember the session at ``arg`` (absolute path) in ``root``'s list of added sessions;
    raises :class:`NotFound` when ``arg`` is not a session. Adding one twice keeps one."""
    s = find_session(str(Path(arg).expanduser()), root)
    _remember(root, s.path.resolve())
    return Session(s.path.resolve())


def add_path(root: Path, arg: str | Path) -> Path:
    """What the Sessions pane's ``a`` adds: a session (:func:`add_session`) or a sweep's folder
    (its ``sweep.json``; the pane lists it with its points, as a sweep in ``root``); the path
    added. Raises :class:`NotFound` when ``arg`` is neither."""
    from engine.sweep import is_sweep

    p = Path(arg).expanduser()
    if is_sweep(p):
        _remember(root, p.resolve())
        return p.resolve()
    return add_session(root, p).path


def added_sweeps(root: Path) -> list[Path]:
    """The sweep folders added by path to ``root``, in the order they were added (those moved
    or deleted since left out)."""
    from engine.sweep import is_sweep

    return [p for p in added_sessions(root) if is_sweep(p)]


def _remember(root: Path, path: Path) -> None:
    known = [p.resolve() for p in added_sessions(root)]
    inside = Path(root).resolve() == path.parent
    if path not in known and not inside:
        Path(root).mkdir(parents=True, exist_ok=True)
        with open(Path(root) / ADDED, "a") as f:
            f.write(f"{path}\n")
