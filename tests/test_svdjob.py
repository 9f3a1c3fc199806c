"""The Gram-route SVD (engine.svdjob) against LAPACK's direct SVD, and in its child process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine import spectrum, svdjob

from conftest import stored_j


def training_like(P: int, seed: int = 0) -> np.ndarray:
    """A J with the three regions: chaotic values up to ~15, a bulk at 1 +- 1e-4, stable
    values down to 1e-9 (a near-null space), singular vectors nearly aligned in the bulk."""
    rng = np.random.default_rng(seed)
    s = np.concatenate([np.geomspace(15, 1.01, P // 4), 1 + rng.uniform(-1e-4, 1e-4, P // 4),
                        np.geomspace(0.9, 1e-9, P - 2 * (P // 4))])
    Q1 = np.linalg.qr(rng.standard_normal((P, P)))[0]
    R = np.linalg.qr(np.eye(P) + 1e-3 * rng.standard_normal((P, P)))[0]
    return ((Q1 * s) @ (Q1 @ R).T).astype(np.float32)


@pytest.mark.parametrize("block", [512, 37])
def test_gram_svd_agrees_with_gesdd(tmp_path, block):
    J = training_like(300)
    U, S, Vh = svdjob.gram_svd(stored_j(tmp_path, J), block=block)
    U0, S0, Vh0 = np.linalg.svd(J.astype(np.float64))
    P = len(S)
    # singular values: ~eps s_1^2 / s absolute, so 1e-13 near 1 and above 1e-3
    near = (S0 > 0.5) & (S0 < 2)
    assert np.abs(S - S0)[near].max() < 1e-13
    assert np.abs(S - S0)[S0 > 1e-3].max() < 1e-11
    assert np.all(np.diff(S) <= 0)
    # orthonormal factors; J = U S V^T up to the route's floor sqrt(eps) s_1 (the error of
    # the smallest singular values), where gesdd reaches eps s_1
    I = np.eye(P)
    # (V: J^T u / s orthogonal to eps s_1^2 / (s_i s_j) <= 1e6 eps for s >= 1e-3 s_1, the
    # rest orthonormalized)
    assert np.abs(U.T @ U - I).max() < 1e-11 and np.abs(Vh @ Vh.T - I).max() < 1e-9
    assert np.abs((U * S) @ Vh - J).max() < np.sqrt(np.finfo(float).eps) * S[0]
    assert np.abs((U0 * S0) @ Vh0 - J).max() < 1e-13 * S[0]
    # regions, alignment and the regions' subspaces as the direct SVD gives them
    a, b = spectrum.summarize(S, U, Vh, 1e-3), spectrum.summarize(S0, U0, Vh0, 1e-3)
    for r in ("chaotic", "bulk", "stable"):
        assert a["regions"][r]["count"] == b["regions"][r]["count"]
        for key in ("subspace_cos_mean", "subspace_cos_min"):
            assert abs(a["regions"][r][key] - b["regions"][r][key]) < 1e-9
    assert abs(a["regions"]["bulk"]["align_mean"] - b["regions"]["bulk"]["align_mean"]) < 1e-9


def test_gram_svd_values_only(tmp_path):
    J = training_like(120, seed=3)
    U, S, Vh = svdjob.gram_svd(stored_j(tmp_path, J), vectors=False)
    assert U is None and Vh is None
    S0 = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    assert np.abs(S - S0)[S0 > 1e-3].max() < 1e-11


def test_the_child_process_writes_the_files_and_imports_no_torch(tmp_path):
    J = training_like(200, seed=5)
    out = tmp_path / "work"
    summary = svdjob.run(stored_j(tmp_path, J), out, 1e-3, np.dtype(np.float32))
    S0 = np.linalg.svd(J.astype(np.float64), compute_uv=False)
    assert np.abs(np.load(out / "S.npy") - S0)[S0 > 1e-3].max() < 1e-11
    U, Vh = np.load(out / "U.npy"), np.load(out / "Vh.npy")
    assert U.dtype == np.float32 and U.shape == (200, 200) and Vh.shape == (200, 200)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["svd_method"] == "gram" and summary["log10_det"] is None  # s_min < floor
    assert summary["s_resolution"] == pytest.approx(np.sqrt(np.finfo(float).eps) * S0[0])
    probe = subprocess.run([sys.executable, "-c", "import sys, engine.svdjob; "
                            "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "False"


def test_a_broken_file_fails_in_one_line_and_a_stop_kills_the_child(tmp_path):
    bad = tmp_path / "jacobian.npy"
    np.save(bad, np.zeros((4, 5), np.float32))
    with pytest.raises(RuntimeError, match="not a square column-major Jacobian"):
        svdjob.run(bad, tmp_path / "w1", 1e-3, np.dtype(np.float32))
    J = stored_j(tmp_path, training_like(600, seed=2))
    with pytest.raises(KeyboardInterrupt):
        svdjob.run(J, tmp_path / "w2", 1e-3, np.dtype(np.float32), should_stop=lambda: True)
    assert not (tmp_path / "w2" / "summary.json").exists()


def test_the_child_dies_with_the_process_that_started_it():
    """A SIGKILLed run leaves no SVD computing on (PR_SET_PDEATHSIG)."""
    import os
    import time

    code = ("import subprocess, sys, time\n"
            "from engine.svdjob import _die_with_parent\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " preexec_fn=_die_with_parent)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    kid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.time() + 5
    state = "R"
    while time.time() < deadline:
        try:
            with open(f"/proc/{kid}/status") as f:
                state = next(ln.split()[1] for ln in f if ln.startswith("State:"))
        except (FileNotFoundError, ProcessLookupError):
            state = "gone"
        if state in ("gone", "Z"):  # reaped, or dead and not yet reaped by init
            break
        time.sleep(0.05)
    else:
        os.kill(kid, 9)
    assert state in ("gone", "Z")
