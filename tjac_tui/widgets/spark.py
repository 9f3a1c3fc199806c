"""Spark: a one-line sparkline with its label and last value, like a system monitor's.

Textual's own ``Sparkline`` draws with block characters only; this one also has an ASCII ramp
for ``--ascii`` terminals, and keeps the data it shows (``values``) for tests and the eye."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import Static

BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_RAMP = "_.-:=+*#"


def resample(values: list[float], width: int) -> list[float]:
    """At most ``width`` points: each the mean of its bucket of consecutive values."""
    if len(values) <= width:
        return list(values)
    out = []
    for i in range(width):
        lo, hi = i * len(values) // width, (i + 1) * len(values) // width
        bucket = values[lo:max(hi, lo + 1)]
        out.append(sum(bucket) / len(bucket))
    return out


def spark_text(values: list[float], width: int, *, ascii: bool = False,
               log: bool = False) -> str:
    """The sparkline of ``values`` (non-finite ones dropped) in at most ``width`` cells; its
    lowest value is the lowest glyph, its highest the highest. ``log``: on a log scale (for a
    loss, whose interesting part is near zero); values <= 0 are dropped then."""
    ramp = ASCII_RAMP if ascii else BLOCKS
    vals = [float(v) for v in values if v is not None and math.isfinite(v)
            and (not log or v > 0)]
    if log:
        vals = [math.log10(v) for v in vals]
    vals = resample(vals, max(width, 1))
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo
    top = len(ramp) - 1
    return "".join(ramp[round((v - lo) / span * top) if span > 0 else top // 2]
                   for v in vals)


class Spark(Static):
    """``label ▁▂▅▇ last``: the last value formatted with ``fmt``."""

    def __init__(self, label: str, *, fmt: str = "{:.4g}", unit: str = "", log: bool = False,
                 ascii: bool = False, id: str | None = None) -> None:
        super().__init__("", id=id, classes="spark")
        self.label = label
        self.fmt = fmt
        self.unit = unit
        self.log_scale = log
        self.ascii = ascii
        self.values: list[float] = []

    def set_values(self, values: list[float | None]) -> None:
        self.values = [float(v) for v in values if v is not None]
        self.update(self._text())

    def on_resize(self) -> None:
        self.update(self._text())

    def _text(self) -> Text:
        t = Text(f"{self.label:<6}", style="bold")
        if not self.values:
            return t.append("-", style="dim")
        last = f" {self.fmt.format(self.values[-1])}{self.unit}"
        width = max(self.size.width - len(t) - len(last) - 1, 4) if self.size.width else 24
        t.append(spark_text(self.values, width, ascii=self.ascii, log=self.log_scale), style="cyan")
        return t.append(last)
