"""Regions pane: the three regions (count, index range, singular-value range, fraction of P,
alignment: u . v and the subspace cosine) and the spectrum summary (s_max, s_min, P, the
thresholds). The table fits 80 columns: no sideways scrolling to reach the alignment."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from engine.session import Session

from ..state import unreadable_text
from ..widgets.tables import table_text

# (the rule of each region is in the summary line above the table: with it a column, u.v
# and the subspace column were off the right edge of 80 columns)
COLUMNS = ("region", "count", "indices", "s range", "fraction", "u.v mean", "subspace cos")
# the headers on two lines, none wider than its values: the table fits 80 columns
HEADERS = {"fraction": "% of\nP", "u.v mean": "u.v\nmean", "subspace cos": "subspace\ncos"}


class RegionsPane(VerticalScroll):
    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.path: Path | None = None
        self.summary: dict | None = None
        self.matfree: dict | None = None  # matfree.json of a matrix-free run on screen

    def compose(self) -> ComposeResult:
        yield Static("no session selected", id="regions-summary")
        yield DataTable(id="regions-table", cursor_type="row", zebra_stripes=True,
                        header_height=2)
        yield Static("", id="regions-note", classes="dim-note")

    def on_mount(self) -> None:
        self._region_columns()

    def _region_columns(self) -> None:
        t = self.query_one("#regions-table", DataTable)
        for c in COLUMNS:
            t.add_column(HEADERS.get(c, c), key=c)

    def load(self, path: Path | None) -> None:
        self.path = path
        self.summary = None
        self.query_one("#regions-table", DataTable).clear()
        self.query_one("#regions-note", Static).update("")
        if path is None:
            self.query_one("#regions-summary", Static).update("no session selected")
            return
        self.query_one("#regions-summary", Static).update(f"{path.name}: loading...")
        self._load(path)

    @work(thread=True, exclusive=True, group="regions-load", exit_on_error=False)
    def _load(self, path: Path) -> None:
        from engine.present.views import matfree_tables
        from engine.spectrum import region_rows

        s = Session(path)
        try:
            summary = s.spectrum()
            rows = region_rows(summary) if summary is not None else []
            if summary is None and s.has("matfree.json"):
                r = s.read_json("matfree.json")
                top, bulk = matfree_tables(r)
                head = (f"{path.name}: matrix-free (J never formed), P = {r['P']:,}: "
                        f"{bulk.title}; s_1 = {r['top']['s'][0]:.6g}; top {r['top']['k']}: "
                        + ", ".join(f"{v:.4g}" for v in r["top"]["s"][:8])
                        + (" ..." if len(r["top"]["s"]) > 8 else ""))
                self.app.call_from_thread(self._show_matfree, path, r, head, bulk)
                return
        except Exception as e:  # noqa: BLE001 - a damaged file: say so, keep the app
            self.app.call_from_thread(self._failed, path, unreadable_text(path, e))
            return
        self.app.call_from_thread(self._show, path, summary, rows)

    def _failed(self, path: Path, text: str) -> None:
        if path == self.path:
            self.query_one("#regions-summary", Static).update(Text(text, style="bold red"))

    def _show_matfree(self, path: Path, r: dict, head: str, bulk) -> None:
        """A matrix-free run: the bulk-size estimates (no exact regions: J was never formed)
        and the top singular values (``head``)."""
        if path != self.path:
            return
        self.matfree = r
        self.query_one("#regions-summary", Static).update(head)
        t = self.query_one("#regions-table", DataTable)
        t.clear(columns=True)
        for c in bulk.columns:
            t.add_column(c, key=c)
        for row in bulk.rows:
            t.add_row(*row)
        self.query_one("#regions-note", Static).update(bulk.note)

    def _show(self, path: Path, summary: dict | None, rows: list[dict]) -> None:
        if path != self.path:
            return
        t = self.query_one("#regions-table", DataTable)
        if self.matfree is not None:  # the columns of the regions table again
            self.matfree = None
            t.clear(columns=True)
            self._region_columns()
        head = self.query_one("#regions-summary", Static)
        if summary is None:
            head.update(f"{path.name}: no spectrum yet (the regions appear when the run has "
                        "finished its spectrum stage)")
            return
        self.summary = summary
        th = summary["thresholds"]
        head.update(f"{path.name}:  P = {summary['P']}   s_max = {summary['s_max']:.6g}   "
                    f"s_min = {summary['s_min']:.6g}   bulk_tol = {summary['bulk_tol']:g}   "
                    f"(chaotic: s > {th['chaotic_above']:g}, stable: s < "
                    f"{th['stable_below']:g})   min |s - 1| = "
                    f"{summary.get('min_abs_s_minus_1', float('nan')):.3g} at index "
                    f"{summary.get('argmin_abs_s_minus_1')}")
        t = self.query_one("#regions-table", DataTable)
        t.clear()
        for r in rows:
            t.add_row(*[str(r[c]) for c in COLUMNS], key=r["region"])
        self.query_one("#regions-note", Static).update(summary.get("alignment_note", ""))

    def table_rows(self) -> list[list[str]]:
        """The table as text (tests, the smoke script)."""
        t = self.query_one("#regions-table", DataTable)
        return table_text(t)
