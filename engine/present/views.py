"""What each analysis looks like: plot series and table rows, for the report and the TUI.

:func:`session_views` reads a session's ``analyses/`` and returns, per finished analysis, a list
of :class:`View`: the series to plot (x, y as measured, with the axis scales) and a table
(columns, rows of strings). :func:`make_plot` draws a view with :mod:`engine.asciiplot` (the
plotting code the rest of tjac uses), so the markdown report and the TUI show the same thing.
No UI imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import asciiplot, regions
from ..sections import ANALYSES
from ..session import Session
from ..sweep import Sweep, is_sweep, point_row

MAX_TABLE_ROWS = 40


@dataclass
class View:
    key: str  # "<analysis>" or "<analysis>.<part>"
    title: str
    series: list[tuple[str, np.ndarray, np.ndarray]]  # (label, x, y) as measured
    logx: bool = False
    logy: bool = False
    xlabel: str = ""
    ylabel: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    xint: bool = False  # integer x ticks (indices, k)
    # categorical x axis: the series' x are indices into these labels (a swept optimizer)
    xcategories: list[str] = field(default_factory=list)


def fmt(v, spec: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(float(v), spec)


# --------------------------------------------------------------------------------------------
# drawing


def _tr(v: np.ndarray, log: bool, floor: float) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if not log:
        return v
    return np.log10(np.maximum(np.abs(v), floor))


def make_plot(view: View, width: int = 100, height: int = 18, *, ascii: bool = True,
              color: bool = False) -> asciiplot.Plot:
    """Draw a view: log axes are plotted as log10 with decade ticks; long series are min/max
    decimated to the canvas; zeros on a log axis are drawn a decade under the smallest value."""
    ys_all = [np.asarray(y, dtype=np.float64) for _, _, y in view.series]
    xs_all = [np.asarray(x, dtype=np.float64) for _, x, _ in view.series]

    def floor_of(vals):
        pos = np.concatenate([np.abs(v[np.isfinite(v) & (v != 0)]) for v in vals]) \
            if vals else np.zeros(0)
        if pos.size == 0:
            return 1e-16
        return 10.0 ** math.floor(math.log10(max(pos.min() / 10, 1e-300)))

    yfloor = floor_of(ys_all)
    xfloor = floor_of(xs_all)
    tys = [_tr(y, view.logy, yfloor) for y in ys_all]
    txs = [_tr(x, view.logx, xfloor) for x in xs_all]
    finite = [t[np.isfinite(t)] for t in tys]
    finite = [f for f in finite if f.size]
    if finite:
        lo, hi = min(f.min() for f in finite), max(f.max() for f in finite)
    else:
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    plot_h = max(4, height - 4)
    yticks = asciiplot.log_ticks(lo, hi, max(2, plot_h // 2)) if view.logy else \
        asciiplot.nice_ticks(lo, hi, max(2, plot_h // 2))
    xf = [t[np.isfinite(t)] for t in txs]
    xf = [f for f in xf if f.size]
    xlo = min(f.min() for f in xf) if xf else 0.0
    xhi = max(f.max() for f in xf) if xf else 1.0
    xticks = asciiplot.log_ticks(xlo, xhi, max(3, min(8, width // 12))) if view.logx else \
        asciiplot.nice_ticks(xlo, xhi, max(3, min(8, width // 12)), integer=view.xint)
    if view.xcategories:
        xticks = ([float(i) for i in range(len(view.xcategories))], list(view.xcategories))
    cw = max(10, width - max((len(t) for t in yticks[1]), default=3) - 3)
    series = []
    for i, ((label, _, _), tx, ty) in enumerate(zip(view.series, txs, tys)):
        x, y = asciiplot.decimate(tx, ty, 2 * cw)
        series.append(asciiplot.Series(label, x, y, asciiplot.PALETTE[i % len(asciiplot.PALETTE)],
                                       asciiplot.ASCII_MARKERS[i % len(asciiplot.ASCII_MARKERS)]))
    axes = []
    if view.xlabel:
        axes.append(f"x: {view.xlabel}{' (log)' if view.logx else ''}")
    if view.ylabel:
        axes.append(f"y: {view.ylabel}{' (log)' if view.logy else ''}")
    plot = asciiplot.Plot(title=view.title, series=series, log_y=view.logy, yticks=yticks,
                          xticks=xticks, ylim=(lo, hi), note="; ".join(axes))
    asciiplot.render(plot, width, height, ascii=ascii, color=color)
    return plot


# --------------------------------------------------------------------------------------------
# per analysis


def _load(session, rel: str):
    return session.load_npy(rel) if session.has(rel) else None


def _regions_row(name: str, summary: dict) -> list[str]:
    return [name, fmt(summary["count"]), fmt(summary["median"]), fmt(summary["center"]),
            fmt(summary["min"]), fmt(summary["max"])]


def sensitivity_view(S: np.ndarray, title: str = "Region sensitivity to the tolerance"
                     ) -> View:
    rows = regions.sensitivity_table(S)
    return View("distance.sensitivity", title, [
        ("bulk count", np.array([r["tol"] for r in rows]), np.array([r["bulk"] for r in rows]))],
        logx=True, xlabel="tol", ylabel="bulk count",
        columns=["tol", "chaotic", "bulk", "stable", "bulk %", "bulk indices", "elasticity"],
        rows=[[f"{r['tol']:g}", fmt(r["chaotic"]), fmt(r["bulk"]), fmt(r["stable"]),
               f"{100 * r['bulk_fraction']:.1f}", f"{r['bulk_start']}..{r['bulk_stop'] - 1}"
               if r["bulk"] else "-", fmt(r["elasticity"], ".3f")] for r in rows],
        note=f"rule: {regions.RULE}; elasticity = d ln(bulk count) / d ln(tol) from the row "
             "above (near 0: a plateau; near 1: no plateau at that scale)")


def matfree_tables(r: dict) -> tuple[View, View]:
    """The two tables of a matrix-free spectrum (matfree.json): the top k singular values, and
    the bulk-size estimates with their error bars."""
    top = r["top"]
    tv = View("matfree.top", f"Largest {top['k']} singular values of J (scipy svds, "
              f"{top['solver']}, tol {top.get('tol', 1e-8):g}; J never formed)", [],
              columns=["i", "s_i", "|s_i - 1|"],
              rows=[[str(i), f"{v:.9g}", fmt(abs(v - 1))] for i, v in enumerate(top["s"])],
              note=f"{top['jvp_vectors']} J v and {top['vjp_vectors']} J^T u products in "
                   f"{top['seconds']:.1f} s ({r['dtype']}, P = {r['P']:,}, {r['steps']} steps, "
                   + {"replay": "reverse pass by replay over the kept trajectory",
                      "replay, segments": "reverse pass by replay, primal states in "
                                          f"segments of {r['segment']}"
                      }.get(r.get("stats", {}).get("reverse"),
                            f"reverse pass by autograd in segments of {r['segment']}") + ")")
    b = r["bulk"]
    bv = View("matfree.bulk", "Bulk size: singular values in [1 - tau, 1 + tau], estimated",
              [], columns=["tau", "estimate", "error bar", "of P", "probes' s.e.",
                           "quadrature bounds"],
              rows=[[f"{e['tol']:g}", f"{e['count']:.0f}",
                     f"{e['lower']:.0f} .. {e['upper']:.0f}"
                     + (" (not resolved)" if e["upper"] - e["lower"] > r["P"] / 2 else ""),
                     f"{100 * e['count'] / r['P']:.1f}%", f"{e['stderr']:.1f}",
                     f"{e['quadrature'][0]:.0f} .. {e['quadrature'][1]:.0f}"]
                    for e in b["estimates"]],
              note="stochastic Lanczos quadrature on J^T J"
                   + (f" with the top {b['deflated']} right singular vectors projected out "
                      "(their values counted exactly)" if b.get("deflated") else "")
                   + f": {b['probes']} probes x "
                   f"{b['lanczos_steps']} Lanczos steps, {b['seconds']:.1f} s; the error bar is "
                   "the quadrature's rigorous bounds (Chebyshev-Markov-Stieltjes) widened by "
                   "2 standard errors of the probes; a bar wider than P/2 is marked not "
                   "resolved: the window (width 2 tau) is narrow inside a spectrum that reaches "
                   "s_1, and the bounds close in only after many Lanczos steps "
                   "(spectrum.lanczos_steps)")
    return tv, bv


def matfree_density_view(r: dict) -> View | None:
    """The spectral density of J's singular values (matfree.json's bulk quadrature, per decade
    of s) over a log axis of s; None for a matfree.json written before it was recorded."""
    d = r.get("bulk", {}).get("density")
    if not d:
        return None
    tols = ", ".join(f"[{1 - e['tol']:g}, {1 + e['tol']:g}]" for e in r["bulk"]["estimates"])
    return View("matfree.density", "Spectral density of J's singular values (estimated)",
                [("density", 10.0 ** np.asarray(d["log10_s"]), np.asarray(d["per_decade"]))],
                logx=True, xlabel="s", ylabel="share of the P values per decade of s",
                note=f"the bulk quadrature's nodes and weights, each smoothed over "
                     f"{d['width']:g} decades (no more products); the bulk windows {tols} are "
                     "narrower than the smoothing: their counts are the table above, the curve "
                     "shows where the rest of the spectrum lies")


def distance_views(r: dict, session) -> list[View]:
    d = _load(session, "analyses/distance_abs.npy")
    a = _load(session, "analyses/distance_alignment.npy")
    S = session.load_npy("svd/S.npy")
    out = []
    if d is not None:
        idx = np.arange(len(d))
        out.append(View("distance", "|s_i - 1| by index", [("|s - 1|", idx, d)], logy=True,
                        xint=True, xlabel="index i", ylabel="|s_i - 1|",
                        columns=["region", "count", "indices", "median |s-1|", "u.v mean",
                                 "u.v min", "subspace cos mean"],
                        rows=[[k, fmt(v["count"]), f"{v['start']}..{v['stop'] - 1}"
                               if v["count"] else "-", fmt(v["dist_median"]),
                               fmt(v["align_mean"]), fmt(v["align_min"]),
                               fmt(v.get("subspace_cos_mean"))]
                              for k, v in r["regions"].items()],
                        note=f"regions by the rule at tol = {r['tol']:g}; min |s - 1| = "
                             f"{fmt(r['min_dist'])} at index {r['argmin_dist']}; counts below "
                             + ", ".join(f"{k}: {v}" for k, v in r["count_below"].items())))
    if a is not None:
        idx = np.arange(len(a))
        t = r["tail"]
        out.append(View("distance.alignment", "Alignment u_i . v_i by index",
                        [("u.v", idx, a)], xint=True, xlabel="index i", ylabel="u_i . v_i",
                        columns=["indices", "s range", "median |s-1|", "u.v mean"],
                        rows=[[f"{q['start']}..{q['stop'] - 1}",
                               f"{q['s_min']:.4g} .. {q['s_max']:.4g}", fmt(q["dist_median"]),
                               fmt(q["align_mean"])] for q in r["deciles"]],
                        note=f"tail (indices >= {t['start']}): mean u.v = {fmt(t['align_mean'])}, "
                             f"{100 * (t['fraction_within_0.2'] or 0):.0f}% within +-0.2"))
    out.append(sensitivity_view(S))
    return out


def init_change_views(r: dict, session) -> list[View]:
    c = _load(session, "analyses/init_change.npy")
    series = [("|v_i . (theta_T - theta_0)|", np.arange(len(c)), c)] if c is not None else []
    return [View("init_change", "Change from initialisation along v_i", series, logy=True,
                 xint=True, xlabel="index i", ylabel="|v_i . (theta_T - theta_0)|",
                 columns=["region", "count", "median", "geo. mean", "min", "max",
                          "share of |dtheta|^2"],
                 rows=[_regions_row(k, v) + [fmt(r["energy_share"][k])]
                       for k, v in r["regions"].items()],
                 note=f"||theta_T - theta_0|| = {fmt(r['norm_total'])}; regions at tol = "
                      f"{r['tol']:g}")]


def perturbation_views(r: dict, session) -> list[View]:
    out = []
    tol = (session.spectrum() or {}).get("bulk_tol") or regions.DEFAULT_TOL
    for d in r["directions"]:
        eps = np.array([row["eps"] for row in d["rows"]])
        i, s = d["index"], float(d["s"])
        region = next(k for k, m in regions.masks(np.array([s]), tol).items() if m[0])
        asked = str(d["direction"])
        which = region if asked in (str(i), region) else f"{asked}, {region}"
        out.append(View(
            f"perturbation.{i}", f"Retraining from theta_0 + eps v_{i} ({which}, s = {s:.6g}): "
                                 f"response along u_{i} vs eps",
            [("|u.delta|", eps, np.array([abs(row["response"]) for row in d["rows"]])),
             ("s eps (linear)", eps, np.array([abs(row["linear"]) for row in d["rows"]])),
             ("|complement|", eps, np.array([row["complement"] for row in d["rows"]])),
             ("test loss", eps, np.array([row["test_loss"] for row in d["rows"]]))],
            logx=True, logy=True, xlabel="stimulus eps", ylabel="response",
            columns=["eps", "u.delta", "s eps", "rel. error", "|complement|", "test loss",
                     "test acc"],
            rows=[[f"{row['eps']:.3g}", fmt(row["response"], ".6g"), fmt(row["linear"], ".6g"),
                   fmt(row["rel_error"], ".2e"), fmt(row["complement"], ".3e"),
                   fmt(row["test_loss"]), fmt(row["test_acc"], ".3f")] for row in d["rows"]],
            note=f"linear (within 10%) up to eps = {fmt(d['linear_up_to'])}; unperturbed test "
                 f"loss {fmt(r['base_test_loss'])}; u_i . v_i = {d['align']:.4f}"))
    return out


def ood_views(r: dict, session) -> list[View]:
    kl = _load(session, "analyses/ood_kl.npy")
    idx = _load(session, "analyses/ood_index.npy")
    series = [] if kl is None else [(name, idx, kl[j]) for j, name in enumerate(r["sets"])]
    rows = []
    for name in r["sets"]:
        ps = r["per_set"][name]
        rows.append([name] + [fmt(ps["regions"][g]["median"]) for g in regions.REGIONS] +
                    [fmt(ps["median"]), fmt(ps["max"])])
    return [View("ood", "Max KL(p_T || p_perturbed) after theta_T + v_i", series, logy=True,
                 xint=True, xlabel="index i", ylabel="max KL over inputs (nats)",
                 columns=["inputs", "chaotic median", "bulk median", "stable median",
                          "all median", "max"], rows=rows,
                 note=f"{r['n_directions']} directions (stride {r['stride']}), step "
                      f"{r['scale']:g}, {r['precision']}; regions at tol = {r['tol']:g}")]


def restricted_views(r: dict, session) -> list[View]:
    ks = np.array(r["ks"])
    series = [(f, ks, np.array(r["test_loss"][f], dtype=np.float64)) for f in r["families"]]
    rows = [[str(k)] + [fmt(r["test_loss"][f][i]) for f in r["families"]]
            for i, k in enumerate(r["ks"])]
    return [View("restricted", "Test loss of training restricted to k directions", series,
                 xint=True, xlabel="k (subspace dimension)", ylabel="test loss (nats)",
                 columns=["k"] + [f"{f} loss" for f in r["families"]], rows=rows,
                 note=f"unrestricted training: test loss {fmt(r['full_test_loss'])}, accuracy "
                      f"{fmt(r['full_test_acc'], '.3f')}; bulk = the k closest to s = 1, "
                      "complement = the k farthest")]


def param_function_views(r: dict, session) -> list[View]:
    ks = np.array(r["ks"])
    series, rows = [], []
    sets = r["inputs"]
    for name in sets:
        sw = r["sets"][name]["sweep"]
        series.append((f"bulk vs null ({name})", ks, np.array([w["bulk"] for w in sw])))
        series.append((f"random ({name})", ks, np.array([w["random"] for w in sw])))
    for i, k in enumerate(r["ks"]):
        row = [str(k)]
        for name in sets:
            w = r["sets"][name]["sweep"][i]
            row += [fmt(w["bulk"], ".3f"), fmt(w["random"], ".3f")]
        rows.append(row)
    cols = ["k"] + [c for name in sets for c in (f"{name}: bulk", f"{name}: random")]
    info = "; ".join(f"{name}: {v['outputs']} outputs, rank {v['rank']}, null space "
                     f"{v['null_dim']}" for name, v in r["sets"].items())
    return [View("param_function", "Bulk vs null space of the parameter-function Jacobian",
                 series, xint=True, xlabel="k (bulk directions)",
                 ylabel="mean principal-angle cosine", columns=cols, rows=rows,
                 note=f"{info}; null space: sigma < {r['rtol']:g} sigma_max")]


VIEWS = {"distance": distance_views, "init_change": init_change_views,
         "perturbation": perturbation_views, "ood": ood_views, "restricted": restricted_views,
         "param_function": param_function_views}


def session_views(session) -> list[tuple[str, str, list[View]]]:
    """(name, title, views) for every analysis whose result the session holds, in run order."""
    if isinstance(session, (str, Path)):
        session = Session(session)
    out = []
    for name in ANALYSES:
        if not session.has(f"analyses/{name}.json"):
            continue
        try:
            r = session.read_json(f"analyses/{name}.json")
            views = VIEWS[name](r, session)
        except (ValueError, KeyError, OSError) as e:  # a result from an older layout
            views = [View(name, ANALYSES[name].title, [], note=f"cannot show: {e}")]
        out.append((name, ANALYSES[name].title, views))
    return out


# --------------------------------------------------------------------------------------------
# the spectrum through training (jacobian.snapshots)

MAX_OVERLAID = 8  # spectra overlaid in one plot (spread over the snapshots, the last included)


def overlaid(items: list, n: int = MAX_OVERLAID) -> list:
    """At most ``n`` of ``items``, evenly spread, the first and the last included."""
    if len(items) <= n:
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def snapshot_views(session) -> list[View]:
    """The spectrum through training of a session with ``jacobian.snapshots``: the spectra of
    J_{0->t} overlaid, the region fractions, s_1 and the bulk alignment against the step t,
    with the table of
    ``snapshots/summary.json`` (one row per step, the final J's last); [] without snapshots."""
    if isinstance(session, (str, Path)):
        session = Session(session)
    if not session.has("snapshots/summary.json"):
        return []
    tt = session.read_json("snapshots/summary.json")
    rows, tol = tt["rows"], tt["bulk_tol"]
    last = rows[-1]["step"] if rows else None
    spectra = []
    for r in rows:
        rel = ("svd/S.npy" if r["step"] == last
               else f"snapshots/step_{r['step']:06d}/svd/S.npy")
        if session.has(rel):
            spectra.append((f"step {r['step']}", session.load_npy(rel).astype(np.float64)))
    steps = np.array([r["step"] for r in rows], dtype=np.float64)
    table = [[str(r["step"]), fmt(r["lr"], ".3g"), fmt(r["s_max"], ".6g")]
             + [f"{r['counts'][k]} ({100 * r['fractions'][k]:.1f}%)" for k in regions.REGIONS]
             + [fmt(r["bulk_align_mean"], ".6f"), fmt(r["bulk_subspace_cos"], ".6f")]
             for r in rows]
    note = (f"J_(0->t) = d theta_t / d theta_0 after step t, from the same forward pass as J "
            f"(the last row is the run's J); regions at bulk_tol = {tol:g}; bulk u.v: mean "
            "u_i . v_i over the bulk; bulk cos: mean cosine of the principal angles between "
            "its left and right singular subspaces")
    shown = overlaid(spectra)
    return [
        View("snapshots.spectra", "Singular values of J_(0->t) through training",
             [(n, np.arange(len(S)), S) for n, S in shown], logy=True, xint=True,
             xlabel="index i", ylabel="s_i",
             note="" if len(shown) == len(spectra) else
             f"{len(shown)} of the {len(spectra)} snapshots overlaid"),
        View("snapshots.regions", "Regions through training",
             [(k, steps, np.array([r["fractions"][k] for r in rows])) for k in regions.REGIONS],
             xint=True, xlabel="step t", ylabel="fraction of P",
             columns=["step", "lr", "s_1"] + [f"{k} (tol={tol:g})" for k in regions.REGIONS]
             + ["bulk u.v", "bulk cos"], rows=table, note=note),
        View("snapshots.s_max", "s_1 of J_(0->t) through training",
             [("s_1", steps, np.array([r["s_max"] for r in rows]))], logy=True, xint=True,
             xlabel="step t", ylabel="s_1"),
        View("snapshots.align", "Bulk alignment through training",
             [(label, steps[ok], np.array([r[key] for r in rows], dtype=np.float64)[ok])
              for label, key in (("bulk u.v", "bulk_align_mean"),
                                 ("bulk cos", "bulk_subspace_cos"))
              for ok in [np.array([r[key] is not None for r in rows], dtype=bool)]],
             xint=True, xlabel="step t", ylabel="mean over the bulk",
             note="" if all(r["bulk_align_mean"] is not None for r in rows) else
             "steps without a bulk (or without singular vectors) are left out"),
    ]


# --------------------------------------------------------------------------------------------
# sweeps


def axis_number(v) -> float | None:
    """A swept value as a number on a plot's x axis: a number, a one-element list (a width),
    else None (categorical)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (int, float)):
        return float(v[0])
    return None


def value_label(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, list) else fmt(v, "g") if isinstance(
        v, float) else str(v)


def against_key(points: list[dict], key: str, metric: str, label: str) -> View | None:
    """``metric`` of the finished points against the swept ``key``: one series per combination
    of the other swept keys; None when no point has it. Values that are not all numbers (an
    optimizer's name) are categories, in the sweep's order, one x tick each."""
    done = [p for p in points if p.get(metric) is not None and key in p["values"]]
    if not done:
        return None
    xs = {id(p): axis_number(p["values"][key]) for p in done}
    categories: list[str] = []
    if any(x is None for x in xs.values()):
        for p in points:
            if key in p["values"] and value_label(p["values"][key]) not in categories:
                categories.append(value_label(p["values"][key]))
        xs = {id(p): float(categories.index(value_label(p["values"][key]))) for p in done}
    groups: dict[str, list[dict]] = {}
    for p in done:
        rest = ", ".join(f"{k.rsplit('.', 1)[-1]}={value_label(v)}"
                         for k, v in p["values"].items() if k != key)
        groups.setdefault(rest or label, []).append(p)
    series = []
    for name, ps in groups.items():
        ps = sorted(ps, key=lambda p: xs[id(p)])
        series.append((name, np.array([xs[id(p)] for p in ps]),
                       np.array([p[metric] for p in ps], dtype=np.float64)))
    xv = [x for x in xs.values() if x > 0]
    logx = not categories and len(xv) == len(xs) and max(xv) / min(xv) >= 8
    short = key.rsplit(".", 1)[-1]
    return View(f"sweep.{metric}.{key}", f"{label} against {key}", series, logx=logx,
                logy=metric == "s_max", xlabel=short + (" (width)" if isinstance(
                    done[0]["values"][key], list) and not categories else ""), ylabel=label,
                xcategories=categories)


def sweep_views(sweep_dir) -> list[tuple[str, str, list[View]]]:
    """(name, title, views) of a sweep: the comparison table (one row per point), the bulk
    fraction and s_1 against each swept key, the overlaid spectra and |s - 1| with the bulk size
    per tolerance, and the bulk overlap with the reference point (``overlap = true``)."""
    sw = Sweep(sweep_dir)
    m = sw.manifest()
    comp = sw.comparison() or {}
    tol = comp.get("tol", regions.DEFAULT_TOL)
    rows_by = {r["name"]: r for r in comp.get("points", [])}
    points = [rows_by.get(p["name"]) or point_row(p, sw.session(p["name"]), tol)
              for p in m["points"]]
    axes = m.get("axes") or []
    table = []
    for p in points:
        c, f = p.get("counts"), p.get("fractions")
        what = ", ".join(f"{k.rsplit('.', 1)[-1]}={value_label(v)}"
                         for k, v in p["values"].items()) or " ".join(p["set"]) or \
            "(the preset)"
        table.append([p["name"], what, p.get("status") or "-", fmt(p.get("P")),
                      fmt(p.get("steps")), fmt(p.get("test_acc"), ".3f"),
                      fmt(p.get("s_max"), ".4g")]
                     + (["-"] * 3 if c is None else
                        [f"{c[k]} ({100 * f[k]:.1f}%)" for k in regions.REGIONS])
                     + [fmt(p.get("bulk_align_mean"), ".4f"),
                        fmt(p.get("seconds"), ".0f")])
    note = (f"regions at bulk_tol = {tol:g} (the sweep preset's spectrum.bulk_tol); bulk u.v: "
            "mean u_i . v_i over the bulk; time: the point's stages, in seconds")
    out = [("points", "Points", [View("sweep.points", "Points", [], columns=[
        "point", "values", "status", "P", "steps", "test acc", "s_1"]
        + [f"{k} (tol={tol:g})" for k in regions.REGIONS] + ["bulk u.v", "time (s)"],
        rows=table, note=note)])]
    trends = []
    for p in points:
        if p.get("fractions"):
            p["bulk_fraction"] = p["fractions"]["bulk"]
    for key in axes:
        for metric, label in (("bulk_fraction", "bulk fraction"), ("s_max", "s_1")):
            v = against_key(points, key, metric, label)
            if v is not None:
                trends.append(v)
    if trends:  # numeric axes first (the Compare pane shows the first two)
        trends.sort(key=lambda v: bool(v.xcategories))
        out.append(("trends", "Against the swept keys", trends))

    spectra = []
    for p in m["points"]:
        s = sw.session(p["name"])
        if s.has("svd/S.npy"):
            spectra.append((p["name"], s.load_npy("svd/S.npy").astype(np.float64)))
    if spectra:
        tols = list(regions.SENSITIVITY_TOLS)
        sens = [[n] + [f"{t['bulk']} ({100 * t['bulk_fraction']:.0f}%)"
                       for t in regions.sensitivity_table(S, tols)] for n, S in spectra]
        shown = overlaid(spectra)
        more = "" if len(shown) == len(spectra) else \
            f"{len(shown)} of the {len(spectra)} points overlaid; "
        out.append(("spectra", "Spectra", [
            View("sweep.spectra", "Singular values of J, every point",
                 [(n, np.arange(len(S)), S) for n, S in shown], logy=True, xint=True,
                 xlabel="index i", ylabel="s_i", note=more.rstrip("; ")),
            View("sweep.distance", "|s_i - 1|, every point",
                 [(n, np.arange(len(S)), np.abs(S - 1)) for n, S in shown], logy=True,
                 xint=True, xlabel="index i", ylabel="|s_i - 1|",
                 columns=["point"] + [f"bulk, tol={t:g}" for t in tols], rows=sens,
                 note=f"{more}rule: {regions.RULE}")]))

    ov = comp.get("overlap")
    if ov and ov.get("runs"):
        ks = np.array(ov["ks"])
        series = [(n, ks, np.array(c)) for n, c in ov["runs"].items()]
        series.append(("random", ks, np.array(ov["random"])))
        rows = [[str(k)] + [f"{ov['runs'][n][i]:.3f}" for n in ov["runs"]] +
                [f"{ov['random'][i]:.3f}"] for i, k in enumerate(ov["ks"])]
        note = ("mean cosine of the principal angles between the k right singular vectors "
                "closest to s = 1 of each point and of the reference point; random: the "
                "expected value for random k-dimensional subspaces of R^P (sampled)")
        if ov.get("skipped"):
            note += "; not compared (another P): " + ", ".join(ov["skipped"])
        out.append(("overlap", "Bulk-subspace overlap", [
            View("sweep.overlap", f"Bulk overlap with {ov['reference']} (the k directions "
                 "closest to s = 1)", series, xint=True, xlabel="k",
                 ylabel="mean principal-angle cosine",
                 columns=["k"] + list(ov["runs"]) + ["random"], rows=rows, note=note)]))
    return out


def content(path) -> list[dict]:
    """Everything the Analyses pane shows for a session or a sweep directory, as plain data:
    ``[{"name", "title", "views": [{"key", "title", "series": {label: (x, y)}, "logx",
    "logy", "columns", "rows", "note"}]}]`` (the TUI draws it; tests assert on it)."""
    found = sweep_views(path) if is_sweep(path) else session_views(path)
    return [{"name": name, "title": title,
             "views": [{"key": v.key, "title": v.title, "logx": v.logx, "logy": v.logy,
                        "series": {label: (np.asarray(x), np.asarray(y))
                                   for label, x, y in v.series},
                        "columns": list(v.columns), "rows": [list(r) for r in v.rows],
                        "note": v.note, "view": v} for v in views]}
            for name, title, views in found]
