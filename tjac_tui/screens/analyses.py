"""Analyses pane: every finished analysis of a session (or the comparison of a sweep), a
plot and a table each, updating live while the run writes them.

    AnalysesPane(path=None, ascii=False, color=True)   a widget; ``load(path)`` follows another
                                                       session or sweep directory
    AnalysesScreen(path)                               the pane as a full screen (Escape closes)

What it shows comes from :func:`engine.experiments.views.content` (plain data: plot series and
table rows, testable without a terminal); the plots are drawn by the same code as the report's.
The pane polls the directory's ``analyses/`` (file names and modification times) and the last
``analysis_progress`` event every ``poll`` seconds while it is visible, in a thread worker, and
redraws only when something changed.
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from engine import events
from engine.files import read_jsonl

from ..widgets import PlotView
from ..widgets.tables import table_text


def signature(path: Path) -> tuple:
    """What the pane's content depends on: the analyses' files and their mtimes (and, for a
    sweep, its manifest and every point's)."""
    items = []
    dirs = [path / "analyses"]
    if (path / "sweep.json").is_file():
        items.append(("sweep.json", (path / "sweep.json").stat().st_mtime_ns))
        dirs += [p / "analyses" for p in sorted((path / "runs").glob("*"))]
        for p in sorted((path / "runs").glob("*/manifest.json")):
            items.append((str(p), p.stat().st_mtime_ns))
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.glob("*.json")):
                items.append((str(p), p.stat().st_mtime_ns))
    spectrum = path / "spectrum.json"  # the findings need the spectrum
    if spectrum.is_file():
        items.append(("spectrum.json", spectrum.stat().st_mtime_ns))
    return tuple(items)


FINDINGS_COLUMNS = ["#", "experiment", "the paper", "this run", "agrees"]
FINDINGS_WIDTHS = {"experiment": 24, "the paper": 28, "this run": 40, "agrees": 7}


def findings_content(path: Path) -> dict | None:
    """The findings table (paper vs this run, with verdicts) and, when the distance analysis
    (which holds it) did not run, the region sensitivity view of a session; None for a sweep
    or a session without a spectrum. The same functions as the report's."""
    from engine.present.findings import findings_table
    from engine.present.views import sensitivity_view
    from engine.session import Session

    if (path / "sweep.json").is_file():
        return None
    s = Session(path)
    rows = findings_table(s)
    if not rows:
        return None
    sens = None if s.has("analyses/distance.json") else sensitivity_view(s.load_npy("svd/S.npy"))
    return {"rows": [[str(r["n"]), r["experiment"], r["paper"], r["measured"], r["agrees"]]
                     for r in rows],
            "criteria": [f"{r['n']}: {r.get('criterion') or ''}" for r in rows],
            "sensitivity": sens}


def last_progress(path: Path, offset: int) -> tuple[events.Event | None, int]:
    """The last ``analysis_progress`` (or analysis stage start/end) event after ``offset``."""
    lines, end = read_jsonl(path / "events.jsonl", offset)
    last = None
    for ev in map(events.decode, lines):
        match ev:
            case events.AnalysisProgress():
                last = ev
            case events.StageStart() | events.StageEnd() if ev.stage.startswith("analysis."):
                last = ev
    return last, end


def progress_text(ev: events.Event | None) -> str:
    match ev:
        case events.AnalysisProgress():
            return f"running {ev.name}: {ev.done} / {ev.total}" + (f" {ev.unit}" if ev.unit
                                                                  else "")
        case events.StageStart():
            return f"running {ev.stage.split('.', 1)[1]}..."
        case events.StageEnd():
            return f"{ev.stage.split('.', 1)[1]} done in {ev.seconds:.1f} s"
    return ""


class AnalysesPane(VerticalScroll):
    DEFAULT_CSS = """
    AnalysesPane #analyses-body { height: auto; }
    AnalysesPane .analysis-title { text-style: bold; margin: 1 0 0 0; }
    AnalysesPane .view-title { color: $text-muted; margin: 1 0 0 0; }
    AnalysesPane PlotView { height: 20; }
    AnalysesPane DataTable { height: auto; max-height: 14; }
    AnalysesPane .view-note { color: $text-muted; }
    AnalysesPane #analyses-toc { height: auto; max-height: 10; display: none; }
    """

    def __init__(self, path: str | Path | None = None, *, ascii: bool = False,
                 color: bool = True, poll: float = 2.0, id: str | None = None):
        super().__init__(id=id)
        self.path: Path | None = Path(path) if path is not None else None
        self.ascii = ascii
        self.color = color
        self.poll = poll
        self.shown: list[dict] = []  # the content on screen (tests read it)
        self.findings: dict | None = None
        self._sig: tuple | None = None
        self._offset = 0
        self._busy = False

    def compose(self) -> ComposeResult:
        yield Static("no session selected", id="analyses-head")
        yield Static("", id="analyses-progress")
        yield OptionList(id="analyses-toc")
        yield Vertical(id="analyses-body")

    def on_mount(self) -> None:
        self.set_interval(self.poll, self.refresh_content)
        self.load(self.path)

    def load(self, path: str | Path | None) -> None:
        """Follow another session or sweep directory (None: nothing)."""
        self.path = Path(path) if path is not None else None
        self._sig, self._offset = None, 0
        self.shown, self.findings = [], None
        self.call_later(self.query_one("#analyses-body", Vertical).remove_children)
        toc = self.query_one("#analyses-toc", OptionList)
        toc.clear_options()
        toc.display = False
        self.query_one("#analyses-progress", Static).update("")
        self.query_one("#analyses-head", Static).update(
            "no session selected" if path is None else f"{self.path.name}: loading...")
        self.refresh_content()

    def on_show(self) -> None:
        self.refresh_content()

    def refresh_content(self) -> None:
        if self.path is None or self._busy:
            return
        if self.is_mounted and self.region.area == 0 and self._sig is not None:
            return  # hidden (another tab): no polling; on_show catches up
        self._busy = True
        self._check(self.path, self._sig, self._offset)

    @work(thread=True, exclusive=True, group="analyses-load", exit_on_error=False)
    def _check(self, path: Path, sig: tuple | None, offset: int) -> None:
        try:
            ev, new_offset = last_progress(path, offset)
            new_sig = signature(path)
            data = findings = None
            if new_sig != sig:
                from engine.present.views import content

                data = content(path)
                findings = findings_content(path)
        except Exception as e:  # noqa: BLE001 - a half-written file: try again next time
            self.app.call_from_thread(self._failed, path, e)
            return
        self.app.call_from_thread(self._apply, path, new_sig, new_offset, ev, data, findings)

    def _failed(self, path: Path, err: Exception) -> None:
        self._busy = False
        if path == self.path:
            self.query_one("#analyses-progress", Static).update(f"cannot read: {err}")

    def _apply(self, path: Path, sig: tuple, offset: int, ev: events.Event | None,
               data: list[dict] | None, findings: dict | None = None) -> None:
        self._busy = False
        if path != self.path:
            return
        self._offset = offset
        if ev is not None:
            self.query_one("#analyses-progress", Static).update(progress_text(ev))
        if data is None:
            return
        self._sig = sig
        self.call_later(self.show, data, findings)  # in order with load()'s clearing

    async def show(self, data: list[dict], findings: dict | None = None) -> None:
        """Draw ``data`` (:func:`engine.present.views.content`) and ``findings``
        (:func:`findings_content`), under a table of contents. The old content is removed
        before the new is mounted (the sections have ids)."""
        self.shown = data
        self.findings = findings
        kind = "sweep" if (self.path / "sweep.json").is_file() else "session"
        head = self.query_one("#analyses-head", Static)
        if not data:
            head.update(f"{self.path.name}: no analysis has finished yet (add [analysis.NAME] "
                        "sections to the preset)"
                        + ("; the findings below come from the spectrum" if findings else ""))
        else:
            head.update(f"{self.path.name} ({kind}): " + ", ".join(a["name"] for a in data))
        body = self.query_one("#analyses-body", Vertical)
        await body.remove_children()
        widgets, payload, toc = [], {}, []
        asc, col = self.ascii, self.color

        def section(key: str, title: str) -> None:
            toc.append(Option(title, id=f"toc-{key}"))
            widgets.append(Static(title, id=f"sec-{key}", classes="analysis-title"))

        def view(v: dict, table_id: str | None = None) -> None:
            widgets.append(Static(v["title"], classes="view-title"))
            if v["series"]:
                pv = PlotView("", classes="analysis-plot")
                payload[id(pv)] = v["view"]
                widgets.append(pv)
            if v["rows"]:
                t = DataTable(zebra_stripes=True, cursor_type="row", classes="analysis-table",
                              id=table_id)
                payload[id(t)] = (v["columns"], v["rows"])
                widgets.append(t)
            if v["note"]:
                widgets.append(Static(v["note"], classes="view-note"))

        if findings is not None:
            section("findings", "Findings: the paper vs this run")
            t = DataTable(zebra_stripes=True, cursor_type="row", id="findings-table")
            payload[id(t)] = (FINDINGS_COLUMNS, findings["rows"])
            widgets.append(t)
            widgets.append(Static("", id="findings-detail", classes="view-note"))
            if findings["sensitivity"] is not None:
                sv = findings["sensitivity"]
                section("sensitivity", "Region sensitivity")
                view({"title": sv.title, "series": sv.series, "view": sv, "rows": sv.rows,
                      "columns": sv.columns, "note": sv.note}, "sensitivity-table")
        for a in data:
            section(a["name"], f"{a['title']} ({a['name']})")
            for v in a["views"]:
                view(v)
        toc_list = self.query_one("#analyses-toc", OptionList)
        toc_list.clear_options()
        toc_list.add_options(toc)
        toc_list.display = bool(toc)
        await body.mount(*widgets)
        for w in widgets:
            if isinstance(w, PlotView):
                w.show(_maker(payload[id(w)], asc, col))
            elif isinstance(w, DataTable):
                cols, rows = payload[id(w)]
                if w.id == "findings-table":  # long texts: cut here, whole in the detail line
                    for c in cols:
                        w.add_column(c, key=c, width=FINDINGS_WIDTHS.get(c))
                else:
                    w.add_columns(*cols)
                w.add_rows(rows)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The whole of the highlighted finding, under the table."""
        if event.data_table.id != "findings-table" or self.findings is None:
            return
        i = event.cursor_row
        if not 0 <= i < len(self.findings["rows"]):
            return
        n, exp, paper, measured, agrees = self.findings["rows"][i]
        crit = self.findings["criteria"][i] if i < len(self.findings["criteria"]) else ""
        self.query_one("#findings-detail", Static).update(
            f"{n}. {exp}: agrees {agrees}\n  the paper: {paper}\n  this run: {measured}"
            + (f"\n  criterion: {crit.split(': ', 1)[-1]}" if crit else ""))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """The table of contents: jump to the section."""
        if event.option_list.id != "analyses-toc" or not event.option.id:
            return
        event.stop()
        target = self.query_one("#sec-" + event.option.id.removeprefix("toc-"))
        self.scroll_to_widget(target, animate=False, top=True)

    def toc(self) -> list[str]:
        ol = self.query_one("#analyses-toc", OptionList)
        return [str(ol.get_option_at_index(i).prompt) for i in range(ol.option_count)]

    def findings_rows(self) -> list[list[str]]:
        """The findings table on screen, as text (tests, the smoke script)."""
        found = self.query("#findings-table")
        if not found:
            return []
        return table_text(found.first(DataTable))

    def table_rows(self) -> list[list[list[str]]]:
        """Every table on screen as text (tests)."""
        out = []
        for t in self.query(".analysis-table").results(DataTable):
            out.append(table_text(t))
        return out


def _maker(view, ascii: bool, color: bool):
    from engine.present.views import make_plot

    return lambda w, h: make_plot(view, w, h, ascii=ascii, color=color)


class AnalysesScreen(Screen):
    """The Analyses pane of one session or sweep as a full screen."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, path: str | Path, *, ascii: bool = False, color: bool = True):
        super().__init__()
        self.path = Path(path)
        self.ascii = ascii
        self.color = color

    def compose(self) -> ComposeResult:
        yield Header()
        yield AnalysesPane(self.path, ascii=self.ascii, color=self.color, id="analyses-pane")
        yield Footer()
