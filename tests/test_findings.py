"""The findings' verdicts: for each of the paper's findings 1-10, a synthetic result that must be
judged "yes" and one that must be judged "no" (so an inverted threshold cannot go unnoticed),
and "not run" when the analysis is missing."""

from __future__ import annotations

import numpy as np
import pytest

from engine.present.findings import findings_rows

TOL = 1e-3


def paper_like_spectrum(P: int = 1000) -> np.ndarray:
    """s_1 = 20, 150 chaotic, 600 bulk (one of them within 1e-9 of 1), 250 stable, s_P ~ 0."""
    chaotic = np.geomspace(20.0, 1.01, 150)
    bulk = 1.0 + np.linspace(5e-4, -5e-4, 600)
    bulk[300] = 1.0 + 1e-9
    stable = np.geomspace(0.99, 1e-4, P - 750)
    return np.sort(np.concatenate([chaotic, bulk, stable]))[::-1]


NOT_PAPER_S = np.linspace(0.5, 0.2, 1000)  # no chaotic, no bulk, nothing near 1, s_1 = 0.5


def verdict(n: int, S=None, results=None, cross=None) -> str:
    rows = findings_rows(paper_like_spectrum() if S is None else S, TOL, results or {}, cross)
    return next(r for r in rows if r["n"] == n)["agrees"]


def test_spectrum_findings_1_and_2():
    assert verdict(1) == "yes" and verdict(2) == "yes"
    assert verdict(1, NOT_PAPER_S) == "no"
    assert verdict(2, NOT_PAPER_S) == "no"


def distance(bulk: float, chaotic: float, tail: float) -> dict:
    return {"regions": {"bulk": {"align_mean": bulk}, "chaotic": {"align_mean": chaotic},
                        "stable": {"align_mean": 0.0}},
            "tail": {"count": 125, "align_mean": 0.0, "fraction_within_0.2": tail}}


def perturbation(bulk_linear: float, bulk_comp: float, bulk_loss: float, top_linear: float,
                 top_loss: float) -> dict:
    eps = [1e-3, 1.0, 1e3]

    def rows(comp, loss):
        return [{"eps": e, "complement": comp, "test_loss": loss} for e in eps]

    return {"eps": eps, "base_test_loss": 0.15, "directions": [
        {"direction": "bulk", "index": 500, "s": 1.0001, "linear_up_to": bulk_linear,
         "rows": rows(bulk_comp, bulk_loss)},
        {"direction": "top", "index": 0, "s": 20.0, "linear_up_to": top_linear,
         "rows": rows(1.0, top_loss)}]}


def ood(train_bulk: float, train_other: float, far_bulk: float) -> dict:
    def regs(b, o):
        return {"regions": {"bulk": {"median": b}, "chaotic": {"median": o},
                            "stable": {"median": o}}}

    return {"per_set": {"train": regs(train_bulk, train_other),
                        "gaussian_noise": regs(far_bulk, far_bulk),
                        "inverted": regs(far_bulk, far_bulk)}}


def init_change(bulk: float, other: float) -> dict:
    return {"regions": {"bulk": {"median": bulk}, "chaotic": {"median": other},
                        "stable": {"median": other}}, "energy_share": {"bulk": 0.01}}


def param_function(test_gain: float, noise_gain: float) -> dict:
    ks = [100, 420, 740, 1000]

    def sweep(gain):
        return [{"k": k, "bulk": 0.2 + gain, "random": 0.2} for k in ks]

    return {"ks": ks, "sets": {"test": {"null_dim": 900, "sweep": sweep(test_gain)},
                               "uniform_noise": {"null_dim": 900, "sweep": sweep(noise_gain)}}}


def restricted(bulk: float, complement: float, top: float, bottom: float) -> dict:
    ks = [100, 1000]
    return {"ks": ks, "full_test_loss": 0.15, "test_loss": {
        "bulk": [bulk, bulk], "complement": [complement, 0.15], "top": [top, 0.15],
        "bottom": [bottom, 0.15]}}


def cross_runs(shuffled: int, noise: int) -> dict:
    return {"reference": "base", "tol": TOL, "points": [
        {"name": "base", "variant": "none", "counts": {"bulk": 3000}},
        {"name": "shuffled", "variant": "shuffled_labels", "counts": {"bulk": shuffled}},
        {"name": "noise", "variant": "white_noise", "counts": {"bulk": noise}}]}


def cross_overlap(seed: float, noise: float) -> dict:
    ks = [100, 200, 300, 400, 500, 600, 700, 800]
    return {**cross_runs(3000, 1000), "overlap": {
        "reference": "base", "ks": ks, "random": [0.2] * len(ks),
        "runs": {"seed1": [seed] * len(ks), "noise": [noise] * len(ks)},
        "variants": {"seed1": "none", "noise": "white_noise"}}}


CASES = {
    3: ({"distance": distance(0.999, 0.9, 0.8)}, {"distance": distance(0.5, 0.2, 0.1)}),
    4: ({"perturbation": perturbation(1e3, 1e-6, 0.15, 0.1, 7.0)},
        {"perturbation": perturbation(0.01, 1.0, 5.0, 100.0, 0.15)}),
    5: ({"ood": ood(1e-6, 0.1, 0.1)}, {"ood": ood(0.1, 0.1, 0.1)}),
    6: ({"init_change": init_change(1e-4, 1e-2)}, {"init_change": init_change(1.0, 0.1)}),
    9: ({"param_function": param_function(0.3, 0.01)},
        {"param_function": param_function(0.0, 0.3)}),
    10: ({"restricted": restricted(2.5, 0.2, 0.2, 2.35)},
         {"restricted": restricted(0.2, 2.0, 2.0, 0.2)}),
}


@pytest.mark.parametrize("n", sorted(CASES))
def test_analysis_findings_yes_and_no(n):
    yes, no = CASES[n]
    assert verdict(n, results=yes) == "yes"
    assert verdict(n, results=no) == "no"
    assert verdict(n) == "not run"


def test_sweep_findings_7_and_8_yes_and_no():
    assert verdict(7, cross=cross_runs(2900, 1000)) == "yes"
    assert verdict(7, cross=cross_runs(1000, 3000)) == "no"
    assert verdict(8, cross=cross_overlap(0.9, 0.3)) == "yes"
    assert verdict(8, cross=cross_overlap(0.25, 0.5)) == "no"
    assert verdict(7) == verdict(8) == "not run"


def test_finding_2_names_its_counts():
    S = paper_like_spectrum()
    S[400:403] = 1.0  # exactly 1
    S[403] = 1.0 + 1e-13  # within 1e-12, not exactly 1
    text = next(r for r in findings_rows(S, TOL, {}, None) if r["n"] == 2)["measured"]
    assert "4 with |s-1| <= 1e-12 (directions training never touches), 3 of them exactly 1" \
        in text
