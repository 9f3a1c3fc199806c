"""The ``tjac`` command: the TUI, and the headless subcommands.

    tjac                          open the workbench (TUI)
    tjac run PRESET [--set K=V]   run a preset to the end with progress bars
    tjac run PRESET --nproc N     ... J's chunks on N processes (torch.distributed)
    tjac resume SESSION [--nproc N]  finish an interrupted session
    tjac run|resume ... --log tensorboard[=DIR]|mlflow[=URI]|wandb[=PROJECT]
                                  also send the metrics to an experiment tracker
    tjac ls [--json]              sessions and their status
    tjac export SESSION --csv DIR|--parquet DIR
                                  the session's tables: spectrum, regions, metrics, analyses
    tjac presets                  the shipped presets
    tjac report SESSION [-o FILE] [--figures]
                                  write the markdown report (default SESSION/report.md);
                                  --figures: PNG/SVG figures and spectrum.csv too
    tjac compare S1 S2 [...]      region counts side by side and overlaid spectra (markdown)
    tjac open SESSION             open the workbench on a session (running or finished)
    tjac sweep PRESET|DIR [--parallel N]
                                  run every point of a preset's [sweep] (or resume a sweep),
                                  then the comparison and DIR/report.md (tjac study: the same)
    tjac sweep PRESET --plan [--json]
                                  every point's P, disk, SVD memory and probed time, and
                                  their sum
    tjac schema [-o FILE]         the JSON Schema of presets (for TOML editors)

Exit status: 0 done, 1 the run failed, 2 bad usage or an invalid preset (one line on stderr),
3 interrupted (resumable), 141 the output's reader went away (``tjac ... | head -1``: quiet,
as a command killed by SIGPIPE). Every error reaches the user through :func:`main`, the one
error boundary: a known failure is one line on stderr and an exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine import config as config_mod, control, device as device_mod
from engine.config import ConfigError
from engine.schema import DataError, PlanError, one_line
from engine.session import SessionDamaged, SessionError

from .locations import (NotFound, default_sessions_dir, find_preset, find_session,
                        shipped_presets)

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 3  # (3: as engine.runner, resumable)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command its pipe closed on


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    """One line on stderr (control characters escaped), and the exit status."""
    print(one_line(msg.strip()) or "error", file=sys.stderr)
    return code


def _console(stderr: bool = False, quiet: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, quiet=quiet)


# --------------------------------------------------------------------------------------------


def _nproc(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of processes from 1 to 1024")
    return n


LOG_HELP = ("also send the run's metrics to tensorboard[=DIR], mlflow[=TRACKING_URI] or "
            "wandb[=PROJECT] (repeatable; the package installed separately)")


def check_trackers(args: argparse.Namespace) -> None:
    """``--log``: each tracker known and its package installed, before anything is created;
    a run in a worker (``--detach``) has none (its events go to the session only)."""
    from engine import trackers

    if not args.log:
        return
    if getattr(args, "detach", False):
        raise NotFound("--log follows a run from this process; --detach runs it in a worker: "
                       "leave one out")
    try:
        trackers.check(args.log)
    except trackers.TrackerError as e:
        raise NotFound(str(e)) from None


def cmd_run(args: argparse.Namespace) -> int:
    check_trackers(args)
    if args.json and not args.plan:
        raise NotFound("--json goes with --plan (a run prints its progress and its session's "
                       "path)")
    preset = find_preset(args.preset)
    cfg = control.prepare(preset, args.set, device=args.device, name=args.name,
                          skip_analyses=args.skip_analyses, nproc=args.nproc)
    if cfg.sweep is not None and not args.plan:
        raise NotFound(f"{preset}: this preset has a [sweep]: `tjac sweep {args.preset}` runs "
                       "every point (`tjac run` would run only its base config)")
    if args.plan and cfg.sweep is not None:  # every point's plan, as `tjac sweep --plan`
        if args.json:
            raise NotFound(f"{preset}: --json plans one run and this preset has a [sweep]: "
                           f"`tjac sweep {args.preset} --plan` plans every point")
        return print_sweep_plan(cfg, args.sessions, str(preset))
    if args.plan:
        return print_plan(cfg, args.sessions, as_json=args.json)
    session = control.create(cfg, args.sessions, preset)
    try:
        if args.detach:
            control.start(session.path, nproc=args.nproc)
            print(session.path)
            return 0
        return _run_foreground(session, quiet=args.quiet, nproc=args.nproc, log=args.log)
    except KeyboardInterrupt:  # (before the runner took over ctrl+c: the session never ran)
        if session.manifest().get("status") != "created":
            raise
        return _fail(f"interrupted before the run started: `tjac resume {session.path}` runs "
                     "it", EXIT_INTERRUPTED)


def print_plan(cfg, sessions: Path, as_json: bool = False) -> int:
    """``tjac run PRESET --plan``: the sizes, whether they fit here, and times estimated from a
    short timed probe on this device (:class:`engine.control.PlanReport`); nothing is written.
    ``as_json``: the report as one JSON object (what the Setup pane's time estimate reads)."""
    report = control.plan_report(cfg, sessions)
    if as_json:
        print(json.dumps(control.with_probe(report, cfg).to_json()))
        return 0
    for line in report.lines():  # the sizes at once; the probe takes seconds
        print(line, flush=True)
    if report.probes:
        print(control.probing_text(report.method), file=sys.stderr, flush=True)
        for line in control.with_probe(report, cfg).probe_lines():
            print(line)
    return 0


def print_sweep_plan(base, sessions: Path, where: str, as_json: bool = False) -> int:
    """``tjac sweep PRESET --plan`` (and ``tjac run PRESET --plan`` of a preset with a
    [sweep]): every point's P, steps, disk and SVD memory, whether each fits and whether all
    fit together (:class:`engine.control.SweepPlanReport`), then each point's time from a short
    probe and their sum (the probes take a few seconds a point: the sizes come first); nothing
    is written. ``as_json``: the probed report as one JSON object (what the Setup pane's time
    estimate of a sweep reads)."""
    report = control.sweep_plan_report(base, sessions, where)
    if as_json:
        print(json.dumps(control.sweep_with_probes(report, base, where).to_json()))
        return 0
    for line in report.lines():
        print(line, flush=True)
    todo = sum(r.probes for _, r in report.points)
    if not todo:
        return 0

    def probing(i: int, name: str) -> None:
        print(f"probing point {i + 1} of {len(report.points)} ({name})...", file=sys.stderr,
              flush=True)

    print()
    for line in control.sweep_with_probes(report, base, where, probing).time_lines():
        print(line)
    return 0


def _run_foreground(session, quiet: bool = False, device: str | None = None,
                    nproc: int = 1, log: list[str] | None = None) -> int:
    from engine import events, trackers
    from engine.present.report import report_keeper
    from engine.runner import EXIT_OK

    from .progress import RichProgress

    err = _console(stderr=True, quiet=quiet)
    errors: list[str] = []  # the run's failure, also when the disk refused to record it

    def on_error(rec: dict) -> None:
        if isinstance(ev := events.decode(rec), events.RunError):
            errors.append(ev.message)

    try:
        tracked = trackers.open_trackers(log or [], session)
    except trackers.TrackerError as e:
        return _fail(f"{e}; the session is created: `tjac resume {session.path}` runs it")
    try:
        with RichProgress(err) as bars:
            code = control.run_foreground(session.path, [bars, on_error, report_keeper(session),
                                                         *tracked], device=device, nproc=nproc)
    finally:
        for t in tracked:  # (the run's own status; "interrupted" if it never said)
            t.close()
    summary = session.spectrum() if code == EXIT_OK else None
    if code == EXIT_OK and not quiet:
        out = _out_console()
        if summary is not None:
            out.print(regions_table(summary, out.width))
        elif (session.path / "matfree.json").exists():  # a matrix-free run: its estimates
            from engine.present.views import matfree_tables

            for v in matfree_tables(session.read_json("matfree.json")):
                out.print(view_table(v, out.width))
    if code != EXIT_OK and errors:
        print(one_line(f"{session.path}: {errors[-1]}"), file=sys.stderr)
    print(session.path)
    return code


def fitted_table(columns: list[str], rows: list[list], width: int, title: str | None = None,
                 caption: str | None = None, right: tuple[str, ...] = ()):
    """A rich table of ``rows`` (strings, one per column) that fits ``width`` columns with
    every value whole: a header wider than its values wraps; where the values themselves do not
    fit side by side, each row is a block of ``column  value`` lines instead (its first cell
    the block's heading). ``right``: the columns aligned right (numbers). ``title`` above and
    ``caption`` below are lines of their own, wrapped at ``width`` (as a rich table's own title
    they wrapped at the table's width: a few words a line above a narrow table)."""
    from rich.console import Group
    from rich.text import Text

    table = _fitted_body(columns, rows, width, right)
    parts = ([Text(title, style="bold")] if title else []) + [table] + \
        ([Text(caption, style="dim")] if caption else [])
    return Group(*parts) if len(parts) > 1 else table


def _fitted_body(columns: list[str], rows: list[list], width: int, right: tuple[str, ...]):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cells = [[str(c) for c in r] for r in rows]
    # each column as wide as its widest value (or the longest word of its header); the
    # columns two apart: side by side where that fits
    widths = [max([len(w) for w in c.split()] + [len(r[i]) for r in cells])
              for i, c in enumerate(columns)]
    if sum(widths) + 2 * (len(widths) - 1) <= width:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True)
        for c, w in zip(columns, widths):
            t.add_column(c, justify="right" if c in right else "left", width=w)
        for r in cells:
            t.add_row(*map(Text, r))
        return t
    v = Table(box=None, show_header=False, pad_edge=False)
    v.add_column(style="dim", no_wrap=True)
    v.add_column(overflow="fold")
    for n, r in enumerate(cells):
        if n:
            v.add_row("", "")
        v.add_row(Text(f"{columns[0]} {r[0]}", style="bold"), "", style="none")
        for c, x in zip(columns[1:], r[1:]):
            v.add_row(Text(f"  {c}"), Text(x))
    return v


def regions_table(summary: dict, width: int):
    """The regions table of a ``spectrum.json`` summary, fitted to ``width`` columns."""
    from engine.spectrum import region_rows

    rows = region_rows(summary)
    cols = [c for c in rows[0] if c != "rule"]
    return fitted_table(cols, [[r[c] for c in cols] for r in rows], width,
                        title=f"P = {summary['P']}   s_max = {summary['s_max']:.6g}   "
                              f"s_min = {summary['s_min']:.3g}",
                        caption=f"bulk: |s - 1| <= {summary['bulk_tol']:g}; chaotic above, "
                                "stable below", right=tuple(cols[1:]))


def view_table(v, width: int, title: str | None = None):
    """A table view (engine.present.views.View: columns, rows, note), fitted to ``width``."""
    return fitted_table(v.columns, v.rows, width, title=title or v.title, caption=v.note or None)


def _out_console(pipe_width: int = 120):
    """The console of the tables on stdout: the terminal's width, ``pipe_width`` into a
    pipe."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else pipe_width)


def cmd_resume(args: argparse.Namespace) -> int:
    """Finish an interrupted session; a finished one is checked file by file first, and what
    is damaged is computed again (a damaged manifest: everything). What is refused, and why:
    :func:`engine.control.check_resumable`."""
    check_trackers(args)
    s = find_session(args.session, args.sessions)
    refusal = control.check_resumable(s.path, device=args.device, nproc=args.nproc)
    if refusal is not None and refusal.kind == "done":
        print(refusal.message, file=sys.stderr)
        print(s.path)
        return 0
    if refusal is not None:
        return _fail(refusal.message, refusal.exit_code)
    return _run_foreground(s, quiet=args.quiet, device=args.device, nproc=args.nproc,
                           log=args.log)


def cmd_ls(args: argparse.Namespace) -> int:
    from engine.session import describe, list_sessions

    rows = [describe(s) for s in list_sessions(args.sessions)]
    if args.json:  # one JSON list of describe()'s rows (an empty list when there are none)
        print(json.dumps(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    from engine.sweep import describe_sweep, list_sweeps
    from engine.units import fmt_seconds

    sweeps = [describe_sweep(p) for p in list_sweeps(args.sessions)]
    if not rows and not sweeps:
        print(f"no sessions in {args.sessions}", file=sys.stderr)
        return 0
    t = Table("name", "status", "preset", "P", "created", "time", box=None)

    def add(r: dict, name: str, status: str) -> None:
        t.add_row(name, status, Path(r["preset"]).stem if r.get("preset") else "-",
                  str(r.get("P") or "-"), r["created"].replace("T", " ")[:19],
                  fmt_seconds(r["seconds"]))

    for r in rows:
        add(r, r["name"], r["status"])
    for sw in sweeps:  # a sweep, then its points indented under it
        add(sw, f"{sw['name']} (sweep)", f"{sw['status']} {sw['done']}/{sw['total']}")
        for r in sw["points"]:
            add(r, f"  {r['name']}", r["status"])
    Console(width=max(100, Console().width)).print(t)
    for r in rows + [p for sw in sweeps for p in [sw, *sw["points"]]]:  # why each damaged one is
        if r["problem"]:
            print(f"{r['name']}: {r['problem']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``tjac export SESSION --csv DIR`` (or ``--parquet DIR``): the session's tables
    (:func:`engine.results.write_tables`) into DIR, which may not be inside a session."""
    from engine.results import MissingPackage, open_session, write_tables

    s = find_session(args.session, args.sessions)
    fmt, out = ("csv", args.csv) if args.csv else ("parquet", args.parquet)
    out = Path(out).absolute()
    if any((p / "manifest.json").is_file() for p in (out, *out.parents)):
        raise NotFound(f"{out}: inside a session: export its tables to a folder of your own")
    if not out.parent.is_dir():
        raise NotFound(f"{out.parent}: no such folder")
    try:
        files = write_tables(open_session(s.path), out, fmt)
    except MissingPackage as e:
        return _fail(str(e))
    for f in files:
        print(f)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    t = Table("preset", "description", box=None)
    for p in shipped_presets():
        try:
            desc = config_mod.load(p).description
        except ConfigError as e:
            desc = f"(invalid: {e})"
        t.add_row(p.stem, desc)
    Console(width=max(100, Console().width)).print(t)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from engine.present.report import status_line, write_report
    from engine.session import status_of
    from engine.sweep import is_sweep

    for where in (Path(args.session), args.sessions / args.session):
        if is_sweep(where):  # a sweep: its comparison's report (every point's row)
            return report_sweep(where, args)
    s = find_session(args.session, args.sessions)
    s.check_intact()  # a report of damaged files would state wrong numbers
    output = args.output
    if output and Path(output).is_dir() and not Path(output).is_symlink():  # a folder: the
        output = str(Path(output) / f"{s.name}.md")  # report goes into it
    if output:
        control.check_output(output)
    out = write_report(s, output, ascii_only=not args.unicode, figures=args.figures)
    print(out)
    m = s.manifest()
    why = status_line(s, m, status_of(m, s.is_locked()))
    if why:  # (the report states it too)
        print(why, file=sys.stderr)
    if args.figures:
        from engine.present.figures import why_no_figures

        err = _console(stderr=True, quiet=getattr(args, "quiet", False))
        figs = sorted((s.path / "figures").glob("*"))
        err.print(f"figures: {len(figs)} file(s) in {s.path / 'figures'}", soft_wrap=True,
                  markup=False)
        if not any(p.suffix == ".png" for p in figs):
            err.print(why_no_figures(s), style="yellow", markup=False, soft_wrap=True)
    return 0


def report_sweep(path: Path, args: argparse.Namespace) -> int:
    """``tjac report SWEEPDIR``: the sweep's report (its comparison table and plots, what its
    points hold so far) to ``SWEEPDIR/report.md`` or ``-o FILE``; each point's own report is
    ``tjac report SWEEPDIR/runs/POINT``."""
    from engine.present.findings import render_sweep_markdown, write_sweep_report
    from engine.sweep import Sweep

    sw = Sweep(path)
    if args.figures:
        raise NotFound(f"{path}: --figures draws one session's figures: `tjac report "
                       f"{path}/runs/POINT --figures`")
    if args.output:
        return _write_or_print(render_sweep_markdown(sw.path), args.output)
    print(write_sweep_report(sw.path))
    if sw.comparison() is None:
        print(f"{sw.path}: no comparison yet (the report shows the points so far); `tjac sweep "
              f"{sw.path}` runs the rest and compares them", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.present.report import render_compare

    found = [find_session(a, args.sessions) for a in args.sessions_to_compare]
    if len({s.path.resolve() for s in found}) < 2:
        raise NotFound("compare: name two or more different sessions")
    for s in found:  # as for a report: damaged files would state wrong numbers
        s.check_intact()
        s.spectrum()  # (a summary that is not one is damage too)
    return _write_or_print(render_compare(found, ascii_only=not args.unicode), args.output)


def _write_or_print(text: str, output: str | None, suffixes: tuple[str, ...] = (".md",)
                    ) -> int:
    """``text`` into the file ``output`` (its path printed; checked first by
    :func:`engine.control.check_output`, ``suffixes`` the names allowed inside a session), or
    to stdout."""
    if output:
        from engine.files import atomic_write

        control.check_output(output, suffixes)
        atomic_write(output, text.encode("utf-8"))
        print(output)
    else:
        sys.stdout.write(text)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from engine import events, sweep as sweep_mod
    from engine.present.findings import write_sweep_report
    from engine.present.report import report_keeper
    from engine.runner import EXIT_INTERRUPTED, EXIT_OK, run_session
    from rich.markup import escape

    from .progress import RichProgress

    if args.json and not args.plan:
        raise NotFound("--json goes with --plan (a sweep prints its progress and its table)")
    err = _console(stderr=True, quiet=args.quiet)
    target = Path(args.target)
    if sweep_mod.is_sweep(target) or sweep_mod.is_sweep(args.sessions / args.target):
        sw = sweep_mod.Sweep(target if sweep_mod.is_sweep(target) else args.sessions / target)
        if args.set:
            raise config_mod.ConfigError(f"{sw.path}: --set: a sweep resumes as it was "
                                         "created; start a new one to change its keys")
        if args.plan:
            raise NotFound(f"{sw.path}: --plan plans a sweep before it exists: name its "
                           f"preset ({sw.manifest().get('preset')})")
    elif args.plan:
        preset = find_preset(args.target)
        base = config_mod.load(preset, args.set)
        if base.sweep is None:
            raise NotFound(f"{preset}: no [sweep] section: `tjac run {args.target} --plan` "
                           "plans its run")
        return print_sweep_plan(base, args.sessions, str(preset), as_json=args.json)
    else:
        preset = find_preset(args.target)
        control.check_sessions_dir(args.sessions)
        sw = sweep_mod.create(args.sessions, preset, args.set, args.name, args.parallel)
        err.print(f"[dim]sweep {escape(str(sw.path))}: {len(sw.manifest()['points'])} points[/]")

    def one_run(path, listeners, handle_signals=False):
        with RichProgress(err) as bars:
            return run_session(path, listeners + [bars, report_keeper(path)],
                               handle_signals=handle_signals)

    def on_event(rec: dict) -> None:
        match ev := events.decode(rec):
            case events.SweepPoint(status="done"):
                err.print(f"[dim]point {escape(ev.name)} ({ev.index + 1}/{ev.total}): done[/]")
            case events.SweepPoint():
                err.print(f"[bold]point {escape(ev.name)}[/] ({ev.index + 1}/{ev.total})")
            case events.SweepPointEnd() if args.parallel and args.parallel > 1:
                err.print(f"point {escape(ev.name)}: {ev.status}")
            case events.CompareStart():
                err.print("[bold]comparing the points[/]")

    code = sweep_mod.run(sw.path, [on_event], handle_signals=True, run_session=one_run,
                         parallel=args.parallel)
    if sw.comparison() is not None and code != EXIT_INTERRUPTED:
        err.print(f"report: {write_sweep_report(sw.path)}")
        comp = sw.comparison()
        if comp and not args.quiet:
            from engine.present.views import sweep_views

            v = sweep_views(sw.path)[0][2][0]
            out = _out_console(240)
            out.print(view_table(v, out.width, f"{sw.path.name}: {len(v.rows)} points"))
    if code != EXIT_OK:
        m = sw.manifest()
        print(one_line(f"{sw.path}: {m.get('status')}" + (f" ({m['error']})" if m.get("error")
                                                           else "")), file=sys.stderr)
    print(sw.path)
    return code


def cmd_schema(args: argparse.Namespace) -> int:
    if args.markdown:
        return _write_or_print(keys_markdown(all_sections=True) + "\n", args.output)
    return _write_or_print(json.dumps(config_mod.json_schema(), indent=2) + "\n", args.output,
                           (".json",))


def keys_markdown(all_sections: bool = False) -> str:
    """The preset reference as a markdown table: every key, its default (as TOML) and its help
    (all_sections: the analyses' and [sweep] keys too: docs/config.md's table is that one)."""
    import tomli_w

    from engine.present.markdown import md_table
    from engine.sections import toml_literal

    def literal(v) -> str:  # a list, a table on one line (tomli_w writes them on several)
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {literal(x)}" for k, x in v.items()) + "}"
        return toml_literal(v) if isinstance(v, list) else tomli_w.dumps({"v": v})[4:].strip()

    rows = [[f"`{r.key}`", f"`{literal(r.default)}`", r.help]
            for r in config_mod.describe(with_plugins=all_sections)]
    return md_table(["key", "default", "meaning"], rows, align="lll")


def cmd_tui(args: argparse.Namespace) -> int:
    """The workbench. Arguments are checked before Textual (or anything heavy) is imported,
    so a wrong preset or session is one line and exit 2, not an app that opens to say so."""
    preset = find_preset(args.preset) if getattr(args, "preset", None) else None
    session = find_session(args.session, args.sessions).path \
        if getattr(args, "session", None) else None
    try:
        from .app import TjacApp
    except ImportError as e:
        return _fail(f"the workbench cannot start ({e}); `tjac run PRESET` runs headless",
                     EXIT_FAILED)
    TjacApp(sessions_dir=args.sessions, preset=preset, session=session,
            ascii_only=args.ascii).run()
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
    r.add_argument("--nproc", type=_nproc, default=1, metavar="N",
                   help="compute J's chunks on N processes (torchrun on this machine: one GPU "
                        "each on CUDA, cores split among them on the CPU); for several nodes "
                        "see `torchrun ... -m engine.distributed SESSION`")
    r.add_argument("--plan", action="store_true",
                   help="print P, the steps, J's size, the SVD's memory, whether they fit, and "
                        "times estimated from a short timed probe on this device; start "
                        "nothing")
    r.add_argument("--json", action="store_true",
                   help="with --plan: print the plan and the probe's figures as one JSON object")
    r.add_argument("--skip-analyses", action="store_true",
                   help="run train, J, SVD and spectrum only (the preset's analyses are kept in "
                        "its config, switched off)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")
    r.add_argument("--log", action="append", metavar="TRACKER", help=LOG_HELP)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("resume", parents=[common], help="finish an interrupted session")
    s.add_argument("session")
    s.add_argument("--device", help="resume on another device (results may differ in the last "
                                    "bits)")
    s.add_argument("--nproc", type=_nproc, default=1, metavar="N",
                   help="finish J's chunks on N processes (any N: what each earlier process "
                        "recorded is kept)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.add_argument("--log", action="append", metavar="TRACKER", help=LOG_HELP)
    s.set_defaults(func=cmd_resume)

    ls = sub.add_parser("ls", parents=[common], help="list sessions")
    ls.add_argument("--json", action="store_true",
                    help="one JSON list: name, path, status, preset, P, created, seconds, "
                         "device, problem of every session")
    ls.set_defaults(func=cmd_ls)
    ex = sub.add_parser("export", parents=[common],
                        help="write a session's tables (spectrum, regions, metrics, analyses)")
    ex.add_argument("session")
    fmt = ex.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--csv", metavar="DIR", help="as CSV files in DIR (created if missing)")
    fmt.add_argument("--parquet", metavar="DIR",
                     help="as parquet files in DIR (pandas and pyarrow: pip install "
                          "'tjac[results]')")
    ex.set_defaults(func=cmd_export)
    sub.add_parser("presets", parents=[common], help="list shipped presets").set_defaults(
        func=cmd_presets)
    rp = sub.add_parser("report", parents=[common], help="write a session's markdown report")
    rp.add_argument("session")
    rp.add_argument("-o", "--output", help="output file (default: SESSION/report.md)")
    rp.add_argument("--unicode", action="store_true",
                    help="plots with braille characters instead of plain ASCII")
    rp.add_argument("--figures", action="store_true",
                    help="also PNG and SVG figures (matplotlib: pip install 'tjac[figures]') "
                         "and the spectrum as CSV, in SESSION/figures, linked from the report")
    rp.set_defaults(func=cmd_report)

    cp = sub.add_parser("compare", parents=[common],
                        help="compare the spectra of two or more sessions (markdown)")
    cp.add_argument("sessions_to_compare", nargs="+", metavar="SESSION")
    cp.add_argument("-o", "--output", help="write to this file instead of stdout")
    cp.add_argument("--unicode", action="store_true",
                    help="plots with braille characters instead of plain ASCII")
    cp.set_defaults(func=cmd_compare)

    for cmd, help_ in (("sweep", "run a preset's [sweep]: every point as a session, then "
                                 "the comparison and its report"),
                       ("study", "the same as sweep (the paper's study is a sweep of named "
                                 "points: tjac sweep paper-digits-study)")):
        sd = sub.add_parser(cmd, parents=[common], help=help_)
        sd.add_argument("target", help="a preset with a [sweep] section, or a sweep directory "
                                       "to resume")
        sd.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a key of every point (repeatable)")
        sd.add_argument("--name", help="sweep directory name (default: the preset's name)")
        sd.add_argument("--parallel", type=_nproc, metavar="N",
                        help="points at once, each in its own worker process (default: the "
                             "preset's sweep.parallel)")
        sd.add_argument("--plan", action="store_true",
                        help="print every point's P, steps, disk and SVD memory, whether each "
                             "fits and whether all fit together, then each point's time from "
                             "a short probe; start nothing")
        sd.add_argument("--json", action="store_true",
                        help="with --plan: the plan, every point's probe included, as one "
                             "JSON object")
        sd.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        sd.set_defaults(func=cmd_sweep)

    sc = sub.add_parser("schema", parents=[common],
                        help="print the JSON Schema of presets (for TOML editors: taplo, VS "
                             "Code Even Better TOML)")
    sc.add_argument("-o", "--output", help="write to this file instead of stdout")
    sc.add_argument("--markdown", action="store_true",
                    help="the reference of every key as a markdown table instead")
    sc.set_defaults(func=cmd_schema)

    o = sub.add_parser("open", parents=[common], help="open the TUI on a session")
    o.add_argument("session")
    o.add_argument("--ascii", action="store_true", default=argparse.SUPPRESS,
                   help="plots without braille/block characters")
    o.set_defaults(func=cmd_tui)
    return ap


def fill_closed_streams() -> None:
    """Standard output or error closed (``tjac ... >&-``): each is pointed at /dev/null, so
    that output goes nowhere instead of raising (Python leaves ``sys.stdout`` None) and no file
    the run opens later takes descriptor 1 or 2 (where a child's output would then land)."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))
        else:
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


class Interrupted(KeyboardInterrupt):
    """ctrl+c in the command line. A type of its own because CPython (3.11) marks a plain
    KeyboardInterrupt that leaves an ``exec()`` of source text (a dataclass's generated methods,
    made while a module imports) as unhandled for good, and then ends the process by SIGINT
    (status -2) after the handler that caught it returned: ``tjac run``'s "interrupted before
    the run started" (exit 3) then died by the signal one time in five."""


def _interrupted(signum, frame):
    raise Interrupted


def take_ctrl_c():
    """ctrl+c raises :class:`Interrupted`, where it raised KeyboardInterrupt (Python's own
    handler); a SIGINT the parent set to be ignored (``nohup``, a shell's ``&``) stays ignored,
    and a run's own handler (it stops resumably) replaces this one while it runs. Returns the
    handler replaced (None: none was), for :func:`main` to put back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None  # (only the main thread may set a handler; signals go to it alone)
    before = signal.getsignal(signal.SIGINT)
    if before is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)
        return before
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it; the single error boundary of the command line."""
    import signal

    before = take_ctrl_c()
    try:
        return _main(argv)
    finally:
        if before is not None:  # (a caller's own process, a test's, gets its handler back)
            signal.signal(signal.SIGINT, before)


def _main(argv: list[str] | None) -> int:
    fill_closed_streams()
    args = build_parser().parse_args(argv)
    if args.cmd in ("run", "resume", "sweep", "study"):  # they compute here (J, the plan's
        device_mod.prepare_threads()  # probe, a sweep's points): before torch loads OpenMP
    try:
        code = cmd_tui(args) if args.cmd is None else args.func(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then this boundary's
        return code
    except BrokenPipeError:  # the reader went away (`tjac ... | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error
        return EXIT_BROKEN_PIPE  # when Python flushes stdout at exit)
    except (ConfigError, NotFound, PlanError, DataError, device_mod.DeviceError,
            control.OutputRefused) as e:
        return _fail(str(e))
    except SessionDamaged as e:
        return _fail(str(e), EXIT_FAILED)
    except SessionError as e:
        return _fail(str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", EXIT_FAILED)
    except KeyboardInterrupt:  # ctrl+c outside a run (a run stops itself, resumable)
        return _fail("interrupted", EXIT_INTERRUPTED)
    except UnicodeEncodeError as e:  # an ASCII-only terminal, and text it cannot show
        enc = getattr(sys.stdout, "encoding", None) or e.encoding
        return _fail(f"this terminal's encoding ({enc}) cannot show the output's characters "
                     f"({ascii(e.object[e.start:e.end][:8])}): leave out --unicode, or use a UTF-8 "
                     "locale (LANG=C.UTF-8) or PYTHONIOENCODING=utf-8")


if __name__ == "__main__":
    sys.exit(main())
