"""engine.present.report (markdown report, comparison) and the `tjac report` / `tjac compare` commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine import asciiplot, config as config_mod
from engine.present.report import compare_rows, render_compare, render_report, write_report
from engine.session import Session
from engine.spectrum import region_rows
from tjac_tui.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "presets" / "quick.toml"


@pytest.fixture(scope="module")
def finished(quick_session) -> Path:
    return quick_session


def code_blocks(text: str, lang: str = "text") -> list[str]:
    return [b.split("```")[0] for b in text.split(f"```{lang}\n")[1:]]


def test_report_has_config_timings_regions_and_ascii_plots(finished):
    s = Session(finished)
    m, summary = s.manifest(), s.spectrum()
    text = render_report(s)
    assert text.startswith(f"# tjac report: {s.name}\n")
    assert "status **done**" in text and f"P = {summary['P']}" in text
    # regions: the rows of engine.spectrum.region_rows, as a markdown table
    header = "| region | count | indices | s range | fraction | rule | u.v mean | subspace cos |"
    assert header in text
    for r in region_rows(summary):
        rule = r["rule"].replace("|", "\\|")
        assert (f"| {r['region']} | {r['count']} | {r['indices']} | {r['s range']} | "
                f"{r['fraction']} | {rule} | {r['u.v mean']} | {r['subspace cos']} |") in text
    assert f"s_max = {summary['s_max']:.6g}" in text and f"s_min = {summary['s_min']:.6g}" in text
    # timings per stage, from the manifest
    for stage, st in m["stages"].items():
        assert f"| {stage} | done | {st['seconds']:.2f} |" in text
    # summary statements
    n = summary["regions"]["bulk"]["count"]
    assert f"bulk (|s - 1| <= 0.001): {n} " in text
    # the config, exactly what ran
    assert code_blocks(text, "toml")[0].strip() == (finished / "config.toml").read_text().strip()
    # plots: loss, accuracy, s, |s - 1|, u.v (then the analyses' plots); plain ASCII, with the
    # legend of the regions
    plots = code_blocks(text)
    assert len(plots) >= 5
    assert all(asciiplot.is_plain_ascii(p) for p in plots)
    r = summary["regions"]
    assert f"^ chaotic 0..{r['chaotic']['stop'] - 1}" in plots[2]
    assert f"o bulk {r['bulk']['start']}..{r['bulk']['stop'] - 1}" in plots[2]
    assert "singular values s_i (log scale)" in plots[2]
    # the analyses (none here, but the region sensitivity) and the paper's findings, checked
    assert "## Analyses" in text and "## The paper's findings, checked" in text
    assert text.index("## Spectrum") < text.index("## Analyses") < text.index("## Config")
    # unicode plots on request
    assert not all(asciiplot.is_plain_ascii(p) for p in
                   code_blocks(render_report(s, ascii_only=False))[2:5])


def test_write_report_default_path_and_cli(finished, tmp_path, capsys):
    out = write_report(finished)
    assert out == finished / "report.md"
    assert out.read_text() == render_report(finished)
    target = tmp_path / "r.md"
    assert main(["report", str(finished), "-o", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert target.read_text() == render_report(finished)
    # by name under --sessions, before or after the subcommand
    assert main(["--sessions", str(finished.parent), "report", finished.name]) == 0
    assert main(["report", finished.name, "--sessions", str(finished.parent)]) == 0
    assert main(["report", "nope", "--sessions", str(tmp_path)]) == 2
    assert "nope: no such session" in capsys.readouterr().err


def test_report_of_an_unfinished_session(tmp_path):
    s = Session.create(tmp_path, "fresh", config_mod.load(QUICK), str(QUICK))
    text = render_report(s)
    assert "status **created**" in text and "not finished" in text
    assert "## Regions" not in text and "```toml" in text


def test_compare(finished, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    cols, rows = compare_rows([finished, other])
    assert cols == ["", finished.name, "other"]
    summary = Session(finished).spectrum()
    by = {r[0]: r[1:] for r in rows}
    assert by["P"] == [str(summary["P"])] * 2
    for n in ("chaotic", "bulk", "stable"):
        c = summary["regions"][n]
        assert by[n][0] == f"{c['count']} ({100 * c['fraction']:.1f}%)" == by[n][1]
    text = render_compare([finished, other])
    assert "## singular values s_i (log scale)" in text
    assert "## distance from unity |s_i - 1| (log scale)" in text
    assert all(asciiplot.is_plain_ascii(b) for b in code_blocks(text))
    assert main(["compare", str(finished), str(other)]) == 0
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("how", ["spectrum {}", "flipped J", "no S"])
def test_compare_refuses_a_damaged_session_and_a_single_one(finished, tmp_path, capsys, how):
    """Like ``tjac report``: a session whose files do not match their records is refused in
    one line (exit 1; a '{}' summary was a KeyError traceback, the others printed numbers)."""
    bad = tmp_path / "bad"
    shutil.copytree(finished, bad)
    if how == "spectrum {}":
        (bad / "spectrum.json").write_text("{}")
    elif how == "no S":
        (bad / "svd" / "S.npy").unlink()
    else:
        with open(bad / "jacobian.npy", "r+b") as f:
            f.seek(-5, 2)
            f.write(b"\xff")
    assert main(["compare", str(finished), str(bad)]) == 1
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1
    assert "bad: damaged:" in out.err and "tjac resume" in out.err
    assert main(["compare", str(finished)]) == 2
    assert main(["compare", str(finished), str(finished)]) == 2
    assert "two or more different sessions" in capsys.readouterr().err


def test_the_regions_note_names_columns_the_table_has(finished):
    text = render_report(finished)
    section = text.split("## Regions")[1].split("## Timings")[0]
    header = next(line for line in section.splitlines() if line.startswith("| region |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    note = Session(finished).spectrum()["alignment_note"]
    assert f"_{note}_" in section
    assert "align_" not in section
    named = [c for c in ("u.v mean", "subspace cos") if c in note]
    assert named == ["u.v mean", "subspace cos"] and all(c in columns for c in named)


def test_a_region_range_near_one_shows_how_near():
    """The bulk's top at tol 1e-3 was printed "1.001", the chaotic threshold itself."""
    from engine.spectrum import fmt_range

    assert fmt_range(0.999008, 1.0009966) == "0.999008 .. 1.000997"
    assert fmt_range(1.0011, 19.38264) == "1.0011 .. 19.3826"
    assert fmt_range(1e-7, 0.9989) == "1e-07 .. 0.9989"
    assert fmt_range(None, 1.0) == "-"


def test_report_into_a_folder_names_the_file_after_the_session(finished, tmp_path, capsys):
    """-o DIR wrote a temporary file beside DIR and failed with "Is a directory"."""
    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    assert main(["report", str(finished), "-o", str(out_dir)]) == 0
    written = out_dir / f"{Path(finished).name}.md"
    assert capsys.readouterr().out.strip() == str(written)
    assert written.read_text().startswith("# tjac report")
