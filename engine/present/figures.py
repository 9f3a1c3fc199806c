"""Figures of a session for papers and slides: PNG and SVG drawn with matplotlib, and the
spectrum as CSV.

    write_figures(session, formats=("png", "svg"))  ->  Figures(files, csv, skipped)

Written to ``<session>/figures/``: ``spectrum``, ``distance`` (|s - 1|), ``alignment``
(u_i . v_i) with the regions coloured and their boundaries marked, ``analysis-NAME[-PART]``
for every analysis view that has a plot (the same data as the report's text plots), and
``spectrum.csv`` (index, s,
|s - 1|, u.v, region). matplotlib is an optional extra (``pip install 'tjac[figures]'``):
without it only the CSV is written and ``skipped`` says why. It is imported here only, through
its object API (no pyplot state: safe from the app's worker threads). The figures' builders
are public and draw on a given Axes (``ax=``, a new figure's when None) and return it:
:func:`plot_spectrum`, :func:`plot_distance`, :func:`plot_alignment`, :func:`plot_index`,
:func:`plot_view`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import regions
from ..results import spectrum_table, write_csv
from ..session import Session
from .views import View, session_views

REGION_COLOURS = {"chaotic": "#d62728", "bulk": "#2ca02c", "stable": "#1f77b4"}
INSTALL_HINT = "PNG/SVG figures need matplotlib: pip install 'tjac[figures]'"


def why_no_figures(session) -> str:
    """Why a session's export has no PNG/SVG figures: matplotlib missing (how to install it),
    or nothing to draw (a matrix-free run has no stored spectrum)."""
    try:
        import matplotlib  # noqa: F401 - only to know it is there
    except ImportError:
        return INSTALL_HINT
    s = session if isinstance(session, Session) else Session(session)
    if not s.has("svd/S.npy"):
        return ("no spectrum to draw: J was never formed (a matrix-free run; its tables are in "
                "the report)" if s.has("matfree.json") else "no spectrum to draw yet")
    return "no figures were drawn"


@dataclass
class Figures:
    files: list[Path] = field(default_factory=list)  # every figure file written
    csv: Path | None = None
    skipped: str | None = None  # why no PNG/SVG was drawn


def spectrum_csv(session: Session, out: Path) -> Path | None:
    """index, s, |s - 1|, u.v (when the vectors were kept), region: one row per singular
    value, in the order of the SVD (descending) (:func:`engine.results.spectrum_table`)."""
    if not session.has("svd/S.npy"):
        return None
    S = session.load_npy("svd/S.npy").astype(np.float64)
    align = session.load_npy("svd/alignment.npy") if session.has("svd/alignment.npy") else None
    tol = (session.spectrum() or {}).get("bulk_tol") or regions.DEFAULT_TOL
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_csv(spectrum_table(S, align, tol), out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _axes(ax):
    """``ax``, or the Axes of a new 7 x 4 in figure (matplotlib's object API: no pyplot)."""
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=(7, 4), layout="constrained").add_subplot()


def plot_index(y: np.ndarray, S: np.ndarray, tol: float, title: str = "", ylabel: str = "",
               log: bool = False, ax=None):
    """One value per index (``y``: (P,)), coloured by the region of ``S`` (descending, (P,)) at
    ``tol``, the region boundaries dashed, on ``ax`` (a new figure's when None); returns the
    Axes."""
    ax = _axes(ax)
    idx = np.arange(len(y))
    masks = regions.masks(S, tol)
    for name, m in masks.items():
        if m.any():
            ax.plot(idx[m], y[m], ".", ms=2, color=REGION_COLOURS[name],
                    label=f"{name} ({int(m.sum())})")
    if np.all(np.diff(S) <= 0):  # descending (as the SVD gives it): the regions are ranges
        n_chaotic = int(masks["chaotic"].sum())
        for b in (n_chaotic, n_chaotic + int(masks["bulk"].sum())):
            if 0 < b < len(S):
                ax.axvline(b - 0.5, color="grey", lw=0.8, ls="--")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small", markerscale=4)
    ax.grid(alpha=0.3)
    return ax


def plot_spectrum(S: np.ndarray, tol: float = regions.DEFAULT_TOL, ax=None):
    """s_i by index on a log axis, coloured by region; returns the Axes."""
    S = np.asarray(S, dtype=np.float64)
    return plot_index(S, S, tol, "Singular values of J", "s_i", log=True, ax=ax)


def plot_distance(S: np.ndarray, tol: float = regions.DEFAULT_TOL, ax=None):
    """|s_i - 1| by index on a log axis (the exact ones, s = 1, have no place on it: the title
    counts them); returns the Axes."""
    S = np.asarray(S, dtype=np.float64)
    dist = np.abs(S - 1)
    exact = int((dist == 0).sum())
    return plot_index(np.where(dist > 0, dist, np.nan), S, tol, "Distance from unity" + (
        f" ({exact} with s = 1 exactly: not shown)" if exact else ""), "|s_i - 1|", log=True,
        ax=ax)


def plot_alignment(alignment: np.ndarray, S: np.ndarray, tol: float = regions.DEFAULT_TOL,
                   ax=None):
    """u_i . v_i by index, coloured by the region of ``S``; returns the Axes."""
    return plot_index(np.asarray(alignment, dtype=np.float64), np.asarray(S, np.float64), tol,
                      "Alignment of left and right singular vectors", "u_i . v_i", log=False,
                      ax=ax)


def plot_view(view: View, ax=None):
    """An analysis view's series (:class:`engine.present.views.View`) on ``ax``; returns the
    Axes."""
    ax = _axes(ax)
    for label, x, y in view.series:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if view.logy:
            y = np.abs(y)
        style = "-" if len(x) > 40 else "o-"
        ax.plot(x, y, style, ms=3, lw=1, label=label)
    if view.logx:
        ax.set_xscale("log")
    if view.logy:
        ax.set_yscale("log")
    if view.xcategories:
        ax.set_xticks(range(len(view.xcategories)), view.xcategories)
    ax.set_xlabel(view.xlabel)
    ax.set_ylabel(view.ylabel)
    ax.set_title(view.title, fontsize="medium", wrap=True)
    if len(view.series) > 1:
        ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def write_figures(session, out_dir: str | Path | None = None,
                  formats: tuple[str, ...] = ("png", "svg")) -> Figures:
    """Write the session's figures (and spectrum.csv) to ``out_dir`` (default
    ``<session>/figures``)."""
    s = session if isinstance(session, Session) else Session(session)
    out = (Path(out_dir) if out_dir is not None else s.path / "figures").absolute()
    result = Figures(csv=spectrum_csv(s, out / "spectrum.csv"))
    try:
        import matplotlib  # noqa: F401 - only to know it is there
    except ImportError:
        result.skipped = INSTALL_HINT
        return result
    figs = []
    if s.has("svd/S.npy"):
        S = s.load_npy("svd/S.npy").astype(np.float64)
        tol = (s.spectrum() or {}).get("bulk_tol") or regions.DEFAULT_TOL
        figs.append(("spectrum", plot_spectrum(S, tol).figure))
        figs.append(("distance", plot_distance(S, tol).figure))
        if s.has("svd/alignment.npy"):
            figs.append(("alignment", plot_alignment(s.load_npy("svd/alignment.npy"), S,
                                                     tol).figure))
    for name, _, views in session_views(s):
        for v in views:
            if v.series:  # analysis-distance, analysis-distance-alignment, ...
                figs.append(("-".join(["analysis", name] + [_slug(part) for part in
                                                             v.key.split(".")[1:]]),
                             plot_view(v).figure))
    if not figs:  # (a matrix-free run: no stored spectrum, no analyses)
        result.skipped = why_no_figures(s)
    out.mkdir(parents=True, exist_ok=True)
    for stem, fig in figs:
        for fmt in formats:
            path = out / f"{stem}.{fmt}"
            fig.savefig(path, dpi=150)
            result.files.append(path)
    return result


def figures_markdown(fig: Figures, report_dir: Path) -> str:
    """The report's "Figures" section: the PNGs inline, links to the SVGs and the CSV (paths
    relative to the report's folder)."""
    def rel(p: Path) -> str:
        return str(p.relative_to(report_dir)) if p.is_relative_to(report_dir) else str(p)

    parts = ["## Figures", ""]
    if fig.skipped:
        parts += [f"_{fig.skipped}._", ""]
    for p in (p for p in fig.files if p.suffix == ".png"):
        svg = p.with_suffix(".svg")
        parts += [f"![{p.stem}]({rel(p)})" + (f" ([SVG]({rel(svg)}))" if svg in fig.files
                                               else ""), ""]
    if fig.csv is not None:
        parts += [f"The spectrum as CSV: [{rel(fig.csv)}]({rel(fig.csv)}) (index, s, |s - 1|, "
                  "u.v, region).", ""]
    return "\n".join(parts)
