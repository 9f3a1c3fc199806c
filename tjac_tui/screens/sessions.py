"""Sessions pane: every session under the sessions directory; open, resume, delete."""

from __future__ import annotations

import shutil
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from engine.session import Session, describe, list_sessions

from ..state import fmt_seconds
from .confirm import ConfirmScreen

COLUMNS = ("name", "preset", "status", "P", "created", "duration")


def scan(root: Path) -> list[dict]:
    """Rows for the table (reads manifests and locks: call it off the event loop)."""
    rows = []
    for s in list_sessions(root):
        try:
            r = describe(s)
        except (OSError, ValueError):
            continue
        r["has_spectrum"] = (s.path / "spectrum.json").is_file()
        rows.append(r)
    return rows


class SessionsPane(Vertical):
    BINDINGS = [
        Binding("o", "open_selected", "Open"),
        Binding("r", "resume_selected", "Resume"),
        Binding("d", "delete_selected", "Delete"),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.rows: list[dict] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="sessions-head")
        yield DataTable(id="sessions-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        t = self.query_one("#sessions-table", DataTable)
        for c in COLUMNS:
            t.add_column(c, key=c)

    # ---- data ------------------------------------------------------------------------------
    def action_refresh(self) -> None:
        self.refresh_rows()

    def refresh_rows(self) -> None:
        self._scan(self.app.sessions_dir)

    @work(thread=True, exclusive=True, group="sessions-scan")
    def _scan(self, root: Path) -> None:
        rows = scan(root)
        self.app.call_from_thread(self._show, root, rows)

    def _show(self, root: Path, rows: list[dict]) -> None:
        self.rows = rows
        self.query_one("#sessions-head", Static).update(
            f"{len(rows)} session(s) in {root}   enter/o open, r resume, d delete, g refresh")
        t = self.query_one("#sessions-table", DataTable)
        keep = self.selected_path()
        t.clear()
        for r in rows:
            t.add_row(r["name"], Path(r["preset"]).stem if r["preset"] else "-", r["status"],
                      str(r["P"] or "-"), r["created"].replace("T", " ")[:19],
                      fmt_seconds(r["seconds"]), key=r["path"])
        if keep is not None:
            for i, r in enumerate(rows):
                if r["path"] == str(keep):
                    t.move_cursor(row=i)
        self.app.sessions_scanned(rows)

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
        return next((r for r in self.rows if r["path"] == str(path)), None)

    # ---- actions ---------------------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "sessions-table" and event.row_key.value:
            event.stop()
            self.app.open_session(Path(event.row_key.value), pane="live")

    def action_open_selected(self) -> None:
        p = self.selected_path()
        if p is not None:
            self.app.open_session(p, pane="live")

    def action_resume_selected(self) -> None:
        p = self.selected_path()
        if p is not None:
            self.app.resume_session(p)
            self.refresh_rows()

    def action_delete_selected(self) -> None:
        p = self.selected_path()
        if p is None:
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
