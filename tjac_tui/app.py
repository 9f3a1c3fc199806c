"""The Textual app: seven panes over one "current" session, fed by tailing its event log.

The TUI never runs the engine (nor imports torch): a run is a worker process
(:func:`engine.control.start`) that goes on when the TUI quits, created, planned and resumed
by the rules ``tjac run`` and ``tjac resume`` follow (:mod:`engine.control`); the TUI reads
the session directory. File reads (events, manifest, arrays) and plotting happen in thread
workers; the event loop only updates widgets.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Iterable

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.scrollbar import ScrollBar, ScrollBarRender
from textual.widgets import DataTable, Footer, Header, TabbedContent, TabPane

from engine import config as config_mod, control, events as run_events
from engine.session import Session, SessionError

from .locations import NotFound, find_preset, find_session, shipped_presets
from .screens.setup import SetupPane
from .state import LiveState, Snapshot, read_snapshot

PANES = [("setup", "Setup", "pick and edit a preset, start a run"),
         ("live", "Live", "the current run: stages, curves, Jacobian progress, events"),
         ("spectrum", "Spectrum", "singular values, |s - 1| and u . v alignment"),
         ("regions", "Regions", "the three regions and the spectrum summary"),
         ("sessions", "Sessions", "all sessions: open, resume, delete"),
         ("compare", "Compare", "overlay the spectra of several sessions"),
         ("analyses", "Analyses", "the finished analyses of the session: plots and tables")]


# the tabs read "1 Setup", "2 Live"...: the pane keys are named there (and in the help and the
# palette), not in the footer
PANE_KEYS = Binding.Group("panes")


class Panes(TabbedContent):
    """The tabs. Unlike TabbedContent, focus landing in a pane does not activate it: the app
    chooses the pane (a focus event still queued from the previous pane would switch back)."""

    def _on_tab_pane_focused(self, event: TabPane.Focused) -> None:
        event.stop()
        event.prevent_default()  # TabbedContent's own handler would switch back


class PaneSlot(Widget):
    """Where a pane will be: replaced by the pane right after the first paint, so the app
    appears at once (the Setup pane is built straight away)."""

    DEFAULT_CSS = "PaneSlot { height: 1; color: $text-muted; }"

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def render(self) -> str:
        return "loading..."

    def on_mount(self) -> None:
        self.call_after_refresh(self.app.fill_slot, self)


class AsciiScrollBarRender(ScrollBarRender):
    """Scroll bars drawn with ``#`` on a blank track (``--ascii``)."""

    VERTICAL_BARS = ["#"] * 7 + [" "]
    HORIZONTAL_BARS = ["#"] * 7 + [" "]


class TjacApp(App):
    CSS_PATH = "tjac.tcss"
    TITLE = "tjac"
    SUB_TITLE = "training-Jacobian workbench"
    BINDINGS = [
        Binding("ctrl+r", "start_run", "Start run"),  # these three: on the Setup pane only
        Binding("ctrl+s", "save_preset", "Save as"),
        Binding("ctrl+t", "estimate", "Time estimate", show=False),
        Binding("ctrl+o", "open_preset", "Open preset", show=False),
        # (not in the footer: the tab bar above names every pane with its key, and at 80
        # columns the footer had no room left for ? and q)
        *[Binding(str(i + 1), f"pane('{key}')", label, tooltip=desc, group=PANE_KEYS,
                  show=False) for i, (key, label, desc) in enumerate(PANES)],
        Binding("e", "export", "Export"),
        Binding("x", "cancel_run", "Cancel"),
        Binding("r", "resume_run", "Resume"),
        Binding("l", "toggle_log", "Log y", show=False),
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
        self.log_y = False  # the loss curves' y axis (l)
        self.current: Path | None = None
        self.panes_ready = False  # the panes other than Setup are mounted after first paint
        self._slots_left = {key for key, _, _ in PANES if key != "setup"}
        self._pending: list = []  # calls waiting for the panes
        self.live = LiveState()
        self.snapshot: Snapshot | None = None
        self.procs: dict[Path, subprocess.Popen] = {}  # workers started here, by session
        self.last_report: Path | None = None
        self._offset = 0
        self._tail_busy = False
        self._spectrum_seen = False
        self._status = None
        self._locked = False
        self._checking: set[Path] = set()  # sessions whose resume is being checked
        self._key_hold = None  # the timer that ends a hold of the keys (see hold_keys)
        self._held_keys: deque[events.Key] = deque()  # keys that came in during a hold

    # ---- keys in order ---------------------------------------------------------------------
    # Textual hands each key to the widget with the focus as it comes in, but runs a binding
    # (``/`` opens the field search) only once the key has bubbled back up to the app, and
    # moves the focus a moment later still: the keys typed right after it (a burst over ssh,
    # a paste of keystrokes) went to the old focus. A widget on the focus chain whose
    # ``holds_keys_after(key)`` says so makes the app hold the keys that follow that one
    # until it calls :meth:`release_keys` (the new focus in place), then hand them on in
    # order, as if they had come in then.
    KEY_HOLD_LIMIT = 10.0  # seconds: a hold nobody releases ends by itself

    async def on_event(self, event: events.Event) -> None:
        if not isinstance(event, events.Key) or event.is_forwarded:
            await super().on_event(event)
        elif self._key_hold is not None or self._held_keys:
            self._held_keys.append(event)
        else:
            await self._key_in(event)

    async def _key_in(self, event: events.Key) -> None:
        chain = self.focused.ancestors_with_self if self.focused is not None else []
        if any(getattr(w, "holds_keys_after", None) and w.holds_keys_after(event.key)
               for w in chain):
            self.hold_keys()
        await super().on_event(event)

    def hold_keys(self) -> None:
        """Hold the keys that come in from now until :meth:`release_keys`."""
        if self._key_hold is not None:
            self._key_hold.stop()
        self._key_hold = self.set_timer(self.KEY_HOLD_LIMIT, self.release_keys)

    def release_keys(self) -> None:
        """Hand the held keys on, in order, after what is queued now (a focus change)."""
        if self._key_hold is not None:
            self._key_hold.stop()
            self._key_hold = None
        self.call_later(self._replay_keys)

    async def _replay_keys(self) -> None:
        while self._held_keys and self._key_hold is None:
            await self._key_in(self._held_keys.popleft())

    # ---- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """The tabs, with only the Setup pane built: the others are mounted right after the
        first paint (:meth:`_mount_panes`), so the screen appears at once."""
        yield Header(icon="*" if self.ascii_only else "⭘")
        with Panes(id="panes", initial="live" if self.initial_session else "setup"):
            for key, _, _ in PANES:
                with TabPane(self._tab_label(key), id=key):
                    yield self._pane(key) if key == "setup" else PaneSlot(key)
        yield Footer(compact=True)

    def _pane(self, key: str):
        from . import screens as sc

        a, c = self.ascii_only, self.plot_color
        return {"setup": lambda: SetupPane(shipped_presets(), ascii=a, id="setup-pane"),
                "live": lambda: sc.LivePane(ascii=a, color=c, id="live-pane"),
                "spectrum": lambda: sc.SpectrumPane(ascii=a, color=c, id="spectrum-pane"),
                "regions": lambda: sc.RegionsPane(id="regions-pane"),
                "sessions": lambda: sc.SessionsPane(id="sessions-pane"),
                "compare": lambda: sc.ComparePane(ascii=a, color=c, id="compare-pane"),
                "analyses": lambda: sc.AnalysesPane(ascii=a, color=c, id="analyses-pane"),
                }[key]()

    async def fill_slot(self, slot: "PaneSlot") -> None:
        """Replace a placeholder by its pane; once the last is in, :meth:`_after_panes`."""
        parent = slot.parent
        if parent is None or not parent.is_attached or not self.is_running:
            return  # quitting already: nothing more to build
        await parent.mount(self._pane(slot.key), after=slot)
        await slot.remove()
        self._slots_left.discard(slot.key)
        if not self._slots_left and not self.panes_ready and self.is_running:
            self.panes_ready = True
            self._after_panes()

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
        setup = self.pane("setup")
        if self.initial_preset:
            try:
                setup.load_preset(find_preset(str(self.initial_preset)))
            except NotFound as e:
                setup.set_status(str(e), "bold red")
        else:
            quick = next((p for p in shipped_presets() if p.stem == "quick"), None)
            if quick is not None:
                setup.load_preset(quick)

    def _after_panes(self) -> None:
        """Once every pane exists: the session named on the command line, what waited for
        the panes, the timers."""
        for fn in self._pending:
            fn()
        self._pending.clear()
        if self.initial_session:
            try:
                path = find_session(str(self.initial_session), self.sessions_dir).path
            except NotFound as e:
                self.notify(str(e), severity="error", timeout=10)
            else:  # (on Live, where the app opened; a pane the user chose meanwhile stays)
                self.open_session(path, pane="live" if self.active_pane == "live" else None)
        if self.current is None and self.active_pane == "setup":
            self.show_pane("setup")
        self.pane("sessions").refresh_rows()
        self.set_interval(self.poll_interval, self._poll)
        self.set_interval(3.0, self._rescan)

    async def settled(self) -> None:
        """Wait until the startup building is over: every pane mounted, the Setup fields
        being built finished (quitting in the middle would tear widgets half-made)."""
        while not self.panes_ready and self.is_running:
            await asyncio.sleep(0.02)
        await self.pane("setup").settled()

    async def action_quit(self) -> None:
        await self.settled()
        self.exit()

    # ---- panes -----------------------------------------------------------------------------
    def pane(self, key: str):
        """The pane of a tab ("setup", "live", ...); NoMatches until it is mounted (the
        panes other than Setup are, right after the first paint)."""
        return self.query_one(f"#{key}-pane")

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
        if name in ("sessions", "compare") and self.panes_ready:
            self.pane("sessions").refresh_rows()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()  # ctrl+r / ctrl+s belong to the Setup pane
        if event.pane.id in ("sessions", "compare") and self.panes_ready:
            self.pane("sessions").refresh_rows()

    def _rescan(self) -> None:
        try:
            if self.active_pane in ("sessions", "compare"):
                self.pane("sessions").refresh_rows()
        except NoMatches:  # a timer firing while the app shuts down
            pass

    def sessions_scanned(self, rows: list[dict], sweeps: list[Path] | None = None) -> None:
        try:
            self.pane("compare").set_choices(rows, [str(p) for p in sweeps or []])
        except NoMatches:
            pass

    # ---- the current session ---------------------------------------------------------------
    def open_session(self, path: Path | None, pane: str | None = None,
                     note: str | None = None) -> None:
        """Make ``path`` the session every pane follows (None: no session). ``note``: what
        the Live pane says until the session's events arrive ("starting the worker...")."""
        if not self.panes_ready:  # the panes are being mounted: right after they are
            self._pending.append(lambda: self.open_session(path, pane, note))
            return
        self.current = Path(path) if path is not None else None
        self.live = LiveState()
        self.snapshot = None
        self._offset = 0
        self._spectrum_seen = False
        self._status, self._locked = None, False
        self.pane("live").reset(self.current, note)
        self.pane("spectrum").load(self.current)
        self.pane("regions").load(self.current)
        self.pane("analyses").load(self.current)
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
        for ev in map(run_events.decode, snap.records):
            changed |= self.live.apply(ev)
            if isinstance(ev, run_events.StageEnd) and ev.stage == "snapshots":
                self.pane("spectrum").load(snap.path)  # the spectrum through training
        self.live.merge_manifest(snap.manifest)
        self.pane("live").update_from(self.live, snap, changed,
                                             self.live.new_log_lines(before))
        status = snap.status
        if status != self._status or snap.locked != self._locked:
            if self._status == "running" and status == "done":
                self.notify(f"{snap.path.name}: run finished")
            self._status, self._locked = status, snap.locked
            self.refresh_bindings()
        if snap.has_spectrum and not self._spectrum_seen:
            self._spectrum_seen = True
            if self.pane("spectrum").loaded != snap.path:
                self.pane("spectrum").load(snap.path)
            if self.pane("regions").summary is None:
                self.pane("regions").load(snap.path)

    # ---- runs ------------------------------------------------------------------------------
    def start_run(self, cfg: config_mod.RunConfig, preset: Path | None) -> Path:
        """Create a session for ``cfg`` and start its worker process; follow it. A config with
        a ``[sweep]`` starts the sweep instead (:meth:`start_sweep`). What ``tjac run`` refuses
        before a session exists (:func:`engine.control.create`) raises ConfigError with its
        message."""
        if cfg.sweep is not None:
            return self.start_sweep(cfg, preset)
        try:
            s = control.create(cfg, self.sessions_dir, preset)
        except (ValueError, SessionError) as e:  # (PlanError, DataError, DeviceError...)
            raise config_mod.ConfigError(str(e)) from None
        self.procs[s.path] = control.start(s.path)
        self.notify(f"started {s.name} (worker process; quitting the TUI leaves it running)")
        self.open_session(s.path, pane="live", note="starting the worker...")
        if self.panes_ready:
            self.pane("sessions").refresh_rows()
        return s.path

    def start_sweep(self, cfg: config_mod.RunConfig, preset: Path | None) -> Path:
        """Create the sweep of ``cfg`` (every point validated and sized first) under the
        sessions folder and run it in a background process (``tjac sweep DIR``, which outlives
        the TUI); follow its first point. The Compare pane shows the sweep's table."""
        import tempfile

        from engine import plan as plan_mod, sweep as sweep_mod
        from engine.worker import boot, spawn

        try:
            control.check_sessions_dir(self.sessions_dir)
        except SessionError as e:
            raise config_mod.ConfigError(str(e)) from None
        with tempfile.TemporaryDirectory() as tmp:  # the edited config as the sweep's preset
            src = Path(tmp) / f"{cfg.name}.toml"  # (its paths are absolute already)
            src.write_text(config_mod.dumps(cfg), encoding="utf-8")
            try:
                sw = sweep_mod.create(self.sessions_dir, src,
                                      label=str(preset) if preset else None)
            except plan_mod.PlanError as e:
                raise config_mod.ConfigError(str(e)) from None
        spawn([sys.executable, "-c", boot("tjac_tui.cli"), "sweep", str(sw.path), "-q"],
              sw.path / "sweep.log")
        points = sw.manifest()["points"]
        first = sw.session(points[0]["name"]).path
        self.notify(f"started sweep {sw.path.name}: {len(points)} points in a background "
                    "process (quitting the TUI leaves it running); Compare (6) shows its table")
        self.open_session(first, pane="live", note=f"sweep {sw.path.name}: starting point 1 "
                                                   f"of {len(points)}...")
        if self.panes_ready:
            self.pane("sessions").refresh_rows()
        return sw.path

    def resume_session(self, path: Path) -> None:
        """Resume the session at ``path`` in a worker process, refusing (a notification with
        the one line ``tjac resume`` prints) what ``tjac resume`` refuses
        (:func:`engine.control.check_resumable`, in a thread: a finished session's check reads
        every file). A sweep's point resumes the sweep (:meth:`resume_sweep`)."""
        from engine.sweep import sweep_of

        path = Path(path)
        sweep = sweep_of(path)
        if sweep is not None:  # a sweep's point: the sweep resumes (its points, then the
            self.resume_sweep(sweep, path)  # comparison), not the point alone
            return
        if self._starting(path) or path in self._checking:
            self.notify(f"{path.name} is already running", severity="warning")
            return
        self._checking.add(path)
        self.refresh_bindings()
        self._check_resume(path)

    @work(thread=True, group="resume", exit_on_error=False)
    def _check_resume(self, path: Path) -> None:
        """(message, severity) of the refusal, or None: resume."""
        try:
            r = control.check_resumable(path)
            why = None if r is None else (r.message, {"done": "information",
                                                      "locked": "warning"}.get(r.kind, "error"))
        except (OSError, SessionError) as e:  # e.g. deleted meanwhile
            why = (str(e), "error")
        self.call_from_thread(self._resume_checked, path, why)

    def _resume_checked(self, path: Path, why: tuple[str, str] | None) -> None:
        self._checking.discard(path)
        if why is not None:
            self.notify(why[0], severity=why[1], timeout=15, markup=False)
            self.refresh_bindings()
            return
        self.procs[path] = control.start(path)
        self.notify(f"resuming {path.name}")
        if path != self.current:
            self.open_session(path, note="resuming: starting the worker...")
        elif self.panes_ready:
            self.pane("live").set_note("resuming: starting the worker...")
        self._locked = True
        self._status = "running"
        self.refresh_bindings()
        if self.panes_ready:
            self.pane("sessions").refresh_rows()

    def resume_sweep(self, sweep: Path, point: Path) -> bool:
        """Resume the sweep ``sweep`` in a background process (``tjac sweep DIR``: every point
        not done, then the comparison), following ``point``."""
        from engine.sweep import Sweep
        from engine.worker import boot, spawn

        sw = Sweep(sweep)
        try:
            m = sw.manifest()
        except SessionError as e:  # a damaged sweep.json: named, the app goes on
            self.notify(str(e), severity="error", timeout=15, markup=False)
            return False
        names = [p["name"] for p in m["points"]]
        if any(sw.session(n).is_locked() for n in names) or self._starting(point):
            self.notify(f"sweep {sweep.name} is already running", severity="warning")
            return False
        if m.get("status") == "done":
            self.notify(f"sweep {sweep.name} is done; nothing to resume")
            return False
        self.procs[point] = spawn([sys.executable, "-c", boot("tjac_tui.cli"), "sweep",
                                   str(sweep), "-q"], sweep / "sweep.log")
        self.notify(f"resuming sweep {sweep.name} ({len(names)} points) in a background "
                    "process")
        note = f"sweep {sweep.name}: resuming..."
        if point != self.current:
            self.open_session(point, note=note)
        elif self.panes_ready:
            self.pane("live").set_note(note)
        self._locked, self._status = True, "running"
        self.refresh_bindings()
        return True

    def _starting(self, path: Path) -> bool:
        """A worker started from here is alive (it may not hold the session lock yet)."""
        p = self.procs.get(path)
        return p is not None and p.poll() is None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_run":
            return self.current is not None and self._locked
        if action == "resume_run":  # (what it refuses, it says: engine.control)
            return (self.current is not None and not self._locked
                    and not self._starting(self.current) and self.current not in self._checking)
        if action == "export":
            return self.current is not None
        if action in ("start_run", "save_preset", "estimate", "open_preset"):
            return self.active_pane == "setup"
        return True

    def action_start_run(self) -> None:
        self.pane("setup").action_start()

    def action_save_preset(self) -> None:
        self.pane("setup").action_save()

    def action_estimate(self) -> None:
        self.pane("setup").action_estimate()

    def action_open_preset(self) -> None:
        self.pane("setup").action_choose_preset()

    def action_cancel_run(self) -> None:
        """Ask first: a stop is resumable, but the chunk in flight is done over."""
        from .screens.confirm import ConfirmScreen

        if self.current is None:
            return
        from engine.sweep import sweep_of

        path = self.current
        sweep = sweep_of(path)
        text = (f"Stop the run {path.name}?\n\nThe worker finishes its current chunk, saves "
                "and marks the session interrupted; r resumes it.")
        if sweep is not None:
            text = (f"Stop the run {path.name}, a point of the sweep {sweep.name}?\n\nThe "
                    "worker finishes its current chunk, saves and marks the point "
                    "interrupted; run one point at a time, the sweep stops with it. r resumes "
                    "the sweep: every point not done, then its comparison.")
        self.push_screen(ConfirmScreen(text), lambda yes: self._cancel(path) if yes else None)

    def _cancel(self, path: Path) -> None:
        from engine.worker import request_stop

        if request_stop(path):
            self.notify("stop requested: the worker finishes its current chunk, saves and "
                        "marks the session interrupted (r resumes it)")
        else:
            self.notify("no worker is running this session", severity="warning")

    def action_toggle_log(self) -> None:
        """A log or linear y axis for the loss curves (Live and Compare)."""
        self.log_y = not self.log_y
        if self.panes_ready:
            self.pane("live").set_log(self.log_y)
            self.pane("compare").set_log(self.log_y)
        self.notify(f"loss curves: {'log' if self.log_y else 'linear'} y axis", timeout=2)

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
        """report.md with PNG/SVG figures and spectrum.csv in <session>/figures (the figures
        when matplotlib is installed: the extra ``tjac[figures]``)."""
        from engine.present.figures import why_no_figures
        from engine.present.report import write_report

        self.call_from_thread(self.notify, f"exporting {path.name}: report and figures...",
                              timeout=3)
        try:
            out = write_report(Session(path), ascii_only=True, figures=True)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.call_from_thread(self.notify, f"export failed: {e}", severity="error")
            return
        figs = sorted(p.name for p in (path / "figures").glob("*.png"))
        note = (f"; {len(figs)} figure(s) (PNG + SVG) in {path / 'figures'}" if figs else
                f"; {why_no_figures(path)}")
        self.call_from_thread(self._exported, out, note)

    def _exported(self, out: Path, note: str = "") -> None:
        self.last_report = out  # (said in a toast: the title bar keeps the session's name)
        self.notify(f"report written: {out}{note}", timeout=8, markup=False)

    def help_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        from .screens.sessions import SessionsPane

        def rows(bindings) -> list[tuple[str, str]]:
            out = []
            for b in bindings:
                b = b if isinstance(b, Binding) else Binding(*b)
                out.append((b.key_display or self.get_key_display(b), b.description or
                            b.action))
            return out

        everywhere = [b for b in self.BINDINGS
                      if b.action not in ("start_run", "save_preset", "estimate",
                                          "open_preset")]
        return [
            ("Everywhere", rows(everywhere) + [
                ("ctrl+p", "command palette (panes, export, cancel, resume...)"),
                ("tab / shift+tab", "move the focus")]),
            ("Setup", [("ctrl+r", "start the run (a worker process)"),
                       ("ctrl+o", "open a preset: the shipped ones, or a TOML file by path"),
                       ("ctrl+s", "save the edited config as a new preset (asks a name)"),
                       ("ctrl+t", "time estimate (timed steps, separate process)"),
                       ("/", "find a field by name (fuzzy); enter jumps to it"),
                       ("enter (group title)", "open or close a group of fields"),
                       ("space (analyses list)", "switch an analysis on or off"),
                       ("escape", "leave the field being edited"),
                       ("enter (file path)", "load that TOML")]),
            ("Sessions", [("enter", "open the selected session")] + rows(SessionsPane.BINDINGS)),
            ("Compare", [("space", "select / deselect a session"),
                         ("l", "log / linear y axis of the loss curves (here and in Live)")]),
            ("Live", [("x", "cancel: the worker finishes its chunk and saves (resumable)"),
                      ("r", "resume as `tjac resume` does (a finished session: every file "
                            "checked)")]),
        ]

    def action_help(self) -> None:
        from .screens.help import HelpScreen

        self.push_screen(HelpScreen(self.help_sections()))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, (key, label, desc) in enumerate(PANES):
            yield SystemCommand(f"{label} pane ({i + 1})", desc,
                                lambda k=key: self.action_pane(k))
        yield SystemCommand("Export report (e)", "write report.md, PNG/SVG figures and "
                            "spectrum.csv of the current session",
                            self.action_export)
        yield SystemCommand("Cancel run (x)", "stop the worker gracefully (resumable)",
                            self.action_cancel_run)
        yield SystemCommand("Resume run (r)", "restart the worker of the current session",
                            self.action_resume_run)
        yield SystemCommand("Help (?)", "all key bindings", self.action_help)

    # ---- for tests and the smoke script ----------------------------------------------------
    def regions_rows(self) -> list[list[str]]:
        return self.pane("regions").table_rows()

    def stage_states(self) -> dict[str, str]:
        t = self.query_one("#stages-table", DataTable)
        return {str(t.get_row_at(i)[0]): str(t.get_row_at(i)[1]) for i in range(t.row_count)}
