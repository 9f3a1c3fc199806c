"""A session's results as data, for notebooks and scripts (no UI imports).

    r = open_session("sessions/paper-digits-sgd")      # or Session.open(path)
    r.S                      (P,) float64, descending
    r.U, r.V                 (P, P) memory-mapped: U[:, i], V[:, i] the i-th singular vectors
    r.regions, r.metrics, r.analyses                     plain dicts and lists
    r.spectrum_df(), r.metrics_df(), r.regions_df(), r.analyses_df()   pandas DataFrames
    write_tables(r, "out/", "csv")                       the same tables as CSV (or parquet)

Every table is first plain data, ``{column: list}`` (:meth:`Results.tables`), so CSV needs
nothing beyond the standard library; pandas (DataFrames) and pyarrow (parquet) are optional
(``pip install 'tjac[results]'``) and a missing one is a one-line :class:`MissingPackage`.
The session is checked against its manifest when opened (sizes and times; ``S`` by its digest
when read): damaged files raise :class:`engine.session.SessionDamaged` naming the file.
"""

from __future__ import annotations

import csv
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from . import regions as regions_mod
from .session import Session, SessionError

PANDAS_HINT = "DataFrames need pandas: pip install 'tjac[results]' (or pip install pandas)"
PARQUET_HINT = "parquet needs pyarrow: pip install 'tjac[results]' (or pip install pyarrow)"
FORMATS = ("csv", "parquet")

Table = dict[str, list]  # column name -> values, every column of one length


class MissingPackage(ImportError):
    """An optional package a call needs is not installed; the message says how to install it."""


def _pandas():
    try:
        import pandas
    except ImportError:
        raise MissingPackage(PANDAS_HINT) from None
    return pandas


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted.key: scalar}`` for every number, string, bool or None inside nested dicts and
    lists (list items by index: ``curve.0``, ``curve.1``...)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def rows_to_table(rows: list[dict]) -> Table:
    """Columns in order of first appearance; a row without a column has None there."""
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return {c: [r.get(c) for r in rows] for c in cols}


def spectrum_table(S: np.ndarray, alignment: np.ndarray | None, tol: float) -> Table:
    """index, s, abs_s_minus_1, alignment (None without the vectors), region: one row per
    singular value, in the SVD's order. ``S``: (P,) float64."""
    masks = regions_mod.masks(S, tol)
    region = np.empty(len(S), dtype=object)
    for name, m in masks.items():
        region[m] = name
    return {"index": list(range(len(S))), "s": S.tolist(),
            "abs_s_minus_1": np.abs(S - 1.0).tolist(),
            "alignment": [None] * len(S) if alignment is None else
            alignment.astype(np.float64).tolist(),
            "region": region.tolist()}


class Results:
    """The results of one session (see the module docstring). Arrays are read when first
    asked for; ``U`` and ``V`` stay memory-mapped (P x P of the SVD's dtype)."""

    def __init__(self, session: Session):
        self.session = session
        self.path = session.path

    @property
    def name(self) -> str:
        return self.session.name

    @cached_property
    def manifest(self) -> dict:
        return self.session.manifest()

    @cached_property
    def config(self):
        """The resolved :class:`engine.config.RunConfig` that ran."""
        return self.session.config()

    @cached_property
    def summary(self) -> dict | None:
        """spectrum.json: regions, thresholds, alignment summaries (None before the spectrum
        stage, or for a matrix-free run)."""
        return self.session.spectrum()

    @property
    def bulk_tol(self) -> float:
        return float((self.summary or {}).get("bulk_tol") or regions_mod.DEFAULT_TOL)

    @property
    def regions(self) -> dict[str, dict]:
        """{chaotic|bulk|stable: {count, start, stop, fraction, rule, s_max, s_min, ...}}."""
        return dict((self.summary or {}).get("regions") or {})

    @cached_property
    def S(self) -> np.ndarray:
        """(P,) float64, descending; checked against its digest in the manifest."""
        self._need("svd/S.npy")
        return self.session.load_vector("svd/S.npy")

    @cached_property
    def alignment(self) -> np.ndarray | None:
        """(P,) float64, u_i . v_i; None when the vectors were not kept."""
        if not self.session.has("svd/alignment.npy"):
            return None
        return self.session.load_vector("svd/alignment.npy")

    @cached_property
    def U(self) -> np.ndarray:
        """(P, P) memory-mapped, read-only: column i is the left singular vector u_i."""
        self._need("svd/U.npy")
        return self.session.load_npy("svd/U.npy", mmap=True)

    @cached_property
    def V(self) -> np.ndarray:
        """(P, P) memory-mapped, read-only: column i is the right singular vector v_i (the
        transpose of the stored ``Vh``: a view, nothing is copied)."""
        self._need("svd/Vh.npy")
        return self.session.load_npy("svd/Vh.npy", mmap=True).T

    @cached_property
    def J(self) -> np.ndarray:
        """(P, P) memory-mapped, read-only: J[i, j] = d theta_T[i] / d theta_0[j]."""
        self._need("jacobian.npy")
        return self.session.load_npy("jacobian.npy", mmap=True)

    @cached_property
    def metrics(self) -> list[dict]:
        """One dict per evaluated step: step, lr, train/test loss and accuracy."""
        return self.session.metrics()

    @cached_property
    def analyses(self) -> dict[str, Any]:
        """{analysis name: its result (analyses/<name>.json)} for every analysis that ran."""
        folder = self.path / "analyses"
        if not folder.is_dir():
            return {}
        return {p.stem: self.session.read_json(f"analyses/{p.name}")
                for p in sorted(folder.glob("*.json")) if not p.name.startswith(".")}

    @cached_property
    def matfree(self) -> dict | None:
        """matfree.json (a ``spectrum.method = "matfree"`` run), else None."""
        return self.session.read_json("matfree.json") if self.session.has("matfree.json") \
            else None

    def _need(self, rel: str) -> None:
        if not self.session.has(rel):
            why = "J was never formed (a matrix-free run)" if self.session.has("matfree.json") \
                else "the run has not written it (yet)"
            raise SessionError(f"{self.path}: no {rel}: {why}")

    # ---- tables ------------------------------------------------------------------------
    def spectrum_table(self) -> Table:
        """index, s, abs_s_minus_1, alignment, region: one row per singular value."""
        return spectrum_table(self.S, self.alignment, self.bulk_tol)

    def regions_table(self) -> Table:
        """One row per region (chaotic, bulk, stable): its name and every scalar of
        spectrum.json's record of it."""
        return rows_to_table([{"region": k, **flatten(v)} for k, v in self.regions.items()])

    def metrics_table(self) -> Table:
        return rows_to_table(self.metrics)

    def analyses_table(self) -> Table:
        """analysis, key, value: one row per scalar of every analysis result (dotted keys)."""
        rows = [{"analysis": name, "key": k, "value": v}
                for name, res in self.analyses.items() for k, v in flatten(res).items()]
        return rows_to_table(rows) if rows else {"analysis": [], "key": [], "value": []}

    def tables(self) -> dict[str, Table]:
        """Every table this session has: spectrum and regions (an exact run), metrics, and
        analyses."""
        out = {}
        if self.session.has("svd/S.npy"):
            out["spectrum"] = self.spectrum_table()
        if self.regions:
            out["regions"] = self.regions_table()
        out["metrics"] = self.metrics_table()
        out["analyses"] = self.analyses_table()
        return out

    # ---- DataFrames (pandas) -------------------------------------------------------------
    def spectrum_df(self):
        """pandas DataFrame, P rows: index, s, abs_s_minus_1, alignment, region."""
        return _pandas().DataFrame(self.spectrum_table())

    def regions_df(self):
        """pandas DataFrame, 3 rows (chaotic, bulk, stable)."""
        return _pandas().DataFrame(self.regions_table())

    def metrics_df(self):
        """pandas DataFrame, one row per evaluated step."""
        return _pandas().DataFrame(self.metrics_table())

    def analyses_df(self):
        """pandas DataFrame: analysis, key, value (long form)."""
        return _pandas().DataFrame(self.analyses_table())


def open_session(path: str | Path) -> Results:
    """The results of the session at ``path``; :class:`SessionError` if it is none,
    :class:`engine.session.SessionDamaged` if its files do not match their records."""
    s = Session(path)
    if not s.exists():
        raise SessionError(f"{s.path}: not a session (no manifest.json)")
    s.check_intact(deep=False)
    return Results(s)


def sweep_table(path: str | Path) -> Table:
    """The comparison of a sweep (``<sweep>/analyses/sweep.json``), one row per point: name,
    status, P, steps, test loss/accuracy, the region counts and fractions (``counts.bulk``...)
    and what the point sets (``values.train.lr``...)."""
    p = Path(path) / "analyses" / "sweep.json"
    try:
        comp = json.loads(p.read_text())
    except FileNotFoundError:
        raise SessionError(f"{path}: no sweep comparison (analyses/sweep.json)") from None
    rows = []
    for pt in comp.get("points", []):
        pt = {k: v for k, v in pt.items() if k not in ("set", "sensitivity")}
        rows.append({k: v for k, v in flatten(pt).items()})
    return rows_to_table(rows)


def sweep_df(path: str | Path):
    """:func:`sweep_table` as a pandas DataFrame."""
    return _pandas().DataFrame(sweep_table(path))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # every digit: the CSV reads back bitwise
    return str(v)


def write_csv(table: Table, out: Path) -> Path:
    """``table`` as CSV (header row; floats with every digit, None as an empty cell)."""
    cols = list(table)
    n = len(table[cols[0]]) if cols else 0
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(n):
            w.writerow([_cell(table[c][i]) for c in cols])
    return out


def write_tables(results: Results, out_dir: str | Path, fmt: str = "csv") -> list[Path]:
    """Every table of ``results`` into ``out_dir`` (created if missing) as ``NAME.csv`` or
    ``NAME.parquet``; returns the files written. parquet needs pandas and pyarrow."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    tables = results.tables()
    if fmt == "parquet":
        pd = _pandas()
        try:
            import pyarrow  # noqa: F401 - only to know it is there
        except ImportError:
            raise MissingPackage(PARQUET_HINT) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, table in tables.items():
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            write_csv(table, path)
        else:
            df = pd.DataFrame(table)
            if "value" in df and df["value"].dtype == object:  # mixed numbers and strings
                df["value"] = df["value"].map(lambda v: None if v is None else str(v))
            df.to_parquet(path, index=False)
        files.append(path)
    return files
