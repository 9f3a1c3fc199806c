"""Rich progress bars for the headless CLI: a listener on the runner's event stream.

Every stage of the run gets a bar, in the order run_start names them (sessions written before
it did: in the order they start): units done of the total, the rate, the elapsed time and the
time left, or, for a stage that counts nothing (the SVD), a pulsing bar and its elapsed time.
When the run ends, a line per analysis: its time and what it measured
(:func:`engine.present.findings.analysis_headline`).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column, Table
from rich.text import Text

from engine import spectrum
from engine.events import (AnalysisProgress, Interrupted, JacobianChunk, JacobianStart,
                           MatfreeProgress, RunEnd, RunError, RunStart, RunWarning, SnapshotDone,
                           SnapshotStart, StageEnd, StageSkip, StageStart, TrainStep, as_event)
from engine.units import fmt_seconds

# what the stages count (an analysis names its unit in its events)
UNITS = {"train": "steps", "jacobian": "columns", "snapshots": "SVDs"}


def stage_label(stage: str) -> str:
    """The bar's name of a stage: an analysis by its own name (ood, restricted, ...)."""
    return stage.split(".", 1)[1] if stage.startswith("analysis.") else stage


class CountColumn(ProgressColumn):
    """Units done of the total, and what they are: ``31/42 dirs``; blank while not known."""

    def render(self, task: Task) -> Text:
        if task.total is None or not task.fields.get("counted"):
            return Text("")
        unit = task.fields.get("unit") or ""
        return Text(f"{task.completed:.0f}/{task.total:.0f} {unit}".rstrip(),
                    style="progress.download")


class RateColumn(ProgressColumn):
    """Units a second, named (``95.2 columns/s``): the run's own figure where its events carry
    one (J's ``rate``), else rich's estimate over the recent updates."""

    def render(self, task: Task) -> Text:
        speed = task.fields.get("rate") or task.finished_speed or task.speed
        if speed is None or task.total is None:
            return Text("")
        unit = task.fields.get("unit") or "units"
        return Text(f"{speed:.0f} {unit}/s" if speed >= 100 else f"{speed:.3g} {unit}/s",
                    style="progress.data.speed")


class InfoColumn(ProgressColumn):
    """The stage's latest figures (the loss, the chunk size, ...), cut to the room left."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("info") or "", no_wrap=True, overflow="ellipsis")


class RichProgress:
    """Turns runner events into progress bars (see the module docstring)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}",
                                        table_column=Column(min_width=9, no_wrap=True)),
            BarColumn(bar_width=12),
            CountColumn(table_column=Column(justify="right", no_wrap=True)),
            RateColumn(table_column=Column(justify="right", no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(table_column=Column(no_wrap=True)),
            InfoColumn(),  # (the one column that gives way on a narrow terminal)
            console=console, transient=False, auto_refresh=False,
            speed_estimate_period=600.0)  # (an analysis's units may be minutes apart)
        # no refresh thread: on a small machine it steals cores from torch's compute threads
        # (a 10x slowdown was measured with 2 cores); the bars redraw on each event instead
        self.tasks: dict[str, TaskID] = {}
        self.session: Path | None = None
        self.seconds: dict[str, float] = {}  # stage -> seconds, from stage_end
        self.analyses: list[str] = []  # analysis stages of the run, in order
        self.summary: list[str] = []  # the lines printed once the bars are gone

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        for line in self.summary:
            self.console.print(Text(line))

    def _task(self, stage: str, total: float | None = None) -> TaskID:
        """The bar of ``stage`` (made on first use), shown and timing from now on."""
        if stage not in self.tasks:
            self._add(stage, visible=True)
        t = self.tasks[stage]
        task = self.progress.tasks[t]
        if not task.visible or task.start_time is None:
            self.progress.update(t, visible=True)
            self.progress.start_task(t)
        if total is not None and task.total != total:
            self.progress.update(t, total=total, counted=True)
        return t

    def _add(self, stage: str, visible: bool) -> None:
        self.tasks[stage] = self.progress.add_task(
            stage_label(stage), total=None, start=visible, visible=visible, info="",
            unit=UNITS.get(stage, ""), counted=False)
        if stage.startswith("analysis.") and stage not in self.analyses:
            self.analyses.append(stage)

    def __call__(self, ev) -> None:
        self._handle(ev)
        self.progress.refresh()

    def _handle(self, rec) -> None:
        ev = as_event(rec)
        update = self.progress.update
        match ev:
            case RunStart():
                self.console.print(f"[dim]session {escape(ev.session)}  device {ev.device}  "
                                   f"{ev.dtype}  threads {ev.threads}  P = {ev.P}[/]")
                self.session = Path(ev.session)
                for stage in ev.stages:  # every bar, in the run's order, shown as it starts
                    if stage not in self.tasks:
                        self._add(stage, visible=False)
            case StageStart():
                self._task(ev.stage)
            case TrainStep():
                update(self._task("train", ev.steps), completed=ev.step,
                       info=f"loss {ev.train_loss:.4f} test {ev.test_loss:.4f} "
                            f"acc {ev.test_acc:.3f}")
            case JacobianStart():
                t = self._task("jacobian", ev.total)
                # (rich's rate leaves out the first update: resumed columns do not count)
                update(t, completed=ev.done, info=f"chunks of {ev.chunk}")
            case JacobianChunk():
                update(self._task("jacobian", ev.total), completed=ev.done,
                       rate=ev.rate or None)
            case SnapshotStart():
                update(self._task("snapshots", ev.total), completed=ev.index,
                       info=f"SVD of J after step {ev.step}")
            case SnapshotDone():
                c = ev.counts
                update(self._task("snapshots", ev.total), completed=ev.index + 1,
                       info=f"step {ev.step}: s_1 {ev.s_max:.4g}, {c.get('chaotic')}/"
                            f"{c.get('bulk')}/{c.get('stable')}")
            case AnalysisProgress():
                t = self._task(f"analysis.{ev.name}", ev.total)
                update(t, completed=ev.done, unit=ev.unit or "")
            case MatfreeProgress():
                update(self._task("matfree"),
                       info=f"{ev.phase}: {ev.jvp} J v + {ev.vjp} J^T u")
            case StageEnd():
                self.seconds[ev.stage] = ev.seconds
                t = self._task(ev.stage)
                total = self.progress.tasks[t].total or 1
                update(t, total=total, completed=total)
            case StageSkip():
                self.console.print(f"[dim]{escape(ev.stage)}: already done[/]")
            case RunWarning():
                self.console.print(Text(f"warning: {ev.message}", style="yellow"))
            case RunError():
                self.console.print(Text(f"error: {ev.message}", style="bold red"))
            case Interrupted():
                self.console.print(f"[yellow]interrupted during {escape(ev.stage)}; "
                                   "`tjac resume` finishes it[/]")
            case RunEnd():
                self.summary = self.analysis_lines()

    def analysis_lines(self) -> list[str]:
        """A line per analysis the run finished (or had finished): its name, its time and
        what it measured."""
        if self.session is None or not self.analyses:
            return []
        from engine.present.findings import analysis_headline
        from engine.session import Session, SessionError

        s = Session(self.session)
        try:
            stages = s.manifest().get("stages", {})
        except SessionError:
            return []
        out = []
        for stage in self.analyses:
            st = stages.get(stage, {})
            if st.get("status") != "done":
                continue
            name = stage_label(stage)
            secs = self.seconds.get(stage, st.get("seconds"))
            try:
                headline = analysis_headline(s, name)
            except (OSError, ValueError, KeyError, TypeError, SessionError) as e:
                headline = f"(its result cannot be read: {e})"
            out.append(f"analysis {name}: {fmt_seconds(secs)}" +
                       (f"; {headline}" if headline else ""))
        return out

