"""A finished session as data (engine.results): S, U, V and the tables against the files they
come from, the DataFrames, `tjac export --csv/--parquet`, `tjac ls --json`, and the public
figure builders drawing on a given Axes."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from engine.results import PANDAS_HINT, PARQUET_HINT, MissingPackage, open_session, \
    write_tables
from engine.session import SessionDamaged, SessionError
from tjac_tui.cli import main


def test_arrays_and_tables_are_the_session_files(quick_session):
    r = open_session(quick_session)
    S = np.load(quick_session / "svd/S.npy")
    Vh = np.load(quick_session / "svd/Vh.npy")
    U = np.load(quick_session / "svd/U.npy")
    assert r.S.dtype == np.float64 and np.array_equal(r.S, S.astype(np.float64))
    assert isinstance(r.V, np.memmap) or isinstance(r.V.base, np.memmap)
    assert np.array_equal(r.V[:, 3], Vh[3]) and np.array_equal(r.U, U)
    summary = json.loads((quick_session / "spectrum.json").read_text())
    assert r.regions == summary["regions"]
    t = r.spectrum_table()
    assert t["s"] == S.astype(np.float64).tolist()
    counts = {k: t["region"].count(k) for k in ("chaotic", "bulk", "stable")}
    assert counts == {k: v["count"] for k, v in summary["regions"].items()}
    assert t["alignment"] == np.load(quick_session / "svd/alignment.npy").tolist()

    pd = pytest.importorskip("pandas")
    df = r.spectrum_df()
    assert list(df.columns) == ["index", "s", "abs_s_minus_1", "alignment", "region"]
    assert np.array_equal(df["s"].to_numpy(), S.astype(np.float64))
    reg = r.regions_df().set_index("region")
    assert reg.loc["bulk", "count"] == summary["regions"]["bulk"]["count"]
    assert reg.loc["stable", "start"] == summary["regions"]["stable"]["start"]
    lines = [json.loads(x) for x in (quick_session / "metrics.jsonl").read_text().splitlines()]
    m = r.metrics_df()
    assert m["step"].tolist() == [x["step"] for x in lines]
    assert m["test_loss"].tolist() == [x["test_loss"] for x in lines]
    assert isinstance(r.analyses_df(), pd.DataFrame)


def test_a_missing_package_is_one_line(quick_session, monkeypatch, tmp_path):
    r = open_session(quick_session)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingPackage, match="^DataFrames need pandas: pip install"):
        r.metrics_df()
    monkeypatch.undo()
    pytest.importorskip("pandas")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["export", str(quick_session), "--parquet", str(tmp_path / "p")]) == 2
    assert PARQUET_HINT.startswith("parquet needs pyarrow") and PANDAS_HINT


def test_export_csv_writes_the_tables(quick_session, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["export", str(quick_session), "--csv", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(out / f"{n}.csv") for n in
                                     ("spectrum", "regions", "metrics", "analyses"))
    rows = list(csv.DictReader(open(out / "spectrum.csv")))
    S = np.load(quick_session / "svd/S.npy").astype(np.float64)
    assert np.array_equal([float(x["s"]) for x in rows], S)  # every digit: bitwise
    assert [x["region"] for x in rows[:1]] == ["chaotic"] and rows[-1]["region"] == "stable"
    # the same file as the report's figures/spectrum.csv
    from engine.present.figures import spectrum_csv
    from engine.session import Session
    ref = spectrum_csv(Session(quick_session), tmp_path / "ref.csv")
    assert ref.read_text() == (out / "spectrum.csv").read_text()
    metrics = list(csv.DictReader(open(out / "metrics.csv")))
    lines = [json.loads(x) for x in (quick_session / "metrics.jsonl").read_text().splitlines()]
    assert [float(x["train_loss"]) for x in metrics] == [x["train_loss"] for x in lines]
    regions = {x["region"]: int(x["count"]) for x in csv.DictReader(open(out / "regions.csv"))}
    summary = json.loads((quick_session / "spectrum.json").read_text())
    assert regions == {k: v["count"] for k, v in summary["regions"].items()}
    # a folder inside a session is refused, in one line
    assert main(["export", str(quick_session), "--csv", str(quick_session / "t")]) == 2
    assert "inside a session" in capsys.readouterr().err


def test_export_parquet_round_trips(quick_session, tmp_path):
    import pandas as pd  # (both in the test extra: this test runs, never skips)
    files = write_tables(open_session(quick_session), tmp_path / "pq", "parquet")
    assert {f.name for f in files} >= {"spectrum.parquet", "metrics.parquet"}
    df = pd.read_parquet(tmp_path / "pq" / "spectrum.parquet")
    assert np.array_equal(df["s"].to_numpy(), np.load(quick_session / "svd/S.npy")
                          .astype(np.float64))


def test_ls_json_and_a_damaged_session(quick_session, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(quick_session, root / "q")
    assert main(["ls", "--json", "--sessions", str(root)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"], r["P"]) for r in rows] == [("q", "done", 1210)]
    assert main(["ls", "--json", "--sessions", str(tmp_path / "none")]) == 0
    assert json.loads(capsys.readouterr().out) == []
    with open(root / "q" / "svd" / "S.npy", "r+b") as f:  # same size, other bytes
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(SessionDamaged, match="S.npy"):
        open_session(root / "q").S
    with pytest.raises(SessionError, match="not a session"):
        open_session(tmp_path)


def test_figure_builders_draw_on_the_given_axes(quick_session):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from engine.present.figures import plot_alignment, plot_distance, plot_spectrum

    r = open_session(quick_session)
    fig = Figure()
    axes = fig.subplots(1, 3)
    assert plot_spectrum(r.S, r.bulk_tol, ax=axes[0]) is axes[0]
    assert plot_distance(r.S, r.bulk_tol, ax=axes[1]) is axes[1]
    assert plot_alignment(r.alignment, r.S, r.bulk_tol, ax=axes[2]) is axes[2]
    ys = np.concatenate([ln.get_ydata() for ln in axes[0].get_lines()
                         if ln.get_linestyle() == "None"])
    assert sorted(ys.tolist()) == sorted(r.S.tolist())
    assert plot_spectrum(r.S).figure is not fig  # no ax: a figure of its own
