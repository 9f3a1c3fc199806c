"""The analyses in the markdown report, and the paper's findings checked against a run.

    render_analyses_markdown(session) -> str     every analysis: ASCII plot(s) and table(s),
                                                 plus the region sensitivity table
    findings_table(session) -> list[dict]        findings 1-10 of the paper: what it says, what
                                                 this run measured, agrees yes / no / partly
    render_findings_markdown(session) -> str     that table as markdown
    analysis_headline(session, name) -> str      one analysis's finding in a line (tjac run)
    render_sweep_markdown(sweep_dir) -> str      the report of a sweep (several points)
    write_sweep_report(sweep_dir) -> Path        writes it as <sweep>/report.md

The verdicts are mechanical: each finding states the criterion it was judged by next to the
numbers, so a reader can disagree with the criterion without having to recompute anything. The
paper's figures are approximate (read off plots), so the criteria test the qualitative claim
(an ordering, a ratio, a range of a factor of a few), not the exact values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import regions
from ..files import atomic_write
from ..session import Session
from ..sweep import Sweep, describe_sweep, sweep_of
from .markdown import code_block, md_table
from .views import View, fmt, make_plot, sensitivity_view, session_views, sweep_views

PLOT_WIDTH = 100
PLOT_HEIGHT = 18


def as_session(s) -> Session:
    return s if isinstance(s, Session) else Session(s)


def view_markdown(view: View, ascii_only: bool = True, width: int = PLOT_WIDTH,
                  height: int = PLOT_HEIGHT, heading: str | None = "####") -> str:
    parts = [f"{heading} {view.title}", ""] if heading else []
    if view.series:
        parts += [code_block(make_plot(view, width, height, ascii=ascii_only,
                                       color=False).text), ""]
    if view.rows:
        parts += [md_table(view.columns, view.rows), ""]
    if view.note:
        parts += [f"_{view.note}_", ""]
    return "\n".join(parts)


def render_analyses_markdown(session, ascii_only: bool = True, width: int = PLOT_WIDTH,
                             height: int = PLOT_HEIGHT) -> str:
    """The "Analyses" and "Findings" sections of a session's report (markdown)."""
    s = as_session(session)
    parts = ["## Analyses", ""]
    found = session_views(s)
    if not found:
        parts += ["_No analysis has finished in this session (add `[analysis.NAME]` sections to "
                  "the preset)._", ""]
    for name, title, views in found:
        parts += [f"### {title} (`{name}`)", ""]
        for v in views:
            parts.append(view_markdown(v, ascii_only, width, height))
    if s.has("svd/S.npy") and "distance" not in [n for n, _, _ in found]:
        parts += ["### Region sensitivity", "",
                  view_markdown(sensitivity_view(s.load_npy("svd/S.npy")), ascii_only, width,
                                height)]
    rows = findings_table(s)
    if rows:
        parts += [render_findings_markdown(s, rows)]
    return "\n".join(parts).rstrip() + "\n"


def render_findings_markdown(session, rows: list[dict] | None = None) -> str:
    rows = findings_table(session) if rows is None else rows
    parts = ["## The paper's findings, checked", "",
             md_table(["#", "experiment", "the paper", "this run", "agrees"],
                      [[r["n"], r["experiment"], r["paper"], r["measured"], r["agrees"]]
                       for r in rows]), ""]
    crit = [f"- **{r['n']}**: {r['criterion']}" for r in rows if r.get("criterion")]
    if crit:
        parts += ["Criteria:", ""] + crit + [""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# findings


PAPER = {
    1: ("Spectrum of J, sorted",
        "s_1 ~20.5; above 1 for the first ~600-700 indices, a plateau at 1 for ~60% of P, "
        "then below 1 down to ~0"),
    2: ("abs(s_i - 1), log scale", "dips below 1e-7 (around index ~2000 of 4810)"),
    3: ("alignment u_i . v_i", "~1.0 in the bulk, ~0.8-0.95 chaotic, ~0 (within +-0.2) past "
                               "index ~4200"),
    4: ("perturb theta_0 along v_i, retrain", "bulk: response = s eps over six decades, "
                                              "complement ~1e-6, test loss flat; v_1: linear "
                                              "only to eps ~0.1-1, test loss ~7 at 1e3"),
    5: ("theta_T + v_i, max KL on input sets", "train KL ~1e-6 in the bulk (~1e-1 chaotic, "
                                               "~0.2-0.5 stable); noise and inverted inputs "
                                               "~1e-2..1 everywhere"),
    6: ("abs(V^T (theta_T - theta_0))", "smallest (~1e-4) in the bulk"),
    7: ("shuffled labels / white-noise inputs", "shuffled labels: spectrum close to normal; "
                                                "white noise: a much narrower bulk"),
    8: ("bulk overlap between runs vs random", "bulk largely shared across seeds and label "
                                               "shuffles, much less with white noise"),
    9: ("parameter-function Jacobian null space vs bulk", "mean cosine 0.32 at k=100, 0.71 at "
                                                          "~420, 0.88 at ~740; white-noise "
                                                          "inputs: no better than random"),
    10: ("training restricted to k directions", "bulk only: ~2.5 nats until k ~1000; "
                                                "complement: ~0.2 at k=100; top-k ~0.2 at 100; "
                                                "bottom-k 2.35 at 100, ~0.2 by ~600"),
}


def _verdict(checks: list[bool]) -> str:
    if not checks:
        return "n/a"
    if all(checks):
        return "yes"
    return "partly" if any(checks) else "no"


def _row(n: int, measured: str, checks: list[bool] | None, criterion: str,
         numbers: dict | None = None) -> dict:
    exp, paper = PAPER[n]
    return {"n": n, "experiment": exp, "paper": paper, "measured": measured,
            "agrees": "not run" if checks is None else _verdict(checks),
            "criterion": criterion, "numbers": numbers or {}}


def _read(s: Session, name: str) -> dict | None:
    rel = f"analyses/{name}.json"
    return s.read_json(rel) if s.has(rel) else None


def session_tol(s: Session) -> float:
    """The region tolerance of a session: its spectrum's (the config's spectrum.bulk_tol)."""
    summary = s.spectrum()
    if summary is not None and summary.get("bulk_tol"):
        return float(summary["bulk_tol"])
    return s.config().spectrum.bulk_tol


def findings_table(session) -> list[dict]:
    """Findings 1-10 for one session (7 and 8 from its sweep, when it belongs to one)."""
    s = as_session(session)
    if not s.has("svd/S.npy"):
        return []
    S = s.load_npy("svd/S.npy").astype(np.float64)
    return findings_rows(S, session_tol(s), {n: _read(s, n) for n in (
        "distance", "perturbation", "ood", "init_change", "param_function", "restricted")},
        _sweep_comparison(s))


# the finding each analysis's result gives (finding 9 also needs P)
_FINDING_OF = {"distance": lambda r, P: _f3(r), "perturbation": lambda r, P: _f4(r),
               "ood": lambda r, P: _f5(r), "init_change": lambda r, P: _f6(r),
               "param_function": lambda r, P: _f9(r, P), "restricted": lambda r, P: _f10(r)}


def analysis_headline(session, name: str) -> str | None:
    """What an analysis measured, in one line: the "measured" text of the paper's finding its
    result gives (``tjac run`` ends with it), with the finding's verdict; None for an analysis
    without a finding (a plug-in) or without a result."""
    s = as_session(session)
    result = _read(s, name) if name in _FINDING_OF else None
    if result is None:
        return None
    P = len(s.load_npy("svd/S.npy")) if s.has("svd/S.npy") else 0
    row = _FINDING_OF[name](result, P)
    return f"{row['measured']} (finding {row['n']}: {row['agrees']})"


def _sweep_comparison(s: Session) -> dict | None:
    sw = sweep_of(s.path)
    return Sweep(sw).comparison() if sw is not None else None


def findings_rows(S: np.ndarray, tol: float, results: dict, cross: dict | None) -> list[dict]:
    """Findings 1-10 from the singular values, the region tolerance, the analyses' results
    ({name: result or None}) and a sweep's comparison (or None): plain data in, verdicts
    out (the tests feed it synthetic results)."""
    P = len(S)
    rows = [_f1(S, tol), _f2(S, tol), _f3(results.get("distance")),
            _f4(results.get("perturbation")), _f5(results.get("ood")),
            _f6(results.get("init_change"))]
    rows += [_f7(cross), _f8(cross), _f9(results.get("param_function"), P),
             _f10(results.get("restricted"))]
    return rows


def _f1(S: np.ndarray, tol: float) -> dict:
    P = len(S)
    c = regions.counts(S, tol)
    c2 = regions.counts(S, 1e-2)
    measured = (f"s_1 = {S[0]:.4g}; at tol = {tol:g}: chaotic {c['chaotic']}, bulk {c['bulk']} "
                f"({100 * c['bulk'] / P:.0f}%), stable {c['stable']}; at tol = 1e-2: bulk "
                f"{c2['bulk']} ({100 * c2['bulk'] / P:.0f}%); s_min = {S[-1]:.3g}")
    checks = [10 <= S[0] <= 40, all(v > 0 for v in c.values()),
              c2["bulk"] / P >= 0.4, S[-1] < 0.1]
    return _row(1, measured, checks,
                f"s_1 in [10, 40]; all three regions non-empty at tol = {tol:g}; bulk >= 40% of "
                "P at tol = 1e-2; s_min < 0.1",
                {"s1": float(S[0]), "counts": c, "counts_1e-2": c2, "s_min": float(S[-1])})


def _f2(S: np.ndarray, tol: float) -> dict:
    d = regions.distance(S)
    nontriv = d > regions.EXACT
    unity = regions.unity_counts(S)
    below = int(np.sum(nontriv & (d < 1e-7)))
    i = int(np.argmin(np.where(nontriv, d, np.inf))) if nontriv.any() else None
    sl = regions.slices(S, tol)["bulk"]
    measured = (f"{below} values with {regions.EXACT:g} < |s-1| < 1e-7 (smallest {d[i]:.2g} at "
                f"index {i}); {unity['within_exact']} with |s-1| <= {regions.EXACT:g} "
                f"(directions training never touches), {unity['exactly_1']} of them exactly 1"
                ) if i is not None else "every singular value is within 1e-12 of 1"
    checks = [below > 0, i is not None and sl.start <= i < sl.stop]
    return _row(2, measured, checks,
                "some non-trivial |s - 1| < 1e-7 (excluding s = 1 to machine precision) and its "
                "minimum lies in the bulk range",
                {"below_1e-7": below, **unity, "argmin": i})


def _f3(dist: dict | None) -> dict:
    if dist is None:
        return _row(3, "-", None, "needs [analysis.distance]")
    r = dist["regions"]
    t = dist["tail"]
    bulk, ch = r["bulk"].get("align_mean"), r["chaotic"].get("align_mean")
    measured = (f"mean u.v: bulk {fmt(bulk)}, chaotic {fmt(ch)}; last {t['count']} indices: "
                f"mean {fmt(t['align_mean'])}, {100 * (t['fraction_within_0.2'] or 0):.0f}% "
                "within +-0.2")
    checks = [bulk is not None and bulk >= 0.99,
              ch is not None and 0.7 <= ch <= 0.97,
              (t["fraction_within_0.2"] or 0) >= 0.5]
    return _row(3, measured, checks,
                "bulk mean u.v >= 0.99; chaotic mean in [0.7, 0.97]; >= 50% of the last 12.5% "
                "of indices within +-0.2", {"bulk": bulk, "chaotic": ch, "tail": t})


def _f4(pert: dict | None) -> dict:
    if pert is None:
        return _row(4, "-", None, "needs [analysis.perturbation]")
    dirs = pert["directions"]
    bulk = next((d for d in dirs if d["direction"] == "bulk"), None)
    top = next((d for d in dirs if d["index"] == 0), None)
    parts, checks = [], []
    base = pert["base_test_loss"]
    if bulk is not None:
        rows = bulk["rows"]
        comp = max(r["complement"] for r in rows[:-1]) if len(rows) > 1 else rows[0]["complement"]
        dl = max(abs(r["test_loss"] - base) for r in rows)
        parts.append(f"bulk v_{bulk['index']} (s = {bulk['s']:.6g}): linear up to eps = "
                     f"{fmt(bulk['linear_up_to'])}, complement <= {comp:.2g} below the largest "
                     f"eps, test loss moves <= {dl:.2g}")
        checks += [bulk["linear_up_to"] is not None and bulk["linear_up_to"] >= 0.99 * pert[
            "eps"][-1], comp <= 1e-4, dl <= 0.01 * max(base, 1e-3) + 1e-4]
    if top is not None:
        last = top["rows"][-1]
        parts.append(f"v_1 (s = {top['s']:.4g}): linear up to eps = {fmt(top['linear_up_to'])}, "
                     f"test loss {last['test_loss']:.3g} at eps = {last['eps']:.3g}")
        checks += [top["linear_up_to"] is None or top["linear_up_to"] <= 1.0,
                   last["test_loss"] >= 3 * base]
    for d in dirs:
        if d.get("exact_unity") and d is not bulk:
            comp = max(r["complement"] for r in d["rows"])
            parts.append(f"v_{d['index']} (s = 1 to machine precision: a direction training "
                         f"never touches): complement <= {comp:.2g} at every eps")
    return _row(4, "; ".join(parts) or "-", checks or None,
                "bulk: within 10% of s eps up to the largest eps, complement <= 1e-4, test loss "
                "within 1%; v_1: nonlinear by eps = 1 and test loss >= 3x the trained one at "
                "the largest eps")


def _f5(o: dict | None) -> dict:
    if o is None:
        return _row(5, "-", None, "needs [analysis.ood]")
    ps = o["per_set"]

    def med(name, region):
        return ps.get(name, {}).get("regions", {}).get(region, {}).get("median")

    tb, tc, ts = med("train", "bulk"), med("train", "chaotic"), med("train", "stable")
    nb, ib = med("gaussian_noise", "bulk"), med("inverted", "bulk")
    measured = (f"median max-KL on train: bulk {fmt(tb, '.2g')}, chaotic {fmt(tc, '.2g')}, "
                f"stable {fmt(ts, '.2g')}; bulk on noise {fmt(nb, '.2g')}, inverted "
                f"{fmt(ib, '.2g')}")
    checks = []
    if None not in (tb, tc, ts):
        checks.append(tb * 30 <= min(tc, ts))
    if tb is not None and nb is not None:
        checks.append(nb >= 100 * tb)
    if tb is not None and ib is not None:
        checks.append(ib >= 100 * tb)
    return _row(5, measured, checks or None,
                "train: bulk median <= chaotic and stable medians / 30; noise and inverted bulk "
                "medians >= 100x the train bulk median")


def _f6(ic: dict | None) -> dict:
    if ic is None:
        return _row(6, "-", None, "needs [analysis.init_change]")
    r = ic["regions"]
    b, c, s = r["bulk"]["median"], r["chaotic"]["median"], r["stable"]["median"]
    measured = (f"median |v.dtheta|: bulk {fmt(b, '.2g')}, chaotic {fmt(c, '.2g')}, stable "
                f"{fmt(s, '.2g')}; bulk share of |dtheta|^2 {ic['energy_share']['bulk']:.2g}")
    checks = None if None in (b, c, s) else [b * 3 <= min(c, s), b <= 1e-2]
    return _row(6, measured, checks,
                "bulk median <= 1/3 of the chaotic and stable medians, and <= 1e-2")


def _f7(cross: dict | None) -> dict:
    if cross is None:
        return _row(7, "needs a sweep (tjac sweep paper-digits-study)", None,
                    "from the sweep's points")
    points = [r for r in cross["points"] if r.get("counts")]
    ref = next((r for r in points if r["name"] == cross["reference"]), None)
    sh = next((r for r in points if r.get("variant") == "shuffled_labels"), None)
    wn = next((r for r in points if r.get("variant") == "white_noise"), None)
    if ref is None or (sh is None and wn is None):
        return _row(7, "the sweep has no shuffled-label or white-noise point", None, "")
    tol = cross.get("tol", regions.DEFAULT_TOL)
    b0 = ref["counts"]["bulk"]
    parts, checks = [f"bulk (tol={tol:g}) {ref['name']}: {b0}"], []
    if sh is not None:
        b = sh["counts"]["bulk"]
        parts.append(f"shuffled labels: {b}")
        checks.append(b0 > 0 and abs(b - b0) <= 0.3 * b0)
    if wn is not None:
        b = wn["counts"]["bulk"]
        parts.append(f"white noise: {b}")
        checks.append(b <= 0.5 * b0)
    return _row(7, ", ".join(parts), checks,
                "bulk count at the sweep's tol: shuffled labels within 30% of the reference "
                "point; white noise at most half of it")


def _f8(cross: dict | None) -> dict:
    if cross is None:
        return _row(8, "needs a sweep (tjac sweep paper-digits-study)", None,
                    "from the sweep's points")
    ov = cross.get("overlap") or {}
    ks = ov.get("ks") or []
    if not ks or not ov.get("runs"):
        return _row(8, "no overlap computed", None, "")
    j = len(ks) // 4  # a k well inside the sweep
    parts, checks, seeds, noise = [], [], [], []
    rnd = ov["random"][j]
    for name, curve in ov["runs"].items():
        parts.append(f"{name}: {curve[j]:.2f}")
        (noise if ov["variants"].get(name) == "white_noise" else seeds).append(curve[j])
    parts.append(f"random: {rnd:.2f}")
    if seeds:
        checks.append(min(seeds) >= rnd + 0.5 * (1 - rnd))
    if seeds and noise:
        checks.append(max(noise) < min(seeds))
    return _row(8, f"mean cosine at k = {ks[j]}: " + ", ".join(parts), checks or None,
                "at k = a quarter into the sweep, every seed / label-shuffle run closes at least "
                "half the gap between random and 1, and white noise overlaps less than all of them")


def _f9(pf: dict | None, P: int) -> dict:
    if pf is None:
        return _row(9, "-", None, "needs [analysis.param_function]")
    ks = pf["ks"]
    parts, checks = [], []
    for name, v in pf["sets"].items():
        sw = v["sweep"]
        pick = [sw[int(np.argmin([abs(w["k"] - k) for w in sw]))] for k in (100, 420, 740)]
        parts.append(f"{name} (null {v['null_dim']}): " + ", ".join(
            f"k={w['k']}: {w['bulk']:.2f} (random {w['random']:.2f})" for w in pick))
        gain = np.mean([w["bulk"] - w["random"] for w in sw])
        if name == "test":
            checks.append(gain >= 0.05)
        elif "noise" in name:
            checks.append(gain < 0.05)
    return _row(9, "; ".join(parts), checks or None,
                "held-out inputs: bulk-vs-null-space cosine above random by >= 0.05 on average "
                "over the sweep; noise inputs: less than 0.05 above random",
                {"ks": ks})


def _f10(rs: dict | None) -> dict:
    if rs is None:
        return _row(10, "-", None, "needs [analysis.restricted]")
    ks = rs["ks"]
    tl = rs["test_loss"]
    full = rs["full_test_loss"]
    i100 = int(np.argmin([abs(k - 100) for k in ks]))
    i1000 = int(np.argmin([abs(k - 1000) for k in ks]))
    parts, checks = [f"full training {full:.3g}"], []
    if "bulk" in tl:
        parts.append(f"bulk at k={ks[i1000]}: {tl['bulk'][i1000]:.3g}")
        checks.append(tl["bulk"][i1000] >= 5 * full)
    for fam in ("complement", "top", "bottom"):
        if fam in tl:
            parts.append(f"{fam} at k={ks[i100]}: {tl[fam][i100]:.3g}")
    if "complement" in tl:
        checks.append(tl["complement"][i100] <= 2 * full)
    if "top" in tl:
        checks.append(tl["top"][i100] <= 2 * full)
    if "bottom" in tl:
        checks.append(tl["bottom"][i100] >= 5 * full)
    return _row(10, "; ".join(parts), checks or None,
                "bulk-only at k ~1000: >= 5x the full test loss; complement and top-k at "
                "k ~100: <= 2x; bottom-k at k ~100: >= 5x")


# --------------------------------------------------------------------------------------------
# sweeps


def render_sweep_markdown(sweep_dir, ascii_only: bool = True, width: int = PLOT_WIDTH,
                          height: int = PLOT_HEIGHT) -> str:
    """The report of a sweep: the comparison table, the bulk fraction and s_1 against each
    swept key, overlaid spectra and |s - 1| with the region sensitivity of every point, the
    bulk-subspace overlap against random subspaces (``overlap = true``), and findings 7 and 8
    when the points include shuffled labels or white noise."""
    sw = Sweep(sweep_dir)
    m = sw.manifest()
    comp = sw.comparison()
    axes = ", ".join(f"`{a}`" for a in m.get("axes") or []) or "named points"
    parts = [f"# tjac sweep: {sw.path.name}", "",
             f"Sweep `{sw.path}`: preset `{m.get('preset')}`, {len(m['points'])} points "
             f"({axes}{', paired' if m.get('zip') else ''}), status "
             f"**{describe_sweep(sw.path)['status']}**, reference point "
             f"`{m.get('reference')}`.", ""]
    if comp is None:
        parts += ["_The comparison has not been computed: this report shows the points so "
                  "far._", ""]
    for name, title, views in sweep_views(sw.path):
        parts += [f"## {title}", ""]
        for v in views:
            same = len(views) == 1 and v.title == title
            parts.append(view_markdown(v, ascii_only, width, height,
                                       heading=None if same else "###"))
    ref = sw.session(m["reference"]) if m.get("reference") else None
    if comp is not None and ref is not None and ref.has("svd/S.npy"):
        rows = [r for r in findings_table(ref) if r["n"] in (7, 8) and r["agrees"] != "not run"]
        if rows:
            parts += ["## Findings 7 and 8", "",
                      md_table(["#", "experiment", "the paper", "this sweep", "agrees"],
                               [[r["n"], r["experiment"], r["paper"], r["measured"],
                                 r["agrees"]] for r in rows]), "",
                      "Criteria:", ""] + [f"- **{r['n']}**: {r['criterion']}" for r in rows] \
                + [""]
    if comp is not None:
        parts += [f"_The comparison took {comp.get('seconds', 0):.1f} s._", ""]
    return "\n".join(parts).rstrip() + "\n"


def write_sweep_report(sweep_dir) -> Path:
    """Write ``<sweep>/report.md`` (atomically); returns its path."""
    out = Path(sweep_dir) / "report.md"
    atomic_write(out, render_sweep_markdown(sweep_dir).encode("utf-8"))
    return out
