"""The ``tjac`` command: the TUI, and the headless subcommands.

    tjac                          open the workbench (TUI)
    tjac run PRESET [--set K=V]   run a preset to the end with progress bars
    tjac resume SESSION           finish an interrupted session
    tjac ls                       sessions and their status
    tjac presets                  the shipped presets
    tjac report SESSION [-o FILE] write the markdown report (default SESSION/report.md)
    tjac compare S1 S2 [...]      region counts side by side and overlaid spectra (markdown)
    tjac open SESSION             open the workbench on a session (running or finished)
    tjac study PRESET|DIR         run every run of a preset's [study] (or resume a study), then
                                  the cross-run analyses and DIR/report.md

Exit status: 0 done, 1 the run failed, 2 bad usage or an invalid preset (one line on stderr),
3 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engine import config as config_mod
from engine.session import Session, SessionLocked, describe, list_sessions

REPO_PRESETS = Path(__file__).resolve().parents[1] / "presets"
EXIT_USAGE = 2


def default_sessions_dir() -> Path:
    return Path(os.environ.get("TJAC_SESSIONS", "sessions"))


def shipped_presets() -> list[Path]:
    return sorted(REPO_PRESETS.glob("*.toml")) if REPO_PRESETS.is_dir() else []


def find_preset(name: str) -> Path:
    """A path to a TOML file, or the name of a shipped preset (``quick``, ``quick.toml``)."""
    p = Path(name)
    if p.exists() or p.suffix == ".toml" and p.parent != Path("."):
        return p
    stem = p.stem if p.suffix == ".toml" else name
    shipped = REPO_PRESETS / f"{stem}.toml"
    return shipped if shipped.exists() else p


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(msg.splitlines()[0] if msg else "error", file=sys.stderr)
    return code


def find_session(arg: str, root: Path) -> Session:
    p = Path(arg)
    for cand in (p, root / arg):
        if (cand / "manifest.json").is_file():
            return Session(cand)
    raise FileNotFoundError(f"{arg}: no session there (looked in {p} and {root / arg})")


# --------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    preset = find_preset(args.preset)
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    try:
        cfg = config_mod.load(preset, overrides)
    except config_mod.ConfigError as e:
        return _fail(str(e))
    session = Session.create(args.sessions, args.name or cfg.name, cfg, str(preset))
    if args.detach:
        from engine.runner import start_worker

        start_worker(session.path)
        print(session.path)
        return 0
    return _run_foreground(session, quiet=args.quiet)


def _run_foreground(session: Session, quiet: bool = False, device: str | None = None) -> int:
    from engine.runner import EXIT_OK, run_session

    from .progress import RichProgress, regions_table

    err = Console(stderr=True, quiet=quiet)
    try:
        with RichProgress(err) as bars:
            code = run_session(session.path, [bars], device=device, handle_signals=True)
    except SessionLocked as e:
        return _fail(str(e))
    summary = session.spectrum()
    if code == EXIT_OK and summary is not None and not quiet:
        Console(width=None if sys.stdout.isatty() else 120).print(regions_table(summary))
    if code != EXIT_OK:
        m = session.manifest()
        if m.get("error"):
            print(f"{session.path}: {m['error']}", file=sys.stderr)
    print(session.path)
    return code


def cmd_resume(args: argparse.Namespace) -> int:
    try:
        s = find_session(args.session, args.sessions)
    except FileNotFoundError as e:
        return _fail(str(e))
    if s.manifest().get("status") == "done":
        print(f"{s.path}: already done", file=sys.stderr)
        print(s.path)
        return 0
    return _run_foreground(s, quiet=args.quiet, device=args.device)


def cmd_ls(args: argparse.Namespace) -> int:
    rows = [describe(s) for s in list_sessions(args.sessions)]
    if not rows:
        print(f"no sessions in {args.sessions}", file=sys.stderr)
        return 0
    t = Table("name", "status", "preset", "P", "created", "time", box=None)
    for r in rows:
        t.add_row(r["name"], r["status"], Path(r["preset"]).stem if r["preset"] else "-",
                  str(r["P"] or "-"), r["created"].replace("T", " ")[:19],
                  f"{r['seconds']:.1f} s")
    Console(width=max(100, Console().width)).print(t)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    t = Table("preset", "description", box=None)
    for p in shipped_presets():
        try:
            desc = config_mod.load(p).description
        except config_mod.ConfigError as e:
            desc = f"(invalid: {e})"
        t.add_row(p.stem, desc)
    Console(width=max(100, Console().width)).print(t)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from engine.report import write_report

    try:
        s = find_session(args.session, args.sessions)
    except FileNotFoundError as e:
        return _fail(str(e))
    print(write_report(s, args.output, ascii_only=not args.unicode))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.report import render_compare

    try:
        found = [find_session(a, args.sessions) for a in args.sessions_to_compare]
    except FileNotFoundError as e:
        return _fail(str(e))
    text = render_compare(found, ascii_only=not args.unicode)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(args.output)
    else:
        sys.stdout.write(text)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from engine import study as study_mod
    from engine.runner import EXIT_OK, run_session

    from .progress import RichProgress

    err = Console(stderr=True, quiet=args.quiet)
    target = Path(args.target)
    if study_mod.is_study(target) or study_mod.is_study(args.sessions / args.target):
        st = study_mod.Study(target if study_mod.is_study(target) else args.sessions / target)
    else:
        try:
            st = study_mod.create(args.sessions, find_preset(args.target), args.set, args.name)
        except config_mod.ConfigError as e:
            return _fail(str(e))

    def one_run(path, listeners, handle_signals=False):
        err.print(f"[bold]run {Path(path).name}[/]")
        try:
            with RichProgress(err) as bars:
                return run_session(path, listeners + [bars], handle_signals=handle_signals)
        except SessionLocked as e:
            return _fail(str(e))

    def on_event(ev: dict) -> None:
        if ev["event"] == "cross_start":
            err.print("[bold]cross-run analyses[/]")
        elif ev["event"] == "analysis_progress" and ev["done"] == ev["total"]:
            err.print(f"[dim]analysis {ev['name']}: done[/]")

    code = study_mod.run(st.path, [on_event], handle_signals=True, run_session=one_run)
    if code == EXIT_OK:
        err.print(f"report: {st.path / 'report.md'}")
    else:
        print(f"{st.path}: {st.manifest().get('status')} ({st.manifest().get('error') or ''})",
              file=sys.stderr)
    print(st.path)
    return code


def cmd_tui(args: argparse.Namespace) -> int:
    try:
        from .app import TjacApp
    except ImportError:
        return _fail("the TUI is not available in this build; use `tjac run PRESET`", 1)
    app = TjacApp(sessions_dir=args.sessions, preset=getattr(args, "preset", None),
                  session=getattr(args, "session", None), ascii_only=args.ascii)
    app.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--sessions", type=Path, default=default_sessions_dir(),
                     help="sessions directory (default: $TJAC_SESSIONS or ./sessions)")
    # the subcommands take --sessions too; SUPPRESS keeps `tjac --sessions D CMD` working
    # (a subparser default would overwrite the value parsed before the subcommand)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sessions", type=Path, default=argparse.SUPPRESS,
                        help="sessions directory (default: $TJAC_SESSIONS or ./sessions)")
    ap = argparse.ArgumentParser(prog="tjac", parents=[top],
                                 description="The training-Jacobian workbench.")
    ap.add_argument("--preset", help="open the TUI with this preset loaded")
    ap.add_argument("--ascii", action="store_true", help="plots without braille/block characters")
    sub = ap.add_subparsers(dest="cmd")

    r = sub.add_parser("run", parents=[common], help="run a preset headless")
    r.add_argument("preset", help="a TOML file or the name of a shipped preset")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=0.05 (repeatable)")
    r.add_argument("--name", help="session name (default: the preset's name)")
    r.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides the preset)")
    r.add_argument("--detach", action="store_true",
                   help="start the run as a background worker and print the session path")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("resume", parents=[common], help="finish an interrupted session")
    s.add_argument("session")
    s.add_argument("--device", help="resume on another device (results may differ in the last bits)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_resume)

    sub.add_parser("ls", parents=[common], help="list sessions").set_defaults(func=cmd_ls)
    sub.add_parser("presets", parents=[common], help="list shipped presets").set_defaults(
        func=cmd_presets)
    rp = sub.add_parser("report", parents=[common], help="write a session's markdown report")
    rp.add_argument("session")
    rp.add_argument("-o", "--output", help="output file (default: SESSION/report.md)")
    rp.add_argument("--unicode", action="store_true",
                    help="plots with braille characters instead of plain ASCII")
    rp.set_defaults(func=cmd_report)

    cp = sub.add_parser("compare", parents=[common],
                        help="compare the spectra of two or more sessions (markdown)")
    cp.add_argument("sessions_to_compare", nargs="+", metavar="SESSION")
    cp.add_argument("-o", "--output", help="write to this file instead of stdout")
    cp.add_argument("--unicode", action="store_true",
                    help="plots with braille characters instead of plain ASCII")
    cp.set_defaults(func=cmd_compare)

    sd = sub.add_parser("study", parents=[common],
                        help="run a preset's [study] (several runs and cross-run analyses)")
    sd.add_argument("target", help="a preset with a [study] section, or a study directory to "
                                   "resume")
    sd.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a key of every run (repeatable)")
    sd.add_argument("--name", help="study directory name (default: the preset's name)")
    sd.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sd.set_defaults(func=cmd_study)

    o = sub.add_parser("open", parents=[common], help="open the TUI on a session")
    o.add_argument("session")
    o.add_argument("--ascii", action="store_true", default=argparse.SUPPRESS,
                   help="plots without braille/block characters")
    o.set_defaults(func=cmd_tui)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.cmd is None:
        return cmd_tui(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
