"""Text plots of spectra and training curves (plotext), shared by the TUI and the report.

Every function returns a :class:`Plot`: the series exactly as plotted (after downsampling and
after the log10 transform of a log axis), the tick positions and labels, and the rendered text
(plotext's ``build()`` string plus a legend line). No UI imports.

Log axes are drawn by plotting ``log10`` of the values on a linear axis and labelling the ticks
by hand (``1e-3``, ``0.1``, ``1``, ``10``): plotext's own log scale misbehaves when a figure is
redrawn. Long series are reduced to a few points per character cell with a min/max decimation,
so a 60,000-value spectrum draws in milliseconds and keeps its extremes (the dips of
``|s - 1|`` survive).

``ascii=True`` draws with ASCII markers and turns plotext's box-drawing frame into ``-|+``, so
the text has neither braille nor block characters (for the markdown report and ``tjac --ascii``).
``color=False`` renders without ANSI codes (``NO_COLOR``, the report) and with a distinct
marker per series (braille dots differ only by colour).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

REGION_NAMES = ("chaotic", "bulk", "stable")
REGION_COLORS = {"chaotic": 9, "bulk": 10, "stable": 12}  # xterm-256 red, green, blue
# ASCII markers tell series apart without colour (NO_COLOR) and without braille (--ascii);
# none of them is "+", "-" or "|", which the ASCII frame and its ticks are drawn with
REGION_ASCII = {"chaotic": "^", "bulk": "o", "stable": "x"}
PALETTE = [12, 9, 10, 11, 13, 14, 208, 141]
ASCII_MARKERS = ["*", "o", "x", "#", "@", "%", "&", "="]
RULE_COLOR = 8  # grey region boundaries

_ASCII_TABLE = str.maketrans({
    **{c: "-" for c in "─━═┄┈╌┅┉╍"},
    **{c: "|" for c in "│┃║┆┊╎┇┋╏"},
    **{c: "+" for c in "┌┐└┘╭╮╰╯├┤┬┴┼"},  # corners and tees of the frame and the ticks
    **{c: "+" for c in "╔╗╚╝╠╣╦╩╬┏┓┗┛┣┫┳┻╋"},
})

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# plotext's public figure (``plotext.figure``, plotext >= 6) is module-level state: every plot
# clears it and draws under this lock, so threads (the TUI's plot workers) never share a half-drawn
# figure. plotext 5.x has another API altogether (``plotext.plot``, no figure object).
_LOCK = threading.Lock()


@dataclass
class Series:
    """One plotted line: ``x`` and ``y`` exactly as drawn (``y`` is log10 on a log axis)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    color: int | None = None
    marker: str = "*"


@dataclass
class Plot:
    title: str
    series: list[Series]
    log_y: bool
    yticks: tuple[list[float], list[str]]
    xticks: tuple[list[float], list[str]]
    vlines: list[float] = field(default_factory=list)
    ylim: tuple[float, float] | None = None
    text: str = ""
    legend: str = ""
    note: str = ""

    def data(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """label -> (x, y) as plotted."""
        return {s.label: (s.x, s.y) for s in self.series}


# --------------------------------------------------------------------------------------------
# data reduction and ticks


def decimate(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the minimum and the maximum of ``y`` in each of ``buckets`` consecutive slices
    (in their original order), plus the first and last point: at most ``2 * buckets + 2``
    points whose envelope is the envelope of the full series. NaNs are dropped."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    if not ok.all():
        x, y = x[ok], y[ok]
    n = len(y)
    buckets = max(1, int(buckets))
    if n <= 2 * buckets + 2:
        return x, y
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = [0, n - 1]
    starts = edges[:-1]
    # argmin / argmax per bucket with reduceat
    lo = np.minimum.reduceat(y, starts)
    hi = np.maximum.reduceat(y, starts)
    for b in range(buckets):
        s, e = edges[b], edges[b + 1]
        if e <= s:
            continue
        seg = y[s:e]
        keep.append(s + int(np.flatnonzero(seg == lo[b])[0]))
        keep.append(s + int(np.flatnonzero(seg == hi[b])[0]))
    idx = np.unique(np.asarray(keep, dtype=np.int64))
    return x[idx], y[idx]


def log10_clipped(v: np.ndarray, floor: float | None = None) -> tuple[np.ndarray, float, int]:
    """log10 of non-negative values; zeros (and values under ``floor``) are drawn at ``floor``,
    by default a decade under the smallest positive value. Returns (log10 values, floor,
    number of clipped values)."""
    v = np.abs(np.asarray(v, dtype=np.float64))
    if floor is None:
        pos = v[v > 0]
        floor = max(float(pos.min()) / 10, 1e-300) if pos.size else 1e-16
        floor = 10.0 ** math.floor(math.log10(floor))
    clipped = int(np.sum(v < floor))
    return np.log10(np.maximum(v, floor)), floor, clipped


def fmt_power(p: float, digits: int = 2) -> str:
    """The label of a log10 tick position: 1e-3, 0.01, 0.1, 1, 10, 100, 1e3... (``digits``
    significant digits between the powers of ten)."""
    k = round(p)
    if abs(p - k) < 1e-9:
        return {-2: "0.01", -1: "0.1", 0: "1", 1: "10", 2: "100"}.get(k, f"1e{k}")
    return f"{10 ** p:.{digits}g}"


def _power_labels(pos: list[float]) -> list[str]:
    """Labels for log ticks, with as many digits as it takes to tell them apart (two ticks
    inside 1.07 .. 1.14 were both "1.1")."""
    for digits in range(2, 7):
        labels = [fmt_power(p, digits) for p in pos]
        if len(set(labels)) == len(labels):
            break
    return labels


def log_ticks(lo: float, hi: float, max_ticks: int = 6) -> tuple[list[float], list[str]]:
    """Tick positions (log10 units) and labels for a log axis spanning [lo, hi] in log10."""
    max_ticks = max(2, max_ticks)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [], []
    if hi - lo < 1e-12:
        return [lo], [fmt_power(lo)]
    first, last = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    decades = list(range(first, last + 1))
    if len(decades) >= 2:
        step = max(1, math.ceil(len(decades) / max_ticks))
        pos = [float(d) for d in decades if (d - first) % step == 0]
        return pos, [fmt_power(p) for p in pos]
    # less than two decades: 1-2-5 ticks inside the range
    cands = [math.log10(m) + k for k in range(first - 1, last + 2) for m in (1, 2, 5)]
    pos = [p for p in cands if lo - 1e-9 <= p <= hi + 1e-9]
    if len(pos) < 2:
        pos = [lo, hi]
    if len(pos) > max_ticks:
        step = math.ceil(len(pos) / max_ticks)
        pos = pos[::step]
    return pos, _power_labels(pos)


def nice_ticks(lo: float, hi: float, max_ticks: int = 6, integer: bool = False
               ) -> tuple[list[float], list[str]]:
    """Round-number ticks for a linear axis."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [], []
    if hi <= lo:
        return [lo], [_fmt_num(lo, integer)]
    raw = (hi - lo) / max(1, max_ticks - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    first = math.ceil(lo / step - 1e-9)
    pos = []
    i = 0
    while (first + i) * step <= hi + 1e-9 * step:
        v = (first + i) * step  # (a multiple, not a running sum: 0 stays 0, never "-0")
        pos.append(0.0 if abs(v) < 1e-9 * step else round(v, 12))
        i += 1
    return pos, [_fmt_num(p, integer) for p in pos]


def _fmt_num(v: float, integer: bool) -> str:
    if integer:
        return str(int(round(v)))
    return f"{v:.4g}"


# --------------------------------------------------------------------------------------------
# rendering


def _canvas_width(width: int, yticks: Sequence[str]) -> int:
    return max(10, width - max((len(t) for t in yticks), default=3) - 3)


def render(plot: Plot, width: int, height: int, *, ascii: bool = False, color: bool = True
           ) -> str:
    """Draw ``plot`` with plotext into ``width`` x ``height`` cells (legend line included);
    fills ``plot.text`` and returns it."""
    import plotext
    from plotext import marker as pmarker, pixel as ppixel

    legend = legend_line(plot, ascii=ascii, color=color)
    lines_below = 1 if legend else 0
    width = max(20, int(width))
    height = max(6, int(height))
    with _LOCK:
        # plotext's public figure is one per process: cleared whole before every plot (and
        # drawn under the lock), it starts from the same state a fresh figure would
        plotext.terminal.limit(False, False)
        fig = plotext.figure
        fig.clear.all()
        fig.theme("simple" if color else "colorless")
        fig.plot_size(width, height - lines_below)
        if plot.title:
            fig.title(plot.title)
        for s in plot.series:
            if len(s.x) == 0:
                continue
            sym = s.marker if (ascii or not color) else "braille"
            mk = pmarker(sym, ppixel(foreground=s.color)) if (color and s.color is not None) \
                else pmarker(sym)
            sig = fig.signal([float(v) for v in s.x], [float(v) for v in s.y], marker=mk)
            sig.lines()
            fig.draw(sig)
        if plot.ylim is not None:
            lo, hi = plot.ylim
            fig.ruler("y").lim(lo, hi)
            for xv in plot.vlines:
                sym = "|" if ascii else "│"
                mk = pmarker(sym, ppixel(foreground=RULE_COLOR)) if color else pmarker(sym)
                fig.draw(fig.segment((float(xv), float(xv)), (lo, hi), marker=mk))
        if plot.yticks[0]:
            fig.ruler("y").ticks(list(plot.yticks[0]), list(plot.yticks[1]))
        if plot.xticks[0]:
            fig.ruler("x").ticks(list(plot.xticks[0]), list(plot.xticks[1]))
        text = fig.build().string(colorless=not color)
    text = "\n".join(line.rstrip() if not color else line for line in text.splitlines())
    if ascii:
        text = text.translate(_ASCII_TABLE)
    if legend:
        text = text + "\n" + legend
    plot.text = text
    plot.legend = legend
    return text


def legend_line(plot: Plot, *, ascii: bool, color: bool) -> str:
    parts = []
    for s in plot.series:
        sym = s.marker if (ascii or not color) else "●"
        if color and s.color is not None:
            sym = f"\x1b[38;5;{s.color}m{sym}\x1b[0m"
        parts.append(f"{sym} {s.label}")
    text = "  ".join(parts)
    if plot.note:
        text = f"{text}   {plot.note}" if text else plot.note
    return text


def _ylim(ys: Sequence[np.ndarray], pad: float = 0.04, clamp: tuple[float, float] | None = None
          ) -> tuple[float, float]:
    vals = [y[np.isfinite(y)] for y in ys if len(y)]
    vals = [v for v in vals if v.size]
    if not vals:
        return (0.0, 1.0)
    lo = float(min(v.min() for v in vals))
    hi = float(max(v.max() for v in vals))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    if clamp is not None:
        lo, hi = max(lo, clamp[0]), min(hi, clamp[1])
    return lo, hi


def _index_ticks(n: int, width: int) -> tuple[list[float], list[str]]:
    return nice_ticks(0, max(1, n - 1), max_ticks=max(3, min(8, width // 12)), integer=True)


def _regions_of(n: int, summary: dict | None) -> list[tuple[str, int, int]]:
    if summary is None or "regions" not in summary:
        return [("all", 0, n)]
    out = []
    for name in REGION_NAMES:
        r = summary["regions"][name]
        if r["count"]:
            out.append((name, int(r["start"]), int(r["stop"])))
    return out


def _region_series(y: np.ndarray, summary: dict | None, canvas_w: int) -> list[Series]:
    n = len(y)
    x = np.arange(n, dtype=np.float64)
    out = []
    for name, a, b in _regions_of(n, summary):
        buckets = max(1, round(2 * canvas_w * (b - a) / max(n, 1)))
        xs, ys = decimate(x[a:b], y[a:b], buckets)
        if name == "all":
            out.append(Series("all", xs, ys, PALETTE[0], "*"))
        else:
            out.append(Series(f"{name} {a}..{b - 1}", xs, ys, REGION_COLORS[name],
                              REGION_ASCII[name]))
    return out


def _boundaries(n: int, summary: dict | None) -> list[float]:
    regs = _regions_of(n, summary)
    return [float(a) - 0.5 for _, a, _ in regs[1:]]


# --------------------------------------------------------------------------------------------
# the plots


def spectrum_plot(S: np.ndarray, summary: dict | None = None, width: int = 80, height: int = 16,
                  *, ascii: bool = False, color: bool = True,
                  title: str = "singular values s_i (log scale)") -> Plot:
    """Singular values by index on a log axis, one series per region, boundaries marked."""
    S = np.asarray(S, dtype=np.float64)
    ly, floor, clipped = log10_clipped(S)
    return _index_plot(ly, summary, width, height, ascii, color, title, log=True,
                       note=f"{clipped} zero(s) drawn at {fmt_power(math.log10(floor))}"
                       if clipped else "")


def distance_plot(S: np.ndarray, summary: dict | None = None, width: int = 80, height: int = 16,
                  *, ascii: bool = False, color: bool = True,
                  title: str = "distance from unity |s_i - 1| (log scale)") -> Plot:
    """abs(s - 1) by index on a log axis; exact zeros drawn a decade below the smallest value."""
    S = np.asarray(S, dtype=np.float64)
    ly, floor, clipped = log10_clipped(np.abs(S - 1))
    note = f"{clipped} exact zero(s) drawn at {fmt_power(math.log10(floor))}" if clipped else ""
    return _index_plot(ly, summary, width, height, ascii, color, title, log=True, note=note)


def alignment_plot(a: np.ndarray, summary: dict | None = None, width: int = 80,
                   height: int = 16, *, ascii: bool = False, color: bool = True,
                   title: str = "alignment u_i . v_i") -> Plot:
    """Per-index u_i . v_i (linear axis, in [-1, 1])."""
    return _index_plot(np.asarray(a, dtype=np.float64), summary, width, height, ascii, color,
                       title, log=False)


def _index_plot(y: np.ndarray, summary: dict | None, width: int, height: int, ascii: bool,
                color: bool, title: str, *, log: bool, note: str = "") -> Plot:
    n = len(y)
    plot_h = max(4, height - 4)
    if log:
        lo, hi = _ylim([y], pad=0.03)
        yticks = log_ticks(lo, hi, max_ticks=max(2, plot_h // 2))
    else:
        lo, hi = _ylim([y], pad=0.05, clamp=(-1.05, 1.05))
        yticks = nice_ticks(lo, hi, max_ticks=max(2, plot_h // 2))
    cw = _canvas_width(width, yticks[1])
    plot = Plot(title=title, series=_region_series(y, summary, cw), log_y=log, yticks=yticks,
                xticks=_index_ticks(n, width), vlines=_boundaries(n, summary), ylim=(lo, hi),
                note=note)
    render(plot, width, height, ascii=ascii, color=color)
    return plot


def curves_plot(x: Sequence[float], curves: dict[str, Sequence[float]], width: int = 60,
                height: int = 12, *, ascii: bool = False, color: bool = True, title: str = "",
                log: bool = False, xlabel_int: bool = True) -> Plot:
    """Several curves over a shared x (training loss / accuracy by step)."""
    xa = np.asarray(x, dtype=np.float64)
    ys = {}
    for k, v in curves.items():
        va = np.asarray([np.nan if u is None else u for u in v], dtype=np.float64)
        ys[k] = log10_clipped(va, 1e-12)[0] if log else va
    plot_h = max(4, height - 4)
    lo, hi = _ylim(list(ys.values()), pad=0.05)
    yticks = log_ticks(lo, hi, max(2, plot_h // 2)) if log else \
        nice_ticks(lo, hi, max_ticks=max(2, plot_h // 2))
    cw = _canvas_width(width, yticks[1])
    series = []
    for i, (k, va) in enumerate(ys.items()):
        xs, yv = decimate(xa[: len(va)], va, 2 * cw)
        series.append(Series(k, xs, yv, PALETTE[i % len(PALETTE)],
                             ASCII_MARKERS[i % len(ASCII_MARKERS)]))
    xt = nice_ticks(float(xa.min()) if len(xa) else 0.0, float(xa.max()) if len(xa) else 1.0,
                    max_ticks=max(3, min(7, width // 10)), integer=xlabel_int)
    plot = Plot(title=title, series=series, log_y=log, yticks=yticks, xticks=xt, ylim=(lo, hi))
    render(plot, width, height, ascii=ascii, color=color)
    return plot


def overlay_plot(named: Sequence[tuple[str, np.ndarray]], kind: str = "spectrum",
                 width: int = 80, height: int = 16, *, ascii: bool = False, color: bool = True,
                 title: str | None = None) -> Plot:
    """Spectra of several sessions on one log axis; ``kind`` is ``"spectrum"`` (s_i) or
    ``"distance"`` (|s_i - 1|). Sessions of different P share the index axis."""
    ys = []
    clipped_total = 0
    floor = None
    if kind == "distance":
        allpos = np.concatenate([np.abs(np.asarray(S, np.float64) - 1) for _, S in named]) \
            if named else np.zeros(0)
        pos = allpos[allpos > 0]
        floor = 10.0 ** math.floor(math.log10(max(float(pos.min()) / 10, 1e-300))) \
            if pos.size else 1e-16
    for name, S in named:
        S = np.asarray(S, dtype=np.float64)
        v = np.abs(S - 1) if kind == "distance" else S
        ly, _, clipped = log10_clipped(v, floor)
        clipped_total += clipped
        ys.append((name, ly))
    plot_h = max(4, height - 4)
    lo, hi = _ylim([y for _, y in ys], pad=0.03)
    yticks = log_ticks(lo, hi, max_ticks=max(2, plot_h // 2))
    cw = _canvas_width(width, yticks[1])
    series = []
    n_max = max((len(y) for _, y in ys), default=1)
    for i, (name, y) in enumerate(ys):
        xs, yv = decimate(np.arange(len(y), dtype=np.float64), y,
                          max(1, round(2 * cw * len(y) / n_max)))
        series.append(Series(name, xs, yv, PALETTE[i % len(PALETTE)],
                             ASCII_MARKERS[i % len(ASCII_MARKERS)]))
    if title is None:
        title = "singular values s_i (log scale)" if kind == "spectrum" else \
            "distance from unity |s_i - 1| (log scale)"
    note = ""
    if clipped_total and floor is not None:
        note = f"{clipped_total} zero(s) drawn at {fmt_power(math.log10(floor))}"
    plot = Plot(title=title, series=series, log_y=True, yticks=yticks,
                xticks=_index_ticks(n_max, width), ylim=(lo, hi), note=note)
    render(plot, width, height, ascii=ascii, color=color)
    return plot


def strip_ansi(text: str) -> str:
    """``text`` without its ANSI colour codes."""
    return _ANSI.sub("", text)


def is_plain_ascii(text: str) -> bool:
    """True when ``text`` (ANSI codes aside) has no braille, block or box-drawing characters."""
    return all(ord(c) < 128 for c in strip_ansi(text))
