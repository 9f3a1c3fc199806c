"""PlotView: a text plot (engine.asciiplot via tjac_tui.plots) drawn for the widget's size.

The plot is computed in a thread worker (downsampling and plotext rendering stay off the event
loop) and redrawn when the widget is resized. ``plot`` holds the last :class:`Plot` shown, so
tests can assert the plotted series.
"""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual import work
from textual.widgets import Static
from textual.worker import get_current_worker

from ..plots import Plot

Maker = Callable[[int, int], Plot]


class PlotView(Static):
    """Shows ``maker(width, height)``; ``show(None, text)`` shows a placeholder instead."""

    def __init__(self, placeholder: str = "", *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(placeholder, id=id, classes=classes)
        self._maker: Maker | None = None
        self._drawn_for: tuple | None = None
        self.plot: Plot | None = None

    def show(self, maker: Maker | None, placeholder: str = "") -> None:
        self._maker = maker
        self._drawn_for = None
        if maker is None:
            self.plot = None
            self.update(Text(placeholder))
            return
        self._request()

    def on_resize(self) -> None:
        self._request()

    def on_show(self) -> None:
        self._request()

    def _request(self) -> None:
        if self._maker is None:
            return
        w, h = self.content_size
        if w < 20 or h < 6:
            return
        key = (id(self._maker), w, h)
        if key == self._drawn_for:
            return
        self._draw(self._maker, w, h, key)

    @work(thread=True, exclusive=True, group="plot")
    def _draw(self, maker: Maker, w: int, h: int, key: tuple) -> None:
        plot = maker(w, h)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._set, maker, key, plot)

    def _set(self, maker: Maker, key: tuple, plot: Plot) -> None:
        if maker is not self._maker:
            return
        self.plot = plot
        self._drawn_for = key
        self.update(Text.from_ansi(plot.text, no_wrap=True, overflow="crop"))
