"""Compare pane: pick two or more finished sessions; their spectra and |s - 1| overlaid, and
their region counts side by side. Or pick a sweep (listed as "sweep NAME"): its comparison
table (one row per point) and the bulk fraction and s_1 against the swept keys, the same views
as its report (:func:`engine.present.views.sweep_views`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, SelectionList, Static
from textual.widgets.selection_list import Selection

from engine.session import Session

from ..plots import overlay_plot, runs_loss_plot
from ..state import unreadable_text
from ..widgets import CheckList, PlotView


SWEEP = "sweep:"  # the selection value of a sweep directory


class ComparePane(Horizontal):
    def __init__(self, *, ascii: bool = False, color: bool = True, id: str | None = None):
        super().__init__(id=id)
        self.ascii = ascii
        self.color = color
        self.choices: list[str] = []  # session paths with a spectrum
        self.columns: list[str] = []
        self.rows: list[list[str]] = []
        self.log_y = False  # the loss overlay's y axis (the app's `l` toggles it)
        self.losses: list[tuple[str, list[int], list[float | None]]] = []  # on screen

    def compose(self) -> ComposeResult:
        yield CheckList(id="compare-pick")
        with VerticalScroll(id="compare-right"):
            yield Static("pick two or more finished sessions on the left (space toggles)",
                         id="compare-head")
            yield DataTable(id="compare-table", cursor_type="none", zebra_stripes=True)
            yield PlotView("", id="cmp-s", classes="compare-plot")
            yield PlotView("", id="cmp-dist", classes="compare-plot")
            yield PlotView("", id="cmp-loss", classes="compare-plot")

    def on_mount(self) -> None:
        self.query_one("#compare-pick", SelectionList).border_title = "sessions"

    def set_choices(self, rows: list[dict], sweeps: list[str] | None = None) -> None:
        """Sweeps (directories) and sessions (rows of the Sessions pane) that have a spectrum;
        keeps the selection."""
        paths = [SWEEP + str(p) for p in sweeps or []] + [
            r["path"] for r in rows if r.get("has_spectrum")]
        if paths == self.choices:
            return
        sl = self.query_one("#compare-pick", SelectionList)
        keep = set(sl.selected)
        self.choices = paths
        sl.clear_options()
        sl.add_options([Selection(("sweep " + Path(p[len(SWEEP):]).name) if p.startswith(SWEEP)
                                  else Path(p).name, p, p in keep) for p in paths])
        if keep - set(paths):
            self._update(sl.selected)

    def select(self, paths: list[Path]) -> None:
        sl = self.query_one("#compare-pick", SelectionList)
        for p in paths:
            sl.select(str(p))

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        event.stop()
        self._update(list(event.selection_list.selected))

    def _update(self, selected: list[str]) -> None:
        sweeps = [p for p in selected if p.startswith(SWEEP)]
        if sweeps:  # the sweep picked last
            self._load_sweep(list(selected), sweeps[-1][len(SWEEP):])
            return
        if len(selected) < 2:
            self.query_one("#compare-head", Static).update(
                "pick two or more finished sessions on the left (space toggles)")
            self.query_one("#compare-table", DataTable).clear(columns=True)
            self.losses = []
            for v in ("#cmp-s", "#cmp-dist", "#cmp-loss"):
                self.query_one(v, PlotView).show(None, "")
            self.columns, self.rows = [], []
            return
        self._load(list(selected))

    @work(thread=True, exclusive=True, group="compare-load", exit_on_error=False)
    def _load(self, selected: list[str]) -> None:
        from engine.present.report import compare_rows

        sessions = [Session(p) for p in selected]
        at = sessions[0].path
        try:
            cols, rows = compare_rows(sessions)
            named = []
            for s in sessions:
                at = s.path
                if s.has("svd/S.npy"):
                    named.append((s.name, s.load_vector("svd/S.npy")))
            losses = []
            for s in sessions:
                at = s.path
                m = s.metrics() if s.has("metrics.jsonl") else []
                losses.append((s.name, [int(r["step"]) for r in m],
                               [r.get("train_loss") for r in m]))
        except Exception as e:  # noqa: BLE001 - a damaged session: say which, keep the app
            self.app.call_from_thread(self._failed, selected, unreadable_text(at, e))
            return
        self.app.call_from_thread(self._show, selected, cols, rows, named, losses)

    def _failed(self, selected: list[str], text: str) -> None:
        if list(self.query_one("#compare-pick", SelectionList).selected) != selected:
            return
        self.query_one("#compare-head", Static).update(Text(text, style="bold red"))
        self.query_one("#compare-table", DataTable).clear(columns=True)
        self.columns, self.rows, self.losses = [], [], []
        for v in ("#cmp-s", "#cmp-dist", "#cmp-loss"):
            self.query_one(v, PlotView).show(None, "")

    def _show(self, selected: list[str], cols: list[str], rows: list[list[str]],
              named: list[tuple[str, np.ndarray]], losses: list | None = None) -> None:
        if list(self.query_one("#compare-pick", SelectionList).selected) != selected:
            return
        self.columns, self.rows = cols, rows
        self.query_one("#compare-head", Static).update(
            "comparing " + ", ".join(Path(p).name for p in selected))
        t = self.query_one("#compare-table", DataTable)
        t.clear(columns=True)
        t.add_columns(*(c or "session" for c in cols))
        for r in rows:
            t.add_row(*r)
        asc, col = self.ascii, self.color
        self.query_one("#cmp-s", PlotView).show(
            lambda w, h: overlay_plot(named, "spectrum", w, h, ascii=asc, color=col))
        self.query_one("#cmp-dist", PlotView).show(
            lambda w, h: overlay_plot(named, "distance", w, h, ascii=asc, color=col))
        self.losses = losses or []
        self._draw_losses()

    @work(thread=True, exclusive=True, group="compare-load", exit_on_error=False)
    def _load_sweep(self, selected: list[str], path: str) -> None:
        from engine.present.views import sweep_views

        try:
            found = {name: views for name, _, views in sweep_views(path)}
            found["points"][0]
        except Exception as e:  # noqa: BLE001 - a damaged sweep: say so, keep the app
            self.app.call_from_thread(self._failed, selected, unreadable_text(Path(path), e))
            return
        self.app.call_from_thread(self._show_sweep, selected, path, found)

    def _show_sweep(self, selected: list[str], path: str, found: dict) -> None:
        from engine.present.views import make_plot

        if list(self.query_one("#compare-pick", SelectionList).selected) != selected:
            return
        table = found["points"][0]
        self.columns, self.rows = table.columns, table.rows
        plots = found.get("trends", [])[:2] + found.get("spectra", [])[:1]
        others = [p for p in selected if p != SWEEP + path]
        left_out = (f" Not in this comparison: {len(others)} more ticked ("
                    + ", ".join(Path(p.removeprefix(SWEEP)).name for p in others)
                    + "): a sweep is compared alone; untick it to compare those."
                    if others else "")
        self.query_one("#compare-head", Static).update(
            f"sweep {Path(path).name}: {len(table.rows)} points. {table.note}{left_out}")
        t = self.query_one("#compare-table", DataTable)
        t.clear(columns=True)
        t.add_columns(*table.columns)
        for r in table.rows:
            t.add_row(*r)
        self.losses = []
        asc, col = self.ascii, self.color
        for slot, v in zip(("#cmp-s", "#cmp-dist", "#cmp-loss"), plots + [None] * 3):
            self.query_one(slot, PlotView).show(
                None if v is None else (lambda w, h, v=v: make_plot(v, w, h, ascii=asc,
                                                                    color=col)), "")

    def _draw_losses(self) -> None:
        runs = [r for r in self.losses if r[1]]
        if not runs:
            self.query_one("#cmp-loss", PlotView).show(None, "no training curves")
            return
        asc, col, lg = self.ascii, self.color, self.log_y
        self.query_one("#cmp-loss", PlotView).show(
            lambda w, h: runs_loss_plot(runs, w, h, ascii=asc, color=col, log=lg))

    def set_log(self, log: bool) -> None:
        """A log (or linear) y axis for the loss overlay."""
        self.log_y = log
        if self.losses:
            self._draw_losses()
