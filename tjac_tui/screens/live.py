"""Live pane: the run's stages, training curves, Jacobian progress, device and latest events."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, RichLog, Static

from engine.units import fmt_bytes, fmt_seconds

from ..plots import accuracy_plot, loss_plot
from ..state import LiveState, Snapshot
from ..widgets import JacobianBar, PlotView
from ..widgets.spark import Spark

STATUS_STYLE = {"done": "green", "running": "bold cyan", "failed": "bold red",
                "interrupted": "yellow", "stale": "yellow", "pending": "dim", "created": "dim",
                "damaged": "bold red"}


class LivePane(VerticalScroll):
    """Shows one session as its worker runs (or as it ended); fed by the app's event tail."""

    def __init__(self, *, ascii: bool = False, color: bool = True, id: str | None = None):
        super().__init__(id=id)
        self.ascii = ascii
        self.color = color
        self.path: Path | None = None
        self.header_text = ""
        self._errors_shown: set[str] = set()
        self._steps_drawn = 0
        self.live: LiveState | None = None
        self.log_y = False  # the loss plot's y axis (the app's `l` toggles it)

    def compose(self) -> ComposeResult:
        yield Static("no session: start one in Setup (1) or open one in Sessions (5)",
                     id="live-head")
        with Horizontal(id="live-top"):
            yield DataTable(id="stages-table", cursor_type="none", zebra_stripes=False)
            with Vertical(id="live-side"):
                yield JacobianBar(ascii=self.ascii, id="jac-bar")
                yield Static("", id="live-ranks")
                yield Static("", id="live-train")
                yield Spark("loss", log=True, ascii=self.ascii, id="spark-loss")
                yield Spark("columns/s", fmt="{:.1f}", ascii=self.ascii, id="spark-rate")
                yield Static("", id="live-device")
        with Horizontal(id="live-curves"):
            yield PlotView("training curves appear as steps arrive", id="loss-plot")
            yield PlotView("", id="acc-plot")
        yield RichLog(id="live-log", max_lines=300, wrap=False, markup=False, auto_scroll=True)

    def on_mount(self) -> None:
        t = self.query_one("#stages-table", DataTable)
        t.add_column("stage", key="stage", width=13)  # analysis.NAME stages too
        t.add_column("state", key="state", width=13)
        t.add_column("time", key="time", width=7)
        self.set_interval(1.0, self._tick)  # running stages' elapsed time

    def _tick(self) -> None:
        if self.live is not None and self.live.status == "running":
            self._stage_times(self.live)

    # ---- feeding ---------------------------------------------------------------------------
    def reset(self, path: Path | None, note: str | None = None) -> None:
        """Follow ``path`` from scratch; ``note`` is the header until its events arrive."""
        self.path = path
        self.live = None
        self._errors_shown.clear()
        self._steps_drawn = 0
        self.query_one("#stages-table", DataTable).clear()
        self.query_one("#jac-bar", JacobianBar).set_progress({})
        self.query_one("#live-train", Static).update("")
        self.query_one("#live-ranks", Static).display = False
        self.query_one("#spark-loss", Spark).set_values([])
        self.query_one("#spark-rate", Spark).set_values([])
        self.query_one("#live-device", Static).update("")
        self.query_one("#loss-plot", PlotView).show(None, "training curves appear as steps "
                                                          "arrive")
        self.query_one("#acc-plot", PlotView).show(None, "")
        self.query_one("#live-log", RichLog).clear()
        if path is None:
            self.set_header("no session: start one in Setup (1) or open one in Sessions (5)")
        else:
            self.set_note(note or "reading the event log...")

    def set_note(self, note: str) -> None:
        """A header saying what is happening before the worker's first event."""
        self.set_header(Text.assemble((self.path.name if self.path else "", "bold"),
                                      f": {note}"))

    def set_header(self, text: str | Text) -> None:
        self.header_text = str(text)
        self.query_one("#live-head", Static).update(text)

    def update_from(self, live: LiveState, snap: Snapshot, changed: set[str],
                    new_log: list) -> None:
        m = snap.manifest
        status = snap.status
        head = Text()
        head.append(snap.path.name, style="bold")
        head.append("  status ")
        head.append(status, style=STATUS_STYLE.get(status, ""))
        if m.get("preset"):
            head.append(f"  preset {Path(m['preset']).stem}")
        if m.get("P"):
            head.append(f"  P {m['P']}")
        if snap.locked and m.get("pid"):
            head.append(f"  worker pid {m['pid']}", style="dim")
        if snap.status == "damaged":
            head.append(f"\n{snap.problem}", style="bold red")
        self.set_header(head)

        self.live = live
        self._stages(live)
        jac_state = live.stages.get("jacobian", {}).get("status")
        if jac_state == "running" and status != "running":
            jac_state = status  # the worker died (stale) or stopped without a last event
        self.query_one("#jac-bar", JacobianBar).set_progress(live.jac, jac_state)
        if "jac" in changed:
            self.query_one("#spark-rate", Spark).set_values(live.rates)
            ranks = self.query_one("#live-ranks", Static)
            ranks.update(live.ranks_text())
            ranks.display = bool(live.ranks)
        self.query_one("#live-device", Static).update(self._device_text(live, snap))
        if len(live.steps) != self._steps_drawn:
            self._steps_drawn = len(live.steps)
            self._curves(live)
        log = self.query_one("#live-log", RichLog)
        for line in new_log:
            style = {"error": "bold red", "warning": "yellow"}.get(line.kind, "")
            stamp = time.strftime("%H:%M:%S", time.localtime(line.time))
            log.write(Text(f"{stamp} {line.text}", style=style))
        err = m.get("error")
        if err and err not in self._errors_shown:
            self._errors_shown.add(err)
            log.write(Text(f"session error: {err}", style="bold red"))

    def _stages(self, live: LiveState) -> None:
        t = self.query_one("#stages-table", DataTable)
        names = list(live.stage_order) + [n for n in live.stages if n not in live.stage_order]
        if t.row_count != len(names):
            t.clear()
            for n in names:
                t.add_row(n, "", "", key=n)
        for n in names:
            st = live.stages.get(n, {})
            state = st.get("status", "pending")
            shown = state
            if state == "running" and st.get("progress"):
                shown = f"running {live.progress_text(n)}"
            elif state == "running" and st.get("note"):  # matfree: phase and products
                shown = st["note"]
            t.update_cell(n, "state", Text(shown, style=STATUS_STYLE.get(state, "")))
        self._stage_times(live)

    def _stage_times(self, live: LiveState) -> None:
        t = self.query_one("#stages-table", DataTable)
        for n in list(live.stage_order) + [n for n in live.stages if n not in live.stage_order]:
            if n in t.rows:
                t.update_cell(n, "time", fmt_seconds(live.stage_seconds(n)))

    def _device_text(self, live: LiveState, snap: Snapshot) -> Text:
        m = snap.manifest
        dev = live.run.get("device") or m.get("device") or "?"
        t = Text(f"device {dev}")
        if live.run.get("dtype") or m.get("dtype"):
            t.append(f"  {live.run.get('dtype') or m.get('dtype')}")
        if live.run.get("threads"):
            t.append(f"  {live.run['threads']} threads")
        if str(dev).startswith("cuda"):
            if snap.gpu:
                g = snap.gpu
                scope = "worker" if g["scope"] == "worker" else "device (all processes)"
                t.append(f"  GPU mem {fmt_bytes(g['used'])} / {fmt_bytes(g['total'])} ({scope})")
                if g.get("util") is not None:
                    t.append(f"  util {g['util']}%")
                if g.get("temp") is not None:
                    t.append(f"  {g['temp']} C")
            elif live.jac.get("gpu_mem") is not None:
                t.append(f"  GPU mem {fmt_bytes(live.jac['gpu_mem'])} allocated, peak "
                         f"{fmt_bytes(live.jac.get('gpu_mem_peak', 0))}")
            else:
                t.append("  GPU mem: -", style="dim")
        return t

    def _curves(self, live: LiveState) -> None:
        steps = list(live.steps)
        tr = self.query_one("#live-train", Static)
        if not steps:
            return
        curves = {k: list(v) for k, v in live.curves.items()}
        last = {k: v[-1] for k, v in curves.items() if v}
        txt = Text(f"step {steps[-1]}/{live.total_steps or '?'}")
        for k in ("train_loss", "test_loss", "test_acc"):
            if last.get(k) is not None:
                txt.append(f"  {k.replace('_', ' ')} {last[k]:.4f}")
        tr.update(txt)
        self.query_one("#spark-loss", Spark).set_values(curves["train_loss"])
        a, c, lg = self.ascii, self.color, self.log_y
        self.query_one("#loss-plot", PlotView).show(
            lambda w, h: loss_plot(steps, curves, w, h, ascii=a, color=c, log=lg))
        self.query_one("#acc-plot", PlotView).show(
            lambda w, h: accuracy_plot(steps, curves, w, h, ascii=a, color=c))

    def set_log(self, log: bool) -> None:
        """A log (or linear) y axis for the loss curves."""
        self.log_y = log
        if self.live is not None and self.live.steps:
            self._curves(self.live)
