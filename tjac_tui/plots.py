"""Plot functions of the TUI: thin wrappers over :mod:`engine.asciiplot` (the same code draws
the report's plots, and the engine may not import the UI).

Each function returns an :class:`engine.asciiplot.Plot`: ``plot.series`` holds the plotted data
(downsampled; log10 of the values on log axes), ``plot.text`` the rendered plotext string.
"""

from __future__ import annotations

from typing import Sequence

from engine.asciiplot import (Plot, Series, alignment_plot, curves_plot, decimate,
                              distance_plot, is_plain_ascii, log_ticks, overlay_plot,
                              spectrum_plot)

__all__ = ["Plot", "Series", "accuracy_plot", "alignment_plot", "curves_plot", "decimate",
           "distance_plot", "is_plain_ascii", "log_ticks", "loss_plot", "overlay_plot",
           "runs_loss_plot",
           "spectrum_plot"]


def loss_plot(steps: Sequence[int], curves: dict[str, list], width: int, height: int, *,
              ascii: bool = False, color: bool = True, log: bool = False) -> Plot:
    """Training and test loss by step (``curves`` as in :class:`tjac_tui.state.LiveState`);
    ``log``: a log y axis (the `l` key)."""
    return curves_plot(steps, {"train loss": curves["train_loss"][: len(steps)],
                               "test loss": curves["test_loss"][: len(steps)]},
                       width, height, ascii=ascii, color=color,
                       title="loss (log scale)" if log else "loss", log=log)


def runs_loss_plot(runs: Sequence[tuple[str, Sequence[int], Sequence[float | None]]],
                   width: int, height: int, *, ascii: bool = False, color: bool = True,
                   log: bool = False, what: str = "train loss") -> Plot:
    """One loss curve per run, ``(name, steps, values)`` each, over the union of their steps
    (a run without a value at a step has a gap there)."""
    xs = sorted({int(x) for _, steps, _ in runs for x in steps})
    at = {x: i for i, x in enumerate(xs)}
    curves = {}
    for name, steps, vals in runs:
        col: list[float | None] = [None] * len(xs)
        for x, v in zip(steps, vals):
            col[at[int(x)]] = v
        curves[name] = col
    return curves_plot(xs, curves, width, height, ascii=ascii, color=color, log=log,
                       title=f"{what}, every run" + (" (log scale)" if log else ""))


def accuracy_plot(steps: Sequence[int], curves: dict[str, list], width: int, height: int, *,
                  ascii: bool = False, color: bool = True) -> Plot:
    return curves_plot(steps, {"train acc": curves["train_acc"][: len(steps)],
                               "test acc": curves["test_acc"][: len(steps)]},
                       width, height, ascii=ascii, color=color, title="accuracy")
