"""Studies: several runs of one preset that share a directory, and analyses across them.

A preset with a ``[study]`` section describes the runs as ``--set``-style overrides of itself::

    [study]
    reference = "base"                 # the run the others are compared with
    runs = [
      { name = "seed1", set = ["seed=1"] },
      { name = "shuffled", set = ["data.variant=\\"shuffled_labels\\""] },
      { name = "noise", set = ["data.variant=\\"white_noise\\""] },
    ]

With ``include_base = true`` (the default) the preset itself is the run ``base``. Every run is
an ordinary session in ``<study>/runs/<name>/`` (its config is the preset with the run's
overrides, without the ``[study]`` section), so it is run, resumed and reported like any other.

``tjac study PRESET`` creates the study directory and runs the sessions one after the other;
``tjac study DIR`` resumes it (finished sessions are skipped, an interrupted one resumes at its
stage). Then the cross-run analyses (:func:`cross_analyses`) are stored in
``<study>/analyses/study.json`` and ``study_overlap.npy``, and the report in
``<study>/report.md`` (written by the caller: :func:`engine.present.findings.write_study_report`).

Cross-run analyses: each run's spectrum summary under the region rule of :mod:`engine.regions`
(counts per tolerance), and the bulk-subspace overlap of each run with the reference run: the
mean cosine of the principal angles between their k right singular vectors closest to s = 1,
swept over k, against the expected value for random k-dimensional subspaces of R^P.

Directory::

    <study>/study.json        manifest: preset, runs (name, overrides), reference, status
    <study>/study.toml        the resolved preset, [study] included
    <study>/events.jsonl      study events (study_start, study_run, cross_start, cross_end,
                              study_end); each session keeps its own events.jsonl
    <study>/runs/<name>/      the sessions
    <study>/analyses/         study.json, study_overlap.npy
    <study>/report.md
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import config as config_mod, regions
from .config import ConfigError
from .files import (append_jsonl, atomic_save_npy, atomic_write, atomic_write_json,
                    publish_dir, read_jsonl)
from .schema import Invalid
from .schema import name as name_check
from .session import Session, now_iso
from .subspace import k_grid, mean_cos_block, random_mean_cos


@dataclass
class PlannedRun:
    name: str
    set: list[str]
    config: config_mod.RunConfig


def plan(preset: str | Path, overrides: list[str] | None = None
         ) -> tuple[config_mod.RunConfig, list[PlannedRun]]:
    """The base config and every run's config, all validated (a bad override names its run)."""
    preset = Path(preset)
    base = config_mod.load(preset, overrides)
    st = base.study
    if st is None:
        raise ConfigError(f"{preset}: study: expected a [study] section listing the runs")
    runs = []
    specs = ([{"name": "base", "set": []}] if st.include_base else []) + st.runs
    for spec in specs:
        try:
            cfg = config_mod.load(preset, list(overrides or []) + spec["set"])
        except ConfigError as e:
            raise ConfigError(f"{preset}: study.runs ({spec['name']}): {e}") from None
        cfg.study = None
        runs.append(PlannedRun(spec["name"], spec["set"], cfg))
    return base, runs


# --------------------------------------------------------------------------------------------
# the study directory


class Study:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return (self.path / "study.json").is_file()

    def manifest(self) -> dict:
        return json.loads((self.path / "study.json").read_text())

    def update(self, **changes) -> dict:
        m = self.manifest()
        m.update(changes)
        atomic_write_json(self.path / "study.json", m)
        return m

    def config(self) -> config_mod.RunConfig:
        return config_mod.loads((self.path / "study.toml").read_text(),
                                str(self.path / "study.toml"))

    def session(self, name: str) -> Session:
        return Session(self.path / "runs" / name)

    def sessions(self) -> list[tuple[str, Session]]:
        return [(r["name"], self.session(r["name"])) for r in self.manifest()["runs"]]

    def cross(self) -> dict | None:
        p = self.path / "analyses" / "study.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def events(self, start: int = 0) -> tuple[list[dict], int]:
        return read_jsonl(self.path / "events.jsonl", start)

    def emit(self, listeners, event: str, **fields) -> None:
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        append_jsonl(self.path / "events.jsonl", rec)
        for fn in listeners or []:
            fn(rec)


def is_study(path: str | Path) -> bool:
    return (Path(path) / "study.json").is_file()


def create(root: str | Path, preset: str | Path, overrides: list[str] | None = None,
           name: str | None = None) -> Study:
    """Validate the preset's study and create its directory ``root/<name>`` (``-2``, ``-3``...
    if taken) with one session per run (not started), whole: a process killed while creating
    it leaves nothing behind (:func:`engine.files.publish_dir`)."""
    base, runs = plan(preset, overrides)
    if name is not None:
        try:
            name = name_check()(name)
        except Invalid as e:
            raise ConfigError(f"--name {name!r}: expected {e}") from None

    def fill(tmp: Path) -> None:
        atomic_write(tmp / "study.toml", config_mod.dumps(base).encode())
        atomic_write_json(tmp / "study.json", {
            "kind": "study", "preset": str(preset), "overrides": list(overrides or []),
            "created": now_iso(), "status": "created", "reference": base.study.reference,
            "runs": [{"name": r.name, "set": r.set} for r in runs]})
        (tmp / "runs").mkdir()
        for r in runs:
            s = Session.create(tmp / "runs", r.name, r.config, str(preset))
            assert s.path.name == r.name

    return Study(publish_dir(root, name or base.name, fill))


def run(study_dir: str | Path, listeners: list[Callable[[dict], None]] | None = None,
        handle_signals: bool = False,
        run_session: Callable | None = None) -> int:
    """Run (or resume) every session of the study in order, then the cross-run analyses
    (the caller writes the report: :func:`engine.present.findings.write_study_report`). Returns
    0 when all is done, else the failing session's exit code (1 failed, 3 interrupted)."""
    from . import runner

    run_session = run_session or runner.run_session
    st = Study(study_dir)
    m = st.update(status="running", started=st.manifest().get("started") or now_iso())
    st.emit(listeners, "study_start", study=str(st.path), runs=[r["name"] for r in m["runs"]])
    t0 = time.perf_counter()
    for i, r in enumerate(m["runs"]):
        s = st.session(r["name"])
        status = s.manifest().get("status")
        st.emit(listeners, "study_run", name=r["name"], index=i, total=len(m["runs"]),
                status=status)
        if status == "done":
            continue
        code = run_session(s.path, listeners, handle_signals=handle_signals)
        if code != runner.EXIT_OK:
            status = "interrupted" if code == runner.EXIT_INTERRUPTED else "failed"
            st.update(status=status, error=s.manifest().get("error"))
            st.emit(listeners, "study_end", status=status, run=r["name"])
            return code
    cross = st.cross()
    if cross is None or cross.get("fingerprint") != _fingerprint(st):
        st.emit(listeners, "cross_start")
        t = time.perf_counter()
        result = cross_analyses(st, lambda **kw: st.emit(listeners, "cross_progress", **kw))
        st.emit(listeners, "cross_end", seconds=round(time.perf_counter() - t, 3))
    else:
        result = cross
    st.update(status="done", finished=now_iso(), error=None)
    st.emit(listeners, "study_end", status="done", seconds=round(time.perf_counter() - t0, 3))
    return runner.EXIT_OK if result is not None else runner.EXIT_FAILED


def _fingerprint(st: Study) -> str:
    """The cross analyses depend on every run's singular values and the study settings."""
    h = hashlib.sha256()
    for _, s in st.sessions():
        info = s.manifest().get("files", {}).get("svd/Vh.npy", {})
        h.update(str(info.get("sha256")).encode())
    h.update((st.path / "study.toml").read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# the cross-run analyses


def run_summary(name: str, sets: list[str], s: Session, tol: float) -> dict:
    cfg = s.config()
    S = s.load_npy("svd/S.npy").astype(np.float64)
    d = np.abs(S - 1)
    nontriv = d[d > regions.EXACT]
    fm = s.manifest().get("final_metrics") or {}
    return {"name": name, "set": sets, "variant": cfg.data.variant, "seed": cfg.seed,
            "optimizer": cfg.train.optimizer, "P": len(S), "s_max": float(S[0]),
            "s_min": float(S[-1]), "counts": regions.counts(S, tol),
            "counts_1e-2": regions.counts(S, 1e-2),
            "exact_unity": int(np.sum(d <= regions.EXACT)),
            "min_nontrivial_dist": float(nontriv.min()) if nontriv.size else None,
            "sensitivity": regions.sensitivity_table(S),
            "test_loss": fm.get("test_loss"), "test_acc": fm.get("test_acc")}


def bulk_overlap(Vh_a: np.ndarray, S_a: np.ndarray, Vh_b: np.ndarray, S_b: np.ndarray,
                 ks: list[int]) -> list[float]:
    """Mean principal-angle cosine between the k right singular vectors closest to s = 1 of
    two runs, for each k."""
    M = Vh_a[regions.closest_to_unity(S_a)] @ Vh_b[regions.closest_to_unity(S_b)].T
    return [mean_cos_block(M, k, k) for k in ks]


def cross_analyses(st: Study, progress: Callable[..., None] | None = None) -> dict:
    """Run summaries and the bulk overlaps with the reference run; saved under
    ``<study>/analyses/``; the region tolerance is the study preset's spectrum.bulk_tol."""
    t0 = time.perf_counter()
    m = st.manifest()
    base = st.config()
    cfg, tol = base.study, base.spectrum.bulk_tol
    done = [(r, st.session(r["name"])) for r in m["runs"]]
    done = [(r, s) for r, s in done if s.exists() and s.has("svd/Vh.npy")]
    runs = [run_summary(r["name"], r["set"], s, tol) for r, s in done]
    out = {"reference": m["reference"], "tol": tol, "runs": runs, "overlap": None}
    ref = next((s for r, s in done if r["name"] == m["reference"]), None)
    if ref is not None:
        S_ref = ref.load_npy("svd/S.npy").astype(np.float64)
        Vh_ref = ref.load_npy("svd/Vh.npy").astype(np.float64)
        P = len(S_ref)
        ks = k_grid(cfg.k_min, cfg.k_max, cfg.n_k, P)
        curves, variants, skipped = {}, {}, []
        others = [(r, s) for r, s in done if r["name"] != m["reference"]]
        for i, (r, s) in enumerate(others):
            S = s.load_npy("svd/S.npy").astype(np.float64)
            if len(S) != P:
                skipped.append(r["name"])
                continue
            Vh = s.load_npy("svd/Vh.npy").astype(np.float64)
            curves[r["name"]] = bulk_overlap(Vh_ref, S_ref, Vh, S, ks)
            variants[r["name"]] = s.config().data.variant
            if progress:
                progress(done=i + 1, total=len(others) + 1)
        rng = np.random.default_rng(cfg.seed)
        rand = [random_mean_cos(P, k, k, rng, cfg.random_samples) for k in ks]
        if progress:
            progress(done=len(others) + 1, total=len(others) + 1)
        out["overlap"] = {"reference": m["reference"], "ks": ks, "runs": curves,
                          "random": rand, "variants": variants, "skipped": skipped}
        arr = np.array([ks] + list(curves.values()) + [rand], dtype=np.float64)
        atomic_save_npy(st.path / "analyses" / "study_overlap.npy", arr)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["fingerprint"] = _fingerprint(st)
    atomic_write_json(st.path / "analyses" / "study.json", out)
    return out
