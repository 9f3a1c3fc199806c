"""The Textual app: seven panes over one "current" session, fed by tailing its event log.

The TUI never runs the engine (nor imports torch, until a run is started from it): a run is a
worker process (:func:`engine.runner.start_worker`) that goes on when the TUI quits; the TUI
reads the session directory. File reads (events,
manifest, arrays) and plotting happen in thread workers; the event loop only updates widgets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.scrollbar import ScrollBar, ScrollBarRender
from textual.widgets import DataTable, Footer, Header, TabbedContent, TabPane

from engine import config as config_mod
from engine.session import Session, describe

from .locations import NotFound, find_preset, find_session, shipped_presets
from .screens import (ComparePane, HelpScreen, LivePane, RegionsPane, SessionsPane, SetupPane,
                      SpectrumPane)
from .screens.analyses import AnalysesPane
from .state import LiveState, Snapshot, read_snapshot

PANES = [("setup", "Setup", "pick and edit a preset, start a run"),
         ("live", "Live", "the current run: stages, curves, Jacobian progress, events"),
         ("spectrum", "Spectrum", "singular values, |s - 1| and u . v alignment"),
         ("regions", "Regions", "the three regions and the spectrum summary"),
         ("sessions", "Sessions", "all sessions: open, resume, delete"),
         ("compare", "Compare", "overlay the spectra of several sessions"),
         ("analyses", "Analyses", "the finished analyses of the session: plots and tables")]


# the tabs read "1 Setup", "2 Live"...; the footer groups their keys as "1 2 ... 7 panes" so
# that everything fits in 80 columns
PANE_KEYS = Binding.Group("panes")


class Panes(TabbedContent):
    """The tabs. Unlike TabbedContent, focus landing in a pane does not activate it: the app
    chooses the pane (a focus event still queued from the previous pane would switch back)."""

    def _on_tab_pane_focused(self, event: TabPane.Focused) -> None:
        event.stop()


class AsciiScrollBarRender(ScrollBarRender):
    """Scroll bars drawn with ``#`` on a blank track (``--ascii``)."""

    VERTICAL_BARS = ["#"] * 7 + [" "]
    HORIZONTAL_BARS = ["#"] * 7 + [" "]


class TjacApp(App):
    CSS_PATH = "tjac.tcss"
    TITLE = "tjac"
    SUB_TITLE = "training-Jacobian workbench"
    BINDINGS = [
        Binding("ctrl+r", "start_run", "Start run"),  # these two: on the Setup pane only
        Binding("ctrl+s", "save_preset", "Save preset"),
        *[Binding(str(i + 1), f"pane('{key}')", label, tooltip=desc, group=PANE_KEYS)
          for i, (key, label, desc) in enumerate(PANES)],
        Binding("e", "export", "Export"),
        Binding("x", "cancel_run", "Cancel"),
        Binding("r", "resume_run", "Resume"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, sessions_dir: str | Path = "sessions", preset: str | Path | None = None,
                 session: str | Path | None = None, ascii_only: bool = False,
                 poll_interval: float = 0.25) -> None:
        super().__init__()
        self.sessions_dir = Path(sessions_dir)
        self.initial_preset = preset
        self.initial_session = session
        self.ascii_only = ascii_only
        if ascii_only:  # tjac.tcss switches borders, tabs, header, footer and toasts to ASCII
            self.add_class("-ascii")
        self._scrollbar_render = ScrollBar.renderer
        self.plot_color = not self.no_color
        self.poll_interval = poll_interval
        self.current: Path | None = None
        self.live = LiveState()
        self.snapshot: Snapshot | None = None
        self.procs: dict[Path, subprocess.Popen] = {}  # workers started here, by session
        self.last_report: Path | None = None
        self._offset = 0
        self._tail_busy = False
        self._spectrum_seen = False
        self._status = None
        self._locked = False

    # ---- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="*" if self.ascii_only else "⭘")
        with Panes(id="panes", initial="setup"):
            with TabPane(self._tab_label("setup"), id="setup"):
                yield SetupPane(shipped_presets(), id="setup-pane")
            with TabPane(self._tab_label("live"), id="live"):
                yield LivePane(ascii=self.ascii_only, color=self.plot_color, id="live-pane")
            with TabPane(self._tab_label("spectrum"), id="spectrum"):
                yield SpectrumPane(ascii=self.ascii_only, color=self.plot_color,
                                   id="spectrum-pane")
            with TabPane(self._tab_label("regions"), id="regions"):
                yield RegionsPane(id="regions-pane")
            with TabPane(self._tab_label("sessions"), id="sessions"):
                yield SessionsPane(id="sessions-pane")
            with TabPane(self._tab_label("compare"), id="compare"):
                yield ComparePane(ascii=self.ascii_only, color=self.plot_color,
                                  id="compare-pane")
            with TabPane(self._tab_label("analyses"), id="analyses"):
                yield AnalysesPane(ascii=self.ascii_only, color=self.plot_color,
                                   id="analyses-pane")
        yield Footer(compact=True)

    @staticmethod
    def _tab_label(key: str) -> str:
        i = [k for k, _, _ in PANES].index(key)
        return f"{i + 1} {PANES[i][1]}"

    def format_title(self, title: str, sub_title: str):
        """The header's title; ``title - subtitle`` with an ASCII dash under ``--ascii``."""
        if not self.ascii_only or not sub_title:
            return super().format_title(title, sub_title)
        from textual.content import Content

        return Content.assemble(Content(title), (" - ", "dim"),
                                Content(sub_title).stylize("dim"))

    def on_unmount(self) -> None:
        ScrollBar.renderer = self._scrollbar_render

    def on_mount(self) -> None:
        if self.ascii_only:  # a class attribute: set while this app runs, restored on exit
            ScrollBar.renderer = AsciiScrollBarRender
        setup = self.query_one(SetupPane)
        if self.initial_preset:
            try:
                setup.load_preset(find_preset(str(self.initial_preset)))
            except NotFound as e:
                setup.set_status(str(e), "bold red")
        else:
            quick = next((p for p in shipped_presets() if p.stem == "quick"), None)
            if quick is not None:
                setup.load_preset(quick)
        if self.initial_session:
            try:
                path = find_session(str(self.initial_session), self.sessions_dir).path
            except NotFound as e:
                self.notify(str(e), severity="error", timeout=10)
            else:
                self.open_session(path, pane="live")
        if self.current is None:
            self.show_pane("setup")
        self.query_one(SessionsPane).refresh_rows()
        self.set_interval(self.poll_interval, self._poll)
        self.set_interval(3.0, self._rescan)

    # ---- panes -----------------------------------------------------------------------------
    def show_pane(self, name: str) -> None:
        self.query_one("#panes", Panes).active = name
        self.call_after_refresh(self._focus_pane, name)

    def _focus_pane(self, name: str) -> None:
        if name != self.active_pane:
            return  # another pane was chosen meanwhile: focusing here would switch back
        pane = self.query_one(f"#{name}", TabPane)
        if self.focused is not None and pane in self.focused.ancestors:
            return  # keep the focus the user (or a test) already put inside the pane
        target = {"live": "#live-pane", "regions": "#regions-table",
                  "sessions": "#sessions-table", "compare": "#compare-pick",
                  "spectrum": "#spectrum-pane", "setup": "#setup-fields",
                  "analyses": "#analyses-pane"}[name]
        try:
            self.query_one(target).focus(scroll_visible=False)  # panes open at their top
        except Exception:  # noqa: BLE001 - nothing focusable there yet
            pass

    @property
    def active_pane(self) -> str:
        return self.query_one("#panes", Panes).active

    def action_pane(self, name: str) -> None:
        self.show_pane(name)
        if name in ("sessions", "compare"):
            self.query_one(SessionsPane).refresh_rows()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()  # ctrl+r / ctrl+s belong to the Setup pane
        if event.pane.id in ("sessions", "compare"):
            self.query_one(SessionsPane).refresh_rows()

    def _rescan(self) -> None:
        try:
            if self.active_pane in ("sessions", "compare"):
                self.query_one(SessionsPane).refresh_rows()
        except NoMatches:  # a timer firing while the app shuts down
            pass

    def sessions_scanned(self, rows: list[dict]) -> None:
        try:
            self.query_one(ComparePane).set_choices(rows)
        except NoMatches:
            pass

    # ---- the current session ---------------------------------------------------------------
    def open_session(self, path: Path | None, pane: str | None = None) -> None:
        """Make ``path`` the session every pane follows (None: no session)."""
        self.current = Path(path) if path is not None else None
        self.live = LiveState()
        self.snapshot = None
        self._offset = 0
        self._spectrum_seen = False
        self._status, self._locked = None, False
        self.query_one(LivePane).reset(self.current)
        self.query_one(SpectrumPane).load(self.current)
        self.query_one(RegionsPane).load(self.current)
        self.query_one(AnalysesPane).load(self.current)
        self.sub_title = self.current.name if self.current else "training-Jacobian workbench"
        self.refresh_bindings()
        if pane:
            self.show_pane(pane)
        self._poll()

    def _poll(self) -> None:
        for path, p in list(self.procs.items()):  # reap workers that ended (no zombies)
            if p.poll() is not None:
                del self.procs[path]
        if self.current is None or self._tail_busy:
            return
        self._tail_busy = True
        self._tail(self.current, self._offset)

    @work(thread=True, group="tail", exit_on_error=False)
    def _tail(self, path: Path, offset: int) -> None:
        try:
            snap = read_snapshot(path, offset)
        except Exception as e:  # noqa: BLE001 - e.g. the session was deleted under us
            self.call_from_thread(self._tail_failed, path, e)
            return
        self.call_from_thread(self._on_snapshot, snap)

    def _tail_failed(self, path: Path, err: Exception) -> None:
        self._tail_busy = False
        if path == self.current and not path.exists():
            self.notify(f"{path.name} is gone", severity="warning")
            self.open_session(None)

    def _on_snapshot(self, snap: Snapshot) -> None:
        self._tail_busy = False
        if snap.path != self.current or snap.offset != self._offset:
            return
        try:
            self._apply_snapshot(snap)
        except NoMatches:  # the app is shutting down
            pass

    def _apply_snapshot(self, snap: Snapshot) -> None:
        self._offset = snap.new_offset
        prev, self.snapshot = self.snapshot, snap
        if (prev is not None and not snap.records and snap.manifest == prev.manifest
                and snap.locked == prev.locked and snap.gpu == prev.gpu
                and snap.has_spectrum == prev.has_spectrum):
            return  # nothing new: leave the widgets alone (an idle TUI costs ~no CPU)
        before = self.live.log_total
        changed: set[str] = set()
        for ev in snap.records:
            changed |= self.live.apply(ev)
        self.live.merge_manifest(snap.manifest)
        self.query_one(LivePane).update_from(self.live, snap, changed,
                                             self.live.new_log_lines(before))
        status = snap.status
        if status != self._status or snap.locked != self._locked:
            if self._status == "running" and status == "done":
                self.notify(f"{snap.path.name}: run finished")
            self._status, self._locked = status, snap.locked
            self.refresh_bindings()
        if snap.has_spectrum and not self._spectrum_seen:
            self._spectrum_seen = True
            if self.query_one(SpectrumPane).loaded != snap.path:
                self.query_one(SpectrumPane).load(snap.path)
            if self.query_one(RegionsPane).summary is None:
                self.query_one(RegionsPane).load(snap.path)

    # ---- runs ------------------------------------------------------------------------------
    def start_run(self, cfg: config_mod.RunConfig, preset: Path | None) -> Path:
        """Create a session for ``cfg`` and start its worker process; follow it."""
        from engine.worker import start_worker

        s = Session.create(self.sessions_dir, cfg.name, cfg, str(preset) if preset else None)
        self.procs[s.path] = start_worker(s.path)
        self.notify(f"started {s.name} (worker process; quitting the TUI leaves it running)")
        self.open_session(s.path, pane="live")
        self.query_one(SessionsPane).refresh_rows()
        return s.path

    def resume_session(self, path: Path) -> bool:
        from engine.worker import start_worker

        s = Session(path)
        if s.is_locked() or self._starting(path):
            self.notify(f"{path.name} is already running", severity="warning")
            return False
        if describe(s)["status"] == "done":  # a damaged one resumes: resume repairs it
            self.notify(f"{path.name} is done; nothing to resume")
            return False
        self.procs[path] = start_worker(path)
        self.notify(f"resuming {path.name}")
        if path != self.current:
            self.open_session(path)
        self._locked = True
        self._status = "running"
        self.refresh_bindings()
        return True

    def _starting(self, path: Path) -> bool:
        """A worker started from here is alive (it may not hold the session lock yet)."""
        p = self.procs.get(path)
        return p is not None and p.poll() is None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_run":
            return self.current is not None and self._locked
        if action == "resume_run":
            return (self.current is not None and not self._locked
                    and not self._starting(self.current)
                    and self._status in ("interrupted", "failed", "stale", "created"))
        if action == "export":
            return self.current is not None
        if action in ("start_run", "save_preset"):
            return self.active_pane == "setup"
        return True

    def action_start_run(self) -> None:
        self.query_one(SetupPane).action_start()

    def action_save_preset(self) -> None:
        self.query_one(SetupPane).action_save()

    def action_cancel_run(self) -> None:
        from engine.worker import request_stop

        if self.current is None:
            return
        if request_stop(self.current):
            self.notify("stop requested: the worker finishes its current chunk, saves and "
                        "marks the session interrupted (r resumes it)")
        else:
            self.notify("no worker is running this session", severity="warning")

    def action_resume_run(self) -> None:
        if self.current is not None:
            self.resume_session(self.current)

    # ---- export and help -------------------------------------------------------------------
    def action_export(self) -> None:
        if self.current is None:
            self.notify("no session to export", severity="warning")
            return
        self._export(self.current)

    @work(thread=True, group="export", exit_on_error=False)
    def _export(self, path: Path) -> None:
        from engine.present.report import write_report

        try:
            out = write_report(Session(path), ascii_only=True)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.call_from_thread(self.notify, f"export failed: {e}", severity="error")
            return
        self.call_from_thread(self._exported, out)

    def _exported(self, out: Path) -> None:
        self.last_report = out
        self.sub_title = f"report: {out}"
        self.notify(f"report written: {out}", timeout=8)

    def help_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        def rows(bindings) -> list[tuple[str, str]]:
            out = []
            for b in bindings:
                b = b if isinstance(b, Binding) else Binding(*b)
                out.append((b.key_display or self.get_key_display(b), b.description or
                            b.action))
            return out

        everywhere = [b for b in self.BINDINGS if b.action not in ("start_run", "save_preset")]
        return [
            ("Everywhere", rows(everywhere) + [
                ("ctrl+p", "command palette (panes, export, cancel, resume...)"),
                ("tab / shift+tab", "move the focus")]),
            ("Setup", [("ctrl+r", "start the run (a worker process)"),
                       ("ctrl+s", "save the edited config as a new preset"),
                       ("escape", "leave the field being edited"),
                       ("enter (file path)", "load that TOML")]),
            ("Sessions", [("enter", "open the selected session")] + rows(SessionsPane.BINDINGS)),
            ("Compare", [("space", "select / deselect a session")]),
            ("Live", [("x", "cancel: the worker finishes its chunk and saves (resumable)"),
                      ("r", "resume an interrupted or failed session")]),
        ]

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_sections()))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, (key, label, desc) in enumerate(PANES):
            yield SystemCommand(f"{label} pane ({i + 1})", desc,
                                lambda k=key: self.action_pane(k))
        yield SystemCommand("Export report (e)", "write report.md of the current session",
                            self.action_export)
        yield SystemCommand("Cancel run (x)", "stop the worker gracefully (resumable)",
                            self.action_cancel_run)
        yield SystemCommand("Resume run (r)", "restart the worker of the current session",
                            self.action_resume_run)
        yield SystemCommand("Help (?)", "all key bindings", self.action_help)

    # ---- for tests and the smoke script ----------------------------------------------------
    def regions_rows(self) -> list[list[str]]:
        return self.query_one(RegionsPane).table_rows()

    def stage_states(self) -> dict[str, str]:
        t = self.query_one("#stages-table", DataTable)
        return {str(t.get_row_at(i)[0]): str(t.get_row_at(i)[1]) for i in range(t.row_count)}
