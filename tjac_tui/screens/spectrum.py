"""Spectrum pane: s_i and |s_i - 1| on log axes and u_i . v_i, regions marked; with
``jacobian.snapshots``, the spectrum through training below (the spectra of J_(0->t) overlaid,
the region fractions, s_1 and the bulk alignment against the step, and their table); follows
the current session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from rich.text import Text
from textual.widgets import DataTable, Static

from engine.present.views import View, make_plot, snapshot_views
from engine.session import Session

from ..plots import alignment_plot, distance_plot, spectrum_plot
from ..state import unreadable_text
from ..widgets import PlotView


class SpectrumPane(VerticalScroll):
    def __init__(self, *, ascii: bool = False, color: bool = True, id: str | None = None):
        super().__init__(id=id)
        self.ascii = ascii
        self.color = color
        self.path: Path | None = None
        self.loaded: Path | None = None

    def compose(self) -> ComposeResult:
        yield Static("no session selected", id="spectrum-head")
        yield PlotView("", id="plot-s", classes="spectrum-plot")
        yield PlotView("", id="plot-dist", classes="spectrum-plot")
        yield PlotView("", id="plot-align", classes="spectrum-plot")
        yield Static("", id="snap-head")
        yield PlotView("", id="plot-snap-spectra", classes="spectrum-plot")
        yield PlotView("", id="plot-snap-regions", classes="spectrum-plot")
        yield PlotView("", id="plot-snap-s_max", classes="spectrum-plot")
        yield PlotView("", id="plot-snap-align", classes="spectrum-plot")
        yield DataTable(id="snap-table", zebra_stripes=True)

    def views(self) -> dict[str, PlotView]:
        return {k: self.query_one(f"#plot-{k}", PlotView) for k in ("s", "dist", "align")}

    def load(self, path: Path | None) -> None:
        """Follow ``path``: read its spectrum off the event loop, then draw."""
        self.path = path
        self.loaded = None
        for v in self.views().values():
            v.show(None, "")
        if path is None:
            self.query_one("#spectrum-head", Static).update("no session selected")
            return
        self.query_one("#spectrum-head", Static).update(f"{path.name}: loading the spectrum...")
        self._load(path)

    @work(thread=True, exclusive=True, group="spectrum-load", exit_on_error=False)
    def _load(self, path: Path) -> None:
        s = Session(path)
        try:
            if not s.has("svd/S.npy"):
                self.app.call_from_thread(self._missing, path, s.has("matfree.json"))
                return
            S = s.load_vector("svd/S.npy")
            a = s.load_vector("svd/alignment.npy") if s.has("svd/alignment.npy") else None
            if a is not None and a.shape != S.shape:
                a = None
            summary = s.spectrum()
            snaps = snapshot_views(s)
        except Exception as e:  # noqa: BLE001 - a damaged file: say so, keep the app
            self.app.call_from_thread(self._failed, path, unreadable_text(path, e))
            return
        self.app.call_from_thread(self._show, path, S, a, summary)
        self.app.call_from_thread(self._show_snapshots, path, snaps)

    def _failed(self, path: Path, text: str) -> None:
        if path == self.path:
            self.query_one("#spectrum-head", Static).update(Text(text, style="bold red"))

    def _missing(self, path: Path, matfree: bool = False) -> None:
        if path == self.path:
            self.query_one("#spectrum-head", Static).update(
                f"{path.name}: a matrix-free run (spectrum.method = \"matfree\"): J was never "
                "formed, so there is no full spectrum; its top singular values and bulk-size "
                "estimates are in Regions (4)" if matfree else
                f"{path.name}: no spectrum yet (it appears when the svd stage finishes)")

    def _show(self, path: Path, S: np.ndarray, a: np.ndarray | None, summary: dict | None
              ) -> None:
        if path != self.path:
            return
        self.loaded = path
        head = f"{path.name}: P = {len(S)}, s_max = {S[0]:.6g}, s_min = {S[-1]:.3g}"
        if summary:
            r = summary["regions"]
            head += (f"   chaotic {r['chaotic']['count']}  bulk {r['bulk']['count']}  "
                     f"stable {r['stable']['count']}  (bulk: |s - 1| <= "
                     f"{summary['bulk_tol']:g})")
        self.query_one("#spectrum-head", Static).update(head)
        asc, col = self.ascii, self.color
        v = self.views()
        v["s"].show(lambda w, h: spectrum_plot(S, summary, w, h, ascii=asc, color=col))
        v["dist"].show(lambda w, h: distance_plot(S, summary, w, h, ascii=asc, color=col))
        if a is not None:
            v["align"].show(lambda w, h: alignment_plot(a, summary, w, h, ascii=asc, color=col))
        else:
            v["align"].show(None, "no alignment (svd/alignment.npy) in this session")

    def snapshot_plots(self) -> dict[str, PlotView]:
        return {k: self.query_one(f"#plot-snap-{k}", PlotView)
                for k in ("spectra", "regions", "s_max", "align")}

    def _show_snapshots(self, path: Path, snaps: list[View]) -> None:
        if path != self.path:
            return
        table = self.query_one("#snap-table", DataTable)
        table.clear(columns=True)
        head = self.query_one("#snap-head", Static)
        plots = self.snapshot_plots()
        table.display = head.display = bool(snaps)
        for p in plots.values():
            p.display = bool(snaps)
            p.show(None, "")
        if not snaps:
            return
        regions_view = snaps[1]
        head.update(f"Spectrum through training: {len(regions_view.rows)} steps. "
                    f"{regions_view.note}")
        asc, col = self.ascii, self.color
        for v in snaps:
            plots[v.key.split(".", 1)[1]].show(
                lambda w, h, v=v: make_plot(v, w, h, ascii=asc, color=col))
        table.add_columns(*regions_view.columns)
        for row in regions_view.rows:
            table.add_row(*row)
