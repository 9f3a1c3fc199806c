"""The help screen: every key binding of the workbench."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "close", "Close"), Binding("question_mark", "close", "Close"),
                Binding("q", "close", "Close", show=False)]

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        t = Table(box=None, show_header=False, padding=(0, 2))
        t.add_column("key", style="bold", no_wrap=True)
        t.add_column("what")
        for title, rows in self.sections:
            t.add_row(f"[u]{title}[/u]", "")
            for key, desc in rows:
                t.add_row(key, desc)
            t.add_row("", "")
        with VerticalScroll(id="help-box"):
            yield Static("tjac: keys (escape or ? closes)", id="help-title")
            yield Static(t, id="help-table")

    def action_close(self) -> None:
        self.dismiss(None)
