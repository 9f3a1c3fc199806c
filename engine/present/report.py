"""Markdown reports of sessions: config, timings, the regions table, ASCII plots, the analyses
and the paper's findings checked (:mod:`engine.present.findings`).

    render_report(session) -> str           the markdown text
    write_report(session, path=None, figures=False) -> Path
                                            writes it (default: <session>/report.md); with
                                            figures, also PNG/SVG figures and spectrum.csv
    report_keeper(session) -> listener      rewrites <session>/report.md, where there is one,
                                            when a run's status changes (start, end)
    compare_rows(sessions) -> (columns, rows)   region counts side by side
    render_compare(sessions) -> str         markdown comparison of several sessions

The status a report states is the one ``tjac ls`` shows (:func:`engine.session.status_of`): a
session recorded as running whose worker is gone is "stale", and the report says how to
continue it. The plots come from :mod:`engine.asciiplot` (the same code the TUI draws with), rendered without
colour; with ``ascii_only`` (the default) they contain only ASCII characters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from .. import asciiplot, spectrum as spectrum_mod
from ..files import atomic_write
from ..session import Session, status_of
from .figures import Figures, figures_markdown, write_figures
from .findings import as_session, render_analyses_markdown
from .markdown import code_block, md_table
from .views import make_plot, matfree_density_view, matfree_tables, snapshot_views

PLOT_WIDTH = 100
PLOT_HEIGHT = 20


def _g(v, spec: str = ".6g") -> str:
    return "-" if v is None else format(v, spec)


def regions_markdown(summary: dict) -> str:
    """The regions table of a ``spectrum.json`` summary as markdown (same rows as the CLI)."""
    rows = spectrum_mod.region_rows(summary)
    cols = list(rows[0])
    return md_table(cols, [[r[c] for c in cols] for r in rows])


def summary_lines(summary: dict, manifest: dict | None = None) -> list[str]:
    """Plain statements read off the summary (no interpretation beyond the numbers)."""
    P = summary["P"]
    reg = summary["regions"]
    tol = summary["bulk_tol"]
    out = [f"P = {P} parameters; s_max = {_g(summary['s_max'])}, "
           f"s_min = {_g(summary['s_min'])}."]
    out.append(
        f"chaotic (s > 1 + {tol:g}): {reg['chaotic']['count']} directions "
        f"({100 * reg['chaotic']['fraction']:.1f}%); bulk (|s - 1| <= {tol:g}): "
        f"{reg['bulk']['count']} ({100 * reg['bulk']['fraction']:.1f}%); stable "
        f"(s < 1 - {tol:g}): {reg['stable']['count']} ({100 * reg['stable']['fraction']:.1f}%).")
    if summary.get("min_abs_s_minus_1") is not None:
        out.append(f"closest to unity: |s - 1| = {summary['min_abs_s_minus_1']:.3g} at index "
                   f"{summary['argmin_abs_s_minus_1']}.")
    b = reg["bulk"]
    if b.get("align_mean") is not None:
        out.append(f"bulk alignment: mean u.v = {b['align_mean']:.4f}, subspace cosine mean "
                   f"= {b['subspace_cos_mean']:.4f}.")
    if summary.get("log10_det") is not None:
        out.append(f"log10 |det J| = {summary['log10_det']:.4g}.")
    fm = (manifest or {}).get("final_metrics")
    if fm:
        out.append(f"after training (step {fm.get('step')}): train loss "
                   f"{_g(fm.get('train_loss'), '.4f')}, test loss "
                   f"{_g(fm.get('test_loss'), '.4f')}, test accuracy "
                   f"{_g(fm.get('test_acc'), '.3f')}.")
    return out


def _timings(manifest: dict) -> str:
    stages = manifest.get("stages", {})
    rows = []
    total = 0.0
    for name, st in stages.items():
        secs = st.get("seconds")
        total += secs or 0.0
        extra = []
        if name == "jacobian" and st.get("chunk"):
            extra.append(f"chunk {st['chunk']}")
        if st.get("columns_done") is not None:
            extra.append(f"{st['columns_done']} columns")
        if st.get("error"):
            extra.append(st["error"])
        rows.append([name, st.get("status", "?"), _g(secs, ".2f"), ", ".join(extra)])
    rows.append(["total", "", f"{total:.2f}", ""])
    return md_table(["stage", "status", "seconds", "notes"], rows)


def training_plots(metrics: list[dict], width: int = PLOT_WIDTH, height: int = 14,
                   ascii: bool = True, color: bool = False) -> list[asciiplot.Plot]:
    """Loss and accuracy by step (empty list when nothing was recorded)."""
    if not metrics:
        return []
    steps = [m["step"] for m in metrics]
    loss = asciiplot.curves_plot(
        steps, {"train loss": [m.get("train_loss") for m in metrics],
                "test loss": [m.get("test_loss") for m in metrics]},
        width, height, ascii=ascii, color=color, title="loss by step")
    acc = asciiplot.curves_plot(
        steps, {"train acc": [m.get("train_acc") for m in metrics],
                "test acc": [m.get("test_acc") for m in metrics]},
        width, height, ascii=ascii, color=color, title="accuracy by step")
    return [loss, acc]


def render_report(session: Session | str | Path, ascii_only: bool = True,
                  width: int = PLOT_WIDTH, height: int = PLOT_HEIGHT,
                  figures: Figures | None = None, report_dir: Path | None = None) -> str:
    """The markdown report of one session (whatever it holds so far); ``figures`` (from
    :func:`write_figures`) adds a section that shows and links them, relative to
    ``report_dir`` (default: the session)."""
    s = as_session(session)
    m = s.manifest()
    summary = s.spectrum()
    status = status_of(m, s.is_locked())
    parts = [f"# tjac report: {s.name}", ""]
    info = [f"status **{status}**"]
    if m.get("preset"):
        info.append(f"preset `{m['preset']}`")
    info.append(f"created {m.get('created', '?')}")
    if m.get("device"):
        info.append(f"device {m['device']}")
    if m.get("dtype"):
        info.append(m["dtype"])
    if m.get("P"):
        info.append(f"P = {m['P']}")
    parts += [f"Session `{s.path}`: " + ", ".join(info) + ".", ""]
    data = m.get("data")
    if data:
        parts += [f"Data: {data.get('name')}, {data.get('n_train')} training and "
                  f"{data.get('n_test')} test rows, {data.get('n_features')} features, "
                  f"{data.get('n_classes')} classes; {m.get('steps', '?')} optimizer steps.", ""]
    if m.get("error"):
        parts += [f"**Error:** {m['error']}", ""]
    if (m.get("numerics") or {}).get("tf32_matmul"):
        parts += ["**TF32 matrix products were allowed** (`tf32 = true`): every float32 product "
                  "had a 10-bit mantissa, so J's entries carry relative errors of ~1e-3, the "
                  "size of the bulk tolerance.", ""]
    if status_line(s, m, status):
        parts += [status_line(s, m, status), ""]
    if status != "done":
        parts += ["_The session is not finished: this report shows what it holds so far._", ""]

    if summary is not None:
        parts += ["## Summary", ""] + [f"- {f}" for f in summary_lines(summary, m)] + [""]
        parts += ["## Regions", "",
                  f"P = {summary['P']}, s_max = {_g(summary['s_max'])}, "
                  f"s_min = {_g(summary['s_min'])}, bulk_tol = {summary['bulk_tol']:g} "
                  f"(chaotic above {summary['thresholds']['chaotic_above']:g}, stable below "
                  f"{summary['thresholds']['stable_below']:g}).", "",
                  regions_markdown(summary), ""]
        if summary.get("svd_dtype") == "float32":
            parts += [f"The SVD ran in float32 (`spectrum.svd_dtype`): each singular value may "
                      f"be off by up to a small multiple of 6e-8 x s_max = "
                      f"{_g(6e-8 * summary['s_max'])}; compare with bulk_tol before reading "
                      "counts near the thresholds.", ""]
        if summary.get("alignment_note"):
            parts += [f"_{summary['alignment_note']}_", ""]

    if s.has("matfree.json"):
        parts += ["## Matrix-free spectrum", ""]
        mf = s.read_json("matfree.json")
        for v in matfree_tables(mf):
            parts += [f"### {v.title}", "", md_table(v.columns, v.rows), "", f"_{v.note}_", ""]
        if (dv := matfree_density_view(mf)) is not None:
            p = make_plot(dv, width, height, ascii=ascii_only)
            parts += [f"### {dv.title}", "", code_block(p.text), "", f"_{dv.note}_", ""]

    parts += ["## Timings", "", _timings(m), ""]

    fm = m.get("final_metrics")
    metrics = s.metrics() if s.has("metrics.jsonl") else []
    if fm or metrics:
        parts += ["## Training", ""]
        if fm:
            keys = [k for k in ("step", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
                    if k in fm]
            parts += [md_table(keys, [[_g(fm[k], ".6g") if isinstance(fm[k], float) else
                                        fm[k] for k in keys]]), ""]
        for p in training_plots(metrics, width, 14, ascii=ascii_only):
            parts += [code_block(p.text), ""]

    if s.has("svd/S.npy"):
        S = s.load_npy("svd/S.npy")
        parts += ["## Spectrum", ""]
        plots = [asciiplot.spectrum_plot(S, summary, width, height, ascii=ascii_only,
                                         color=False),
                 asciiplot.distance_plot(S, summary, width, height, ascii=ascii_only,
                                         color=False)]
        if s.has("svd/alignment.npy"):
            plots.append(asciiplot.alignment_plot(s.load_npy("svd/alignment.npy"), summary,
                                                  width, height, ascii=ascii_only, color=False))
        for p in plots:
            parts += [f"### {p.title}", "", code_block(p.text), ""]

    snaps = snapshot_views(s)
    if snaps:
        parts += ["## Spectrum through training", "", f"_{snaps[1].note}_", "",
                  md_table(snaps[1].columns, snaps[1].rows), ""]
        for v in snaps:
            p = make_plot(v, width, height, ascii=ascii_only)
            parts += [f"### {v.title}", "", code_block(p.text), ""]
            if v.key == "snapshots.spectra" and v.note:
                parts += [f"_{v.note}_", ""]

    if s.has("svd/S.npy"):  # every finished analysis, then the paper's findings checked
        parts += [render_analyses_markdown(s, ascii_only=ascii_only, width=width).rstrip(), ""]

    if figures is not None:
        parts += [figures_markdown(figures, report_dir or s.path).rstrip(), ""]

    if (s.path / "config.toml").is_file():
        parts += ["## Config", "", code_block((s.path / "config.toml").read_text(), "toml"), ""]
    env = dict(m.get("environment") or {})
    num = m.get("numerics") or {}
    env.update({f"numerics.{k}": v for k, v in num.items() if k != "env"})
    env.update({f"env.{k}": v for k, v in (num.get("env") or {}).items()})
    env.update({f"device.{k}": v for k, v in (m.get("device_info") or {}).items()})
    if env:
        parts += ["## Environment", "", md_table(["key", "value"], sorted(env.items())), ""]
    return "\n".join(parts).rstrip() + "\n"


def status_line(s: Session, manifest: dict, status: str) -> str | None:
    """What a session that is not running and not done needs said of its status, with what to
    do (None for the others): stale "the worker (pid N) is gone; `tjac resume S` continues
    it", interrupted, failed."""
    resume = f"`tjac resume {s.path}`"
    if status == "stale":
        pid = manifest.get("pid")
        return (f"stale: the worker{f' (pid {pid})' if pid else ''} is gone; {resume} "
                "continues it.")
    if status == "interrupted":
        return f"interrupted: {resume} continues it."
    if status == "failed":
        return f"failed: {resume} tries the failed stage again."
    return None


def write_report(session: Session | str | Path, path: str | Path | None = None,
                 ascii_only: bool = True, figures: bool = False) -> Path:
    """Write the markdown report (default ``<session>/report.md``, atomically); returns the
    path. ``figures``: also the PNG/SVG figures and spectrum.csv (:func:`write_figures`, in
    ``<session>/figures``), shown and linked from the report."""
    s = as_session(session)
    out = Path(path) if path is not None else s.path / "report.md"
    figs = write_figures(s) if figures else None
    atomic_write(out, render_report(s, ascii_only=ascii_only, figures=figs,
                                    report_dir=out.parent.absolute()).encode("utf-8"))
    return out


def report_keeper(session: Session | str | Path) -> Callable[[dict], None]:
    """A listener of a run (:func:`engine.runner.run_session`) that keeps the session's own
    ``report.md`` current: where one exists (a user wrote it, ``tjac report``), it is written
    again when the run's status changes, at ``run_start`` (running) and at ``run_end`` (done,
    failed, interrupted), with its figures when it had them. A report that cannot be written
    (a full disk) leaves the run alone: a line says so on stderr (the worker's log)."""
    import sys

    s = as_session(session)

    def on_event(ev: dict) -> None:
        if ev.get("event") not in ("run_start", "run_end") or not (s.path / "report.md").is_file():
            return
        try:
            write_report(s, figures=(s.path / "figures").is_dir())
        except Exception as e:  # noqa: BLE001 - the report must never fail the run
            print(f"{s.path / 'report.md'}: not rewritten: {e}", file=sys.stderr)

    return on_event


# --------------------------------------------------------------------------------------------
# several sessions


def compare_rows(sessions: Iterable[Session | str | Path]) -> tuple[list[str], list[list[str]]]:
    """Region counts (and spectrum summaries) side by side: one column per session."""
    sess = [as_session(s) for s in sessions]
    sums = [s.spectrum() for s in sess]
    mans = [s.manifest() for s in sess]
    cols = ["", *[s.name for s in sess]]
    # a session with no spectrum still has its P (manifest) and, matrix-free, its s_1
    mfree = [s.read_json("matfree.json") if sm is None and s.has("matfree.json") else None
             for s, sm in zip(sess, sums)]

    def row(label, fn):
        return [label, *[("-" if sm is None else fn(sm)) for sm in sums]]

    rows = [["P", *[str(sm["P"]) if sm is not None else str(m.get("P") or "-")
                    for m, sm in zip(mans, sums)]],
            ["status", *[str(m.get("status", "?")) + (" (matrix-free)" if mf else "")
                         for m, mf in zip(mans, mfree)]]]
    for name in spectrum_mod.REGIONS:
        rows.append(row(name, lambda sm, n=name: f"{sm['regions'][n]['count']} "
                                                  f"({100 * sm['regions'][n]['fraction']:.1f}%)"))
    rows += [["s_max", *[_g(sm["s_max"]) if sm is not None else
                         _g(mf["top"]["s"][0]) if mf else "-" for sm, mf in zip(sums, mfree)]],
             row("s_min", lambda sm: _g(sm["s_min"])),
             row("bulk_tol", lambda sm: f"{sm['bulk_tol']:g}"),
             row("min |s-1|", lambda sm: _g(sm.get("min_abs_s_minus_1"), ".3g"))]
    return cols, rows


def render_compare(sessions: Iterable[Session | str | Path], ascii_only: bool = True,
                   width: int = PLOT_WIDTH, height: int = PLOT_HEIGHT) -> str:
    """Markdown comparison: the side-by-side table and overlaid spectra and |s - 1| curves."""
    sess = [as_session(s) for s in sessions]
    cols, rows = compare_rows(sess)
    parts = ["# tjac comparison: " + ", ".join(s.name for s in sess), "",
             md_table(cols, rows), ""]
    named = [(s.name, s.load_npy("svd/S.npy")) for s in sess if s.has("svd/S.npy")]
    if named:
        for kind in ("spectrum", "distance"):
            p = asciiplot.overlay_plot(named, kind, width, height, ascii=ascii_only, color=False)
            parts += [f"## {p.title}", "", code_block(p.text), ""]
    return "\n".join(parts).rstrip() + "\n"

