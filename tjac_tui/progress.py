"""Rich progress bars for the headless CLI: a listener on the runner's event stream."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.markup import escape
from rich.text import Text


class RichProgress:
    """Turns runner events into progress bars: training steps, Jacobian columns (rate, ETA),
    SVD, snapshots, the matrix-free products."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description:<9}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, transient=False, auto_refresh=False)
        # no refresh thread: on a small machine it steals cores from torch's compute threads
        # (a 10x slowdown was measured with 2 cores); the bars redraw on each event instead
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def _task(self, name: str, total: float | None, completed: float = 0) -> TaskID:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, completed=completed,
                                                      info="")
        return self.tasks[name]

    def __call__(self, ev: dict) -> None:
        self._handle(ev)
        self.progress.refresh()

    def _handle(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "run_start":
            self.console.print(f"[dim]session {escape(ev['session'])}  device {ev['device']}  "
                               f"{ev['dtype']}  threads {ev['threads']}  P = {ev['P']}[/]")
        elif kind == "train_step":
            t = self._task("train", ev["steps"])
            self.progress.update(t, completed=ev["step"],
                                 info=f"loss {ev['train_loss']:.4f} test {ev['test_loss']:.4f} "
                                      f"acc {ev['test_acc']:.3f}")
        elif kind == "jacobian_start":
            self._task("jacobian", ev["total"], ev["done"])
            self.progress.update(self.tasks["jacobian"],
                                 info=f"chunk {ev['chunk']} x {ev['chunks']}")
        elif kind == "jacobian_chunk":
            rate = ev.get("rate") or 0
            self.progress.update(self._task("jacobian", ev["total"]), completed=ev["done"],
                                 info=f"{rate:.1f} columns/s")
        elif kind == "stage_start" and ev["stage"] in ("svd", "spectrum"):
            self._task(ev["stage"], None)
        elif kind == "snapshot_start":
            self.progress.update(self._task("snapshots", ev["total"]), completed=ev["index"],
                                 info=f"SVD of J after step {ev['step']}")
        elif kind == "snapshot_done":
            c = ev["counts"]
            self.progress.update(self._task("snapshots", ev["total"]), completed=ev["index"] + 1,
                                 info=f"step {ev['step']}: s_1 {ev['s_max']:.4g}, "
                                      f"{c['chaotic']}/{c['bulk']}/{c['stable']}")
        elif kind == "matfree_progress":
            self.progress.update(self._task("matfree", None),
                                 info=f"{ev['phase']}: {ev['jvp']} J v + {ev['vjp']} J^T u")
        elif kind == "stage_end" and ev["stage"] in self.tasks:
            t = self.tasks[ev["stage"]]
            self.progress.update(t, total=self.progress.tasks[t].total or 1,
                                 completed=self.progress.tasks[t].total or 1,
                                 info=f"{ev['seconds']:.1f} s")
        elif kind == "stage_skip":
            self.console.print(f"[dim]{ev['stage']}: already done[/]")
        elif kind in ("warning", "error"):
            style = "yellow" if kind == "warning" else "bold red"
            self.console.print(Text(f"{kind}: {ev['message']}", style=style))
        elif kind == "interrupted":
            self.console.print(f"[yellow]interrupted during {ev['stage']}; "
                               "`tjac resume` finishes it[/]")

