"""Sessions pane: every session under the sessions directory and those added by path; filter,
sort, open, resume, delete."""

from __future__ import annotations

import shutil
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from rich.text import Text
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from engine.session import Session, describe, list_sessions
from engine.units import fmt_seconds

from ..locations import NotFound, add_path, added_sessions, added_sweeps
from ..widgets.inputs import OrderedInput
from ..widgets.tables import table_text
from .confirm import ConfirmScreen

COLUMNS = ("name", "preset", "status", "P", "created", "duration")


SORTS = ("created", "name", "status", "P", "duration")


def scan(root: Path) -> list[dict]:
    """Rows for the table: the sessions in ``root``, then those added by path (reads
    manifests and locks: call it off the event loop)."""
    rows = []
    inside = list(list_sessions(root))
    seen = {s.path.resolve() for s in inside}
    added = [Session(p) for p in added_sessions(root) if p.resolve() not in seen]
    for s, where in [(s, "") for s in inside] + [(s, "added") for s in added]:
        if not (s.path / "manifest.json").is_file():
            continue  # an added session that was moved or deleted since
        try:
            r = describe(s)
        except (OSError, ValueError):
            continue
        r["has_spectrum"] = (s.path / "spectrum.json").is_file()
        r["added"] = where == "added"
        rows.append(r)
    return rows


def scan_sweeps(root: Path) -> list[Path]:
    """The sweep directories in ``root`` (their points are sessions in ``<sweep>/runs``), then
    those added by path."""
    from engine.sweep import list_sweeps

    inside = list_sweeps(root)
    seen = {p.resolve() for p in inside}
    return inside + [p for p in added_sweeps(root) if p.resolve() not in seen]


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    """Newest first for "created", longest first for "duration" and "P", else A-Z."""
    if key == "created":
        return sorted(rows, key=lambda r: r["created"] or "", reverse=True)
    if key in ("duration", "P"):
        field = "seconds" if key == "duration" else "P"
        return sorted(rows, key=lambda r: r[field] or 0, reverse=True)
    return sorted(rows, key=lambda r: str(r[key]).lower())


def matches(row: dict, text: str) -> bool:
    """``text`` (case-insensitive; every word) in the row's name, preset, status or path."""
    hay = " ".join(str(row.get(k) or "") for k in ("name", "preset", "status", "path")).lower()
    return all(w in hay for w in text.lower().split())


class AddSessionScreen(ModalScreen[Path | None]):
    """Type the path of a session (or a sweep's folder) kept outside the sessions folder;
    enter adds it."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(id="add-box"):
            yield Static("Add a session or a sweep's folder by path (it stays where it is; "
                         "the Sessions and Compare panes list it). Enter adds, escape "
                         "cancels.", id="add-title")
            yield OrderedInput(placeholder="/path/to/session or /path/to/sweep", id="add-path",
                               compact=True)
            yield Static("", id="add-msg")

    def on_mount(self) -> None:
        self.query_one("#add-path", OrderedInput).focus()

    def on_input_submitted(self, event: OrderedInput.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text:
            return
        try:
            path = add_path(self.root, text)
        except NotFound as e:
            self.query_one("#add-msg", Static).update(Text(str(e), style="bold red"))
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SessionsPane(Vertical):
    BINDINGS = [
        # the pane's head line lists these; the footer keeps room for the app's keys
        Binding("o", "open_selected", "Open"),
        Binding("r", "resume_selected", "Resume"),
        Binding("d", "delete_selected", "Delete"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort", "Sort", show=False),
        Binding("a", "add", "Add by path", show=False),
        Binding("g", "refresh", "Refresh", show=False),
    ]

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.rows: list[dict] = []  # every session scanned
        self.shown: list[dict] = []  # the rows in the table (filtered, sorted)
        self.sweeps: list[dict] = []  # every sweep scanned (engine.sweep.describe_sweep)
        self.sort_key = "created"
        self.filter_text = ""
        self._root: Path | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="sessions-head")
        yield OrderedInput(placeholder="filter: words in the name, preset, status or path "
                                       "(escape clears)", id="sessions-filter", compact=True)
        yield DataTable(id="sessions-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="sessions-detail")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "sessions-table":
            event.stop()
            self._detail()

    def _detail(self) -> None:
        """Under the table: the highlighted session's path, and why it is damaged."""
        p = self.selected_path()
        r = self._row(p) if p is not None else None
        text = Text()
        if r is not None:
            text.append(r["path"], style="dim")
            if r.get("problem"):
                text.append(f"\n{r['status']}: {r['problem']}", style="bold red")
        self.query_one("#sessions-detail", Static).update(text)

    def on_mount(self) -> None:
        t = self.query_one("#sessions-table", DataTable)
        for c in COLUMNS:
            t.add_column(c, key=c)
        self.query_one("#sessions-filter").display = False

    # ---- filter, sort, add -----------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#sessions-filter", OrderedInput)
        box.display = True
        box.focus()

    def on_input_changed(self, event: OrderedInput.Changed) -> None:
        if event.input.id == "sessions-filter":
            event.stop()
            self.filter_text = event.value
            self._draw()

    def on_input_submitted(self, event: OrderedInput.Submitted) -> None:
        if event.input.id == "sessions-filter":
            event.stop()
            self.query_one("#sessions-table", DataTable).focus()

    def on_key(self, event) -> None:
        box = self.query_one("#sessions-filter", OrderedInput)
        if event.key == "escape" and box.display and (box.has_focus or self.filter_text):
            event.stop()
            box.value = ""
            self.filter_text = ""
            box.display = False
            self.query_one("#sessions-table", DataTable).focus()
            self._draw()

    def action_sort(self) -> None:
        self.sort_key = SORTS[(SORTS.index(self.sort_key) + 1) % len(SORTS)]
        self._draw()

    def action_add(self) -> None:
        def added(path: Path | None) -> None:
            if path is not None:
                self.app.notify(f"added {path}")
                self.refresh_rows()

        self.app.push_screen(AddSessionScreen(Path(self.app.sessions_dir)), added)

    # ---- data ------------------------------------------------------------------------------
    def action_refresh(self) -> None:
        self.refresh_rows()

    def refresh_rows(self) -> None:
        self._scan(self.app.sessions_dir)

    @work(thread=True, exclusive=True, group="sessions-scan")
    def _scan(self, root: Path) -> None:
        from engine.sweep import describe_sweep

        rows = scan(root)
        sweeps = scan_sweeps(root)
        described = []
        for p in sweeps:
            try:
                described.append(describe_sweep(p))
            except OSError:
                continue
        self.app.call_from_thread(self._show, root, rows, sweeps, described)

    def _show(self, root: Path, rows: list[dict], sweeps: list[Path] | None = None,
              sweep_rows: list[dict] | None = None) -> None:
        self.rows = rows
        self.sweeps = sweep_rows or []
        self._root = root
        self._draw()
        self.app.sessions_scanned(rows, sweeps or [])

    def _draw(self) -> None:
        """The table: the rows that match the filter, in the chosen order."""
        shown = sort_rows([r for r in self.rows if matches(r, self.filter_text)], self.sort_key)
        self.shown = shown
        n_added = sum(1 for r in self.rows if r.get("added"))
        where = f"{self._root}" + (f" (+{n_added} added by path)" if n_added else "")
        count = (f"{len(shown)} of {len(self.rows)} session(s) match \"{self.filter_text}\""
                 if self.filter_text else f"{len(self.rows)} session(s)")
        self.query_one("#sessions-head", Static).update(
            f"{count} in {where}, by {self.sort_key}   enter/o open, r resume, d delete, "
            "/ filter, s sort, a add by path")
        t = self.query_one("#sessions-table", DataTable)
        keep = self.selected_path()
        t.clear()
        for r in shown:
            name = r["name"] + (" (added)" if r.get("added") else "")
            t.add_row(name, Path(r["preset"]).stem if r["preset"] else "-", r["status"],
                      str(r["P"] or "-"), r["created"].replace("T", " ")[:19],
                      fmt_seconds(r["seconds"]), key=r["path"])
        for sw in self.sweeps:  # after the sessions: each sweep, its points indented under it
            points = [r for r in sw["points"] if matches(r, self.filter_text)]
            if not points and not matches(sw, self.filter_text):
                continue
            shown.append(sw)
            t.add_row(f"{sw['name']} (sweep)", Path(sw["preset"]).stem if sw["preset"] else "-",
                      f"{sw['status']} {sw['done']}/{sw['total']}", "-",
                      sw["created"].replace("T", " ")[:19], fmt_seconds(sw["seconds"]),
                      key=sw["path"])
            for r in points:
                shown.append(r)
                t.add_row(f"  {r['name']}", Path(r["preset"]).stem if r["preset"] else "-",
                          r["status"], str(r["P"] or "-"), r["created"].replace("T", " ")[:19],
                          fmt_seconds(r["seconds"]), key=r["path"])
        if keep is not None:
            for i, r in enumerate(shown):
                if r["path"] == str(keep):
                    t.move_cursor(row=i)
        self._detail()

    def table_rows(self) -> list[list[str]]:
        """The table as text (tests, the smoke script)."""
        t = self.query_one("#sessions-table", DataTable)
        return table_text(t)

    def selected_path(self) -> Path | None:
        t = self.query_one("#sessions-table", DataTable)
        if not t.row_count:
            return None
        try:
            key = t.coordinate_to_cell_key(t.cursor_coordinate).row_key
        except Exception:  # noqa: BLE001 - no row under the cursor
            return None
        return Path(key.value) if key.value else None

    def _row(self, path: Path) -> dict | None:
        every = self.rows + [q for sw in self.sweeps for q in [sw, *sw["points"]]]
        return next((r for r in every if r["path"] == str(path)), None)

    def _sweep(self, path: Path) -> dict | None:
        """The sweep whose row is at ``path`` (None: a session's row)."""
        return next((sw for sw in self.sweeps if sw["path"] == str(path)), None)

    def _open(self, path: Path) -> None:
        """Open a session; a sweep's row says where its points and its table are."""
        sw = self._sweep(path)
        if sw is None:
            self.app.open_session(path, pane="live")
            return
        self.app.notify(f"sweep {sw['name']}: {sw['done']} of {sw['total']} points done; its "
                        "points are the rows under it (enter opens one), Compare (6) shows its "
                        f"table, `tjac report {path}` writes its report")

    # ---- actions ---------------------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "sessions-table" and event.row_key.value:
            event.stop()
            self._open(Path(event.row_key.value))

    def action_open_selected(self) -> None:
        p = self.selected_path()
        if p is not None:
            self._open(p)

    def action_resume_selected(self) -> None:
        p = self.selected_path()
        if p is None:
            return
        sw = self._sweep(p)
        if sw is not None and sw["points"]:  # the sweep resumes (its points, the comparison)
            p = Path(sw["points"][0]["path"])
        self.app.resume_session(p)
        self.refresh_rows()

    def action_delete_selected(self) -> None:
        p = self.selected_path()
        if p is None:
            return
        if self._sweep(p) is not None:
            self.app.notify(f"{p.name} is a sweep: delete its folder {p} yourself (its points "
                            "and its comparison go with it)", severity="warning")
            return
        if Session(p).is_locked():
            self.app.notify(f"{p.name} is running: cancel it first (x)", severity="warning")
            return

        def done(yes: bool | None) -> None:
            if yes:
                self._delete(p)

        self.app.push_screen(ConfirmScreen(f"Delete session {p.name}?\n{p}\n\nIts files "
                                           "(Jacobian, SVD, report) are removed for good."),
                             done)

    @work(thread=True, group="sessions-delete")
    def _delete(self, path: Path) -> None:
        try:
            if Session(path).is_locked():
                raise RuntimeError("a worker started writing it")
            shutil.rmtree(path)
            msg, sev = f"deleted {path.name}", "information"
        except Exception as e:  # noqa: BLE001 - shown to the user
            msg, sev = f"could not delete {path.name}: {e}", "error"
        self.app.call_from_thread(self._deleted, path, msg, sev)

    def _deleted(self, path: Path, msg: str, sev: str) -> None:
        self.app.notify(msg, severity=sev)
        if self.app.current == path and not path.exists():
            self.app.open_session(None)
        self.refresh_rows()
